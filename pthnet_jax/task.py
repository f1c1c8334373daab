"""What the generic harness asks of a model family, and where each family lives.

The trainer, the checkpoints, the evaluation and the commands never name a family: they call the
`Task` of `config.family` (or of a checkpoint's `"family"`), found by `get_task(name)` in
`FAMILIES`, a plain dict of name -> module path imported on first use. A family module exports
`TASK` (an object with the attributes and methods below) and may export, for `pthnet convert`,
`detect(keys)` (True when a PyTorch state dict's keys are this family's), `import_file(path)` and
`export_file(src_dir, dst)`. A test or a plugin adds a family by adding an entry to `FAMILIES`
(`monkeypatch.setitem(task.FAMILIES, "name", "module.path")`: see `tests/seam_family.py`).

A family writes code for one run on one device's share of a batch: the generic step (`steps.py`)
owns the valid-row weights, the global count, the sums over devices, accuracy from the logits, the
skip of padded steps and the combination of mutable collections (`model_state`) over devices.
"""
from __future__ import annotations

import importlib
from typing import Any, Hashable, Iterator, Protocol

FAMILIES: dict[str, str] = {
    "pthnet": "pthnet_jax.families.pthnet",
    "lstpnet": "pthnet_jax.families.lstpnet",
    "htnet": "pthnet_jax.families.htnet",
}
DEFAULT_FAMILY = "pthnet"  # what a config, workdir or checkpoint without a family field holds
STATE_SYNCS = ("pmean", "first")  # how the devices' mutable collections are combined after a step
DEFAULT_METRICS = ("UAR", "WAR", "weighted_f1")


class Task(Protocol):
    """One model family. Every method is pure apart from `open`, `store` and `stream` (host side)."""

    family: str  # the name in FAMILIES; written into every checkpoint's info JSON
    display_name: str  # for messages: "PTH-Net"
    terms: tuple[str, ...]  # per-row loss terms `loss` returns, "total" first; summed over valid rows
    mutable: tuple[str, ...]  # Flax collections updated in training (e.g. ("batch_stats",)); () = none
    state_sync: str  # default for config.train.model_state_sync: "pmean" or "first" (see STATE_SYNCS)
    metrics: tuple[str, ...]  # reported per split and selectable by config.train.select_metric
    fusion: Any  # None, or a module with evaluate_fused(task, checkpoint, data_dir, ...) (evaluation.evaluate)

    # ---- model --------------------------------------------------------------------------------
    def model_config(self, model_section: dict, num_classes: int | None) -> Any:
        """The frozen model config from `config.model` (num_classes 0 = the data's); ValueError."""
    def model_config_problems(self, model_section: dict) -> list[str]:
        """Every problem of `config.model`, each naming its key (config_check)."""
    def config_from_dict(self, values: dict) -> Any:
        """A checkpoint's `model_config` JSON -> the model config (ValueError/TypeError when bad)."""
    def model(self, model_config: Any, dtype: Any = None) -> Any:  # a flax.linen.Module
        ...
    def init(self, model: Any, key: Any) -> dict:
        """All variables: {"params": ..., plus every collection in `mutable`}."""
    def abstract_variables(self, model_config: Any) -> dict:
        """Shapes and dtypes of `init`'s variables (a restore target), computing nothing."""
    def describe(self, model_config: Any) -> str:
        """One line for `pthnet convert` and logs."""

    # ---- data ---------------------------------------------------------------------------------
    def open(self, data_dir: str, split: str) -> Any:
        """A split on the host: num_clips, num_classes, class_names, labels, clip_ids, dataset_info,
        cache (a dict). FileNotFoundError / KeyError / ValueError naming the path when it cannot."""
    def dataset_dir(self, data_dir: str) -> Any:
        """The dataset's directory (a Path) whose `metadata.json` says what it is (benchmark, fold,
        class names...); FileNotFoundError naming `data_dir` when there is none."""
    def check_fits(self, model_config: Any, split: Any) -> None:
        """ValueError when the model cannot take this data (class count, input width...)."""
    def input_options(self, model_config: Any, data_section: Any = None) -> Hashable:
        """The static options of `sample`/`stream` (hashable): e.g. window counts and noise."""
    def choose_mode(self, split: Any, mode: str) -> str:
        """"resident" (a device store sampled by `sample`) or "streaming" (`stream`)."""
    def store(self, split: Any, train: bool) -> Any:
        """The split's arrays replicated on the local devices (pmap layout), for `sample`."""
    def sample(self, store: Any, indices: Any, valid: Any, *, seed: Any, epoch: Any, train: bool,
               options: Hashable) -> dict:
        """Jittable batch of rows `indices` of `store`: a dict with at least "labels", "valid", "index".
        Random choices from (seed, epoch, clip) only; `seed` and `epoch` may be traced."""
    def stream(self, split: Any, *, train: bool, global_batch: int, seed: int, epoch: int,
               options: Hashable, num_devices: int, clip_subset: Any, shuffle: bool,
               start_step: int = 0, stop_step: int | None = None) -> Iterator[dict]:
        """Host batches of one epoch in the (devices, per_device, ...) layout, the same as `sample`'s."""

    # ---- one device's share of one run's batch (inside pmap) ------------------------------------
    def loss(self, model: Any, variables: dict, batch: dict, rng: Any) -> tuple[dict, Any, dict]:
        """(per-row terms {name: (B,)} named by `terms`, logits (B, C) for accuracy, the updated
        mutable collections ({} when `mutable` is empty))."""
    def predict(self, model: Any, variables: dict, batch: dict) -> Any:
        """Evaluation logits (B, C)."""


class UnknownFamily(ValueError):
    """A family name that is not in FAMILIES."""


def family_of(config: Any) -> str:
    """`config.family`, or the default for configs written before families existed."""
    try:
        return str(config.get("family", DEFAULT_FAMILY) or DEFAULT_FAMILY)
    except AttributeError:
        return str(getattr(config, "family", DEFAULT_FAMILY) or DEFAULT_FAMILY)


def get_task(name: str | None = None) -> Task:
    """The `TASK` of family `name` (None: the default), importing its module on first use."""
    name = DEFAULT_FAMILY if name is None else name
    if name not in FAMILIES:
        raise UnknownFamily(f"unknown model family {name!r}; known families: {', '.join(sorted(FAMILIES))}")
    module = importlib.import_module(FAMILIES[name])
    task = getattr(module, "TASK", None)
    if task is None:
        raise UnknownFamily(f"model family {name!r} ({FAMILIES[name]}) is not available yet: its module "
                            "defines no TASK")
    return task


def family_module(name: str) -> Any:
    """The module of family `name` (for optional exports such as `detect`)."""
    get_task(name)
    return importlib.import_module(FAMILIES[name])


def state_sync(task: Task, config: Any = None) -> str:
    """How a run combines the devices' mutable collections: config.train.model_state_sync, else the
    family's default."""
    chosen = ""
    if config is not None:
        try:
            chosen = config.train.get("model_state_sync", "") or ""
        except AttributeError:
            chosen = ""
    chosen = chosen or getattr(task, "state_sync", "pmean")
    if chosen not in STATE_SYNCS:
        raise ValueError(f"config.train.model_state_sync must be one of {STATE_SYNCS} (or '' for the "
                         f"family's default), got {chosen!r}")
    return chosen


def check_num_classes(model_config: Any, split: Any) -> None:
    """The check every family's `check_fits` starts with: the model's classes are the dataset's."""
    if split.num_classes != model_config.num_classes:
        raise ValueError(f"the dataset has {split.num_classes} classes "
                         f"({split.dataset_info.get('benchmark')}) but config.model.num_classes is "
                         f"{model_config.num_classes}; set --config.model.num_classes={split.num_classes} "
                         "or 0 (take it from the dataset)")
