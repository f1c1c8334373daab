"""VideoMAE V2 backbones from files, for `pthnet extract` and `pthnet predict`.

`--backbone` takes a VideoMAE V2 checkpoint file: the released ViT-g
(`vit_g_hybrid_pt_1200e_k710_ft.pth`, 2 GB), any fine-tuned VideoMAE V2 `.pth` / `.safetensors`, or
the small backbone `pthnet demo-video` writes (`backbone.safetensors`, which stores its head count in
the file's metadata). The size is read from the shapes; the number of attention heads is not in the
shapes, so a width outside the family (384/768/1024/1280/1408) needs `--num-heads` or a file that
records it.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pthnet_jax.video.engine import Backbone

HEADS_METADATA_KEY = "videomae_num_heads"
TRY_IT = ("to try the video path without it, `pthnet demo-video --workdir DIR` writes a small backbone to "
          "DIR/backbone.safetensors in a few minutes (README: 'From a video')")


def videomae_backbone(model, variables, name: str = "videomae", compute_dtype: str = "float32") -> Backbone:
    """A Flax `VideoMAE` module and its `{"params": ...}` as a `Backbone`."""
    return Backbone(apply=model.apply, params=variables, dim=int(model.config.embed_dim), name=name,
                    compute_dtype=compute_dtype)


def stored_num_heads(path: Path) -> int | None:
    """The head count a `.safetensors` backbone records in its metadata (written by `save_backbone`)."""
    if path.suffix.lower() != ".safetensors":
        return None
    from pthnet_jax.convert.safetensors_io import read_safetensors

    try:
        _, metadata = read_safetensors(path)
    except Exception:  # noqa: BLE001 - the loader reports a bad file properly
        return None
    value = metadata.get(HEADS_METADATA_KEY)
    return int(value) if value and value.isdigit() else None


def load_backbone(path: str | os.PathLike, dtype: str = "float32", config=None, num_heads: int | None = None
                  ) -> Backbone:
    """A VideoMAE V2 checkpoint (read without PyTorch) as a `Backbone`; `dtype` is the compute dtype
    (parameters keep the checkpoint's precision). `num_heads` (or `config`, a `VideoMAEConfig`) is
    needed only for widths outside the family when the file does not record it."""
    import jax.numpy as jnp

    from pthnet_jax.convert.videomae import load_videomae

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such VideoMAE backbone file. The one PTH-Net's features come from is "
                                f"vit_g_hybrid_pt_1200e_k710_ft.pth (2 GB, VideoMAE V2 model zoo); {TRY_IT}")
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory; --backbone takes a VideoMAE V2 checkpoint file "
                                "(.pth or .safetensors)")
    overrides = {}
    heads = num_heads or (None if config is not None else stored_num_heads(path))
    if heads:
        overrides["num_heads"] = int(heads)
    model, variables = load_videomae(str(path), compute_dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
                                     config=config, **overrides)
    return videomae_backbone(model, variables, name=f"{path.name} ({model.config.embed_dim}-d, {dtype})",
                             compute_dtype=dtype)


def save_backbone(path: str | os.PathLike, config, params) -> Path:
    """A VideoMAE `{"params": ...}` -> a `.safetensors` file with the original's key names that
    `load_backbone` (and the original's VideoMAE V2 code) reads; the head count is kept in the metadata."""
    import numpy as np

    from pthnet_jax.convert.videomae import key_table
    from pthnet_jax.fsutil import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: the backbone is written as .safetensors")
    inverse = {"_conv3d": (4, 3, 0, 1, 2), "_linear": (1, 0)}
    tensors = {}
    for torch_key, flax_path, transform, _ in key_table(config):
        leaf = params["params"] if "params" in params else params
        for part in flax_path.split("/"):
            leaf = leaf[part]
        array = np.asarray(leaf)
        axes = inverse.get(transform.__name__)
        tensors[torch_key] = np.ascontiguousarray(array.transpose(axes) if axes else array)
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADS_METADATA_KEY: str(config.num_heads), "format": "pt"})
    return path


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, type=Path,
                        help="VideoMAE V2 checkpoint file (.pth or .safetensors): the released "
                             "vit_g_hybrid_pt_1200e_k710_ft.pth, or the small one `pthnet demo-video --workdir DIR` "
                             "writes (DIR/backbone.safetensors)")
    parser.add_argument("--num-heads", type=int,
                        help="attention heads of a backbone whose width is outside the VideoMAE V2 family "
                             "(the shapes do not tell it)")


def swapped_hint(path: Path, role: str) -> str | None:
    """When a file given as `role` ('--backbone' or '--checkpoint') is the other kind, say so."""
    from pthnet_jax.convert import videomae

    if not Path(path).is_file():
        return None
    try:
        state_dict, _ = videomae.read_state_dict(path)
    except Exception:  # noqa: BLE001 - unreadable: the original error says why
        return None
    if role == "--checkpoint" and videomae.is_videomae(state_dict):
        return f"{path} is a VideoMAE V2 backbone, not a PTH-Net checkpoint: pass it as --backbone"
    if role == "--backbone" and not videomae.is_videomae(state_dict):
        from pthnet_jax.convert.mapping import infer_config, strip_prefix

        try:
            infer_config(strip_prefix(state_dict)[0])
        except Exception:  # noqa: BLE001
            return None
        return f"{path} is a PTH-Net checkpoint, not a VideoMAE V2 backbone: pass it as --checkpoint"
    return None
