"""GPU report part: VideoMAE V2 ViT-g feature extraction at full size, random weights.

Synthetic FERv39k-like clips (8-48 frames, in memory: no video decoding, so no PyAV) go through
the project's `WindowEngine` (frames resized on the device once, every distinct window of strides
4/8/16 in both directions, fixed-size batches), in bfloat16 for as long as the budget allows and
then a few batches in float32. Windows/s, achieved TFLOP/s (the model's own FLOP count: XLA counts a
loop body once), fraction of the measured peak, peak device memory, and the time all of FERv39k
would take at that rate.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

WINDOWS_PER_DIRECTION_FERV39K = 172_043  # distinct windows of FERv39k's clips, one direction
WINDOWS_FERV39K = 2 * WINDOWS_PER_DIRECTION_FERV39K  # forward and reversed, as the features are used


def backbone_config(tiny: bool):
    from pthnet_jax.models.videomae import VideoMAEConfig

    if tiny:  # full input (16 x 224 x 224: the engine's size), a narrow single block
        return VideoMAEConfig(embed_dim=32, depth=1, num_heads=2, mlp_dim=64, patch_size=16)
    return VideoMAEConfig.from_name("giant")


def synthetic_clips(tiny: bool, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """`count` random uint8 clips of FERv39k-like lengths (8-48 frames), (F, H, W, 3)."""
    rng = np.random.default_rng(seed)
    side = 64 if tiny else 224
    lengths = [16, 24] if tiny else rng.integers(8, 49, count)
    return [rng.integers(0, 256, (int(n), side, side, 3), dtype=np.uint8) for n in lengths]


def random_variables(config, seed: int = 0):
    """Random `{"params": ...}` of `config` in one small program (no forward pass traced to run)."""
    import jax
    import jax.numpy as jnp

    from pthnet_jax.models.videomae import param_shapes

    shapes = param_shapes(config)

    def fill(key):
        leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
        out = []
        for i, (path, leaf) in enumerate(leaves):
            name = str(getattr(path[-1], "key", path[-1]))
            if name == "scale":
                out.append(jnp.ones(leaf.shape, leaf.dtype))
            elif name == "bias" or "bias" in name:
                out.append(jnp.zeros(leaf.shape, leaf.dtype))
            else:
                out.append(0.02 * jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype))
        return jax.tree_util.tree_unflatten(tree, out)

    return jax.jit(fill)(jax.random.key(seed))


def _device_peak_gib() -> float | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return peak / 2 ** 30 if peak is not None else None


def _extract(engine, clips, limit_s: float, max_windows: int) -> tuple[int, float]:
    """Feed clips (cycled) for up to `limit_s` seconds or `max_windows` windows; (windows, seconds)."""
    from pthnet_jax.video.windows import plan_clip

    first, started, i = engine.windows_computed, time.perf_counter(), 0
    while True:
        frames = clips[i % len(clips)]
        plan = plan_clip(len(frames))
        windows = np.concatenate([plan.frame_indices(d) for d in ("forward", "reverse")])
        engine.add_chunk(frames, windows, [(i, j) for j in range(len(windows))])
        engine.take_results()
        i += 1
        if engine.windows_computed - first >= max_windows or time.perf_counter() - started >= limit_s:
            break
    engine.flush()
    engine.take_results()
    return engine.windows_computed - first, time.perf_counter() - started


def videomae_jax(ctx) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from pthnet_jax.models.videomae import VideoMAE
    from pthnet_jax.video.engine import WindowEngine
    from pthnet_jax.video.extract import videomae_backbone

    config = backbone_config(ctx.tiny)
    batch = 2 if ctx.tiny else 32
    tick = time.perf_counter()
    variables = random_variables(config)
    jax.block_until_ready(variables)
    clips = synthetic_clips(ctx.tiny)
    flops = float(config.flops_per_clip)
    result: dict[str, Any] = {"embed_dim": config.embed_dim, "depth": config.depth, "batch_per_device": batch,
                              "devices": jax.local_device_count(), "flops_per_window": flops,
                              "init_s": time.perf_counter() - tick}
    ctx.record(**result)
    needed = 5.0  # seconds a dtype needs: more once the first compile has been timed
    for dtype, share, max_windows in (("bfloat16", 0.75, 10 ** 9), ("float32", 1.0, 4 * batch)):
        if ctx.remaining() < needed:
            result[dtype] = {"status": "skipped", "reason": f"{max(ctx.remaining(), 0):.0f} s of the budget left, "
                                                            f"{needed:.0f} s needed (compilation and a few batches)"}
            continue
        compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
        backbone = videomae_backbone(VideoMAE(config, dtype=compute), variables, name=f"vit-{dtype}")
        engine = WindowEngine(backbone, batch_per_device=batch)
        tick = time.perf_counter()
        _extract(engine, clips, 0.0, 1)  # compiles the resize and feature programs
        compile_s = time.perf_counter() - tick
        needed = 1.5 * compile_s + 10.0
        limit = max(share * (ctx.remaining() - 5.0), 0.1)
        windows, seconds = _extract(engine, clips, limit, 2 * batch if ctx.tiny else max_windows)
        rate = windows / seconds
        entry = {"status": "measured", "compile_and_first_batch_s": compile_s, "windows": windows,
                 "seconds": seconds, "windows_per_s": rate, "achieved_tflops": rate * flops / 1e12}
        peak = ctx.peak_tflops(dtype)
        entry["fraction_of_measured_peak"] = entry["achieved_tflops"] / peak if peak else None
        entry["ferv39k_hours"] = WINDOWS_FERV39K / rate / 3600
        entry["peak_device_memory_gib"] = _device_peak_gib()
        result[dtype] = entry
        ctx.record(**result)
    bf16 = result.get("bfloat16", {})
    if bf16.get("status") == "measured":
        fraction = bf16["fraction_of_measured_peak"]
        result["summary"] = (f"bf16 {bf16['windows_per_s']:.1f} windows/s, {bf16['achieved_tflops']:.3g} TFLOP/s"
                             + (f" ({100 * fraction:.0f}% of measured bf16 peak)" if fraction else "")
                             + f"; all of FERv39k ({WINDOWS_FERV39K:,} windows, both directions) in "
                               f"{bf16['ferv39k_hours']:.2f} h")
        f32 = result.get("float32", {})
        if f32.get("status") == "measured":
            result["summary"] += f"; fp32 {f32['windows_per_s']:.1f} windows/s"
    else:
        result["summary"] = "bf16 not measured: " + bf16.get("reason", "?")
    return result
