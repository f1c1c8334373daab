"""The tests' PyTorch HTNet: written from the reference doc, kept in `pthnet_jax.benchmarks.torch_htnet`
(where the GPU report times it too; torch is only imported under `pthnet_jax.benchmarks`)."""
from pthnet_jax.benchmarks.torch_htnet import ReferenceHTNet, randomise  # noqa: F401
