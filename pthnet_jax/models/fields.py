"""Model configs are frozen dataclasses; building one from a plain dict (JSON, ml-collections)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def from_plain_dict(cls: type, values: Mapping[str, Any]) -> Any:
    """`cls(**values)`, refusing unknown fields by name (a typo must not become a default)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**dict(values))
