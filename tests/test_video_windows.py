"""Window schedules, the on-device resize against PyTorch, decoding and its errors."""
import numpy as np
import pytest

from pthnet_jax.video.decode import DecodeError, decode_frame_folder, decode_video, find_clips, load_clip
from pthnet_jax.video.engine import chunk_windows
from pthnet_jax.video.windows import plan_clip, resize_frames, window_frames, window_starts
from video_helpers import decode_independently, moving_frames, reference_starts, write_video


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 20, 24, 29, 32, 41, 100, 117])
@pytest.mark.parametrize("stride", [4, 8, 16])
def test_cover_end_counts_and_starts(n, stride):
    starts = window_starts(n, stride)
    assert starts == reference_starts(n, stride)
    assert len(starts) == (1 if n <= 16 else -(-(n - 16) // stride) + 1)  # the lists' count rule
    assert all(window_frames(n, s).max() <= n - 1 for s in starts)
    if n >= 16:
        assert starts[-1] == n - 16  # the last window ends at the last frame


@pytest.mark.parametrize("n", [15, 16, 17, 29, 40, 41])
def test_public_schedule_and_options(n):
    assert window_starts(n, 4, schedule="public") == list(range(0, n - 15, 4))
    clamp = window_starts(n, 8, end="clamp")
    if n > 16 and (n - 16) % 8:
        assert clamp[-1] == clamp[-2] + 8 and window_frames(n, clamp[-1])[-1] == n - 1
    assert window_starts(n, 4, short="skip")[:1] == ([] if n < 16 else [0])


def test_distinct_windows_are_the_stride_4_windows_and_reverse_indexes_backwards():
    plan = plan_clip(41)
    assert list(plan.starts["forward"]) == window_starts(41, 4)  # every 8/16 window is a 4 window
    assert plan.num_distinct == 2 * 8 and plan.num_listed == 2 * (8 + 5 + 3)
    forward, reverse = plan.frame_indices("forward"), plan.frame_indices("reverse")
    np.testing.assert_array_equal(reverse, 40 - forward)
    for stride in (8, 16):
        np.testing.assert_array_equal(plan.starts["forward"][plan.rows[(stride, "forward")]], window_starts(41, stride))
    short = plan_clip(11)
    np.testing.assert_array_equal(short.frame_indices("forward")[0], np.minimum(np.arange(16), 10))


def test_chunks_cover_every_window_within_the_span():
    plan = plan_clip(300)
    indices = np.concatenate([plan.frame_indices("forward"), plan.frame_indices("reverse")])
    chunks = chunk_windows(indices, 48)
    rows = np.sort(np.concatenate([r for _, _, r in chunks]))
    np.testing.assert_array_equal(rows, np.arange(len(indices)))
    for first, end, rows in chunks:
        assert end - first <= 48 and indices[rows].min() >= first and indices[rows].max() < end


@pytest.mark.parametrize("size", [(96, 128), (256, 320), (224, 224), (37, 501)])
def test_resize_matches_torch_interpolate_without_antialias(size):
    torch = pytest.importorskip("torch")
    frames = np.random.default_rng(0).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    ref = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0,
                                          size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
    ours = np.asarray(resize_frames(frames))
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=3e-7, rtol=0)


def test_decode_video_frames_folder_and_walk(tmp_path):
    frames = moving_frames(9, 48, 64)
    video = write_video(tmp_path / "v" / "a.mp4", frames)
    decoded = decode_video(video)
    assert decoded.shape == (9, 48, 64, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, decode_independently(video))
    assert np.abs(decoded.astype(int) - frames).mean() < 6  # the content survived the codec
    from PIL import Image

    folder = tmp_path / "v" / "faces" / "clip1"
    folder.mkdir(parents=True)
    for i in (1, 2, 10):  # natural order: 2 before 10
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f"frame_{i}.png")
    assert [int(f[0, 0, 0]) for f in decode_frame_folder(folder)] == [1, 2, 10]
    assert [p.relative_to(tmp_path / "v").as_posix() for p in find_clips(tmp_path / "v")] == ["a.mp4", "faces/clip1"]
    np.testing.assert_array_equal(load_clip(folder)[2], np.full((8, 8, 3), 10, np.uint8))


def test_bad_clips_raise_decode_errors_naming_the_file(tmp_path):
    import av

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video at all" * 100)
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), "w") as container:  # a valid container with a stream and no frames
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 48
    for path in (garbage, empty, tmp_path / "missing.mp4"):
        with pytest.raises(DecodeError, match=path.name):
            decode_video(path)
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "0001.jpg").write_bytes(b"broken")
    with pytest.raises(DecodeError, match="0001.jpg"):
        load_clip(folder)
