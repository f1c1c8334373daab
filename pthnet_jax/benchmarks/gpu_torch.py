"""GPU report parts: the PyTorch baselines on the same GPU and the same data.

- `pthnet_baseline`: PTH-Net in PyTorch (`torch_pthnet.TorchPTHNet`, the original's recipe), first
  with every feature resident on the device (windows sampled on the device, as pthnet-jax's resident
  mode does), then the original's data path (`torch_baseline.run_baseline`: three `.npy` reads per clip
  per epoch through a `DataLoader`) over the same clips written in the original's layout.
- `videomae_baseline`: VideoMAE V2 ViT-g (`torch_videomae.TorchVideoMAE`, random weights) on the
  extraction part's windows, batched across clips, bfloat16 autocast, `scaled_dot_product_attention`.
"""
from __future__ import annotations

import os
import time
from typing import Any

from pthnet_jax.benchmarks.gpu_data import FERV39K_SIZES, make_split, write_original_layout

TINY_SIZES = (64, 32)


def _level_batch(torch, level: dict, clips, length: int, train: bool, noise_std: float = 0.0005):
    """(B, C, T) features and (B, 1, T) masks of `clips`, windows picked by the original's rule
    (segments of the clip, a random window of each when training, its middle one otherwise)."""
    counts = level["counts"][clips].float()
    steps = torch.arange(length, device=counts.device, dtype=torch.float32)
    segment = counts[:, None] / length
    start, end = torch.round(segment * steps), torch.round(segment * (steps + 1))
    if train:
        pick = start + torch.floor(torch.rand(start.shape, device=counts.device) * (end - start))
    else:
        pick = start + torch.floor(segment / 2)
    short = counts[:, None] < length
    pick = torch.where(short, steps[None].expand_as(pick), pick)
    valid = torch.where(short, steps[None] < counts[:, None], torch.ones_like(short))
    rows = level["offsets"][clips][:, None] + torch.minimum(pick, counts[:, None] - 1).long()
    x = level["windows"][rows] * valid[..., None]
    if train and noise_std > 0:
        x = x + noise_std * torch.randn_like(x)
    return x.transpose(1, 2).contiguous(), valid[:, None]


def _resident(torch, arrays: dict, model_kwargs: dict, device: str, epochs: int, ctx) -> dict[str, Any]:
    from pthnet_jax.benchmarks.torch_baseline import hierarchy_loss
    from pthnet_jax.benchmarks.torch_pthnet import TorchPTHNet

    started = time.perf_counter()
    torch.manual_seed(0)
    model = TorchPTHNet(**model_kwargs).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    lengths = {"H": 16, "M": 8, "L": 4}

    def place(split):
        return {lvl: {"windows": torch.from_numpy(split.windows[lvl]).to(device),
                      "offsets": torch.from_numpy(split.offsets[lvl]).to(device),
                      "counts": torch.from_numpy(split.counts[lvl]).to(device)} for lvl in lengths}

    train, test = place(arrays["train"]), place(arrays["test"])
    train_labels = torch.from_numpy(arrays["train"].labels).long().to(device)
    test_labels = torch.from_numpy(arrays["test"].labels).long().to(device)
    startup = time.perf_counter() - started
    epoch_seconds, clips_done = [], 0
    for _ in range(epochs):
        if epoch_seconds and ctx.remaining() < 1.3 * epoch_seconds[-1]:
            break
        tick = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_labels), device=device)
        for first in range(0, len(order), 32):
            clips = order[first:first + 32]
            (x_l, m_l), (x_m, m_m), (x_h, m_h) = (_level_batch(torch, train[lvl], clips, lengths[lvl], True)
                                                  for lvl in ("L", "M", "H"))
            loss = hierarchy_loss(torch, *model(x_l, x_m, x_h, m_l, m_m, m_h, True), train_labels[clips])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(torch, device)
        epoch_seconds.append(time.perf_counter() - tick)
        clips_done += len(order)
    tick = time.perf_counter()
    model.eval()
    correct = 0
    with torch.no_grad():
        for first in range(0, len(test_labels), 32):
            clips = torch.arange(first, min(first + 32, len(test_labels)), device=device)
            x_h, m_h = _level_batch(torch, test["H"], clips, 16, False)
            correct += int((model(None, None, x_h, None, None, m_h, False).argmax(1) == test_labels[clips]).sum())
    _sync(torch, device)
    eval_s = time.perf_counter() - tick
    later = epoch_seconds[1:] or epoch_seconds
    return {"startup_s": startup, "epochs": len(epoch_seconds), "epoch_seconds": epoch_seconds,
            "train_clips_per_s": clips_done / sum(epoch_seconds),
            "train_clips_per_s_steady": len(train_labels) / (sum(later) / len(later)),
            "eval_clips_per_s": len(test_labels) / eval_s, "eval_accuracy": correct / len(test_labels)}


def _sync(torch, device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def _jax_off_the_gpu() -> None:
    """These parts import JAX modules (configs, window plans) but run nothing in JAX: should anything
    start a JAX backend, it must not take 75% of the GPU that PyTorch measures on."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pthnet_baseline(ctx) -> dict[str, Any]:
    _jax_off_the_gpu()
    import torch

    from pthnet_jax.benchmarks.speed import model_config
    from pthnet_jax.benchmarks.torch_baseline import run_baseline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    train, test = TINY_SIZES if ctx.tiny else FERV39K_SIZES
    arrays = {"train": make_split("train", train), "test": make_split("test", test)}
    model_kwargs = model_config("tiny" if ctx.tiny else "default").to_dict()
    epochs = 2
    result: dict[str, Any] = {"device": device, "torch_version": torch.__version__, "train_clips": train,
                              "test_clips": test}
    result["resident"] = _resident(torch, arrays, model_kwargs, device, epochs, ctx)
    ctx.record(**result)
    tick = time.perf_counter()
    list_dir = write_original_layout(ctx.scratch / "original-layout", arrays)
    result["original_layout_write_s"] = time.perf_counter() - tick
    ctx.record(**result)
    # Two epochs (the first starts the loader workers) when they fit, else epochs capped in steps.
    steps = -(-train // 32)
    epoch_s = max(result["resident"]["epoch_seconds"])
    left = ctx.remaining() - 10.0 - 2 * epoch_s * test / train  # and two evaluations of the test split
    cap = None if left > 3.5 * epoch_s else max(10, int(steps * max(left, 0.0) / (3.5 * epoch_s)))
    result["original_max_train_steps"] = cap
    original = run_baseline(ctx.scratch / "original-layout", list_dir, model_kwargs, epochs=epochs, device=device,
                            num_workers=0 if ctx.tiny else None, max_train_steps=cap,
                            train_list="train_All.txt", test_list="test_All.txt")
    result["original_data_path"] = {k: v for k, v in original.items() if k not in ("torch_version", "device")}
    resident, orig = result["resident"], result["original_data_path"]
    result["summary"] = (f"{device}: resident tensors {resident['train_clips_per_s_steady']:.0f} train / "
                         f"{resident['eval_clips_per_s']:.0f} eval clips/s; the original's data path "
                         f"{orig['train_clips_per_s_steady'] or orig['train_clips_per_s']:.0f} train / "
                         f"{orig['eval_clips_per_s']:.0f} eval clips/s ({orig['num_workers']} loader workers)")
    return result


def videomae_baseline(ctx) -> dict[str, Any]:
    _jax_off_the_gpu()
    import numpy as np
    import torch
    from torch.nn import functional as F

    from pthnet_jax.benchmarks.gpu_videomae import WINDOWS_FERV39K, backbone_config, synthetic_clips
    from pthnet_jax.benchmarks.torch_videomae import TorchVideoMAE, flops_per_window
    from pthnet_jax.video.windows import plan_clip

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = backbone_config(ctx.tiny)
    batch = 2 if ctx.tiny else 32
    dtype = torch.float32 if device == "cpu" else torch.bfloat16  # bf16 on a CPU: slow and untypical
    with torch.device(device):
        model = TorchVideoMAE(config, fused=True).eval()
    clips = synthetic_clips(ctx.tiny)

    def windows_of(frames):  # (W, 3, 16, 224, 224) bfloat16 on the device: frames resized once per clip
        resized = F.interpolate(torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255.0,
                                size=(224, 224), mode="bilinear", align_corners=False)
        plan = plan_clip(len(frames))
        index = np.concatenate([plan.frame_indices(d) for d in ("forward", "reverse")])
        return resized[torch.from_numpy(index).to(device)].permute(0, 2, 1, 3, 4).to(dtype)

    def run(limit_s: float, max_windows: int) -> tuple[int, float]:
        pending, done, started, i = [], 0, time.perf_counter(), 0
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=device != "cpu"):
            while done < max_windows and (done == 0 or time.perf_counter() - started < limit_s):
                pending.append(windows_of(clips[i % len(clips)]))
                i += 1
                while sum(len(p) for p in pending) >= batch:
                    stacked = torch.cat(pending)
                    model(stacked[:batch]).float().cpu()
                    pending, done = [stacked[batch:]], done + batch
        _sync(torch, device)
        return done, time.perf_counter() - started

    warm, warm_s = run(0.0, batch)  # one batch: kernels chosen, memory allocated
    result: dict[str, Any] = {"device": device, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
                              "size": config.embed_dim, "depth": config.depth,
                              "warmup_s": warm_s}
    ctx.record(**result)
    windows, seconds = run(max(ctx.remaining() - 5.0, 0.5), batch if ctx.tiny else 10 ** 9)
    rate = windows / seconds
    flops = flops_per_window(config)
    result.update(windows=windows, seconds=seconds, windows_per_s=rate, flops_per_window=flops,
                  achieved_tflops=rate * flops / 1e12,
                  ferv39k_hours=WINDOWS_FERV39K / rate / 3600 if rate else None)
    peak = ctx.peak_tflops(result["dtype"])
    result["fraction_of_measured_peak"] = result["achieved_tflops"] / peak if peak else None
    if device != "cpu":
        result["peak_device_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    result["summary"] = (f"{result['dtype']} batched: {rate:.1f} windows/s, {result['achieved_tflops']:.3g} TFLOP/s"
                         + (f" ({100 * result['fraction_of_measured_peak']:.0f}% of measured {result['dtype']} peak)"
                            if peak else "")
                         + f"; all of FERv39k ({WINDOWS_FERV39K:,} windows) in {result['ferv39k_hours']:.2f} h")
    return result
