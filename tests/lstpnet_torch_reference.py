"""The PyTorch LSTPNet the parity tests compare against, and helpers to give it random weights.

The model itself is `pthnet_jax.benchmarks.torch_lstpnet` (one copy for the tests and the speed
baseline), written from `docs/lstpnet-reference.md` independently of the Flax code, with the
original's parameter names: its `state_dict()` is an original-format checkpoint.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pthnet_jax.benchmarks.torch_lstpnet import TorchLSTPNet, eca_kernel, from_config, reduced_width

__all__ = ["TorchLSTPNet", "channels_first", "eca_kernel", "from_config", "randomise", "reduced_width", "run"]


def randomise(model: torch.nn.Module, seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    """Random values for every parameter and BatchNorm statistic (norm scales near 1, biases and
    running means non-zero, running variances in [0.5, 1.5]) so that a wrong mapping shows."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape):
        return torch.randn(shape, generator=generator)

    with torch.no_grad():
        for name, param in model.named_parameters():  # each shared tensor once
            is_norm = isinstance(_owner(model, name), (torch.nn.LayerNorm, torch.nn.BatchNorm2d))
            if is_norm and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * normal(param.shape))
            elif param.ndim > 1:
                param.copy_(scale / math.sqrt(math.prod(param.shape[1:])) * normal(param.shape))
            else:
                param.copy_(0.1 * normal(param.shape))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * normal(buffer.shape))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
            elif name.endswith("num_batches_tracked"):
                buffer.fill_(7)
    return model


def _owner(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0])


def channels_first(frames: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) numpy -> the original's (B, T, 3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3).contiguous()


def run(model: torch.nn.Module, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Evaluation outputs of the reference as numpy, named as the Flax model's."""
    with torch.no_grad():
        logits, features, frame_features, attention = model.eval()(channels_first(frames))
    return {"logits": logits.numpy(), "features": features.numpy(), "frame_features": frame_features.numpy(),
            "attention": attention.numpy()}
