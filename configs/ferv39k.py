"""published FERv39k command (20 epochs, milestones 5/10/15, gamma 0.1); the original script's recipe otherwise."""
from pthnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.benchmark = "FERv39k"
    config.train.epochs = 20
    config.optim.milestones = (5, 10, 15)
    config.optim.gamma = 0.1
    return config
