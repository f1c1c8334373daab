"""The built-in demo: synthetic FERv39k-like data, a narrower PTH-Net, a couple of minutes on 2 CPU cores."""
from pthnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.model.n_embd = 64
    config.model.mlp_dim = 96
    config.train.epochs = 6
    config.optim.lr = 0.02
    config.optim.milestones = (4,)
    config.optim.gamma = 0.1
    config.train.keep_checkpoints = 1
    return config
