"""The scaled-down corpus that benches prepare in a temp dir: the catalog's pretraining sets at N series each."""

from pathlib import Path

import yaml

from stages import prepare as prepare_stage

ROOT = Path(__file__).resolve().parents[1]


def generated_corpus(tmp: Path, count: int) -> Path:
    """The catalog's pretraining sets (no long records) at `count` series each, prepared under tmp; its params."""
    catalog = yaml.safe_load((ROOT / "data_catalog/catalog.yaml").read_text())
    catalog["datasets"] = [d for d in catalog["datasets"] if d["role"] == "pretrain" and "long" not in d["name"]]
    for d in catalog["datasets"]:
        d["source"]["count"] = count
    (tmp / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if "corpus" in params:  # the catalog's counts and lengths, as set above
        params["corpus"] = {"scale": 1.0, "sources": {}}
    params["prepare"] |= {"catalog": str(tmp / "catalog.yaml"), "series_store": str(tmp / "series.zarr")}
    params["extract"]["store_dir"] = str(tmp / "features")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    prepare_stage.run(str(tmp / "params.yaml"))
    return tmp / "params.yaml"
