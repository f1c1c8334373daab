"""The PyTorch baseline of the speed benchmark: the original's recipe and data path, from the spec.

Per clip and epoch it reads the three `.npy` files of the clip (one per pyramid level) in a
`torch.utils.data.Dataset`, samples windows as the original does, pads, adds training noise, and
batches through a `DataLoader` with shuffling; the model is the PyTorch reference PTH-Net with the
original's names (`pthnet_jax.benchmarks.torch_pthnet`), trained with SGD + the hierarchy loss.
PyTorch is imported here only; the benchmark skips this baseline when it is not installed.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

LEVEL_FOLDERS = {"H": "th14_vit_g_16_4", "M": "th14_vit_g_16_8", "L": "th14_vit_g_16_16"}


def read_list(path: Path) -> list[tuple[str, int, int]]:
    """`<npy path> <num_windows> <label>` lines -> tuples."""
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{path}:{line_number}: expected '<npy path> <num_windows> <label>', "
                             f"got {line!r}")
        rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


def segment_picks(num_windows: int, num_steps: int, train: bool, rng: np.random.Generator) -> np.ndarray:
    """Window indices for one level of one clip, the original's rule (segments, a random or middle window each)."""
    if num_windows < num_steps:
        return np.arange(num_windows)
    seg = num_windows / num_steps
    picks = []
    for i in range(num_steps):
        start, end = int(np.round(seg * i)), int(np.round(seg * (i + 1)))
        picks.append(rng.integers(start, end) if train else start + int(seg / 2))
    return np.asarray(picks)


class NpyClipDataset:
    """A map-style dataset over the original layout: one `.npy` per clip and level."""

    def __init__(self, root: Path, list_dir: Path, list_name: str, train: bool, max_len: int = 16,
                 noise_std: float = 0.0005, seed: int = 0):
        self.root, self.train, self.noise_std, self.seed = Path(root), train, noise_std, seed
        self.lengths = {"H": max_len, "M": max_len // 2, "L": max_len // 4}
        self.rows = {lvl: read_list(Path(list_dir) / folder / list_name)
                     for lvl, folder in LEVEL_FOLDERS.items()}
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows["H"])

    def __getitem__(self, index: int):
        import torch

        rng = np.random.default_rng([self.seed, self.epoch, index])
        out = []
        for level in ("L", "M", "H"):
            path, count, _ = self.rows[level][index]
            windows = np.load(self.root / path).astype(np.float32)
            picked = windows[segment_picks(count, self.lengths[level], self.train, rng)]
            padded = np.zeros((self.lengths[level], windows.shape[1]), np.float32)
            padded[:len(picked)] = picked
            if self.train and self.noise_std > 0:
                padded += rng.normal(0.0, self.noise_std, padded.shape).astype(np.float32)
            mask = np.arange(self.lengths[level]) < len(picked)
            # The original's layout: (C, T) features and (1, T) masks.
            out.append((torch.from_numpy(padded.T.copy()), torch.from_numpy(mask[None])))
        return out[0], out[1], out[2], self.rows["H"][index][2]


def hierarchy_loss(torch_module, logits_l, logits_m, logits_h, labels):
    """CE(H) + KL(L || H) + KL(M || H), H's softmax detached (the original's loss)."""
    functional = torch_module.nn.functional
    target = functional.softmax(logits_h.detach(), dim=1)
    kl = lambda logits: functional.kl_div(functional.log_softmax(logits, dim=1), target,  # noqa: E731
                                          reduction="batchmean")
    return functional.cross_entropy(logits_h, labels) + kl(logits_l) + kl(logits_m)


def run_baseline(root: Path, list_dir: Path, model_kwargs: dict[str, Any], *, epochs: int = 1,
                 batch_size: int = 32, eval_batch_size: int = 32, num_workers: int | None = None,
                 max_train_steps: int | None = None, max_eval_batches: int | None = None,
                 device: str = "cpu", train_list: str = "train_All.txt",
                 test_list: str = "test_All.txt", eval_every_epoch: bool = False) -> dict[str, float]:
    """Train and evaluate the PyTorch baseline; returns throughput and timing figures.

    `eval_every_epoch`: also evaluate the test split after every epoch, as the original's script does
    (`pthnet bench --small` compares whole runs); the final evaluation is timed either way.
    """
    import torch

    from pthnet_jax.benchmarks.torch_pthnet import TorchPTHNet

    start = time.perf_counter()
    if num_workers is None:  # the original's default is 8 loader workers
        num_workers = min(8, os.cpu_count() or 1)
    torch.manual_seed(0)
    model = TorchPTHNet(**model_kwargs).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    train_set = NpyClipDataset(root, list_dir, train_list, train=True)
    test_set = NpyClipDataset(root, list_dir, test_list, train=False)
    # Workers are spawned, not forked: forking a process that has JAX's threads running can deadlock.
    loader_args = dict(num_workers=num_workers, pin_memory=device != "cpu", persistent_workers=num_workers > 0,
                       multiprocessing_context="spawn" if num_workers > 0 else None)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                               **loader_args)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=eval_batch_size, shuffle=False,
                                              **loader_args)
    startup_s = time.perf_counter() - start

    def to_device(pair):
        return pair[0].to(device, non_blocking=True), pair[1].to(device, non_blocking=True)

    train_clips, epoch_seconds, epoch_clips, eval_in_training_s = 0, [], [], 0.0
    for epoch in range(epochs):
        train_set.epoch = epoch
        model.train()
        epoch_start, clips = time.perf_counter(), 0
        steps = len(train_loader) if max_train_steps is None else min(len(train_loader), max_train_steps)
        bar = tqdm(total=steps, desc=f"PyTorch epoch {epoch + 1}/{epochs}", unit="step", mininterval=2.0)
        for step, (level_l, level_m, level_h, labels) in enumerate(train_loader):
            if max_train_steps is not None and step >= max_train_steps:
                break
            (x_l, m_l), (x_m, m_m), (x_h, m_h) = map(to_device, (level_l, level_m, level_h))
            labels = labels.to(device)
            logits_l, logits_m, logits_h = model(x_l, x_m, x_h, m_l, m_m, m_h, True)
            loss = hierarchy_loss(torch, logits_l, logits_m, logits_h, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clips += labels.shape[0]
            bar.update(1)
            bar.set_postfix(clips_s=f"{clips / (time.perf_counter() - epoch_start):.0f}", refresh=False)
        bar.close()
        if device != "cpu":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - epoch_start)
        epoch_clips.append(clips)
        train_clips += clips
        if eval_every_epoch and epoch + 1 < epochs:
            tick = time.perf_counter()
            _evaluate(torch, model, test_loader, device, max_eval_batches)
            eval_in_training_s += time.perf_counter() - tick

    eval_start = time.perf_counter()
    eval_clips, correct = _evaluate(torch, model, test_loader, device, max_eval_batches)
    eval_seconds = time.perf_counter() - eval_start
    train_seconds = sum(epoch_seconds)
    later = epoch_seconds[1:]  # the first epoch also starts the loader workers
    result = {"startup_s": startup_s, "epochs": epochs, "epoch_seconds": epoch_seconds, "train_clips": train_clips,
              "train_s": train_seconds, "train_clips_per_s": train_clips / train_seconds,
              "train_clips_per_s_steady": sum(epoch_clips[1:]) / sum(later) if later else None,
              "first_epoch_s": epoch_seconds[0], "eval_clips": eval_clips, "eval_s": eval_seconds,
              "eval_clips_per_s": eval_clips / eval_seconds, "eval_accuracy": correct / max(eval_clips, 1),
              "eval_in_training_s": eval_in_training_s,
              "num_workers": num_workers, "torch_version": torch.__version__, "device": device,
              "torch_threads": torch.get_num_threads()}
    if device != "cpu":
        result["peak_device_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del train_loader, test_loader  # persistent workers exit here, so their peak memory can be read
    return result


def _evaluate(torch, model, test_loader, device: str, max_batches: int | None) -> tuple[int, int]:
    """(clips, correct) over the test split, H level only, as the original evaluates."""
    model.eval()
    clips, correct = 0, 0
    with torch.no_grad():
        for batch_index, (_, _, (x_h, m_h), labels) in enumerate(tqdm(test_loader, desc="PyTorch evaluation",
                                                                       unit="batch", mininterval=2.0)):
            if max_batches is not None and batch_index >= max_batches:
                break
            logits = model(None, None, x_h.to(device), None, None, m_h.to(device), False)
            correct += int((logits.argmax(1).cpu() == labels).sum())
            clips += labels.shape[0]
    return clips, correct


def main(argv: list[str]) -> int:
    """`python -m pthnet_jax.benchmarks.torch_baseline SPEC.json OUT.json`: the baseline in a process of its own."""
    import gc
    import json
    import resource

    spec = json.loads(Path(argv[0]).read_text())
    result = run_baseline(Path(spec.pop("root")), Path(spec.pop("list_dir")), spec.pop("model_kwargs"), **spec)
    gc.collect()
    result["peak_host_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["peak_worker_memory_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    out = Path(argv[1])
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
