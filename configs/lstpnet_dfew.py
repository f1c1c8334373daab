"""LSTPNet on DFEW, one fold (import each fold's lists with `pthnet import-clips --fold K` and train
`--data DIR_K` for K = 1..5; the paper reports the mean over the 5 folds).

The recipe is the base code's (Former-DFER; lstpnet-reference §9.1): SGD lr 0.01, momentum 0.9,
weight decay 1e-4, batch 32, 100 epochs, lr x0.1 every 40 epochs, cross-entropy, best test epoch.
Training uses the original's short-clip filter ("train>=16"); evaluation takes the whole test list
("test"; the log says how many clips the filter would drop, "test>=16" reproduces the paper's lists).
"""
import ml_collections

from pthnet_jax.configs import default

LSTPNET_MODEL = dict(num_classes=0,  # 0: the dataset's class count (from its metadata)
                     num_frames=16, widths=(64, 128, 256, 512), depth=2, num_heads=8, head_dim=64,
                     mlp_dim=4096, bn_momentum=0.9, bn_epsilon=1e-5, norm_eps=1e-5,
                     image_size=224)  # frames resized to image_size x image_size (kept in the checkpoint)


def lstpnet_config(benchmark: str) -> ml_collections.ConfigDict:
    """The shared LSTPNet recipe for `benchmark` (DFEW, FERv39k, AFEW)."""
    config = default.get_config()
    config.family = "lstpnet"
    config.benchmark = benchmark
    config.model = ml_collections.ConfigDict(dict(LSTPNET_MODEL))
    config.data = ml_collections.ConfigDict(dict(
        data_dir="",  # set with --data; the directory `pthnet import-clips` wrote
        mode="streaming",  # frames are decoded, sampled and resized on the host (grain)
        train_split="train>=16",  # the original drops clips under 16 frames; "train" keeps them
        test_split="test",  # the whole list; "test>=16" is the paper's filtered list
        flip=True, num_threads=4))
    config.optim = ml_collections.ConfigDict(dict(
        lr=0.01, momentum=0.9, weight_decay=1e-4, milestones=(40, 80), gamma=0.1))
    config.train.epochs = 100
    config.train.global_batch = 32
    config.train.select_on = "test"
    config.eval.batch_size = 32  # 16 frames of 224 x 224 per clip
    return config


def get_config():
    return lstpnet_config("DFEW")
