"""`pthnet convert SRC DST`: a `.pth` file -> checkpoint directory, or a checkpoint directory -> `.pth`."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable


def _describe(config) -> str:
    return (f"n_in={config.n_in} n_embd={config.n_embd} mlp_dim={config.mlp_dim} "
            f"num_classes={config.num_classes} arch={config.arch} thr_size={config.thr_size} k={config.k} "
            f"with_ln={config.with_ln} path_pdrop={config.path_pdrop}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_then_swap(dst: Path, write: Callable[[Path], Any]) -> Any:
    """Run `write` into a staging name beside `dst`, then put it in place.

    An existing `dst` (allowed by --force) is only removed once the new output is complete, so a
    failed conversion leaves it untouched.
    """
    dst = dst.absolute()
    staging = dst.with_name(f".{dst.name}.convert-{os.getpid()}")
    retired = dst.with_name(f".{dst.name}.replaced-{os.getpid()}")
    _remove(staging)
    try:
        result = write(staging)
    except BaseException:
        _remove(staging)
        raise
    if dst.exists() or dst.is_symlink():
        os.replace(dst, retired)
        os.replace(staging, dst)
        _remove(retired)
    else:
        os.replace(staging, dst)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pthnet convert", description="Convert between original PyTorch PTH-Net .pth files and "
        "pthnet-jax checkpoint directories. The direction follows SRC: a file is imported (no PyTorch "
        "needed, nothing in the file is executed), a directory is exported (needs PyTorch).")
    parser.add_argument("src", type=Path, help=".pth file, or a checkpoint directory")
    parser.add_argument("dst", type=Path, help="checkpoint directory to create, or .pth file to write")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)

    from pthnet_jax.convert.io import checkpoint_to_pth, pth_to_checkpoint
    from pthnet_jax.models.pthnet import count_params

    if not args.src.exists():
        print(f"pthnet convert: {args.src}: no such file or directory", file=sys.stderr)
        return 2
    if args.dst.exists() and not args.force:
        print(f"pthnet convert: {args.dst} exists (use --force to replace it)", file=sys.stderr)
        return 2
    if args.src.absolute() == args.dst.absolute():
        print(f"pthnet convert: SRC and DST are the same path ({args.src})", file=sys.stderr)
        return 2
    try:
        if args.src.is_file():
            imported = _write_then_swap(args.dst, lambda staging: pth_to_checkpoint(args.src, staging))
            n = count_params(imported.variables["params"])
            print(f"imported {args.src} -> {args.dst}: {n:,} parameters; {_describe(imported.config)}; "
                  f"epoch={imported.provenance['epoch']} best_acc={imported.provenance['best_acc']}")
        else:
            summary = _write_then_swap(args.dst, lambda staging: checkpoint_to_pth(args.src, staging))
            print(f"exported {args.src} -> {args.dst}: {summary['num_params']:,} parameters; "
                  f"{_describe(summary['config'])}; epoch={summary['epoch']}")
    except (ValueError, ImportError, OSError) as err:
        print(f"pthnet convert: {err}", file=sys.stderr)
        return 2
    return 0
