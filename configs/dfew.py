""" DFEW, one fold (--config.data.data_dir per fold; scripts/run_folds.py runs all 5); the original script's recipe otherwise."""
from pthnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.benchmark = "DFEW"
    return config
