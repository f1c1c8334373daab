"""`pthnet train`: flags, config loading and messages around `pthnet_jax.train.train_and_evaluate`.

    pthnet train --config configs/ferv39k.py --data DATA_DIR --workdir DIR [--config.a.b=v ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import ml_collections

from pthnet_jax import parallel
from pthnet_jax.train import TrainingError, train_and_evaluate

USAGE = ("usage: pthnet train --config configs/NAME.py --data DATA_DIR --workdir DIR [--config.a.b=value ...]"
         "\n  (config fields are locked: an override must name an existing field)")


def flag_error_text(err: BaseException) -> str:
    """absl wraps ml-collections' KeyError ('lrr' / Did you mean "lr"?) in other errors: unwrap it."""
    while err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return f"bad config override: {text}" if isinstance(err, KeyError) else str(text)


def run_flags(program: str, argv: list[str], *, data_help: str, workdir_help: str):
    """absl flags `--config FILE` (locked, with `--config.a.b=v` overrides), `--data`, `--workdir`.

    Returns the flag values (not parsed yet) and the argv to parse them from, program name first.
    """
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    argv = [program, *argv]
    # sys_argv: ml-collections looks for the --config.a.b=v overrides in this list (by default it reads
    # the process's sys.argv, which is not what `main(argv)` was given).
    config_flags.DEFINE_config_file("config", None, "ml-collections config file", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("data", None, data_help, flag_values=values)
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=values)
    return values, argv


def parse_args(argv: list[str]) -> tuple[ml_collections.ConfigDict, Path]:
    """`--config FILE --data DIR --workdir DIR` plus locked `--config.a.b=v` overrides (absl flags)."""
    from absl import flags

    values, argv = run_flags("pthnet train", argv, data_help="data directory written by `pthnet import-features`",
                             workdir_help="where checkpoints, logs and plots go")
    if any(arg in ("-h", "--help", "-help") for arg in argv[1:]):
        raise SystemExit(f"{USAGE}\n\n{values.get_help(include_special_flags=False)}")
    try:
        values(argv)
        config = values.config
        if config is not None:
            config.to_dict()  # a file that failed to load raises only on first use: surface it here
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError, SyntaxError, NameError,
            ImportError) as err:  # the last three: a config file that does not run
        raise SystemExit(f"pthnet train: {flag_error_text(err)}\n{USAGE}")
    if config is None or values.workdir is None:
        raise SystemExit(USAGE)
    if values.data:
        with config.unlocked():
            config.data.data_dir = values.data
    return config, Path(values.workdir)


def main(argv: list[str]) -> int:
    config, workdir = parse_args(argv)
    parallel.maybe_initialize_distributed()
    try:
        train_and_evaluate(config, workdir)
    except TrainingError as err:
        print(f"pthnet train: {err}", file=sys.stderr)
        return 2
    return 0
