"""GPU report parts: the environment (device, driver, versions) and the ceilings (matmul rate, copy
bandwidth) that every fraction of peak in the report is taken against."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
            "numpy", "ml-collections", "tensorboardX", "torch")


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> dict[str, str]:
    if not shutil.which("nvidia-smi"):
        return {}
    fields = ("name", "driver_version", "memory.total", "clocks.max.sm", "power.limit")
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    first = done.stdout.strip().splitlines()[:1]
    return dict(zip(fields, (v.strip() for v in first[0].split(",")))) if first else {}


def environment(ctx) -> dict[str, Any]:
    import platform

    import jax

    devices = jax.devices()
    smi = _nvidia_smi()
    result = {"platform": devices[0].platform, "device_kind": str(devices[0].device_kind),
              "device_count": len(devices), "driver": smi.get("driver_version"), "nvidia_smi": smi,
              "versions": {p: _version(p) for p in PACKAGES}, "python": platform.python_version(),
              "cpu_count": os.cpu_count(), "machine": platform.platform()}
    result["summary"] = (f"{len(devices)} x {result['device_kind']} ({result['platform']}), driver "
                         f"{result['driver'] or '-'}, jax {jax.__version__}, torch {result['versions']['torch'] or '-'}")
    return result


def _median_seconds(function, *args, repeats: int) -> float:
    import numpy as np

    function(*args).block_until_ready()  # compile
    function(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args).block_until_ready()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def ceiling(ctx) -> dict[str, Any]:
    """Matmul rate (n^3 on random data; median of timed products after warm-up) in bfloat16, in
    float32 at JAX's default precision (what the float32 model runs at: TF32 on the matrix units
    where XLA uses it) and at HIGHEST precision; and the device-to-device copy bandwidth."""
    import jax
    import jax.numpy as jnp

    n, repeats = (256, 3) if ctx.tiny else (8192, 10)
    result: dict[str, Any] = {"matmul_n": n}
    key_a, key_b = jax.random.split(jax.random.key(0))
    for label, dtype, precision in (("bfloat16", jnp.bfloat16, None), ("float32", jnp.float32, None),
                                    ("float32_highest", jnp.float32, jax.lax.Precision.HIGHEST)):
        if ctx.remaining() < 3:
            result[f"{label}_skipped"] = "budget spent"
            continue
        a = jax.random.normal(key_a, (n, n), dtype)
        b = jax.random.normal(key_b, (n, n), dtype)
        product = jax.jit(lambda x, y, p=precision: jnp.matmul(x, y, precision=p))
        seconds = _median_seconds(product, a, b, repeats=repeats)
        result[f"{label}_tflops"] = 2 * n ** 3 / seconds / 1e12
        ctx.record(**result)
    size = (1 << 20) if ctx.tiny else (1 << 30)  # float32 elements: 4 MiB / 4 GiB
    x = jax.random.normal(key_a, (size,), jnp.float32)
    seconds = _median_seconds(jax.jit(lambda v: v * 2.0), x, repeats=repeats)
    result["copy_tb_per_s"] = 2 * 4 * size / seconds / 1e12  # bytes read + written
    result["summary"] = (f"matmul {n}^3: bf16 {result.get('bfloat16_tflops', float('nan')):.1f}, fp32 (default "
                         f"precision) {result.get('float32_tflops', float('nan')):.1f}, fp32 highest "
                         f"{result.get('float32_highest_tflops', float('nan')):.1f} TFLOP/s; copy "
                         f"{result['copy_tb_per_s']:.2f} TB/s")
    return result
