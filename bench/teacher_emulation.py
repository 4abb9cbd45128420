"""How well the distilled student emulates each teacher on the probe tasks: its heads' predictions against the
teachers' own features, probed alike.

For every probe task, four kinds of embedding, each pooled mean+std+max over tokens (no statistics, no structure
vectors, so only the network's tokens and the teachers' features are compared):
- `tokens`: the student's own final tokens (channels averaged);
- `predicted:<teacher>`: the student's distillation head for that teacher applied to those tokens (the head and
  its LayerNorm, from the training checkpoint), i.e. the student's prediction of the teacher's standardised features;
- `teacher:<teacher>`: the teacher's cached features from its store.
Each is probed with the evaluation's protocol (ridge, same splits). Where `predicted:T` falls far below
`teacher:T`, the student has not learned what T says about that kind of series, however low its validation loss.
Prints a table and, per teacher, `predicted:T` minus `teacher:T` on the generated and the real means (the real
rows are the vendored UCR sets, PLAID among them): the first diagnostic of every change to the student.

    .venv/bin/python bench/teacher_emulation.py [--model models/step-student] [--checkpoint models/checkpoints/latest]
        [--datasets ucr_arrowhead ucr_osuleaf ...]
"""

import argparse

import numpy as np
import torch
from safetensors.torch import load_file

from data_catalog.catalog import load_catalog
from pipeline.distill.objective import TeacherHeads
from pipeline.evaluate import load_task, probe_score, probe_splits, teacher_embeddings
from pipeline.feature_store import FeatureStore, store_location
from pipeline.student import STEPEncoder
from pipeline.student.pooling import pool_embedding
from schemas.params import load_params


def load_heads(checkpoint: str, hidden_size: int, embedding_size: int = 0) -> TeacherHeads:
    weights = load_file(f"{checkpoint}/weights.safetensors")
    heads = {k[len("heads."):]: v for k, v in weights.items() if k.startswith("heads.")}
    kind = "mlp" if any(k.endswith(".3.weight") for k in heads) else "linear"  # LN, Linear[, GELU, Linear]
    last = ".3.weight" if kind == "mlp" else ".1.weight"  # the output layer
    dims = {k.split(".")[1]: v.shape[0] for k, v in heads.items() if k.startswith("heads.") and k.endswith(last)}
    summary = {k: v for k, v in heads.items() if k.startswith("summary_heads.") and k.endswith(".1.weight")}
    summary_width = embedding_size or hidden_size  # summary heads read the pooled embedding tokens
    moments = next(iter(summary.values())).shape[1] // summary_width if summary else 2
    structure = heads.get("structure_head" + last)
    module = TeacherHeads(hidden_size, dims, kind,
                          summary=bool(summary), structure_dim=0 if structure is None else structure.shape[0],
                          summary_moments=moments, summary_width=summary_width)
    module.load_state_dict(heads)
    return module.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default=None, help="default: params' distill.output_dir")
    parser.add_argument("--checkpoint", default=None, help="default: params' distill.checkpoint_dir/latest")
    parser.add_argument("--datasets", nargs="*", default=None, help="probe tasks (default: evaluate.datasets or all)")
    args = parser.parse_args()
    params = load_params(args.params)
    model = STEPEncoder.from_pretrained(args.model or params.distill.output_dir).eval()
    heads = load_heads(args.checkpoint or f"{params.distill.checkpoint_dir}/latest", model.config.hidden_size,
                       model.config.embedding_size)
    catalog = load_catalog(params.prepare.catalog)
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}
    names = args.datasets or params.evaluate.datasets or [e.name for e in catalog.datasets if e.role == "probe"]
    scores: dict[str, dict[str, float]] = {}
    real = {}
    for name in names:
        task = load_task(catalog.get(name), catalog, params.prepare.series_store)
        real[name] = task.real
        vectors: dict[str, list] = {"tokens": []} | {f"predicted:{t}": [] for t in stores}
        with torch.inference_mode():
            for series in task.series:
                out = model(torch.from_numpy(series)[None], sampling_rate=task.sampling_rate)
                tokens = out.last_hidden_state.mean(dim=1)  # (1, N, H): channels averaged, as the heads saw them
                vectors["tokens"].append(pool_embedding(tokens[:, None], out.token_mask, "mean+std+max")[0].numpy())
                for teacher in stores:
                    predicted = heads(teacher, tokens)[:, None]  # (1, 1, N, F)
                    vectors[f"predicted:{teacher}"].append(
                        pool_embedding(predicted, out.token_mask, "mean+std+max")[0].numpy())
        embeddings = {k: np.stack(v) for k, v in vectors.items()}
        embeddings |= {f"teacher:{t}": teacher_embeddings(s, task, "mean+std+max", model.config)
                       for t, s in stores.items()}
        splits = probe_splits(task, params.evaluate.splits, params.evaluate.seed)
        for kind, x in embeddings.items():
            split_scores = [probe_score(x, task.labels, train, task.entry.probe.metric, params.evaluate.probe_alphas)[0]
                            for train in splits]
            scores.setdefault(kind, {})[name] = float(np.mean(split_scores))

    print(f"{'embedding':22s} " + " ".join(f"{n[:12]:>12s}" for n in names) + "  generated      real")
    means = {}
    for kind, row in scores.items():
        generated = np.mean([row[n] for n in names if not real[n]] or [np.nan])
        real_mean = np.mean([row[n] for n in names if real[n]] or [np.nan])
        means[kind] = (generated, real_mean)
        print(f"{kind:22s} " + " ".join(f"{row[n]:12.3f}" for n in names) + f"  {generated:9.3f} {real_mean:9.3f}")
    # the first diagnostic of every change (issue 29's goal: within 0.03 on the real sets for every teacher)
    for teacher in stores:
        p, t = means[f"predicted:{teacher}"], means[f"teacher:{teacher}"]
        print(f"teacher_emulation: predicted:{teacher} minus teacher:{teacher}: generated {p[0] - t[0]:+.3f} "
              f"({p[0]:.3f} vs {t[0]:.3f}), real {p[1] - t[1]:+.3f} ({p[1]:.3f} vs {t[1]:.3f})")


if __name__ == "__main__":
    main()
