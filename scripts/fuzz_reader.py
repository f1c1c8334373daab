"""Fuzz the `.pth` reader with mutations of real files written by `torch.save`.

    python scripts/fuzz_reader.py --seconds 600 [--workers 1] [--memory-mb 1024] [--out DIR]

Each input is a seed file (torch.save of state dicts and of a checkpoint shaped like the original
training script's) with one or more mutations: flipped bytes, truncation, pickle opcodes deleted /
duplicated / spliced in (also runs of another seed's opcodes), integer arguments (storage sizes, offsets, sizes, strides, memo indices)
replaced, storage members shortened or grown, zip members reordered / dropped / duplicated, zip
header size fields changed; and files of hand-made tensor views (random storage types, sizes, offsets,
sizes and strides, storage member lengths). Every input runs in a worker process under `RLIMIT_AS` (default 1 GiB)
and a per-input time limit; the outcome must be a clean load or a `CheckpointError` naming the file
(and not the reader's last-resort "unexpected" error). Anything else (another exception, a signal, a
timeout, memory exhaustion) is a finding: the input is saved under --out and listed in the summary.

The mutation functions take a `choose(lo, hi)` callable, so the test suite drives the same code with
hypothesis (tests/test_reader_fuzz.py).
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pickletools
import random
import struct
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable

Choose = Callable[[int, int], int]

# Pickle fragments spliced into data.pkl: containers, marks, memo ops, calls, allowlisted and
# forbidden globals, odd integers, persistent ids, BUILD of odd things.
SNIPPETS = [
    b"(", b"t", b"R", b"b", b"0", b"1", b"2", b"e", b"u", b"s", b"a", b"l", b"d", b"Q", b"N", b"\x85",
    b"\x86", b"\x87", b"}", b"]", b")", b"\x88", b"\x89", b"\x8f", b"\x90", b"\x91", b"\x94", b"\x81",
    b"\x92", b"o", b"h\x00", b"h\x01", b"h\x7f", b"j\xff\xff\x00\x00", b"q\x00", b"q\x05", b"r\xff\xff\xff\x7f",
    b"K\x00", b"K\xff", b"M\xff\xff", b"J\xff\xff\xff\xff", b"J\x00\x00\x00\x80", b"\x8a\x08" + b"\xff" * 8,
    b"\x8a\x01\x80", b"G\x7f\xf8\x00\x00\x00\x00\x00\x00", b"X\x00\x00\x00\x00", b"X\xff\xff\xff\x0f",
    b"C\x04abcd", b"B\x00\x00\x00\x00", b"\x8c\x00", b"\x95\x00\x00\x00\x00\x00\x00\x00\x00",
    b"cnumpy\nndarray\n", b"cnumpy\ndtype\n", b"cnumpy.core.multiarray\n_reconstruct\n",
    b"cnumpy.core.multiarray\nscalar\n", b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch._utils\n_rebuild_parameter\n", b"ctorch\nFloatStorage\n", b"ctorch\nHalfStorage\n",
    b"ccollections\nOrderedDict\n", b"c_codecs\nencode\n", b"c__builtin__\nset\n", b"c__main__\nEvil\n",
    b"cos\nsystem\n", b"cbuiltins\ngetattr\n", b"\x82\x01", b"\x83\x01\x00", b"\x84\x01\x00\x00\x00",
    b"I01\n", b"I-1\n", b"L99999999999999999999L\n", b"F1e308\n", b"S'x'\n", b"Vx\n", b"Pfoo\n",
    b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x10tQ",
    b"\x97", b"\x98", b"\x80\x05", b"\x80\x09",
]
_INT_OPS = {"BININT1": ("<B", 1), "BININT2": ("<H", 2), "BININT": ("<i", 4)}
INTERESTING_INTS = [0, 1, 2, 3, 7, 63, 64, 255, 256, 65535, 1 << 20, (1 << 31) - 1, -1, -2, -(1 << 31),
                    1 << 30, 10 ** 9]


# --- seeds -----------------------------------------------------------------------------------------

def seed_files() -> dict[str, bytes]:
    """Small real files written by torch.save (needs torch) plus one written by the project's writer."""
    import numpy as np
    import torch

    from pthnet_jax.convert.torch_writer import write_torch_bytes

    class RecorderMeter:
        def __init__(self):
            self.total_epoch = 3
            self.epoch_losses = np.arange(6, dtype=np.float32).reshape(3, 2)
            self.best = np.float32(40.5)

    RecorderMeter.__module__ = "__main__"
    RecorderMeter.__qualname__ = "RecorderMeter"
    main = sys.modules["__main__"]
    had = hasattr(main, "RecorderMeter")
    old = getattr(main, "RecorderMeter", None)
    main.RecorderMeter = RecorderMeter
    seeds: dict[str, bytes] = {}
    try:
        torch.manual_seed(0)
        base = torch.randn(4, 6)
        plain = collections.OrderedDict([
            ("embd.0.conv.weight", torch.randn(8, 3, 3)), ("view_t", base.t()), ("view_slice", base[1:, ::2]),
            ("shared_a", base), ("shared_b", base), ("half", torch.randn(5).half()),
            ("bf16", torch.randn(3).bfloat16()), ("long", torch.arange(4)), ("bool", torch.tensor([True, False])),
            ("scalar", torch.tensor(2.5)), ("empty", torch.zeros(0, 3)),
        ])
        buffer = io.BytesIO()
        torch.save(plain, buffer)
        seeds["plain"] = buffer.getvalue()
        param = torch.nn.Parameter(torch.randn(3, 2))
        optimizer_state = {"state": {0: {"momentum_buffer": torch.randn(3, 2)}},
                           "param_groups": [{"lr": 0.005, "momentum": 0.9, "params": [0, 1]}]}
        checkpoint = {"epoch": 12, "state_dict": collections.OrderedDict(
            [("module.head.weight", torch.randn(5, 8)), ("module.head.bias", torch.zeros(5))]),
            "best_acc": torch.tensor(47.25), "optimizer": optimizer_state, "recorder": RecorderMeter(),
            "param": param, "extra": {"set": {1, 2}, "tuple": (1, 2.5, "x"), "bytes": b"ab", "none": None}}
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        seeds["checkpoint"] = buffer.getvalue()
        buffer = io.BytesIO()
        write_torch_bytes(buffer, {"epoch": 1, "state_dict": collections.OrderedDict(
            [("a", np.arange(6, dtype=np.float32).reshape(2, 3)), ("b", np.ones(3, np.float16))])})
        seeds["own_writer"] = buffer.getvalue()
    finally:
        if had:
            main.RecorderMeter = old
        else:
            del main.RecorderMeter
    return seeds


# --- zip surgery -----------------------------------------------------------------------------------

def _members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _zip(members: list[tuple[str, bytes]], deflate: bool = False) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # duplicate member names are one of the mutations
        warnings.simplefilter("ignore")
        return _write_zip(buffer, members, deflate)


def _write_zip(buffer: io.BytesIO, members: list[tuple[str, bytes]], deflate: bool) -> bytes:
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as archive:
        for name, payload in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            archive.writestr(info, payload)
    return buffer.getvalue()


def _replace_member(data: bytes, name_suffix: str, change: Callable[[bytes], bytes]) -> bytes:
    members = _members(data)
    out = [(name, change(payload) if name.endswith(name_suffix) else payload) for name, payload in members]
    return _zip(out)


# --- mutations -------------------------------------------------------------------------------------

def _pick(choose: Choose, items: list):
    return items[choose(0, len(items) - 1)]


def _random_int(choose: Choose) -> int:
    if choose(0, 1):
        return _pick(choose, INTERESTING_INTS)
    return choose(-(1 << 31), (1 << 31) - 1)


def _opcodes(pickle_bytes: bytes) -> list:
    """(opcode, arg, pos) of a pickle, as far as it parses."""
    ops = []
    try:
        for op in pickletools.genops(pickle_bytes):
            ops.append(op)
    except Exception:  # noqa: BLE001 - an already mutated pickle: keep the prefix that parsed
        pass
    return ops


def mutate_pickle(pickle_bytes: bytes, choose: Choose) -> bytes:
    ops = _opcodes(pickle_bytes)
    if not ops:
        return pickle_bytes + _pick(choose, SNIPPETS)
    positions = [pos for _, _, pos in ops] + [ops[-1][2] + 1 if len(ops) == 1 else len(pickle_bytes)]
    kind = choose(0, 4)
    i = choose(0, len(ops) - 1)
    start, end = positions[i], positions[i + 1]
    if kind == 0:  # delete an opcode
        return pickle_bytes[:start] + pickle_bytes[end:]
    if kind == 1:  # duplicate an opcode
        return pickle_bytes[:end] + pickle_bytes[start:end] + pickle_bytes[end:]
    if kind == 2:  # splice a fragment in before an opcode
        return pickle_bytes[:start] + _pick(choose, SNIPPETS) + pickle_bytes[start:]
    if kind == 3:  # replace an opcode by a fragment
        return pickle_bytes[:start] + _pick(choose, SNIPPETS) + pickle_bytes[end:]
    # change an integer argument: storage numel/offsets/sizes/strides, memo indices, epochs...
    ints = [(pos, nxt, op.name) for (op, _, pos), nxt in zip(ops, positions[1:]) if op.name in _INT_OPS]
    if not ints:
        return pickle_bytes
    pos, nxt, _name = _pick(choose, ints)
    value = _random_int(choose)
    if 0 <= value < 256:
        encoded = b"K" + struct.pack("<B", value)
    elif 0 <= value < 65536:
        encoded = b"M" + struct.pack("<H", value)
    else:
        encoded = b"J" + struct.pack("<i", value)
    return pickle_bytes[:pos] + encoded + pickle_bytes[nxt:]


_DONORS: list[bytes] = []  # pickles of the seeds, for cross-seed splices (filled by set_donors)


def set_donors(seeds: dict[str, bytes]) -> None:
    _DONORS[:] = [payload for data in seeds.values() for name, payload in _members(data)
                  if name.endswith("/data.pkl")]


def splice_from_donor(pickle_bytes: bytes, choose: Choose) -> bytes:
    """Insert a run of opcodes of another seed's pickle (real tensor calls, memo ops, marks)."""
    if not _DONORS:
        return mutate_pickle(pickle_bytes, choose)
    donor = _pick(choose, _DONORS)
    ops = _opcodes(donor)
    i = choose(0, len(ops) - 1)
    j = min(len(ops) - 1, i + choose(1, 40))
    piece = donor[ops[i][2]:ops[j][2]]
    target = _opcodes(pickle_bytes)
    at = target[choose(0, len(target) - 1)][2] if target else 0
    return pickle_bytes[:at] + piece + pickle_bytes[at:]


def crafted_view(choose: Choose) -> bytes:
    """A file with hand-made tensor views: random storage sizes, offsets, sizes, strides, dtypes."""
    def text(value: str) -> bytes:
        return b"X" + struct.pack("<I", len(value)) + value.encode()

    def integer(value: int) -> bytes:
        return b"J" + struct.pack("<i", value) if -(1 << 31) <= value < (1 << 31) else \
            b"\x8a\x08" + struct.pack("<q", max(min(value, (1 << 63) - 1), -(1 << 63)))

    kinds = ["FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "BoolStorage", "ByteStorage",
             "DoubleStorage", "ComplexFloatStorage"]
    sizes = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8, "BoolStorage": 1,
             "ByteStorage": 1, "DoubleStorage": 8, "ComplexFloatStorage": 8}
    members, body = [], b"}("
    for t in range(choose(1, 4)):
        key = str(choose(0, 2))
        kind = _pick(choose, kinds)
        numel = _pick(choose, [0, 1, 2, 7, 16, 64, choose(0, 100), _random_int(choose), 1 << 40])
        ndim = choose(0, 4)
        size = [_pick(choose, [0, 1, 2, 3, 5, choose(0, 20), _random_int(choose), 1 << 33]) for _ in range(ndim)]
        stride = [_pick(choose, [0, 1, 2, 4, choose(0, 20), _random_int(choose), 1 << 33]) for _ in range(ndim)]
        offset = _pick(choose, [0, 1, choose(0, 70), _random_int(choose)])
        pid = b"(" + text("storage") + b"ctorch\n" + kind.encode() + b"\n" + text(key) + text("cpu") + \
            integer(numel) + b"tQ"
        body += text(f"t{t}") + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + integer(offset) + b"(" + \
            b"".join(map(integer, size)) + b"t(" + b"".join(map(integer, stride)) + b"t\x89" + \
            b"ccollections\nOrderedDict\n)Rt" + b"R"
        length = max(0, min(numel if 0 <= numel < (1 << 20) else 64, 4096) * sizes[kind] + choose(-8, 8))
        members.append((f"archive/data/{key}", bytes(choose(0, 255) for _ in range(min(length, 64))) +
                        bytes(max(0, length - 64))))
    members.insert(0, ("archive/data.pkl", b"\x80\x02" + body + b"u."))
    unique = dict(members)
    return _zip(list(unique.items()))


def mutate(data: bytes, choose: Choose) -> bytes:
    """One random mutation of a .pth file's bytes (a byte flip when the structure is already broken)."""
    kind = choose(0, 9)
    try:
        return _mutate(data, choose, kind)
    except Exception:  # noqa: BLE001 - an earlier mutation broke the zip or the pickle
        return _mutate(data, choose, 0)


def _mutate(data: bytes, choose: Choose, kind: int) -> bytes:
    if kind == 0:  # flip bytes
        out = bytearray(data)
        for _ in range(choose(1, 8)):
            out[choose(0, len(out) - 1)] ^= choose(1, 255)
        return bytes(out)
    if kind == 1:  # truncate
        return data[:choose(0, len(data) - 1)]
    if kind in (2, 3, 4):  # pickle surgery (several kinds weigh more: it reaches the most code)
        return _replace_member(data, "/data.pkl", lambda p: mutate_pickle(p, choose))
    if kind == 9:  # a run of another seed's opcodes spliced in
        return _replace_member(data, "/data.pkl", lambda p: splice_from_donor(p, choose))
    members = _members(data)
    if kind == 5:  # reorder, drop or duplicate zip members
        action = choose(0, 2)
        j = choose(0, len(members) - 1)
        if action == 0:
            order = list(range(len(members)))
            for k in range(len(order) - 1, 0, -1):
                m = choose(0, k)
                order[k], order[m] = order[m], order[k]
            members = [members[k] for k in order]
        elif action == 1:
            members = members[:j] + members[j + 1:]
        else:
            members = members + [members[j]]
        return _zip(members)
    if kind == 6:  # shorten or grow a storage member
        storages = [k for k, (name, _) in enumerate(members) if "/data/" in name]
        if not storages:
            return data
        k = _pick(choose, storages)
        name, payload = members[k]
        cut = choose(0, len(payload) + 16)
        members[k] = (name, payload[:cut] if cut <= len(payload) else payload + bytes(cut - len(payload)))
        return _zip(members)
    if kind == 7:  # deflate the members (a re-zipped file), maybe with a mutated pickle too
        if choose(0, 1):
            members = [(n, mutate_pickle(p, choose) if n.endswith("/data.pkl") else p) for n, p in members]
        return _zip(members, deflate=True)
    # kind 8: change a size field of a central directory entry
    out = bytearray(data)
    entries = [i for i in range(len(out) - 4) if out[i:i + 4] == b"PK\x01\x02"]
    if not entries:
        return data
    entry = _pick(choose, entries)
    field = entry + _pick(choose, [20, 24, 42])  # compressed size, size, local header offset
    if field + 4 <= len(out):
        out[field:field + 4] = struct.pack("<I", choose(0, (1 << 32) - 1))
    return bytes(out)


def mutated(seed: bytes, choose: Choose, rounds: int | None = None) -> bytes:
    data = seed
    for _ in range(rounds if rounds is not None else choose(1, 3)):
        if len(data) < 2:
            break
        data = mutate(data, choose)
    return data


# --- checking one input ----------------------------------------------------------------------------

def check_file(path: str) -> str:
    """'ok', 'error' (a proper CheckpointError naming the file), or 'BAD: ...' for a finding."""
    from pthnet_jax.convert import CheckpointError, read_torch_file, state_dict_from_file

    outcome = "ok"
    for reader in (read_torch_file, state_dict_from_file):
        try:
            reader(path)
        except CheckpointError as err:
            if getattr(err, "unexpected", False):
                return f"BAD: unexpected error inside the reader: {err}"
            if not str(err).startswith(str(path)):
                return f"BAD: error does not start with the file name: {err}"
            outcome = "error"
        except BaseException as err:  # noqa: BLE001 - any other exception is a finding
            return f"BAD: {type(err).__name__}: {err}"[:2000]
    return outcome


def _worker(conn, memory_mb: int) -> None:
    import importlib
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    importlib.import_module("pthnet_jax.convert")  # import once, before the inputs (outside their timeout)

    conn.send("ready")
    while True:
        path = conn.recv()
        if path is None:
            return
        conn.send(check_file(path))


class _Runner:
    """One worker process under RLIMIT_AS; restarted after a crash or a timeout."""

    def __init__(self, memory_mb: int, timeout: float):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.memory_mb, self.timeout = memory_mb, timeout
        self.process = None
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.process = self.ctx.Process(target=_worker, args=(child, self.memory_mb), daemon=True)
        self.process.start()
        if not self.conn.poll(120):
            raise RuntimeError("fuzz worker did not start")
        self.conn.recv()

    def run(self, path: str) -> str:
        self.conn.send(path)
        if self.conn.poll(self.timeout):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
            result = f"BAD: no answer within {self.timeout}s (hang?)"
        else:
            self.process.join()
            result = f"BAD: worker died with exit code {self.process.exitcode} (signal or out of memory)"
        self._start()
        return result

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-mb", type=int, default=1024, help="RLIMIT_AS of the worker")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per input")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"), help="where findings are saved")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    choose: Choose = rng.randint
    seeds = seed_files()
    set_donors(seeds)
    runner = _Runner(args.memory_mb, args.timeout)
    counts: collections.Counter = collections.Counter()
    findings: list[dict] = []
    slowest = 0.0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-reader-") as tmp:
        path = os.path.join(tmp, "input.pth")
        while time.monotonic() - start < args.seconds:
            if rng.random() < 0.15:
                name, data = "crafted_view", crafted_view(choose)
                if rng.random() < 0.5:
                    data = mutated(data, choose, rounds=1)
            else:
                name = rng.choice(sorted(seeds))
                data = mutated(seeds[name], choose, rounds=rng.randint(1, 5))
            with open(path, "wb") as handle:
                handle.write(data)
            began = time.monotonic()
            result = runner.run(path)
            slowest = max(slowest, time.monotonic() - began)
            counts["inputs"] += 1
            counts[result if not result.startswith("BAD") else "bad"] += 1
            if result.startswith("BAD"):
                args.out.mkdir(parents=True, exist_ok=True)
                saved = args.out / f"finding-{len(findings):04d}.pth"
                saved.write_bytes(data)
                findings.append({"file": str(saved), "seed": name, "result": result})
                print(f"finding: {saved}: {result[:300]}", flush=True)
            if counts["inputs"] % 1000 == 0:
                print(f"{counts['inputs']} inputs, {time.monotonic() - start:.0f}s: {dict(counts)}", flush=True)
    runner.close()
    summary = {"inputs": counts["inputs"], "clean_loads": counts["ok"], "refused_with_error": counts["error"],
               "findings": len(findings), "seconds": round(time.monotonic() - start, 1),
               "slowest_input_s": round(slowest, 3), "memory_limit_mb": args.memory_mb,
               "details": findings[:20]}
    print(json.dumps(summary, indent=2))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
