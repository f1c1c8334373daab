"""`pthnet convert` for HTNet (re-exported by the family's `__init__`): an original per-subject `.pth`
becomes a checkpoint of family "htnet" (params; the config read from the tensor shapes), and a
checkpoint directory becomes a bare state dict the original loads strictly."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

FAMILY = "htnet"


@dataclasses.dataclass
class ImportedHTNet:
    family: str
    config: Any  # HTNetConfig
    variables: dict[str, Any]  # {"params"}
    provenance: dict[str, Any]
    torch_extra: dict[str, Any]
    notes: list[str]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_file(path: str | os.PathLike) -> ImportedHTNet:
    """An original HTNet `.pth` -> what `pthnet convert` saves (strict key table, float32)."""
    from pthnet_jax.families.htnet.convert import load_pth

    path = Path(path)
    config, variables = load_pth(path)
    provenance = {"source": "pytorch", "source_file": str(path.absolute()), "sha256": _sha256(path),
                  "epoch": None, "best_acc": None, "metadata": {}, "notes": []}
    return ImportedHTNet(FAMILY, config, variables, provenance, {}, [])


def export_file(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint directory of family "htnet" -> `.pth` (written without PyTorch, atomically)."""
    import jax

    from pthnet_jax.checkpoint import load_checkpoint
    from pthnet_jax.families.htnet.convert import export_pth

    if str(dst).lower().endswith(".safetensors"):
        raise ValueError(f"{dst}: HTNet checkpoints are exported as .pth (the original's format)")
    config, variables, _, _ = load_checkpoint(src)
    params = jax.tree.map(jax.device_get, variables["params"])
    export_pth(dst, params, config)
    return {"config": config, "num_params": int(sum(x.size for x in jax.tree.leaves(params))), "epoch": 0}
