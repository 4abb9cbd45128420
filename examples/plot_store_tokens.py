"""Open a teacher's feature store with xarray and plot one segment's tokens (token x feature) to a PNG.

    python examples/plot_store_tokens.py --store data/features/silero_vad.zarr --group gwosc_like --segment 0 \
        --output tokens.png

Each data set is a group of the Zarr store: `features (segment, token, feature)`, padded with NaN beyond
`n_tokens`, and `token_start` / `token_end (token,)`, in seconds (or samples when the rate is unknown).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import xarray as xr  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="a feature store, e.g. data/features/silero_vad.zarr")
    parser.add_argument("--group", help="the data set (default: the store's first)")
    parser.add_argument("--segment", type=int, default=0, help="index of the segment within the data set")
    parser.add_argument("--output", type=Path, default=Path("tokens.png"))
    args = parser.parse_args(argv)

    tree = xr.open_datatree(args.store, engine="zarr", consolidated=True)
    manifest = tree.attrs["manifest"]
    group = args.group or sorted(tree.children)[0]
    ds = xr.open_zarr(args.store, group=group, consolidated=True)
    n_tokens = int(ds.n_tokens[args.segment])
    tokens = ds.features[args.segment, :n_tokens].astype("float32").values  # (token, feature)
    units = ds.token_start.attrs.get("units", "s")
    start, end = float(ds.token_start[0]), float(ds.token_end[n_tokens - 1])

    figure, axis = plt.subplots(figsize=(8, 4))
    image = axis.imshow(tokens.T, aspect="auto", origin="lower", cmap="viridis", extent=(start, end, 0, tokens.shape[1]))
    axis.set_xlabel(f"time ({units})")
    axis.set_ylabel("feature")
    model = Path(manifest["model_id"]).name  # a hub id's or a local directory's last part
    axis.set_title(f"{manifest['teacher']} ({model}): {group}, segment {ds.segment_id.values[args.segment]}", fontsize=10)
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(args.output, dpi=100)
    plt.close(figure)
    print(f"{args.output}: {n_tokens} tokens x {tokens.shape[1]} features, {start:g}-{end:g} {units}")
    return args.output


if __name__ == "__main__":
    main()
