"""`pthnet loso`: leave-one-subject-out (HTNet): one run per subject of one imported dataset, K at a
time in one program, pooled UF1/UAR (and per database) under the named epoch selection(s).

A command of its own rather than `pthnet folds`: folds imports one dataset per fold of a benchmark's
lists and averages per-fold numbers; LOSO takes its runs from the subjects of one dataset and pools
their predictions before computing the metric once.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pthnet_jax.commands.train import (INTERRUPTED_EXIT, USAGE_EXIT, config_names, help_text, parse_flags,
                                       run_flags, wants_help)

USAGE = ("usage: pthnet loso --config htnet_composite --data DIR --workdir W [--parallel K] "
         "[--selection last,best_on_test,800] [--metrics compat|clean] [--config.a.b=v ...]\n"
         "configs: {names}")


def main(argv: list[str]) -> int:
    from absl import flags

    from pthnet_jax.families.htnet.loso import RESULT, describe, run_loso
    from pthnet_jax.families.htnet.protocol import parse_selection
    from pthnet_jax.train import TrainingError

    usage = USAGE.format(names=", ".join(config_names()))
    try:
        values, argv = run_flags("pthnet loso", argv, data_help="the dataset `pthnet import-htnet` wrote",
                                 workdir_help="runs go to WORKDIR/subject_S; the pooled result to WORKDIR/loso.json")
        flags.DEFINE_integer("parallel", None, "runs (subjects) trained at a time in one program (jax.vmap over "
                             "runs; default config.train.parallel_runs)", flag_values=values)
        flags.DEFINE_string("selection", "last", "comma-separated epoch selections to pool: 'last', an epoch "
                            "number, 'best_on_test' (selection on the held-out subject: for comparison with the "
                            "paper only)", flag_values=values)
        flags.DEFINE_enum("metrics", "compat", ["compat", "clean"], "UF1/UAR as the original computes them "
                          "(compat) or without its quirks (clean)", flag_values=values)
        if wants_help(argv[1:]):
            print(help_text(f"{__doc__}\n{usage}", values, argv))
            return 0
        config = parse_flags(values, argv)
        if config is None or not values.data or not values.workdir:
            raise ValueError("--config, --data and --workdir are required")
        selections = [parse_selection(s.strip()) for s in values.selection.split(",") if s.strip()]
        parallel = values.parallel if values.parallel is not None else int(config.train.parallel_runs)
        if parallel < 1:
            raise ValueError(f"--parallel must be >= 1, got {parallel}")
        result = run_loso(config, values.data, Path(values.workdir), parallel, selections or ["last"],
                          values.metrics)
    except (TrainingError, ValueError, KeyError, RuntimeError, OSError) as err:
        print(f"pthnet loso: {err}\n{usage.splitlines()[0]}", file=sys.stderr)
        return USAGE_EXIT
    if result is None:
        print("pthnet loso: interrupted, re-run the same command to resume every run", file=sys.stderr)
        return INTERRUPTED_EXIT
    for one in result.values():
        print(describe(one))
    print(f"-> {Path(values.workdir) / RESULT}")
    return 0
