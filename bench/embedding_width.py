"""How the width of each row's learned part moves the probe table: every row's token part (mean+std+max of its
tokens) reduced to its top-k principal components, the statistics and structure vectors kept as they are.

The probe standardises every dimension and fits one ridge penalty over all of them, with 75-200 training series
per generated task: a row whose token part is wide (3 x the student's hidden size, or 3 x its embedding_size when
it has an embedding projection; silero_vad's 384 numbers, fracast's 192, spectral's 84) dilutes the shared explicit
vectors more. This bench asks whether the student's deficit on the
generated tasks is its tokens' content or their width. The components are fitted per row on that row's own pooled
features of pretraining segments (never on probe data): the student's and the random student's embeddings of up to
`--per-dataset` randomly drawn series of every pretraining set (cut to one segment's length), each teacher's cached
tokens of the first `--per-dataset` segments of the same sets (their first store chunk). Fixed-montage
tasks keep the students' channels apart (`keep_channels`), so the students' rows stay unreduced there (k = all).

Prints generated and real means per row and k, the distilled student's paired differences (10 splits, same
intervals as the probe table) against every other row at the same k, and as its last line the k at which the
student's generated and real means are both above every teacher's (or none).

    .venv/bin/python bench/embedding_width.py [--ks 8 16 32 64] [--per-dataset 40] [--quick]
"""

import argparse

import numpy as np
import torch

from data_catalog.catalog import load_catalog, open_reader
from pipeline.evaluate import ProbeResults, load_task, model_embeddings, probe_score, probe_splits, random_twin
from pipeline.feature_store import FeatureStore, store_location
from pipeline.student import STEPEncoder
from pipeline.student.pooling import pool_embedding
from schemas.params import load_params

TOKEN_POOLING = "mean+std+max"


def corpus_token_parts(params, catalog, distilled, random_student, stores, per_dataset: int) -> dict[str, np.ndarray]:
    """{row: (segments, token-part width)} pooled token parts of pretraining segments, the fit set of each PCA."""
    rng = np.random.default_rng(0)
    parts: dict[str, list[np.ndarray]] = {"step-distilled": [], "step-random": []}
    parts |= {f"teacher:{t}": [] for t in stores}
    for entry in catalog.datasets:
        if entry.role != "pretrain":
            continue
        reader = open_reader(entry, catalog, params.prepare.series_store)
        items = list(reader)
        pick = rng.choice(len(items), min(per_dataset, len(items)), replace=False)
        series = [items[i].values[:, : params.segments.max_samples] for i in pick]  # one segment's length at most
        for row, encoder in (("step-distilled", distilled), ("step-random", random_student)):
            parts[row].append(encoder.embed(series, items[0].sampling_rate, batch_size=16, pooling=TOKEN_POOLING))
        for teacher, store in stores.items():
            features, n_tokens, _ = store.read_chunk(entry.name, 0)
            parts[f"teacher:{teacher}"].append(np.stack([
                pool_embedding(torch.from_numpy(np.asarray(f[:n], np.float32))[None, None],
                               torch.ones(1, int(n), dtype=torch.bool), TOKEN_POOLING)[0].numpy()
                for f, n in zip(features[:per_dataset], n_tokens[:per_dataset])]))
    return {row: np.concatenate(v) for row, v in parts.items()}


def principal_axes(corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale, components) of a row's standardised corpus token parts; components' rows are directions."""
    mean, scale = corpus.mean(0), corpus.std(0) + 1e-8
    _, _, components = np.linalg.svd((corpus - mean) / scale, full_matrices=False)
    return mean, scale, components


def reduced(embedding: np.ndarray, width: int, axes: tuple[np.ndarray, np.ndarray, np.ndarray],
            k: int | None) -> np.ndarray:
    """The first `width` columns (the token part) replaced by their top-k corpus principal components."""
    if k is None or k >= width:
        return embedding
    mean, scale, components = axes
    return np.concatenate([((embedding[:, :width] - mean) / scale) @ components[:k].T, embedding[:, width:]], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--per-dataset", type=int, default=40, help="pretraining segments per data set for the PCA")
    parser.add_argument("--quick", action="store_true", help="k = 16, three tasks, 10 segments per set")
    args = parser.parse_args()
    params = load_params(args.params)
    catalog = load_catalog(params.prepare.catalog)
    names = params.evaluate.datasets or [e.name for e in catalog.datasets if e.role == "probe"]
    if args.quick:
        args.ks, args.per_dataset = [16], 10
        names = ["gwosc_like", "marmaudio_like", "ucr_arrowhead"]
    distilled = STEPEncoder.from_pretrained(params.distill.output_dir).eval()
    random_student = random_twin(distilled, params, params.evaluate.seed)  # the evaluate stage's random student
    stores = {t: FeatureStore.open(store_location(params.extract.store_dir, t)) for t in params.extract.teachers}
    student_width = 3 * (distilled.config.embedding_size or distilled.config.hidden_size)  # what mean/std/max pool
    widths = {"step-distilled": student_width, "step-random": student_width}
    widths |= {f"teacher:{t}": 3 * s.manifest.feature_dim for t, s in stores.items()}
    corpus = corpus_token_parts(params, catalog, distilled, random_student, stores, args.per_dataset)
    axes = {row: principal_axes(parts) for row, parts in corpus.items()}  # fitted once per row

    ks: list[int | None] = [None, *args.ks]
    results = {k: ProbeResults() for k in ks}  # per k: every row's split scores, summarised as the probe table is
    for name in names:
        task = load_task(catalog.get(name), catalog, params.prepare.series_store)
        splits = probe_splits(task, params.evaluate.splits, params.evaluate.seed)
        embeddings = model_embeddings(params, task, distilled, random_student, stores)
        for row, width in widths.items():
            for k in ks:
                kept = k if not (task.entry.fixed_montage and row.startswith("step-")) else None
                vectors = reduced(embeddings[row], width, axes[row], kept)
                for train in splits:
                    score = probe_score(vectors, task.labels, train, task.entry.probe.metric,
                                        params.evaluate.probe_alphas)[0]
                    results[k].add(row, task, score, 0.0, (~train).sum() / train.sum())
        print(f"{name}: " + ", ".join(f"{row} {np.mean(results[None].scores[row][name]):.3f}" for row in widths),
              flush=True)

    groups = list(results[None].groups())
    summaries = {k: res.summary() for k, res in results.items()}
    print(f"\n| row | k | {' | '.join(groups)} |")
    for row in widths:
        for k in ks:
            print(f"| {row} | {k or 'all'} | {' | '.join(f'{summaries[k][row][g]:.3f}' for g in groups)} |")
    print("\nstep-distilled minus each row at the same k, paired over the splits (mean [95% interval]):")
    beats = []
    for k, res in results.items():
        comparisons = res.comparisons()
        for row, by_group in comparisons.items():
            print(f"k={k or 'all'} vs {row}: " + ", ".join(
                f"{g} {by_group[g][0]:+.3f} [{by_group[g][1]:+.3f}, {by_group[g][2]:+.3f}]" for g in groups))
        if all(comparisons[row][g][0] > 0 for row in comparisons if row.startswith("teacher:") for g in groups):
            beats.append(str(k or "all"))
    print(f"embedding_width: the student's means above every teacher's at k = {', '.join(beats) or 'none'}")


if __name__ == "__main__":
    main()
