"""HTNet in Flax: parity with an independent PyTorch model (forward, one Adam step), sizes, config."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import traverse_util

from htnet_torch_reference import ReferenceHTNet, randomise
from pthnet_jax.families.htnet.convert import key_table, torch_to_flax
from pthnet_jax.families.htnet.model import HTNet, HTNetConfig, count_params, param_shapes

RELEASED = HTNetConfig()
# The released geometry (L = 1, widths 256/512/1024, 3/6/12 heads of 85) with fewer blocks.
SHALLOW = HTNetConfig(block_repeats=(1, 1, 2))
# Attention over 7 x 7 = 49 tokens, head size 10, inner width 30 < 32.
WIDE_BLOCKS = HTNetConfig(image_size=56, patch_size=2, dim=32, heads=3, block_repeats=(1, 1, 2))
TINY = HTNetConfig(image_size=8, patch_size=2, dim=32, heads=3, block_repeats=1)
TOLERANCE = 1e-4  # relative to max |logit|


def _reference(config: HTNetConfig, seed: int = 0) -> ReferenceHTNet:
    model = ReferenceHTNet(config.image_size, config.patch_size, config.num_classes, config.dim, config.heads,
                           config.num_hierarchies, config.block_repeats, config.mlp_mult, config.channels)
    return randomise(model, seed).eval()


def _images(config: HTNetConfig, batch: int = 4, seed: int = 0) -> np.ndarray:
    shape = (batch, config.image_size, config.image_size, config.channels)
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)


def _numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}


def _torch_logits(model: ReferenceHTNet, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


def _relative(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module", params=[SHALLOW, WIDE_BLOCKS], ids=["released-geometry", "49-token-blocks"])
def case(request):
    config = request.param
    torch_model = _reference(config)
    _, params = torch_to_flax(_numpy(torch_model), config)
    return config, torch_model, params, jax.jit(HTNet(config).apply)


def test_released_sizes_without_allocating():
    shapes = param_shapes(RELEASED)["params"]
    flat = traverse_util.flatten_dict(shapes, sep="/")
    assert count_params(shapes) == 139_582_982
    assert len(flat) == 171
    # The converter's table names exactly these leaves, and the reference has the original's 171 names.
    assert {path for _, path, _, _ in key_table(RELEASED)} == set(flat)
    reference = ReferenceHTNet()
    assert [key for key, *_ in key_table(RELEASED)] == list(reference.state_dict())
    assert flat["stage_2/block_9/attn/qkv/kernel"].shape == (1024, 3060)
    assert flat["stage_0/block_0/attn/out/kernel"].shape == (255, 256)
    assert flat["stage_1/pos_emb"].shape == (1,)


def test_logits_match_the_pytorch_reference(case):
    config, torch_model, params, apply = case
    images = _images(config)
    want = _torch_logits(torch_model, images)
    got = apply({"params": params}, images)
    assert got.shape == (4, 3) and got.dtype == jnp.float32
    assert _relative(got, want) < TOLERANCE
    # A sample's logits depend on that sample only.
    assert _relative(apply({"params": params}, images[2:3]), want[2:3]) < TOLERANCE


def test_wrong_inputs_or_mappings_would_show(case):
    config, torch_model, params, apply = case
    images = _images(config, seed=1)
    want = _torch_logits(torch_model, images)
    assert _relative(apply({"params": params}, images[..., ::-1]), want) > 1e-3  # RGB instead of BGR
    stage = jax.tree.map(lambda x: x, params)
    stage["stage_1"]["pos_emb"] = np.zeros_like(stage["stage_1"]["pos_emb"])  # positional table dropped
    assert _relative(apply({"params": stage}, images), want) > 1e-3
    if config.seq_len > 1:  # queries and keys swapped: only visible with several tokens per block
        swapped = jax.tree.map(lambda x: x, params)
        kernel = swapped["stage_0"]["block_0"]["attn"]["qkv"]["kernel"]
        inner = config.inner(0)
        swapped["stage_0"]["block_0"]["attn"]["qkv"]["kernel"] = np.concatenate(
            [kernel[:, inner:2 * inner], kernel[:, :inner], kernel[:, 2 * inner:]], axis=1)
        assert _relative(apply({"params": swapped}, images), want) > 1e-4


def _flax_step(config: HTNetConfig, params, images, labels):
    model, optimizer = HTNet(config), optax.adam(5e-5, b1=0.9, b2=0.999, eps=1e-8)

    def loss_fn(p):
        logits = model.apply({"params": p}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, _ = optimizer.update(grads, optimizer.init(p), p)
        return loss, loss_fn(optax.apply_updates(p, updates))

    before, after = step(params)
    return float(before), float(after)


def _torch_step(model: ReferenceHTNet, images, labels):
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    inputs, targets = torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels).long()
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(model(inputs), targets)
    return float(loss.detach()), float(after)


@pytest.mark.slow  # compiles a training step of two models (~40-70 s on the shared CPU)
def test_one_adam_step_matches_the_reference(case):
    config, _, params, _ = case
    torch_model = _reference(config, seed=5)
    _, params = torch_to_flax(_numpy(torch_model), config)
    images = _images(config, batch=6, seed=2)
    labels = np.array([0, 1, 2, 2, 1, 0], np.int32)
    before, after = _flax_step(config, params, images, labels)
    want_before, want_after = _torch_step(torch_model, images, labels)
    assert abs(before - want_before) <= 1e-5 * abs(want_before)
    assert abs(after - want_after) <= 1e-5 * abs(want_after)
    assert abs(after - before) > 1e-4  # the step did move the loss


def test_torch_style_initialisation_follows_the_fan_in():
    def init(config):  # one compiled program (eagerly, every op of the initialisation compiles its own)
        return traverse_util.flatten_dict(
            jax.jit(lambda key: HTNet(config).init(key, jnp.zeros((1, 8, 8, 3))))(jax.random.key(1))["params"], sep="/")

    params = init(TINY)
    fc1 = np.asarray(params["stage_1/block_0/ff/fc1/kernel"])  # fan_in 64
    assert 0.9 / 8 < np.abs(fc1).max() <= 1 / 8 and np.abs(np.asarray(params["stage_1/block_0/ff/fc1/bias"])).max() <= 1 / 8
    conv = np.asarray(params["aggregate_0/conv/kernel"])  # fan_in 9 * 32
    assert 0.9 / np.sqrt(288) < np.abs(conv).max() <= 1 / np.sqrt(288)
    assert np.all(np.asarray(params["head/norm/scale"]) == 1) and np.all(np.asarray(params["head/norm/bias"]) == 0)
    flax_style = init(HTNetConfig(**{**TINY.to_dict(), "init": "flax"}))
    assert np.all(np.asarray(flax_style["stage_1/block_0/ff/fc1/bias"]) == 0)


def test_config_validation_and_round_trip():
    assert HTNetConfig.from_dict(RELEASED.to_dict()) == RELEASED
    assert HTNetConfig(block_repeats=2).block_repeats == (2, 2, 2)
    assert HTNetConfig.from_dict({"block_repeats": [1, 2, 3]}).block_repeats == (1, 2, 3)
    for bad, words in [({"dim_head": 64}, "dim_head"), ({"dims": 3}, "unknown"),
                       ({"image_size": 30}, "not divisible"), ({"num_hierarchies": 4}, "halved"),
                       ({"block_repeats": (1, 2)}, "block_repeats"), ({"dim": 2}, "smaller than heads"),
                       ({"dropout": 1.0}, "dropout"), ({"init": "xavier"}, "init")]:
        with pytest.raises(ValueError, match=words):
            HTNetConfig.from_dict(bad)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 28, 28, 3\)"):
        HTNet(RELEASED).init(jax.random.key(0), jnp.zeros((1, 3, 28, 28)))
