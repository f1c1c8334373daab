"""`pthnet import-clips`: LSTPNet clip lists (frame folders or videos) -> a TFDS frames dataset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pthnet import-clips", description=__doc__,
        epilog="List lines are `<frame folder or video> <frame count> <label>`, paths relative to "
               "--root. Frames are stored encoded (folders: the files' own bytes; videos: PNG). "
               "Clips under 16 frames are kept; the summary says how many the original's filter drops.")
    parser.add_argument("--list-train", type=Path, help="training list file")
    parser.add_argument("--list-test", type=Path, help="test list file")
    parser.add_argument("--root", required=True, type=Path, help="folder the list paths are relative to")
    parser.add_argument("--out", required=True, type=Path, help="data directory to create")
    parser.add_argument("--benchmark", required=True, help="DFEW, FERv39k, AFEW (their class orders and "
                        "frame files) or custom (needs --classes)")
    parser.add_argument("--classes", help="comma-separated class names in label order (overrides the "
                        "benchmark's)")
    parser.add_argument("--fold", type=int, help="DFEW fold (1..5), recorded in the metadata")
    parser.add_argument("--strip-prefix", help="remove this prefix from listed paths (the original's "
                        "lists hold absolute paths, e.g. D:/DL_Study/Expression_Data/)")
    parser.add_argument("--frame-pattern", choices=("jpg", "all", "image"), help="which files of a folder "
                        "are frames (default: jpg for DFEW/FERv39k, all for AFEW, image for custom)")
    parser.add_argument("--skip-bad", action="store_true", help="skip invalid clips, write skipped.json")
    parser.add_argument("--no-check", action="store_true", help="do not decode every frame at import")
    parser.add_argument("--threads", type=int, default=4, help="reader threads (default 4)")
    args = parser.parse_args(argv)
    from pthnet_jax.families.lstpnet.clip_import import import_clips
    from pthnet_jax.families.lstpnet.clips import ClipListError

    try:
        import_clips(args.list_train, args.list_test, args.root, args.out, benchmark=args.benchmark,
                     classes=args.classes, fold=args.fold, strip_prefix=args.strip_prefix,
                     frame_pattern=args.frame_pattern, skip_bad=args.skip_bad, check=not args.no_check,
                     num_threads=args.threads)
    except (ClipListError, ValueError, OSError) as err:
        print(f"pthnet import-clips: {err}", file=sys.stderr)
        return 2
    return 0
