"""`pthnet demo`: the built-in default job, end to end on synthetic data.

Synthesizes FERv39k-like features (real window counts with `--annotation-dir`),
imports them into TFDS, trains a narrower PTH-Net with the original recipe (configs/demo.py),
evaluates the best checkpoint and prints UAR/WAR and where the plots are.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def run_demo(workdir: str | Path = "pthnet-demo", clips: int = 1200, epochs: int | None = None,
             feature_dim: int = 1408, seed: int = 0, signal: float | None = None,
             overrides: dict | None = None, annotation_dir: str | Path | None = None) -> dict:
    """Synthesize (unless WORKDIR/data exists), import, train with configs/demo.py, evaluate the best
    checkpoint; returns the evaluation's metrics (`{"interrupted": True}` when stopped by a signal).
    `signal` scales the synthetic class signal."""
    from pthnet_jax.configs import demo as demo_config
    from pthnet_jax.data.importer import import_features
    from pthnet_jax.data.synth import synthesize
    from pthnet_jax.commands.evaluate import run_evaluation
    from pthnet_jax.train import train_and_evaluate

    workdir = Path(workdir).absolute()
    started = time.perf_counter()
    root, data_dir, run_dir = workdir / "features", workdir / "data", workdir / "run"
    if not data_dir.exists():
        shutil.rmtree(root, ignore_errors=True)
        extra = {} if signal is None else {"signal": signal}
        synthesize(root, "FERv39k", clips=clips, feature_dim=feature_dim, seed=seed, reverse=False,
                   annotation_dir=annotation_dir, **extra)
        import_features("FERv39k", root, data_dir, feature_dim=feature_dim)
    else:
        print(f"reusing the synthetic data in {data_dir} (delete it to synthesize again)")
    config = demo_config.get_config()
    config.data.data_dir = str(data_dir)
    config.model.n_in = feature_dim
    config.train.seed = seed
    if epochs is not None:  # a shorter demo keeps the milestones it reaches
        config.train.epochs = epochs
        config.optim.milestones = tuple(m for m in config.optim.milestones if m <= epochs)
    config.update_from_flattened_dict(overrides or {})
    if train_and_evaluate(config, run_dir).get("interrupted"):
        return {"interrupted": True}
    result = run_evaluation(run_dir / "best", data_dir, workdir / "evaluation")
    chance = 100.0 / len(result["class_names"])
    print(f"\npthnet demo finished in {time.perf_counter() - started:.0f}s: test UAR {result['UAR']:.2f}  "
          f"WAR {result['WAR']:.2f}  (chance UAR {chance:.2f})\n"
          f"  training curves:  {run_dir / 'training_curves.png'}\n"
          f"  confusion matrix: {workdir / 'evaluation' / 'confusion_matrix.png'}\n"
          f"  metrics:          {workdir / 'evaluation' / 'metrics.json'}\n"
          f"  best checkpoint:  {run_dir / 'best'}  (pthnet convert {run_dir / 'best'} model.pth)")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="pthnet-demo", type=Path)
    parser.add_argument("--clips", type=int, default=1200, help="synthetic training clips")
    parser.add_argument("--epochs", type=int, help="override configs/demo.py's epoch count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--annotation-dir", type=Path,
                        help="the original's annotation/ folder: synthesize with its real window counts")
    args = parser.parse_args(argv)
    from pthnet_jax.commands.train import INTERRUPTED_EXIT
    from pthnet_jax.train import TrainingError

    try:
        result = run_demo(args.workdir, args.clips, args.epochs, seed=args.seed, annotation_dir=args.annotation_dir)
    except (TrainingError, ValueError, OSError) as err:
        print(f"pthnet demo: {err}", file=sys.stderr)
        return 2
    if result.get("interrupted"):
        print("pthnet demo: interrupted, re-run to resume (the same command continues the training)", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0
