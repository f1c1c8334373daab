"""A tiny LSTPNet for tests and the CPU demo: every part of the model, small frames, seconds per epoch."""
from pthnet_jax.configs.lstpnet_dfew import lstpnet_config


def get_config():
    config = lstpnet_config("DFEW")
    config.model.widths = (8, 16, 16, 32)
    config.model.num_heads = 2
    config.model.head_dim = 8
    config.model.mlp_dim = 48
    config.model.image_size = 32
    config.data.train_split = "train"
    config.data.num_threads = 2
    config.optim.milestones = ()
    config.train.epochs = 6
    config.train.global_batch = 8
    config.eval.batch_size = 16
    return config
