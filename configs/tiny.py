"""A tiny model for tests: every part of PTH-Net, seconds to train."""
from pthnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.model.n_in = 16
    config.model.n_embd = 32
    config.model.mlp_dim = 48
    config.model.arch = (1, 1, 1, 1)  # one layer of each kind: every part, a quarter fewer to compile
    config.train.epochs = 2
    config.train.global_batch = 8
    config.train.steps_per_dispatch = 4
    config.optim.milestones = (1,)
    config.eval.batch_size = 16
    return config
