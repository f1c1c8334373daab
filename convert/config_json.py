"""A `ModelConfig` from JSON data (a checkpoint's metadata), every field type-checked.

Shared by `io` and `safetensors_io` (the `pthnet` metadata entry), so neither imports the other for it.
"""
from __future__ import annotations

from typing import Any

from pthnet_jax.convert.errors import show
from pthnet_jax.models.pthnet import ModelConfig


def config_from_dict(values: Any) -> ModelConfig:
    if not isinstance(values, dict):
        raise ValueError("model_config is not an object")
    defaults = ModelConfig()
    for name, value in values.items():
        if not hasattr(defaults, name):
            raise ValueError(f"unknown field {show(name)}")
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            ok = isinstance(value, list) and all(type(v) is int for v in value)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = type(value) in (int, float)
        else:
            ok = type(value) is type(default)
        if not ok:
            raise ValueError(f"field {name} has the wrong type ({type(value).__name__})")
    return ModelConfig.from_dict(values)
