"""LSTPNet (Lu et al., PRCV 2023 / IVC 2024) as a family of the shared harness."""
