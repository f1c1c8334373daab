"""A tiny model for tests: every part of PTH-Net, seconds to train."""
from pthnet_jax.configs import default

# Shallower still, for runs that check the harness rather than the model (the training tests, the GPU
# report's --tiny, `pthnet bench --model tiny`): the embedding and one drop-path layer (branch_1), no
# stem or branch_2 layer. Its training step compiles in under half the time of arch (1, 1, 1, 1) on a
# CPU (10.7 s against 24.2 s on this project's 2-core machine).
SMOKE_ARCH = (1, 0, 1, 0)


def get_config():
    config = default.get_config()
    config.model.n_in = 16
    config.model.n_embd = 32
    config.model.mlp_dim = 48
    config.model.arch = (1, 1, 1, 1)  # one layer of each kind: every part, a quarter fewer to compile
    config.train.epochs = 2
    config.train.global_batch = 8
    config.train.steps_per_dispatch = 4
    config.optim.milestones = (1,)
    config.eval.batch_size = 16
    return config
