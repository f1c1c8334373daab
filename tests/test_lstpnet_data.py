"""LSTPNet data: the original's frame sampling, resize and flip against independent computations
written here from lstpnet-reference §7, and list parsing, frame order and the short-clip count."""
import io
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pthnet_jax.families.lstpnet import clips
from pthnet_jax.families.lstpnet.clips import ClipListError


def reference_eval_indices(n: int) -> list[int]:
    """§7 test sampling, in exact arithmetic: floor((N-1)/8 * (i + 1/2)) for N >= 10, else zeros."""
    starts = [math.floor(Fraction(n - 1, 8) * Fraction(2 * i + 1, 2)) for i in range(8)] if n >= 10 else [0] * 8
    out = []
    for s in starts:
        out += [s, s + 1 if s < n - 1 else s]
    return out


def reference_train_indices(n: int, rng: np.random.Generator) -> list[int]:
    """§7 train sampling: a = (N-1)//8; s_i = i*a + U[0, a); else (N > 8) sorted U[0, N-1); else zeros."""
    a = (n - 1) // 8
    if a > 0:
        starts = [i * a + int(x) for i, x in enumerate(rng.integers(0, a, size=8))]
    elif n > 8:
        starts = sorted(int(x) for x in rng.integers(0, n - 1, size=8))
    else:
        starts = [0] * 8
    out = []
    for s in starts:
        out += [s, s + 1 if s < n - 1 else s]
    return out


def test_eval_indices_worked_examples():
    assert clips.eval_indices(16).tolist() == list(range(16))
    assert clips.eval_indices(33).tolist() == [v for k in range(8) for v in (4 * k + 2, 4 * k + 3)]
    assert clips.eval_indices(100).tolist() == [6, 7, 18, 19, 30, 31, 43, 44, 55, 56, 68, 69, 80, 81, 92, 93]
    for n in range(2, 10):  # N < 10: every segment starts at frame 0
        assert clips.eval_indices(n).tolist() == [0, 1] * 8
    assert clips.eval_indices(1).tolist() == [0] * 16


def test_eval_indices_match_the_exact_formula():
    for n in list(range(1, 400)) + [1000, 4097, 12345, 99999]:
        assert clips.eval_indices(n).tolist() == reference_eval_indices(n), n


def test_train_indices_match_the_formula_and_stay_in_segments():
    for n in list(range(1, 120)) + [777, 5000]:
        for seed in range(3):
            got = clips.train_indices(n, np.random.default_rng([n, seed]))
            want = reference_train_indices(n, np.random.default_rng([n, seed]))
            assert got.tolist() == want, (n, seed)
            assert got.min() >= 0 and got.max() <= n - 1
            a = (n - 1) // 8
            if a > 0:  # each start lies in its own segment [i a, (i + 1) a)
                assert all(i * a <= got[2 * i] < (i + 1) * a for i in range(8))


def test_sample_clip_is_keyed_by_seed_epoch_clip_and_flips_half():
    first = clips.sample_clip(200, seed=3, epoch=1, clip=7, train=True)
    again = clips.sample_clip(200, seed=3, epoch=1, clip=7, train=True)
    assert first[0].tolist() == again[0].tolist() and first[1] == again[1]
    others = [clips.sample_clip(200, seed=3, epoch=e, clip=7, train=True)[0].tolist() for e in range(2, 6)]
    assert any(o != first[0].tolist() for o in others)
    flips = [clips.sample_clip(50, seed=0, epoch=0, clip=c, train=True)[1] for c in range(400)]
    assert 150 < sum(flips) < 250
    assert not any(clips.sample_clip(50, seed=0, epoch=0, clip=c, train=True, flip=False)[1] for c in range(50))
    indices, flip = clips.sample_clip(100, seed=9, epoch=9, clip=9, train=False)
    assert indices.tolist() == reference_eval_indices(100) and flip is False


def _jpeg(width, height, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(37, 29), (300, 250), (224, 224)])
def test_resize_equals_pillow_on_the_file(tmp_path, size):
    path = tmp_path / "f.jpg"
    path.write_bytes(_jpeg(*size))
    with Image.open(path) as image:
        want = np.asarray(image.convert("RGB").resize((224, 224), Image.BILINEAR))
    got = clips.resize_frame(path.read_bytes())
    assert got.dtype == np.uint8 and got.shape == (224, 224, 3)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(clips.resize_frame(path.read_bytes(), 32),
                                  np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR)))


def test_clip_frames_flip_is_pillows_left_right_after_resize():
    frames = [_jpeg(40, 30, seed) for seed in range(4)]
    got = clips.clip_frames(frames, [0, 1, 3, 3], size=24, flip=True)
    for row, index in enumerate([0, 1, 3, 3]):
        resized = Image.open(io.BytesIO(frames[index])).convert("RGB").resize((24, 24), Image.BILINEAR)
        np.testing.assert_array_equal(got[row], np.asarray(resized.transpose(Image.FLIP_LEFT_RIGHT)))
    with pytest.raises(ClipListError, match="frame 4 requested"):
        clips.clip_frames(frames, [4], size=8)


def test_grey_and_palette_frames_become_rgb():
    buffer = io.BytesIO()
    Image.fromarray(np.arange(600, dtype=np.uint8).reshape(20, 30) % 251).save(buffer, format="PNG")
    got = clips.resize_frame(buffer.getvalue(), 16)
    assert got.shape == (16, 16, 3) and (got[..., 0] == got[..., 1]).all()


def test_bad_images_are_refused_with_their_name(tmp_path):
    with pytest.raises(ClipListError, match="clip7 frame 2: not a readable image"):
        clips.resize_frame(b"not an image", where="clip7 frame 2")
    with pytest.raises(ClipListError, match="outside 1..100 pixels"):  # checked before decoding
        clips.open_frame(_jpeg(20, 10), "big", max_pixels=100)
    data = _jpeg(64, 64)
    with pytest.raises(ClipListError, match="truncated: not a readable image"):  # header cut
        clips.resize_frame(data[:300], 8, where="truncated")
    with pytest.raises(ClipListError, match="truncated: cannot decode the image"):  # pixel data cut
        clips.resize_frame(data[:len(data) * 2 // 3], 8, where="truncated")


def test_list_parsing(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(b"a/clip1 16 0\r\nb/clip2 33 6\r\n\r\nc/v.mp4 0 3\r\n")
    entries = clips.read_clip_list(good, 7)
    assert [(e.path, e.num_frames, e.label, e.line, e.list_index) for e in entries] == [
        ("a/clip1", 16, 0, 1, 0), ("b/clip2", 33, 6, 2, 1), ("c/v.mp4", 0, 3, 4, 2)]
    cases = {"x 16": "bad.txt:1: expected", "x 16 0\ny 1.5 0": "bad.txt:2: frame count and label must be integers",
             "x 16 7": "bad.txt:1: label 7 is outside 0..6", "x -1 0": "bad.txt:1: frame count must be >= 1",
             "\n\n": "bad.txt: the list has no clips"}
    for text, message in cases.items():
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(ClipListError, match=message):
            clips.read_clip_list(tmp_path / "bad.txt", 7)
    with pytest.raises(ClipListError, match="list file not found"):
        clips.read_clip_list(tmp_path / "missing.txt", 7)


def test_class_orders_and_user_classes():
    assert clips.class_names_for("dfew") == ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
    assert clips.class_names_for("FERV39K") == ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Angry")
    assert clips.class_names_for("AFEW") == clips.class_names_for("FERv39k")
    assert clips.class_names_for("custom", "calm, angry") == ("calm", "angry")
    with pytest.raises(ValueError, match="needs its class names"):
        clips.class_names_for("custom")
    with pytest.raises(ValueError, match="distinct"):
        clips.class_names_for("DFEW", "a,a")
    with pytest.raises(ValueError, match="unknown benchmark"):
        clips.class_names_for("MAFW")


def test_frame_order_and_patterns():
    names = ["10.jpg", "9.jpg", "00002.jpg", ".hidden.jpg", "a.JPG", "notes.txt", "b.png"]
    assert clips.frame_names(names, "jpg") == ["00002.jpg", "10.jpg", "9.jpg"]  # code-point order
    assert clips.frame_names(names, "all") == ["00002.jpg", "10.jpg", "9.jpg", "a.JPG", "b.png", "notes.txt"]
    assert clips.frame_names(names, "image") == ["00002.jpg", "10.jpg", "9.jpg", "a.JPG", "b.png"]


def test_clip_paths(tmp_path):
    listed = "D:/DL_Study/Expression_Data/AFEW/Val_AFEW/Angry/000149120"
    assert clips.resolve_clip_path(tmp_path, listed, "D:/DL_Study/Expression_Data") == \
        tmp_path / "AFEW" / "Val_AFEW" / "Angry" / "000149120"
    assert clips.resolve_clip_path(tmp_path, "a/b") == tmp_path / "a" / "b"
    for bad, message in [(listed, "is absolute; pass --strip-prefix"), ("/abs/clip", "is absolute"),
                         ("a/../../etc", "leaves the root")]:
        with pytest.raises(ClipListError, match=message):
            clips.resolve_clip_path(tmp_path, bad)


def test_short_clip_count_matches_the_real_lists():
    """On the original's shipped lists (its annotation/ folder) when present: §8's counts."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "lstpnet-annotation"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    for name, short in [("AFEW_test.txt", 2), ("FERV39k_test.txt", 813), ("DFEW_set_5_test.txt", 2)]:
        entries = clips.read_clip_list(root / name, 7)
        assert sum(e.num_frames < clips.MIN_FRAMES for e in entries) == short, name
