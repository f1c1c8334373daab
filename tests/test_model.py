"""Model-level properties that do not need PyTorch (the numerical parity test is test_parity.py)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pthnet_jax.models.pthnet import LEVELS, ModelConfig, PTHNet, count_params, dummy_inputs, init_variables

# One layer of each kind (every part of the model; the default depth would only compile longer).
TINY = ModelConfig(n_in=24, n_embd=32, mlp_dim=48, num_classes=5, arch=(1, 1, 1, 1))


def _random_inputs(config, batch, seed=0):
    rng = np.random.default_rng(seed)
    features, masks = {}, {}
    for level, length in config.level_lengths.items():
        counts = rng.integers(1, length + 1, size=batch)
        masks[level] = np.arange(length)[None] < counts[:, None]
        features[level] = (rng.normal(size=(batch, length, config.n_in)) * masks[level][..., None]
                           ).astype(np.float32)
    return features, masks


def _expected_param_count(cfg: ModelConfig) -> int:
    """Parameter count written out from the spec's layer list (without the never-used pos_embed)."""
    c = cfg.n_embd
    total = cfg.n_in * c * cfg.thr_size[0] + (cfg.arch[0] - 1) * c * c * cfg.thr_size[0]
    total += cfg.arch[0] * 2 * c if cfg.with_ln else cfg.arch[0] * c

    def thr(kernel, drop):
        per_channel = (kernel + 1) + 2 + 2  # psi, fc, global_fc: weight(s) + bias per channel
        per_channel += 3 * (kernel + 1) + sum(kk + 1 for kk in cfg.k)  # convw_*, convkw_*
        n = per_channel * c + 4 * c  # + ln, gn
        n += 3 * 3 * c + 3 * 2 * c + 4 * (c * c + c)  # q/k/v depthwise convs, their norms, q/k/v/proj
        n += c * cfg.mlp_dim + cfg.mlp_dim + cfg.mlp_dim * c + c
        n += 2 * c if drop else 0
        return n

    total += cfg.arch[1] * thr(cfg.thr_size[1], False)
    total += cfg.arch[2] * thr(cfg.thr_size[2], cfg.path_pdrop > 0)
    total += cfg.arch[3] * thr(cfg.thr_size[3], cfg.path_pdrop > 0)
    return total + c * cfg.num_classes + cfg.num_classes


@pytest.mark.parametrize("cfg", [TINY, ModelConfig(), ModelConfig(n_embd=64, arch=(1, 1, 2, 0),
                                                                   path_pdrop=0.0, with_ln=False)])
def test_param_count_matches_spec(cfg):
    variables = jax.eval_shape(lambda: init_variables(PTHNet(cfg), jax.random.key(0)))
    assert count_params(variables["params"]) == _expected_param_count(cfg)


def test_default_config_is_about_10_4m_params():
    variables = jax.eval_shape(lambda: init_variables(PTHNet(ModelConfig()), jax.random.key(0)))
    assert 10.3e6 < count_params(variables["params"]) < 10.5e6


def _jitted(model):
    """init and apply as two compiled programs (eagerly, each op compiles a program of its own)."""
    return (jax.jit(lambda key: init_variables(model, key)),
            jax.jit(model.apply, static_argnames=("train",)))


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_levels_share_weights_except_level_convs():
    model = PTHNet(TINY)
    init, apply = _jitted(model)
    variables = init(jax.random.key(0))
    features, masks = _random_inputs(TINY, 3)
    all_levels = apply(variables, features, masks)
    h_only = apply(variables, {"H": features["H"]}, {"H": masks["H"]})
    assert set(h_only) == {"H"} and set(all_levels) == set(LEVELS)
    np.testing.assert_allclose(h_only["H"], all_levels["H"], rtol=1e-6, atol=1e-6)
    # Perturbing the L-level conv changes only the L logits.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 1.0 if "convw_L" in jax.tree_util.keystr(path) else x, variables["params"])
    changed = apply({"params": params}, features, masks)
    assert not np.allclose(changed["L"], all_levels["L"])
    np.testing.assert_array_equal(changed["H"], all_levels["H"])
    np.testing.assert_array_equal(changed["M"], all_levels["M"])


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_drop_path_only_in_training():
    model = PTHNet(dataclasses.replace(TINY, path_pdrop=0.5))
    init, apply = _jitted(model)
    variables = init(jax.random.key(0))
    # Large drop-path scales so dropping a path visibly changes the output.
    variables = {"params": jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ones_like(x) if "drop_path" in jax.tree_util.keystr(path) else x,
        variables["params"])}
    features, masks = _random_inputs(model.config, 8)
    eval_a = apply(variables, features, masks, train=False)
    eval_b = apply(variables, features, masks, train=False)
    np.testing.assert_array_equal(eval_a["H"], eval_b["H"])
    train_a = apply(variables, features, masks, train=True, rngs={"dropout": jax.random.key(1)})
    train_b = apply(variables, features, masks, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(train_a["H"], train_b["H"])
    with pytest.raises(Exception):
        apply(variables, features, masks, train=True)  # no dropout rng given


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_jit_and_padding_rows():
    model = PTHNet(TINY)
    variables = _jitted(model)[0](jax.random.key(0))
    features, masks = _random_inputs(TINY, 4)
    masks = {lvl: m.copy() for lvl, m in masks.items()}
    masks["H"][3] = False  # an all-padding row, as in a padded evaluation batch
    out = jax.jit(lambda v, f, m: model.apply(v, f, m))(variables, features, masks)
    assert out["H"].shape == (4, TINY.num_classes)
    assert np.isfinite(np.asarray(out["H"])).all()


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_bad_config_and_inputs_are_reported():
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(n_embd=36)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"n_embed": 3})
    model = PTHNet(TINY)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))  # shapes: nothing to compile
    features, masks = dummy_inputs(TINY, 2, levels=("H",))
    with pytest.raises(ValueError, match="share keys"):
        jax.eval_shape(lambda v: model.apply(v, features, {"M": masks["H"]}), variables)


def test_config_json_round_trip():
    cfg = ModelConfig(arch=[2, 1, 1, 0], k=[1, 3, 5])
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.arch == (2, 1, 1, 0)
