"""HTNet's leave-one-subject-out protocol through the many-runs trainer.

One imported dataset; every subject a run of its own (`protocols.leave_one_group_out`: clip subsets,
nothing imported per subject), trained K at a time in one program (`runs.train_runs`). Each run
records its held-out predictions after every evaluated epoch (`task.keep_predictions`), so the epoch
selection is applied when the runs are pooled: `last` (default), a fixed epoch, or `best_on_test`
(the original's per-subject best accuracy on the held-out subject, ties to the later epoch: selection
on the test data, for comparison with the paper only). The result names its selection.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

RESULT = "loso.json"


def subject_runs(config, data_dir: str, workdir: str | Path) -> tuple[Any, list]:
    """(the opened split, one RunSpec per subject in first-seen list order)."""
    from pthnet_jax.families.htnet.task import open_split
    from pthnet_jax.protocols import leave_one_group_out
    from pthnet_jax.task import family_of

    if family_of(config) != "htnet":
        raise ValueError(f"leave-one-subject-out is HTNet's protocol: the config's family is {family_of(config)!r} "
                         "(use --config htnet_composite or htnet_tiny)")
    split = open_split(data_dir, config.data.train_split)
    specs = leave_one_group_out(data_dir, split.groups, workdir, seed=int(config.train.seed),
                                split=config.data.train_split)
    return split, specs


def pool(split, specs: list, selection: str | int = "last", mode: str = "compat") -> dict[str, Any]:
    """Pooled and per-database UF1/UAR of every run's selected held-out predictions."""
    from pthnet_jax.families.htnet.protocol import Selection, combine
    from pthnet_jax.families.htnet.task import PREDICTIONS, read_predictions

    selections, splits = {}, []
    for spec in specs:
        path = Path(spec.workdir) / PREDICTIONS
        if not path.exists():
            raise FileNotFoundError(f"{path}: run {spec.name} recorded no predictions (not trained yet?)")
        epochs, table = read_predictions(path)
        test = np.asarray(spec.test_clips)
        if table.shape[1:] != (len(test),):
            raise ValueError(f"{path}: {table.shape[1:]} predictions per epoch, run {spec.name} tests {len(test)} samples")
        chosen = Selection(selection)
        for epoch, predictions in zip(epochs.tolist(), table):
            chosen.update(epoch, predictions, split.labels[test])
        selections[spec.name] = chosen
        splits.append((spec.name, np.asarray(spec.train_clips), test))
    result = combine(selections, splits, split.labels, split.databases, mode=mode)
    result["runs"] = len(specs)
    result["samples"] = int(split.num_clips)
    return result


def run_loso(config, data_dir: str, workdir: str | Path, parallel: int = 1, selections=("last",),
             mode: str = "compat") -> dict[str, Any] | None:
    """Train every subject's run (resuming finished ones), pool them under each selection, write
    WORKDIR/loso.json; None when training was interrupted."""
    from pthnet_jax.fsutil import atomic_write_json
    from pthnet_jax.runs import train_runs

    workdir = Path(workdir)
    split, specs = subject_runs(config, data_dir, workdir)
    if train_runs(config, specs, parallel) is None:
        return None
    results = {str(s): pool(split, specs, s, mode) for s in selections}
    atomic_write_json(workdir / RESULT, results)
    return results


def describe(result: dict[str, Any]) -> str:
    lines = [f"selection {result['selection']} ({result['metrics_mode']} metrics), {result['runs']} subjects, "
             f"{result['samples']} samples: UF1 {result['all']['UF1']:.4f}  UAR {result['all']['UAR']:.4f}"]
    for name, values in sorted(result.items()):
        if name != "all" and isinstance(values, dict) and "UF1" in values:
            lines.append(f"  {name}: UF1 {values['UF1']:.4f}  UAR {values['UAR']:.4f}")
    return "\n".join(lines)


__all__ = ["RESULT", "describe", "pool", "run_loso", "subject_runs"]
