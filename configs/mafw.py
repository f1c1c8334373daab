"""MAFW (single label set, 11 classes, or compound, 43: the dataset says which); the original script's recipe otherwise."""
from pthnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.benchmark = "MAFW"
    return config
