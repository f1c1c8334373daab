"""The LSTPNet frames dataset: one array_record record per clip holding its encoded frames.

A record is `clip_id` (the path as listed), `list_index` (its line among the list's clips), `label`,
`num_frames`, `source` ("folder" or "video"), `frame_bytes` (every frame's encoded image, one after
the other, as uint8) and `frame_offsets` (num_frames + 1 byte offsets into it). Records keep list
order; `open_clip_split` reads the labels and frame counts from a small index written at import.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from pthnet_jax.data.builder import PthnetFeatures, find_dataset_dir
from pthnet_jax.data.source import DatasetError
from pthnet_jax.families.lstpnet.clips import MIN_FRAMES, ClipEntry

INDEX_NAME = "lstpnet_index-{split}.npz"


@dataclasses.dataclass(eq=False)
class LstpnetClipsConfig(tfds.core.BuilderConfig):
    """One benchmark/fold; `splits` maps split name -> (list entries, list file)."""

    benchmark: str = ""
    fold: int | None = None
    class_names: tuple[str, ...] = ()
    splits: dict = dataclasses.field(default_factory=dict, repr=False)
    # (split, entries) -> iterator of (entry, record fields or None when skipped), in list order.
    load_clips: Callable[[str, list[ClipEntry]], Iterator[tuple[ClipEntry, dict | None]]] | None = \
        dataclasses.field(default=None, repr=False)
    extra_metadata: dict = dataclasses.field(default_factory=dict, repr=False)


class LstpnetClips(tfds.core.GeneratorBasedBuilder):
    """Face-crop frame clips of a video FER benchmark (DFEW, FERv39k, AFEW or custom), frames encoded."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: encoded frames, frame count, label, clip id per clip."}
    BUILDER_CONFIGS = [LstpnetClipsConfig(name="default")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    TFDS does not download these clips. Put the benchmark's frame folders (or video files) under a
    ROOT folder and write the original's list files, one clip per line:
      <frame folder or video, relative to ROOT> <frame count> <label>
    The original's lists hold absolute paths; `--strip-prefix` removes their machine-specific part.
    Then run `pthnet import-clips --list-train F --list-test F --root ROOT --out DIR
    --benchmark DFEW|FERv39k|AFEW|custom [--fold K] [--classes a,b,c]`.
    Without any download, `pthnet synth-clips --out ROOT` writes synthetic clips in this layout.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        blob = tfds.features.Tensor(shape=(None,), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)
        offsets = tfds.features.Tensor(shape=(None,), dtype=np.int64, encoding=tfds.features.Encoding.BYTES)
        metadata = tfds.core.MetadataDict(benchmark=cfg.benchmark, fold=cfg.fold,
                                          class_names=list(cfg.class_names), **cfg.extra_metadata)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Frame clips of {cfg.benchmark or 'a benchmark'} for LSTPNet (encoded frames).",
            features=tfds.features.FeaturesDict({
                "clip_id": tfds.features.Text(), "list_index": np.int64, "source": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=list(cfg.class_names) or ["class_0"]),
                "num_frames": np.int32, "frame_bytes": blob, "frame_offsets": offsets}),
            supervised_keys=None,
            disable_shuffling=True,  # record i of a split is clip i of its list
            metadata=metadata,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        return {split: self._generate_examples(split, entries)
                for split, (entries, _) in self.builder_config.splits.items()}

    def _generate_examples(self, split: str, entries: list[ClipEntry]) -> Iterator[tuple[int, dict[str, Any]]]:
        for entry, fields in self.builder_config.load_clips(split, entries):
            if fields is None:  # skipped (--skip-bad); reported by the importer
                continue
            yield entry.list_index, {"clip_id": entry.path, "list_index": entry.list_index,
                                     "label": entry.label, **fields}

    # The streaming array_record writer of the features dataset (TFDS's own needs TensorFlow): it only
    # uses the builder's info, config.splits and _generate_examples, which this builder provides.
    _download_and_prepare = PthnetFeatures._download_and_prepare
    _write_split = PthnetFeatures._write_split


def record_fields(frames: list[bytes], source: str) -> dict[str, Any]:
    """The stored fields of one clip's encoded frames."""
    lengths = np.array([len(f) for f in frames], np.int64)
    return {"num_frames": len(frames), "source": source,
            "frame_bytes": np.frombuffer(b"".join(frames), np.uint8),
            "frame_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)}


class RecordFrames:
    """The encoded frames of a read record, checked, sliced on demand (a sequence of bytes)."""

    def __init__(self, record: dict[str, Any], where: str):
        self.blob = np.asarray(record["frame_bytes"], np.uint8)
        self.offsets = np.asarray(record["frame_offsets"], np.int64)
        count = int(record["num_frames"])
        if (len(self.offsets) != count + 1 or count < 1 or self.offsets[0] != 0
                or self.offsets[-1] != len(self.blob) or (np.diff(self.offsets) <= 0).any()):
            raise DatasetError(f"{where}: damaged record (frame offsets do not match {count} frames of "
                               f"{len(self.blob)} bytes); import the dataset again")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> bytes:
        return self.blob[self.offsets[index]:self.offsets[index + 1]].tobytes()


@dataclasses.dataclass
class ClipSplit:
    """One split of an imported clip dataset. Record i is the i-th kept clip of the split's list."""

    name: str
    dataset_dir: Path
    class_names: list[str]
    clip_ids: np.ndarray  # (N,) str, as listed
    labels: np.ndarray  # (N,) int32
    num_frames: np.ndarray  # (N,) int32: frames stored (= the listed count, checked at import)
    dataset_info: dict[str, Any]
    source: Any  # random-access records (tfds ArrayRecordDataSource)
    record_ids: np.ndarray | None = None  # (N,) record of each clip in a filtered view; None = clip i
    cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_clips(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def record_id(self, index: int) -> int:
        """The record (line among the imported clips) of clip `index`; it keys the clip's randomness."""
        return int(index) if self.record_ids is None else int(self.record_ids[index])

    def frames(self, index: int) -> RecordFrames:
        record = self.record_id(index)
        frames = RecordFrames(self.source[record], f"{self.dataset_dir} split {self.name} record {record}")
        if len(frames) != int(self.num_frames[index]):
            raise DatasetError(f"{self.dataset_dir}: record {record} of split {self.name!r} has {len(frames)} "
                               f"frames, its index says {int(self.num_frames[index])}; import the dataset again")
        return frames

    def filtered(self, min_frames: int = MIN_FRAMES) -> "ClipSplit":
        """A view without the clips under `min_frames` frames (the original's short-clip filter);
        each kept clip keeps its record's randomness. min_frames <= 1 returns the split itself."""
        if min_frames <= 1:
            return self
        keep = self.long_clips(min_frames)
        records = keep if self.record_ids is None else self.record_ids[keep]
        return dataclasses.replace(self, clip_ids=self.clip_ids[keep], labels=self.labels[keep],
                                   num_frames=self.num_frames[keep], record_ids=records, cache={})

    def long_clips(self, min_frames: int = MIN_FRAMES) -> np.ndarray:
        """Indices of the clips the original's short-clip filter keeps (>= min_frames frames)."""
        return np.flatnonzero(self.num_frames >= min_frames)

    def short_clip_count(self, min_frames: int = MIN_FRAMES) -> int:
        """How many clips the original's short-clip filter would drop."""
        return int((self.num_frames < min_frames).sum())


def write_index(dataset_dir: Path, split: str, entries: list[tuple[ClipEntry, int]]) -> None:
    """Per split: clip ids, labels and stored frame counts of the written records, in record order."""
    np.savez(dataset_dir / INDEX_NAME.format(split=split),
             clip_ids=np.array([e.path for e, _ in entries]), labels=np.array([e.label for e, _ in entries], np.int32),
             num_frames=np.array([n for _, n in entries], np.int32),
             list_index=np.array([e.list_index for e, _ in entries], np.int64))


def open_clip_split(data_dir: str | Path, split: str) -> ClipSplit:
    """Open split `split` written by `pthnet import-clips` (its OUT or version directory).

    A damaged dataset raises DatasetError naming the file, a missing split KeyError, a missing
    directory FileNotFoundError.
    """
    dataset_dir = find_dataset_dir(data_dir)
    try:
        return _open(dataset_dir, split)
    except (KeyError, DatasetError):
        raise
    except Exception as err:  # noqa: BLE001 - TFDS, array_record and numpy raise many kinds
        raise DatasetError(f"{dataset_dir}: split {split!r} cannot be read ({type(err).__name__}: "
                           f"{str(err)[:300]}); the dataset is damaged: import it again") from err


def _open(dataset_dir: Path, split: str) -> ClipSplit:
    builder = tfds.builder_from_directory(str(dataset_dir))
    if split not in builder.info.splits:
        raise KeyError(f"{dataset_dir}: no split {split!r}; available: {sorted(builder.info.splits)}")
    for shard in builder.info.splits[split].filepaths:
        if not Path(shard).is_file():
            raise DatasetError(f"{shard}: shard of split {split!r} is missing; import the dataset again")
    metadata = dict(builder.info.metadata or {})
    if "class_names" not in metadata or "frame_pattern" not in metadata:
        raise DatasetError(f"{dataset_dir}: not an LSTPNet clip dataset (written by `pthnet import-clips`)")
    source = builder.as_data_source(split=split)
    index_file = dataset_dir / INDEX_NAME.format(split=split)
    try:
        with np.load(index_file, allow_pickle=False) as index:
            clip_ids, labels, counts = index["clip_ids"], index["labels"], index["num_frames"]
    except Exception as err:  # noqa: BLE001 - missing file, zipfile.BadZipFile, KeyError...
        raise DatasetError(f"{index_file}: missing or damaged index ({type(err).__name__}: {err}); "
                           "import the dataset again") from err
    if not len(clip_ids) == len(labels) == len(counts) == len(source):
        raise DatasetError(f"{index_file} does not match the {len(source)} records of split {split!r}")
    if len(source):  # array_record finds a truncated shard only when it reads: check the last record
        last = source[len(source) - 1]
        last_id = last["clip_id"].decode() if isinstance(last["clip_id"], bytes) else str(last["clip_id"])
        if last_id != str(clip_ids[-1]) or int(last["num_frames"]) != int(counts[-1]):
            raise DatasetError(f"{index_file} does not match the records of split {split!r}")
    return ClipSplit(split, dataset_dir, list(metadata["class_names"]), clip_ids, labels.astype(np.int32),
                     counts.astype(np.int32), metadata, source)
