"""Importer, validation and synthetic data, on features written in the original layout."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from pthnet_jax.data import BENCHMARKS, DataListError, open_split
from pthnet_jax.data.importer import import_features
from pthnet_jax.data.importer import main as import_main
from pthnet_jax.data.synth import synthesize

DIM = 16
ANNOTATION = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pthnet-annotation"
LEVEL_DIRS = {"H": "th14_vit_g_16_4", "M": "th14_vit_g_16_8", "L": "th14_vit_g_16_16"}


def _read_list(path):
    return [line.split() for line in Path(path).read_text().splitlines()]


def _write_list(path, rows):
    Path(path).write_text("".join(" ".join(row) + "\n" for row in rows))


def _lists_dir(root, name):
    return root / "annotation" / name / ("single" if name == "MAFW" else "")


@pytest.mark.parametrize("name,kwargs,list_name,suffix", [
    ("FERv39k", {}, "{split}_All.txt", ""),
    ("FERv39k", {"reverse": True}, "{split}_All.txt", "_rv"),
    ("DFEW", {"fold": 1}, "set_1_{split}.txt", ""),
    ("DFEW", {"fold": 1, "reverse": True}, "set_1_{split}.txt", "_rv"),
    ("MELD", {}, "{split}.txt", ""),
    ("MELD", {"reverse": True}, "{split}.txt", "_rv"),
    ("MAFW", {"fold": 1, "label_set": "single"}, "set_1_{split}.txt", ""),
    ("MAFW", {"fold": 1, "reverse": True}, "set_1_{split}.txt", "_rv"),  # label set defaults to single
    ("CREMA-D", {"fold": 1}, "set_1_{split}.txt", ""),
    ("eNTERFACE05", {"fold": 1}, "set_1_{split}.txt", ""),
    ("RAVDESS", {"fold": 1}, "set_1_{split}.txt", ""),
    ("CASME2", {"fold": 1, "reverse": True}, "set_1_{split}.txt", "_rv"),
])
def test_import_matches_the_lists(tmp_path, name, kwargs, list_name, suffix):
    root = synthesize(tmp_path / "root", name, clips=9, test_clips=4, feature_dim=DIM, quiet=True)
    data_dir = import_features(name, root, tmp_path / "data", feature_dim=DIM, quiet=True, **kwargs)
    for split_name, size in (("train", 9), ("test", 4)):
        split = open_split(tmp_path / "data", split_name)
        rows = {lvl: _read_list(_lists_dir(root, name) / (folder + suffix) / list_name.format(split=split_name))
                for lvl, folder in LEVEL_DIRS.items()}
        assert split.num_clips == size == len(rows["H"])
        assert list(split.clip_ids) == [row[0] for row in rows["H"]]  # list order, paths as written
        assert list(split.labels) == [int(row[2]) for row in rows["H"]]
        assert split.class_names == list(BENCHMARKS[name].class_names)
        assert split.num_classes == BENCHMARKS[name].num_classes and split.feature_dim == DIM
        for index, record in enumerate(split.read(range(size))):  # stored windows are the .npy files
            for lvl in ("L", "M", "H"):
                assert split.num_windows[lvl][index] == int(rows[lvl][index][1])
                np.testing.assert_array_equal(record[f"features_{lvl}"], np.load(root / rows[lvl][index][0]))
    assert (suffix + "/") in split.clip_ids[0]
    assert split.dataset_info["benchmark"] == name and data_dir.parent.name == split.dataset_info["variant"]


def test_face_variant_and_explicit_lists_folder(tmp_path):
    root = synthesize(tmp_path / "root", "FERv39k", clips=6, test_clips=2, feature_dim=DIM, face=True, quiet=True)
    lists = tmp_path / "elsewhere"
    shutil.move(root / "annotation" / "FERv39k", lists)
    import_features("FERv39k", root, tmp_path / "data", lists=lists, face=True, reverse=True, feature_dim=DIM,
                    quiet=True)
    split = open_split(tmp_path / "data", "train")
    assert all("/th14_vit_g_16_4_face_rv/" in clip for clip in split.clip_ids)
    assert split.dataset_info["face"] and split.dataset_info["reverse"]
    assert split.dataset_info["variant"] == "ferv39k_face_rv"


def test_mafw_compound_label_set(tmp_path):
    root = synthesize(tmp_path / "root", "MAFW", clips=10, test_clips=4, feature_dim=DIM, quiet=True)
    lists = root / "annotation" / "MAFW"
    shutil.copytree(lists / "single", lists / "compound")
    for path in (lists / "compound").glob("*/*.txt"):  # compound labels go up to 42
        rows = _read_list(path)
        _write_list(path, [[p, n, str(42 - i % 3)] for i, (p, n, _) in enumerate(rows)])
    import_features("MAFW", root, tmp_path / "data", fold=1, label_set="compound", feature_dim=DIM, quiet=True)
    split = open_split(tmp_path / "data", "train")
    assert split.num_classes == 43 and split.labels.max() == 42
    assert split.dataset_info["label_set"] == "compound"


def test_metadata_and_tfds_data_source(tmp_path):
    import tensorflow_datasets as tfds

    root = synthesize(tmp_path / "root", "DFEW", clips=7, test_clips=3, feature_dim=DIM, quiet=True)
    version_dir = import_features("DFEW", root, tmp_path / "data", fold=1, feature_dim=DIM, quiet=True)
    info = open_split(version_dir, "train").dataset_info  # the version directory works as well
    h_list = Path(info["list_files"]["train"]["H"])
    assert h_list == _lists_dir(root, "DFEW") / "th14_vit_g_16_4" / "set_1_train.txt"
    assert info["list_sha256"]["train"]["H"] == hashlib.sha256(h_list.read_bytes()).hexdigest()
    assert info["fold"] == 1 and info["feature_dim"] == DIM and info["class_names"][0] == "Happy"
    # Readable with plain TFDS (no TensorFlow, no project code needed to decode).
    source = tfds.data_source("pthnet_features/dfew_fold1", data_dir=str(tmp_path / "data"))
    record = source["test"][2]
    rows = _read_list(_lists_dir(root, "DFEW") / "th14_vit_g_16_4" / "set_1_test.txt")
    assert record["clip_id"].decode() == rows[2][0] and record["label"] == int(rows[2][2])
    np.testing.assert_array_equal(record["features_H"], np.load(root / rows[2][0]))


def test_clip_index_is_rebuilt_from_the_records(tmp_path):
    root = synthesize(tmp_path / "root", "MELD", clips=8, test_clips=3, feature_dim=DIM, quiet=True)
    version_dir = import_features("MELD", root, tmp_path / "data", feature_dim=DIM, quiet=True)
    first = open_split(tmp_path / "data", "train")
    (version_dir / "pthnet_index-train.npz").unlink()
    second = open_split(tmp_path / "data", "train")
    np.testing.assert_array_equal(first.clip_ids, second.clip_ids)
    np.testing.assert_array_equal(first.labels, second.labels)
    for level in ("L", "M", "H"):
        np.testing.assert_array_equal(first.num_windows[level], second.num_windows[level])


# ---- validation: every broken input stops the import, names file and line, leaves nothing ------

def _break(root, case):
    """Damage line 3 of the FERv39k train split (or the test split, for `test_split_nan`)."""
    lists = root / "annotation" / "FERv39k"
    h_list = lists / "th14_vit_g_16_4" / "train_All.txt"
    rows = _read_list(h_list)
    if case == "misaligned":
        l_list = lists / "th14_vit_g_16_16" / "train_All.txt"
        l_rows = _read_list(l_list)
        l_rows[2], l_rows[3] = l_rows[3], l_rows[2]
        _write_list(l_list, l_rows)
        return l_list
    if case == "label_mismatch":
        rows[2][2] = str((int(rows[2][2]) + 1) % 7)
        _write_list(h_list, rows)
        return h_list
    if case == "label_range":
        for folder in LEVEL_DIRS.values():
            level_rows = _read_list(lists / folder / "train_All.txt")
            level_rows[2][2] = "9"
            _write_list(lists / folder / "train_All.txt", level_rows)
        return h_list
    if case == "bad_line":
        rows[2] = rows[2][:2]
        _write_list(h_list, rows)
        return h_list
    if case == "bad_count":
        rows[2][1] = "five"
        _write_list(h_list, rows)
        return h_list
    if case == "test_split_nan":
        test_rows = _read_list(lists / "th14_vit_g_16_4" / "test_All.txt")
        npy = root / test_rows[2][0]
        array = np.load(npy)
        array[-1, 1] = np.inf
        np.save(npy, array)
        return npy
    npy = root / rows[2][0]
    if case == "missing_npy":
        npy.unlink()
    elif case == "wrong_count":
        np.save(npy, np.zeros((int(rows[2][1]) + 1, DIM), np.float32))
    elif case == "not_finite":
        array = np.load(npy)
        array[0, 0] = np.nan
        np.save(npy, array)
    elif case == "wrong_dim":
        np.save(npy, np.zeros((int(rows[2][1]), DIM + 1), np.float32))
    elif case == "one_dimensional":
        np.save(npy, np.zeros(DIM, np.float32))
    elif case == "not_numeric":
        np.save(npy, np.full((int(rows[2][1]), DIM), "x"))
    elif case == "not_npy":
        npy.write_bytes(b"definitely not an npy file")
    return npy


@pytest.mark.parametrize("case,match", [
    ("misaligned", "disagree on the clip"),
    ("label_mismatch", "disagree on the label"),
    ("label_range", r"label 9 is outside 0\.\.6"),
    ("bad_line", "expected '<npy path> <num_windows> <label>'"),
    ("bad_count", "must be integers"),
    ("missing_npy", "does not exist"),
    ("wrong_count", "windows but the list says"),
    ("not_finite", "NaN or Inf"),
    ("test_split_nan", "NaN or Inf"),  # fails after the train split was written
    ("wrong_dim", r"expected \(\d+, 16\)"),
    ("one_dimensional", r"expected \(\d+, 16\)"),
    ("not_numeric", "float32-compatible"),
    ("not_npy", "not a readable .npy"),
])
def test_bad_input_stops_the_import_and_leaves_nothing(tmp_path, case, match):
    root = synthesize(tmp_path / "root", "FERv39k", clips=8, test_clips=4, feature_dim=DIM, reverse=False,
                      quiet=True)
    culprit = _break(root, case)
    out = tmp_path / "data"
    with pytest.raises(DataListError, match=match) as info:
        import_features("FERv39k", root, out, feature_dim=DIM, quiet=True)
    message = str(info.value)
    assert ":3" in message  # line 3 of the list (1-based)
    assert culprit.name in message
    assert not out.exists()
    assert not list(tmp_path.glob(".data.importing-*"))  # no staging directory left either


def test_list_structure_errors(tmp_path):
    root = synthesize(tmp_path / "root", "DFEW", clips=5, test_clips=2, feature_dim=DIM, reverse=False, quiet=True)
    m_list = _lists_dir(root, "DFEW") / "th14_vit_g_16_8" / "set_1_train.txt"
    _write_list(m_list, _read_list(m_list)[:-1])
    with pytest.raises(DataListError, match="same number of lines.*set_1_train.txt has 4"):
        import_features("DFEW", root, tmp_path / "data", fold=1, feature_dim=DIM, quiet=True)
    with pytest.raises(DataListError, match="set_2_train.txt: data list not found"):
        import_features("DFEW", root, tmp_path / "data", fold=2, feature_dim=DIM, quiet=True)
    with pytest.raises(ValueError, match="--fold"):
        import_features("DFEW", root, tmp_path / "data", feature_dim=DIM, quiet=True)
    with pytest.raises(ValueError, match="fold in 1..5"):
        import_features("DFEW", root, tmp_path / "data", fold=6, feature_dim=DIM, quiet=True)
    with pytest.raises(ValueError, match="unknown benchmark"):
        import_features("AFEW", root, tmp_path / "data", feature_dim=DIM, quiet=True)
    assert not (tmp_path / "data").exists()
    (tmp_path / "data").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        import_features("DFEW", root, tmp_path / "data", fold=1, feature_dim=DIM, quiet=True)


def test_skip_bad_imports_the_rest_and_reports(tmp_path, capsys):
    root = synthesize(tmp_path / "root", "FERv39k", clips=8, test_clips=3, feature_dim=DIM, reverse=False,
                      quiet=True)
    rows = _read_list(root / "annotation" / "FERv39k" / "th14_vit_g_16_4" / "train_All.txt")
    (root / rows[4][0]).unlink()
    label_rows = _read_list(root / "annotation" / "FERv39k" / "th14_vit_g_16_8" / "train_All.txt")
    label_rows[6][2] = str((int(label_rows[6][2]) + 1) % 7)
    _write_list(root / "annotation" / "FERv39k" / "th14_vit_g_16_8" / "train_All.txt", label_rows)
    assert import_main(["--dataset", "FERv39k", "--root", str(root), "--out", str(tmp_path / "data"),
                        "--feature-dim", str(DIM), "--skip-bad"]) == 0
    split = open_split(tmp_path / "data", "train")
    assert list(split.clip_ids) == [row[0] for i, row in enumerate(rows) if i not in (4, 6)]
    report = (tmp_path / "data" / "skipped.json").read_text()
    assert rows[4][0].split("/")[-1] in report and ":7" in report and "disagree on the label" in report
    assert "2 skipped" in capsys.readouterr().out
    # Without --skip-bad the command exits 2 at the first problem (the lists are checked first).
    assert import_main(["--dataset", "FERv39k", "--root", str(root), "--out", str(tmp_path / "d2"),
                        "--feature-dim", str(DIM)]) == 2
    error = capsys.readouterr().err
    assert "disagree on the label" in error and "train_All.txt:7" in error and not (tmp_path / "d2").exists()


# ---- synthetic data ------------------------------------------------------------------------------

@pytest.mark.skipif(not ANNOTATION.is_dir(), reason="needs ../shared/data/pthnet-annotation")
@pytest.mark.parametrize("name", ["FERv39k", "DFEW"])
def test_synth_takes_clips_from_the_real_lists(tmp_path, name):
    root = synthesize(tmp_path / "root", name, clips=50, test_clips=10, feature_dim=DIM, quiet=True,
                      annotation_dir=ANNOTATION)
    list_name = "train_All.txt" if name == "FERv39k" else "set_1_train.txt"
    real = {lvl: _read_list(ANNOTATION / name / folder / list_name) for lvl, folder in LEVEL_DIRS.items()}
    real_by_path = {row[0]: i for i, row in enumerate(real["H"])}
    ours = {lvl: _read_list(root / "annotation" / name / folder / list_name) for lvl, folder in LEVEL_DIRS.items()}
    indices = [real_by_path[row[0]] for row in ours["H"]]  # real clips, in the real lists' order
    assert len(indices) == 50 and indices == sorted(indices)
    for lvl in LEVEL_DIRS:
        assert [row for row in ours[lvl]] == [real[lvl][i] for i in indices]  # path, count and label
        for row in ours[lvl][:5]:
            assert np.load(root / row[0]).shape == (int(row[1]), DIM)
    rv = _read_list(root / "annotation" / name / "th14_vit_g_16_4_rv" / list_name)
    assert rv[0][0] == ours["H"][0][0].replace("th14_vit_g_16_4/", "th14_vit_g_16_4_rv/")
    np.testing.assert_array_equal(np.load(root / rv[0][0]), np.load(root / ours["H"][0][0])[::-1])


def test_synth_fallback_without_real_lists(tmp_path):
    root = synthesize(tmp_path / "root", "DFEW", clips=30, feature_dim=DIM, reverse=False, quiet=True)
    lists = {lvl: _read_list(root / "annotation" / "DFEW" / folder / "set_1_train.txt")
             for lvl, folder in LEVEL_DIRS.items()}
    assert len(lists["H"]) == 30 and len(_read_list(root / "annotation" / "DFEW" / "th14_vit_g_16_4" /
                                                    "set_1_test.txt")) == 8  # the 4:1 default ratio
    for h_row, m_row, l_row in zip(lists["H"], lists["M"], lists["L"]):
        h, m, low = int(h_row[1]), int(m_row[1]), int(l_row[1])
        assert h >= m >= low >= 1 and h <= 2 * m + 1 and m <= 2 * low + 1  # strides 4, 8, 16 of one clip
        assert np.load(root / h_row[0]).shape == (h, DIM)
    import_features("DFEW", root, tmp_path / "data", fold=1, feature_dim=DIM, quiet=True)


def test_synth_class_signal_is_learnable_but_not_trivial(tmp_path):
    dim = 256
    root = synthesize(tmp_path / "root", "FERv39k", clips=420, test_clips=210, feature_dim=dim, signal=2.0,
                      reverse=False, quiet=True)

    def clip_means(split):
        rows = _read_list(root / "annotation" / "FERv39k" / "th14_vit_g_16_4" / f"{split}_All.txt")
        return (np.stack([np.load(root / row[0]).mean(0) for row in rows]),
                np.array([int(row[2]) for row in rows]))

    train_x, train_y = clip_means("train")
    test_x, test_y = clip_means("test")
    centroids = np.stack([train_x[train_y == c].mean(0) for c in range(7)])
    predicted = np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == test_y).mean()
    majority = np.bincount(test_y, minlength=7).max() / len(test_y)
    assert majority + 0.15 < accuracy < 0.97, accuracy
