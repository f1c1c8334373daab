"""`pthnet evaluate`: the paper's metrics for a checkpoint, forward/backward fusion, mu sweep.

    pthnet evaluate --checkpoint CKPT --data DATA_DIR [--split test]
                    [--rv-checkpoint CKPT --rv-data DATA_DIR --mu 0.7] [--mu-sweep] --output OUT
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pthnet_jax import parallel, steps
from pthnet_jax.data import ResidentFeatures, batch_plan, choose_mode, iterate_batches
from pthnet_jax.metrics import classification_metrics, fuse, mu_sweep
from pthnet_jax.models.pthnet import PTHNet


class Predictor:
    """H-level logits for every clip of a split (or a subset), in list order, padded batches exact."""

    def __init__(self, model: PTHNet, mode: str = "auto", batch_size: int = 0):
        self.model, self.mode = model, mode
        self.devices = parallel.local_device_count() * jax.process_count()
        if batch_size < 0:
            raise ValueError(f"evaluation batch size must be >= 0 (0 = auto), got {batch_size}")
        batch_size = batch_size or default_eval_batch()
        self.batch_size = max(self.devices, (batch_size // self.devices) * self.devices)
        self._resident_fn = steps.pmapped(steps.predict_resident, model=model, max_len=model.config.max_len)
        self._batch_fn = steps.pmapped(steps.predict, model=model)
        self._cache: dict[int, Any] = {}

    def predict(self, params: Any, split, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (logits (n, C), labels (n,)) for clips `ids` (default: all, list order)."""
        ids = np.arange(split.num_clips) if ids is None else np.asarray(ids)
        replicated = parallel.replicate(params)
        devices = parallel.local_device_count()
        # No batch larger than the split: 500 clips in a batch of 2048 would compute 4x the work.
        batch_size = min(self.batch_size, -(-len(ids) // self.devices) * self.devices)
        collected_index, collected_logits = [], []
        if choose_mode(split, self.mode) == "resident":
            key = id(split)
            if key not in self._cache:  # the H level only, placed on the devices once
                self._cache[key] = parallel.replicate(ResidentFeatures.from_split(split, levels=("H",)))
            resident = self._cache[key]
            indices, valid = batch_plan(ids, global_batch=batch_size, process_index=jax.process_index(),
                                        process_count=jax.process_count())
            # Every batch is dispatched before any result is read: the host never stalls the device.
            outputs = [self._resident_fn(replicated, resident, parallel.split_for_devices(step_indices),
                                         parallel.split_for_devices(step_valid))
                       for step_indices, step_valid in zip(indices, valid)]
            for step_indices, step_valid, logits in zip(indices, valid, outputs):
                collected_index.append(step_indices[step_valid])
                collected_logits.append(np.asarray(logits).reshape(len(step_indices), -1)[step_valid])
        else:
            for batch in iterate_batches(split, train=False, global_batch=batch_size, mode="streaming",
                                         max_len=self.model.config.max_len, levels=("H",),
                                         num_devices=devices, clip_subset=ids):
                logits = np.asarray(self._batch_fn(replicated, parallel.shard(batch)))
                keep = batch["valid"].reshape(-1)
                collected_index.append(batch["index"].reshape(-1)[keep])
                collected_logits.append(logits.reshape(keep.shape[0], -1)[keep])
        index = parallel.all_gather_hosts(np.concatenate(collected_index))
        logits = parallel.all_gather_hosts(np.concatenate(collected_logits))
        order = np.argsort(index, kind="stable")
        index, logits = index[order], logits[order]
        if not np.array_equal(index, np.sort(ids)):
            raise RuntimeError("evaluation did not see every clip exactly once")
        return logits, np.asarray(split.labels)[index]


def default_eval_batch() -> int:
    """Evaluation batch for `batch_size=0`: 256 clips on CPU (cache-friendly), 4096 on accelerators."""
    return 256 if jax.devices()[0].platform == "cpu" else 4096


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, split_name: str = "test",
                        mode: str = "auto", batch_size: int = 0) -> dict[str, Any]:
    """Logits and metrics of one checkpoint (directory or .pth) on one split."""
    from pthnet_jax import load_model
    from pthnet_jax.data import open_split

    model, variables = load_model(checkpoint)
    split = open_split(data_dir, split_name)
    if model.config.num_classes != split.num_classes:
        raise ValueError(f"{checkpoint} predicts {model.config.num_classes} classes but {data_dir} "
                         f"({split.dataset_info.get('benchmark')}) has {split.num_classes}")
    if model.config.n_in != split.feature_dim:
        raise ValueError(f"{checkpoint} expects {model.config.n_in}-d features but {data_dir} has "
                         f"{split.feature_dim}-d")
    logits, labels = Predictor(model, mode, batch_size).predict(variables["params"], split)
    return {"split": split, "logits": logits, "labels": labels,
            "metrics": classification_metrics(logits, labels, split.num_classes)}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot_mu_sweep(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["mu"] for r in rows], [r["UAR"] for r in rows], "o-", label="UAR")
    ax.plot([r["mu"] for r in rows], [r["WAR"] for r in rows], "s-", label="WAR")
    ax.set_xlabel("mu (weight of the forward model)"), ax.set_ylabel("%"), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def run_evaluation(checkpoint, data_dir, output, split="test", rv_checkpoint=None, rv_data=None,
                   mu: float = 0.7, sweep: bool = False, mode: str = "auto", batch_size: int = 0
                   ) -> dict[str, Any]:
    if sweep and rv_checkpoint is None:  # checked before any work
        raise ValueError("--mu-sweep needs --rv-checkpoint (it sweeps the fusion weight)")
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"--mu must be in [0, 1], got {mu}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    forward = evaluate_checkpoint(checkpoint, data_dir, split, mode, batch_size)
    split_info = forward["split"]
    result = dict(forward["metrics"])
    arrays = {"clip_ids": split_info.clip_ids, "labels": forward["labels"], "logits": forward["logits"]}
    if rv_checkpoint is not None:
        backward = evaluate_checkpoint(rv_checkpoint, rv_data or data_dir, split, mode, batch_size)
        if not np.array_equal(backward["split"].clip_ids.size, split_info.clip_ids.size) or \
                not np.array_equal(backward["labels"], forward["labels"]):
            raise ValueError("the backward data's clips/labels do not line up with the forward data's")
        fused = fuse(forward["logits"], backward["logits"], mu)
        result = classification_metrics(fused, forward["labels"], split_info.num_classes)
        result["mu"] = mu
        result["models"] = {"forward": forward["metrics"], "backward": backward["metrics"]}
        arrays.update(logits=fused, logits_forward=forward["logits"], logits_backward=backward["logits"])
        if sweep:
            result["mu_sweep"] = mu_sweep(forward["logits"], backward["logits"], forward["labels"],
                                          split_info.num_classes)
            _atomic_write_text(output / "mu_sweep.json", json.dumps(result["mu_sweep"], indent=2))
            plot_mu_sweep(result["mu_sweep"], output / "mu_sweep.png")
    result["split"] = split
    result["checkpoint"] = str(checkpoint)
    result["class_names"] = split_info.class_names
    # Predictions first, metrics.json last: a metrics.json on disk means the whole output is there.
    tmp_npz = output / ".predictions.tmp.npz"
    np.savez(tmp_npz, **arrays)
    os.replace(tmp_npz, output / "predictions.npz")
    plot_confusion(np.array(result["confusion_matrix"]), split_info.class_names, output / "confusion_matrix.png",
                   f"UAR {result['UAR']:.2f}  WAR {result['WAR']:.2f}")
    _atomic_write_text(output / "metrics.json", json.dumps(result, indent=2))
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
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        result = run_evaluation(args.checkpoint, args.data, args.output, args.split, args.rv_checkpoint,
                                args.rv_data, args.mu, args.mu_sweep, args.mode, args.batch_size)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"pthnet evaluate: {err}", file=sys.stderr)
        return 2
    fused = " (fused forward/backward, mu=%.2f)" % args.mu if args.rv_checkpoint else ""
    print(f"{result['num_clips']} clips{fused}: UAR {result['UAR']:.2f}  WAR {result['WAR']:.2f}  "
          f"weighted F1 {result['weighted_f1']:.4f} -> {args.output / 'metrics.json'}")
    return 0
