"""The converter's one error type, and escaping of text that came from a file.

Everything a checkpoint file can do wrong (not a zip, truncated, a global outside the allowlist, a
tensor view outside its storage, a state dict that is not PTH-Net, ...) ends in `CheckpointError`
(a `ValueError`) whose message starts with the file's path. Text taken from the file (key names,
global names) is shown through `show`, which escapes control characters and truncates, so a message
never carries terminal escape sequences or megabytes of a crafted name.
"""
from __future__ import annotations

import os
import unicodedata
from typing import Any


def escape_text(text: str, keep_newlines: bool = True) -> str:
    """`text` with every control/format/unassigned character written as an escape (\\x1b, \\u202e)."""
    out = []
    for char in text:
        if char == "\n" and keep_newlines:
            out.append(char)
        elif unicodedata.category(char)[0] in "CZ" and char != " ":
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def show(value: Any, limit: int = 80) -> str:
    """A short, printable rendering of a value read from a file (a key name, a global's name)."""
    try:
        text = value if isinstance(value, str) else repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is shown by its type
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[:limit] + f"...(+{len(text) - limit} chars)"
    return escape_text(text, keep_newlines=False)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or converted; the message starts with the file's path.

    `path` is the file; `reason` the message without the path. `unexpected` is set only when the
    reader's last-resort handler caught an exception it did not anticipate (the fuzz tests fail on it).
    """

    def __init__(self, path: str | os.PathLike | None, reason: str, unexpected: bool = False):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        self.unexpected = unexpected
        super().__init__(reason if self.path is None else f"{show(self.path, 4096)}: {reason}")

    def __reduce__(self):  # picklable across processes (the fuzz script runs inputs in workers)
        return type(self), (self.path, self.reason, self.unexpected)


class CheckpointReadError(CheckpointError):
    """Not a readable `torch.save` zip archive / safetensors file (corrupt, truncated, inconsistent)."""


class UnsafeCheckpointError(CheckpointReadError):
    """The pickle asks for something outside the allowlist (a global that could run code, ...)."""


class CheckpointLimitError(CheckpointReadError):
    """The file exceeds one of the reader's limits (`ReadLimits`); raise the limit if it is legitimate."""
