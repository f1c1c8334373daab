"""The `pthnet` command as a researcher meets it: version, help, configs by name, exit codes, synth's
folds and label sets (subprocesses of the installed command; no training here)."""
import tomllib
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_clean_error, pthnet
from pthnet_jax.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]


def test_version_and_usage():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = pthnet("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"pthnet-jax {version}"
    result = pthnet("--help")
    assert result.returncode == 0 and "folds" in result.stdout and "--version" in result.stdout
    assert_clean_error(pthnet("trian"), "unknown command 'trian'")


def test_train_help_shows_configs_and_fields():
    result = pthnet("train", "--help")
    assert result.returncode == 0, result.stderr
    for text in ("ferv39k", "dfew", "casme2", "--config.optim.lr=", "0.005", "--config.train.epochs=",
                 "--config.model.n_embd=", "75 interrupted"):
        assert text in result.stdout, text
    named = pthnet("train", "--config", "ferv39k", "--help")  # that config's values
    assert named.returncode == 0
    epochs = next(line for line in named.stdout.splitlines() if "--config.train.epochs=" in line)
    assert epochs.split("=")[-1].strip() == "20"


def test_train_config_errors_are_one_clean_message(tmp_path):
    assert_clean_error(pthnet("train", "--config", "fervv39k", "--workdir", tmp_path / "w"),
                       "--config fervv39k", "ferv39k", "casme2")
    assert_clean_error(pthnet("train", "--config=ferv39k", "--config.optim.lrr=0.1", "--workdir", tmp_path),
                       "lrr", 'Did you mean "lr"')
    assert_clean_error(pthnet("train", "--config", "ferv39k", "--workdir", tmp_path / "w", "--data",
                              tmp_path / "nodata"), "nodata", "pthnet import-features")


def test_config_by_name_and_by_path_agree():
    from pthnet_jax.commands.train import parse_flags, run_flags

    loaded = {}
    for spec in ("ferv39k", str(REPO / "configs" / "ferv39k.py"), "FERv39k"):
        values, argv = run_flags("t", ["--config", spec, "--config.train.seed=3"], data_help="", workdir_help="")
        loaded[spec] = parse_flags(values, argv).to_dict()
    first = next(iter(loaded.values()))
    assert all(config == first for config in loaded.values())
    assert first["train"]["epochs"] == 20 and first["train"]["seed"] == 3


def test_synth_writes_every_fold_and_label_set(tmp_path):
    root = synthesize(tmp_path / "dfew", "DFEW", clips=12, test_clips=3, feature_dim=4, reverse=False, quiet=True)
    lists = root / "annotation" / "DFEW" / "th14_vit_g_16_4"
    tested = []
    for fold in range(1, 6):
        train = [line.split()[0] for line in (lists / f"set_{fold}_train.txt").read_text().splitlines()]
        test = [line.split()[0] for line in (lists / f"set_{fold}_test.txt").read_text().splitlines()]
        assert len(train) == 12 and len(test) == 3 and not set(train) & set(test)
        tested += test
    assert len(set(tested)) == 15  # 5 folds x 3: every clip tested in exactly one fold (a k-fold split)

    result = pthnet("synth", "--out", tmp_path / "mafw", "--like", "MAFW", "--clips", "8", "--test-clips", "2",
                    "--feature-dim", "4", "--folds", "2-3", "--label-set", "compound", "--no-reverse")
    assert result.returncode == 0, result.stderr
    mafw = tmp_path / "mafw" / "annotation" / "MAFW"
    assert not (mafw / "single").exists()
    assert sorted(p.name for p in (mafw / "compound" / "th14_vit_g_16_4").iterdir()) == [
        "set_2_test.txt", "set_2_train.txt", "set_3_test.txt", "set_3_train.txt"]

    both = synthesize(tmp_path / "both", "MAFW", clips=40, test_clips=10, feature_dim=4, reverse=False,
                      quiet=True, folds=[1])
    rows = {s: [line.split() for line in (both / "annotation" / "MAFW" / s / "th14_vit_g_16_4" /
                                          "set_1_train.txt").read_text().splitlines()] for s in ("single", "compound")}
    assert [r[0] for r in rows["single"]] == [r[0] for r in rows["compound"]]  # the same clips
    single, compound = (np.array([int(r[2]) for r in rows[s]]) for s in ("single", "compound"))
    assert single.max() < 11 and compound.max() < 43 and compound.max() > 10


def test_synth_argument_errors(tmp_path, capsys):
    from pthnet_jax.data.synth import main as synth_main

    assert synth_main(["--out", str(tmp_path / "x"), "--like", "DFEW", "--folds", "6"]) == 2
    assert "outside 1..5" in capsys.readouterr().err
    assert synth_main(["--out", str(tmp_path / "x"), "--like", "FERv39k", "--label-set", "compound"]) == 2
    assert "one label set" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_clip_order_check_names_the_first_difference():
    from types import SimpleNamespace

    from pthnet_jax.families.pthnet.fusion import DataMismatch, check_clip_order, forward_clip_id

    ids = [f"get_features/DFEW/th14_vit_g_16_4/clip_{i}.npy" for i in range(4)]
    rv_ids = [forward_clip_id(i).replace("th14_vit_g_16_4/", "th14_vit_g_16_4_rv/") for i in ids]
    forward = SimpleNamespace(clip_ids=np.array(ids), labels=np.array([0, 1, 2, 3]))
    check_clip_order(forward, SimpleNamespace(clip_ids=np.array(rv_ids), labels=forward.labels))
    shuffled = SimpleNamespace(clip_ids=np.array(rv_ids[:2] + rv_ids[2:][::-1]), labels=np.array([0, 1, 3, 2]))
    with pytest.raises(DataMismatch, match="clip 3 of the forward list is .*clip_2.npy"):
        check_clip_order(forward, shuffled)
    with pytest.raises(DataMismatch, match="4 clips but the backward one 3"):
        check_clip_order(forward, SimpleNamespace(clip_ids=np.array(rv_ids[:3]), labels=forward.labels[:3]))


def test_checkpoint_data_records_refuse_other_folds(tmp_path, monkeypatch):
    from pthnet_jax import evaluation

    trained = {"benchmark": "DFEW", "fold": 1, "label_set": None, "face": False, "reverse": False}
    monkeypatch.setattr(evaluation, "training_data_record", lambda checkpoint: trained)
    checks = {"verified": [], "unchecked": []}
    data = {**trained, "data_dir": "data/dfew_1"}
    evaluation.check_checkpoint_data("forward", "ckpt", data, checks, False, True)
    assert checks["verified"]
    for key, value in (("fold", 2), ("benchmark", "MAFW"), ("reverse", True), ("face", True)):
        with pytest.raises(evaluation.DataMismatch, match=f"{key} "):
            evaluation.check_checkpoint_data("forward", "ckpt", {**data, key: value}, checks, False, True)
    monkeypatch.setattr(evaluation, "training_data_record", lambda checkpoint: None)
    with pytest.raises(evaluation.DataMismatch, match="--allow-unrecorded"):
        evaluation.check_checkpoint_data("forward", "model.pth", data, checks, False, True)
    evaluation.check_checkpoint_data("forward", "model.pth", data, checks, True, True)
    assert "model.pth" in checks["unchecked"][-1]


def test_unexpected_errors_are_one_line_unless_debugging(monkeypatch, capsys):
    import types

    from pthnet_jax import cli

    broken = types.ModuleType("broken_command")
    broken.main = lambda argv: {}["no such key"]
    monkeypatch.setitem(__import__("sys").modules, "broken_command", broken)
    monkeypatch.setitem(cli.SUBCOMMANDS, "broken", ("broken_command", "raises"))
    assert cli.main(["broken"]) == 1
    err = capsys.readouterr().err
    assert "pthnet broken: KeyError" in err and "PTHNET_DEBUG=1" in err and "Traceback" not in err
    monkeypatch.setenv("PTHNET_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["broken"])
