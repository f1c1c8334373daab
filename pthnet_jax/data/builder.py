"""The TFDS builder: one record per clip with the full window sequences of the three levels."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from pthnet_jax.data.lists import LEVELS, Clip

DATASET_NAME = "pthnet_features"
# Records go to a new array_record shard after this many bytes.
SHARD_BYTES = 1 << 30


@dataclasses.dataclass(eq=False)
class PthnetFeaturesConfig(tfds.core.BuilderConfig):
    """One benchmark/fold/variant; `splits` maps split name -> (aligned clips, list files)."""

    benchmark: str = ""
    fold: int | None = None
    label_set: str | None = None
    face: bool = False
    reverse: bool = False
    class_names: tuple[str, ...] = ()
    feature_dim: int = 1408
    splits: dict = dataclasses.field(default_factory=dict, repr=False)
    # (split, clips) -> iterator of (clip, {level: windows} or None when skipped), in list order.
    load_clips: Callable[[str, list[Clip]], Iterator[tuple[Clip, dict[str, np.ndarray] | None]]] | None = dataclasses.field(default=None, repr=False)
    extra_metadata: dict = dataclasses.field(default_factory=dict, repr=False)


class PthnetFeatures(tfds.core.GeneratorBasedBuilder):
    """VideoMAE V2 ViT-g features of a PTH-Net benchmark (three temporal pyramid levels)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: full window sequences per level, label, clip id."}
    BUILDER_CONFIGS = [PthnetFeaturesConfig(name="default")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    TFDS does not download these features. Put them in the original PTH-Net layout under a ROOT
    folder; the paths in the data lists are relative to ROOT:
      ROOT/get_features/<BENCHMARK>/.../th14_vit_g_16_{4,8,16}[_face][_rv]/.../<clip>.npy
          one (num_windows, 1408) float32 array per clip and level;
      ROOT/annotation/<BENCHMARK>[/single|/compound]/th14_vit_g_16_{4,8,16}[_face][_rv]/<list>.txt
          lines `<npy path> <num_windows> <label>`; <list> is set_<k>_{train,test}.txt,
          {train,test}_All.txt (FERv39k) or {train,test}.txt (MELD). The original release's
          `annotation/` folder has these lists for all eight benchmarks.
    - FERv39k: download the npy archive the PTH-Net authors released (Google Drive / 115 links in
      their repository's README) and unzip it into ROOT/get_features/, so that
      ROOT/get_features/FERv39k/th14_vit_g_16_4/... exists.
    - Other benchmarks: extract the features with VideoMAE V2 ViT-g (vit_g_hybrid_pt_1200e_k710_ft):
      16-frame windows starting every 4, 8 and 16 frames, frames resized to 224x224, pixels in
      [0, 1]; the feature is fc_norm of the mean token. Write them where the lists point.
    - Without any download, `pthnet synth --out ROOT --like FERv39k` writes synthetic features in
      this layout.
    Then run `pthnet import-features --dataset NAME --root ROOT --out DATA_DIR [--fold K] [--reverse]
    [--face] [--label-set single|compound]`.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        # Raw bytes: ~50x faster to serialize than a float list, same size.
        windows = tfds.features.Tensor(shape=(None, cfg.feature_dim), dtype=np.float32,
                                       encoding=tfds.features.Encoding.BYTES)
        level_features = {f"features_{lvl}": windows for lvl in LEVELS}
        counts = {f"num_windows_{lvl}": np.int32 for lvl in LEVELS}
        metadata = tfds.core.MetadataDict(
            benchmark=cfg.benchmark, fold=cfg.fold, label_set=cfg.label_set, face=cfg.face,
            reverse=cfg.reverse, class_names=list(cfg.class_names), feature_dim=cfg.feature_dim,
            **cfg.extra_metadata)
        return tfds.core.DatasetInfo(
            builder=self,
            description="PTH-Net temporal feature pyramid (VideoMAE V2 ViT-g features) of "
                        f"{cfg.benchmark or 'a benchmark'}.",
            features=tfds.features.FeaturesDict({
                "clip_id": tfds.features.Text(), "list_index": np.int64,
                "label": tfds.features.ClassLabel(names=list(cfg.class_names) or ["class_0"]),
                **counts, **level_features}),
            supervised_keys=None,
            # Records in list order: record i of a split is line i of its lists.
            disable_shuffling=True,
            metadata=metadata,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        return {split: self._generate_examples(split, clips) for split, (clips, _) in
                self.builder_config.splits.items()}

    def _generate_examples(self, split: str, clips: list[Clip]) -> Iterator[tuple[int, dict[str, Any]]]:
        for clip, windows in self.builder_config.load_clips(split, clips):
            if windows is None:  # skipped (--skip-bad); reported by the importer
                continue
            record = {"clip_id": clip.clip_id, "list_index": clip.list_index, "label": clip.label}
            for level in LEVELS:
                record[f"num_windows_{level}"] = clip.num_windows[level]
                record[f"features_{level}"] = windows[level]
            yield clip.list_index, record

    def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager,
                              download_config: tfds.download.DownloadConfig) -> None:
        """Streams each split's records into array_record shards in list order.

        TFDS's own writer buffers a whole split in memory and spills to disk through TensorFlow,
        which is not installed; records here are written as they are read, shards cut by size.
        """
        del dl_manager, download_config
        from tensorflow_datasets.core import example_serializer
        from tensorflow_datasets.core import splits as splits_lib

        serializer = example_serializer.ExampleSerializer(self.info.features.get_serialized_info())
        infos = [self._write_split(split, self._generate_examples(split, clips), serializer)
                 for split, (clips, _) in self.builder_config.splits.items()]
        self.info.set_splits(splits_lib.SplitDict(infos))

    def _write_split(self, split: str, examples: Iterator[tuple[int, dict[str, Any]]], serializer):
        from array_record.python.array_record_module import ArrayRecordWriter
        from tensorflow_datasets.core import splits as splits_lib

        template = self._get_filename_template(split_name=split)
        partial_paths, lengths, total_bytes = [], [], 0
        writer, shard_bytes = None, 0
        try:
            for _, example in examples:
                if writer is None or shard_bytes >= SHARD_BYTES:
                    if writer is not None:
                        writer.close()
                    partial_paths.append(Path(template.data_dir) / f".{split}-shard{len(partial_paths)}.partial")
                    writer, shard_bytes = ArrayRecordWriter(str(partial_paths[-1]), "group_size:1"), 0
                    lengths.append(0)
                data = serializer.serialize_example(self.info.features.encode_example(example))
                writer.write(data)
                lengths[-1] += 1
                shard_bytes += len(data)
                total_bytes += len(data)
        finally:
            if writer is not None:
                writer.close()
        if not lengths:
            raise ValueError(f"split {split!r} has no valid clips to import")
        for index, partial in enumerate(partial_paths):
            partial.rename(template.sharded_filepath(shard_index=index, num_shards=len(partial_paths)))
        return splits_lib.SplitInfo(name=split, shard_lengths=lengths, num_bytes=total_bytes,
                                    filename_template=template)


def find_dataset_dir(path: str | Path) -> Path:
    """The version directory (`.../pthnet_features/<config>/1.0.0`) at or below `path`."""
    path = Path(path)
    if (path / "dataset_info.json").is_file():
        return path
    found = sorted(p.parent for p in path.glob("**/dataset_info.json")) if path.is_dir() else []
    if not path.exists():
        raise FileNotFoundError(f"{path}: data directory does not exist (create it with "
                                "`pthnet import-features`)")
    if len(found) != 1:
        raise FileNotFoundError(f"{path}: expected exactly one imported dataset below it, found "
                                f"{[str(p) for p in found] or 'none'}; pass the dataset's directory")
    return found[0]


def dataset_feature_dim(path: str | Path) -> int | None:
    """The feature width an imported dataset records (its `metadata.json`), or None when unreadable."""
    import json

    try:
        metadata = json.loads((find_dataset_dir(path) / "metadata.json").read_text())
        return int(metadata["feature_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
