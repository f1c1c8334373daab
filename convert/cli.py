"""`pthnet convert SRC DST`: a `.pth`/`.safetensors` file -> checkpoint directory, or a checkpoint
directory -> `.pth` / `.safetensors` file (by DST's suffix). Neither direction needs PyTorch.

A file is read as PTH-Net's first (the original release); when it is not one, each model family
whose module (`pthnet_jax.task.FAMILIES`) exports `detect(keys)` is asked whether its keys are that
family's, and that family's `import_file(path)` imports it (an `ImportedCheckpoint`-like object with
`family`, `config`, `variables`, `provenance`, `torch_extra`). A directory is exported by its
family's `export_file(src, dst)` (PTH-Net's: `convert.io.export_checkpoint`).

DST appears only once everything succeeded (a staged directory or a temporary file renamed into
place); a failure leaves no staging path behind and an existing DST (with --force) untouched. Errors
are one escaped line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pthnet_jax.convert.errors import escape_text


def _describe(config, family: str | None = None) -> str:
    from pthnet_jax.task import get_task

    return get_task(family).describe(config)


def _count(params) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(params)))


def _say(text: str, err: bool = False) -> None:
    print(escape_text(text), file=sys.stderr if err else sys.stdout)


def import_file(src: Path):
    """SRC as PTH-Net's; else as the family whose `detect` claims its keys (when it can import).
    Returns an object with `family`, `config` and `variables` (`load_model` reads files through it)."""
    from pthnet_jax.convert.io import import_pth

    try:
        return import_pth(src)
    except ValueError as err:
        family = detect_family(src)
        if family is None:
            raise
        module = _family_module(family)
        if not hasattr(module, "import_file"):
            raise ValueError(f"{src} holds a {module.TASK.display_name} checkpoint, which `pthnet convert` "
                             "cannot import yet") from err
        return module.import_file(src)


def _family_module(name: str):
    from pthnet_jax.task import family_module

    return family_module(name)


def detect_family(src: Path) -> str | None:
    """The first family (other than PTH-Net, tried first) whose `detect(keys)` claims SRC's tensors."""
    from pthnet_jax.convert.io import state_dict_from_file
    from pthnet_jax.task import DEFAULT_FAMILY, FAMILIES

    try:
        keys = list(state_dict_from_file(src)[0])
    except (ValueError, OSError):
        return None
    for name in FAMILIES:
        if name == DEFAULT_FAMILY:
            continue
        try:
            detect = getattr(_family_module(name), "detect", None)
        except (ImportError, ValueError):  # a family without its TASK yet
            continue
        if detect is not None and detect(keys):
            return name
    return None


def _import_to_directory(src: Path, dst: Path):
    """Read and map SRC first, then write the Orbax directory under a staging name and swap it in."""
    from pthnet_jax.checkpoint import save_checkpoint, split_variables
    from pthnet_jax.fsutil import remove_path, staged_dir

    imported = import_file(src)
    params, model_state = split_variables(imported.variables)
    with staged_dir(dst) as staging:
        staging.rmdir()  # Orbax creates the directory itself (it refuses an existing one)
        try:
            save_checkpoint(staging, params, imported.config, imported.provenance, imported.torch_extra,
                            family=getattr(imported, "family", "pthnet"), model_state=model_state)
        finally:  # Orbax's own temporary directories beside the staging name, on any failure
            for leftover in staging.parent.glob(f"{staging.name}.*"):
                remove_path(leftover)
    return imported


def _export(src: Path, dst: Path) -> dict:
    """A checkpoint directory -> DST, by the family it names (`export_file` of its module)."""
    from pthnet_jax.checkpoint import read_info

    family = read_info(src)["family"]
    module = _family_module(family)
    if not hasattr(module, "export_file"):
        raise ValueError(f"{src} holds a {module.TASK.display_name} checkpoint, which `pthnet convert` "
                         "cannot export yet")
    return {**module.export_file(src, dst), "family": family}


def _videomae_description(src: Path, num_heads: int | None = None) -> str | None:
    """What a file that is not a PTH-Net checkpoint holds, when it is a VideoMAE V2 backbone."""
    from pthnet_jax.convert import videomae

    try:
        state_dict, _ = videomae.read_state_dict(src)
    except (ValueError, OSError):
        return None
    if not videomae.is_videomae(state_dict):
        return None
    if videomae.is_pretraining(state_dict):
        return ("a VideoMAE V2 pre-training checkpoint (encoder + decoder); feature extraction needs the "
                f"fine-tuned {videomae.CHECKPOINT_FILE}")
    try:
        config = videomae.infer_config(state_dict, str(src), **({"num_heads": num_heads} if num_heads else {}))
    except ValueError:  # a width outside the family: heads unknown, the rest is in the shapes
        depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
        width = state_dict["patch_embed.proj.weight"].shape[0]
        return (f"a VideoMAE V2 ViT ({width}-d, {depth} blocks; a width outside the family, whose head count "
                "the shapes do not tell: pass --num-heads N here and to extract/predict)")
    return videomae.describe(config, {k: v for k, v in state_dict.items()})


def _file_to_file(src: Path, dst: Path) -> int:
    """A `.pth`/`.safetensors` file to another such file: imported (checked), then exported."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".pthnet-convert-", dir=dst.absolute().parent) as scratch:
        imported = _import_to_directory(src, Path(scratch) / "checkpoint")
        summary = _export(Path(scratch) / "checkpoint", dst)
    family = getattr(imported, "family", None)
    _say(f"converted {src} -> {dst}: {summary['num_params']:,} parameters; {_describe(imported.config, family)}; "
         "the model's tensors only (an optimizer state or training recorder in SRC is not carried over)")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pthnet convert", description="Convert between original PyTorch PTH-Net .pth files (or "
        ".safetensors) and pthnet-jax checkpoint directories. The direction follows SRC: a file is "
        "imported (nothing in the file is executed), a directory is exported to DST's format "
        "(.safetensors, else a torch.save .pth). PyTorch is needed for neither.")
    parser.add_argument("src", type=Path, help=".pth / .safetensors file, or a checkpoint directory")
    parser.add_argument("dst", type=Path, help="checkpoint directory to create, or .pth/.safetensors file")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    parser.add_argument("--num-heads", type=int, help="attention heads of a VideoMAE V2 SRC whose width is outside "
                        "the family (to describe it; extract/predict take the same option)")
    args = parser.parse_args(argv)

    src, dst = args.src, args.dst
    if not src.exists():
        _say(f"pthnet convert: {src}: no such file or directory", err=True)
        return 2
    if (dst.exists() or dst.is_symlink()) and not args.force:
        _say(f"pthnet convert: {dst} exists (use --force to replace it)", err=True)
        return 2
    if src.absolute() == dst.absolute():
        _say(f"pthnet convert: SRC and DST are the same path ({src})", err=True)
        return 2
    if src.is_dir() and not (src / "pthnet").exists() and (src / "best" / "pthnet").exists():
        src = src / "best"  # a training workdir: its best checkpoint, as load_model and evaluate take it
        _say(f"{args.src} is a training run: converting its best checkpoint {src}")
    try:
        if src.is_file() and dst.suffix in (".pth", ".safetensors"):
            return _file_to_file(src, dst)
        if src.is_file():
            imported = _import_to_directory(src, dst)
            n = _count(imported.variables["params"])
            family = getattr(imported, "family", None)
            _say(f"imported {src} -> {dst}: {n:,} parameters; {_describe(imported.config, family)}; "
                 f"epoch={imported.provenance['epoch']} best_acc={imported.provenance['best_acc']}")
        else:
            if dst.is_dir() and not dst.is_symlink():
                _say(f"pthnet convert: {dst} is a directory; exporting writes a file", err=True)
                return 2
            summary = _export(src, dst)
            _say(f"exported {src} -> {dst}: {summary['num_params']:,} parameters; "
                 f"{_describe(summary['config'], summary.get('family'))}; epoch={summary['epoch']}")
    except (ValueError, OSError) as err:  # CheckpointError is a ValueError; OSError: disk, permissions
        backbone = _videomae_description(src, args.num_heads) if src.is_file() else None
        if backbone:
            _say(f"pthnet convert: {src} holds {backbone}: a video backbone, not a PTH-Net checkpoint. "
                 f"Use the file as it is: `pthnet extract --backbone {src}` or `pthnet predict --backbone "
                 f"{src}` read it without PyTorch", err=True)
            return 2
        _say(f"pthnet convert: {err}", err=True)
        return 2
    return 0
