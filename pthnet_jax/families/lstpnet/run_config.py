"""The model config a run trains and a checkpoint stores: LSTPNet's sizes plus the frame size.

The frames' size is not in the weights (the released model takes any H, W) but a model trained on
32 x 32 frames must be evaluated on 32 x 32 frames, so it travels with the model config into every
checkpoint; a converted original checkpoint (no such field) gets the original's 224.
"""
from __future__ import annotations

import dataclasses

from pthnet_jax.families.lstpnet.clips import IMAGE_SIZE
from pthnet_jax.families.lstpnet.model import LSTPNetConfig

MIN_IMAGE_SIZE = 8


@dataclasses.dataclass(frozen=True)
class LstpnetRunConfig(LSTPNetConfig):
    image_size: int = IMAGE_SIZE  # frames are resized to image_size x image_size (Pillow bilinear)

    def __post_init__(self):
        super().__post_init__()
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {size!r}")

    @classmethod
    def of(cls, config: LSTPNetConfig) -> "LstpnetRunConfig":
        """A plain LSTPNetConfig (e.g. a converter's) with the original's frame size."""
        if isinstance(config, cls):
            return config
        return cls(**dataclasses.asdict(config))
