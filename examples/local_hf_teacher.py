"""Declare a teacher from a local Hugging Face model directory, then extract its feature store.

A teacher is one entry under `extract.teachers` in params.yaml. `model_id` takes a Hub id (weights in the local
Hugging Face cache) or, as here, a directory written by `save_pretrained` (config.json + model.safetensors):

    extract:
      teachers:
        my_patchtst: {kind: hf_timeseries, model_id: /models/my-patchtst}

This script writes a copy of your params.yaml with that entry added (params-<name>.yaml beside it, validated), then
runs the extraction, as `step-pipeline extract --teacher my_patchtst --params params-my_patchtst.yaml` would:

    python examples/local_hf_teacher.py --params params.yaml --model-dir /models/my-patchtst --name my_patchtst

`--tiny-patchtst` first saves a tiny random-weight PatchTST into --model-dir, to try it all without a download. To
make the teacher part of `dvc repro`, add the same entry to params.yaml itself: `extract@my_patchtst` then runs,
and distillation learns from it too.
"""

import argparse
from pathlib import Path

import xarray as xr
import yaml

from pipeline.feature_store.manifest import store_location
from schemas.params import load_params
from stages import extract as extract_stage


def save_tiny_patchtst(directory: Path) -> None:
    """A random-weight PatchTST small enough to run anywhere (16 features per 8-step patch)."""
    import torch
    from transformers import PatchTSTConfig, PatchTSTModel

    torch.manual_seed(0)
    config = PatchTSTConfig(num_input_channels=1, context_length=64, patch_length=8, patch_stride=8, d_model=16,
                            num_hidden_layers=1, num_attention_heads=2, ffn_dim=32)
    PatchTSTModel(config).save_pretrained(directory)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the project's params file")
    parser.add_argument("--model-dir", type=Path, required=True, help="a save_pretrained directory")
    parser.add_argument("--name", default="my_teacher", help="the teacher's name (and its store's)")
    parser.add_argument("--kind", default="hf_timeseries", choices=["hf_timeseries", "hf_audio"],
                        help="hf_timeseries: PatchTST, TimesFM, Chronos-style T5; hf_audio: wav2vec2, HuBERT, "
                             "WavLM, Whisper, AST")
    parser.add_argument("--dataset", action="append", help="extract only this catalog data set (repeatable)")
    parser.add_argument("--tiny-patchtst", action="store_true", help="first save a tiny random PatchTST there")
    args = parser.parse_args(argv)

    if args.tiny_patchtst:
        save_tiny_patchtst(args.model_dir)
    params = yaml.safe_load(args.params.read_text())
    params["extract"]["teachers"][args.name] = {"kind": args.kind, "model_id": str(args.model_dir.resolve())}
    teacher_params = args.params.with_name(f"params-{args.name}.yaml")
    teacher_params.write_text(yaml.safe_dump(params, sort_keys=False))
    validated = load_params(teacher_params)  # refuses unknown keys or bad values, naming the file and the field
    print(f"{teacher_params}: extract.teachers.{args.name} = {validated.extract.teachers[args.name].model_dump()}")

    extract_stage.run(str(teacher_params), teachers=[args.name], datasets=args.dataset, overwrite=True)

    store = store_location(validated.extract.store_dir, args.name)
    tree = xr.open_datatree(store, engine="zarr", consolidated=True)
    manifest = tree.attrs["manifest"]
    print(f"{store}: {manifest['feature_dim']} features per token, groups {sorted(tree.children)}")
    return Path(store)


if __name__ == "__main__":
    main()
