"""LSTPNet on AFEW (its validation set as the test split; frames are every file of a clip folder)."""
from pthnet_jax.configs.lstpnet_dfew import lstpnet_config


def get_config():
    return lstpnet_config("AFEW")
