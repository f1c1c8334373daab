"""VideoMAE V2 backbone: parity with an independent PyTorch model, checkpoint reading, the giant's shapes."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from pthnet_jax.convert.videomae import (VideoMAEMappingError, describe, flax_shapes, infer_config, is_videomae,
                                         key_table, load_checkpoint, load_videomae, torch_to_flax, unwrap)
from pthnet_jax.models.videomae import (CHECKPOINT_FILE, SIZES, VideoMAE, VideoMAEConfig, attention,
                                        chunked_attention, count_params, param_shapes, preprocess,
                                        sinusoid_table)
from videomae_torch_reference import VisionTransformer, position_table, randomise

# A tiny member of the family: MLP ratio not 4 (like the giant), non-square head count, 2 tubelets.
TINY = VideoMAEConfig(embed_dim=40, depth=2, num_heads=5, mlp_dim=72, patch_size=8, tubelet_size=2,
                      num_frames=4, img_size=24)
TOLERANCE = 2e-5  # x max|feature|


def _torch_model(config: VideoMAEConfig = TINY, seed: int = 0) -> VisionTransformer:
    model = VisionTransformer(dim=config.embed_dim, depth=config.depth, heads=config.num_heads,
                              hidden=config.mlp_dim, patch=config.patch_size, tubelet=config.tubelet_size,
                              frames=config.num_frames, size=config.img_size, num_classes=7)
    return randomise(model, seed).eval()


def _frames(config: VideoMAEConfig = TINY, batch: int = 3, seed: int = 0) -> np.ndarray:
    shape = (batch, config.num_frames, config.img_size, config.img_size, 3)
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _reference_features(model: VisionTransformer, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():  # channels last -> the original's (B, 3, T, H, W)
        return model.forward_features(torch.from_numpy(frames).permute(0, 4, 1, 2, 3)).numpy()


def _numpy_state_dict(model: torch.nn.Module, dtype=None) -> dict[str, np.ndarray]:
    return {key: (value.to(dtype) if dtype else value).numpy().copy()
            for key, value in model.state_dict().items()}


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def apply_tiny():
    return jax.jit(VideoMAE(TINY).apply)


# --- parity -------------------------------------------------------------------------------------

def test_features_match_the_pytorch_reference(tmp_path, apply_tiny):
    torch_model = _torch_model()
    path = tmp_path / "tiny.pth"
    torch.save({"module": torch_model.state_dict()}, path)
    model, variables = load_videomae(path, config=TINY)
    frames = _frames()
    got = np.asarray(apply_tiny(variables, frames))
    want = _reference_features(torch_model, frames)
    assert got.shape == (3, TINY.embed_dim) and got.dtype == np.float32
    assert _relative_error(got, want) < TOLERANCE
    # Each clip's features depend on that clip only.
    alone = np.asarray(apply_tiny(variables, frames[1:2]))
    assert _relative_error(alone, want[1:2]) < TOLERANCE


def test_float16_checkpoint_keeps_its_precision_and_matches(tmp_path, apply_tiny):
    torch_model = _torch_model(seed=1)
    half = {key: value.half() for key, value in torch_model.state_dict().items()}
    path = tmp_path / "half.pth"
    torch.save({"module": half}, path)
    model, variables = load_videomae(path, config=TINY)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float16)}
    # The original loads the float16 file into a float32 model.
    torch_model.load_state_dict({key: value.float() for key, value in half.items()})
    frames = _frames(seed=1)
    got = np.asarray(apply_tiny(variables, frames))
    assert _relative_error(got, _reference_features(torch_model, frames)) < TOLERANCE
    # Asked for float32 parameters: the same features (up to the rounding of another program).
    _, as_float32 = load_videomae(path, dtype=jnp.float32, config=TINY)
    assert {leaf.dtype for leaf in jax.tree.leaves(as_float32)} == {jnp.dtype(jnp.float32)}
    assert _relative_error(np.asarray(apply_tiny(as_float32, frames)), got) < 1e-6


def test_bfloat16_compute_stays_close(apply_tiny):
    torch_model = _torch_model(seed=2)
    _, params, _ = torch_to_flax(_numpy_state_dict(torch_model), TINY)
    frames = _frames(seed=2)
    full = np.asarray(apply_tiny({"params": params}, frames))
    fast = jax.jit(VideoMAE(TINY, dtype=jnp.bfloat16).apply)({"params": params}, frames)
    assert fast.dtype == jnp.float32
    assert _relative_error(np.asarray(fast), full) < 0.1


def test_a_wrong_mapping_would_show(apply_tiny):
    """The parity tests can fail: swapped q/v biases (cf. the Scenic converter's k/v bias mix-up) or swapped
    norms change the output."""
    torch_model = _torch_model(seed=3)
    _, params, _ = torch_to_flax(_numpy_state_dict(torch_model), TINY)
    frames = _frames(seed=3)
    want = _reference_features(torch_model, frames)
    assert _relative_error(np.asarray(apply_tiny({"params": params}, frames)), want) < TOLERANCE
    swapped = jax.tree.map(lambda x: x, params)
    attn = swapped["blocks_0"]["attn"]
    attn["q_bias"], attn["v_bias"] = attn["v_bias"], attn["q_bias"]
    assert _relative_error(np.asarray(apply_tiny({"params": swapped}, frames)), want) > 1e-3
    swapped = jax.tree.map(lambda x: x, params)
    block = swapped["blocks_1"]
    block["norm1"], block["norm2"] = block["norm2"], block["norm1"]
    assert _relative_error(np.asarray(apply_tiny({"params": swapped}, frames)), want) > 1e-3


@pytest.mark.parametrize("num_tokens", [17, 18])  # 17: the last block of queries is padded
def test_chunked_attention_equals_dot_product_attention(num_tokens):
    rng = np.random.default_rng(num_tokens)
    q, k, v = (jnp.asarray(rng.standard_normal((2, num_tokens, 3, 8), dtype=np.float32)) for _ in range(3))
    want = jax.nn.dot_product_attention(q, k, v)
    for score_block in (3 * num_tokens * 7, 1 << 20):  # blocks of 7 (or 6) query rows; all rows at once
        got = jax.jit(chunked_attention, static_argnums=3)(q, k, v, score_block)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_both_attention_paths_give_the_same_features(apply_tiny):
    config = dataclasses.replace(TINY, depth=1)
    variables = {"params": torch_to_flax(_numpy_state_dict(_torch_model(config, seed=5)), config)[1]}
    frames = _frames(seed=5)
    chunked = np.asarray(jax.jit(VideoMAE(config, attention="chunked").apply)(variables, frames))
    fused = np.asarray(jax.jit(VideoMAE(config, attention="dot_product_attention").apply)(variables, frames))
    assert _relative_error(chunked, fused) < 1e-6
    with pytest.raises(ValueError, match="unknown attention"):
        jax.eval_shape(VideoMAE(config, attention="flash").apply, variables, frames)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU: JAX_PLATFORMS=cuda pytest -k cudnn")
def test_cudnn_attention_matches_xla_on_gpu():
    """The giant's attention shape (2048 tokens, 16 heads of 88) through cuDNN's fused kernel."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 2048, 16, 88), dtype=np.float32), jnp.bfloat16)
               for _ in range(3))
    fused = jax.jit(attention, static_argnums=3)(q, k, v, "cudnn").astype(jnp.float32)
    auto = jax.jit(attention, static_argnums=3)(q, k, v, "auto").astype(jnp.float32)
    exact = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)))
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(fused))
    assert float(jnp.abs(fused - exact).max() / jnp.abs(exact).max()) < 2e-2


def test_position_table_is_interleaved_sin_cos():
    table = sinusoid_table(37, 12)
    np.testing.assert_allclose(table, position_table(37, 12)[0].numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(table[5, 2], np.sin(5 / 10000 ** (2 / 12)), rtol=1e-6)
    np.testing.assert_allclose(table[5, 3], np.cos(5 / 10000 ** (2 / 12)), rtol=1e-6)


def test_preprocess_and_input_checks(apply_tiny):
    frames = np.array([0, 1, 128, 255], np.uint8)
    np.testing.assert_array_equal(np.asarray(preprocess(frames)), np.array([0, 1, 128, 255], np.float32) / 255)
    assert preprocess(frames, jnp.bfloat16).dtype == jnp.bfloat16
    variables = {"params": torch_to_flax(_numpy_state_dict(_torch_model()), TINY)[1]}
    with pytest.raises(ValueError, match="channels last"):
        apply_tiny(variables, np.zeros((1, 3, TINY.num_frames, TINY.img_size, TINY.img_size), np.float32))


# --- checkpoint files ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["model", "bare", "module_prefix", "orig_mod_prefix", "state_dict",
                                    "safetensors"])
def test_checkpoint_containers(tmp_path, layout):
    torch_model = _torch_model(seed=4)
    state_dict = torch_model.state_dict()
    if layout == "safetensors":
        from safetensors.numpy import save_file

        path = tmp_path / "tiny.safetensors"
        save_file({"module." + key: value for key, value in _numpy_state_dict(torch_model).items()}, path)
    else:
        payload = {
            "model": {"model": state_dict, "epoch": 7},
            "bare": state_dict,
            "module_prefix": {"module." + key: value for key, value in state_dict.items()},
            "orig_mod_prefix": {"model": {"module._orig_mod." + key: value
                                          for key, value in state_dict.items()}},
            "state_dict": {"state_dict": state_dict, "epoch": 3},
        }[layout]
        path = tmp_path / "tiny.pth"
        torch.save(payload, path)
    loaded = load_checkpoint(path, config=TINY)
    _, want, _ = torch_to_flax(_numpy_state_dict(torch_model), TINY)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded.variables["params"]), want)
    assert any("head" in note for note in loaded.notes)


def test_conversion_releases_each_source_tensor_as_it_goes():
    """With consume=True the converter holds at most the tensor it is converting: the peak stays at
    about one copy of the weights (measured on the giant by scripts/make_synthetic_videomae.py)."""
    import weakref

    state_dict = _numpy_state_dict(_torch_model())
    alive = {key: weakref.ref(value) for key, value in state_dict.items()}
    made: set[int] = set()  # ids of leaves made so far (a vector needs no copy: its leaf is the source)
    held = []

    def place(array, dtype):
        # Sources already consumed and still alive, other than as a leaf: only the one in hand.
        held.append(sum(1 for key, ref in alive.items()
                        if key not in state_dict and ref() is not None and id(ref()) not in made))
        leaf = np.ascontiguousarray(array, dtype=dtype)
        made.add(id(leaf))
        return leaf

    _, params, _ = torch_to_flax(state_dict, TINY, place=place, consume=True)
    assert not state_dict and max(held) == 1 and len(held) == len(alive) - 2  # head.* dropped
    leaves = {id(leaf) for leaf in jax.tree.leaves(params)}
    assert all(ref() is None or id(ref()) in leaves for ref in alive.values())


def test_size_is_inferred_from_the_shapes(tmp_path):
    base = VideoMAEConfig.from_name("small", depth=2, num_frames=4, img_size=32)
    torch_model = randomise(VisionTransformer(dim=384, depth=2, heads=6, hidden=1536, patch=16,
                                              tubelet=2, frames=4, size=32, num_classes=3))
    path = tmp_path / "small.pth"
    torch.save({"module": torch_model.state_dict()}, path)
    loaded = load_checkpoint(path, num_frames=4, img_size=32)
    assert loaded.config == base
    # Widths outside the family need the head count.
    with pytest.raises(VideoMAEMappingError, match="num_heads"):
        infer_config(_numpy_state_dict(_torch_model()))
    assert infer_config(_numpy_state_dict(_torch_model()), num_heads=5, num_frames=4, img_size=24) == TINY


def test_bad_checkpoints_are_refused_with_the_file_and_key(tmp_path):
    state_dict = _torch_model().state_dict()

    def save(name, payload):
        path = tmp_path / name
        torch.save(payload, path)
        return path

    path = save("missing.pth", {k: v for k, v in state_dict.items() if k != "blocks.1.attn.v_bias"})
    with pytest.raises(VideoMAEMappingError, match=r"missing\.pth.*missing keys.*blocks\.1\.attn\.v_bias"):
        load_checkpoint(path, config=TINY)
    path = save("extra.pth", {**state_dict, "blocks.0.attn.k_bias": torch.zeros(TINY.embed_dim)})
    with pytest.raises(VideoMAEMappingError, match=r"extra\.pth.*unexpected keys.*blocks\.0\.attn\.k_bias"):
        load_checkpoint(path, config=TINY)
    path = save("shape.pth", {**state_dict, "blocks.0.mlp.fc1.bias": torch.zeros(5)})
    with pytest.raises(VideoMAEMappingError, match=r"shape\.pth.*blocks\.0\.mlp\.fc1\.bias: \(5,\)"):
        load_checkpoint(path, config=TINY)
    pretraining = {"encoder." + k: v for k, v in state_dict.items() if not k.startswith(("head", "fc_norm"))}
    pretraining.update({"encoder.norm.weight": torch.ones(TINY.embed_dim),
                        "decoder.head.weight": torch.ones(3, 2)})
    path = save("pt.pth", {"model": pretraining})
    with pytest.raises(VideoMAEMappingError, match=rf"pt\.pth.*pre-training.*{CHECKPOINT_FILE}"):
        load_checkpoint(path)
    absurd = {**state_dict, "blocks.999999999.norm1.weight": torch.ones(TINY.embed_dim)}
    with pytest.raises(VideoMAEMappingError, match=r"absurd\.pth: blocks \[2, 3\] are missing.*to 999999999"):
        load_checkpoint(save("absurd.pth", absurd), num_heads=5)
    path = save("list.pth", [1, 2])
    with pytest.raises(ValueError, match=r"list\.pth"):
        load_checkpoint(path, config=TINY)


# --- the giant, without allocating it -----------------------------------------------------------

def _giant_table() -> dict[str, tuple[int, ...]]:
    """The released checkpoint's keys and shapes, as docs/videomae-reference.md §2 lists them."""
    table = {"patch_embed.proj.weight": (1408, 3, 2, 14, 14), "patch_embed.proj.bias": (1408,)}
    for i in range(40):
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.q_bias", "attn.v_bias",
                     "attn.proj.bias", "mlp.fc2.bias"):
            table[f"blocks.{i}.{name}"] = (1408,)
        table[f"blocks.{i}.attn.qkv.weight"] = (4224, 1408)
        table[f"blocks.{i}.attn.proj.weight"] = (1408, 1408)
        table[f"blocks.{i}.mlp.fc1.weight"] = (6144, 1408)
        table[f"blocks.{i}.mlp.fc1.bias"] = (6144,)
        table[f"blocks.{i}.mlp.fc2.weight"] = (1408, 6144)
    table.update({"fc_norm.weight": (1408,), "fc_norm.bias": (1408,),
                  "head.weight": (710, 1408), "head.bias": (710,)})
    return table


def test_giant_key_set_and_shapes_without_allocating():
    table = _giant_table()
    assert len(table) == 526
    # Zero-stride views: the whole "checkpoint" takes no memory.
    fake = {key: np.broadcast_to(np.zeros((), np.float16), shape) for key, shape in table.items()}
    wrapped, notes = unwrap({"module": fake})
    config = infer_config(wrapped)
    assert config == VideoMAEConfig() == VideoMAEConfig.from_name("giant") and config.name == "giant"
    assert config.num_tokens == 2048 and config.head_dim == 88
    assert {key: shape for key, _, _, shape in key_table(config)} == {
        key: shape for key, shape in table.items() if not key.startswith("head.")}
    # The converter's output shapes are exactly the Flax module's parameters.
    abstract = param_shapes(config)["params"]
    flat = {"/".join(k.key for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    assert flat == flax_shapes(config)
    assert count_params(abstract) == 1_011_610_752
    assert is_videomae(table)
    assert describe(config, abstract).startswith("VideoMAE V2 ViT giant: 1408-d, 40 blocks")
    assert "1,011,610,752 parameters" in describe(config, abstract)
    # And the mapping runs on the views (transposes are views too) with the same tree.
    _, params, _ = torch_to_flax(fake, config,
                                 place=lambda array, dtype: jax.ShapeDtypeStruct(array.shape, dtype))
    assert jax.tree.map(lambda s: (s.shape, s.dtype), params) == jax.tree.map(
        lambda s: (s.shape, jnp.dtype(jnp.float16)), abstract)


@pytest.mark.parametrize("name", list(SIZES))
def test_family_sizes_round_trip_through_inference(name):
    config = VideoMAEConfig.from_name(name)
    fake = {key: np.broadcast_to(np.zeros((), np.float16), shape) for key, _, _, shape in key_table(config)}
    assert infer_config(fake) == config
    if name in ("small", "base"):  # tracing is slow for the deep ones; the giant has its own test
        assert count_params(param_shapes(config)["params"]) == sum(
            int(np.prod(s)) for s in flax_shapes(config).values())


def test_flops_per_clip():
    assert abs(VideoMAEConfig().flops_per_clip / 5.09e12 - 1) < 1e-3  # the reference page's figure
    config = VideoMAEConfig.from_name("small", depth=1, num_frames=4, img_size=64)
    frames = jax.ShapeDtypeStruct((1, 4, 64, 64, 3), jnp.float32)
    compiled = jax.jit(VideoMAE(config, attention="dot_product_attention").apply).lower(
        param_shapes(config), frames).compile()
    cost = compiled.cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    assert 1.0 <= xla_flops / config.flops_per_clip < 1.1  # XLA also counts norms, softmax, GELU


def test_config_checks():
    with pytest.raises(ValueError, match="unknown VideoMAE size"):
        VideoMAEConfig.from_name("tiny")
    with pytest.raises(ValueError, match="divisible"):
        VideoMAEConfig(embed_dim=100, num_heads=16)
    assert VideoMAEConfig.from_dict(TINY.to_dict()) == TINY
    assert dataclasses.replace(TINY, depth=3).depth == 3
