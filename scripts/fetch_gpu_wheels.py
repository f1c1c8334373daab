"""Download here the wheels that the GPU report (`scripts/gpu_report.py`) needs and the device
machine lacks, into `.whl/` (ignored by git; the `run` tool carries it with `carry: [".whl"]`).

    python scripts/fetch_gpu_wheels.py [--dest .whl]

The device machine (one H200) has Python 3.12, jax 0.11 with the CUDA 13 plugin, flax, optax,
orbax-checkpoint, numpy, absl-py, PyYAML, protobuf, matplotlib, tqdm and torch, and reaches no
package index. The report's import chain (checked by each part: `imported_packages` in
gpu_report.json) needs two more small pure-Python packages: ml-collections (configs) and
tensorboardX (the trainer's event files). It builds its data in memory, so it needs neither
tensorflow-datasets nor array_record nor grain, and it decodes no video (no PyAV). pthnet-jax itself
travels as the working tree (the report maps `pthnet_jax.configs` / `pthnet_jax.convert` itself).

Each wheel's own requirements are checked against what the device has; the total is printed (it
counts toward the 64 MiB that travel with a call). Wheels of other versions in DEST are removed:
two versions of one package stop the install there.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Pinned: the versions the project is tested with here.
WHEELS = {"ml-collections": "1.1.0", "tensorboardX": "2.6.5"}
# Python packages of the device image ('cuda', as listed on 2026-11-17), normalised names.
DEVICE_HAS = {
    "absl-py", "chex", "etils", "filelock", "flax", "fsspec", "jax", "jax-cuda13-pjrt", "jax-cuda13-plugin",
    "jaxlib", "matplotlib", "ml-dtypes", "msgpack", "numpy", "optax", "orbax-checkpoint", "packaging",
    "pillow", "protobuf", "psutil", "pyyaml", "rich", "safetensors", "setuptools", "six", "tensorstore",
    "torch", "tqdm", "treescope", "typing-extensions", "wrapt", "zipp", "humanize", "simplejson",
    "opt-einsum", "toolz", "scipy", "pyarrow", "pandas"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(wheel: Path) -> list[str]:
    """Requires-Dist names of a wheel, leaving out the ones behind an extra."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode("utf-8", "replace")
    names = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            names.append(normalise(re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip(), maxsplit=1)[0]))
    return names


def _wheel_name(wheel: Path) -> str:
    return normalise(wheel.name.split("-")[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    wanted = {normalise(name): version for name, version in WHEELS.items()}
    for stale in args.dest.glob("*.whl"):
        name, version = _wheel_name(stale), stale.name.split("-")[1]
        if wanted.get(name) != version:
            print(f"removing {stale.name} (not a wheel of this list)")
            stale.unlink()
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", args.python_version, "--implementation", "cp", "-d", str(args.dest)]
    command += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command += [f"{name}=={version}" for name, version in WHEELS.items()]
    done = subprocess.run(command)
    if done.returncode:
        print(f"pip download failed (exit {done.returncode}): {' '.join(command)}", file=sys.stderr)
        return done.returncode
    wheels = sorted(args.dest.glob("*.whl"))
    have = DEVICE_HAS | {_wheel_name(w) for w in wheels}
    total = 0
    missing = []
    for wheel in wheels:
        size = wheel.stat().st_size
        total += size
        lacking = [r for r in requirements(wheel) if r not in have]
        missing += lacking
        print(f"{wheel.name:<50} {size / 1024:8.1f} KiB" + (f"  needs {lacking} (not on the device)" if lacking else ""))
    print(f"{len(wheels)} wheels, {total / 2**20:.2f} MiB in {args.dest} (the carry limit is 64 MiB with the tree)")
    if missing:
        print(f"requirements the device may lack: {sorted(set(missing))}; add them to WHEELS", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
