"""Importer, validation, sampling and pipelines on synthetic data in the original layout."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from pthnet_jax.data import (DataListError, ResidentFeatures, batch_plan, epoch_order, iterate_batches,
                             open_split, sample_batch)
from pthnet_jax.data.importer import import_features
from pthnet_jax.data.importer import main as import_main
from pthnet_jax.data.synth import synthesize

DIM = 16


@pytest.fixture(scope="module")
def ferv39k_root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("syn") / "root", "FERv39k", clips=60, test_clips=21,
                      feature_dim=DIM, quiet=True)


@pytest.fixture(scope="module")
def ferv39k_data(ferv39k_root, tmp_path_factory):
    return import_features("FERv39k", ferv39k_root, tmp_path_factory.mktemp("imp") / "data",
                           feature_dim=DIM, quiet=True)


def _read_list(path):
    return [line.split() for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("like,kwargs,list_name", [
    ("FERv39k", {}, "train_All.txt"),
    ("FERv39k", {"reverse": True}, "train_All.txt"),
    ("DFEW", {"fold": 1}, "set_1_train.txt"),
    ("MELD", {}, "train.txt"),
    ("MAFW", {"fold": 1, "label_set": "single"}, "set_1_train.txt"),
])
def test_import_matches_the_lists(tmp_path, like, kwargs, list_name):
    root = synthesize(tmp_path / "root", like, clips=12, test_clips=5, feature_dim=DIM, quiet=True)
    data_dir = import_features(like, root, tmp_path / "data", feature_dim=DIM, quiet=True, **kwargs)
    split = open_split(tmp_path / "data", "train")
    suffix = "_rv" if kwargs.get("reverse") else ""
    lists = root / "annotation" / like / ("single" if like == "MAFW" else "")
    rows_h = _read_list(lists / f"th14_vit_g_16_4{suffix}" / list_name)
    assert [r[0] for r in rows_h] == list(split.clip_ids)
    assert [int(r[2]) for r in rows_h] == list(split.labels)
    records = split.read(range(split.num_clips))
    for row, record in zip(rows_h, records):  # the stored windows are the .npy files, in list order
        np.testing.assert_array_equal(record["features_H"], np.load(root / row[0]))
    assert split.dataset_info["benchmark"] == like and data_dir.is_dir()
    assert open_split(tmp_path / "data", "test").num_clips == 5


def test_mafw_compound_label_set(tmp_path):
    root = synthesize(tmp_path / "root", "MAFW", clips=10, test_clips=4, feature_dim=DIM, quiet=True)
    lists = root / "annotation" / "MAFW"
    shutil.copytree(lists / "single", lists / "compound")
    for path in (lists / "compound").glob("*/*.txt"):  # compound labels go up to 42
        rows = _read_list(path)
        path.write_text("".join(f"{p} {n} {42 - i % 3}\n" for i, (p, n, _) in enumerate(rows)))
    import_features("MAFW", root, tmp_path / "data", fold=1, label_set="compound", feature_dim=DIM, quiet=True)
    split = open_split(tmp_path / "data", "train")
    assert split.num_classes == 43 and split.labels.max() == 42


@pytest.mark.parametrize("case,match", [
    ("misaligned", "disagree on the clip"),
    ("label_mismatch", "disagree on the label"),
    ("label_range", r"label 9 is outside 0\.\.6"),
    ("missing_npy", "does not exist"),
    ("wrong_count", "has 2 windows but the list says"),
    ("not_finite", "NaN or Inf"),
    ("wrong_dim", r"expected \(\d+, 16\)"),
])
def test_bad_input_stops_the_import_and_leaves_nothing(tmp_path, case, match):
    root = synthesize(tmp_path / "root", "FERv39k", clips=8, test_clips=3, feature_dim=DIM, reverse=False,
                      quiet=True)
    lists = root / "annotation" / "FERv39k"
    h_list = lists / "th14_vit_g_16_4" / "train_All.txt"
    rows = _read_list(h_list)
    target_line = 3
    if case == "misaligned":
        l_list = lists / "th14_vit_g_16_16" / "train_All.txt"
        l_rows = _read_list(l_list)
        l_rows[2], l_rows[3] = l_rows[3], l_rows[2]
        l_list.write_text("".join(" ".join(r) + "\n" for r in l_rows))
    elif case in ("label_mismatch", "label_range"):
        rows[2][2] = "9" if case == "label_range" else str((int(rows[2][2]) + 1) % 7)
        h_list.write_text("".join(" ".join(r) + "\n" for r in rows))
        if case == "label_range":
            for other in ("th14_vit_g_16_8", "th14_vit_g_16_16"):
                o_list = lists / other / "train_All.txt"
                o_rows = _read_list(o_list)
                o_rows[2][2] = "9"
                o_list.write_text("".join(" ".join(r) + "\n" for r in o_rows))
    else:
        npy = root / rows[2][0]
        if case == "missing_npy":
            npy.unlink()
        elif case == "wrong_count":
            np.save(npy, np.zeros((2, DIM), np.float32))
            rows[2][1] = "5"
            h_list.write_text("".join(" ".join(r) + "\n" for r in rows))
        elif case == "not_finite":
            array = np.load(npy)
            array[0, 0] = np.nan
            np.save(npy, array)
        elif case == "wrong_dim":
            np.save(npy, np.zeros((int(rows[2][1]), DIM + 1), np.float32))
    out = tmp_path / "data"
    with pytest.raises(DataListError, match=match) as info:
        import_features("FERv39k", root, out, feature_dim=DIM, quiet=True)
    assert f":{target_line}" in str(info.value) or "line 3" in str(info.value)
    assert not out.exists()
    assert not list(tmp_path.glob(".data.importing-*"))  # no staging directory left either


def test_skip_bad_imports_the_rest_and_reports(tmp_path, capsys):
    root = synthesize(tmp_path / "root", "FERv39k", clips=8, test_clips=3, feature_dim=DIM, reverse=False,
                      quiet=True)
    rows = _read_list(root / "annotation" / "FERv39k" / "th14_vit_g_16_4" / "train_All.txt")
    (root / rows[4][0]).unlink()
    assert import_main(["--dataset", "FERv39k", "--root", str(root), "--out", str(tmp_path / "data"),
                        "--feature-dim", str(DIM), "--skip-bad"]) == 0
    split = open_split(tmp_path / "data", "train")
    assert split.num_clips == 7 and rows[4][0] not in set(split.clip_ids)
    report = (tmp_path / "data" / "skipped.json").read_text()
    assert rows[4][0].split("/")[-1] in report
    # Without --skip-bad the CLI exits 2 with the file named.
    assert import_main(["--dataset", "FERv39k", "--root", str(root), "--out", str(tmp_path / "d2"),
                        "--feature-dim", str(DIM)]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- sampling, against an independent per-clip implementation of spec §1 -------------------------

def reference_picks(num_windows, num_steps, train, rng=None):
    if num_windows < num_steps:
        return list(range(num_windows))
    seg = float(num_windows) / num_steps
    picks = []
    for i in range(num_steps):
        start, end = int(np.round(seg * i)), int(np.round(seg * (i + 1)))
        picks.append(int(rng.integers(start, end)) if train else start + int(seg / 2))
    return picks


def _resident_from_counts(counts_by_level):
    """Windows whose value encodes (clip, window) so picks can be read back from the features."""
    windows, offsets, counts = {}, {}, {}
    for level, counts_list in counts_by_level.items():
        counts[level] = np.array(counts_list, np.int32)
        offsets[level] = np.concatenate([[0], np.cumsum(counts[level])[:-1]]).astype(np.int32)
        windows[level] = np.concatenate([np.stack([np.full(DIM, 1000 * c + w + 1.0, np.float32)
                                                   for w in range(n)]) for c, n in enumerate(counts_list)])
    return ResidentFeatures(windows, offsets, counts, np.zeros(len(counts_list), np.int32))


def _picked(batch, level, clip):
    values = batch["features"][level][clip, :, 0]
    mask = batch["masks"][level][clip]
    return [int(round(v)) - 1000 * clip - 1 for v in values[mask]]


LENGTHS = [1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 20, 24, 31, 33, 48, 100, 201]


def test_eval_sampling_matches_reference_exactly():
    resident = _resident_from_counts({lvl: LENGTHS for lvl in ("L", "M", "H")})
    n = len(LENGTHS)
    batch = sample_batch(resident, np.arange(n), np.ones(n, bool), seed=0, epoch=0, train=False)
    for level, steps in (("L", 4), ("M", 8), ("H", 16)):
        for clip, count in enumerate(LENGTHS):
            assert _picked(batch, level, clip) == reference_picks(count, steps, False), (level, count)
            features = np.asarray(batch["features"][level][clip])
            assert (features[min(count, steps):] == 0).all()  # zero padding, no noise in evaluation


def test_train_sampling_stays_in_segments_and_covers_them():
    resident = _resident_from_counts({"H": LENGTHS})
    n = len(LENGTHS)
    seen = {count: [set() for _ in range(16)] for count in LENGTHS}
    for epoch in range(60):
        batch = sample_batch(resident, np.arange(n), np.ones(n, bool), seed=3, epoch=epoch, train=True,
                             noise_std=0.0, levels=("H",))
        for clip, count in enumerate(LENGTHS):
            picks = _picked(batch, "H", clip)
            if count < 16:
                assert picks == list(range(count))
                continue
            for i, pick in enumerate(picks):
                seen[count][i].add(pick)
    for count in (17, 20, 33, 100):
        seg = count / 16
        for i in range(16):
            start, end = int(np.round(seg * i)), int(np.round(seg * (i + 1)))
            assert seen[count][i] <= set(range(start, end))
            if end - start <= 3:
                assert seen[count][i] == set(range(start, end))  # every choice reachable


def test_training_noise_and_determinism():
    resident = _resident_from_counts({"H": [3, 40]})
    kwargs = dict(seed=1, train=True, levels=("H",))
    a = sample_batch(resident, [0, 1], [True, True], epoch=0, **kwargs)
    b = sample_batch(resident, [0, 1], [True, True], epoch=0, **kwargs)
    c = sample_batch(resident, [0, 1], [True, True], epoch=1, **kwargs)
    np.testing.assert_array_equal(a["features"]["H"], b["features"]["H"])
    assert not np.array_equal(a["features"]["H"], c["features"]["H"])
    padding = np.asarray(a["features"]["H"][0, 3:])  # noise on padding too (as-is)
    assert 0.0003 < padding.std() < 0.0008 and abs(padding.mean()) < 1e-4
    # A clip's sample does not depend on its position in the batch.
    swapped = sample_batch(resident, [1, 0], [True, True], epoch=0, **kwargs)
    np.testing.assert_array_equal(swapped["features"]["H"][1], a["features"]["H"][0])


def test_resident_and_streaming_batches_are_identical(ferv39k_data):
    split = open_split(ferv39k_data, "train")
    for train in (True, False):
        resident = list(iterate_batches(split, train=train, global_batch=8, seed=5, epoch=1, mode="resident"))
        streaming = list(iterate_batches(split, train=train, global_batch=8, seed=5, epoch=1, mode="streaming"))
        assert len(resident) == len(streaming) == 8
        for x, y in zip(resident, streaming):
            for level in x["features"]:
                np.testing.assert_array_equal(x["features"][level], y["features"][level])
                np.testing.assert_array_equal(x["masks"][level], y["masks"][level])
            np.testing.assert_array_equal(x["labels"], y["labels"])


@pytest.mark.parametrize("hosts,global_batch", [(1, 7), (2, 6), (3, 9), (4, 8)])
def test_hosts_cover_every_clip_exactly_once(ferv39k_data, hosts, global_batch):
    split = open_split(ferv39k_data, "test")
    seen = []
    for host in range(hosts):
        for batch in iterate_batches(split, train=False, global_batch=global_batch, process_index=host,
                                     process_count=hosts, mode="resident"):
            seen += list(batch["index"][batch["valid"]])
    assert sorted(seen) == list(range(split.num_clips))


def test_padded_last_batch_and_device_layout(ferv39k_data):
    split = open_split(ferv39k_data, "test")  # 21 clips
    batches = list(iterate_batches(split, train=False, global_batch=8, num_devices=4, mode="resident"))
    assert batches[0]["features"]["H"].shape == (4, 2, 16, DIM)
    valid = np.concatenate([b["valid"].reshape(-1) for b in batches])
    labels = np.concatenate([b["labels"].reshape(-1) for b in batches])[valid]
    assert valid.sum() == 21 and len(valid) == 24
    np.testing.assert_array_equal(labels, split.labels)  # evaluation keeps list order
    last = batches[-1]
    assert not last["masks"]["H"].reshape(8, -1)[~last["valid"].reshape(-1)].any()


def test_epoch_order_and_plan():
    a = epoch_order(50, seed=1, epoch=2, shuffle=True)
    assert sorted(a) == list(range(50)) and np.array_equal(a, epoch_order(50, seed=1, epoch=2, shuffle=True))
    assert not np.array_equal(a, epoch_order(50, seed=1, epoch=3, shuffle=True))
    with pytest.raises(ValueError, match="not divisible"):
        batch_plan(a, global_batch=10, process_count=3)
