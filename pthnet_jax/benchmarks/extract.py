"""Extraction speed: this project's `pthnet extract` vs the original's way, on the same machine,
backbone and clips, each side in a process of its own.

    python -m pthnet_jax.benchmarks.extract [--size small --depth 4] [--clips 4 --frames 40]
        [--bf16] [--demo-workdir DIR] [--out DIR]

Sides (all produce the features of every clip at strides 4, 8, 16, forward and reversed):
- `jax`: `pthnet_jax.video.extract.extract` (distinct windows once, batches on every local device,
  decoding in background threads, resize on the device); timed on a second run after a first one
  that compiles; windows/s, XLA cost analysis FLOPs per window and achieved FLOP/s (and the fraction
  of the device's peak when known), peak memory, decode share of the wall time.
- `torch_f32_one`: the original's way: decode, then for every stride and direction, for every window
  its 16 frames / 255 resized with `F.interpolate` and one float32 forward pass (hand-written attention).
- `torch_bf16_batched`: the strongest PyTorch a user would write: distinct windows once, frames
  resized once per clip, batches of windows, bfloat16 autocast, `scaled_dot_product_attention`.
Then bfloat16 vs float32 in JAX: the change in features and, with `--demo-workdir` (a directory of
`pthnet demo-video --workdir DIR`), the agreement of PTH-Net's predictions on the demo's test videos.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Dense bfloat16 peak FLOP/s of some accelerators (vendor figures, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12, "TPU v5e": 197e12}


def _config(size: str, depth: int | None):
    from pthnet_jax.models.videomae import VideoMAEConfig

    return VideoMAEConfig.from_name(size, **({"depth": depth} if depth else {}))


def _params(config, seed: int = 0):
    import jax

    from pthnet_jax.models.videomae import init_params

    return init_params(config, jax.random.key(seed))


def make_clips(out: Path, count: int, frames: list[int], seed: int = 0) -> Path:
    """`count` synthetic clips, their lengths cycling through `frames`; also OUT/../warmup/ with one clip."""
    import shutil

    from pthnet_jax.commands.demo_video import synth_frames, write_video

    rng = np.random.default_rng(seed)
    for i in range(count):
        clip = synth_frames(i % 7, rng)
        index = np.arange(frames[i % len(frames)]) % len(clip)  # loop the synthetic clip to the wanted length
        write_video(out / f"clip_{i:03d}.mp4", clip[index])
    (out.parent / "warmup").mkdir(exist_ok=True)
    shutil.copy(out / "clip_000.mp4", out.parent / "warmup" / "clip_000.mp4")
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _device_peak() -> dict:
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    kind = getattr(device, "device_kind", device.platform)
    peak = next((v for k, v in PEAK_BF16.items() if k.lower() in str(kind).lower()), None)
    return {"device": str(kind), "platform": device.platform, "peak_bf16_flops": peak,
            "device_peak_bytes": (stats or {}).get("peak_bytes_in_use")}


def run_jax(args) -> dict:
    import shutil

    import jax.numpy as jnp

    from pthnet_jax.models.videomae import VideoMAE
    from pthnet_jax.video.engine import WindowEngine
    from pthnet_jax.video.extract import extract, videomae_backbone

    config = _config(args.size, args.depth)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    backbone = videomae_backbone(VideoMAE(config, dtype=dtype), _params(config), name=f"{args.size}-{config.depth}")
    out = Path(args.scratch) / f"jax_{args.dtype}"
    started = time.perf_counter()  # compile (and one clip) first, then time the whole set
    extract(args.videos.parent / "warmup", out, "BENCH", backbone, batch_per_device=args.batch, progress=False)
    cold = {"seconds": time.perf_counter() - started}
    shutil.rmtree(out)
    warm = extract(args.videos, out, "BENCH", backbone, batch_per_device=args.batch, progress=False)
    engine = WindowEngine(backbone, batch_per_device=args.batch)
    cost = engine.step_cost()
    per_window = cost["flops"] / (len(engine.devices) * engine.batch)
    # XLA counts a loop body once (the chunked attention's loop): the model's own count is the one to use.
    model_flops = float(getattr(config, "flops_per_clip", per_window))
    device = _device_peak()
    achieved = model_flops * warm["windows_per_second"]
    result = {"side": f"jax_{args.dtype}", "cold_seconds": cold["seconds"], "seconds": warm["seconds"],
              "distinct_windows": warm["distinct_windows"], "listed_windows": warm["listed_windows"],
              "windows_per_second": warm["windows_per_second"],
              "listed_windows_per_second": warm["listed_windows"] / warm["seconds"],
              "decode_share": warm["decode_wait_seconds"] / warm["seconds"],
              "decode_busy_seconds": warm["decode_busy_seconds"],
              "xla_flops_per_window": per_window, "model_flops_per_window": model_flops,
              "achieved_flops_per_second": achieved,
              "fraction_of_peak": achieved / device["peak_bf16_flops"] if device["peak_bf16_flops"] else None,
              "batch_per_device": engine.batch, "peak_host_rss_mb": _peak_rss_mb(), **device}
    features = {p.relative_to(out).as_posix(): np.load(p) for p in sorted(out.rglob("*.npy"))}
    np.savez(Path(args.scratch) / f"features_jax_{args.dtype}.npz", **features)
    return result


def run_torch(args, batched: bool) -> dict:
    import torch
    from torch.nn import functional as F

    from pthnet_jax.benchmarks.torch_videomae import from_flax
    from pthnet_jax.video.decode import find_clips, load_clip
    from pthnet_jax.video.windows import plan_clip, window_starts

    device = torch.device(args.torch_device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    config = _config(args.size, args.depth)
    model = from_flax(config, _params(config), fused=batched).to(device)
    clips = find_clips(args.videos)
    decode_seconds, windows, started = 0.0, 0, time.perf_counter()
    with torch.inference_mode():
        for path in clips:
            t0 = time.perf_counter()
            frames = load_clip(path)
            decode_seconds += time.perf_counter() - t0
            if not batched:
                for ordered in (frames, frames[::-1]):
                    for stride in (4, 8, 16):
                        for start in window_starts(len(ordered), stride):
                            index = np.minimum(np.arange(start, start + 16), len(ordered) - 1)
                            clip = torch.from_numpy(np.ascontiguousarray(ordered[index])).to(device)
                            clip = clip.permute(0, 3, 1, 2).float() / 255.0
                            clip = F.interpolate(clip, size=(224, 224), mode="bilinear", align_corners=False)
                            model(clip.permute(1, 0, 2, 3)[None]).cpu()  # the original saves each window's features
                            windows += 1
            else:
                resized = F.interpolate(torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255.0,
                                        size=(224, 224), mode="bilinear", align_corners=False)  # (N, 3, 224, 224)
                plan = plan_clip(len(frames))
                index = torch.from_numpy(np.concatenate([plan.frame_indices(d) for d in ("forward", "reverse")])).to(device)
                size = args.batch or (2 if device.type == "cpu" else 32)
                for first in range(0, len(index), size):
                    batch = resized[index[first:first + size]].permute(0, 2, 1, 3, 4)  # (B, 3, 16, 224, 224)
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        model(batch).float().cpu()
                    windows += len(batch)
    seconds = time.perf_counter() - started
    listed = sum(plan_clip(len(load_clip(p))).num_listed for p in clips)
    return {"side": "torch_bf16_batched" if batched else "torch_f32_one", "seconds": seconds,
            "windows_computed": windows, "listed_windows": listed, "listed_windows_per_second": listed / seconds,
            "windows_per_second": windows / seconds, "decode_share": decode_seconds / seconds,
            "peak_host_rss_mb": _peak_rss_mb(), "torch_threads": torch.get_num_threads(), "torch_device": str(device)}


def bf16_drift(scratch: Path) -> dict:
    f32 = np.load(scratch / "features_jax_float32.npz")
    bf16 = np.load(scratch / "features_jax_bfloat16.npz")
    rel = [np.abs(bf16[k] - f32[k]).max() / np.abs(f32[k]).max() for k in f32.files]
    cos = [float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
           for k in f32.files for a, b in zip(f32[k], bf16[k])]
    return {"max_rel_feature_change": float(max(rel)), "mean_rel_feature_change": float(np.mean(rel)),
            "min_cosine": float(min(cos))}


def demo_agreement(workdir: Path) -> dict:
    """f32 vs bf16 backbone on the demo's test videos: PTH-Net prediction agreement."""
    import jax.numpy as jnp

    from pthnet_jax import load_model
    from pthnet_jax.commands.demo_video import demo_backbone
    from pthnet_jax.video.predict import predict_videos

    model, variables = load_model(workdir / "run" / "best")
    lines = [line.split() for line in (workdir / "labels.txt").read_text().splitlines() if line.endswith(" test")]
    paths = [workdir / "videos" / rel for rel, _, _ in lines]
    f32, bf16 = demo_backbone(), demo_backbone(dtype=jnp.bfloat16)  # same seed: the same weights
    p32 = predict_videos(paths, f32, model, variables)
    p16 = predict_videos(paths, bf16, model, variables)
    agree = float(np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(p32, p16)]))
    return {"demo_test_videos": len(paths), "prediction_agreement": agree,
            "max_probability_change": float(max(np.abs(a - b).max() for a, b in zip(p32, p16)))}


def _child(side: str, args) -> dict:
    """Run one side in a fresh process; its last stdout line is its JSON result."""
    command = [sys.executable, "-m", "pthnet_jax.benchmarks.extract", "--videos", str(args.videos),
               "--scratch", str(args.scratch), "--size", args.size]
    command += ["--batch", str(args.batch)] if args.batch else []
    command += ["--side", "jax", "--dtype", side[4:]] if side.startswith("jax_") else \
        ["--side", side, "--torch-device", args.torch_device]
    if args.depth:
        command += ["--depth", str(args.depth)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"benchmark side {side} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pthnet bench-extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="VideoMAE size (small, base, large, huge, giant)")
    parser.add_argument("--depth", type=int, help="override the number of blocks (a shallower backbone)")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 24, 33, 40],
                        help="clip lengths, cycled over the clips (default: FERv39k-like short clips)")
    parser.add_argument("--batch", type=int, help="windows per device per step (JAX) / per batch (torch); "
                                                   "default 2 on CPU, 32 on accelerators")
    parser.add_argument("--bf16", action="store_true", help="also run JAX in bfloat16 and measure the drift")
    parser.add_argument("--demo-workdir", type=Path, help="a `pthnet demo-video --workdir` directory for the "
                                                          "bf16 prediction agreement")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--torch-device", default="cpu", help="device of the PyTorch sides (cuda with a CUDA build)")
    parser.add_argument("--out", type=Path, default=Path("pthnet-bench-extract"))
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--videos", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:  # one side, in its own process
        result = run_jax(args) if args.side == "jax" else run_torch(args, batched=args.side == "torch_bf16_batched")
        print(json.dumps(result))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pthnet-bench-extract-") as scratch:
        args.scratch = Path(scratch)
        args.videos = make_clips(Path(scratch) / "videos", args.clips, args.frames)
        results = {"config": {"size": args.size, "depth": args.depth or _config(args.size, None).depth,
                              "clips": args.clips, "frames": args.frames, "batch": args.batch,
                              "cpu_count": os.cpu_count()}}
        sides = ["jax_float32"] + (["jax_bfloat16"] if args.bf16 else [])
        sides += [] if args.skip_torch else ["torch_f32_one", "torch_bf16_batched"]
        for side in sides:
            print(f"running {side} ...", flush=True)
            results[side] = _child(side, args)
        if args.bf16:
            results["bf16_vs_f32"] = bf16_drift(Path(scratch))
    if args.demo_workdir:
        results["bf16_demo"] = demo_agreement(args.demo_workdir)
    jax_side = results["jax_float32"]
    for side in ("torch_f32_one", "torch_bf16_batched"):
        if side in results:
            results[f"speedup_vs_{side}"] = results[side]["seconds"] / jax_side["seconds"]
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    _print_table(results)
    print(f"-> {args.out / 'results.json'}")
    return 0


def _print_table(results: dict) -> None:
    rows = [("side", "seconds", "windows/s", "listed windows/s", "decode share", "peak RSS MB")]
    for side in ("jax_float32", "jax_bfloat16", "torch_f32_one", "torch_bf16_batched"):
        if side in results:
            r = results[side]
            rows.append((side, f"{r['seconds']:.1f}", f"{r['windows_per_second']:.2f}",
                         f"{r['listed_windows_per_second']:.2f}", f"{r['decode_share']:.3f}",
                         f"{r['peak_host_rss_mb']:.0f}"))
    for row in rows:
        print("  ".join(str(c).ljust(18) for c in row))
    j = results["jax_float32"]
    print(f"JAX: {j['model_flops_per_window'] / 1e9:.1f} GFLOP/window ({j['xla_flops_per_window'] / 1e9:.1f} by XLA's "
          f"cost analysis), {j['achieved_flops_per_second'] / 1e9:.1f} "
          f"GFLOP/s achieved on {j['device']}; compile + first clip {j['cold_seconds']:.1f}s (not in the rate)")
    for side in ("torch_f32_one", "torch_bf16_batched"):
        if f"speedup_vs_{side}" in results:
            print(f"speed-up over {side}: {results[f'speedup_vs_{side}']:.2f}x (same clips, same output files)")
    if "bf16_vs_f32" in results:
        print(f"bf16 vs f32 features: {results['bf16_vs_f32']}")
    if "bf16_demo" in results:
        print(f"bf16 vs f32 PTH-Net predictions on the demo's test videos: {results['bf16_demo']}")


if __name__ == "__main__":
    sys.exit(main())
