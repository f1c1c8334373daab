"""`pthnet synth-clips`: synthetic LSTPNet clips (JPEG frame folders + list files), nothing downloaded."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet synth-clips", description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="folder to create (ROOT for import-clips)")
    parser.add_argument("--clips", type=int, default=70, help="training clips (default 70)")
    parser.add_argument("--test-clips", type=int, help="test clips (default half the training clips)")
    parser.add_argument("--benchmark", default="DFEW", help="class names and order to use (default DFEW)")
    parser.add_argument("--min-frames", type=int, default=10, help="shortest clip (default 10)")
    parser.add_argument("--max-frames", type=int, default=40, help="longest clip (default 40)")
    parser.add_argument("--size", default="40x32", help="frame WIDTHxHEIGHT (default 40x32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from pthnet_jax.families.lstpnet.clip_synth import write_synth_clips

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        lists = write_synth_clips(args.out, clips=args.clips, test_clips=args.test_clips,
                                  benchmark=args.benchmark, min_frames=args.min_frames,
                                  max_frames=args.max_frames, width=width, height=height, seed=args.seed)
    except (ValueError, OSError) as err:
        print(f"pthnet synth-clips: {err}", file=sys.stderr)
        return 2
    print(f"wrote synthetic clips under {args.out}: lists {', '.join(str(p) for p in lists.values())}")
    return 0
