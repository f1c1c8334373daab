"""Ctrl-C (SIGINT) and SIGTERM for the long-running commands: stop cleanly, never crash.

Python's default SIGINT handler raises `KeyboardInterrupt` in the main thread at the next bytecode.
While XLA compiles (minutes, in C++) that is only after the compilation, and the exception then
unwinds through JAX's and Orbax's machinery with their threads alive; at interpreter exit that ended
in a segmentation fault. So the commands that run for long (`train`, `folds`, `demo`, `demo-video`,
`extract`) install `handle_signals(program)` first thing:

- The Python-level handler does nothing but record the signal: no exception is ever raised.
- A watcher thread reads the signal numbers from `signal.set_wakeup_fd` (written by the C-level
  handler at once, even while the main thread is inside XLA) and acts immediately:
  * outside a `deferred()` section (start-up, data import, evaluation: nothing unsaved), the first
    signal prints one line and exits with status 75 ("interrupted, re-run to resume"), via
    `os._exit`, so no interpreter teardown runs with XLA's threads alive;
  * inside a `deferred()` section (a training loop, an extraction loop, which stop at their next safe
    point, save, and return), the first signal prints what will happen and is left to the loop
    (`pending()`);
  * a second SIGINT always quits at once (status 130) without saving.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from typing import Iterator

INTERRUPTED_EXIT = 75  # sysexits' EX_TEMPFAIL: saved (or nothing to save); re-run to resume
FORCED_EXIT = 130  # 128 + SIGINT: the second Ctrl-C, nothing saved
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    def __init__(self):
        self.program: str | None = None
        self.pending: int | None = None
        self.sigints = 0
        self.deferred = 0  # nesting depth of deferred() sections
        self.lock = threading.Lock()


_state = _State()


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _say(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed stderr must not stop the exit
        pass


def _quit(code: int, text: str) -> None:
    _say(text)
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    os._exit(code)


def on_signal(signum: int) -> None:
    """What a signal does (called by the watcher thread, or by a loop's own handler without one)."""
    program = _state.program or "pthnet"
    with _state.lock:
        first = _state.pending is None
        if first:
            _state.pending = signum
        if signum == signal.SIGINT:
            _state.sigints += 1
        forced = signum == signal.SIGINT and _state.sigints >= 2
        deferred = _state.deferred > 0
    if forced:
        _quit(FORCED_EXIT, f"\n{program}: second Ctrl-C: quitting now, without saving")
    if not first:
        return
    if deferred:
        _say(f"\n{program}: {_name(signum)} received: stopping at the next safe point (after the device "
             "work in flight, which may still be compiling), then saving. Ctrl-C again quits now "
             "without saving.")
    else:
        _quit(INTERRUPTED_EXIT, f"\n{program}: interrupted ({_name(signum)}) before anything needed saving; "
              "re-run the same command to start again (finished work is kept)")


def reset() -> None:
    with _state.lock:
        _state.pending, _state.sigints = None, 0


def pending() -> int | None:
    """The first signal received since `handle_signals` began, or None (always None without it)."""
    return _state.pending if _state.program is not None else None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section that stops by itself at a safe point when `pending()` is set: signals only set it."""
    with _state.lock:
        _state.deferred += 1
    try:
        yield
    finally:
        with _state.lock:
            _state.deferred -= 1


def _record(signum, frame) -> None:  # the Python-level handler: the watcher thread does the work
    del signum, frame


@contextlib.contextmanager
def handle_signals(program: str) -> Iterator[None]:
    """Install the handlers above for the duration of a command (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    reader.setblocking(True)
    writer.setblocking(False)
    previous = {s: signal.signal(s, _record) for s in SIGNALS}
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    _state.program, _state.pending, _state.sigints, _state.deferred = program, None, 0, 0
    stopping = threading.Event()

    def watch() -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data or stopping.is_set():
                return
            for signum in data:
                if signum in SIGNALS:
                    on_signal(signum)

    watcher = threading.Thread(target=watch, name="pthnet-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stopping.set()
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            writer.send(b"\0")  # wake the watcher so that it ends
        except OSError:
            pass
        watcher.join(timeout=1.0)
        reader.close()
        writer.close()
        _state.program = None


def watching() -> bool:
    """Whether `handle_signals` is active (its watcher thread acts on every signal)."""
    return _state.program is not None
