"""How a protocol's runs are made: leave-one-group-out over one imported dataset.

`pthnet folds` makes its runs itself (`commands/folds.py:protocol_runs`: one imported dataset per
fold and direction, seeds as a further axis). A leave-one-subject-out protocol (micro-expressions:
CASME II, SAMM, SMIC) trains one run per subject on the other subjects' clips and tests it on the
subject's own, all from one dataset: `leave_one_group_out` returns those runs as `RunSpec`s with clip
subsets, so nothing is imported per subject, and `runs.train_runs` trains them K at a time (every run
reads the same store: it is placed on the devices once).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pthnet_jax.runs import RunSpec


def leave_one_group_out(data_dir: str, groups: Sequence, workdir: str | Path, *, seed: int = 0,
                        split: str = "train", prefix: str = "subject_") -> list[RunSpec]:
    """One run per distinct value of `groups` (the group of each clip of `split`, in list order):
    trained on every other group's clips, tested on its own; workdirs WORKDIR/<prefix><group>."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) == 0:
        raise ValueError(f"groups must name the group of every clip of split {split!r} (a 1-d sequence), "
                         f"got shape {groups.shape}")
    names = list(dict.fromkeys(groups.tolist()))  # first-seen order
    if len(names) < 2:
        raise ValueError(f"leave-one-group-out needs at least 2 groups, got {names}")
    workdir = Path(workdir)
    return [RunSpec(f"{prefix}{name}", workdir / f"{prefix}{name}", str(data_dir), seed=seed,
                    train_clips=np.flatnonzero(groups != name), test_clips=np.flatnonzero(groups == name),
                    test_split=split)
            for name in names]
