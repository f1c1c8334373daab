"""HTNet as a family of the shared harness: the model of `model.py` on the mosaics `import-htnet` wrote.

The data is tiny (442 samples of 28x28x3), so a split is resident: every mosaic as float32 (unscaled,
BGR, what the model takes) on the devices, and `sample` is a plain gather of the planned rows. The
dataset has one split ("samples"); `open` lists its samples in the original's batch order (label, then
file name), so a run with `config.train.shuffle = False` batches exactly as the original's loader
and a leave-one-subject-out run (a clip subset, kept in list order) too. The group of a sample is its
subject (`split.groups`). The loss is cross-entropy; nothing is mutable.

`keep_predictions` (called by the multi-run loop after each evaluation) appends the arg-max
predictions of the evaluated clips to WORKDIR/predictions.npz, so any epoch selection (last, a fixed
epoch, best on test) can be applied afterwards without a checkpoint per epoch.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from pthnet_jax import task as task_lib

DISPLAY_NAME = "HTNet"
PREDICTIONS = "predictions.npz"


@dataclasses.dataclass(eq=False)
class HTNetSplit:
    """The samples of an imported HTNet dataset, in batch order (label, then file name)."""

    name: str
    mosaics: np.ndarray  # (N, 28, 28, 3) float32
    labels: np.ndarray  # (N,) int32
    clip_ids: list[str]  # sample names
    groups: np.ndarray  # subject of each sample
    databases: np.ndarray
    class_names: tuple[str, ...]
    dataset_info: dict
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def num_clips(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def feature_bytes(self) -> int:
        return int(self.mosaics.nbytes)


def open_split(data_dir, split: str = "samples") -> HTNetSplit:
    from pthnet_jax.families.htnet.dataset import SPLIT, load
    from pthnet_jax.families.htnet.flow import CLASS_NAMES
    from pthnet_jax.families.htnet.protocol import epoch_order

    if split != SPLIT:
        raise KeyError(f"an HTNet dataset has one split {SPLIT!r} (LOSO takes subsets of it), got {split!r}")
    columns = load(data_dir)
    if not columns or "mosaic" not in columns:
        raise ValueError(f"{data_dir}: no HTNet samples (expected the dataset `pthnet import-htnet` writes)")
    names = [str(s) for s in columns["sample"]]
    order = epoch_order(np.arange(len(names)), columns["label"], names, mode="compat")
    info = {"benchmark": "HTNet composite (SMIC, CASME II, SAMM)", "variant": "mosaic", "split": split}
    return HTNetSplit(split, np.asarray(columns["mosaic"], np.float32)[order],
                      np.asarray(columns["label"], np.int32)[order], [names[i] for i in order],
                      np.asarray(columns["subject"])[order], np.asarray(columns["database"])[order],
                      tuple(CLASS_NAMES), info)


class HtnetTask:
    family = "htnet"
    display_name = DISPLAY_NAME
    terms = ("total", "ce")
    mutable: tuple[str, ...] = ()
    state_sync = "pmean"
    metrics = ("UAR", "WAR", "weighted_f1")  # UF1/UAR of the protocol: pooled over runs (loso.py)
    fusion = None

    # ---- model --------------------------------------------------------------------------------
    def model_config(self, model_section: dict, num_classes: int | None = None):
        from pthnet_jax.families.htnet.config import HTNetConfig

        fields = dict(model_section)
        if not fields.get("num_classes"):
            fields["num_classes"] = num_classes or 3
        if isinstance(fields.get("block_repeats"), list):
            fields["block_repeats"] = tuple(fields["block_repeats"])
        return HTNetConfig.from_dict(fields)

    def model_config_problems(self, model_section: dict) -> list[str]:
        try:
            self.model_config(model_section)
        except (TypeError, ValueError, KeyError) as err:
            return [f"config.model: {err}"]
        return []

    def config_from_dict(self, values: dict):
        return self.model_config(values)

    def model(self, model_config, dtype: Any = None):
        import jax.numpy as jnp

        from pthnet_jax.families.htnet.model import HTNet

        return HTNet(model_config, dtype=jnp.float32 if dtype is None else dtype)

    def init(self, model, key) -> dict:
        import jax.numpy as jnp

        cfg = model.config
        return dict(model.init(key, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)))

    def abstract_variables(self, model_config) -> dict:
        from pthnet_jax.families.htnet.model import param_shapes

        return dict(param_shapes(model_config))

    def describe(self, config) -> str:
        return (f"dim={config.dim} heads={config.heads} hierarchies={config.num_hierarchies} "
                f"blocks={config.block_repeats} mlp_mult={config.mlp_mult} patch={config.patch_size} "
                f"num_classes={config.num_classes} init={config.init}")

    # ---- data ---------------------------------------------------------------------------------
    def open(self, data_dir, split: str):
        return open_split(data_dir, split)

    def dataset_dir(self, data_dir):
        from pthnet_jax.data.builder import find_dataset_dir

        return find_dataset_dir(data_dir)

    def check_fits(self, model_config, split) -> None:
        task_lib.check_num_classes(model_config, split)
        shape = (model_config.image_size, model_config.image_size, model_config.channels)
        if tuple(split.mosaics.shape[1:]) != shape:
            raise ValueError(f"the dataset's mosaics are {split.mosaics.shape[1:]} but the model takes {shape}")

    def input_options(self, model_config, data_section: Any = None) -> tuple:
        return ()

    def choose_mode(self, split, mode: str) -> str:
        if mode not in ("auto", "resident"):
            raise ValueError(f"HTNet data is resident (a few MB); config.data.mode must be 'auto' or "
                             f"'resident', got {mode!r}")
        return "resident"

    def store(self, split, train: bool):
        from pthnet_jax import parallel

        if "resident" not in split.cache:
            split.cache["resident"] = parallel.replicate({"mosaics": split.mosaics, "labels": split.labels})
        return split.cache["resident"]

    def sample(self, store, indices, valid, *, seed, epoch, train: bool, options) -> dict:
        del seed, epoch, train, options  # no augmentation, no noise
        return {"images": store["mosaics"][indices], "labels": store["labels"][indices], "valid": valid,
                "index": indices}

    def stream(self, split, *, train: bool, global_batch: int, seed: int, epoch: int, options,
               num_devices: int, clip_subset, shuffle: bool, start_step: int = 0,
               stop_step: int | None = None) -> Iterator[dict]:
        raise NotImplementedError("HTNet data is resident: its batches come from sample()")

    # ---- one device's share of a batch ----------------------------------------------------------
    def loss(self, model, variables: dict, batch: dict, rng) -> tuple[dict, Any, dict]:
        import optax

        logits = model.apply(variables, batch["images"], deterministic=False, rngs={"dropout": rng})
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        return {"total": ce, "ce": ce}, logits, {}

    def predict(self, model, variables: dict, batch: dict):
        return model.apply(variables, batch["images"], deterministic=True)

    # ---- LOSO bookkeeping (the multi-run loop calls it after each evaluation) --------------------
    def keep_predictions(self, workdir, split_name: str, epoch: int, logits, ids) -> None:
        if split_name != "test":
            return
        keep_predictions(workdir, epoch, np.asarray(logits).argmax(-1), ids)


def keep_predictions(workdir, epoch: int, predictions: np.ndarray, ids) -> None:
    """Record epoch `epoch`'s predictions of clips `ids` in WORKDIR/predictions.npz (atomically; a
    resumed run overwrites the epochs it repeats)."""
    from pthnet_jax.fsutil import atomic_path

    path = Path(workdir) / PREDICTIONS
    epochs, table = read_predictions(path) if path.exists() else (np.zeros(0, np.int64), None)
    ids = np.arange(len(predictions)) if ids is None else np.asarray(ids)
    row = np.asarray(predictions, np.int16)[None]
    keep = epochs < epoch  # a repeated epoch (resume) replaces the later ones
    epochs = np.concatenate([epochs[keep], [epoch]]).astype(np.int64)
    table = row if table is None else np.concatenate([table[keep], row])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, epochs=epochs, predictions=table, ids=ids.astype(np.int64))


def read_predictions(path) -> tuple[np.ndarray, np.ndarray]:
    """(epochs (E,), predictions (E, n)) recorded by `keep_predictions`."""
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["epochs"], np.int64), np.asarray(data["predictions"], np.int64)


TASK = HtnetTask()
