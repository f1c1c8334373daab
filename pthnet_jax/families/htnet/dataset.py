"""HTNet data as one TFDS array_record dataset (no TensorFlow), plus a synthetic checkout for tests/demos.

`import_checkout(repo, out, landmarks)` reads a checkout of the original repository in place (the CSV
and the flow PNGs; nothing is copied into this project) and writes one split `samples` in CSV order, one
record per sample: `sample`, `subject`, `database`, `label`, the raw `flow` image (28x28x3 uint8, BGR),
the `landmarks` used (5x2 int32, clamped and truncated), `fallback` (no landmarks for it) and the model
input `mosaic` (28x28x3 uint8; the model takes it as float32, unscaled). The landmark table's file and
SHA-256 go into the dataset's metadata. `load(dir)` gives all columns as numpy arrays (the data is tiny).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from pthnet_jax.data.builder import PthnetFeatures, find_dataset_dir
from pthnet_jax.families.htnet.flow import (CLASS_NAMES, CSV_NAME, FLOW_DIR, HTNetDataError, LandmarkTable,
                                            flow_path, integer_landmarks, mosaic, read_bgr, read_landmarks,
                                            read_samples)

DATASET_NAME = "htnet_flow"
SPLIT = "samples"  # the only split, in CSV order ("all" is a reserved name in TFDS)
STRING_FIELDS = ("sample", "subject", "database")


@dataclasses.dataclass(eq=False)
class HTNetFlowConfig(tfds.core.BuilderConfig):
    records: list = dataclasses.field(default_factory=list, repr=False)
    extra_metadata: dict = dataclasses.field(default_factory=dict, repr=False)


class HTNetFlow(tfds.core.GeneratorBasedBuilder):
    """Flow images of the SMIC + CASME II + SAMM composite as HTNet's authors released them."""

    name = DATASET_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Flow image, landmarks, mosaic, label, subject, database per sample."}
    BUILDER_CONFIGS = [HTNetFlowConfig(name="default")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Clone github.com/wangzhifengharrison/HTNet (its data have no stated licence; they come from the
    SMIC, CASME II and SAMM databases under their own agreements) and run
    `pthnet import-htnet --repo CHECKOUT --landmarks TABLE --out DIR`.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        image = tfds.features.Tensor(shape=(28, 28, 3), dtype=np.uint8)
        return tfds.core.DatasetInfo(
            builder=self, description="HTNet optical-flow inputs (composite of three micro-expression sets).",
            features=tfds.features.FeaturesDict({
                "sample": tfds.features.Text(), "subject": tfds.features.Text(), "database": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)), "flow": image, "mosaic": image,
                "landmarks": tfds.features.Tensor(shape=(5, 2), dtype=np.int32), "fallback": np.bool_}),
            supervised_keys=None, disable_shuffling=True,
            metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES), **self.builder_config.extra_metadata))

    def _split_generators(self, dl_manager):
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from enumerate(self.builder_config.records)

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        del dl_manager, download_config
        from tensorflow_datasets.core import example_serializer
        from tensorflow_datasets.core import splits as splits_lib

        serializer = example_serializer.ExampleSerializer(self.info.features.get_serialized_info())
        self.info.set_splits(splits_lib.SplitDict([self._write_split(SPLIT, self._generate_examples(), serializer)]))

    _write_split = PthnetFeatures._write_split  # the streaming array_record writer of the feature datasets


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_records(repo: str | Path, table: LandmarkTable | None) -> list[dict[str, Any]]:
    """One record per CSV row of the checkout; every PNG read and checked (28x28, 3 channels)."""
    repo = Path(repo)
    samples = read_samples(repo / CSV_NAME)
    table = table or LandmarkTable({}, {})
    records = []
    for sample in samples:
        path = flow_path(repo, sample)
        if not path.is_file():
            raise HTNetDataError(f"{repo / CSV_NAME}:{sample.line}: the flow image {path} does not exist")
        image = read_bgr(path)
        if image.shape != (28, 28, 3):
            raise HTNetDataError(f"{path}: expected a 28x28 image, found {image.shape[1]}x{image.shape[0]}")
        points, fallback = table.lookup(sample.name)
        records.append({"sample": sample.name, "subject": sample.subject, "database": sample.database,
                        "label": sample.label, "flow": image, "mosaic": mosaic(image, points),
                        "landmarks": integer_landmarks(points), "fallback": fallback})
    return records


def import_checkout(repo: str | Path, out: str | Path, landmarks: str | Path | None = None,
                    quiet: bool = False) -> Path:
    """Build the dataset in OUT (must not exist; written under a staging name, then swapped in)."""
    from pthnet_jax.data.importer import _quiet_tfds
    from pthnet_jax.fsutil import staged_dir

    table = read_landmarks(landmarks) if landmarks else None
    records = build_records(repo, table)
    unknown = sorted(set(table.points) - {r["sample"] for r in records}) if table else []
    meta = {"source": str(Path(repo).absolute()), "num_samples": len(records),
            "landmarks_file": str(Path(landmarks).absolute()) if landmarks else None,
            "landmarks_sha256": _sha256(Path(landmarks)) if landmarks else None,
            "num_fallback": int(sum(r["fallback"] for r in records)), "landmark_rows_unused": len(unknown)}
    config = HTNetFlowConfig(name="composite", records=records, extra_metadata=meta)
    tfds.disable_progress_bar()
    with staged_dir(out, replace=False) as staging:
        with _quiet_tfds():
            HTNetFlow(data_dir=str(staging), config=config, file_format="array_record").download_and_prepare()
        shutil.rmtree(staging / "downloads", ignore_errors=True)
    dataset_dir = find_dataset_dir(out)
    if not quiet:
        subjects = len({r["subject"] for r in records})
        print(f"imported {len(records)} samples of {subjects} subjects from {repo}; {meta['num_fallback']} with the "
              f"fallback landmarks{'' if landmarks else ' (no --landmarks table: all of them)'} -> {dataset_dir}")
    return dataset_dir


def load(data_dir: str | Path) -> dict[str, np.ndarray]:
    """All records of an imported dataset, column by column, in CSV order (strings as str arrays)."""
    dataset_dir = find_dataset_dir(data_dir)
    builder = tfds.builder_from_directory(str(dataset_dir))
    source = builder.as_data_source(split=SPLIT)
    records = list(source.__getitems__(list(range(len(source)))))
    columns: dict[str, np.ndarray] = {}
    for key in records[0] if records else ():
        values = [r[key] for r in records]
        if key in STRING_FIELDS:
            values = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
        columns[key] = np.asarray(values)
    return columns


def write_synthetic(root: str | Path, subjects: int = 6, per_subject: int = 6, seed: int = 0) -> Path:
    """A checkout-shaped folder (CSV + `<subject>_<clip> .png`) with a visible class: label k brightens
    channel k (as read, BGR). Databases cycle through casme2/smic/samm by subject. Returns ROOT."""
    from PIL import Image

    root = Path(root)
    (root / FLOW_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [["dataset", "sub", "filename_o", "label", "apex", "imagename", "sub_filename"]]
    for s in range(subjects):
        database, subject = ("casme2", "smic", "samm")[s % 3], f"s{s:02d}"
        for c in range(per_subject):
            label, clip = (s + c) % 3, f"clip_{c:02d}"
            image = rng.integers(0, 110, (28, 28, 3)).astype(np.uint8)
            image[..., label] += 120  # channel `label` of the image as read (BGR)
            Image.fromarray(image[..., ::-1]).save(root / FLOW_DIR / f"{subject}_{clip} .png")
            rows.append([database, subject, clip, str(label), "", f"{subject}_{clip}.jpg", ""])
    with open(root / CSV_NAME, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return root


__all__ = ["DATASET_NAME", "HTNetFlow", "build_records", "import_checkout", "load", "write_synthetic"]
