"""MAFW single label set (11 classes); compound: --config.model.num_classes=43; the original script's recipe otherwise."""
from pthnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.benchmark = "MAFW"
    config.model.num_classes = 11
    return config
