"""Model families, registered by name.

`MODELS` maps a family name to its Flax module class and its frozen config dataclass. PTH-Net is
the classifier trained on features; a video backbone that turns frames into those features lands
here next to it.
"""
from __future__ import annotations

from pthnet_jax.models.pthnet import LEVELS, ModelConfig, PTHNet, count_params, init_variables
from pthnet_jax.models.videomae import VideoMAE, VideoMAEConfig

MODELS: dict[str, tuple[type, type]] = {
    "pthnet": (PTHNet, ModelConfig),
    "videomae": (VideoMAE, VideoMAEConfig),
}

__all__ = ["LEVELS", "MODELS", "ModelConfig", "PTHNet", "VideoMAE", "VideoMAEConfig", "count_params",
           "init_variables"]
