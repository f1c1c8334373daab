"""A large legitimate checkpoint reads with about one copy of its weights in memory.

The shape of the VideoMAE V2 checkpoint (`{'module': state_dict}`, float16), scaled down to ~32 MiB:
every storage member is read straight into its final array (chunks of a few MiB in between), and a
tensor that covers its whole storage is that array, not a copy.
"""
import collections
import tracemalloc

import numpy as np

from pthnet_jax.convert import state_dict_from_file
from pthnet_jax.convert.torch_writer import write_torch_file


def test_large_checkpoint_reads_with_one_copy_of_the_weights(tmp_path):
    state = collections.OrderedDict()
    for i in range(8):
        state[f"blocks.{i}.mlp.fc1.weight"] = np.arange(1024 * 2048, dtype=np.float16).reshape(1024, 2048) + i
        state[f"blocks.{i}.mlp.fc1.bias"] = np.full(1024, i, np.float16)
    weights = sum(v.nbytes for v in state.values())
    path = tmp_path / "vit.pth"
    write_torch_file(path, {"module": state})
    expected = {k: v.copy() for k, v in list(state.items())[:3]}
    del state
    tracemalloc.start()
    try:
        loaded, meta = state_dict_from_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert meta == {} and len(loaded) == 16
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == np.float16
    assert weights > 30 << 20
    assert peak < weights + (12 << 20), (peak, weights)
