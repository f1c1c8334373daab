"""Resident and streaming pipelines: identical batches, multi-host coverage, padded last batches."""
import numpy as np
import pytest

from pthnet_jax.data import batch_plan, choose_mode, epoch_order, iterate_batches, open_split
from pthnet_jax.data.importer import import_features
from pthnet_jax.data.synth import synthesize

DIM = 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    root = synthesize(base / "root", "DFEW", clips=45, test_clips=21, feature_dim=DIM, reverse=False, quiet=True)
    return import_features("DFEW", root, base / "data", fold=1, feature_dim=DIM, quiet=True)


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for x, y in zip(first, second):
        for level in x["features"]:
            np.testing.assert_array_equal(x["features"][level], y["features"][level])
            np.testing.assert_array_equal(x["masks"][level], y["masks"][level])
        for key in ("labels", "valid", "index"):
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.slow  # trains or compiles a model: outside the quick check
@pytest.mark.parametrize("train", [True, False])
def test_resident_and_streaming_batches_are_identical(data_dir, train):
    split = open_split(data_dir, "train")
    kwargs = dict(train=train, global_batch=8, seed=5, epoch=1, levels=("L", "M", "H"))
    resident = list(iterate_batches(split, mode="resident", **kwargs))
    streaming = list(iterate_batches(split, mode="streaming", num_threads=2, **kwargs))
    assert len(resident) == 6
    _assert_same_batches(resident, streaming)
    # And the streamed windows are the stored ones: evaluation picks are deterministic.
    if not train:
        record = split.read([3])[0]
        row = np.flatnonzero(resident[0]["index"] == 3)[0]
        count = int(record["num_windows_H"])
        taken = resident[0]["features"]["H"][row][: min(count, 16)]
        assert any(np.array_equal(taken[0], w) for w in record["features_H"])


@pytest.mark.parametrize("hosts,global_batch,train", [(1, 7, False), (2, 6, True), (3, 9, False), (4, 8, True)])
def test_hosts_cover_every_clip_exactly_once(data_dir, hosts, global_batch, train):
    split = open_split(data_dir, "train")
    seen, steps = [], set()
    for host in range(hosts):
        batches = list(iterate_batches(split, train=train, global_batch=global_batch, seed=2, epoch=4,
                                       process_index=host, process_count=hosts, mode="resident", levels=("H",)))
        steps.add(len(batches))
        for batch in batches:
            assert batch["labels"].shape == (global_batch // hosts,)
            seen += list(batch["index"][batch["valid"]])
    assert len(steps) == 1  # every host runs the same number of steps
    assert sorted(seen) == list(range(split.num_clips))


def test_padded_last_batch_counts_every_clip_once(data_dir):
    split = open_split(data_dir, "test")  # 21 clips
    for mode in ("resident", "streaming"):
        batches = list(iterate_batches(split, train=False, global_batch=8, num_devices=4, mode=mode))
        assert batches[0]["features"]["H"].shape == (4, 2, 16, DIM)
        assert set(batches[0]["features"]) == {"H"}  # evaluation feeds the H level only
        valid = np.concatenate([b["valid"].reshape(-1) for b in batches])
        assert valid.sum() == 21 and len(valid) == 24
        index = np.concatenate([b["index"].reshape(-1) for b in batches])[valid]
        labels = np.concatenate([b["labels"].reshape(-1) for b in batches])[valid]
        np.testing.assert_array_equal(index, np.arange(21))  # evaluation keeps list order
        np.testing.assert_array_equal(labels, split.labels)
        last = batches[-1]
        padded = ~last["valid"].reshape(-1)
        assert padded.sum() == 3
        assert not last["masks"]["H"].reshape(8, -1)[padded].any()


def test_subset_and_step_range(data_dir):
    split = open_split(data_dir, "train")
    subset = np.arange(0, 45, 3)
    batches = list(iterate_batches(split, train=True, global_batch=4, clip_subset=subset, mode="resident",
                                   levels=("H",)))
    seen = np.concatenate([b["index"][b["valid"]] for b in batches])
    assert sorted(seen) == list(subset)
    middle = list(iterate_batches(split, train=True, global_batch=4, clip_subset=subset, mode="resident",
                                  levels=("H",), start_step=1, stop_step=3))
    _assert_same_batches(middle, batches[1:3])


def test_layout_and_plan_errors(data_dir):
    split = open_split(data_dir, "train")
    with pytest.raises(ValueError, match="not divisible by 3 devices"):
        next(iterate_batches(split, train=False, global_batch=8, num_devices=3, mode="resident"))
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        batch_plan(np.arange(10), global_batch=10, process_count=3)
    with pytest.raises(ValueError, match="data mode"):
        choose_mode(split, "mmap")


def test_auto_mode_follows_the_memory_budget(data_dir, monkeypatch):
    split = open_split(data_dir, "train")
    size = split.feature_bytes()
    assert size == sum(int(c.sum()) for c in split.num_windows.values()) * DIM * 4
    assert choose_mode(split, "auto", budget_bytes=size + 1) == "resident"
    assert choose_mode(split, "auto", budget_bytes=size - 1) == "streaming"
    monkeypatch.setenv("PTHNET_RESIDENT_BUDGET_GB", "0")
    assert choose_mode(split) == "streaming"
    assert choose_mode(split, "resident") == "resident"


def test_resident_features_are_read_once_per_split(data_dir, monkeypatch):
    split = open_split(data_dir, "test")
    list(iterate_batches(split, train=False, global_batch=16, mode="resident"))
    monkeypatch.setattr(type(split), "read", lambda *args: pytest.fail("read again"))
    list(iterate_batches(split, train=False, global_batch=16, mode="resident", epoch=1))


def test_epoch_order_and_plan():
    a = epoch_order(50, seed=1, epoch=2, shuffle=True)
    assert sorted(a) == list(range(50)) and np.array_equal(a, epoch_order(50, seed=1, epoch=2, shuffle=True))
    assert not np.array_equal(a, epoch_order(50, seed=1, epoch=3, shuffle=True))
    assert not np.array_equal(a, epoch_order(50, seed=2, epoch=2, shuffle=True))
    np.testing.assert_array_equal(epoch_order(5, seed=1, epoch=2, shuffle=False), np.arange(5))
    indices, valid = batch_plan(a, global_batch=8, process_index=1, process_count=2)
    assert indices.shape == valid.shape == (7, 4) and indices.dtype == np.int32
    np.testing.assert_array_equal(indices[0], a[4:8])  # each host: a contiguous slice of every global batch
    assert valid[:-1].all() and list(valid[-1]) == [False] * 4  # 50 = 6 * 8 + 2: host 1 gets padding only


def test_bucketed_sizes_are_few_and_close():
    from pthnet_jax.data.sampling import bucket

    sizes = [bucket(n) for n in range(1, 100_001)]
    assert all(b >= n for n, b in zip(range(1, 100_001), sizes))
    assert all(b <= max(16, n * 1.125) for n, b in zip(range(1, 100_001), sizes))
    assert sizes == sorted(sizes)  # monotone: a larger split never gets a smaller bucket
    # DFEW's five folds (~9.3k-9.4k train clips) and FERv39k's 31,088 clips: few distinct programs
    assert len({bucket(n) for n in range(9_300, 9_400)}) == 1 and bucket(31_088) == 32_768
    assert len(set(sizes)) < 150  # vs 100,000 sizes, each of which used to be a program of its own


def test_bucketed_resident_features_hold_the_same_clips(data_dir):
    from pthnet_jax.data.sampling import ResidentFeatures, bucket

    split = open_split(data_dir, "train")
    exact = ResidentFeatures.from_split(split)
    padded = ResidentFeatures.from_split(split, bucketed=True)
    assert padded.num_clips == bucket(split.num_clips) > split.num_clips
    n = split.num_clips
    np.testing.assert_array_equal(padded.labels[:n], exact.labels)
    assert not padded.labels[n:].any()
    for level in ("L", "M", "H"):
        np.testing.assert_array_equal(padded.offsets[level][:n], exact.offsets[level])
        np.testing.assert_array_equal(padded.counts[level][:n], exact.counts[level])
        assert not padded.counts[level][n:].any()
        total = len(exact.windows[level])
        assert len(padded.windows[level]) == bucket(total)
        np.testing.assert_array_equal(padded.windows[level][:total], exact.windows[level])
        assert not padded.windows[level][total:].any()
