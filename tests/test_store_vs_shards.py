"""bench/store_vs_shards.py on the tiny project: both layouts hold and deliver exactly the same training data."""

import pytest

pytest.importorskip("webdataset", reason="the shard side of bench/store_vs_shards.py needs the webdataset package "
                                         "(the `dev` and `bench` extras install it)")

import torch  # noqa: E402

from bench.store_vs_shards import read_ours, read_shards, training_data, write_shards  # noqa: E402


def by_segment(batches) -> dict:
    """segment id -> (values (channels, time), {teacher: standardised tokens (n, F)}) from collated batches."""
    out = {}
    for batch in batches:
        for i, segment_id in enumerate(batch.segment_ids):
            assert segment_id not in out, f"{segment_id} delivered twice in one epoch"
            values = batch.values[i, :, : int(batch.lengths[i])]
            targets = {t: batch.targets[t][i, : int(batch.n_tokens[t][i])] for t in batch.targets}
            out[segment_id] = (values, targets)
    return out


def test_shards_and_store_deliver_the_same_segments(extracted_project, tmp_path):
    root, params_path = extracted_project
    data = training_data(params_path)
    n_segments = sum(len(d.segments) for d in data.datasets.values())
    # small shards so that data sets span several of them, as Theia's 1000-sample shards do on a real corpus
    assert write_shards(data, tmp_path / "shards", samples_per_shard=5) == n_segments
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == sorted(data.datasets)

    ours = by_segment(read_ours(data, epochs=1))
    shards = by_segment(read_shards(data, tmp_path / "shards", epochs=1, shuffle_buffer=7))
    assert len(ours) == len(shards) == data.n_train
    assert set(ours) == set(shards)
    for segment_id, (values, targets) in ours.items():
        shard_values, shard_targets = shards[segment_id]
        torch.testing.assert_close(shard_values, values, rtol=0, atol=0)
        assert set(shard_targets) == set(targets) == set(data.teachers)
        for teacher, tokens in targets.items():
            torch.testing.assert_close(shard_targets[teacher], tokens, rtol=0, atol=0)


def test_shards_are_shuffled_and_stay_aligned(extracted_project, tmp_path):
    """The zipped per-column loaders shuffle (not the store's order) and never mix columns of different segments
    (read_shards raises if the columns' keys differ)."""
    root, params_path = extracted_project
    data = training_data(params_path)
    write_shards(data, tmp_path / "shards", samples_per_shard=5)
    order = [s for batch in read_shards(data, tmp_path / "shards", epochs=1, shuffle_buffer=7)
             for s in batch.segment_ids]
    stored = [s.id for name, d in data.datasets.items() for s, val in zip(d.segments, data.val_rows[name], strict=True)
              if not val]
    assert sorted(order) == sorted(stored) and order != stored
