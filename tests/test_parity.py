"""Numerical parity: the Flax model vs the PyTorch reference (original names/layouts) on random weights."""
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pthnet_jax.convert.mapping import flax_to_torch, torch_to_flax  # noqa: E402
from pthnet_jax.benchmarks.torch_pthnet import TorchPTHNet  # noqa: E402
from pthnet_jax.models.pthnet import ModelConfig, PTHNet  # noqa: E402

# One batch size for every test of a config: JAX's per-op compile cache is then shared between tests.
BATCH = 16
CONFIGS = {
    "tiny": ModelConfig(n_in=24, n_embd=32, mlp_dim=48, num_classes=5),
    "odd": ModelConfig(n_in=20, n_embd=48, mlp_dim=40, arch=(1, 1, 2, 0), thr_size=(5, 3, 1, 3),
                       k=(3, 1, 5), with_ln=False, path_pdrop=0.0, num_classes=3, max_len=8),
}


def _torch_model(cfg: ModelConfig, seed: int) -> TorchPTHNet:
    kwargs = cfg.to_dict()
    model = TorchPTHNet(**kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every tensor random, so no mapping error hides behind a zero or a one
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
    return model.eval()


def _inputs(cfg: ModelConfig, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    features, masks = {}, {}
    for level, length in cfg.level_lengths.items():
        # Every count from 1 to T appears.
        counts = (np.arange(batch) % length) + 1
        masks[level] = np.arange(length)[None] < counts[:, None]
        noise = rng.normal(size=(batch, length, cfg.n_in))
        features[level] = (noise * masks[level][..., None]).astype(np.float32)
    return features, masks


def _torch_logits(model: TorchPTHNet, features, masks):
    with torch.no_grad():
        out = model.forward_levels({k: torch.from_numpy(v) for k, v in features.items()},
                                   {k: torch.from_numpy(v) for k, v in masks.items()})
    return {k: v.numpy() for k, v in out.items()}


def _flax_logits(cfg, params, features, masks):
    return {k: np.asarray(v) for k, v in PTHNet(cfg).apply({"params": params}, features, masks).items()}


def _max_rel_diff(a, b):
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in b)


@pytest.mark.slow  # trains or compiles a model: outside the quick check
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flax_matches_torch_reference(name):
    cfg = CONFIGS[name]
    model = _torch_model(cfg, seed=1)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    inferred, params, _, _ = torch_to_flax(state)
    # Only the fields a state dict cannot carry may differ from the config the weights came from.
    assert dataclasses.replace(inferred, max_len=cfg.max_len, path_pdrop=cfg.path_pdrop) == cfg
    features, masks = _inputs(cfg, batch=BATCH, seed=2)
    expected = _torch_logits(model, features, masks)
    got = _flax_logits(cfg, params, features, masks)
    assert set(got) == {"L", "M", "H"}
    assert _max_rel_diff(got, expected) <= 1e-4
    # Evaluation path of the original signature: one level, the first whose inputs are given.
    for index, level in enumerate("LMH"):
        args = [None] * 6
        args[index] = torch.from_numpy(features[level]).transpose(1, 2)
        args[3 + index] = torch.from_numpy(masks[level])[:, None]
        with torch.no_grad():
            single = model(*args, False).numpy()
        np.testing.assert_allclose(got[level], single, rtol=0, atol=1e-4 * np.abs(single).max())


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_default_size_parity():
    cfg = ModelConfig()
    model = _torch_model(cfg, seed=3)
    # Scale weights down so the 512-wide default model stays in a sensible numeric range.
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.mul_(0.2)
    _, params, _, _ = torch_to_flax({k: v.numpy() for k, v in model.state_dict().items()})
    features, masks = _inputs(cfg, batch=BATCH, seed=4)
    assert _max_rel_diff(_flax_logits(cfg, params, features, masks),
                         _torch_logits(model, features, masks)) <= 1e-4


@pytest.mark.slow  # trains or compiles a model: outside the quick check
@pytest.mark.parametrize("corrupt", ["swap_level_convs", "transpose_square_kernel", "swap_qk", "scale_one"])
def test_parity_catches_a_single_wrong_weight(corrupt):
    cfg = CONFIGS["tiny"]
    model = _torch_model(cfg, seed=5)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    _, params, extra, _ = torch_to_flax(state)
    layer = params["branch_1_0"]
    if corrupt == "swap_level_convs":
        layer["convw_H"], layer["convw_L"] = layer["convw_L"], layer["convw_H"]
    elif corrupt == "transpose_square_kernel":
        layer["cross_att"]["proj"]["kernel"] = layer["cross_att"]["proj"]["kernel"].T
    elif corrupt == "swap_qk":
        att = layer["cross_att"]
        att["query"], att["key"] = att["key"], att["query"]
    else:
        params["stem_0"]["gn"]["scale"] = params["stem_0"]["gn"]["scale"].copy()
        params["stem_0"]["gn"]["scale"][0] += 1.0
    features, masks = _inputs(cfg, batch=BATCH, seed=6)
    assert _max_rel_diff(_flax_logits(cfg, params, features, masks),
                         _torch_logits(model, features, masks)) > 1e-3


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_flax_to_torch_loads_strictly_and_matches():
    cfg = CONFIGS["tiny"]
    flax_params = torch_to_flax({k: v.numpy() for k, v in _torch_model(cfg, 7).state_dict().items()})[1]
    exported = flax_to_torch(flax_params, cfg)  # pos_embed tensors synthesised
    fresh = TorchPTHNet(**cfg.to_dict()).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    features, masks = _inputs(cfg, batch=BATCH, seed=8)
    assert _max_rel_diff(_flax_logits(cfg, flax_params, features, masks),
                         _torch_logits(fresh, features, masks)) <= 1e-4
