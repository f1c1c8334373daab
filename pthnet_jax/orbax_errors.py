"""Orbax failures told once: the OS-level reason of a failed save, and quiet background threads.

A save that fails (disk full, permissions) raises in the caller, but Orbax's writer threads also log
the error with a traceback each, and the TensorStore callbacks of the aborted save print "Event loop
is closed" tracebacks afterwards. The caller reports the failure in one line naming the path.
"""
from __future__ import annotations


class QuietOrbaxErrors:
    """While a save runs, drop Orbax's own ERROR logs (a traceback per failed background write):
    the failure reaches `save`, which reports it once, naming the path. After a failure (`keep`),
    also drop the "Event loop is closed" tracebacks that TensorStore callbacks of the aborted save
    print later, and keep the log filter: the run ends with our message."""

    def __init__(self):
        import logging

        self.logger = logging.getLogger("absl")
        self.kept = False

    @staticmethod
    def filter(record) -> bool:
        import logging

        return not (record.levelno >= logging.ERROR and "orbax" in (record.pathname or ""))

    def __enter__(self):
        self.logger.addFilter(self.filter)
        return self

    def __exit__(self, *exc):
        if not self.kept:
            self.logger.removeFilter(self.filter)

    def keep(self) -> None:
        import sys

        self.kept = True
        previous = sys.excepthook

        def hook(kind, value, tb):
            if kind is RuntimeError and "Event loop is closed" in str(value):
                return
            previous(kind, value, tb)

        sys.excepthook = hook
        import threading

        previous_thread_hook = threading.excepthook

        def thread_hook(args):
            if args.exc_type is RuntimeError and "Event loop is closed" in str(args.exc_value):
                return
            previous_thread_hook(args)

        threading.excepthook = thread_hook
        previous_unraisable = sys.unraisablehook

        def unraisable(args):
            if isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in str(args.exc_value):
                return
            previous_unraisable(args)

        sys.unraisablehook = unraisable


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
