"""`pthnet predict` with an LSTPNet checkpoint: a frame folder and a video made here, against the
test's own computation (the reference's test sampling written again, Pillow's bilinear resize of the
independently decoded frames, `model.apply` in evaluation mode), with the checkpoint's class names."""
import json

import numpy as np
import pytest
from PIL import Image

from pthnet_jax import cli
from video_helpers import decode_independently, write_video

NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Angry"]  # FERv39k's LSTPNet order


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import jax

    from pthnet_jax.checkpoint import save_checkpoint
    from pthnet_jax.configs import lstpnet_tiny
    from pthnet_jax.task import get_task

    task = get_task("lstpnet")
    config = task.model_config(lstpnet_tiny.get_config().model.to_dict(), 7)
    variables = jax.tree.map(np.asarray, task.init(task.model(config), jax.random.key(3)))
    rng = np.random.default_rng(4)  # running statistics far from (0, 1): evaluation mode must use them
    stats = jax.tree_util.tree_map_with_path(
        lambda key, a: (rng.uniform(0.5, 2.0, a.shape) if "var" in jax.tree_util.keystr(key)
                        else rng.normal(0.0, 0.05, a.shape)).astype(a.dtype), variables["batch_stats"])
    path = tmp_path_factory.mktemp("lstp_predict") / "ckpt"
    save_checkpoint(path, variables["params"], config, {"class_names": NAMES}, family="lstpnet",
                    model_state={"batch_stats": stats})
    return path, config, {"params": variables["params"], "batch_stats": stats}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("lstp_predict_clips")
    rng = np.random.default_rng(5)
    folder = root / "walk" / "face_a"
    folder.mkdir(parents=True)
    for i in range(21):  # names sort by code point = time order; sizes need no resize-aspect care
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).save(folder / f"{i:04d}.png")
    ramp = np.linspace(0, 255, 48, dtype=np.float64)
    frames = np.stack([np.clip(ramp[None, :, None] + 20 * t + rng.integers(0, 40, (36, 48, 3)), 0, 255)
                       .astype(np.uint8) for t in range(12)])
    video = write_video(root / "walk" / "clip_b.mp4", frames)
    return folder, video


def _reference_indices(n):
    """lstpnet-reference, test sampling: 8 segment middles, 2 consecutive frames each."""
    if n > 9:
        tick = (n - 1) / 8.0
        starts = [int(tick / 2.0 + tick * i) for i in range(8)]
    else:
        starts = [0] * 8
    return [min(s + d, n - 1) for s in starts for d in range(2)]


def _reference_probabilities(images, config, variables):
    from pthnet_jax.families.lstpnet.model import LSTPNet

    size = config.image_size
    picked = [images[i] for i in _reference_indices(len(images))]
    x = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)) for im in picked])
    model = LSTPNet(config)
    logits = np.asarray(model.apply(variables, x[None].astype(np.float32) / 255.0, train=False)["logits"])[0]
    e = np.exp(logits.astype(np.float64) - logits.max())
    return e / e.sum()


@pytest.mark.slow  # compiles the model three times (the command, the Python call, the reference): ~14 s
def test_predict_lstpnet_checkpoint_matches_the_independent_computation(checkpoint, clips, tmp_path, capsys):
    path, config, variables = checkpoint
    folder, video = clips
    assert config.image_size == 32
    expected = {
        str(folder): _reference_probabilities([Image.open(p) for p in sorted(folder.iterdir())], config, variables),
        str(video): _reference_probabilities([Image.fromarray(f) for f in decode_independently(video)], config,
                                             variables)}
    out = tmp_path / "p.json"
    code = cli.main(["predict", str(folder.parent), "--checkpoint", str(path), "--output", str(out), "--no-progress"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out.read_text())["predictions"]
    assert sorted(r["video"] for r in rows) == sorted(expected)  # the directory walked: folder and video
    for row in rows:
        assert list(row["probabilities"]) == NAMES  # the checkpoint's class names, in its order
        got = np.array([row["probabilities"][n] for n in NAMES])
        np.testing.assert_allclose(got, expected[row["video"]], atol=2e-5)
        assert row["label"] == NAMES[int(np.argmax(expected[row["video"]]))]
    assert not np.allclose(*(np.array(list(r["probabilities"].values())) for r in rows), atol=1e-3)
    assert "Neutral" in printed and "Angry" in printed

    from pthnet_jax.families.lstpnet.predict import predict_clips

    [row] = predict_clips(folder, path)
    np.testing.assert_allclose(list(row["probabilities"].values()), expected[str(folder)], atol=2e-5)


def test_predict_lstpnet_refuses_a_backbone_and_reports_unreadable_clips(checkpoint, tmp_path, capsys):
    path = checkpoint[0]
    empty = tmp_path / "bad.mp4"
    empty.write_bytes(b"not a video")
    code = cli.main(["predict", str(empty), "--checkpoint", str(path), "--backbone", str(empty)])
    assert code == 2 and "LSTPNet reads the frames themselves, not backbone features" in capsys.readouterr().err
    code = cli.main(["predict", str(empty), "--checkpoint", str(path), "--no-progress"])
    assert code == 2 and f"{empty}: cannot decode the video" in capsys.readouterr().err
