"""Speed benchmark: pthnet-jax vs a PyTorch baseline (same as `pthnet bench`; see its --help)."""
import sys

from pthnet_jax.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
