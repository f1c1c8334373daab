"""CASME2, one leave-one-subject-out set (scripts/run_folds.py runs all 26); the original script's recipe otherwise."""
from pthnet_jax.configs import default


def get_config():
    config = default.get_config()
    config.benchmark = "CASME2"
    return config
