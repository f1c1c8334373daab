"""HTNet's configuration: the original constructor's arguments, validated, and the derived sizes.

Reference §1.1: grid G = image / patch; stage s has width dim*2^s, heads heads*2^s of size
floor(width / heads), inner width heads*size (may be smaller than the width: 255 for 256 with 3
heads); blocks of L = G / 2^(stages-1) tokens per side, the same at every stage.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

INITS = ("torch", "flax")


@dataclasses.dataclass(frozen=True)
class HTNetConfig:
    """The original constructor's arguments (no `dim_head`: the original ignores it). Defaults: released.

    `init`: "torch" gives PyTorch's default initialisation (uniform +-1/sqrt(fan_in) for weights and
    biases, standard normal positional scalars), what the original trains from; "flax" Flax's
    defaults (LeCun normal kernels, zero biases).
    """

    image_size: int = 28
    patch_size: int = 7
    num_classes: int = 3
    dim: int = 256
    heads: int = 3
    num_hierarchies: int = 3
    block_repeats: tuple[int, ...] | int = (2, 2, 10)
    mlp_mult: int = 4
    channels: int = 3
    dropout: float = 0.0
    init: str = "torch"

    def __post_init__(self):
        repeats = self.block_repeats
        if isinstance(repeats, (int, np.integer)) and not isinstance(repeats, bool):
            repeats = (int(repeats),) * max(int(self.num_hierarchies), 0) if isinstance(
                self.num_hierarchies, (int, np.integer)) else (int(repeats),)
        elif isinstance(repeats, (list, tuple)):
            repeats = tuple(repeats)
        object.__setattr__(self, "block_repeats", repeats)
        problems = _problems(self)
        if problems:
            raise ValueError("HTNetConfig: " + "; ".join(problems))

    # --- derived sizes (reference §1.1) ---
    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def block_side(self) -> int:
        """L: tokens per side of a block, the same at every stage."""
        return self.grid // 2 ** (self.num_hierarchies - 1)

    @property
    def seq_len(self) -> int:
        return self.block_side ** 2

    def width(self, stage: int) -> int:
        return self.dim * 2 ** stage

    def num_heads(self, stage: int) -> int:
        return self.heads * 2 ** stage

    def head_dim(self, stage: int) -> int:
        return self.width(stage) // self.num_heads(stage)

    def inner(self, stage: int) -> int:
        return self.num_heads(stage) * self.head_dim(stage)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "block_repeats": list(self.block_repeats)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "HTNetConfig":
        values = dict(values)
        if "dim_head" in values:
            raise ValueError("HTNetConfig: 'dim_head' is not a field: the original ignores it (the head size "
                             "is floor(width / heads)); remove it")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown HTNetConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)


def _problems(cfg: HTNetConfig) -> list[str]:
    ints = ("image_size", "patch_size", "num_classes", "dim", "heads", "num_hierarchies", "mlp_mult", "channels")
    bad = [name for name in ints if isinstance(getattr(cfg, name), bool)
           or not isinstance(getattr(cfg, name), (int, np.integer)) or getattr(cfg, name) < 1]
    if bad:
        return [f"{', '.join(bad)} must be positive integers"]
    problems = []
    repeats = cfg.block_repeats
    if (not isinstance(repeats, tuple) or len(repeats) != cfg.num_hierarchies
            or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in repeats)):
        problems.append(f"block_repeats={repeats!r} must be a positive int or {cfg.num_hierarchies} positive ints "
                        "(one per stage)")
    if cfg.image_size % cfg.patch_size:
        problems.append(f"image_size={cfg.image_size} is not divisible by patch_size={cfg.patch_size}")
    elif cfg.num_hierarchies > 30 or cfg.grid % 2 ** (cfg.num_hierarchies - 1):
        problems.append(f"the {cfg.grid}x{cfg.grid} patch grid cannot be halved {cfg.num_hierarchies - 1} times "
                        f"(num_hierarchies={cfg.num_hierarchies}): the grid must be divisible by "
                        f"2^(num_hierarchies-1)")
    if cfg.dim < cfg.heads:
        problems.append(f"dim={cfg.dim} is smaller than heads={cfg.heads} (head size floor(dim/heads) would be 0)")
    if not isinstance(cfg.dropout, (int, float)) or not 0.0 <= float(cfg.dropout) < 1.0:
        problems.append(f"dropout={cfg.dropout!r} must be in [0, 1)")
    if cfg.init not in INITS:
        problems.append(f"init={cfg.init!r} must be one of {INITS}")
    return problems


__all__ = ["INITS", "HTNetConfig"]
