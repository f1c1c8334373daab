"""HTNet on the composite micro-expression benchmark (SMIC + CASME II + SAMM, 3 classes), as released.

Leave-one-subject-out over one imported dataset (`pthnet import-htnet`), one run per subject:
`pthnet loso --config htnet_composite --data DIR --workdir W --parallel K`. The recipe is the
original's (htnet-reference section 5): Adam lr 5e-5 constant, betas (0.9, 0.999), eps 1e-8, no
weight decay, batch 256 keeping the last partial batch, 800 epochs, cross-entropy, no augmentation,
no shuffling (batches in label-then-file-name order: `train.shuffle = False` over the split's list
order), the released model (dim 256, 3 heads, 3 hierarchies, blocks (2, 2, 10), PyTorch's init).
Every epoch is evaluated on the held-out subject and its predictions kept (predictions.npz), so the
epoch selection (last, a fixed epoch, best_on_test) is chosen when the runs are pooled.
"""
import ml_collections

from pthnet_jax.configs import default

HTNET_MODEL = dict(image_size=28, patch_size=7, num_classes=3, dim=256, heads=3, num_hierarchies=3,
                   block_repeats=(2, 2, 10), mlp_mult=4, channels=3, dropout=0.0, init="torch")


def htnet_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.family = "htnet"
    config.benchmark = "HTNet composite"
    config.model = ml_collections.ConfigDict(dict(HTNET_MODEL))
    config.data = ml_collections.ConfigDict(dict(
        data_dir="",  # set with --data; the directory `pthnet import-htnet` wrote
        mode="resident", noise_std=0.0, train_split="samples", test_split="samples"))
    config.optim = ml_collections.ConfigDict(dict(
        name="adam", lr=5e-5, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0, weight_decay=0.0, milestones=(),
        gamma=1.0))
    config.train.epochs = 800
    config.train.global_batch = 256
    config.train.shuffle = False  # the original's fixed order (label, then file name)
    config.train.select_on = "test"  # the trainer's best/ checkpoint; the LOSO selection is loso's
    config.train.keep_checkpoints = 1
    config.train.checkpoint_every = 100  # resume points (1.7 GB each: params + Adam); the selection needs none
    config.train.save_best = False  # no best/ per improvement (the original writes one each time)
    config.train.eval_every = 1  # every epoch's held-out predictions are kept (selection afterwards)
    config.eval.batch_size = 256
    return config


def get_config():
    return htnet_config()
