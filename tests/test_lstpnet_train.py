"""LSTPNet through the shared harness: a tiny model trains with `pthnet train` on synthetic clips
(colour and motion per class) to a held-out accuracy far above chance, and `pthnet evaluate` of its
best checkpoint gives the training's own test numbers (same frames, same size, same statistics)."""
import numpy as np
import pytest

from pthnet_jax import cli
from pthnet_jax.families.lstpnet.clip_import import import_clips
from pthnet_jax.families.lstpnet.clip_synth import write_synth_clips


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    base = tmp_path_factory.mktemp("lstp_train")
    lists = write_synth_clips(base / "clips", clips=140, test_clips=70, seed=0)
    return import_clips(lists["train"], lists["test"], base / "clips", base / "data", benchmark="DFEW", quiet=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("lstp_small")
    lists = write_synth_clips(base / "clips", clips=7, test_clips=7, width=16, height=12, seed=1)
    return import_clips(lists["train"], lists["test"], base / "clips", base / "data", benchmark="DFEW", quiet=True)


def test_task_basics(small, capsys):
    from pthnet_jax.configs import lstpnet_tiny
    from pthnet_jax.task import get_task

    task = get_task("lstpnet")
    config = lstpnet_tiny.get_config()
    model_config = task.model_config(config.model.to_dict(), 7)
    assert model_config.image_size == 32 and task.config_from_dict(model_config.to_dict()) == model_config
    assert task.model_config_problems({**config.model.to_dict(), "image_size": 4})  # named, not raised
    split = task.open(small, "test>=16")
    whole = task.open(small, "test")
    assert split.num_clips == whole.num_clips - whole.dataset_info["short_clips"] < whole.num_clips
    short = whole.short_clip_count()
    assert f"split 'test': all 7 clips; {short} have fewer than 16 frames" in capsys.readouterr().out
    with pytest.raises(KeyError, match="split 'test>=x'"):
        task.open(small, "test>=x")
    variables = task.init(task.model(model_config), __import__("jax").random.key(1))
    again = task.init(task.model(model_config), __import__("jax").random.key(1))
    leaves = __import__("jax").tree.leaves
    assert all(np.array_equal(a, b) for a, b in zip(leaves(variables), leaves(again)))
    assert set(variables) == {"params", "batch_stats"}


@pytest.mark.slow
def test_tiny_lstpnet_trains_far_above_chance_and_evaluates_the_same(clips, tmp_path, capsys):
    from pthnet_jax.commands.evaluate import run_evaluation

    workdir = tmp_path / "run"
    code = cli.main(["train", "--config", "lstpnet_tiny", "--data", str(clips), "--workdir", str(workdir),
                     "--config.train.epochs=6"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert "LSTPNet split 'test': all 70 clips;" in out  # the short-clip count, whole list evaluated
    result = run_evaluation(workdir / "best", clips, tmp_path / "evaluation")
    # Deterministic on a CPU: 58.6 measured (chance 14.3); the bound leaves room for other platforms.
    assert result["WAR"] >= 40.0, f"best test WAR {result['WAR']:.1f} (chance 14.3)\n{out[-3000:]}"
    assert f"test UAR {result['UAR']:.2f} WAR {result['WAR']:.2f}" in out  # the training's own numbers


@pytest.mark.slow
def test_folds_trains_lstpnet_fold_by_fold(tmp_path_factory, capsys):
    """`pthnet folds` with an LSTPNet config: every fold imported with `import-clips --fold K`, one
    epoch each (both in one program: --parallel 2), folds.json holding both folds and their mean;
    PTH-Net-only options refused."""
    import json

    base = tmp_path_factory.mktemp("lstp_folds")
    for fold in (1, 2):
        lists = write_synth_clips(base / f"clips_{fold}", clips=8, test_clips=8, width=16, height=12, seed=fold)
        import_clips(lists["train"], lists["test"], base / f"clips_{fold}", base / f"dfew_{fold}", benchmark="DFEW",
                     fold=fold, quiet=True)
    args = ["folds", "--config", "lstpnet_tiny", "--data", str(base / "dfew_{fold}"), "--folds", "1-2",
            "--workdir", str(base / "runs"), "--config.train.epochs=1"]
    for extra, message in ((["--import-root", str(base)], "--import-root imports PTH-Net's features"),
                           (["--rv-data", str(base / "dfew_{fold}")], "LSTPNet defines no forward/backward fusion")):
        assert cli.main(args + extra) == 2
        assert message in capsys.readouterr().err
    # Both folds in one program (run_stream: their clip streams stacked on the run axis)
    assert cli.main(args + ["--parallel", "2"]) == 0, capsys.readouterr().err[-3000:]
    assert "2 runs, 2 at a time in one program" in capsys.readouterr().out
    result = json.loads((base / "runs" / "folds.json").read_text())
    assert sorted(result["folds"]) == ["1", "2"] and result["num_folds"] == 2
    assert result["mean"]["WAR"] == pytest.approx((result["folds"]["1"]["WAR"] + result["folds"]["2"]["WAR"]) / 2)
    for fold in ("1", "2"):
        assert (base / "runs" / f"fold_{fold}" / "best").is_dir()
    out = base / "eval_2"  # `pthnet evaluate` of a fold's best checkpoint gives the fold's numbers
    assert cli.main(["evaluate", "--checkpoint", str(base / "runs" / "fold_2"), "--data", str(base / "dfew_2"),
                     "--output", str(out)]) == 0, capsys.readouterr().err[-3000:]
    evaluated = json.loads((out / "metrics.json").read_text())
    predicted = base / "predicted.json"  # `pthnet predict` with a training workdir: the data's class names
    assert cli.main(["predict", str(base / "clips_2"), "--checkpoint", str(base / "runs" / "fold_2"),
                     "--output", str(predicted), "--no-progress"]) == 0, capsys.readouterr().err[-3000:]
    rows = json.loads(predicted.read_text())["predictions"]
    assert len(rows) == 16 and all(list(r["probabilities"]) == evaluated["class_names"] for r in rows)
    assert evaluated["class_names"][0] == "Happy"  # DFEW's LSTPNet order
    assert [evaluated[m] for m in ("UAR", "WAR")] == pytest.approx([result["folds"]["2"][m] for m in ("UAR", "WAR")])
