"""The converter on real files written by torch.save: formats, safety, errors, export, round trip."""
import collections
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pthnet_jax import load_model  # noqa: E402
from pthnet_jax.convert import checkpoint_to_pth, import_pth, pth_to_checkpoint  # noqa: E402
from pthnet_jax.convert.cli import main as convert_main  # noqa: E402
from pthnet_jax.convert.mapping import MappingError  # noqa: E402
from pthnet_jax.convert import CheckpointError  # noqa: E402
from pthnet_jax.convert.torch_pickle import (CheckpointReadError, UnsafeCheckpointError,  # noqa: E402
                                             read_torch_file)
from pthnet_jax.benchmarks.torch_pthnet import TorchPTHNet  # noqa: E402
from pthnet_jax.models.pthnet import ModelConfig  # noqa: E402

# The same tiny config and batch as test_parity.py, so both share JAX's per-op compile cache.
TINY = ModelConfig(n_in=24, n_embd=32, mlp_dim=48, num_classes=5)
BATCH = 16


class RecorderMeter:
    """Stands in for the class the original training script defines in its __main__."""

    def __init__(self, total_epoch):
        self.total_epoch = total_epoch
        self.current_epoch = 2
        self.epoch_losses = np.arange(total_epoch * 2, dtype=np.float32).reshape(total_epoch, 2)
        self.epoch_accuracy = np.ones((total_epoch, 2), np.float32) * 40.5
        self.best_seen = np.float32(40.5)  # a numpy scalar pickles through numpy's `scalar`


@pytest.fixture
def reference_model():
    torch.manual_seed(0)
    model = TorchPTHNet(**TINY.to_dict())
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn_like(tensor) * 0.1)
    return model


def _save_like_original(model, path, monkeypatch, cuda_tag=True):
    """What the original script writes: DataParallel keys, SGD state, a __main__ recorder, cuda:0 storages."""
    import __main__

    monkeypatch.setattr(RecorderMeter, "__module__", "__main__")
    monkeypatch.setattr(__main__, "RecorderMeter", RecorderMeter, raising=False)
    wrapped = torch.nn.DataParallel(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    for param in wrapped.parameters():
        param.grad = torch.ones_like(param)
    optimizer.step()
    payload = {"epoch": 12, "state_dict": wrapped.state_dict(), "best_acc": torch.tensor(47.25),
               "optimizer": optimizer.state_dict(), "recorder": RecorderMeter(20)}
    if cuda_tag:  # storages tagged as saved from the GPU, as in the released checkpoints
        monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save(payload, path)
    monkeypatch.undo()
    return payload


def test_reads_original_training_checkpoint(tmp_path, reference_model, monkeypatch):
    path = tmp_path / "model_best.pth"
    payload = _save_like_original(reference_model, path, monkeypatch)
    with zipfile.ZipFile(path) as archive:  # the storages really are tagged cuda:0
        assert b"cuda:0" in archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # what the original's files do to a safe torch.load
    loaded = read_torch_file(path)
    assert loaded["epoch"] == 12 and float(loaded["best_acc"]) == 47.25
    assert loaded["recorder"].class_path == "__main__.RecorderMeter"
    np.testing.assert_array_equal(loaded["recorder"].state["epoch_losses"], RecorderMeter(20).epoch_losses)
    momentum = loaded["optimizer"]["state"][0]["momentum_buffer"]
    np.testing.assert_array_equal(momentum, payload["optimizer"]["state"][0]["momentum_buffer"].numpy())
    for key, tensor in payload["state_dict"].items():
        np.testing.assert_array_equal(loaded["state_dict"][key], tensor.numpy())

    imported = import_pth(path)
    assert imported.config == TINY
    assert imported.provenance["epoch"] == 12 and imported.provenance["best_acc"] == 47.25
    assert imported.provenance["module_prefix"] is True
    assert imported.provenance["metadata"]["recorder"]["state"]["total_epoch"] == 20
    assert imported.provenance["metadata"]["recorder"]["state"]["best_seen"] == 40.5
    assert len(imported.provenance["sha256"]) == 64


@pytest.mark.parametrize("prefix", ["", "module."])
def test_plain_state_dict_with_and_without_prefix(tmp_path, reference_model, prefix):
    path = tmp_path / "weights.pth"
    state = reference_model.state_dict()
    torch.save(collections.OrderedDict((prefix + k, v) for k, v in state.items()), path)
    imported = import_pth(path)
    assert imported.provenance["module_prefix"] is bool(prefix)
    np.testing.assert_array_equal(imported.variables["params"]["head"]["kernel"],
                                  reference_model.head.weight.detach().numpy().T)


def test_strided_tensor_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    torch.save({"t": base.t(), "slice": base[1:, ::2]}, tmp_path / "views.pth")
    loaded = read_torch_file(tmp_path / "views.pth")
    np.testing.assert_array_equal(loaded["t"], base.t().numpy())
    np.testing.assert_array_equal(loaded["slice"], base[1:, ::2].numpy())


def test_storage_dtypes(tmp_path):
    values = torch.linspace(-3, 3, 12).reshape(3, 4)
    torch.save({"bf16": values.bfloat16(), "long": torch.arange(5), "bool": values > 0}, tmp_path / "d.pth")
    loaded = read_torch_file(tmp_path / "d.pth")
    assert str(loaded["bf16"].dtype) == "bfloat16"
    np.testing.assert_array_equal(loaded["bf16"].astype(np.float32), values.bfloat16().float().numpy())
    np.testing.assert_array_equal(loaded["long"], np.arange(5))
    np.testing.assert_array_equal(loaded["bool"], (values > 0).numpy())


class _Evil:
    def __init__(self, call, argument):
        self.call, self.argument = call, argument

    def __reduce__(self):
        return self.call, (self.argument,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess", "object_array"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    payload = {"os.system": _Evil(os.system, command),
               "builtins.eval": _Evil(eval, f"open({str(marker)!r}, 'w')"),
               "subprocess": _Evil(subprocess.call, ["touch", str(marker)]),
               "object_array": np.array([command, 1], dtype=object)}[kind]
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"state_dict": payload}, protocol=2))
        archive.writestr("evil/version", "3\n")
    with pytest.raises(UnsafeCheckpointError, match="is not allowed|not on the allowlist") as info:
        import_pth(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_truncated_and_corrupt_files(tmp_path, reference_model):
    good = tmp_path / "good.pth"
    torch.save(reference_model.state_dict(), good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match="truncated.pth"):
        import_pth(truncated)
    corrupt = tmp_path / "corrupt.pth"
    with zipfile.ZipFile(good) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    raw = bytearray(data)
    name_len, extra_len = (int.from_bytes(data[info.header_offset + o:info.header_offset + o + 2], "little")
                           for o in (26, 28))  # from the local header: torch pads it for alignment
    start = info.header_offset + 30 + name_len + extra_len
    raw[start:start + 16] = bytes(16)  # zeroes inside the first storage: the CRC check fails
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(CheckpointReadError, match="corrupt.pth"):
        import_pth(corrupt)
    not_torch = tmp_path / "text.pth"
    not_torch.write_text("hello")
    with pytest.raises(CheckpointReadError, match="not a zip archive"):
        import_pth(not_torch)
    legacy = tmp_path / "legacy.pth"
    torch.save(reference_model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointReadError, match="legacy.pth: not a zip archive.*legacy"):
        import_pth(legacy)


def test_wrong_shape_missing_and_unexpected_keys(tmp_path, reference_model):
    state = collections.OrderedDict(reference_model.state_dict())
    wrong = collections.OrderedDict(state)
    wrong["stem.1.psi.weight"] = torch.zeros(32, 1, 5)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(MappingError, match=r"stem\.1\.psi\.weight: shape \(32, 1, 5\)"):
        import_pth(tmp_path / "wrong.pth")
    missing = collections.OrderedDict(state)
    del missing["branch_1.0.cross_att.key.bias"]
    missing["stem.0.extra.weight"] = torch.zeros(3)
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(MappingError) as info:
        import_pth(tmp_path / "missing.pth")
    assert "branch_1.0.cross_att.key.bias" in str(info.value) and "stem.0.extra.weight" in str(info.value)
    assert "missing.pth" in str(info.value)


def test_export_loads_safely_and_strictly_and_round_trips(tmp_path, reference_model, monkeypatch):
    source = tmp_path / "original.pth"
    payload = _save_like_original(reference_model, source, monkeypatch)
    pth_to_checkpoint(source, tmp_path / "ckpt")
    checkpoint_to_pth(tmp_path / "ckpt", tmp_path / "exported.pth")
    exported = torch.load(tmp_path / "exported.pth", weights_only=True)
    assert exported["epoch"] == 12
    original_state = payload["state_dict"]
    assert list(exported["state_dict"]) == list(original_state)
    for key, tensor in original_state.items():  # bit-identical, pos_embed tensors included
        assert torch.equal(exported["state_dict"][key], tensor), key
        assert exported["state_dict"][key].dtype == tensor.dtype
    fresh = torch.nn.DataParallel(TorchPTHNet(**TINY.to_dict()))
    fresh.load_state_dict(exported["state_dict"], strict=True)


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_cli_and_load_model(tmp_path, reference_model, capsys):
    source = tmp_path / "w.pth"
    torch.save(reference_model.state_dict(), source)
    assert convert_main([str(source), str(tmp_path / "ckpt")]) == 0
    assert "parameters" in capsys.readouterr().out
    assert convert_main([str(source), str(tmp_path / "ckpt")]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err
    assert convert_main([str(tmp_path / "ckpt"), str(tmp_path / "back.pth")]) == 0
    assert convert_main([str(tmp_path / "nope.pth"), str(tmp_path / "x")]) == 2
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(source.read_bytes()[:100])
    assert convert_main([str(corrupt), str(tmp_path / "ckpt"), "--force"]) == 2
    assert "corrupt.pth" in capsys.readouterr().err
    assert (tmp_path / "ckpt" / "pthnet").is_dir()  # a failed --force leaves the old DST intact
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    assert convert_main([str(source), str(tmp_path / "ckpt"), "--force"]) == 0
    assert convert_main([str(tmp_path / "ckpt"), str(tmp_path / "back.pth"), "--force"]) == 0

    rng = np.random.default_rng(0)
    features = {"H": rng.normal(size=(BATCH, 16, TINY.n_in)).astype(np.float32)}
    masks = {"H": np.arange(16)[None] <= np.arange(BATCH)[:, None]}  # 1..16 valid steps
    model_a, vars_a = load_model(source)
    model_b, vars_b = load_model(tmp_path / "ckpt")
    logits_a = model_a.apply(vars_a, features, masks, train=False)["H"]
    logits_b = model_b.apply(vars_b, features, masks, train=False)["H"]
    np.testing.assert_array_equal(np.asarray(logits_a), np.asarray(logits_b))
    reference_model.eval()
    with torch.no_grad():
        expected = reference_model.forward_levels({"H": torch.from_numpy(features["H"])},
                                                  {"H": torch.from_numpy(masks["H"])})["H"].numpy()
    np.testing.assert_allclose(np.asarray(logits_a), expected, atol=1e-4 * np.abs(expected).max())


_NO_TORCH = """
import importlib.abc, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is blocked for this test")
        return None

sys.meta_path.insert(0, _NoTorch())
"""


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_import_and_export_work_without_torch(tmp_path, reference_model, monkeypatch):
    """A sitecustomize makes every `import torch` fail; import, export (.pth and .safetensors), the CLI
    and load_model all still work, and the exported .pth is what torch and the original code load."""
    path = tmp_path / "orig.pth"
    payload = _save_like_original(reference_model, path, monkeypatch)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_TORCH)
    script = (
        "import sys\n"
        "try:\n    import torch\nexcept ImportError:\n    print('torch blocked')\n"
        "from pthnet_jax import load_model\n"
        "from pthnet_jax.convert import import_pth, pth_to_checkpoint, checkpoint_to_pth\n"
        "from pthnet_jax.convert.cli import main\n"
        f"imported = import_pth({str(path)!r})\n"
        "print(imported.config.num_classes, imported.provenance['epoch'])\n"
        f"pth_to_checkpoint({str(path)!r}, {str(tmp_path / 'ck')!r})\n"
        f"checkpoint_to_pth({str(tmp_path / 'ck')!r}, {str(tmp_path / 'x.pth')!r})\n"
        f"assert main([{str(tmp_path / 'ck')!r}, {str(tmp_path / 'x.safetensors')!r}]) == 0\n"
        f"assert main([{str(tmp_path / 'x.pth')!r}, {str(tmp_path / 'ck2')!r}]) == 0\n"
        f"load_model({str(tmp_path / 'x.safetensors')!r})\n"
        "print('torch loaded:', any(m == 'torch' or m.startswith('torch.') for m in sys.modules))\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "torch blocked"
    assert lines[1] == f"{TINY.num_classes} 12"
    assert lines[-1] == "torch loaded: False"
    exported = torch.load(tmp_path / "x.pth", weights_only=True)  # here torch is available
    assert exported["epoch"] == 12 and float(exported["best_acc"]) == 47.25
    for key, tensor in payload["state_dict"].items():  # bit-identical, pos_embed tensors included
        assert torch.equal(exported["state_dict"][key], tensor), key
    fresh = torch.nn.DataParallel(TorchPTHNet(**TINY.to_dict()))
    fresh.load_state_dict(exported["state_dict"], strict=True)


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_exported_pth_layout_is_torchs(tmp_path, reference_model):
    """Members aligned to 64 bytes, the records torch writes, deterministic bytes, mmap-loadable."""
    import struct

    source = tmp_path / "w.pth"
    torch.save(reference_model.state_dict(), source)
    pth_to_checkpoint(source, tmp_path / "ck")
    checkpoint_to_pth(tmp_path / "ck", tmp_path / "a.pth")
    checkpoint_to_pth(tmp_path / "ck", tmp_path / "b.pth")
    data = (tmp_path / "a.pth").read_bytes()
    assert data == (tmp_path / "b.pth").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.pth") as archive:
        names = archive.namelist()
        assert {"archive/data.pkl", "archive/byteorder", "archive/version", "archive/.format_version",
                "archive/.storage_alignment", "archive/data/0"} <= set(names)
        assert archive.read("archive/byteorder") == b"little"
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    loaded = torch.load(tmp_path / "a.pth", weights_only=True, mmap=True)
    for key, tensor in reference_model.state_dict().items():
        assert torch.equal(loaded["state_dict"]["module." + key], tensor), key


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_safetensors_export_import(tmp_path, reference_model, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    source = tmp_path / "w.pth"
    torch.save(reference_model.state_dict(), source)
    assert convert_main([str(source), str(tmp_path / "ck")]) == 0
    assert convert_main([str(tmp_path / "ck"), str(tmp_path / "m.safetensors")]) == 0
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as handle:
        meta = handle.metadata()
    assert '"model_config"' in meta["pthnet"] and meta["format"] == "pt"
    state = load_file(tmp_path / "m.safetensors")  # the original's keys, every tensor
    fresh = TorchPTHNet(**TINY.to_dict())
    fresh.load_state_dict(state, strict=True)
    for key, tensor in reference_model.state_dict().items():
        assert torch.equal(state[key], tensor), key
    model_a, vars_a = load_model(source)
    model_b, vars_b = load_model(tmp_path / "m.safetensors")
    assert model_b.config == model_a.config
    flat_a = jax.tree_util.tree_leaves(vars_a)
    flat_b = jax.tree_util.tree_leaves(vars_b)
    assert all(np.array_equal(a, b) for a, b in zip(flat_a, flat_b))
    assert convert_main([str(tmp_path / "m.safetensors"), str(tmp_path / "ck2")]) == 0
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((tmp_path / "m.safetensors").read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_model(bad)
