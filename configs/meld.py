"""MELD; the original script's recipe otherwise."""
from pthnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.benchmark = "MELD"
    return config
