"""`pthnet train`: flags, config loading and messages around `pthnet_jax.train.train_and_evaluate`.

    pthnet train --config ferv39k --data DATA_DIR --workdir DIR [--config.a.b=v ...]

`--config` takes a benchmark config by name (the files of `pthnet_jax/configs/`, installed with the
package) or the path of a config file. Exit status: 0 done, 2 bad arguments or data, 75 interrupted
(SIGTERM/SIGINT: the state is saved; run the same command again to resume).
"""
from __future__ import annotations

import sys
from pathlib import Path

import ml_collections

# A saved, interrupted run (sysexits' EX_TEMPFAIL: "try again later"), so that a scheduler does not
# take a preempted job for a finished one.
INTERRUPTED_EXIT = 75
USAGE_EXIT = 2
USAGE = ("usage: pthnet train --config NAME|FILE --data DATA_DIR --workdir DIR [--config.a.b=value ...]\n"
         "  NAME: one of {names}\n"
         "  (config fields are locked: an override must name an existing field; see the list below)\n"
         "  exit status: 0 done, 2 bad arguments/config/data, 75 interrupted (saved: re-run to resume)")


def config_names() -> list[str]:
    """The configs installed with the package (`pthnet_jax/configs/*.py`), by name."""
    from pthnet_jax import configs

    folder = Path(configs.__file__).parent
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def resolve_config(value: str) -> str:
    """A config name (`ferv39k`) -> the installed file; a path is returned as it is (checked to exist)."""
    from pthnet_jax import configs

    path_part = value.split(":", 1)[0]  # ml-collections allows FILE:ARGUMENT
    if Path(path_part).is_file():
        return value
    name = path_part.lower().removesuffix(".py")
    name = {"crema-d": "cremad", "crema_d": "cremad"}.get(name, name)
    if "/" not in path_part and name in config_names():
        return str(Path(configs.__file__).parent / f"{name}.py") + value[len(path_part):]
    hint = f" (the installed one: --config {Path(name).name})" if Path(name).name in config_names() else ""
    raise ValueError(f"--config {value}: no such file, and not a config name{hint}; expected a config file or "
                     f"one of {', '.join(config_names())}")


def resolve_config_argv(argv: list[str]) -> list[str]:
    """argv with the value of `--config NAME` / `--config=NAME` replaced by the installed file."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-config") and i + 1 < len(argv):
            out += [arg, resolve_config(argv[i + 1])]
            i += 2
            continue
        if arg.startswith(("--config=", "-config=")):
            flag, _, value = arg.partition("=")
            arg = f"{flag}={resolve_config(value)}"
        out.append(arg)
        i += 1
    return out


def config_fields_help(config: ml_collections.ConfigDict | None) -> str:
    """Every field of a config with its value, as the override to write (`--config.a.b=value`)."""
    if config is None:
        from pthnet_jax.configs import default

        config = default.get_config()
    flat = _flatten(config.to_dict())
    width = max(len(k) for k in flat) + len("--config.=")
    return "\n".join(f"  {('--config.' + k + '=').ljust(width)}{v!r}" for k, v in flat.items())


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flag_error_text(err: BaseException) -> str:
    """absl wraps ml-collections' KeyError ('lrr' / Did you mean "lr"?) in other errors: unwrap it."""
    while err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return f"bad config override: {text}" if isinstance(err, KeyError) else str(text)


def run_flags(program: str, argv: list[str], *, data_help: str, workdir_help: str):
    """absl flags `--config NAME|FILE` (locked, with `--config.a.b=v` overrides), `--data`, `--workdir`.

    Returns the flag values (not parsed yet) and the argv to parse them from, program name first.
    Raises ValueError for a `--config` that is neither a file nor a config name.
    """
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    argv = [program, *resolve_config_argv(argv)]
    # sys_argv: ml-collections looks for the --config.a.b=v overrides in this list (by default it reads
    # the process's sys.argv, which is not what `main(argv)` was given).
    config_flags.DEFINE_config_file("config", None, "config name or file", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("data", None, data_help, flag_values=values)
    flags.DEFINE_string("workdir", None, workdir_help, flag_values=values)
    return values, argv


def wants_help(argv: list[str]) -> bool:
    return any(arg in ("-h", "--help", "-help", "--helpshort") for arg in argv)


def parse_flags(values, argv: list[str]) -> ml_collections.ConfigDict | None:
    """Parse absl flags; ValueError with a readable message for a bad flag, file or override."""
    from absl import flags

    try:
        values(argv)
        config = values.config
        if config is not None:
            config.to_dict()  # a file that failed to load raises only on first use: surface it here
        return config
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError, SyntaxError, NameError,
            ImportError) as err:  # the last three: a config file that does not run
        raise ValueError(flag_error_text(err)) from None


def help_text(usage: str, values, argv: list[str]) -> str:
    """Usage, the flags, and the fields of the named config (or the base config) with their values."""
    config = None
    try:
        config = parse_flags(values, [a for a in argv if not wants_help([a])])
    except ValueError:
        pass
    name = "the config given" if config is not None else "the base config (configs/default.py)"
    return (f"{usage}\n\nflags:\n{values.get_help(include_special_flags=False)}\n\n"
            f"config fields and their values in {name}:\n{config_fields_help(config)}")


def parse_args(argv: list[str]) -> tuple[ml_collections.ConfigDict, Path] | int:
    """(config, workdir), or an exit status when it printed help or an error."""
    usage = USAGE.format(names=", ".join(config_names()))
    try:
        values, argv = run_flags("pthnet train", argv, data_help="data directory written by `pthnet import-features`",
                                 workdir_help="where checkpoints, logs and plots go")
        if wants_help(argv[1:]):
            print(help_text(usage, values, argv))
            return 0
        config = parse_flags(values, argv)
    except ValueError as err:
        print(f"pthnet train: {err}\n{usage.splitlines()[0]}", file=sys.stderr)
        return USAGE_EXIT
    if config is None or values.workdir is None:
        print(f"pthnet train: --config and --workdir are required\n{usage}", file=sys.stderr)
        return USAGE_EXIT
    if values.data:
        with config.unlocked():
            config.data.data_dir = values.data
    return config, Path(values.workdir)


def record_training_data(workdir: Path, data_dir: str, family: str | None = None) -> None:
    """WORKDIR/data.json: which dataset (benchmark, fold, direction, lists, class names) the run of
    model family `family` trains on, so that `pthnet evaluate` can refuse a checkpoint given the wrong
    data. A missing dataset or an unknown family is left to the trainer to report."""
    from pthnet_jax.evaluation import write_data_record
    from pthnet_jax.task import get_task

    try:
        write_data_record(workdir, data_dir, get_task(family))
    except (FileNotFoundError, ValueError):
        pass


def main(argv: list[str]) -> int:
    parsed = parse_args(argv)
    if isinstance(parsed, int):
        return parsed
    config, workdir = parsed
    from pthnet_jax import parallel
    from pthnet_jax.train import TrainingError, train_and_evaluate

    parallel.maybe_initialize_distributed()
    record_training_data(workdir, config.data.data_dir, config.get("family"))
    try:
        summary = train_and_evaluate(config, workdir)
    except TrainingError as err:
        print(f"pthnet train: {err}", file=sys.stderr)
        return USAGE_EXIT
    if summary.get("interrupted"):
        print(f"pthnet train: interrupted, re-run to resume (the same command continues from step "
              f"{summary.get('step')} saved in {workdir})", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0
