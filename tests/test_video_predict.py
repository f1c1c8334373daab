"""One clip's features -> probabilities (the evaluation sampling, fusion) and `pthnet predict` from
video files, against the PyTorch references."""
import json

import numpy as np
import pytest

from pthnet_jax.inference import clip_logits, clip_probabilities, sample_for_evaluation
from pthnet_jax.models.pthnet import ModelConfig, PTHNet

torch = pytest.importorskip("torch")

from pthnet_jax.convert.mapping import torch_to_flax  # noqa: E402
from pthnet_jax.benchmarks.torch_pthnet import TorchPTHNet  # noqa: E402
from video_helpers import decode_independently, moving_frames, reference_starts, reference_window, write_video  # noqa: E402

CFG = ModelConfig(n_in=32, n_embd=32, mlp_dim=48, num_classes=7, arch=(1, 1, 1, 1))  # shallow: compiles faster
_MODELS = {}  # one module object per config: its evaluation step compiles once


def _torch_pthnet(seed, cfg=CFG):
    model = TorchPTHNet(**cfg.to_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
    return model.eval()


def _flax(model, cfg=CFG):
    _, params, _, _ = torch_to_flax({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
    return _MODELS.setdefault(cfg, PTHNet(cfg)), {"params": params}


def _reference_logits(model, windows):
    """The spec's evaluation sampling written again (numpy float64 rounding), then the torch model."""
    count, num = len(windows), 16
    if count < num:
        picked = list(range(count))
    else:
        seg = count / num
        picked = [int(np.round(seg * i)) + int(seg / 2) for i in range(num)]
    features = np.zeros((1, num, windows.shape[1]), np.float32)
    features[0, :len(picked)] = windows[picked]
    mask = np.arange(num)[None] < len(picked)
    with torch.no_grad():
        return model(None, None, torch.from_numpy(features).transpose(1, 2), None, None,
                     torch.from_numpy(mask)[:, None], False).numpy()[0]


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_clip_probabilities_match_the_reference_for_any_length():
    forward, backward = _torch_pthnet(1), _torch_pthnet(2)
    (model, variables), (rv_model, rv_variables) = _flax(forward), _flax(backward)
    rng = np.random.default_rng(0)
    for count in (1, 5, 16, 17, 41, 100):
        windows = rng.normal(size=(count, 32)).astype(np.float32)
        windows_rv = rng.normal(size=(count, 32)).astype(np.float32)
        np.testing.assert_allclose(clip_logits(model, variables, windows), _reference_logits(forward, windows),
                                   atol=1e-4 * np.abs(_reference_logits(forward, windows)).max())
        got = clip_probabilities(model, variables, {"H": windows}, rv=(rv_model, rv_variables, windows_rv), mu=0.7)
        expected = _softmax(0.7 * _reference_logits(forward, windows) + 0.3 * _reference_logits(backward, windows_rv))
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert abs(got.sum() - 1) < 1e-5


def test_sampling_picks_the_middle_of_each_segment():
    windows = np.arange(41, dtype=np.float32)[:, None].repeat(3, 1)
    sampled, mask = sample_for_evaluation(windows)
    seg = 41 / 16
    assert mask.all() and list(sampled[:, 0].astype(int)) == [int(np.round(seg * i)) + 1 for i in range(16)]
    sampled, mask = sample_for_evaluation(windows[:5])
    assert mask.sum() == 5 and (sampled[5:] == 0).all() and list(sampled[:5, 0]) == [0, 1, 2, 3, 4]


def test_bad_feature_shapes_get_clear_errors():
    model, variables = _flax(_torch_pthnet(1))
    windows = np.zeros((9, 32), np.float32)
    with pytest.raises(ValueError, match="channel-first"):
        clip_probabilities(model, variables, windows.T[None])  # (B, C, T) as in the original code
    with pytest.raises(ValueError, match="channel-first"):
        clip_probabilities(model, variables, np.zeros((32, 9), np.float32))
    with pytest.raises(ValueError, match="batch"):
        clip_probabilities(model, variables, np.zeros((2, 9, 32), np.float32))
    with pytest.raises(ValueError, match="expects 32"):
        clip_probabilities(model, variables, np.zeros((9, 31), np.float32))
    with pytest.raises(ValueError, match="H level"):
        clip_probabilities(model, variables, {"L": windows})


@pytest.mark.slow
def test_pthnet_predict_from_videos_matches_the_references(tmp_path, capsys):
    """Video files -> `pthnet predict` (tiny VideoMAE .pth, forward + backward PTH-Net .pth) vs the
    PyTorch VideoMAE reference on independently decoded frames and the PyTorch PTH-Net."""
    from pthnet_jax.cli import main
    from videomae_torch_reference import VisionTransformer, randomise

    # Width 384 (the family's "small", 6 heads: the size is read from the file), one block, 32-pixel patches.
    backbone = randomise(VisionTransformer(dim=384, depth=1, heads=6, hidden=96, patch=32, num_classes=3), seed=5)
    backbone_file = tmp_path / "videomae.pth"
    torch.save({"model": backbone.state_dict()}, backbone_file)
    cfg = ModelConfig(n_in=384, n_embd=32, mlp_dim=48, num_classes=7, arch=(1, 1, 1, 1))
    forward, backward = _torch_pthnet(1, cfg), _torch_pthnet(2, cfg)
    for name, model in (("fwd.pth", forward), ("bwd.pth", backward)):
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / name)
    videos = [write_video(tmp_path / "clips" / f"clip{i}.mp4", moving_frames(n, 96, 128, seed=i))
              for i, n in enumerate((23, 45))]
    (tmp_path / "broken.mp4").write_bytes(b"nope" * 20)
    output = tmp_path / "predictions.json"
    code = main(["predict", *map(str, videos), str(tmp_path / "broken.mp4"), "--backbone", str(backbone_file),
                 "--checkpoint", str(tmp_path / "fwd.pth"), "--rv-checkpoint", str(tmp_path / "bwd.pth"),
                 "--mu", "0.7", "--dataset", "FERv39k", "--output", str(output)])
    printed = capsys.readouterr()
    assert code == 2 and "broken.mp4" in printed.err  # the bad file is named, the others are predicted
    assert "Happy" in printed.out and "clip1.mp4" in printed.out
    predictions = json.loads(output.read_text())["predictions"]
    assert [p["video"] for p in predictions] == [str(v) for v in videos]
    for video, prediction in zip(videos, predictions):
        frames = decode_independently(video)
        logits = {}
        for direction, model in (("forward", forward), ("reverse", backward)):
            ordered = np.ascontiguousarray(frames[::-1]) if direction == "reverse" else frames
            with torch.no_grad():
                windows = np.concatenate([backbone.forward_features(reference_window(ordered, s)).numpy()
                                          for s in reference_starts(len(frames), 4)])
            logits[direction] = _reference_logits(model, windows)
        expected = _softmax(0.7 * logits["forward"] + 0.3 * logits["reverse"])
        got = np.array(list(prediction["probabilities"].values()))
        assert list(prediction["probabilities"]) == ["Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"]
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert prediction["label"] == list(prediction["probabilities"])[int(np.argmax(expected))]
