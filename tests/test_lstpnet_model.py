"""LSTPNet in Flax against the independent PyTorch reference: evaluation outputs through a real `.pth`
and the converter, one training step (BatchNorm batch statistics, loss, every gradient, updated running
statistics), the released size's shapes via eval_shape, the config and the PyTorch-style init."""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import traverse_util
from torch.nn import functional as F

from lstpnet_torch_reference import channels_first, eca_kernel, from_config, randomise, reduced_width, run
from pthnet_jax.families.lstpnet.convert import flax_to_torch, load_checkpoint
from pthnet_jax.families.lstpnet.model import (TCE, LSTPNet, LSTPNetConfig, count_params, init_variables, tce_sizes,
                                               variable_shapes)

TINY = LSTPNetConfig.tiny(num_classes=5)
TOLERANCE = 1e-4  # x max|value|
OUTPUTS = ("logits", "features", "frame_features", "attention")


def _frames(batch: int = 2, size: tuple[int, int] = (32, 24), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 16, *size, 3), dtype=np.float32)


def _relative(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(torch model, path of its original-format checkpoint, converted checkpoint)."""
    model = randomise(from_config(TINY), seed=1)
    path = tmp_path_factory.mktemp("lstpnet") / "tiny.pth"
    torch.save({"model_state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 9}, path)
    return model, path, load_checkpoint(path, num_heads=TINY.num_heads)


@pytest.fixture(scope="module")
def apply_eval():
    return jax.jit(lambda variables, frames: LSTPNet(TINY).apply(variables, frames, train=False))


def test_evaluation_outputs_match_the_reference(reference, apply_eval):
    model, _, loaded = reference
    assert loaded.config == TINY and loaded.metadata == {"epoch": 9}
    frames = _frames()
    got, want = apply_eval(loaded.variables, frames), run(model, frames)
    for name in OUTPUTS:
        assert got[name].dtype == jnp.float32
        assert _relative(got[name], want[name]) < TOLERANCE, name
    assert got["attention"].shape == (2, TINY.num_heads, 16, 16)
    assert got["frame_features"].shape == (32, TINY.dim)


def test_a_clip_does_not_depend_on_the_others_in_evaluation(reference, apply_eval):
    variables = reference[2].variables
    frames = _frames(seed=2)
    before = np.asarray(apply_eval(variables, frames)["logits"])
    frames[0] = 1 - frames[0]
    after = np.asarray(apply_eval(variables, frames)["logits"])
    assert np.array_equal(after[1], before[1]) and _relative(after[0], before[0]) > 1e-3


def _torch_train_step(model: torch.nn.Module, frames: np.ndarray, labels: np.ndarray):
    model.train()
    model.zero_grad()
    logits = model(channels_first(frames))[0]
    loss = F.cross_entropy(logits, torch.from_numpy(labels).long())
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
    stats = {name: b.numpy().copy() for name, b in model.named_buffers() if name.endswith(("_mean", "_var"))}
    return float(loss.detach()), grads, stats


@pytest.mark.slow  # compiling the gradient takes 15-50 s on a loaded 2-core CPU
def test_one_training_step_matches_the_reference(reference):
    model, _, loaded = reference
    model = randomise(from_config(TINY), seed=1)  # a fresh copy: the step changes its statistics
    frames, labels = _frames(seed=3), np.array([1, 4])
    variables = loaded.variables

    def loss_fn(params):
        out, updates = LSTPNet(TINY).apply({"params": params, "batch_stats": variables["batch_stats"]}, frames,
                                           train=True, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()
        return ce, updates["batch_stats"]

    (loss, new_stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    want_loss, want_grads, want_stats = _torch_train_step(model, frames, labels)
    assert abs(float(loss) - want_loss) <= 1e-5 * abs(want_loss)
    got = flax_to_torch({"params": grads, "batch_stats": new_stats}, TINY)
    assert set(want_grads) <= set(got)
    # A conv bias right before a BatchNorm in training has gradient 0 (the batch mean removes it): both
    # sides give rounding noise, small next to the conv's kernel gradient.
    before_bn = {name for name in want_grads if re.search(r"ir_back\..*\.(conv[12]|downsample\.0)\.bias$", name)}
    assert len(before_bn) == 19
    for name in before_bn:
        kernel = np.abs(want_grads[name[:-4] + "weight"]).max()
        assert max(np.abs(got[name]).max(), np.abs(want_grads[name]).max()) < 1e-4 * kernel, name
    worst = max(_relative(got[name], want) for name, want in want_grads.items() if name not in before_bn)
    assert worst < TOLERANCE, worst
    assert len(want_stats) == 40
    for name, want in want_stats.items():
        assert _relative(got[name], want) < 1e-5, name
    # The step really used batch statistics: the running ones moved.
    assert _relative(got["s_former.ir_back.bn1.running_var"],
                     loaded.variables["batch_stats"]["backbone"]["stem_bn"]["var"]) > 1e-3


def test_the_released_size_by_shapes_only():
    shapes = variable_shapes(LSTPNetConfig())
    assert count_params(shapes["params"]) == 24_619_686
    assert len(jax.tree.leaves(shapes["params"])) == 158 and len(jax.tree.leaves(shapes["batch_stats"])) == 40
    out = jax.eval_shape(lambda v, x: LSTPNet(LSTPNetConfig()).apply(v, x, train=False), shapes,
                         jax.ShapeDtypeStruct((2, 16, 224, 224, 3), jnp.float32))
    assert {k: v.shape for k, v in out.items()} == {"logits": (2, 7), "features": (2, 512),
                                                    "frame_features": (32, 512), "attention": (2, 8, 16, 16)}
    lstformer = shapes["params"]["lstformer"]
    assert set(lstformer) == {"shared_tc", "shared_norm", "layer_0", "layer_1"}  # one shared conv + norm


def test_tce_sizes_follow_the_table_and_the_reference():
    table = {64: (8, 3), 128: (16, 5), 256: (32, 5), 512: (64, 5)}
    assert {c: tce_sizes(c) for c in table} == table
    for c in (3, 8, 24, 100, 1000, 2048, 4096):
        assert tce_sizes(c) == (reduced_width(c), eca_kernel(c)), c


def test_config_round_trip_and_errors():
    config = LSTPNetConfig.tiny(bn_axis_name="batch")
    assert LSTPNetConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["widths"] == [8, 16, 16, 32]
    with pytest.raises(ValueError, match="unknown LSTPNetConfig field"):
        LSTPNetConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="widths must be 4 positive integers"):
        LSTPNetConfig(widths=(64, 128, 256))
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        LSTPNetConfig(num_heads=0)
    with pytest.raises(ValueError, match="bn_momentum"):
        LSTPNetConfig(bn_momentum=1.5)
    with pytest.raises(ValueError, match="channels last"):
        LSTPNet(TINY).init(jax.random.key(0), jnp.zeros((1, 16, 32, 32)), train=False)


def _check_uniform(leaf, bound: float, name: str) -> None:
    top = float(np.abs(np.asarray(leaf)).max())
    assert top <= bound and (leaf.size < 40 or top > 0.8 * bound), (name, top, bound)


def test_initialisation_is_pytorchs_default():
    variables = init_variables(TINY, seed=3)
    flat = traverse_util.flatten_dict(variables, sep="/")
    assert {k: v.shape for k, v in flat.items()} == {
        k: v.shape for k, v in traverse_util.flatten_dict(variable_shapes(TINY), sep="/").items()}
    for path, leaf in flat.items():
        parent, name = path.rsplit("/", 1)
        kernel = flat.get(parent + "/kernel")
        if kernel is not None:  # fan_in = in/groups x taps (3 for the depthwise conv)
            _check_uniform(leaf, 1 / math.sqrt(np.prod(kernel.shape[:-1])), path)
        else:
            assert np.all(leaf == (1.0 if name in ("scale", "var") else 0.0)), path
    assert flat["params/lstformer/layer_0/dwconv/kernel"].shape == (3, 1, TINY.mlp_dim)
    # The Flax modules' own initialisers draw from the same distributions.
    tce = TCE(16).init(jax.random.key(0), jnp.zeros((16, 2, 2, 64)))["params"]
    r, k = tce_sizes(64)
    _check_uniform(tce["chan_in"]["kernel"], 1 / math.sqrt(k), "chan_in")
    _check_uniform(tce["chan_in"]["bias"], 1 / math.sqrt(k), "chan_in bias")
    _check_uniform(tce["time"]["kernel"], 1 / math.sqrt(3 * 64), "time")
    _check_uniform(tce["chan_out"]["kernel"], 1 / math.sqrt(r * k), "chan_out")


@pytest.mark.slow  # compiles a training step
def test_the_speed_benchmark_runs_and_checks_parity_first():
    from pthnet_jax.benchmarks.lstpnet import run

    result = run(LSTPNetConfig.tiny(num_frames=4), batch=1, size=16, repeats=1)
    assert result["logits_max_rel_diff"] < TOLERANCE
    for name in ("jax", "torch"):
        assert result[f"{name}_train_clips_per_s"] > 0 and result[f"{name}_eval_clips_per_s"] > 0


class _CrossEntropyTask:
    """The family's loss as the generic step sees it (the real TASK is helper lstpdata's)."""

    terms, mutable = ("total", "ce"), ("batch_stats",)

    def loss(self, model, variables, batch, rng):
        out, updates = model.apply(variables, batch["frames"], train=True, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["labels"])
        return {"total": ce, "ce": ce}, out["logits"], updates


@pytest.mark.slow  # compiles the pmapped training step
def test_the_generic_step_on_four_devices_is_dataparallel(reference):
    """One clip per device: each device's BatchNorm sees its own frames (PyTorch DataParallel), the
    gradient is the mean over the 4 clips, the running statistics the mean of the devices' (pmean)."""
    from pthnet_jax import parallel, steps

    assert jax.local_device_count() == 4
    loaded = reference[2]
    capture = optax.GradientTransformation(  # keeps the gradient as its state, moves nothing
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))
    state = steps.state_from_variables(loaded.variables, capture)
    frames, labels = _frames(batch=4, seed=7), np.array([0, 3, 1, 4], np.int32)
    batch = {"frames": frames, "labels": labels, "valid": np.ones(4, bool)}
    step = steps.pmapped(steps.train_step, task=_CrossEntropyTask(), model=LSTPNet(TINY), optimizer=capture,
                         seed=0, sync="pmean")
    new, metrics = step(parallel.replicate(state), parallel.split_for_devices(batch))
    new = parallel.unreplicate(new)
    got = flax_to_torch({"params": new.opt_state, "batch_stats": new.model_state["batch_stats"]}, TINY)
    grads, stats = {}, {}
    for clip in range(4):  # DataParallel: one replica per device, each on its own clip
        replica = randomise(from_config(TINY), seed=1)
        loss, replica_grads, replica_stats = _torch_train_step(replica, frames[clip:clip + 1], labels[clip:clip + 1])
        for name, value in replica_grads.items():
            grads[name] = grads.get(name, 0) + value / 4
        for name, value in replica_stats.items():
            stats[name] = stats.get(name, 0) + value / 4
    before_bn = {name for name in grads if re.search(r"ir_back\..*\.(conv[12]|downsample\.0)\.bias$", name)}
    worst = max(_relative(got[name], want) for name, want in grads.items() if name not in before_bn)
    assert worst < TOLERANCE, worst
    for name, want in stats.items():
        assert _relative(got[name], want) < 1e-5, name
    assert int(parallel.unreplicate(metrics)["count"]) == 4
