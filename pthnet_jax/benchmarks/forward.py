"""Inference speed: jit-compiled Flax PTH-Net vs the eager PyTorch reference, same weights, same CPU.

Measures the evaluation path of the original (H level only, `train=False`) at the default config,
batch 32, T=16, and prints clips/s for both. The PyTorch model is `TorchPTHNet` (the original's
names and layouts) with random weights; the Flax params are converted from it with the converter's
`torch_to_flax`, so both compute the same function (checked before timing).

    python -m pthnet_jax.benchmarks.forward [--batch 32] [--repeats 30] [--torch-threads N] [--single-thread]

The two frameworks' timed calls alternate, so load from other processes on a shared machine hits
both alike; medians are reported. `--single-thread` pins both to one thread (XLA's Eigen pool off,
torch.set_num_threads(1)), which is the fairest comparison on a busy machine: PyTorch's OpenMP pool
slows down badly when another process holds one of its cores.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _time_alternating(fns: list, repeats: int) -> list[list[float]]:
    """Seconds per call of each function, calls interleaved: f0, f1, f0, f1, ..."""
    seconds: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, seconds):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per framework")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after the first")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads (0: PyTorch's default for this machine)")
    parser.add_argument("--single-thread", action="store_true",
                        help="one thread for both XLA (no Eigen pool) and PyTorch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.single_thread:  # before jax is imported
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()
        args.torch_threads = 1

    import jax
    import torch

    from pthnet_jax.convert.mapping import torch_to_flax
    from pthnet_jax.benchmarks.torch_pthnet import TorchPTHNet
    from pthnet_jax.models.pthnet import ModelConfig, PTHNet, count_params

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    config = ModelConfig()
    torch.manual_seed(args.seed)
    reference = TorchPTHNet(**config.to_dict()).eval()
    _, params, _, _ = torch_to_flax({k: v.numpy() for k, v in reference.state_dict().items()})
    params = jax.device_put(params)

    length = config.level_lengths["H"]
    rng = np.random.default_rng(args.seed)
    valid = rng.integers(1, length + 1, size=args.batch)  # clips of 1..T valid steps
    mask = np.arange(length)[None] < valid[:, None]
    features = (rng.normal(size=(args.batch, length, config.n_in)) * mask[..., None]).astype(np.float32)

    model = PTHNet(config)

    @jax.jit
    def flax_forward(params, features, mask):
        return model.apply({"params": params}, {"H": features}, {"H": mask}, train=False)["H"]

    features_jax, mask_jax = jax.device_put(features), jax.device_put(mask)
    start = time.perf_counter()
    flax_logits = np.asarray(flax_forward(params, features_jax, mask_jax))
    compile_s = time.perf_counter() - start

    features_torch = torch.from_numpy(features).transpose(1, 2).contiguous()  # (B, C, T)
    mask_torch = torch.from_numpy(mask)[:, None]                               # (B, 1, T)

    def torch_forward():
        with torch.inference_mode():
            return reference(None, None, features_torch, None, None, mask_torch, False)

    torch_logits = torch_forward().numpy()
    difference = float(np.abs(flax_logits - torch_logits).max() / np.abs(torch_logits).max())
    if difference > 1e-4:
        raise SystemExit(f"outputs differ (max rel. difference {difference:.2e}): not benchmarking")

    def run_flax():
        flax_forward(params, features_jax, mask_jax).block_until_ready()

    for _ in range(args.warmup):
        run_flax()
        torch_forward()
    flax_s, torch_s = _time_alternating([run_flax, torch_forward], args.repeats)

    xla_threads = ", single thread" if args.single_thread else ""
    print(f"PTH-Net default config ({count_params(params):,} parameters), H level eval, batch "
          f"{args.batch}, T={length}, float32; {os.cpu_count()} CPU cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}{xla_threads}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); outputs agree to {difference:.1e} (relative)")
    print(f"flax jit compile (first call): {compile_s:.2f} s")
    for name, seconds in (("flax jit", flax_s), ("torch eager", torch_s)):
        median = statistics.median(seconds)
        print(f"{name:12s} median {median * 1e3:8.2f} ms/batch  (min {min(seconds) * 1e3:.2f})  "
              f"{args.batch / median:9.1f} clips/s")
    print(f"speed-up flax/torch: {statistics.median(torch_s) / statistics.median(flax_s):.2f}x")


if __name__ == "__main__":
    main()
