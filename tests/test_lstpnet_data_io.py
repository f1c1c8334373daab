"""LSTPNet frames dataset: import (validation, atomicity, videos) and the grain batch reader, checked
against frames read straight from the files with Pillow and indices from §7's formulas."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pthnet_jax.families.lstpnet.clip_data import open_clip_split
from pthnet_jax.families.lstpnet.clip_import import import_clips
from pthnet_jax.families.lstpnet.clip_pipeline import epoch_plan, iterate_clip_batches
from pthnet_jax.families.lstpnet.clip_synth import write_synth_clips, write_synth_video
from pthnet_jax.families.lstpnet.clips import ClipListError

from test_lstpnet_data import reference_eval_indices


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    base = tmp_path_factory.mktemp("lstp")
    lists = write_synth_clips(base / "root", clips=12, test_clips=7, min_frames=8, max_frames=30, seed=1)
    data = import_clips(lists["train"], lists["test"], base / "root", base / "data", benchmark="DFEW",
                        fold=2, quiet=True)
    return {"base": base, "root": base / "root", "lists": lists, "data": data,
            "train": open_clip_split(data, "train"), "test": open_clip_split(data, "test")}


def _listed(path: Path) -> list[tuple[str, int, int]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(r[0], int(r[1]), int(r[2])) for r in rows]


def _pillow_clip(folder: Path, indices, size: int, flip: bool = False) -> np.ndarray:
    files = sorted(folder.glob("*.jpg"))
    out = []
    for i in indices:
        image = Image.open(files[i]).convert("RGB").resize((size, size), Image.BILINEAR)
        out.append(np.asarray(image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image))
    return np.stack(out)


def test_import_keeps_list_order_labels_counts_and_metadata(synth):
    for split in ("train", "test"):
        listed, opened = _listed(synth["lists"][split]), synth[split]
        assert opened.clip_ids.tolist() == [r[0] for r in listed]
        assert opened.num_frames.tolist() == [r[1] for r in listed]
        assert opened.labels.tolist() == [r[2] for r in listed]
        assert opened.short_clip_count() == sum(r[1] < 16 for r in listed) > 0
        assert opened.long_clips().tolist() == [i for i, r in enumerate(listed) if r[1] >= 16]
    info = synth["test"].dataset_info
    assert info["benchmark"] == "DFEW" and info["fold"] == 2 and info["frame_pattern"] == "jpg"
    assert synth["test"].class_names == ["Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"]
    clip = synth["test"].frames(3)  # stored bytes are the files' own bytes
    files = sorted((synth["root"] / synth["test"].clip_ids[3]).glob("*.jpg"))
    assert [clip[i] for i in range(len(clip))] == [f.read_bytes() for f in files]


def test_eval_batches_equal_pillow_on_the_raw_frames(synth):
    split = synth["test"]
    batches = list(iterate_clip_batches(split, train=False, global_batch=4, process_index=0, process_count=1))
    assert [b["frames"].shape for b in batches] == [(4, 16, 224, 224, 3)] * 2
    frames = np.concatenate([b["frames"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert valid.tolist() == [True] * 7 + [False] and index.tolist() == list(range(7)) + [0]
    assert np.concatenate([b["label"] for b in batches]).tolist() == split.labels.tolist() + [0]
    assert not frames[7].any()
    padded = list(iterate_clip_batches(split, train=False, global_batch=4, process_index=0, process_count=1,
                                       size=8, pad_with_clips=True, start_step=1))[0]
    assert padded["frames"][3].any() and not padded["valid"][3] and padded["index"][3] == 0
    np.testing.assert_array_equal(padded["frames"][3], next(iterate_clip_batches(
        split, train=False, global_batch=4, process_index=0, process_count=1, size=8))["frames"][0])
    for i in (0, 3, 6):
        want = _pillow_clip(synth["root"] / split.clip_ids[i], reference_eval_indices(int(split.num_frames[i])), 224)
        np.testing.assert_array_equal(frames[i], want)


def test_train_batches_flip_and_sample_inside_the_clip(synth):
    from pthnet_jax.families.lstpnet.clips import sample_clip

    split = synth["train"]
    seen_flip = set()
    for batch in iterate_clip_batches(split, train=True, global_batch=5, seed=4, epoch=2, size=24,
                                      process_index=0, process_count=1):
        for row in np.flatnonzero(batch["valid"]):
            clip = int(batch["index"][row])
            indices, flip = sample_clip(int(split.num_frames[clip]), seed=4, epoch=2, clip=clip, train=True)
            seen_flip.add(flip)
            want = _pillow_clip(synth["root"] / split.clip_ids[clip], indices, 24, flip)
            np.testing.assert_array_equal(batch["frames"][row], want)
    assert seen_flip == {True, False}


def test_batches_are_deterministic_across_reads_threads_restarts_and_processes(synth):
    def epoch(split, e, **kw):
        kw = {"process_index": 0, "process_count": 1, **kw}
        return list(iterate_clip_batches(split, train=True, global_batch=4, seed=7, epoch=e, size=16, **kw))

    first = epoch(synth["train"], 1)
    reopened = open_clip_split(synth["data"], "train")  # a restart: a fresh reader at epoch 1
    for a, b in zip(first, epoch(reopened, 1, num_threads=1)):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [b["index"].tolist() for b in first] != [b["index"].tolist() for b in epoch(reopened, 2)]
    resumed = epoch(reopened, 1, start_step=1)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(first[1:], resumed) for k in a)
    halves = [epoch(reopened, 1, process_index=p, process_count=2) for p in range(2)]
    for whole, h0, h1 in zip(first, *halves):
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([h0[key], h1[key]]))
    order = np.concatenate([b["index"][b["valid"]] for b in first])
    assert sorted(order.tolist()) == list(range(synth["train"].num_clips))
    layout = epoch(reopened, 1, num_devices=2)
    assert layout[0]["frames"].shape == (2, 2, 16, 16, 16, 3)


def test_short_clip_filter_is_an_option(synth):
    split = synth["test"]
    everything, _ = epoch_plan(split, train=False, global_batch=16)
    filtered, valid = epoch_plan(split, train=False, global_batch=16, min_frames=16)
    assert everything[0][:split.num_clips].tolist() == list(range(split.num_clips))
    assert filtered[0][valid[0]].tolist() == split.long_clips().tolist()
    assert int(valid.sum()) == split.num_clips - split.short_clip_count()
    train = synth["train"]
    view = train.filtered(16)  # a view of the long clips: same records, same randomness
    assert view.clip_ids.tolist() == train.clip_ids[train.long_clips()].tolist()
    assert view.num_clips == train.num_clips - train.short_clip_count() and train.filtered(0) is train
    kw = dict(train=True, global_batch=view.num_clips, seed=5, epoch=3, size=12, process_index=0, process_count=1)
    (from_view,) = iterate_clip_batches(view, shuffle=False, **kw)
    (from_all,) = iterate_clip_batches(train, shuffle=False, subset=train.long_clips(), **kw)
    np.testing.assert_array_equal(from_view["frames"], from_all["frames"])
    np.testing.assert_array_equal(from_view["label"], from_all["label"])


@pytest.fixture()
def clip_root(tmp_path, synth):
    """A small copy of two synthetic test clips, which a test may break."""
    import shutil

    root = tmp_path / "root"
    rows = _listed(synth["lists"]["test"])[:2]
    for path, _, _ in rows:
        shutil.copytree(synth["root"] / path, root / path)
    (root / "list.txt").write_text("".join(f"{p} {n} {l}\n" for p, n, l in rows))
    return root, rows


def _run_import(root, out, **kw):
    return import_clips(None, root / "list.txt", root, out, benchmark="DFEW", quiet=True, **kw)


@pytest.mark.parametrize("damage, message", [
    ("missing", "list.txt:2: .*no such frame folder"),
    ("count", "list.txt:2: the list says 99 frames, .* has"),
    ("corrupt", "list.txt:2: .*00002.jpg: (not a readable image|cannot decode)"),
    ("label", "list.txt:2: label 9 is outside 0..6"),
])
def test_import_names_the_bad_clip_and_leaves_nothing(clip_root, damage, message):
    root, rows = clip_root
    path, count, label = rows[1]
    if damage == "missing":
        import shutil
        shutil.rmtree(root / path)
    elif damage == "corrupt":
        frame = root / path / "00002.jpg"
        frame.write_bytes(frame.read_bytes()[:len(frame.read_bytes()) // 2])
    elif damage in ("count", "label"):
        new = (path, 99, label) if damage == "count" else (path, count, 9)
        (root / "list.txt").write_text("".join(f"{p} {n} {l}\n" for p, n, l in [rows[0], new]))
    out = root.parent / "out"
    with pytest.raises(ClipListError, match=message):
        _run_import(root, out)
    assert not out.exists() and not [p for p in root.parent.iterdir() if p.name.startswith(".out")]
    if damage != "label":  # a list error stops the import even with --skip-bad
        dataset = _run_import(root, out, skip_bad=True)
        assert open_clip_split(dataset, "test").clip_ids.tolist() == [rows[0][0]]
        skipped = json.loads((out / "skipped.json").read_text())["skipped"]
        assert len(skipped) == 1 and "list.txt:2" in skipped[0]
    with pytest.raises(FileExistsError) if out.exists() else pytest.raises(ClipListError):
        _run_import(root, out)


def test_video_clips(tmp_path):
    root = tmp_path / "root"
    (root / "videos").mkdir(parents=True)
    written = {name: write_synth_video(root / "videos" / f"{name}.mkv", label, n, seed=label)
               for name, label, n in [("a", 1, 21), ("b", 4, 12)]}
    (root / "list.txt").write_text("videos/a.mkv 21 1\nvideos/b.mkv 0 4\n")
    dataset = import_clips(None, root / "list.txt", root, tmp_path / "out", benchmark="custom",
                           classes="c0,c1,c2,c3,c4", quiet=True)
    split = open_clip_split(dataset, "test")
    assert split.num_frames.tolist() == [21, 12] and split.short_clip_count() == 1
    assert split.class_names == ["c0", "c1", "c2", "c3", "c4"]
    frames = next(iterate_clip_batches(split, train=False, global_batch=2, size=40, process_index=0,
                                       process_count=1))["frames"]
    for row, name in enumerate(["a", "b"]):
        indices = reference_eval_indices(len(written[name]))
        want = [np.asarray(Image.fromarray(written[name][i]).resize((40, 40), Image.BILINEAR)) for i in indices]
        np.testing.assert_array_equal(frames[row], np.stack(want))
    (root / "list.txt").write_text("videos/a.mkv 20 1\n")
    with pytest.raises(ClipListError, match="list.txt:1: the list says 20 frames, .*a.mkv has 21"):
        import_clips(None, root / "list.txt", root, tmp_path / "out2", benchmark="custom", classes="a,b", quiet=True)


def test_commands(tmp_path, capsys):
    from pthnet_jax import cli

    assert cli.main(["synth-clips", "--out", str(tmp_path / "root"), "--clips", "3", "--test-clips", "2",
                     "--size", "16x12"]) == 0
    args = ["import-clips", "--list-test", str(tmp_path / "root" / "test.txt"), "--root",
            str(tmp_path / "root"), "--out", str(tmp_path / "data"), "--benchmark", "AFEW"]
    assert cli.main(args) == 0
    assert "test: 2 clips of 2 listed;" in capsys.readouterr().out
    assert open_clip_split(tmp_path / "data", "test").dataset_info["frame_pattern"] == "all"
    assert cli.main(args) == 2 and "already exists" in capsys.readouterr().err
    assert cli.main(args[:-2] + ["--benchmark", "custom"]) == 2
    assert "needs its class names" in capsys.readouterr().err
