"""Open an imported split: metadata in memory, records through `tfds.data_source`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pthnet_jax.data.lists import LEVELS
from pthnet_jax.fsutil import atomic_path


@dataclasses.dataclass
class FeatureSplit:
    """One split of an imported dataset. Record i is line i of the split's lists."""

    name: str
    dataset_dir: Path
    class_names: list[str]
    feature_dim: int
    clip_ids: np.ndarray  # (N,) str, as written in the H-level list
    labels: np.ndarray  # (N,) int32
    num_windows: dict[str, np.ndarray]  # level -> (N,) int32
    dataset_info: dict[str, Any]
    source: Any  # random-access records (tfds ArrayRecordDataSource)
    # Per-split memo of the pipelines (resident arrays); not part of the split's identity.
    cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_clips(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def feature_bytes(self) -> int:
        """Size of all windows of all levels as float32."""
        return int(sum(c.sum() for c in self.num_windows.values())) * self.feature_dim * 4

    def read(self, indices) -> list[dict[str, Any]]:
        """Decoded records for clip indices (list order)."""
        records = self.source.__getitems__([int(i) for i in indices])
        return list(records)


class DatasetError(ValueError):
    """A data directory that is missing, incomplete or damaged; the message names the path."""


def _clip_id(record: dict[str, Any]) -> str:
    value = record["clip_id"]
    return value.decode() if isinstance(value, bytes) else str(value)


def _index_path(dataset_dir: Path, split: str) -> Path:
    return dataset_dir / f"pthnet_index-{split}.npz"


def open_split(data_dir: str | Path, split: str) -> FeatureSplit:
    """Open split `split` of a dataset written by `pthnet import-features` (its OUT or version dir).

    A damaged dataset (unreadable metadata, a truncated shard, a corrupt index) raises
    `DatasetError` naming the file; a missing split raises KeyError, a missing directory
    FileNotFoundError.
    """
    from pthnet_jax.data.builder import find_dataset_dir

    dataset_dir = find_dataset_dir(data_dir)
    try:
        return _open_split(dataset_dir, split)
    except (KeyError, DatasetError):
        raise
    except Exception as err:  # noqa: BLE001 - TFDS, array_record and numpy raise many kinds
        raise DatasetError(f"{dataset_dir}: split {split!r} cannot be read ({type(err).__name__}: "
                           f"{str(err)[:300]}); the dataset is damaged: import it again") from err


def _open_split(dataset_dir: Path, split: str) -> FeatureSplit:
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(dataset_dir))
    if split not in builder.info.splits:
        raise KeyError(f"{dataset_dir}: no split {split!r}; available: {sorted(builder.info.splits)}")
    split_info = builder.info.splits[split]
    for shard in split_info.filepaths:
        if not Path(shard).is_file():
            raise DatasetError(f"{shard}: shard of split {split!r} is missing; import the dataset again")
    source = builder.as_data_source(split=split)
    if len(source):  # array_record finds a truncated shard only when it reads: read both ends now
        for i in sorted({0, len(source) - 1}):
            try:
                source[i]
            except Exception as err:  # noqa: BLE001
                raise DatasetError(f"{dataset_dir}: record {i} of split {split!r} cannot be read "
                                   f"({type(err).__name__}: {str(err)[:300]}); a shard "
                                   f"({', '.join(Path(f).name for f in split_info.filepaths)}) is "
                                   "truncated or damaged: import the dataset again") from err
    metadata = dict(builder.info.metadata or {})
    index_file = _index_path(dataset_dir, split)
    if index_file.is_file():
        try:
            with np.load(index_file, allow_pickle=False) as index:
                clip_ids, labels = index["clip_ids"], index["labels"]
                counts = {lvl: index[f"num_windows_{lvl}"] for lvl in LEVELS}
        except Exception as err:  # noqa: BLE001 - zipfile.BadZipFile, KeyError, ValueError...
            raise DatasetError(f"{index_file}: damaged index ({type(err).__name__}: {err}); delete "
                               "it (it is rebuilt from the records) or import the dataset again") from err
        if len(clip_ids) != len(source) or (len(source) and _clip_id(source[len(source) - 1]) != clip_ids[-1]):
            raise DatasetError(f"{index_file} does not match the records of split {split!r}; delete it to rebuild")
    else:  # one pass over the records; cached beside the dataset when the directory is writable
        records = [source[i] for i in range(len(source))]
        clip_ids = np.array([_clip_id(r) for r in records])
        labels = np.array([r["label"] for r in records], np.int32)
        counts = {lvl: np.array([r[f"num_windows_{lvl}"] for r in records], np.int32) for lvl in LEVELS}
        order = np.array([r["list_index"] for r in records])
        if (np.diff(order) <= 0).any():
            raise DatasetError(f"{dataset_dir}: records of split {split!r} are not in list order")
        try:
            with atomic_path(index_file) as tmp:
                np.savez(tmp, clip_ids=clip_ids, labels=labels, **{f"num_windows_{l}": c for l, c in counts.items()})
        except OSError:
            pass
    return FeatureSplit(split, dataset_dir, list(metadata.get("class_names", [])),
                        int(metadata.get("feature_dim", 1408)), clip_ids, labels, counts, metadata, source)
