"""Speed benchmarks and the PyTorch code they compare against (not needed to train or evaluate).

- `speed`: `pthnet bench`, pthnet-jax vs a PyTorch baseline end to end (training and evaluation).
- `torch_baseline`: that baseline, the original's data path, in a process of its own.
- `torch_pthnet`: PTH-Net in PyTorch with the original's parameter names (also the tests' reference).
- `forward`, `pipeline`: micro-benchmarks of the forward pass and of the input pipelines
  (`python -m pthnet_jax.benchmarks.forward`, `python -m pthnet_jax.benchmarks.pipeline`).
"""
