"""Property-based fuzzing of the .pth reader (the short CI budget; scripts/fuzz_reader.py is the long run).

Inputs are real files written by torch.save (and by the project's own writer), mutated by the same
functions the long script uses, driven by hypothesis so failures shrink: flipped bytes, truncation,
pickle opcodes deleted/duplicated/spliced in, integer arguments (storage sizes, offsets, sizes,
strides) replaced, storage members shortened or grown, zip members reordered/dropped/duplicated or
deflated, zip size fields changed. Each must load cleanly or raise the project's CheckpointError naming
the file (never another exception, never the reader's last-resort "unexpected" error), with bounded
memory (tracemalloc). The reader cannot segfault by construction: it never builds an array from a
pointer or buffer the file chooses (only np.empty / np.frombuffer of Python bytes with checked lengths
/ as_strided over its own arrays with checked bounds); the long script runs every input in a
subprocess under RLIMIT_AS anyway.
"""
import collections
import importlib.util
import io
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from pthnet_jax.convert import read_torch_file  # noqa: E402
from pthnet_jax.convert.torch_writer import write_torch_bytes  # noqa: E402

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_reader.py"
_spec = importlib.util.spec_from_file_location("fuzz_reader", _SCRIPT)
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

_SEEDS = fuzz.seed_files()
_TMP = Path(tempfile.mkdtemp(prefix="pthnet-reader-fuzz-"))
_MEMORY_BOUND = 160 << 20  # inputs are a few KB; copies of overlapping views are capped at 64 MiB
_FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _chooser(data):
    return lambda lo, hi: data.draw(st.integers(lo, hi))


def _check(data_bytes: bytes, name: str) -> str:
    path = _TMP / name
    path.write_bytes(data_bytes)
    tracemalloc.start()
    try:
        result = fuzz.check_file(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not result.startswith("BAD"), result
    assert peak < _MEMORY_BOUND, f"peak {peak} bytes"
    return result


def test_seeds_load():
    for name, data in _SEEDS.items():
        assert _check(data, f"seed-{name}.pth") == "ok"


@_FUZZ
@given(data=st.data(), seed=st.sampled_from(sorted(_SEEDS)))
def test_mutated_files_load_or_fail_cleanly(data, seed):
    _check(fuzz.mutated(_SEEDS[seed], _chooser(data)), "mutated.pth")


@_FUZZ
@given(data=st.data(), seed=st.sampled_from(sorted(_SEEDS)))
def test_pickle_surgery(data, seed):
    """Opcode splices and integer replacements only: the mutations that reach the stack machine."""
    choose = _chooser(data)
    mutated = fuzz._replace_member(_SEEDS[seed], "/data.pkl",
                                   lambda p: fuzz.mutate_pickle(fuzz.mutate_pickle(p, choose), choose))
    _check(mutated, "surgery.pth")


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(order=st.permutations(range(len(fuzz._members(_SEEDS["checkpoint"])))),
       deflate=st.booleans())
def test_reordered_or_deflated_members_load_the_same(order, deflate):
    members = fuzz._members(_SEEDS["checkpoint"])
    rebuilt = fuzz._zip([members[i] for i in order], deflate=deflate)
    expected = read_torch_file(_write(_SEEDS["checkpoint"], "original.pth"))
    got = read_torch_file(_write(rebuilt, "reordered.pth"))
    for key, value in expected["state_dict"].items():
        np.testing.assert_array_equal(got["state_dict"][key], value)
    assert got["epoch"] == expected["epoch"]


def _write(data: bytes, name: str) -> Path:
    path = _TMP / name
    path.write_bytes(data)
    return path


_DTYPES = [np.float32, np.float16, np.float64, np.int64, np.int32, np.int8, np.uint8, np.bool_]


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(shapes=st.lists(st.lists(st.integers(0, 5), max_size=4), min_size=1, max_size=5),
       dtypes=st.lists(st.sampled_from(_DTYPES), min_size=5, max_size=5), seed=st.integers(0, 2 ** 16))
def test_writer_round_trips_through_torch_and_the_reader(shapes, dtypes, seed):
    """The torch-free writer: torch.load(weights_only=True) and the reader give back the same arrays."""
    import torch

    rng = np.random.default_rng(seed)
    state = collections.OrderedDict(
        (f"t{i}", np.asarray(rng.normal(size=shape) * 100).astype(dtype)) for i, (shape, dtype) in enumerate(zip(shapes, dtypes)))
    buffer = io.BytesIO()
    write_torch_bytes(buffer, {"epoch": seed, "state_dict": state})
    path = _write(buffer.getvalue(), "written.pth")
    loaded = torch.load(path, weights_only=True)
    read = read_torch_file(path)
    assert loaded["epoch"] == read["epoch"] == seed
    for key, value in state.items():
        assert loaded["state_dict"][key].numpy().tobytes() == value.tobytes()
        assert read["state_dict"][key].dtype == value.dtype and read["state_dict"][key].shape == value.shape
        assert read["state_dict"][key].tobytes() == value.tobytes()
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None


def _view_file(numel: int, member_elems: int, offset: int, size: tuple, stride: tuple, shared: bool) -> bytes:
    """A .pth file with one hand-made tensor view (and optionally a second view of the same storage)."""
    import struct

    def global_(module, name):
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def text(value):
        return b"X" + struct.pack("<I", len(value.encode())) + value.encode()

    def integer(value):
        return b"J" + struct.pack("<i", value)

    def tensor(off, sz, st):
        pid = b"(" + text("storage") + global_("torch", "FloatStorage") + text("0") + text("cpu") + integer(numel) + b"tQ"
        return (global_("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + integer(off)
                + b"(" + b"".join(map(integer, sz)) + b"t(" + b"".join(map(integer, st)) + b"t"
                + b"\x89" + global_("collections", "OrderedDict") + b")Rt" + b"R")

    body = b"}(" + text("v") + tensor(offset, size, stride)
    if shared:
        body += text("whole") + tensor(0, (numel,), (1,))
    pickle_bytes = b"\x80\x02" + body + b"u."
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/data/0", np.arange(member_elems, dtype=np.float32).tobytes())
    return buffer.getvalue()


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(numel=st.integers(0, 40), extra=st.integers(-8, 4), offset=st.integers(-3, 45),
       size=st.lists(st.integers(-2, 7), max_size=4), stride_seed=st.lists(st.integers(-3, 12), min_size=4, max_size=4),
       shared=st.booleans())
def test_tensor_views_are_exactly_the_checked_ones(numel, extra, offset, size, stride_seed, shared):
    """Random offsets/sizes/strides/storage lengths: a view inside its storage loads with exactly the
    values index arithmetic gives; any other view is refused with the project's error."""
    from pthnet_jax.convert import CheckpointError

    size = tuple(size)
    stride = tuple(stride_seed[:len(size)])
    member_elems = max(numel + extra, 0)
    path = _write(_view_file(numel, member_elems, offset, size, stride, shared), "view.pth")
    count = int(np.prod(size)) if size else 1
    valid = offset >= 0 and all(n >= 0 for n in size) and all(s >= 0 for s in stride)
    extent = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if valid and count else 0
    valid = valid and extent <= numel and (extent <= member_elems) and (not shared or numel <= member_elems)
    try:
        loaded = read_torch_file(path)
    except CheckpointError as err:
        assert not err.unexpected and str(err).startswith(str(path)), str(err)
        assert not valid, str(err)
        return
    assert valid
    expected = np.zeros(size, np.float32)
    for index in np.ndindex(*size):
        expected[index] = offset + sum(i * s for i, s in zip(index, stride))
    np.testing.assert_array_equal(loaded["v"], expected)
    assert loaded["v"].flags.c_contiguous and loaded["v"].dtype == np.float32
