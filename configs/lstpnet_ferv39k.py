"""LSTPNet on FERv39k (train/test lists; the short-clip filter drops 813 of its 7847 test clips, so
the default evaluation on the whole list differs from the paper's filtered one: see lstpnet_dfew)."""
from pthnet_jax.configs.lstpnet_dfew import lstpnet_config


def get_config():
    return lstpnet_config("FERv39k")
