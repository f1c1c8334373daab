"""Facts about the eight benchmarks: list-file naming, folds, classes, as the original's lists have them."""
from __future__ import annotations

import dataclasses

# Pyramid level -> feature folder stem (window starts 4, 8, 16 frames apart).
LEVEL_FOLDERS = {"H": "th14_vit_g_16_4", "M": "th14_vit_g_16_8", "L": "th14_vit_g_16_16"}


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    class_names: tuple[str, ...]
    list_style: str  # "fold": set_<k>_{split}.txt, "all": {split}_All.txt, "plain": {split}.txt
    num_folds: int = 1
    label_sets: tuple[str, ...] = ()  # MAFW: sub-folders with their own label sets

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def list_file(self, split: str, fold: int | None) -> str:
        if self.list_style == "fold":
            if fold is None or not 1 <= fold <= self.num_folds:
                raise ValueError(f"{self.name} needs --fold in 1..{self.num_folds}, got {fold}")
            return f"set_{fold}_{split}.txt"
        if fold not in (None, 1):
            raise ValueError(f"{self.name} has a single train/test split; got fold {fold}")
        return f"{split}_All.txt" if self.list_style == "all" else f"{split}.txt"


def _numbered(count: int) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(count))


# Class orders: FERv39k from the spec; CREMA-D, eNTERFACE05 and RAVDESS read off the emotion codes
# in the listed file names (and the original release's list-making scripts agree); MELD and CASME2 the
# label orders of the original release's list-making scripts; DFEW and MAFW (single) the benchmarks'
# published orders. MAFW compound is numbered (its label order is not recoverable from the lists).
# Fold counts are those of the original release's lists (RAVDESS has six).
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("FERv39k", ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"), "all"),
    Benchmark("DFEW", ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"), "fold", 5),
    Benchmark("MAFW", ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise",
                       "Contempt", "Anxiety", "Helplessness", "Disappointment"), "fold", 5,
              label_sets=("single", "compound")),
    Benchmark("CREMA-D", ("Anger", "Happy", "Neutral", "Fear", "Sad", "Disgust"), "fold", 5),
    Benchmark("eNTERFACE05", ("Anger", "Happiness", "Surprise", "Fear", "Sadness", "Disgust"), "fold", 5),
    Benchmark("RAVDESS", ("Neutral", "Calm", "Happy", "Sad", "Angry", "Fearful", "Disgust", "Surprised"),
              "fold", 6),
    Benchmark("MELD", ("Neutral", "Surprise", "Fear", "Sadness", "Anger", "Disgust", "Joy"), "plain"),
    Benchmark("CASME2", ("Happiness", "Surprise", "Repression", "Others", "Disgust"), "fold", 26),
]}
MAFW_COMPOUND_CLASSES = _numbered(43)


def custom_benchmark(name: str, class_names: tuple[str, ...]) -> Benchmark:
    """A dataset of one's own: its classes, one train/test split, lists `train.txt` / `test.txt`."""
    return Benchmark(name, tuple(class_names), "plain")


def get_benchmark(name: str) -> Benchmark:
    for key, bench in BENCHMARKS.items():
        if key.lower() == name.lower():
            return bench
    raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")


def parse_folds(text: str | None, num_folds: int) -> list[int]:
    """'1-5', '1,3,4' or None (all folds) -> fold numbers, each checked against 1..num_folds."""
    if not text:
        return list(range(1, num_folds + 1))
    folds: list[int] = []
    for part in str(text).split(","):
        low, _, high = part.strip().partition("-")
        try:
            folds.extend(range(int(low), int(high or low) + 1))
        except ValueError:
            raise ValueError(f"--folds: cannot read {part!r}; expected e.g. '1-5' or '1,3'") from None
    bad = [f for f in folds if not 1 <= f <= num_folds]
    if bad:
        raise ValueError(f"--folds: {bad} outside 1..{num_folds}")
    return folds


def class_names(bench: Benchmark, label_set: str | None) -> tuple[str, ...]:
    if bench.label_sets:
        if label_set not in bench.label_sets:
            raise ValueError(f"{bench.name} needs --label-set in {bench.label_sets}, got {label_set!r}")
        return bench.class_names if label_set == "single" else MAFW_COMPOUND_CLASSES
    return bench.class_names


def level_folder(level: str, face: bool, reverse: bool) -> str:
    """The feature folder of a level: `th14_vit_g_16_<stride>` + `_face` and/or `_rv`."""
    return LEVEL_FOLDERS[level] + ("_face" if face else "") + ("_rv" if reverse else "")


def variant_name(bench: Benchmark, fold: int | None, face: bool, reverse: bool,
                 label_set: str | None) -> str:
    """The TFDS builder-config name of one imported benchmark/fold/variant, e.g. `dfew_fold1_rv`."""
    parts = [bench.name.lower().replace("-", "")]
    if bench.label_sets:
        parts.append(label_set or "single")
    if bench.list_style == "fold":
        parts.append(f"fold{fold}")
    if face:
        parts.append("face")
    if reverse:
        parts.append("rv")
    return "_".join(parts)
