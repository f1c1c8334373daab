"""Multi-host data parallelism: two processes on localhost (jax.distributed, gloo CPU collectives),
two CPU devices each, take the same training steps as one process with four devices.

The file is also the worker: `python tests/test_multihost.py WORKDIR` runs one process of the pair
(its rank and the coordinator come from the PTHNET_* environment, as `pthnet train` reads them).
"""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from distributed_helpers import start_workers, wait_for_workers  # noqa: E402
from train_helpers import FAST_ARCH  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: runs whole programs

GLOBAL_BATCH = 16
NUM_STEPS = 2
# Step 2 is a partial last batch: 13 real clips, the padding falls on process 1's rows only.
VALID = [np.ones(GLOBAL_BATCH, bool), np.arange(GLOBAL_BATCH) < 13]


def _setup():
    """The tiny model's initial train state, the pmapped step and the global batches (no data files)."""
    import jax

    from pthnet_jax import steps
    from pthnet_jax.configs import tiny
    from pthnet_jax.models.pthnet import ModelConfig, PTHNet, init_variables
    from pthnet_jax.optim import make_optimizer

    # The tiny config, shallower still (compiling the step dominates this test): the training tests'
    # FAST_ARCH, whose one layer (branch_1) has drop path, so the per-device RNG is covered too.
    model_config = ModelConfig.from_dict({**tiny.get_config().model.to_dict(), "arch": FAST_ARCH, "num_classes": 7})
    model = PTHNet(model_config)
    optimizer = make_optimizer(lr=0.05, momentum=0.9, weight_decay=1e-4, milestones=(1,), gamma=0.1,
                               steps_per_epoch=1).transform  # the lr changes between the two steps
    state = steps.create_train_state(init_variables(model, jax.random.key(3))["params"], optimizer)
    step_fn = steps.pmapped(steps.train_step, donate_state=True, model=model, optimizer=optimizer, seed=5)
    rng = np.random.default_rng(11)
    batches = []
    for valid in VALID:
        features, masks = {}, {}
        for level, length in {"H": model_config.max_len}.items():  # one level: a third of the compile
            counts = rng.integers(1, length + 1, GLOBAL_BATCH)
            masks[level] = (np.arange(length)[None] < counts[:, None]) & valid[:, None]
            features[level] = rng.normal(size=(GLOBAL_BATCH, length, model_config.n_in)).astype(np.float32)
        labels = rng.integers(0, model_config.num_classes, GLOBAL_BATCH).astype(np.int32)
        batches.append({"features": features, "masks": masks, "labels": np.where(valid, labels, 0),
                        "valid": valid})
    return state, step_fn, batches


def _run_steps(process_index: int, process_count: int):
    """NUM_STEPS steps; this process feeds its contiguous share of every global batch (as batch_plan)."""
    import jax

    from pthnet_jax import parallel

    state, step_fn, batches = _setup()
    share = GLOBAL_BATCH // process_count
    replicated = parallel.replicate(state)
    history = []
    for batch in batches:
        local = jax.tree.map(lambda x: x[process_index * share:(process_index + 1) * share], batch)
        replicated, metrics = step_fn(replicated, parallel.shard(parallel.split_for_devices(local)))
        history.append(parallel.unreplicate(metrics))
    return parallel.unreplicate(replicated.params), history


def _flat(params) -> dict:
    import jax

    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _worker(out_dir: Path) -> None:
    from pthnet_jax import parallel

    assert parallel.maybe_initialize_distributed(), "the PTHNET_* environment is missing"
    import jax

    assert jax.process_count() == 2 and jax.local_device_count() == 2 and jax.device_count() == 4
    params, history = _run_steps(jax.process_index(), jax.process_count())
    if jax.process_index() == 0:
        metrics = {f"metrics/{i}/{k}": np.asarray(v) for i, step in enumerate(history) for k, v in step.items()}
        np.savez(out_dir / "process0.npz", **_flat(params), **metrics)
    jax.distributed.shutdown()


def test_two_processes_take_the_single_process_steps(tmp_path):
    import jax

    workers = start_workers(__file__, [str(tmp_path)], tmp_path, "worker")
    # The single-process reference (4 local devices from conftest) runs while the workers compile.
    assert jax.local_device_count() == 4
    reference_params, reference_history = _run_steps(0, 1)
    logs = wait_for_workers(workers, timeout=300)
    assert all(p.returncode == 0 for p, _ in workers), f"a worker failed:\n{logs}"

    result = np.load(tmp_path / "process0.npz")
    expected = _flat(reference_params)
    assert set(expected) <= set(result.files)
    for name, value in expected.items():
        np.testing.assert_allclose(result[name], value, rtol=2e-5, atol=1e-6, err_msg=name)
    for i, step in enumerate(reference_history):
        assert float(result[f"metrics/{i}/count"]) == float(VALID[i].sum())
        for key, value in step.items():
            np.testing.assert_allclose(result[f"metrics/{i}/{key}"], value, rtol=1e-5, err_msg=key)
    # The steps did something: the parameters moved away from their initial values.
    initial = _flat(_setup()[0].params)
    assert any(not np.allclose(initial[name], expected[name]) for name in expected)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
