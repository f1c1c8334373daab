"""A test-only model family: a small MLP with BatchNorm on synthetic vectors.

It proves the family seam (`pthnet_jax.task`): it trains, checkpoints, resumes and evaluates through
the generic loop, with a mutable collection (`batch_stats`). Tests register it with
`monkeypatch.setitem(pthnet_jax.task.FAMILIES, FAMILY, "seam_family")` (see `register`).

A dataset is a directory with `metadata.json` (benchmark, class names) and `<split>.npz`
(`features` (N, D) float32, `labels` (N,) int32), written by `write_dataset`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FAMILY = "seam_mlp"
CLASSES = ["calm", "glad", "cross"]


def register(monkeypatch) -> None:
    from pthnet_jax import task

    monkeypatch.setitem(task.FAMILIES, FAMILY, __name__)


def write_dataset(directory: Path, num_inputs: int = 6, sizes=(("train", 22), ("test", 9)), seed: int = 0) -> Path:
    """Three separable classes of vectors (class means apart, unit noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), num_inputs)) * 3
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in sizes:
        labels = rng.integers(0, len(CLASSES), count).astype(np.int32)
        features = (centres[labels] + rng.normal(size=(count, num_inputs))).astype(np.float32)
        np.savez(directory / f"{split}.npz", features=features, labels=labels)
    (directory / "metadata.json").write_text(json.dumps({"benchmark": "SeamToy", "class_names": CLASSES}))
    return directory


def config(data_dir, **overrides):
    """The default config with this family's model section."""
    import ml_collections

    from pthnet_jax.configs import default

    cfg = default.get_config()
    cfg.family = FAMILY
    cfg.benchmark = "SeamToy"
    cfg.model = ml_collections.ConfigDict(dict(hidden=8, num_classes=0, dropout=0.1))
    cfg.data.data_dir = str(data_dir)
    cfg.optim.lr, cfg.optim.milestones = 0.1, (1,)
    cfg.train.update(epochs=2, global_batch=8, steps_per_dispatch=2)
    cfg.eval.batch_size = 8
    cfg.update_from_flattened_dict(overrides)
    return cfg


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    num_inputs: int = 6
    hidden: int = 8
    num_classes: int = 3
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MLP(nn.Module):
    config: MLPConfig
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(self.config.hidden, name="hidden")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x)
        x = nn.Dropout(self.config.dropout, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.config.num_classes, name="head")(x)


@dataclasses.dataclass
class VectorSplit:
    name: str
    dataset_dir: Path
    features: np.ndarray
    labels: np.ndarray
    class_names: list
    dataset_info: dict
    cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_clips(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def clip_ids(self) -> np.ndarray:
        return np.array([f"{self.name}/{i}" for i in range(self.num_clips)])


@dataclasses.dataclass(frozen=True)
class Inputs:
    noise_std: float = 0.1


class MLPTask:
    family = FAMILY
    display_name = "Seam MLP"
    terms = ("total", "ce")
    mutable = ("batch_stats",)
    state_sync = "first"
    metrics = ("UAR", "WAR")
    fusion = None

    def model_config(self, model_section: dict, num_classes: int | None = None) -> MLPConfig:
        fields = {**model_section}
        if not fields.get("num_classes") and num_classes:
            fields["num_classes"] = num_classes
        return MLPConfig(**fields)

    def model_config_problems(self, model_section: dict) -> list[str]:
        hidden = model_section.get("hidden", 1)
        return [] if isinstance(hidden, int) and hidden >= 1 else [f"config.model.hidden must be >= 1, got {hidden!r}"]

    def config_from_dict(self, values: dict) -> MLPConfig:
        return MLPConfig(**values)

    def model(self, model_config: MLPConfig, dtype: Any = None) -> MLP:
        return MLP(model_config, dtype)

    def init(self, model: MLP, key) -> dict:
        return dict(model.init({"params": key}, jnp.zeros((1, model.config.num_inputs)), train=False))

    def abstract_variables(self, model_config: MLPConfig) -> dict:
        return jax.eval_shape(lambda: self.init(self.model(model_config), jax.random.key(0)))

    def describe(self, model_config: MLPConfig) -> str:
        return f"MLP {model_config}"

    def open(self, data_dir, split: str) -> VectorSplit:
        directory = Path(data_dir)
        if not (directory / f"{split}.npz").is_file():
            raise FileNotFoundError(f"{directory}: no split {split!r}")
        meta = json.loads((directory / "metadata.json").read_text())
        with np.load(directory / f"{split}.npz") as arrays:
            return VectorSplit(split, directory, arrays["features"], arrays["labels"], meta["class_names"], meta)

    def dataset_dir(self, data_dir) -> Path:
        if not (Path(data_dir) / "metadata.json").is_file():
            raise FileNotFoundError(f"{data_dir}: not a dataset of the seam MLP family")
        return Path(data_dir)

    def check_fits(self, model_config: MLPConfig, split: VectorSplit) -> None:
        if split.features.shape[1] != model_config.num_inputs:
            raise ValueError(f"the vectors have {split.features.shape[1]} entries, the model takes "
                             f"{model_config.num_inputs}")

    def input_options(self, model_config: MLPConfig, data_section: Any = None) -> Inputs:
        return Inputs()

    def choose_mode(self, split: VectorSplit, mode: str) -> str:
        return "resident" if mode == "auto" else mode

    def store(self, split: VectorSplit, train: bool) -> dict:
        from pthnet_jax import parallel

        if "store" not in split.cache:
            split.cache["store"] = parallel.replicate({"features": split.features, "labels": split.labels})
        return split.cache["store"]

    def sample(self, store, indices, valid, *, seed, epoch, train: bool, options: Inputs) -> dict:
        indices = jnp.asarray(indices, jnp.int32)
        features = jnp.asarray(store["features"])[indices]
        if train:  # noise keyed by (seed, epoch, clip) only
            keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), c))(indices)
            features = features + options.noise_std * jax.vmap(lambda k: jax.random.normal(k, features.shape[1:]))(keys)
        labels = jnp.where(valid, jnp.asarray(store["labels"])[indices], 0)
        return {"features": features, "labels": labels, "valid": jnp.asarray(valid, bool), "index": indices}

    def stream(self, split: VectorSplit, *, train: bool, global_batch: int, seed: int, epoch: int,
               options: Inputs, num_devices: int, clip_subset, shuffle: bool, start_step: int = 0,
               stop_step: int | None = None) -> Iterator[dict]:
        from pthnet_jax.plan import batch_plan, epoch_order

        subset = np.arange(split.num_clips) if clip_subset is None else np.asarray(clip_subset)
        order = subset[epoch_order(len(subset), seed=seed, epoch=epoch, shuffle=shuffle)]
        indices, valid = batch_plan(order, global_batch=global_batch, process_index=jax.process_index(),
                                    process_count=jax.process_count())
        store = {"features": split.features, "labels": split.labels}
        for step_indices, step_valid in zip(indices[start_step:stop_step], valid[start_step:stop_step]):
            batch = jax.device_get(self.sample(store, step_indices, step_valid, seed=seed, epoch=epoch, train=train,
                                               options=options))
            yield jax.tree.map(lambda x: x.reshape(num_devices, -1, *x.shape[1:]), batch)

    def loss(self, model: MLP, variables: dict, batch: dict, rng) -> tuple[dict, jax.Array, dict]:
        logits, updates = model.apply(variables, batch["features"], train=True, mutable=["batch_stats"],
                                      rngs={"dropout": rng})
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["labels"][:, None], axis=1)[:, 0]
        return {"total": ce, "ce": ce}, logits, dict(updates)

    def predict(self, model: MLP, variables: dict, batch: dict) -> jax.Array:
        return model.apply(variables, batch["features"], train=False)


TASK = MLPTask()


def detect(keys) -> bool:
    return {"hidden.weight", "norm.running_mean", "head.weight"} <= set(keys)
