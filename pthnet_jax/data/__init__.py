"""Feature datasets: the original layout -> TFDS, and the pyramid input pipeline.

    split = open_split(data_dir, "train")                    # an imported split (list order)
    for batch in iterate_batches(split, train=True, global_batch=32, seed=0, epoch=e): ...
    resident = resident_features(split)                      # or sample on the device yourself:
    batch = sample_batch(resident, indices, valid, seed=0, epoch=e, train=True)
"""
from pthnet_jax.data.benchmarks import BENCHMARKS, get_benchmark
from pthnet_jax.data.lists import DataListError
from pthnet_jax.data.pipeline import choose_mode, iterate_batches, resident_features
from pthnet_jax.data.sampling import (LEVELS, ResidentFeatures, batch_plan, epoch_order, finish_batch,
                                      level_lengths, sample_batch, sample_positions)
from pthnet_jax.data.source import FeatureSplit, open_split

__all__ = ["BENCHMARKS", "DataListError", "FeatureSplit", "LEVELS", "ResidentFeatures", "batch_plan",
           "choose_mode", "epoch_order", "finish_batch", "get_benchmark", "iterate_batches", "level_lengths",
           "open_split", "resident_features", "sample_batch", "sample_positions"]
