"""Shared bits of the training tests: one tiny synthetic dataset, configs, random inputs and parameters."""
import numpy as np

from pthnet_jax.configs import tiny
from pthnet_jax.data.importer import import_features
from pthnet_jax.data.synth import synthesize

DIM = 16
# The training tests exercise the harness (resume, faults, many runs, processes), not the model: they
# train tiny's SMOKE_ARCH (branch_1's drop path keeps the per-step RNG in), which compiles in under half
# the time (tests/test_model.py and tests/test_parity.py cover every part of the model).
FAST_ARCH = tiny.SMOKE_ARCH
FAST_ARCH_FLAG = f"--config.model.arch={FAST_ARCH}"  # one argument (no shell)


def make_dataset(base, clips=40, test_clips=13):
    root = synthesize(base / "root", "FERv39k", clips=clips, test_clips=test_clips, feature_dim=DIM,
                      reverse=True, quiet=True, signal=3.0)
    forward = import_features("FERv39k", root, base / "data", feature_dim=DIM, quiet=True)
    backward = import_features("FERv39k", root, base / "data_rv", feature_dim=DIM, reverse=True, quiet=True)
    return forward, backward


def tiny_config(data_dir, **overrides):
    config = tiny.get_config()
    config.model.arch = FAST_ARCH
    config.data.data_dir = str(data_dir)
    config.update_from_flattened_dict(overrides)
    return config


def random_batch(config, batch, seed, valid=None):
    """A global batch in the model's input format, generated independently of the pipeline."""
    rng = np.random.default_rng(seed)
    features, masks = {}, {}
    for level, length in {"L": 4, "M": 8, "H": 16}.items():
        counts = rng.integers(1, length + 1, batch)
        masks[level] = np.arange(length)[None] < counts[:, None]
        features[level] = (rng.normal(size=(batch, length, config.model.n_in)) * masks[level][..., None]
                           ).astype(np.float32)
    return {"features": features, "masks": masks,
            "labels": rng.integers(0, config.model.num_classes or 7, batch).astype(np.int32),
            "valid": np.ones(batch, bool) if valid is None else valid}


def random_params(model_config, seed=0):
    """Standard-normal values in every parameter of `model_config`'s PTH-Net: nothing to compile."""
    import jax

    from pthnet_jax.models.pthnet import abstract_variables

    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(leaf.dtype),
                        abstract_variables(model_config)["params"])
