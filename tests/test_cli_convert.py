"""`pthnet convert` as a user runs it (subprocesses of the installed command): a training workdir as
SRC, file-to-file conversion between .pth and .safetensors, and the round trip of the model tensors."""
import subprocess
import sys

import jax
import numpy as np
import pytest

from pthnet_jax.checkpoint import load_checkpoint, save_checkpoint
from pthnet_jax.configs import tiny
from pthnet_jax.convert import state_dict_from_file
from pthnet_jax.models.pthnet import ModelConfig

from train_helpers import random_params


def _pthnet(*args):
    return subprocess.run([sys.executable, "-m", "pthnet_jax.cli", "convert", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory shaped like a training run: `best/` holds the checkpoint, no `pthnet` item on top."""
    base = tmp_path_factory.mktemp("convert-cli")
    config = ModelConfig.from_dict({**tiny.get_config().model.to_dict(), "num_classes": 7})
    # Random values, no initialisation to compile: this fixture serves quick tests.
    save_checkpoint(base / "run" / "best", random_params(config), config, {"epoch": 3})
    return base


def _flat(params):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_training_workdir_and_file_to_file(workdir):
    run = workdir / "run"
    result = _pthnet(run, workdir / "model.pth")
    assert result.returncode == 0, result.stderr
    assert "its best checkpoint" in result.stdout
    # .pth -> .safetensors directly, and back to a .pth: files, not directories named like files.
    result = _pthnet(workdir / "model.pth", workdir / "model.safetensors")
    assert result.returncode == 0, result.stderr
    assert (workdir / "model.safetensors").is_file() and "model's tensors only" in result.stdout
    result = _pthnet(workdir / "model.safetensors", workdir / "again.pth")
    assert result.returncode == 0, result.stderr
    assert (workdir / "again.pth").is_file()
    first, _ = state_dict_from_file(workdir / "model.pth")
    second, _ = state_dict_from_file(workdir / "again.pth")
    assert set(first) == set(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    # And into a directory again: the same parameters as the run's best checkpoint.
    result = _pthnet(workdir / "again.pth", workdir / "imported")
    assert result.returncode == 0, result.stderr
    original, imported = _flat(load_checkpoint(run / "best")[1]["params"]), \
        _flat(load_checkpoint(workdir / "imported")[1]["params"])
    for key, value in original.items():
        np.testing.assert_array_equal(imported[key], value, err_msg=key)


def test_refusals_are_one_line(workdir):
    result = _pthnet(workdir / "missing.pth", workdir / "x")
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr
    (workdir / "exists.pth").write_bytes(b"x")
    result = _pthnet(workdir / "run", workdir / "exists.pth")
    assert result.returncode == 2 and "--force" in result.stderr


def test_a_videomae_backbone_is_recognised(tmp_path):
    import torch

    from videomae_torch_reference import VisionTransformer, randomise

    model = randomise(VisionTransformer(dim=40, depth=2, heads=5, hidden=72, patch=8, tubelet=2, frames=4, size=24,
                                        num_classes=7), 0)
    torch.save({"module": model.state_dict()}, tmp_path / "backbone.pth")
    result = _pthnet(tmp_path / "backbone.pth", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "VideoMAE V2 ViT" in result.stderr and "2 blocks" in result.stderr and "--backbone" in result.stderr
    assert not (tmp_path / "out").exists()
