"""The temporal feature pyramid's levels, shared by the model and the data pipeline.

Level L reads the features extracted with frame stride 16, M with stride 8 and H with stride 4; the
model sees `max_len / 4`, `max_len / 2` and `max_len` windows of them.
"""
from __future__ import annotations

LEVELS: tuple[str, ...] = ("L", "M", "H")


def level_lengths(max_len: int = 16) -> dict[str, int]:
    """Windows per clip that the model reads at each level."""
    return {"L": max_len // 4, "M": max_len // 2, "H": max_len}
