"""Write a synthetic stand-in for `vit_g_hybrid_pt_1200e_k710_ft.pth` and measure converting it.

    python scripts/make_synthetic_videomae.py OUT.pth            # write it (needs PyTorch; ~2 GB)
    python scripts/make_synthetic_videomae.py OUT.pth --measure  # then convert it, print peak memory

The file has the released checkpoint's container and tensors: `{'module': state_dict}`, the 526
keys of the fine-tuned ViT-g with their shapes (docs/videomae-reference.md §2), float16, random
values. It is for the memory measurement only (never commit it). `--measure` converts it with
`load_videomae` in a fresh process and reports the peak resident memory over the process's
baseline, next to the size of the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

GIANT = {"dim": 1408, "depth": 40, "hidden": 6144, "patch": 14, "tubelet": 2, "classes": 710}


def giant_shapes() -> dict[str, tuple[int, ...]]:
    """The fine-tuned ViT-g's keys and shapes, in the order the original's state_dict() lists them."""
    d, h = GIANT["dim"], GIANT["hidden"]
    shapes = {"patch_embed.proj.weight": (d, 3, GIANT["tubelet"], GIANT["patch"], GIANT["patch"]),
              "patch_embed.proj.bias": (d,)}
    for i in range(GIANT["depth"]):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,),
                       b + "attn.q_bias": (d,), b + "attn.v_bias": (d,),
                       b + "attn.qkv.weight": (3 * d, d),
                       b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                       b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                       b + "mlp.fc1.weight": (h, d), b + "mlp.fc1.bias": (h,),
                       b + "mlp.fc2.weight": (d, h), b + "mlp.fc2.bias": (d,)})
    shapes.update({"fc_norm.weight": (d,), "fc_norm.bias": (d,),
                   "head.weight": (GIANT["classes"], d), "head.bias": (GIANT["classes"],)})
    return shapes


def write(path: Path, seed: int = 0) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    state_dict = {name: (0.02 * torch.randn(shape, generator=generator)).to(torch.float16)
                  for name, shape in giant_shapes().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"module": state_dict}, tmp)
    os.replace(tmp, path)


_MEASURE = """
import json, resource, sys, time
import jax, numpy as np
from pthnet_jax.convert.videomae import load_videomae
from pthnet_jax.models.videomae import count_params

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

jax.numpy.zeros(1).block_until_ready()
baseline = rss_kib()
start = time.perf_counter()
model, variables = load_videomae(sys.argv[1])
jax.block_until_ready(variables)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
weights = sum(leaf.nbytes for leaf in jax.tree.leaves(variables))
print(json.dumps({"baseline_rss_gib": baseline / 2**20, "peak_rss_gib": peak / 2**20,
                  "peak_over_baseline_gib": (peak - baseline) / 2**20, "weights_gib": weights / 2**30,
                  "after_rss_gib": rss_kib() / 2**20, "seconds": seconds,
                  "num_params": count_params(variables["params"]),
                  "dtype": str(jax.tree.leaves(variables)[0].dtype),
                  "size": model.config.name}))
"""


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .pth file to write (or measure)")
    parser.add_argument("--measure", action="store_true", help="convert OUT in a fresh process and print "
                        "its peak memory (OUT is written first if it does not exist)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.measure and args.out.exists()):
        write(args.out, args.seed)
        print(f"wrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB, {len(giant_shapes())} keys)")
    if args.measure:
        print(json.dumps(measure(args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
