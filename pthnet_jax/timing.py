"""Where a run's wall-clock time went: `pthnet train` prints it as one line at the end and keeps it in
`summary.json`; `pthnet bench` reports it for its runs.

The caller times its phases (`with clock.phase("data"): ...`); JAX's own tracing, lowering and XLA
compilation are taken from `jax.monitoring` time spans, per program, and subtracted from the phase
they happened in (the first training call compiles inside "steps"), so the parts add up to the
whole. "start" is the time from the process's start (interpreter, imports, config) to the clock, for
the first clock of a process (`pthnet train`); later ones (folds, tests) have none.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

# jax.monitoring events -> our names.
JAX_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
              "/jax/core/compile/backend_compile_duration": "compile"}
PHASES = ("start", "data", "init", "restore", "steps", "eval", "checkpoints", "logging")

_active: list["RunClock"] = []
_listening = False
_first_clock = True


def process_started() -> float | None:
    """The `time.time()` at which this process started (Linux /proc), or None where unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5), counted after the command name
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _on_span(event: str, start: float, end: float, **kwargs: Any) -> None:
    kind = JAX_EVENTS.get(event)
    if kind is None:
        return
    for clock in _active:
        clock.jax_spans.append((kind, str(kwargs.get("fun_name", "?")), start, end))


def _listen() -> None:
    global _listening
    if not _listening:
        import jax

        jax.monitoring.register_event_time_span_listener(_on_span)
        _listening = True


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _overlap(spans: list[tuple[float, float]], window: tuple[float, float]) -> float:
    return _union_length([(max(s, window[0]), min(e, window[1])) for s, e in spans
                          if min(e, window[1]) > max(s, window[0])])


class RunClock:
    """Phases timed by the caller plus JAX's compile-time spans, as seconds that add up to the run."""

    def __init__(self):
        global _first_clock
        self.created = time.time()
        started = process_started() if _first_clock else None  # a later run in the process started later
        _first_clock = False
        self.start_s = max(0.0, self.created - started) if started is not None else None
        self.windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.jax_spans: list[tuple[str, str, float, float]] = []
        self.ended: float | None = None
        self.marks: dict[str, float] = {}
        _listen()
        _active.append(self)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.time()
        try:
            yield
        finally:
            self.windows[name].append((begin, time.time()))

    def mark(self, name: str) -> None:
        """Remember (once) when something first happened, as seconds since the process started."""
        if name not in self.marks:
            self.marks[name] = (self.start_s or 0.0) + time.time() - self.created

    def stop(self) -> None:
        if self.ended is None:
            self.ended = time.time()
            if self in _active:
                _active.remove(self)

    def record(self) -> dict[str, Any]:
        """Seconds per part: `start`, each phase without the JAX compile work inside it, `trace`,
        `lower`, `compile`, `other` (the rest), `total`; `programs`: trace+lower+compile per
        program ("PHASE NAME", the phase that built it), largest first; `marks`: seconds from the process's start to each `mark`."""
        end = self.ended or time.time()
        compile_spans = [(s, e) for _, _, s, e in self.jax_spans]
        parts: dict[str, float] = {}
        if self.start_s is not None:
            parts["start"] = self.start_s
        for name in PHASES:
            if name in self.windows:
                spans = self.windows[name]
                parts[name] = _union_length(spans) - sum(_overlap(compile_spans, w) for w in spans)
        for kind in ("trace", "lower", "compile"):  # nested tracing counts once
            parts[kind] = _union_length([(s, e) for k, _, s, e in self.jax_spans if k == kind])
        parts["total"] = (self.start_s or 0.0) + end - self.created
        parts["other"] = max(0.0, parts["total"] - sum(v for k, v in parts.items() if k != "total"))
        programs: dict[str, float] = defaultdict(float)
        for _, name, s, e in self.jax_spans:  # pmap programs are all "_fun": say which phase built it
            where = next((phase for phase, spans in self.windows.items()
                          if any(w0 <= s < w1 for w0, w1 in spans)), "")
            programs[f"{where} {name}".strip()] += e - s
        ordered = dict(sorted(((k, round(v, 3)) for k, v in programs.items()), key=lambda kv: -kv[1]))
        return {**{k: round(v, 3) for k, v in parts.items()}, "programs": ordered,
                "marks": {k: round(v, 3) for k, v in self.marks.items()}}

    def line(self, top: int = 3) -> str:
        """`time: start 3.1s | data 0.4s | ... | compile 9.0s | programs: ... | total 40.2s | ...`."""
        return "time: " + describe(self.record(), top)


def compile_note(what: str) -> str:
    """'compiling WHAT before the first step (...)': said before a first step that compiles."""
    import jax

    cache = jax.config.jax_compilation_cache_dir
    return (f"compiling {what} before the first step (first run of these shapes only; "
            f"{f'cached in {cache}' if cache else 'compilation cache off'}): the bar may sit at 0% a while")


_PROGRAM_WORDS = {"steps": "the training step", "init": "the initial state", "eval": "evaluation",
                  "restore": "restoring", "data": "data placement", "checkpoints": "checkpoints",
                  "logging": "logging"}


def program_words(name: str) -> str:
    """'steps jit(_fun)' -> 'the training step': a program named by the phase that built it."""
    phase = name.split(" ", 1)[0]
    return _PROGRAM_WORDS.get(phase, "other programs")


def describe(record: dict[str, Any], top: int = 3) -> str:
    """A `RunClock.record()` (or its copy in summary.json) in one line: the parts, the costliest
    programs, the total and the marks."""
    shown = [f"{k} {record[k]:.1f}s" for k in ("start", *PHASES[1:], "trace", "lower", "compile", "other")
             if record.get(k, 0.0) >= 0.05]
    plain: dict[str, float] = defaultdict(float)
    for name, seconds in record.get("programs", {}).items():
        plain[program_words(name)] += seconds
    programs = sorted(plain.items(), key=lambda kv: -kv[1])[:top]
    if programs:
        shown.append("compiled: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in programs))
    marks = "".join(f" | {name.replace('_', ' ')} at {seconds:.1f}s"
                    for name, seconds in record.get("marks", {}).items())
    return f"{' | '.join(shown)} | total {record.get('total', float('nan')):.1f}s{marks}"
