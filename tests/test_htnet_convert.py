"""HTNet per-subject checkpoints: strict reading without torch, config from shapes, bit-exact round trip."""
from __future__ import annotations

import collections
import zipfile

import jax
import numpy as np
import pytest
import torch

from htnet_torch_reference import ReferenceHTNet, randomise
from pthnet_jax.families.htnet.convert import (HTNetMappingError, detect, export_pth, infer_config, load_pth,
                                               torch_to_flax)
from pthnet_jax.families.htnet.model import HTNetConfig

SMALL = HTNetConfig(image_size=56, patch_size=2, dim=32, heads=3, block_repeats=(1, 1, 2))


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory):
    """A per-subject file laid out like the released ones (bare state dict) from the reference model."""
    model = randomise(ReferenceHTNet(56, 2, 3, 32, 3, 3, (1, 1, 2), 4, 3), seed=3)
    state = model.state_dict()
    path = tmp_path_factory.mktemp("htnet") / "sub01.pth"
    torch.save(state, path)
    return path, {key: value.numpy().copy() for key, value in state.items()}


def test_detect_and_infer(reference_file):
    _, state = reference_file
    assert detect(state)
    assert not detect({"patch_embed.proj.weight": 0, "blocks.0.attn.qkv.weight": 0})
    assert infer_config(state) == SMALL
    released = {key: value for key, value in ReferenceHTNet().state_dict().items()}
    assert infer_config(released) == HTNetConfig()
    # 255 = 5 x 51 fits too; 4 heads (4 x 63 = 252) does not.
    assert infer_config(released, heads=5).heads == 5
    with pytest.raises(HTNetMappingError, match="stored inner width 255"):
        infer_config(released, heads=4)


def test_round_trip_is_bit_exact_and_loads_strictly_in_torch(reference_file, tmp_path):
    path, state = reference_file
    config, variables = load_pth(path)
    assert config == SMALL
    out = tmp_path / "back.pth"
    export_pth(out, variables, config, location="cuda:0")
    with zipfile.ZipFile(out) as archive:
        assert b"cuda:0" in archive.read("archive/data.pkl")
    loaded = torch.load(out, map_location="cpu", weights_only=True)
    assert isinstance(loaded, collections.OrderedDict) and list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == torch.float32
        assert np.array_equal(loaded[key].numpy(), value), key
    model = ReferenceHTNet(56, 2, 3, 32, 3, 3, (1, 1, 2), 4, 3)
    model.load_state_dict(loaded, strict=True)
    # Read back by our reader, the cuda-tagged file gives the same parameters.
    again_config, again = load_pth(out)
    assert again_config == config
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)))


def test_strict_mapping_lists_every_problem(reference_file):
    _, state = reference_file
    broken = dict(state)
    del broken["layers.1.0.layers.0.1.fn.net.3.bias"]
    broken["layers.0.0.extra"] = np.zeros(2, np.float32)
    broken["mlp_head.0.g"] = np.zeros((1, 64, 1, 1), np.float32)
    with pytest.raises(HTNetMappingError) as err:
        torch_to_flax(broken, SMALL)
    text = str(err.value)
    assert "1 missing: ['layers.1.0.layers.0.1.fn.net.3.bias']" in text
    assert "1 unexpected: ['layers.0.0.extra']" in text
    assert "mlp_head.0.g: (1, 64, 1, 1), expected (1, 128, 1, 1)" in text
    gap = {key: value for key, value in state.items() if not key.startswith("layers.1.")}
    with pytest.raises(HTNetMappingError, match=r"stages \(pos_emb\) \[1\] missing"):
        infer_config(gap)
    with pytest.raises(HTNetMappingError, match="to_patch_embedding.1.weight' is missing"):
        infer_config({"x": np.zeros(1)})


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.pth"):
        load_pth(bad)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(HTNetMappingError, match="other.pth.*is missing"):
        load_pth(other)
