"""Config validation, in one place, before any work.

`validate_config(config)` checks every field a training run reads: the model family, numbers and
their ranges, the choices of enumerated fields (the selection metric among the family's metrics), the
milestones (integers, increasing, within the epochs); `config.model` is the family's to judge
(`task.model_config_problems`). All problems are reported at once, each naming its key, as one
`ConfigError`. Fields a config does not have keep their defaults and are not checked here.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import ml_collections

from pthnet_jax.epochs import TrainingError
from pthnet_jax.task import FAMILIES, STATE_SYNCS, UnknownFamily, family_of, get_task

MODEL_DTYPES = ("float32", "bfloat16")
DATA_MODES = ("auto", "resident", "streaming")
SELECT_ON = ("test", "val")
RUNS_PLACEMENTS = ("auto", "inside", "spread")  # many runs in one program: pthnet_jax.run_placement


class ConfigError(TrainingError):
    """A config value out of range or of the wrong kind; the message names every bad key."""


_MISSING = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _number(low: float, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    def check(value):
        if not _is_number(value):
            return False
        ok_low = value > low if low_open else value >= low
        ok_high = high is None or (value < high if high_open else value <= high)
        return ok_low and ok_high

    left = "(" if low_open else "["
    right = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
    return check, f"a finite number in {left}{low}, {right}"


def _choice(options: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), "one of " + ", ".join(repr(o) for o in options)


_BOOL = ((lambda v: isinstance(v, bool)), "True or False")
_STRING = ((lambda v: isinstance(v, str)), "a string")
_NONEMPTY = ((lambda v: isinstance(v, str) and bool(v)), "a non-empty string")

# key -> (check, what is expected)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model_dtype": _choice(MODEL_DTYPES),
    "data.data_dir": _STRING,
    "data.mode": _choice(DATA_MODES),
    "data.noise_std": _number(0.0),
    "data.train_split": _NONEMPTY,
    "data.test_split": _NONEMPTY,
    "optim.lr": _number(0.0, low_open=True),
    "optim.momentum": _number(0.0, 1.0, high_open=True),
    "optim.weight_decay": _number(0.0),
    "optim.gamma": _number(0.0, low_open=True),
    "train.epochs": _int_at_least(1),
    "train.global_batch": _int_at_least(1),
    # < 2**31: the seed is an int32 argument of the compiled step (traced: one program for every seed)
    "train.seed": ((lambda v: _is_int(v) and 0 <= v < 2 ** 31), "an integer in [0, 2**31)"),
    "train.steps_per_dispatch": ((lambda v: _is_int(v) and v >= 0), "an integer >= 0 (0 = auto)"),
    "train.select_on": _choice(SELECT_ON),
    "train.model_state_sync": _choice(("",) + STATE_SYNCS),
    "train.val_fraction": _number(0.0, 1.0, low_open=True, high_open=True),
    "train.val_seed": _int_at_least(0),
    "train.keep_checkpoints": _int_at_least(1),
    "train.eval_every": _int_at_least(1),
    "train.parallel_runs": _int_at_least(1),
    "train.runs_placement": _choice(RUNS_PLACEMENTS),
    "train.runs_vmap_width": ((lambda v: _is_int(v) and v >= -1), "an integer >= -1 (-1 = auto)"),
    "train.profile_steps": _int_at_least(0),
    "train.allow_resume_change": _BOOL,
    "train.shuffle": _BOOL,
    "train.checkpoint_every": _int_at_least(1),  # many runs (runs.train_runs) only
    "train.save_best": _BOOL,  # many runs only: False = no best/ checkpoint per improvement  # False: every epoch in list order (HTNet's compat order)
    "optim.name": _choice(("sgd", "adam")),
    "eval.batch_size": ((lambda v: _is_int(v) and v >= 0), "an integer >= 0 (0 = auto)"),
}


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            return _MISSING
    return node


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Every problem of `config`, one message per key (empty when the config is fine)."""
    family = family_of(config)
    if not isinstance(family, str) or family not in FAMILIES:
        return [f"config.family must be one of {', '.join(repr(f) for f in sorted(FAMILIES))}, got {family!r}"]
    try:
        task = get_task(family)
    except UnknownFamily as err:
        return [f"config.family: {err}"]
    rules = {**RULES, "train.select_metric": _choice(tuple(task.metrics))}
    problems = []
    for key, (check, expected) in rules.items():
        value = _get(config, key)
        if value is _MISSING:
            continue
        if not check(value):
            problems.append(f"config.{key} must be {expected}, got {value!r}")
    problems += _milestone_problems(_get(config, "optim.milestones"), _get(config, "train.epochs"))
    model = _get(config, "model")
    if model is not _MISSING:
        problems += task.model_config_problems(model.to_dict() if hasattr(model, "to_dict") else dict(model))
    return problems


def _milestone_problems(milestones: Any, epochs: Any) -> list[str]:
    if milestones is _MISSING:
        return []
    expected = "a sequence of increasing epoch numbers, e.g. (5, 10, 15)"
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
        return [f"config.optim.milestones must be {expected}, got {milestones!r}"]
    values = list(milestones)
    if not all(_is_int(m) for m in values):
        return [f"config.optim.milestones must be {expected} (integers), got {milestones!r}"]
    if any(b <= a for a, b in zip(values, values[1:])):
        return [f"config.optim.milestones must be strictly increasing, got {tuple(values)}"]
    if values and _is_int(epochs) and epochs >= 1 and not (1 <= values[0] and values[-1] <= epochs):
        return [f"config.optim.milestones must lie within 1..config.train.epochs={epochs} (the learning "
                f"rate drops at the start of each listed epoch), got {tuple(values)}; for a shorter run pass "
                f"them too, e.g. --config.optim.milestones='{tuple(m for m in values if m <= epochs)}'"]
    return []


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise `ConfigError` listing every problem of `config` (nothing when it is fine)."""
    problems = config_problems(config)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
