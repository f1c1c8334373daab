"""A tiny HTNet for tests and the CPU demo: every part of the model (3 hierarchies), seconds per run."""
from pthnet_jax.configs.htnet_composite import htnet_config


def get_config():
    config = htnet_config()
    config.model.dim = 12
    config.model.block_repeats = (1, 1, 1)
    config.model.mlp_mult = 2
    config.optim.lr = 1e-3
    config.train.epochs = 3
    config.train.global_batch = 8
    config.train.steps_per_dispatch = 4
    config.train.checkpoint_every = 2  # epochs 2 and 3 (the last)
    config.eval.batch_size = 16
    return config
