"""LSTPNet checkpoints without PyTorch: the original's names and order, strict mapping and its failures,
export that the PyTorch reference loads strictly, and the MS-Celeb ResNet-18 initialisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import traverse_util

from lstpnet_torch_reference import TorchLSTPNet, channels_first, from_config, randomise
from pthnet_jax.families.lstpnet.convert import (LSTPNetMappingError, _to_flax, export_pth, flax_to_torch, infer_config,
                                                 is_lstpnet, key_table, load_checkpoint, load_msceleb, msceleb_rows,
                                                 torch_key_order, torch_to_flax, unwrap)
from pthnet_jax.families.lstpnet.model import LSTPNetConfig, count_params, init_variables, variable_shapes

TINY = LSTPNetConfig.tiny(num_classes=6)


@pytest.fixture(scope="module")
def tiny_torch():
    return randomise(from_config(TINY), seed=5)


@pytest.fixture(scope="module")
def tiny_numpy(tiny_torch):
    return {key: value.numpy().copy() for key, value in tiny_torch.state_dict().items()}


def _convert(state_dict, **kwargs):
    return torch_to_flax(dict(state_dict), source="test.pth", num_heads=TINY.num_heads, **kwargs)


def test_names_and_order_are_the_originals():
    for config in (TINY, LSTPNetConfig()):
        names = list(from_config(config).state_dict())
        assert [key for key in names if not key.endswith("num_batches_tracked")] == torch_key_order(config)
    rows, duplicates = key_table(LSTPNetConfig())
    assert len(names) == 226 and len(rows) == 198 and len(duplicates) == 8
    assert sum(key.endswith("num_batches_tracked") for key in names) == 20


def test_the_released_key_table_matches_the_flax_shapes():
    config = LSTPNetConfig()
    shapes = traverse_util.flatten_dict(variable_shapes(config), sep="/")
    rows, _ = key_table(config)
    table = {}
    for row in rows:  # what the converter would make of a tensor of the original's shape
        view = np.broadcast_to(np.zeros((), np.float32), row.shape)
        table[row.path] = tuple(_to_flax(row, view).shape)
    assert table == {path: tuple(leaf.shape) for path, leaf in shapes.items()}
    assert count_params(variable_shapes(config)["params"]) == 24_619_686


def test_conversion_is_strict_and_complete(tiny_numpy):
    config, variables, notes = _convert(tiny_numpy)
    assert config == TINY
    assert notes[:3] == ["198 tensors converted to float32", "8 copies of the shared conv/norm checked equal",
                         "20 num_batches_tracked ignored"]
    back = flax_to_torch(variables, TINY)
    assert list(back) == list(tiny_numpy)
    for key, value in tiny_numpy.items():
        if not key.endswith("num_batches_tracked"):
            assert back[key].dtype == np.float32 and np.array_equal(back[key], value), key
    assert is_lstpnet(tiny_numpy) and is_lstpnet(["module." + key for key in tiny_numpy])
    assert not is_lstpnet(["conv1.weight", "fc.weight"])


def _error(state_dict, match):
    with pytest.raises(LSTPNetMappingError, match=match) as info:
        _convert(state_dict, config=TINY)
    assert str(info.value).startswith("test.pth: ")


def test_conversion_failures_name_the_key(tiny_numpy):
    missing = dict(tiny_numpy)
    del missing["s_former.ir_back.layer3.1.eca.action_p2_conv1.weight"]
    _error(missing, r"1 missing keys: s_former\.ir_back\.layer3\.1\.eca\.action_p2_conv1\.weight")
    _error({**tiny_numpy, "t_former.extra.weight": np.zeros(3, np.float32)}, r"1 unknown keys: t_former\.extra\.weight")
    wrong = {**tiny_numpy, "fc.bias": np.zeros(7, np.float32)}
    _error(wrong, r"wrong shapes: fc\.bias: \(7,\), expected \(6,\)")
    differ = {**tiny_numpy}
    differ["t_former.spatial_transformer.layers.1.1.bias"] = differ["t_former.spatial_transformer.norm.bias"] + 1
    _error(differ, r"must be equal: t_former\.spatial_transformer\.layers\.1\.1\.bias differs")
    no_copy = dict(tiny_numpy)
    del no_copy["t_former.spatial_transformer.layers.0.0.weight"]
    _error(no_copy, r"missing keys: t_former\.spatial_transformer\.layers\.0\.0\.weight")
    with pytest.raises(LSTPNetMappingError, match="not named tensors"):
        unwrap({"model_state_dict": {"fc.weight": "text"}}, "x.pth")


def test_infer_config_reads_sizes_and_needs_heads_when_ambiguous(tiny_numpy):
    assert infer_config(tiny_numpy, num_heads=2) == TINY
    assert infer_config(tiny_numpy, head_dim=8) == TINY
    with pytest.raises(LSTPNetMappingError, match="attention width 16 is not a multiple of head_dim 64"):
        infer_config(tiny_numpy)


@pytest.mark.parametrize("layout", ["module", "plain", "bare"])
def test_files_with_and_without_the_prefix_load(tmp_path, tiny_torch, layout):
    state_dict = tiny_torch.state_dict()
    if layout == "module":
        payload = {"model_state_dict": {"module." + k: v for k, v in state_dict.items()}, "epoch": 32, "acc": 0.7}
    else:
        payload = {"model_state_dict": state_dict} if layout == "plain" else state_dict
    path = tmp_path / "c.pth"
    torch.save(payload, path)
    loaded = load_checkpoint(path, num_heads=2)
    assert loaded.config == TINY and loaded.num_tensors == 198
    assert ("prefix 'module.' stripped" in loaded.notes) == (layout == "module")
    assert loaded.metadata == ({"epoch": 32, "acc": 0.7} if layout == "module" else {})
    back = flax_to_torch(loaded.variables, TINY)
    assert all(np.array_equal(back[k], v.numpy()) for k, v in state_dict.items() if "num_batches" not in k)


def test_export_loads_strictly_into_the_reference_and_gives_its_logits(tmp_path, tiny_numpy, tiny_torch):
    _, variables, _ = _convert(tiny_numpy)
    path = tmp_path / "export.pth"
    assert export_pth(path, variables, TINY, extra={"epoch": 3}) == 226
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 3 and all(key.startswith("module.") for key in saved["model_state_dict"])
    fresh = from_config(TINY)
    fresh.load_state_dict({k[len("module."):]: v for k, v in saved["model_state_dict"].items()}, strict=True)
    frames = channels_first(np.random.default_rng(0).random((2, 16, 32, 24, 3), dtype=np.float32))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(frames)[0], tiny_torch.eval()(frames)[0])
    again = load_checkpoint(path, num_heads=2)  # and back through the reader
    for path_, leaf in traverse_util.flatten_dict(again.variables, sep="/").items():
        assert np.array_equal(leaf, traverse_util.flatten_dict(variables, sep="/")[path_]), path_


def _msceleb_state_dict(source: TorchLSTPNet) -> dict[str, torch.Tensor]:
    """A torchvision-named ResNet-18 of TINY's widths holding `source`'s backbone (as the real file)."""
    prefix = "s_former.ir_back."
    state = {key[len(prefix):]: value for key, value in source.state_dict().items() if key.startswith(prefix)
             and ".eca." not in key and not key.endswith(("conv1.bias", "conv2.bias", "downsample.0.bias"))}
    return {**state, "fc.weight": torch.ones(12, TINY.widths[-1]), "fc.bias": torch.zeros(12)}


def test_msceleb_initialisation_fills_the_backbone_only(tmp_path, tiny_torch, tiny_numpy):
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": _msceleb_state_dict(tiny_torch), "epoch": 40}, path)
    start = init_variables(TINY, seed=1)
    variables, notes = load_msceleb(path, start, TINY)
    # stem conv + BN, 8 blocks x (2 convs + 2 BNs), 3 shortcuts x (conv + BN); BN = 4 tensors
    assert len(msceleb_rows(TINY)) == 5 + 8 * 10 + 3 * 5 and "dropped: fc.weight, fc.bias" in notes
    got = flax_to_torch(variables, TINY)
    before = flax_to_torch(start, TINY)
    provided = {"s_former.ir_back." + row.torch_key for row in msceleb_rows(TINY)}
    for key in tiny_numpy:
        if key.endswith("num_batches_tracked"):
            continue
        want = tiny_numpy[key] if key in provided else before[key]
        assert np.array_equal(got[key], want), key
    assert "s_former.ir_back.layer2.0.conv1.bias" not in provided
    assert "s_former.ir_back.layer2.0.downsample.1.running_var" in provided
    bad = _msceleb_state_dict(tiny_torch)
    del bad["layer4.1.bn2.running_var"]
    torch.save({"state_dict": {"module." + k: v for k, v in bad.items()}}, path)
    with pytest.raises(LSTPNetMappingError, match=r"resnet18_msceleb\.pth: .*missing keys: layer4\.1\.bn2\.running_var"):
        load_msceleb(path, start, TINY)


@pytest.mark.slow  # Orbax save + restore and a CLI round trip
def test_pthnet_convert_imports_and_exports_an_original_file(tmp_path, capsys):
    from pthnet_jax.convert.cli import main

    config = LSTPNetConfig.tiny(head_dim=64)  # heads of 64, as released: the file alone gives the sizes
    original = randomise(from_config(config), seed=6)
    src = tmp_path / "best_val_acc_uar__epoch32.pth"
    torch.save({"model_state_dict": {"module." + k: v for k, v in original.state_dict().items()}, "epoch": 32}, src)
    assert main([str(src), str(tmp_path / "ckpt")]) == 0, capsys.readouterr().err
    assert "imported" in capsys.readouterr().out
    assert main([str(tmp_path / "ckpt"), str(tmp_path / "back.pth")]) == 0, capsys.readouterr().err
    saved = torch.load(tmp_path / "back.pth", weights_only=True)
    assert saved["epoch"] == 32
    fresh = from_config(config)
    fresh.load_state_dict({k[len("module."):]: v for k, v in saved["model_state_dict"].items()}, strict=True)
    for key, value in original.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(fresh.state_dict()[key], value), key
    # load_model reads the original file and the converted directory alike (the family from the keys,
    # then from the checkpoint), and both give the original's logits.
    from pthnet_jax import load_model

    frames = np.random.default_rng(1).random((2, 16, 32, 32, 3), dtype=np.float32)
    with torch.no_grad():
        expected = original.eval()(channels_first(frames))[0].numpy()
    for source in (src, tmp_path / "ckpt"):
        model, variables = load_model(source)
        logits = np.asarray(model.apply(variables, frames, train=False)["logits"])
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max(), err_msg=str(source))
