"""`pthnet import-htnet`: HTNet's released flow images (a checkout, read in place) -> TFDS dataset."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet import-htnet", description=(
        "Import the flow images of a checkout of github.com/wangzhifengharrison/HTNet "
        "(combined_3_class2_for_optical_flow.csv + datasets/STSNet_whole_norm_u_v_os/) into one TFDS "
        "array_record dataset, assembling the model's 28x28 mosaics from a landmark table."))
    parser.add_argument("--repo", help="the checkout (read in place, nothing copied)")
    parser.add_argument("--out", help="dataset directory to create (must not exist)")
    parser.add_argument("--landmarks", help="landmark table (.csv: sample,x0,y0,...,x4,y4,fallback or .npz); "
                        "without it every sample uses the original's fallback landmarks")
    parser.add_argument("--compute-landmarks", metavar="TABLE", help="compute the table from the checkout's "
                        "apex frames as the original does (needs the 'htnet-landmarks' extra: facenet-pytorch), "
                        "write it to TABLE (.csv) and exit")
    parser.add_argument("--synthetic", metavar="DIR", help="write a synthetic checkout (random flow images with a "
                        "visible class, same layout) to DIR and exit")
    parser.add_argument("--subjects", type=int, default=6, help="subjects of --synthetic (default 6)")
    args = parser.parse_args(argv)
    from pthnet_jax.families.htnet.flow import HTNetDataError

    try:
        if args.synthetic:
            from pthnet_jax.families.htnet.dataset import write_synthetic

            print(f"synthetic checkout -> {write_synthetic(args.synthetic, subjects=args.subjects)}")
            return 0
        if not args.repo:
            parser.error("--repo is required")
        if args.compute_landmarks:
            from pthnet_jax.families.htnet.landmarks import compute_table

            compute_table(args.repo, args.compute_landmarks)
            return 0
        if not args.out:
            parser.error("--out is required")
        from pthnet_jax.families.htnet.dataset import import_checkout

        import_checkout(args.repo, args.out, args.landmarks)
    except (HTNetDataError, FileExistsError, ImportError) as err:
        print(f"pthnet import-htnet: {err}", file=sys.stderr)
        return 2
    return 0
