"""Experiment configs (ml-collections), one per benchmark; installed as `pthnet_jax.configs`."""
