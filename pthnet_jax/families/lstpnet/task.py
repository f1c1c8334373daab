"""LSTPNet as a family of the shared harness: the model of `model.py` on clips of `clip_data.py`.

Inputs are 16 face frames per clip (8 segments x 2 consecutive frames), decoded, sampled and resized
on the host by a grain reader (`clip_pipeline.py`) and sent to the devices as uint8; the model sees
pixel / 255. The loss is cross-entropy; BatchNorm's running statistics are the model state.

Split names select the original's short-clip filter explicitly: `"train"` is every imported clip,
`"train>=16"` only those with at least 16 frames (the original drops the others from both lists).
Evaluation defaults to the whole test list; opening a split says how many clips the filter would drop.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator
from pthnet_jax import task as task_lib

DISPLAY_NAME = "LSTPNet"
_SPLIT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+?)\s*(>=\s*(?P<min>\d+))?$")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The static options of the clip reader."""

    image_size: int = 224  # the model config's (frames resized to image_size x image_size)
    flip: bool = True  # the training flip (one decision per clip, p = 0.5)
    num_threads: int = 4  # grain decoding threads per process


def parse_split(text: str) -> tuple[str, int]:
    """`"test"` -> ("test", 0); `"train>=16"` -> ("train", 16)."""
    match = _SPLIT.match(str(text).strip())
    if not match:
        raise KeyError(f"split {text!r}: expected a split name, optionally with a frame filter "
                       "(e.g. 'train' or 'train>=16')")
    return match["name"], int(match["min"] or 0)


def _first_process() -> bool:
    import jax

    return jax.process_index() == 0


def open_split(data_dir, split: str):
    """The clips of `split` (see parse_split), with a note of the short clips it keeps or drops."""
    from pthnet_jax.families.lstpnet.clip_data import open_clip_split
    from pthnet_jax.families.lstpnet.clips import MIN_FRAMES

    name, min_frames = parse_split(split)
    opened = open_clip_split(data_dir, name)
    short = opened.short_clip_count(MIN_FRAMES)
    if min_frames:
        view = opened.filtered(min_frames)
        note = f"split {split!r}: {view.num_clips} of {opened.num_clips} clips (filter >= {min_frames} frames)"
    else:
        view = opened
        note = (f"split {name!r}: all {opened.num_clips} clips; {short} have fewer than {MIN_FRAMES} frames "
                f"(the original's filter would drop them: split '{name}>={MIN_FRAMES}')")
    view.dataset_info = {**view.dataset_info, "split_filter": min_frames, "short_clips": short,
                         "listed_clips": opened.num_clips}
    view.cache["note"] = note
    if _first_process():  # the trainer and `pthnet evaluate` show it with their own output
        print(f"LSTPNet {note}", flush=True)
    return view


class LstpnetTask:
    family = "lstpnet"
    display_name = DISPLAY_NAME
    terms = ("total", "ce")
    mutable: tuple[str, ...] = ("batch_stats",)
    # The original trains under nn.DataParallel: each GPU normalises its own chunk and only the
    # master replica's running statistics persist. config.train.model_state_sync="pmean" averages
    # the devices' statistics instead (cross-device).
    state_sync = "first"
    metrics = ("UAR", "WAR", "weighted_f1")
    fusion = None

    # ---- model --------------------------------------------------------------------------------
    def model_config(self, model_section: dict, num_classes: int | None = None):
        from pthnet_jax.families.lstpnet.run_config import LstpnetRunConfig

        fields = dict(model_section)
        if not fields.get("num_classes") and num_classes:
            fields["num_classes"] = num_classes
        return LstpnetRunConfig.from_dict(fields)

    def model_config_problems(self, model_section: dict) -> list[str]:
        fields = dict(model_section)
        if fields.get("num_classes") == 0:  # 0: the dataset's class count, filled in later
            fields["num_classes"] = 1
        try:
            self.model_config(fields)
        except (TypeError, ValueError) as err:
            return [f"config.model: {err}"]
        return []

    def config_from_dict(self, values: dict):
        from pthnet_jax.families.lstpnet.run_config import LstpnetRunConfig

        return LstpnetRunConfig.from_dict(values)

    def model(self, model_config, dtype: Any = None):
        import jax.numpy as jnp

        from pthnet_jax.families.lstpnet.model import LSTPNet

        return LSTPNet(model_config, dtype=jnp.float32 if dtype is None else dtype)

    def init(self, model, key) -> dict:
        """model.init_variables' numpy draws (compiling Flax's init takes minutes on a CPU), seeded by
        `key`'s bits; a host callback, so it also runs where the trainer traces it under jit."""
        import jax
        import numpy as np

        from pthnet_jax.families.lstpnet.model import init_variables, variable_shapes

        config = model.config
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)

        def draw(bits):
            return init_variables(config, seed=[int(b) for b in np.asarray(bits).reshape(-1)])

        return dict(jax.pure_callback(draw, variable_shapes(config), key))

    def abstract_variables(self, model_config) -> dict:
        from pthnet_jax.families.lstpnet.model import variable_shapes

        return dict(variable_shapes(model_config))

    def describe(self, config) -> str:
        return (f"widths={tuple(config.widths)} depth={config.depth} heads={config.num_heads}x{config.head_dim} "
                f"mlp_dim={config.mlp_dim} num_classes={config.num_classes} frames={config.num_frames}x"
                f"{getattr(config, 'image_size', 224)}^2")

    # ---- data ---------------------------------------------------------------------------------
    def open(self, data_dir, split: str):
        return open_split(data_dir, split)

    def dataset_dir(self, data_dir):
        from pthnet_jax.data.builder import find_dataset_dir

        return find_dataset_dir(data_dir)

    def check_fits(self, model_config, split) -> None:
        from pthnet_jax.families.lstpnet.clips import DURATION, NUM_SEGMENTS

        task_lib.check_num_classes(model_config, split)
        if model_config.num_frames != NUM_SEGMENTS * DURATION:
            raise ValueError(f"config.model.num_frames is {model_config.num_frames} but the clip reader "
                             f"gives {NUM_SEGMENTS * DURATION} frames per clip ({NUM_SEGMENTS} segments x {DURATION})")

    def input_options(self, model_config, data_section: Any = None) -> Inputs:
        get = (lambda key, default: default) if data_section is None else data_section.get
        return Inputs(image_size=int(getattr(model_config, "image_size", 224)), flip=bool(get("flip", True)),
                      num_threads=int(get("num_threads", 4)))

    def choose_mode(self, split, mode: str) -> str:
        if mode not in ("auto", "streaming"):
            raise ValueError(f"LSTPNet reads clips streaming (frames are decoded on the host); "
                             f"config.data.mode must be 'auto' or 'streaming', got {mode!r}")
        return "streaming"

    def store(self, split, train: bool):
        return None

    def sample(self, store, indices, valid, *, seed, epoch, train: bool, options: Inputs) -> dict:
        raise NotImplementedError("LSTPNet has no device-resident store: its batches come from stream()")

    def stream(self, split, *, train: bool, global_batch: int, seed: int, epoch: int, options: Inputs,
               num_devices: int, clip_subset, shuffle: bool, start_step: int = 0,
               stop_step: int | None = None) -> Iterator[dict]:
        from pthnet_jax.families.lstpnet.clip_pipeline import iterate_clip_batches

        for batch in iterate_clip_batches(split, train=train, global_batch=global_batch, seed=seed, epoch=epoch,
                                          subset=clip_subset, shuffle=shuffle, start_step=start_step,
                                          stop_step=stop_step, size=options.image_size, flip=options.flip,
                                          num_devices=num_devices, num_threads=options.num_threads,
                                          pad_with_clips=train):
            batch["labels"] = batch.pop("label")
            yield batch

    # ---- one device's share of a batch ----------------------------------------------------------
    def loss(self, model, variables: dict, batch: dict, rng) -> tuple[dict, Any, dict]:
        import jax.numpy as jnp
        import optax

        del rng  # no dropout in LSTPNet
        frames = batch["frames"].astype(jnp.float32) / 255.0
        out, updates = model.apply(variables, frames, train=True, mutable=list(self.mutable))
        ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["labels"])
        return {"total": ce, "ce": ce}, out["logits"], dict(updates)

    def predict(self, model, variables: dict, batch: dict):
        import jax.numpy as jnp

        frames = batch["frames"].astype(jnp.float32) / 255.0
        return model.apply(variables, frames, train=False)["logits"]


TASK = LstpnetTask()
