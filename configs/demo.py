"""The built-in demo: synthetic FERv39k-like data, a narrower PTH-Net, about two minutes on 2 CPU cores
(most of it compiling; an epoch of 1,200 clips takes a few seconds)."""
from pthnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.model.n_embd = 64
    config.model.mlp_dim = 96
    config.train.epochs = 12
    config.optim.lr = 0.02  # a narrower model and little data: a larger step than the recipe's 0.005
    config.optim.milestones = (8,)
    config.optim.gamma = 0.1
    config.train.keep_checkpoints = 1
    return config
