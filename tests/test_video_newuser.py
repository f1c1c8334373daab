"""The video path as a new user walks it (issue 24): a ROOT that records what made it, datasets of
one's own, checks before decoding, `pthnet predict`'s arguments, and the smaller points."""
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from pthnet_jax.video import extract as extract_module
from pthnet_jax.video.extract import ExtractOptions, extract
from pthnet_jax.video.record import ExtractMismatch
from video_helpers import TOY_DIM, moving_frames, toy_backbone, write_video

CLIPS = {"a/one": 17, "a/two": 20, "b/three": 18}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("newuser_videos")
    for i, (name, count) in enumerate(CLIPS.items()):
        write_video(root / f"{name}.mp4", moving_frames(count, 64, 80, seed=i))
    return root


def _run(videos, out, backbone, **kwargs):
    kwargs.setdefault("options", ExtractOptions(strides=(4, 8, 16), directions=("forward",)))
    return extract(videos, out, kwargs.pop("dataset", "FERv39k"), backbone, pool_frames=64, progress=False, **kwargs)


def _no_decoding(monkeypatch):
    def refuse(path):
        raise AssertionError(f"decoded {path} before the arguments were checked")

    monkeypatch.setattr("pthnet_jax.video.decode.load_clip", refuse)


def test_a_root_refuses_another_backbone_or_schedule_and_force_starts_over(videos, tmp_path, monkeypatch):
    out = tmp_path / "root"
    first = _run(videos, out, toy_backbone(0))
    assert first["extracted"] == 3
    record = json.loads((out / "get_features" / "FERv39k" / "extract_record.json").read_text())
    assert record["dim"] == TOY_DIM and record["schedule"] == "cover_end" and len(record["backbone_sha256"]) == 64
    before = {p: p.read_bytes() for p in (out / "get_features").rglob("*.npy")}
    _no_decoding(monkeypatch)
    with pytest.raises(ExtractMismatch, match="backbone_sha256") as caught:  # another backbone (other weights)
        _run(videos, out, toy_backbone(1))
    assert "--force" in str(caught.value)
    with pytest.raises(ExtractMismatch, match="schedule: 'cover_end' there, 'public' now"):
        _run(videos, out, toy_backbone(0), options=ExtractOptions(strides=(4,), directions=("forward",),
                                                                 schedule="public"))
    bf16 = toy_backbone(0)
    bf16.compute_dtype = "bfloat16"
    with pytest.raises(ExtractMismatch, match="compute_dtype"):
        _run(videos, out, bf16)
    assert {p: p.read_bytes() for p in (out / "get_features").rglob("*.npy")} == before  # nothing touched
    monkeypatch.undo()
    # Another direction adds folders: the same backbone and schedule, so it is allowed.
    more = _run(videos, out, toy_backbone(0), options=ExtractOptions(strides=(4,), directions=("reverse",)))
    assert more["extracted"] == 3
    forced = _run(videos, out, toy_backbone(1), force=True)
    assert forced["extracted"] == 3 and forced["already_done"] == 0 and "deleted" in forced["forced"]
    assert not (out / "get_features" / "FERv39k" / "th14_vit_g_16_4_rv").exists()
    after = json.loads((out / "get_features" / "FERv39k" / "extract_record.json").read_text())
    assert after["backbone_sha256"] != record["backbone_sha256"]


def test_features_without_a_record_are_not_mixed(videos, tmp_path):
    folder = tmp_path / "root" / "get_features" / "FERv39k" / "th14_vit_g_16_4" / "a"
    folder.mkdir(parents=True)
    np.save(folder / "one.npy", np.zeros((1, 384), np.float32))
    with pytest.raises(ExtractMismatch, match="no record"):
        _run(videos, tmp_path / "root", toy_backbone(0))


def test_dataset_labels_and_videos_are_checked_before_decoding(videos, tmp_path, monkeypatch):
    _no_decoding(monkeypatch)
    labels = tmp_path / "labels.txt"
    labels.write_text("a/one.mp4 0 train\na/two.mp4 calm train\nb/three.mp4 1\n")
    with pytest.raises(ValueError, match="not one of the eight benchmarks.*--classes"):
        _run(videos, tmp_path / "r", toy_backbone(), dataset="MyClips", labels=labels)
    with pytest.raises(ValueError, match="neither a class of FERv39k"):  # 'calm' is not a FERv39k class
        _run(videos, tmp_path / "r", toy_backbone(), labels=labels)
    labels.write_text("a/one.mp4 7 train\n")
    with pytest.raises(ValueError, match=r"0\.\.6"):  # FERv39k has 7 classes
        _run(videos, tmp_path / "r", toy_backbone(), labels=labels)
    with pytest.raises(ValueError, match="benchmark whose classes"):
        _run(videos, tmp_path / "r", toy_backbone(), classes="x,y")
    with pytest.raises(ValueError, match="folder name"):
        _run(videos, tmp_path / "r", toy_backbone(), dataset="../up")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos"):
        _run(tmp_path / "empty", tmp_path / "r", toy_backbone())
    assert not (tmp_path / "r").exists()


def test_extract_command_reports_a_folder_without_videos_and_a_missing_backbone(tmp_path, capsys):
    from pthnet_jax.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "x.mp4", moving_frames(17, 32, 32))
    assert main(["extract", str(tmp_path / "empty"), "--backbone", "vit.pth", "--out", str(tmp_path / "r"),
                 "--dataset", "FERv39k"]) == 2
    assert "no videos" in capsys.readouterr().err
    assert main(["extract", str(tmp_path / "v"), "--backbone", str(tmp_path / "vit.pth"), "--out",
                 str(tmp_path / "r"), "--dataset", "FERv39k"]) == 2
    err = capsys.readouterr().err
    assert "no such VideoMAE backbone file" in err and "pthnet demo-video --workdir DIR" in err


def test_own_classes_by_name_and_lists_without_a_split_column(videos, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a/one.mp4 calm train\na/two.mp4 1 train\nb/three.mp4 angry\n")
    summary = _run(videos, tmp_path / "root", toy_backbone(), dataset="MyClips", labels=labels,
                   classes="calm,angry")
    assert (tmp_path / "root" / "annotation" / "MyClips" / "classes.txt").read_text().split() == ["calm", "angry"]
    lists = tmp_path / "root" / "annotation" / "MyClips" / "th14_vit_g_16_4"
    assert [line.split()[-1] for line in (lists / "train.txt").read_text().splitlines()] == ["0", "1"]
    assert [line.split()[-1] for line in (lists / "test.txt").read_text().splitlines()] == ["1"]
    assert any("no split column" in note for note in summary["notes"])
    labels.write_text("a/one.mp4 calm\n")
    summary = _run(videos, tmp_path / "root", toy_backbone(), dataset="MyClips", labels=labels, classes="calm,angry")
    assert any("no training clip" in note for note in summary["notes"])


@pytest.mark.slow  # builds TFDS datasets
def test_own_classes_and_width_carry_through_import(videos, tmp_path):
    from pthnet_jax.data import open_split
    from pthnet_jax.data.importer import import_features

    labels = tmp_path / "labels.txt"
    labels.write_text("a/one.mp4 calm train\na/two.mp4 angry train\nb/three.mp4 angry test\n")
    _run(videos, tmp_path / "root", toy_backbone(), dataset="MyClips", labels=labels, classes="calm,angry")
    data = import_features("MyClips", tmp_path / "root", tmp_path / "data", quiet=True)  # no --feature-dim
    split = open_split(data, "train")
    assert split.class_names == ["calm", "angry"] and split.feature_dim == TOY_DIM
    assert list(split.labels) == [0, 1]


def test_import_points_back_to_the_labels_when_the_train_list_is_missing(tmp_path):
    from pthnet_jax.data.importer import import_features
    from pthnet_jax.data.lists import DataListError

    with pytest.raises(DataListError, match="third column"):
        import_features("FERv39k", tmp_path, tmp_path / "data", quiet=True)
    with pytest.raises(ValueError, match="--classes"):
        import_features("MyClips", tmp_path, tmp_path / "data", quiet=True)


def test_train_takes_the_feature_width_from_the_data(tmp_path, capsys):
    from pthnet_jax.commands.train import fit_feature_width, remove_unstarted_workdir
    from pthnet_jax.configs import tiny

    dataset = tmp_path / "data" / "pthnet_features" / "x" / "1.0.0"
    dataset.mkdir(parents=True)
    (dataset / "dataset_info.json").write_text("{}")
    (dataset / "metadata.json").write_text(json.dumps({"feature_dim": 768}))
    config = tiny.get_config()
    config.data.data_dir = str(tmp_path / "data")
    fit_feature_width(config, ["pthnet train", "--config.model.n_in=16"])
    assert config.model.n_in == 16  # asked for on the command line: kept (training then names the flag)
    fit_feature_width(config, ["pthnet train"])
    assert config.model.n_in == 768 and "model.n_in = 768" in capsys.readouterr().err
    # A run that failed before its first checkpoint leaves no workdir it created.
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "data.json").write_text("{}")
    remove_unstarted_workdir(workdir, created=False)
    assert workdir.exists()
    remove_unstarted_workdir(workdir, created=True)
    assert not workdir.exists()


def test_sigint_during_extract_stops_after_a_clip_and_a_rerun_resumes(videos, tmp_path, monkeypatch):
    from pthnet_jax import interrupts

    real = extract_module.atomic_path
    sent = []

    def signal_once(path):
        if not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while the first clip's files are written
            time.sleep(0.3)  # the watcher thread takes it
        return real(path)

    monkeypatch.setattr(extract_module, "atomic_path", signal_once)
    with interrupts.handle_signals("pthnet extract"):
        first = _run(videos, tmp_path / "root", toy_backbone())
    assert first["interrupted"] and first["extracted"] == 1
    monkeypatch.undo()
    second = _run(videos, tmp_path / "root", toy_backbone())
    assert not second["interrupted"] and second["already_done"] == 1 and second["extracted"] == 2


def test_predict_arguments(videos, tmp_path, capsys):
    from pthnet_jax.cli import main
    from pthnet_jax.video.predict import expand_videos

    assert main(["predict", str(tmp_path / "nope.mp4"), "--backbone", "b.pth", "--checkpoint", "c.pth"]) == 2
    assert "nope.mp4: no such video file" in capsys.readouterr().err
    found = expand_videos([videos, videos / "a" / "one.mp4"])
    assert [p.relative_to(videos).as_posix() for p in found] == ["a/one.mp4", "a/two.mp4", "b/three.mp4", "a/one.mp4"]


def test_predict_videos_takes_one_path_as_one_clip():
    from types import SimpleNamespace

    from pthnet_jax.video.decode import DecodeError
    from pthnet_jax.video.predict import predict_videos

    model = SimpleNamespace(config=SimpleNamespace(n_in=TOY_DIM), dtype=None)
    with pytest.raises(DecodeError, match="one.mp4: no such video file"):  # not 'o: no such video file'
        predict_videos("one.mp4", toy_backbone(), model, {})


def test_a_backbone_outside_the_family_widths_and_one_passed_as_checkpoint(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from pthnet_jax.convert.cli import main as convert_main
    from pthnet_jax.video.backbone import load_backbone, swapped_hint
    from videomae_torch_reference import VisionTransformer

    model = VisionTransformer(dim=32, depth=1, heads=2, hidden=32, patch=32, num_classes=2)
    torch.save({"module": model.state_dict()}, tmp_path / "vit.pth")
    assert "pass it as --backbone" in swapped_hint(tmp_path / "vit.pth", "--checkpoint")
    assert swapped_hint(tmp_path / "vit.pth", "--backbone") is None
    with pytest.raises(ValueError, match="--num-heads N"):  # width 32: not a width of the family
        load_backbone(tmp_path / "vit.pth")
    assert load_backbone(tmp_path / "vit.pth", num_heads=2).dim == 32
    assert convert_main([str(tmp_path / "vit.pth"), str(tmp_path / "out"), "--num-heads", "2"]) == 2
    assert "32-d, 1 blocks, 2 heads" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_backbone(tmp_path)


def test_time_line_curves_and_bench_extract_help(tmp_path, capsys, monkeypatch):
    from pthnet_jax import reporting, timing

    line = timing.describe({"total": 10.0, "compile": 5.0, "programs": {"steps jit(_fun)": 4.0, "steps _fun": 1.0,
                                                                        "init jit(<lambda>)": 2.0}})
    assert "compiled: the training step 5.0s, the initial state 2.0s" in line and "_fun" not in line
    figures = []
    monkeypatch.setattr(reporting, "save_figure", lambda fig, path, dpi: figures.append(fig))
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_ce": 1.0 / e, "train_accuracy": 10.0 * e,
                "test": {"WAR": 5.0 * e, "UAR": 4.0 * e}} for e in (1, 2, 3)]
    reporting.plot_curves(history, tmp_path / "c.png", selected=2)
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert any(list(line.get_xdata()) == [2, 2] for line in ax.get_lines())
    from pthnet_jax.benchmarks.extract import main as bench_main

    with pytest.raises(SystemExit):
        bench_main(["--help"])
    assert capsys.readouterr().out.startswith("usage: pthnet bench-extract")
