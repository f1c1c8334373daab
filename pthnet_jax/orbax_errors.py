"""Orbax failures told once: the OS-level reason of a failed save, and quiet background threads.

A save that fails (disk full, permissions) raises in the caller, but Orbax's writer threads also log
the error with a traceback each, and the TensorStore callbacks of the aborted save print "Event loop
is closed" tracebacks afterwards. The caller reports the failure in one line naming the path.
"""
from __future__ import annotations

import logging

_CLOSED_LOOP = "Event loop is closed"
_closed_loop_hooks_installed = False


def _is_closed_loop(kind, value) -> bool:
    return kind is RuntimeError and _CLOSED_LOOP in str(value)


def silence_closed_loop_tracebacks() -> None:
    """Drop the "Event loop is closed" tracebacks that TensorStore callbacks of an aborted save print
    from its own threads (they go through the exception hooks, during the save and after it). The
    hooks stay for the process: that RuntimeError carries nothing a user can act on."""
    global _closed_loop_hooks_installed
    if _closed_loop_hooks_installed:
        return
    import sys
    import threading

    _closed_loop_hooks_installed = True
    previous, previous_thread, previous_unraisable = sys.excepthook, threading.excepthook, sys.unraisablehook

    def hook(kind, value, tb):
        if not _is_closed_loop(kind, value):
            previous(kind, value, tb)

    def thread_hook(args):
        if not _is_closed_loop(args.exc_type, args.exc_value):
            previous_thread(args)

    def unraisable(args):
        if not _is_closed_loop(type(args.exc_value), args.exc_value):
            previous_unraisable(args)

    sys.excepthook, threading.excepthook, sys.unraisablehook = hook, thread_hook, unraisable


def _unretrieved_task_filter(record) -> bool:
    return "Task exception was never retrieved" not in str(record.msg)


class QuietOrbaxErrors:
    """While a save runs, drop Orbax's own ERROR logs (a traceback per failed background write) and
    the closed-event-loop tracebacks: the failure reaches the caller, which reports it once, naming
    the path. After a failure the log filter stays: late writer threads log too, and the run ends
    with the caller's message."""

    def __init__(self):
        self.logger = logging.getLogger("absl")
        self.kept = False

    @staticmethod
    def filter(record) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in (record.pathname or ""))

    def __enter__(self):
        silence_closed_loop_tracebacks()
        self.logger.addFilter(self.filter)
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None and issubclass(kind, Exception):
            self.kept = True  # the save failed: its aborted writer threads stay quiet
            # and so do its writer tasks, which asyncio reports when they are collected at exit
            logging.getLogger("asyncio").addFilter(_unretrieved_task_filter)
        if not self.kept:
            self.logger.removeFilter(self.filter)


def describe_failure(err: BaseException) -> str:
    """The OS-level reason of an error from Orbax/TensorStore (disk full...), or the error itself."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{cause.strerror}{f': {cause.filename}' if cause.filename else ''}"
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    for marker in ("No space left on device", "Permission denied", "Read-only file system",
                   "Disk quota exceeded"):
        if marker in text:
            return marker
    return f"{type(err).__name__}: {text[:500]}"
