"""PTH-Net as a family of the shared harness: `TASK` calls the PTH-Net modules where they are
(`models/pthnet.py`, `losses.py`, `data/`, `inference.py`), so every number is the one they give.

Inputs are VideoMAE features per pyramid level (`pthnet import-features`); the loss is the
hierarchy loss CE(H) + KL(L||H) + KL(M||H); evaluation uses the H level; forward and backward
models fuse (`fusion`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import jax
from pthnet_jax import task as task_lib

DISPLAY_NAME = "PTH-Net"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The static options of PTH-Net's sampling: windows per clip at level H, training noise."""

    max_len: int = 16
    noise_std: float = 0.0005


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PthnetTask:
    family = "pthnet"
    display_name = DISPLAY_NAME
    terms = ("total", "ce", "kl_L", "kl_M")
    mutable: tuple[str, ...] = ()
    state_sync = "pmean"
    metrics = ("UAR", "WAR", "weighted_f1")

    # ---- model --------------------------------------------------------------------------------
    def model_config(self, model_section: dict, num_classes: int | None = None):
        from pthnet_jax.models.pthnet import ModelConfig

        fields = dict(model_section)
        if not fields.get("num_classes") and num_classes:
            fields["num_classes"] = num_classes
        return ModelConfig.from_dict(fields)

    def model_config_problems(self, model_section: dict) -> list[str]:
        from pthnet_jax.models.pthnet import ModelConfig

        fields = dict(model_section)
        if fields.get("num_classes") == 0:  # 0: the dataset's class count, filled in later
            fields["num_classes"] = 1
        problems = []
        for name in ("n_in", "n_embd", "mlp_dim", "max_len", "num_heads", "num_classes"):
            value = fields.get(name, 1)
            if not _is_int(value) or value < 1:
                problems.append(f"config.model.{name} must be an integer >= 1"
                                f"{' (0 = the dataset class count)' if name == 'num_classes' else ''}, got {value!r}")
        for name, length in (("arch", 4), ("thr_size", 4), ("k", 3)):
            value = fields.get(name, ())
            if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != length or \
                    not all(_is_int(v) and v >= 0 for v in value):
                problems.append(f"config.model.{name} must be {length} non-negative integers, got {value!r}")
        value = fields.get("path_pdrop", 0.0)
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value) or not 0.0 <= value < 1.0:
            problems.append(f"config.model.path_pdrop must be a finite number in [0, 1), got {value!r}")
        if problems:
            return problems
        try:
            ModelConfig.from_dict(fields)
        except (TypeError, ValueError) as err:
            return [f"config.model: {err}"]
        return []

    def config_from_dict(self, values: dict):
        from pthnet_jax.models.pthnet import ModelConfig

        return ModelConfig.from_dict(values)

    def model(self, model_config, dtype: Any = None):
        from pthnet_jax.models.pthnet import PTHNet

        return PTHNet(model_config, dtype=dtype)

    def init(self, model, key) -> dict:
        from pthnet_jax.models.pthnet import init_variables

        return init_variables(model, key)

    def abstract_variables(self, model_config) -> dict:
        from pthnet_jax.models.pthnet import abstract_variables

        return abstract_variables(model_config)

    def describe(self, config) -> str:
        return (f"n_in={config.n_in} n_embd={config.n_embd} mlp_dim={config.mlp_dim} "
                f"num_classes={config.num_classes} arch={config.arch} thr_size={config.thr_size} k={config.k} "
                f"with_ln={config.with_ln} path_pdrop={config.path_pdrop}")

    # ---- data ---------------------------------------------------------------------------------
    def open(self, data_dir, split: str):
        from pthnet_jax.data import open_split

        return open_split(data_dir, split)

    def dataset_dir(self, data_dir):
        from pthnet_jax.data.builder import find_dataset_dir

        return find_dataset_dir(data_dir)

    def check_fits(self, model_config, split) -> None:
        task_lib.check_num_classes(model_config, split)
        if split.feature_dim != model_config.n_in:
            raise ValueError(f"the dataset's features have {split.feature_dim} channels but "
                             f"config.model.n_in is {model_config.n_in}; set --config.model.n_in={split.feature_dim}")

    def input_options(self, model_config, data_section: Any = None) -> Inputs:
        noise = 0.0005 if data_section is None else float(data_section.get("noise_std", 0.0005))
        return Inputs(max_len=int(model_config.max_len), noise_std=noise)

    def choose_mode(self, split, mode: str) -> str:
        from pthnet_jax.data import choose_mode

        return choose_mode(split, mode)

    def store(self, split, train: bool):
        from pthnet_jax.data import resident_features

        return resident_features(split) if train else resident_features(split, levels=("H",))

    def sample(self, store, indices, valid, *, seed, epoch, train: bool, options: Inputs) -> dict:
        from pthnet_jax.data.sampling import sample_batch

        if train:
            return sample_batch(store, indices, valid, seed=seed, epoch=epoch, train=True, max_len=options.max_len,
                                noise_std=options.noise_std)
        return sample_batch(store, indices, valid, seed=seed, epoch=epoch, train=False, max_len=options.max_len,
                            noise_std=0.0, levels=("H",))

    def stream(self, split, *, train: bool, global_batch: int, seed: int, epoch: int, options: Inputs,
               num_devices: int, clip_subset, shuffle: bool, start_step: int = 0,
               stop_step: int | None = None) -> Iterator[dict]:
        from pthnet_jax.data import iterate_batches

        return iterate_batches(split, train=train, global_batch=global_batch, seed=seed, epoch=epoch,
                               mode="streaming", max_len=options.max_len, noise_std=options.noise_std,
                               levels=None if train else ("H",), num_devices=num_devices,
                               clip_subset=clip_subset, shuffle=shuffle, start_step=start_step,
                               stop_step=stop_step)

    # ---- one device's share of a batch ----------------------------------------------------------
    def loss(self, model, variables: dict, batch: dict, rng) -> tuple[dict, jax.Array, dict]:
        from pthnet_jax.losses import per_clip_loss

        logits = model.apply(variables, batch["features"], batch["masks"], train=True, rngs={"dropout": rng})
        return per_clip_loss(logits, batch["labels"]), logits["H"], {}

    def predict(self, model, variables: dict, batch: dict) -> jax.Array:
        """The H level's logits (the original evaluates H only)."""
        features = {"H": batch["features"]["H"]}
        masks = {"H": batch["masks"]["H"]}
        return model.apply(variables, features, masks, train=False)["H"]

    @property
    def fusion(self):
        from pthnet_jax.families.pthnet import fusion

        return fusion


TASK = PthnetTask()


def import_file(path):
    """An original PTH-Net `.pth` / `.safetensors` -> `ImportedCheckpoint` (`pthnet convert`)."""
    from pthnet_jax.convert.io import import_pth

    return import_pth(path)


def export_file(src, dst) -> dict:
    """A PTH-Net checkpoint directory -> `.pth` or `.safetensors` (`pthnet convert`)."""
    from pthnet_jax.convert.io import export_checkpoint

    return export_checkpoint(src, dst)


def detect(keys) -> bool:
    """A PyTorch state dict's keys are PTH-Net's: its embedding, stem and classifier (any `module.`
    prefix of DataParallel removed)."""
    keys = {k.removeprefix("module.") for k in keys}
    return ("embd.0.conv.weight" in keys and "head.weight" in keys
            and any(k.startswith("stem.") for k in keys))
