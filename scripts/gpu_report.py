"""The GPU report in one command: every part of `pthnet_jax.benchmarks.gpu_parts.PARTS`, each in a
process of its own with its own time budget; writes OUT/gpu_report.json, OUT/gpu_report.md (the
table) and OUT/gpu_report.log.

    python scripts/gpu_report.py --out OUT            # on one H200: under 8 minutes
    python scripts/gpu_report.py --out OUT --tiny     # every part at tiny sizes, on a CPU, in seconds
    python scripts/gpu_report.py --out OUT --budget torch_pthnet=0 --only ceiling pthnet_float32

Runs from a checkout with nothing installed (the device machine): the repository is put on the
path and `pthnet_jax.configs` / `pthnet_jax.convert` are mapped to their folders. The packages the
device lacks travel as wheels: `python scripts/fetch_gpu_wheels.py` (see README.md, "GPU").
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pthnet_jax.benchmarks.gpu_parts import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
