"""What made a feature ROOT, and the checks `pthnet extract` runs before decoding anything.

`ROOT/get_features/NAME/extract_record.json` records everything that changes the numbers of a
feature file: the backbone (a sha256 of its parameters, its width, its compute dtype) and the window
schedule (schedule, end window, short clips). A re-run whose backbone or schedule differs is refused
with the difference listed (`--force` deletes the dataset's features and lists and starts over), so
that a ROOT never mixes features of two backbones. Strides, directions and `--face` name their own
folders, so a re-run may add folders; the record lists every folder written.

Labels and classes: a benchmark's classes are its own; a dataset of one's own (any other `--dataset`
name) declares its classes with `--classes` (`a,b,c` or a file with one name per line), and its labels
may be class names or integers 0..K-1. Both are checked here, before any video is decoded, and the
class names are written to `ROOT/annotation/NAME/classes.txt`, which `pthnet import-features` reads.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

RECORD_FILE = "extract_record.json"
CLASSES_FILE = "classes.txt"
NUMBER_KEYS = ("backbone_sha256", "dim", "compute_dtype", "schedule", "end", "short")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class ExtractMismatch(ValueError):
    """A ROOT extracted with another backbone or schedule than this run's."""


def backbone_fingerprint(params: Any) -> str:
    """sha256 over the parameters' paths, shapes, dtypes and bytes (what the features depend on)."""
    import jax

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.shape}|{array.dtype}|".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def make_record(backbone, options) -> dict[str, Any]:
    return {"backbone": backbone.name, "backbone_sha256": backbone_fingerprint(backbone.params),
            "dim": int(backbone.dim), "compute_dtype": str(getattr(backbone, "compute_dtype", "float32")),
            "schedule": options.schedule, "end": options.end, "short": options.short}


def _describe(record: dict[str, Any]) -> str:
    name = str(record.get("backbone")).split(" (")[0]  # the name alone: its width and dtype follow
    return (f"{name} ({record.get('dim')}-d, {record.get('compute_dtype')}, sha256 "
            f"{str(record.get('backbone_sha256'))[:12]}, schedule {record.get('schedule')}/{record.get('end')}/"
            f"{record.get('short')})")


def check_root(out: Path, dataset: str, record: dict[str, Any], variants: Sequence[str], force: bool) -> str | None:
    """Refuse (ExtractMismatch) a ROOT whose features were made otherwise; with `force`, delete the
    dataset's features and lists first. Returns a note on what was deleted, or None."""
    feature_root, lists_root = out / "get_features" / dataset, out / "annotation" / dataset
    record_file = feature_root / RECORD_FILE
    if force and (feature_root.exists() or lists_root.exists()):
        shutil.rmtree(feature_root, ignore_errors=True)
        shutil.rmtree(lists_root, ignore_errors=True)
        return f"--force: deleted {feature_root} and {lists_root}"
    if record_file.is_file():
        try:
            old = json.loads(record_file.read_text())
        except (OSError, ValueError) as err:
            raise ExtractMismatch(f"{record_file}: unreadable ({err}); pass --force to start over") from err
        diffs = [f"{key}: {old.get(key)!r} there, {record[key]!r} now" for key in NUMBER_KEYS
                 if old.get(key) != record[key]]
        if diffs:
            raise ExtractMismatch(
                f"{feature_root} holds features of {_describe(old)}; this run would add features of "
                f"{_describe(record)}, and a ROOT must not mix them:\n  " + "\n  ".join(diffs) +
                "\nUse another --out (or --dataset), or pass --force to delete those features and lists and start over")
        return None
    existing = [v for v in variants if (feature_root / v).is_dir() and any((feature_root / v).rglob("*.npy"))]
    if existing:
        raise ExtractMismatch(f"{feature_root} holds features ({', '.join(existing)}) with no record of the backbone "
                              f"and schedule that made them ({RECORD_FILE}: an earlier version, or copied in); "
                              "they cannot be checked against this run: use another --out, or pass --force to "
                              "delete them and start over")
    return None


def write_record(out: Path, dataset: str, record: dict[str, Any], variants: Sequence[str]) -> None:
    from pthnet_jax.fsutil import atomic_write_json

    record_file = out / "get_features" / dataset / RECORD_FILE
    old = json.loads(record_file.read_text()) if record_file.is_file() else {}
    folders = sorted(set(old.get("folders", [])) | set(variants))
    atomic_write_json(record_file, {**record, "folders": folders})


# --- datasets, classes and labels -----------------------------------------------------------------

def check_dataset_name(dataset: str) -> None:
    if not _NAME.match(dataset) or dataset in (".", ".."):
        raise ValueError(f"--dataset {dataset!r}: a folder name is needed (letters, digits, '_' and '-'; "
                         "up to 64 characters)")


def parse_classes(value: str | None) -> tuple[str, ...] | None:
    """`--classes`: 'a,b,c' or the path of a file with one class name per line."""
    if value is None:
        return None
    path = Path(value)
    names = ([line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file()
             else [part.strip() for part in value.split(",") if part.strip()])
    if len(names) < 2:
        raise ValueError(f"--classes {value!r}: at least two class names are needed ('a,b,c', or a file "
                         "with one name per line)")
    bad = [n for n in names if any(c.isspace() for c in n)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"--classes: class names must be distinct and without spaces, got {names}")
    return tuple(names)


def dataset_classes(dataset: str, classes: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The class names of `dataset`: a benchmark's own (`classes` must then be None or the same), or
    `classes` for a dataset of one's own (None when neither says)."""
    from pthnet_jax.data.benchmarks import get_benchmark

    try:
        bench = get_benchmark(dataset)
    except ValueError:
        return classes
    if classes is not None and tuple(classes) != bench.class_names:
        raise ValueError(f"--dataset {dataset} is a benchmark whose classes are {list(bench.class_names)}; "
                         "for classes of your own, name your dataset otherwise (e.g. --dataset MyClips)")
    return bench.class_names


def resolve_labels(raw: dict[str, tuple[str, str]], names: tuple[str, ...] | None, dataset: str,
                   labels_file: Path) -> dict[str, tuple[int, str]]:
    """{clip: (label text, split)} -> {clip: (label index, split)}: class names or integers in range."""
    if names is None:
        raise ValueError(f"--dataset {dataset} is not one of the eight benchmarks, so its classes are unknown: "
                         "declare them with --classes 'name0,name1,...' (or a file, one name per line); the "
                         "labels in " + str(labels_file) + " may then be the names or their numbers 0..K-1")
    index = {name: i for i, name in enumerate(names)}
    out, bad = {}, []
    for clip, (text, split) in raw.items():
        if text in index:
            out[clip] = (index[text], split)
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
            out[clip] = (int(text), split)
        else:
            bad.append(f"{clip}: {text!r}")
    if bad:
        raise ValueError(f"{labels_file}: {len(bad)} label(s) are neither a class of {dataset} nor a number in "
                         f"0..{len(names) - 1}, e.g. {bad[:3]}; the classes are {list(names)}")
    return out


def write_classes(out: Path, dataset: str, names: Sequence[str]) -> Path:
    from pthnet_jax.fsutil import atomic_write

    path = out / "annotation" / dataset / CLASSES_FILE
    atomic_write(path, "\n".join(names) + "\n")
    return path
