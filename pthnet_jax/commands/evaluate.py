"""`pthnet evaluate`: the paper's metrics for a checkpoint, forward/backward fusion, mu sweep.

    pthnet evaluate --checkpoint CKPT --data DATA_DIR [--split test]
                    [--rv-checkpoint CKPT --rv-data DATA_DIR --mu 0.7 [--allow-unrecorded]] [--mu-sweep]
                    --output OUT

Checks first that each checkpoint was trained on data like the one it is given (benchmark, fold,
label set, face, direction, as recorded by `pthnet import-features` and `pthnet train`), that
--data is forward and --rv-data backward, and that both list the same clips in the same order.
Checkpoints without a record (imported .pth files) are fused only with --allow-unrecorded.
The checkpoint names its model family; fusion (--rv-checkpoint, --mu, --mu-sweep) is for families
that define it (PTH-Net), and refused for the others.

Writes `predictions.npz`, `confusion_matrix.png`, with a sweep `mu_sweep.json` and `mu_sweep.png`,
and `metrics.json` last: a `metrics.json` on disk means the whole output is there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pthnet_jax.fsutil import atomic_path, atomic_write_json, save_figure, staged_dir


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = max(5, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    if len(class_names) <= 15:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, f"{matrix[i, j]}\n{100 * rates[i, j]:.0f}%", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_mu_sweep(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["mu"] for r in rows], [r["UAR"] for r in rows], "o-", label="UAR")
    ax.plot([r["mu"] for r in rows], [r["WAR"] for r in rows], "s-", label="WAR")
    ax.set_xlabel("mu (weight of the forward model)"), ax.set_ylabel("%"), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def run_evaluation(checkpoint, data_dir, output, split="test", rv_checkpoint=None, rv_data=None,
                   mu: float = 0.7, sweep: bool = False, mode: str = "auto", batch_size: int = 0,
                   allow_unrecorded: bool = False) -> dict[str, Any]:
    """Evaluate (see `pthnet_jax.evaluation.evaluate`) and write the results into `output`.

    The files are written into a fresh staging folder that replaces `output` at the end, so no file
    of an earlier evaluation (say, its mu sweep) is left beside the new results. An existing `output`
    that is not an earlier evaluation (no `metrics.json`) is refused rather than replaced.
    """
    from pthnet_jax.evaluation import evaluate

    output = Path(output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / "metrics.json").is_file())):
        raise FileExistsError(f"--output {output} exists and is not an earlier `pthnet evaluate` output "
                              "(no metrics.json in it); choose a new folder")
    result, arrays = evaluate(checkpoint, data_dir, split, rv_checkpoint, rv_data, mu, sweep, mode, batch_size,
                              allow_unrecorded)
    with staged_dir(output) as staging:
        if "mu_sweep" in result:
            atomic_write_json(staging / "mu_sweep.json", result["mu_sweep"])
            plot_mu_sweep(result["mu_sweep"], staging / "mu_sweep.png")
        with atomic_path(staging / "predictions.npz") as tmp:
            np.savez(tmp, **arrays)
        plot_confusion(np.array(result["confusion_matrix"]), result["class_names"], staging / "confusion_matrix.png",
                       f"UAR {result['UAR']:.2f}  WAR {result['WAR']:.2f}")
        atomic_write_json(staging / "metrics.json", result)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint dir, training workdir or .pth")
    parser.add_argument("--data", required=True, type=Path, help="data directory (pthnet import-features)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--rv-checkpoint", type=Path, help="the backward (time-reversed) model")
    parser.add_argument("--rv-data", type=Path, help="data directory of the reversed features")
    parser.add_argument("--mu", type=float, default=0.7, help="fusion weight of the forward model")
    parser.add_argument("--mu-sweep", action="store_true", help="UAR/WAR for mu = 0.0, 0.1, ..., 1.0")
    parser.add_argument("--mode", default="auto", choices=("auto", "resident", "streaming"))
    parser.add_argument("--batch-size", type=int, default=0,
                        help="clips per evaluation batch (0: auto, 256 on CPU and 4096 on accelerators)")
    parser.add_argument("--allow-unrecorded", action="store_true",
                        help="fuse checkpoints that carry no record of their training data (imported .pth "
                             "files): their direction/benchmark/fold cannot be checked; the output says so")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder to write (replaced as a whole if it holds an earlier evaluation)")
    args = parser.parse_args(argv)
    try:
        result = run_evaluation(args.checkpoint, args.data, args.output, args.split, args.rv_checkpoint,
                                args.rv_data, args.mu, args.mu_sweep, args.mode, args.batch_size,
                                args.allow_unrecorded)
    except (ValueError, OSError, KeyError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"pthnet evaluate: {text}", file=sys.stderr)
        return 2
    for line in result["checks"]["verified"]:
        print(f"checked: {line}")
    for line in result["checks"]["unchecked"]:
        print(f"NOT CHECKED: {line}")
    fused = " (fused forward/backward, mu=%.2f)" % args.mu if args.rv_checkpoint else ""
    print(f"{result['num_clips']} clips{fused}: UAR {result['UAR']:.2f}  WAR {result['WAR']:.2f}  "
          f"weighted F1 {result['weighted_f1']:.4f} -> {args.output / 'metrics.json'}")
    return 0
