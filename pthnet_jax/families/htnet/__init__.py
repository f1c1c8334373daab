"""HTNet (Wang et al., Neurocomputing 2024) as a family of the shared harness."""
