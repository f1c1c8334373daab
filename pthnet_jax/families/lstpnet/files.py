"""`pthnet convert` for LSTPNet: the hooks `convert/cli.py` asks a family module for (`detect`,
`import_file`, `export_file`; the family's `__init__` re-exports them). An original `.pth` becomes a
checkpoint directory of family "lstpnet" (params + the BatchNorm statistics as its model state), and
a directory becomes a `.pth` the original code loads strictly (`model_state_dict`, `module.` names).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from pthnet_jax.families.lstpnet.convert import export_pth, is_lstpnet, load_checkpoint

FAMILY = "lstpnet"


@dataclasses.dataclass
class ImportedLSTPNet:
    family: str
    config: Any  # LSTPNetConfig
    variables: dict[str, Any]  # {"params", "batch_stats"}
    provenance: dict[str, Any]
    torch_extra: dict[str, Any]
    notes: list[str]


def detect(keys) -> bool:
    """Whether a state dict's keys (with or without `module.`) are LSTPNet's."""
    return is_lstpnet(keys)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_file(path: str | os.PathLike) -> ImportedLSTPNet:
    """An original LSTPNet checkpoint -> what `pthnet convert` saves (strict mapping, float32)."""
    path = Path(path)
    loaded = load_checkpoint(path)
    scalars = {k: v for k, v in loaded.metadata.items() if isinstance(v, (bool, int, float, str))}
    notes = loaded.notes + [f"top-level entry '{k}' not kept (not a plain value)"
                            for k in loaded.metadata if k not in scalars]
    epoch = scalars.get("epoch")
    provenance = {"source": "pytorch", "source_file": str(path.absolute()), "sha256": _sha256(path),
                  "epoch": epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
                  "best_acc": None,
                  "metadata": scalars, "notes": notes}
    return ImportedLSTPNet(FAMILY, loaded.config, loaded.variables, provenance, {}, notes)


def export_file(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint directory of family "lstpnet" -> `.pth` (written without PyTorch, atomically)."""
    import jax

    from pthnet_jax.checkpoint import load_checkpoint as load_directory

    if str(dst).lower().endswith(".safetensors"):
        raise ValueError(f"{dst}: LSTPNet checkpoints are exported as .pth (the original's format)")
    config, variables, info, _ = load_directory(src)
    epoch = (info.get("provenance") or {}).get("epoch")
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
    export_pth(dst, jax.tree.map(lambda leaf: jax.device_get(leaf), variables), config, extra={"epoch": epoch})
    num_params = int(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])))
    return {"config": config, "num_params": num_params, "epoch": epoch}
