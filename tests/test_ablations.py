"""The ablation table: built from `dvc exp show --json` output, one row per declared variant that has results."""

from pipeline.ablations import ABLATIONS, table


def experiment(name: str, mean: float, real: float, wall: float) -> dict:
    metrics = {
        "reports/probe_metrics.json": {"data": {"step-distilled": {"mean": mean, "real_mean": real}}},
        "reports/probe_accuracy.json": {"data": {"step-distilled": {"real_mean": real + 0.05}}},
        "reports/probe_intervals.json": {"data": {"step-distilled": {"mean": {"low": mean - 0.02, "high": mean + 0.02},
                                                                      "real_mean": {"low": real - 0.1, "high": real + 0.1}}}},
        "reports/distill/metrics.json": {"data": {"wall_seconds": wall}},
    }
    return {"rev": "abc", "name": name, "data": {"metrics": metrics}}


def test_table_has_a_row_per_variant_with_intervals_and_wall_time():
    shown = [{"rev": "workspace", "name": None, "data": {"metrics": {}},
              "experiments": [{"revs": [experiment("summary-1", 0.45, 0.6, 300.0)]},
                              {"revs": [experiment("default", 0.41, 0.57, 290.0)]},
                              {"revs": [experiment("not-a-variant", 0.9, 0.9, 1.0)]}]}]
    lines = table(shown).splitlines()
    assert lines[0].startswith("| variant | overrides | generated mean F1")
    assert lines[2] == "| default | (params.yaml) | 0.410 ±0.020 | 0.570 ±0.100 | 0.620 | 290.0 |"  # declared order
    assert lines[3].startswith("| summary-1 | distill.summary_weight=1.0 | 0.450 ±0.020 |")
    assert len(lines) == 4 and "not-a-variant" not in "".join(lines)
    assert list(ABLATIONS)[0] == "default" and ABLATIONS["default"] == []
