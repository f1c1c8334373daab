"""What reading one `.pth` file may cost (`ReadLimits`), and the reader's inert stand-in for objects
of untrusted classes (`Placeholder`) with the bounded way to make read values plain (`to_plain`).

Shared by the pickle machine, the tensor rebuild and the zip reader; `torch_pickle` re-exports the
public names.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pthnet_jax.convert.errors import CheckpointLimitError


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """Upper bounds on what reading one file may cost. The defaults admit checkpoints of many GB
    (the 2 GB VideoMAE V2 ViT-g file reads with room to spare) while a crafted file of a few KB can
    make the reader do only a few MB of work. Raise one with `dataclasses.replace(DEFAULT_LIMITS, ...)`.
    """

    max_file_bytes: int = 256 << 30     # the archive itself
    max_members: int = 200_000          # zip entries
    max_pickle_bytes: int = 256 << 20   # the data.pkl member
    max_opcodes: int = 4_000_000        # ~1 us each: a few seconds at most
    max_memo: int = 2_000_000
    max_stack: int = 2_000_000          # objects on the stack plus open marks
    max_items: int = 10_000_000         # elements stored in containers, all together
    max_container: int = 2_000_000      # elements of one container
    max_depth: int = 64                 # nesting of containers in the result
    max_object_bytes: int = 512 << 20   # strings/bytes/arrays the pickle itself builds, all together
    max_int_bits: int = 256             # integers the pickle holds
    max_tensors: int = 1_000_000
    max_ndim: int = 32
    max_storage_bytes: int = 128 << 30  # tensor bytes read from storage members, all together
    copy_slack_bytes: int = 64 << 20    # tensor copies allowed beyond the storage bytes read
    max_plain_nodes: int = 200_000      # values in the metadata made plain (to_plain)


DEFAULT_LIMITS = ReadLimits()
# Any size, stride, offset, element count or product of non-zero sizes beyond this is nonsense (2**48
# elements is 1 PiB of bytes); the bound keeps every byte count numpy computes far from int64 overflow.
_DIM_LIMIT = 1 << 48


class Placeholder:
    """Stand-in for an object of a class the reader does not trust (e.g. `__main__.RecorderMeter`)."""

    __slots__ = ("class_path", "args", "state")

    def __init__(self, class_path: str, args: tuple = (), state: Any = None):
        self.class_path = class_path
        self.args = args
        self.state = state

    def __repr__(self) -> str:
        return f"Placeholder({self.class_path})"

    def summary(self, limits: ReadLimits = DEFAULT_LIMITS) -> dict[str, Any]:
        """The values it held, as JSON-friendly metadata."""
        return to_plain(self, limits=limits)


class _Budget:
    def __init__(self, limit: int):
        self.left = limit


def to_plain(value: Any, max_items: int = 10_000, limits: ReadLimits = DEFAULT_LIMITS,
             _budget: _Budget | None = None, _depth: int = 0) -> Any:
    """A read value as JSON-friendly data (small numeric arrays -> lists, larger ones -> a summary).

    Bounded: counts every value it writes out, shared objects once per appearance, so a small DAG of
    shared containers cannot expand into an exponential tree ("billion laughs"); past
    `limits.max_plain_nodes` values, or deeper than `limits.max_depth`, it raises `CheckpointLimitError`.
    """
    budget = _budget if _budget is not None else _Budget(limits.max_plain_nodes)
    budget.left -= 1
    if budget.left < 0 or _depth > limits.max_depth:
        raise CheckpointLimitError(None, "metadata too large, too repetitive or too deeply nested to make "
                                   f"plain (limits: {limits.max_plain_nodes} values, depth "
                                   f"{limits.max_depth})")
    recurse = lambda v: to_plain(v, max_items, limits, budget, _depth + 1)  # noqa: E731
    if isinstance(value, (dict, list, tuple, set, frozenset)) and len(value) > budget.left:
        raise CheckpointLimitError(None, "metadata too large or too repetitive to make plain "
                                   f"(limit: {limits.max_plain_nodes} values)")
    if isinstance(value, np.ndarray):
        if value.size <= max_items and value.dtype.kind in "biuf":
            budget.left -= value.size
            if budget.left < 0:
                raise CheckpointLimitError(None, "metadata too large or too repetitive to make plain "
                                           f"(limit: {limits.max_plain_nodes} values)")
            if value.dtype.kind == "f":
                return value.astype(np.float64).tolist()
            return value.astype(np.int64).tolist()
        return {"array_shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        item = value.item()
        return item if isinstance(item, (bool, int, float)) else str(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): recurse(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [recurse(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [recurse(v) for v in sorted(value, key=repr)]
    if isinstance(value, Placeholder):
        return {"class": value.class_path, "state": recurse(value.state)}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if isinstance(value, complex):
        return [value.real, value.imag]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(type(value).__name__)
