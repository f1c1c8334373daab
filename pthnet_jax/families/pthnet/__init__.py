"""PTH-Net as a family of the shared harness."""
