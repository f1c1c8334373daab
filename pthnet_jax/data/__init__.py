"""Feature datasets: the original layout -> TFDS, and the pyramid input pipeline."""
from pthnet_jax.data.benchmarks import BENCHMARKS, get_benchmark
from pthnet_jax.data.lists import DataListError
from pthnet_jax.data.pipeline import choose_mode, iterate_batches
from pthnet_jax.data.sampling import (LEVELS, ResidentFeatures, batch_plan, epoch_order, level_lengths,
                                      sample_batch)
from pthnet_jax.data.source import FeatureSplit, open_split

__all__ = ["BENCHMARKS", "DataListError", "FeatureSplit", "LEVELS", "ResidentFeatures", "batch_plan",
           "choose_mode", "epoch_order", "get_benchmark", "iterate_batches", "level_lengths",
           "open_split", "sample_batch"]
