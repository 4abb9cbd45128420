"""The recipe's ablation table: each variant a DVC experiment (`dvc exp run -n NAME -S ...`), one table from them.

`step-pipeline ablations run` runs every variant below as a DVC experiment in the workspace, one after the other
(each from the committed params, so overrides never stack), then restores the workspace to the committed state
(params, dvc.lock and reports from git, the model from DVC's cache); commit before running. Workspace runs, not `--queue`: the feature stores are `cache: false` (too large for DVC's cache), so a
queued run in a temporary copy would have to extract them again. Variants that change only `evaluate` rerun only
that stage. `step-pipeline ablations table` reads `dvc exp show --json` and prints the Markdown table docs/experiments.md shows
(generated mean and real_mean with their 95% intervals, real accuracy; wall times vary from run to run and
are not DVC metrics: each run's is in reports/run_info/distill.json).
"""

import json
import logging
import subprocess

log = logging.getLogger(__name__)

# name -> `-S` overrides of params.yaml. `default` is params.yaml as committed.
ABLATIONS: dict[str, list[str]] = {
    "default": [],
    "pooling-pooled": ["evaluate.pooling=pooled"],
    "pooling-mean": ["evaluate.pooling=mean"],
    "pooling-mean+std": ["evaluate.pooling=mean+std"],
    "pooling-mean+max": ["evaluate.pooling=mean+max"],
    "pooling-mean+std+max+stats": ["evaluate.pooling=mean+std+max+stats"],
    # the summary loss is on by default; it trains cpu-small's embedding projection, so that goes too
    "no-summary": ["distill.summary_weight=0.0", "+student.overrides.embedding_size=0"],
    "cosine0.9-l1-0.1": ["distill.cosine_weight=0.9", "distill.smooth_l1_weight=0.1"],
    "mlp-heads": ["distill.head=mlp"],
    "crop-on": ["distill.crop.enabled=true"],
    "no-adaptive-patching": ["+student.overrides.adaptive_patching=false"],  # + adds a key (Hydra syntax)
    # no statistics to append either: the embedding drops `stats`
    "no-stats-compensation": ["+student.overrides.stats_compensation=false",
                              "+student.overrides.embedding_pooling=mean+std+max+structure"],
    # the paper's tokens: no lag increments, no band powers, so no structure loss and no structure in the embedding
    "no-fine-structure": ["+student.overrides.structure_lags=0", "+student.overrides.structure_bands=0",
                          "+student.overrides.embedding_pooling=mean+std+max+stats", "distill.structure_weight=0.0"],
    "no-band-powers": ["+student.overrides.structure_bands=0"],
    # 24 third-octave bands instead of 8 octaves (better generated, worse real in five runs, docs/experiments.md)
    "third-octave-bands": ["+student.overrides.structure_bands=24", "+student.overrides.bands_per_octave=3"],
    # learned channel identities for fixed montages (off by default: not better in three runs, docs/experiments.md)
    "channel-identity": ["+student.overrides.montage_channels=64", "distill.max_channels=null"],
    "no-structure-loss": ["distill.structure_weight=0.0"],
    "source-standardisation": ["distill.target_standardisation=source"],  # errors in each data set's own units
    # token losses on each token minus its series' mean (the level is left to the summary loss)
    "token-deviations": ["distill.token_target=deviations"],
    "summary-max": ["distill.summary_pooling=mean+std+max"],  # the summary loss also matches the targets' max
    # the teachers' neighbourhoods within a batch (one data set) as a CompRess-style relation loss
    "relation-loss": ["distill.relation_weight=1.0"],
    # student width and depth (cpu-small: hidden 64, 4 blocks; 128 was the default before)
    "width-128": ["+student.overrides.hidden_size=128", "+student.overrides.intermediate_size=512"],
    "width-192": ["+student.overrides.hidden_size=192", "+student.overrides.intermediate_size=768"],
    "depth-6": ["+student.overrides.num_hidden_layers=6"],
    # the final tokens themselves pooled, hidden-wide (cpu-small pools a trained Linear(hidden, 32) of them)
    "full-width-embedding": ["+student.overrides.embedding_size=0"],
    "spectral-weight-3": ["+distill.teacher_weights.spectral=3.0"],
    # every channel of every training segment (the default shows at most 4, a random subset per segment)
    "all-channels": ["distill.max_channels=null"],
    # corpus size at the same training budget (1200 steps): every generated pretraining set scaled
    "corpus-scale-0.5": ["corpus.scale=0.5"],
    "corpus-scale-2": ["corpus.scale=2.0"],
    "600-steps": ["distill.max_steps=600"],
    "4800-steps": ["distill.max_steps=4800"],  # 4x the default budget (~29 min of distillation on 2 cores)
    # the distillation corpus without the broad `corpus_*` sets: the probe generators' own pretraining seeds only
    "in-domain-corpus": ["distill.datasets=[pretrain_gw,pretrain_lightcurves,pretrain_seismic,pretrain_bioacoustics,"
                         "pretrain_sleep,pretrain_motor,pretrain_radar,pretrain_long_seismic]"],
}


def run(names: list[str] | None = None) -> None:
    """Run the named variants (all by default) as DVC experiments, then restore the committed workspace."""
    names = names or list(ABLATIONS)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; known: {list(ABLATIONS)}")
    branch = current_branch()
    if branch is None:
        raise RuntimeError("HEAD is detached: check out the branch you commit to (e.g. `git checkout main`) before "
                           "running ablations, so that the commits after them land on it")
    try:
        for name in names:
            subprocess.run(["git", "checkout", "--", "params.yaml", "dvc.lock"], check=True)
            overrides = [arg for override in ABLATIONS[name] for arg in ("-S", override)]
            log.info("experiment %s: %s", name, " ".join(ABLATIONS[name]) or "params.yaml as committed")
            subprocess.run(["dvc", "exp", "remove", name], capture_output=True)  # a rerun replaces it (absent: no-op)
            # no --force: that would reproduce every stage (extraction too), not only what the overrides change
            subprocess.run(["dvc", "exp", "run", "-n", name, *overrides], check=True)
    finally:
        subprocess.run(["git", "checkout", "--", "params.yaml", "dvc.lock", "reports"], check=True)
        subprocess.run(["dvc", "checkout"], check=True)
        reattach(branch)


def current_branch() -> str | None:
    """The checked-out branch, or None when HEAD is detached."""
    result = subprocess.run(["git", "symbolic-ref", "--quiet", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or None


def reattach(branch: str) -> None:
    """Put `branch` back if a `dvc exp run` that stopped midway left HEAD detached at the branch's commit.

    Why: commits made on a detached HEAD move no branch, so they never reach the branch that is pushed; this
    happened here after an interrupted experiment. A detached HEAD at any other commit is left alone, loudly.
    """
    if current_branch() is not None:
        return
    head, tip = (subprocess.run(["git", "rev-parse", ref], capture_output=True, text=True, check=True).stdout.strip()
                 for ref in ("HEAD", branch))
    if head == tip:
        subprocess.run(["git", "checkout", "--quiet", branch], check=True)
        log.warning("HEAD was left detached at %s's commit; checked out %s again", branch, branch)
    else:
        log.error("HEAD is detached at %s, not at %s (%s): check out %s before committing", head[:7], branch,
                  tip[:7], branch)


def table(experiments: list[dict] | None = None) -> str:
    """Markdown table of the named experiments from `dvc exp show --json` output (read it when not given)."""
    if experiments is None:
        result = subprocess.run(["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True)
        experiments = json.loads(result.stdout)
    rows = {}
    for baseline in experiments:
        for exp in [baseline, *(baseline.get("experiments") or [])]:
            for revision in exp.get("revs", [exp]):
                name = revision.get("name")
                data = (revision.get("data") or {})
                if name in ABLATIONS and data.get("metrics"):
                    rows[name] = data["metrics"]
    lines = ["| variant | overrides | generated mean F1 | real_mean F1 | real accuracy |", "|---|---|---|---|---|"]
    for name in ABLATIONS:
        if name not in rows:
            continue
        metrics = rows[name]
        probe = metrics.get("reports/probe_metrics.json", {}).get("data", {}).get("step-distilled", {})
        accuracy = metrics.get("reports/probe_accuracy.json", {}).get("data", {}).get("step-distilled", {})
        intervals = metrics.get("reports/probe_intervals.json", {}).get("data", {}).get("step-distilled", {})
        cells = [f"{probe.get(k, float('nan')):.3f}" + (f" ±{(intervals[k]['high'] - intervals[k]['low']) / 2:.3f}"
                                                        if k in intervals else "") for k in ("mean", "real_mean")]
        lines.append(f"| {name} | {' '.join(ABLATIONS[name]) or '(params.yaml)'} | {cells[0]} | {cells[1]} | "
                     f"{accuracy.get('real_mean', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"
