"""`pthnet demo-lstpnet`: LSTPNet end to end on synthetic clips, on a CPU, nothing downloaded.

Writes synthetic face-like clips (JPEG frame folders and list files in the original layout; each
class has its own colour and motion), imports them with `pthnet import-clips`, trains a tiny LSTPNet
(configs/lstpnet_tiny.py: every part of the model, 32 x 32 frames) and evaluates the best checkpoint.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


DEMO_EPOCHS = 12


def run_demo(workdir: str | Path = "lstpnet-demo", clips: int = 140, epochs: int | None = DEMO_EPOCHS,
             seed: int = 0, overrides: dict | None = None, quiet: bool = False) -> dict:
    """Synthesize (unless WORKDIR/data exists), import, train, evaluate; returns the test metrics
    (`{"interrupted": True}` when stopped by a signal)."""
    from pthnet_jax.commands.evaluate import run_evaluation
    from pthnet_jax.configs import lstpnet_tiny
    from pthnet_jax.families.lstpnet.clip_import import import_clips
    from pthnet_jax.families.lstpnet.clip_synth import write_synth_clips
    from pthnet_jax.fsutil import remove_path
    from pthnet_jax.train import train_and_evaluate

    workdir = Path(workdir).absolute()
    started = time.perf_counter()
    root, data_dir, run_dir = workdir / "clips", workdir / "data", workdir / "run"
    if not data_dir.exists():
        remove_path(root)
        lists = write_synth_clips(root, clips=clips, seed=seed)
        import_clips(lists["train"], lists["test"], root, data_dir, benchmark="DFEW", quiet=quiet)
    elif not quiet:
        print(f"reusing the synthetic clips in {data_dir} (delete it to synthesize again)")
    config = lstpnet_tiny.get_config()
    config.data.data_dir = str(data_dir)
    config.train.seed = seed
    if epochs is not None:
        config.train.epochs = epochs
    config.update_from_flattened_dict(overrides or {})
    if train_and_evaluate(config, run_dir).get("interrupted"):
        return {"interrupted": True}
    result = run_evaluation(run_dir / "best", data_dir, workdir / "evaluation")
    chance = 100.0 / len(result["class_names"])
    if not quiet:
        print(f"\npthnet demo-lstpnet finished in {time.perf_counter() - started:.0f}s: test UAR "
              f"{result['UAR']:.2f}  WAR {result['WAR']:.2f}  (chance UAR {chance:.2f})\n"
              f"  training curves:  {run_dir / 'training_curves.png'}\n"
              f"  metrics:          {workdir / 'evaluation' / 'metrics.json'}\n"
              f"  best checkpoint:  {run_dir / 'best'}")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet demo-lstpnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="lstpnet-demo", type=Path)
    parser.add_argument("--clips", type=int, default=140, help="synthetic training clips (test: half)")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"epochs (default {DEMO_EPOCHS})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from pthnet_jax.commands.train import INTERRUPTED_EXIT
    from pthnet_jax.train import TrainingError

    try:
        result = run_demo(args.workdir, args.clips, args.epochs, seed=args.seed)
    except (TrainingError, ValueError, OSError) as err:
        print(f"pthnet demo-lstpnet: {err}", file=sys.stderr)
        return 2
    if result.get("interrupted"):
        print("pthnet demo-lstpnet: interrupted, re-run to resume", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0
