"""After the pickle: check the object graph (views, cycles, depth), read each storage member only up
to the extent its views need, and rebuild the result with tensor views replaced by numpy arrays.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pthnet_jax.convert.errors import CheckpointLimitError, CheckpointReadError, show
from pthnet_jax.convert.pickle_tokens import _ArrayHolder, _DtypeHolder, _Global, _StorageRef, _TensorRef
from pthnet_jax.convert.read_limits import Placeholder, ReadLimits
from pthnet_jax.convert.torch_zip import _Archive


# --- after the pickle: check the object graph, read the storages, rebuild -------------------------

def _collect(root: Any, limits: ReadLimits) -> list[_TensorRef]:
    """Every tensor view in the result; refuses cycles, too deep nesting, unfinished arrays."""
    tensors: list[_TensorRef] = []
    done: set[int] = set()
    active: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > limits.max_depth:
            raise CheckpointLimitError(None, f"the data is nested more than {limits.max_depth} levels deep")
        if isinstance(obj, (dict, list, tuple, set, frozenset, Placeholder)):
            ident = id(obj)
            if ident in done:
                return
            if ident in active:
                raise CheckpointReadError(None, "the data contains a reference cycle")
            active.add(ident)
            if isinstance(obj, dict):
                children: Any = obj.values()
            elif isinstance(obj, Placeholder):
                children = (obj.args, obj.state)
            else:
                children = obj
            for child in children:
                visit(child, depth + 1)
            active.discard(ident)
            done.add(ident)
        elif isinstance(obj, _TensorRef):
            if id(obj) not in done:
                done.add(id(obj))
                tensors.append(obj)
        elif isinstance(obj, _StorageRef):
            raise CheckpointReadError(None, "a bare storage outside a tensor is not supported")
        elif isinstance(obj, _ArrayHolder) and obj.array is None:
            raise CheckpointReadError(None, "a numpy array without its data (no BUILD): refusing to "
                                      "hand out uninitialised memory")

    visit(root, 0)
    return tensors


def _rebuild(root: Any, arrays: dict[int, np.ndarray]) -> Any:
    """The result with tensor views replaced by arrays; shared objects stay shared (by id)."""
    made: dict[int, Any] = {}

    def convert(obj: Any) -> Any:
        if isinstance(obj, _TensorRef):
            return arrays[id(obj)]
        if isinstance(obj, _ArrayHolder):
            return obj.array
        if isinstance(obj, _DtypeHolder):
            return obj.dtype
        if isinstance(obj, _Global):
            return f"<global {obj.path}>"
        if not isinstance(obj, (dict, list, tuple, Placeholder)):
            return obj
        ident = id(obj)
        if ident in made:
            return made[ident]
        if isinstance(obj, dict):
            new: Any = type(obj)()
            made[ident] = new
            for key, value in obj.items():
                new[key] = convert(value)
        elif isinstance(obj, list):
            new = []
            made[ident] = new
            new.extend(convert(v) for v in obj)
        elif isinstance(obj, tuple):
            new = tuple(convert(v) for v in obj)
            made[ident] = new
        else:
            new = Placeholder(obj.class_path)
            made[ident] = new
            new.args = tuple(convert(v) for v in obj.args)
            new.state = convert(obj.state)
        return new

    return convert(root)


def _contiguous_strides(size: tuple) -> tuple:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _is_contiguous(size: tuple, stride: tuple) -> bool:
    return all(n == 1 or s == c for n, s, c in zip(size, stride, _contiguous_strides(size)))


def _read_tensors(archive: _Archive, tensors: list[_TensorRef], byteorder: str,
                  limits: ReadLimits) -> dict[int, np.ndarray]:
    # Views by storage; identical views share one array.
    by_storage: dict[str, list[_TensorRef]] = {}
    for ref in tensors:
        by_storage.setdefault(ref.storage.key, []).append(ref)
    plans = []
    total = 0
    for key, refs in by_storage.items():
        storage = refs[0].storage
        need = max(ref.extent for ref in refs)
        name = f"{archive.top}/data/{key}"
        info = archive.info(name, "storage")
        need_bytes = need * storage.dtype.itemsize
        if info.file_size < need_bytes:
            raise CheckpointReadError(None, f"storage '{show(name)}' has {info.file_size} bytes, its tensors "
                                      f"need {need_bytes}")
        total += need_bytes
        plans.append((storage, refs, need, info))
    if total > limits.max_storage_bytes:
        raise CheckpointLimitError(None, f"the tensors need {total} bytes of storage, more than the limit "
                                   f"{limits.max_storage_bytes}")
    copy_budget = total + limits.copy_slack_bytes
    arrays: dict[int, np.ndarray] = {}
    for storage, refs, need, info in plans:
        raw_dtype = np.dtype(np.uint8) if storage.dtype == np.bool_ else storage.dtype
        data = np.empty(need, dtype=raw_dtype)
        archive.read_into(info, data)
        if byteorder == "big" and raw_dtype.itemsize > 1:
            data.byteswap(inplace=True)
        if storage.dtype == np.bool_:
            data = data != 0
        views: dict[tuple, np.ndarray] = {}
        distinct = {(r.offset, r.size, r.stride) for r in refs}
        for ref in refs:
            signature = (ref.offset, ref.size, ref.stride)
            if signature not in views:
                if len(distinct) == 1 and ref.offset == 0 and ref.numel == need and \
                        _is_contiguous(ref.size, ref.stride):
                    views[signature] = data.reshape(ref.size)  # the storage array itself, no copy
                else:
                    copy_budget -= ref.numel * data.dtype.itemsize
                    if copy_budget < 0:
                        raise CheckpointLimitError(
                            None, "tensor views of shared storages add up to more bytes than the storages "
                            f"read plus {limits.copy_slack_bytes} (stride-0 or overlapping views?)")
                    if _is_contiguous(ref.size, ref.stride):
                        views[signature] = data[ref.offset:ref.offset + ref.numel].reshape(ref.size).copy()
                    elif ref.numel == 0:
                        views[signature] = np.zeros(ref.size, dtype=data.dtype)
                    else:  # offset + sum((n-1)*s) < need was checked: every element is inside `data`
                        itemsize = data.dtype.itemsize
                        view = np.lib.stride_tricks.as_strided(
                            data[ref.offset:], shape=ref.size, strides=tuple(s * itemsize for s in ref.stride),
                            writeable=False)
                        views[signature] = np.array(view, order="C")
            arrays[id(ref)] = views[signature]
    return arrays
