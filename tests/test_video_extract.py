"""`pthnet extract`: every window against an independent PyTorch reference, the layout that
`pthnet import-features` reads, resuming, and clips that cannot be decoded."""
import json

import numpy as np
import pytest

from pthnet_jax.video.extract import ExtractOptions, clip_features, extract, load_backbone
from pthnet_jax.video.engine import WindowEngine
from video_helpers import (decode_independently, moving_frames, reference_starts, reference_window, toy_apply_torch,
                           toy_backbone, toy_params, write_video)

torch = pytest.importorskip("torch")

# (frames, height, width): 11 and 29 frames upscaled to 224, 16 and 41 downscaled.
CLIPS = {"up/eleven": (11, 96, 128), "up/twentynine": (29, 120, 160), "down/sixteen": (16, 256, 320),
         "down/fortyone": (41, 240, 288)}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i, (name, (count, height, width)) in enumerate(CLIPS.items()):
        write_video(root / f"{name}.mp4", moving_frames(count, height, width, seed=i))
    return root


@pytest.fixture(scope="module")
def videomae_file(tmp_path_factory):
    """A tiny VideoMAE V2 with random weights, saved as a float16 `{'module': ...}` .pth like the release."""
    from videomae_torch_reference import VisionTransformer, randomise

    model = randomise(VisionTransformer(dim=32, depth=2, heads=2, hidden=64, patch=32, num_classes=5), seed=3)
    with torch.no_grad():  # the float32 reference uses exactly the float16 values the file holds
        for param in model.parameters():
            param.copy_(param.half().float())
    path = tmp_path_factory.mktemp("backbone") / "tiny_videomae.pth"
    torch.save({"module": {k: v.half() for k, v in model.state_dict().items()}}, path)
    return path, model.eval()


def _check_against_reference(out, videos, reference_fn, dataset="TEST"):
    worst = 0.0
    for name in CLIPS:
        frames = decode_independently(videos / f"{name}.mp4")
        for reverse in (False, True):
            ordered = np.ascontiguousarray(frames[::-1]) if reverse else frames
            cache = {}
            for stride in (4, 8, 16):
                got = np.load(out / "get_features" / dataset / f"th14_vit_g_16_{stride}{'_rv' if reverse else ''}"
                              / f"{name}.npy")
                starts = reference_starts(len(frames), stride)
                assert got.shape == (len(starts), got.shape[1]) and got.dtype == np.float32
                for row, start in enumerate(starts):
                    if start not in cache:
                        cache[start] = reference_fn(reference_window(ordered, start))
                    ref = cache[start]
                    error = np.abs(got[row] - ref).max() / np.abs(ref).max()
                    assert error <= 2e-5, (name, reverse, stride, start, error)
                    worst = max(worst, error)
    return worst


def test_extract_matches_videomae_reference_from_float16_pth(videos, videomae_file, tmp_path):
    """Every window of clips of 11, 16, 29, 41 frames, up- and down-scaled, forward and reversed, within
    2e-5 x max|feature| of the PyTorch reference; 4 devices, batches of 3 windows (many clips per batch),
    a frame ring small enough to wrap and to split the 41-frame clip into chunks."""
    path, reference = videomae_file
    from pthnet_jax.models.videomae import VideoMAEConfig

    backbone = load_backbone(path, config=VideoMAEConfig(embed_dim=32, depth=2, num_heads=2, mlp_dim=64, patch_size=32))
    assert backbone.dim == 32
    summary = extract(videos, tmp_path, "TEST", backbone, batch_per_device=3, pool_frames=48, progress=False)
    assert summary["extracted"] == 4 and summary["skipped"] == 0
    assert summary["distinct_windows"] == 2 * (1 + 5 + 1 + 8)

    def reference_fn(clip):
        with torch.no_grad():
            return reference.forward_features(clip).numpy()[0]

    worst = _check_against_reference(tmp_path, videos, reference_fn)
    assert worst < 2e-5


def test_clip_features_of_one_clip_equal_the_batched_run(videos):
    frames = decode_independently(videos / "down/fortyone.mp4")
    engine = WindowEngine(toy_backbone(), batch_per_device=2, pool_frames=64)
    single = clip_features(engine, frames, ExtractOptions(strides=(4,), directions=("reverse",)))
    params = toy_params()
    reversed_frames = np.ascontiguousarray(frames[::-1])
    ref = np.stack([toy_apply_torch(params, reference_window(reversed_frames, s)).numpy()[0]
                    for s in reference_starts(41, 4)])
    np.testing.assert_allclose(single[(4, "reverse")], ref, atol=2e-5 * np.abs(ref).max())


def test_resume_skipped_and_lists(videos, tmp_path):
    import shutil

    source = tmp_path / "videos"
    shutil.copytree(videos, source)
    (source / "broken.mp4").write_bytes(b"\x00garbage" * 50)
    labels = tmp_path / "labels.txt"
    labels.write_text("up/eleven.mp4 0 train\nup/twentynine.mp4 1 train\ndown/sixteen.mp4 2\ndown/fortyone.mp4 1\n"
                      "broken.mp4 0\n")
    out = tmp_path / "root"
    first = extract(source, out, "FERv39k", toy_backbone(), labels=labels, pool_frames=64, progress=False)
    assert first["extracted"] == 4 and first["skipped"] == 1
    skipped = json.loads((out / "skipped.json").read_text())["skipped"]
    assert len(skipped) == 1 and "broken.mp4" in skipped[0]["reason"]
    folder = out / "get_features" / "FERv39k"
    files = sorted(folder.rglob("*.npy"))
    assert len(files) == 4 * 6
    contents = {f: f.read_bytes() for f in files}
    # A killed run: one clip's file is missing (a run never leaves a partial file: writes are atomic).
    (folder / "th14_vit_g_16_8_rv" / "up" / "twentynine.npy").unlink()
    second = extract(source, out, "FERv39k", toy_backbone(), labels=labels, pool_frames=64, progress=False)
    assert second["already_done"] == 3 and second["extracted"] == 1 and second["distinct_windows"] == 2 * 5
    assert {f: f.read_bytes() for f in sorted(folder.rglob("*.npy"))} == contents
    assert not [p for p in out.rglob(".*tmp*")]
    train = (out / "annotation" / "FERv39k" / "th14_vit_g_16_4" / "train_All.txt").read_text().splitlines()
    assert train == ["get_features/FERv39k/th14_vit_g_16_4/up/eleven.npy 1 0",
                     "get_features/FERv39k/th14_vit_g_16_4/up/twentynine.npy 5 1"]
    test_rv = (out / "annotation" / "FERv39k" / "th14_vit_g_16_16_rv" / "test_All.txt").read_text().splitlines()
    assert test_rv == ["get_features/FERv39k/th14_vit_g_16_16_rv/down/sixteen.npy 1 2",
                       "get_features/FERv39k/th14_vit_g_16_16_rv/down/fortyone.npy 3 1"]  # the labels' order


@pytest.mark.slow
def test_import_features_reads_the_extracted_root(videos, tmp_path):
    from pthnet_jax.data import open_split
    from pthnet_jax.data.importer import import_features

    labels = tmp_path / "labels.txt"
    labels.write_text("up/eleven.mp4 0 train\nup/twentynine.mp4 1 train\ndown/sixteen.mp4 2 test\n"
                      "down/fortyone.mp4 1 test\n")
    extract(videos, tmp_path / "root", "FERv39k", toy_backbone(), labels=labels, pool_frames=64, progress=False)
    for reverse in (False, True):
        data = import_features("FERv39k", tmp_path / "root", tmp_path / f"data{reverse}", reverse=reverse,
                               feature_dim=24, quiet=True)
        split = open_split(data, "test")
        assert split.num_clips == 2 and list(split.num_windows["H"]) == [1, 8]
