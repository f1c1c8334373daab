"""`pthnet convert SRC DST`: a `.pth` file -> checkpoint directory, or a checkpoint directory -> `.pth`."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def _describe(config) -> str:
    return (f"n_in={config.n_in} n_embd={config.n_embd} mlp_dim={config.mlp_dim} "
            f"num_classes={config.num_classes} arch={config.arch} thr_size={config.thr_size} k={config.k} "
            f"with_ln={config.with_ln} path_pdrop={config.path_pdrop}")


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
    from pthnet_jax.model import count_params

    if not args.src.exists():
        print(f"pthnet convert: {args.src}: no such file or directory", file=sys.stderr)
        return 2
    if args.dst.exists():
        if not args.force:
            print(f"pthnet convert: {args.dst} exists (use --force to replace it)", file=sys.stderr)
            return 2
        if args.dst.is_dir():
            shutil.rmtree(args.dst)
        else:
            args.dst.unlink()
    try:
        if args.src.is_file():
            imported = pth_to_checkpoint(args.src, args.dst)
            n = count_params(imported.variables["params"])
            print(f"imported {args.src} -> {args.dst}: {n:,} parameters; {_describe(imported.config)}; "
                  f"epoch={imported.provenance['epoch']} best_acc={imported.provenance['best_acc']}")
        else:
            summary = checkpoint_to_pth(args.src, args.dst)
            print(f"exported {args.src} -> {args.dst}: {summary['num_params']:,} parameters; "
                  f"{_describe(summary['config'])}; epoch={summary['epoch']}")
    except (ValueError, ImportError, OSError) as err:
        print(f"pthnet convert: {err}", file=sys.stderr)
        return 2
    return 0
