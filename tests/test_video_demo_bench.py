"""`pthnet demo-video` end to end (tiny) and the extraction benchmark's PyTorch baseline model."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("fused", [False, True])
def test_benchmark_torch_videomae_computes_the_flax_features(fused):
    import jax

    from pthnet_jax.benchmarks.torch_videomae import flops_per_window, from_flax
    from pthnet_jax.models.videomae import VideoMAE, VideoMAEConfig, init_params

    config = VideoMAEConfig(embed_dim=48, depth=2, num_heads=3, mlp_dim=64, patch_size=32)
    variables = init_params(config, jax.random.key(1))
    frames = np.random.default_rng(0).uniform(size=(2, 16, 224, 224, 3)).astype(np.float32)
    expected = np.asarray(VideoMAE(config).apply(variables, frames))
    with torch.no_grad():
        got = from_flax(config, variables, fused=fused)(torch.from_numpy(frames).permute(0, 4, 1, 2, 3)).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5 * np.abs(expected).max())
    assert flops_per_window(config) > 0


@pytest.mark.slow
def test_demo_video_runs_end_to_end(tmp_path, capsys):
    from pthnet_jax.commands.demo_video import run_demo_video

    # A shallower PTH-Net and one step per device call: compiling the trainer is most of this test.
    result = run_demo_video(tmp_path, train_per_class=2, test_per_class=1, epochs=2,
                            overrides={"train.steps_per_dispatch": 1, "model.arch": (1, 1, 1, 0)})
    out = capsys.readouterr().out
    assert result["videos"] == 7 and 0 <= result["accuracy"] <= 100
    assert "held-out accuracy" in out and "true class" in out
    assert (tmp_path / "run" / "best").is_dir()
    assert len(list((tmp_path / "features" / "get_features" / "FERv39k" / "th14_vit_g_16_4").rglob("*.npy"))) == 21
    # The kept backbone is a file `--backbone` reads, and it computes what the demo extracted with: the
    # random VideoMAE's features standardised per channel (computed here independently of the fold).
    import jax

    from pthnet_jax.cli import main
    from pthnet_jax.commands.demo_video import CLASSES, DEMO_BACKBONE_CONFIG, synth_frames
    from pthnet_jax.models.videomae import VideoMAE, VideoMAEConfig, init_params
    from pthnet_jax.video.backbone import load_backbone
    from pthnet_jax.video.windows import resize_frames

    loaded = load_backbone(tmp_path / "backbone.safetensors")
    config = VideoMAEConfig(**DEMO_BACKBONE_CONFIG)
    raw = jax.jit(VideoMAE(config).apply)
    variables = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(10_000)
    reference = np.stack([resize_frames(synth_frames(label, rng)[:16]) for label in range(7) for _ in (0, 1)])
    stats = np.asarray(raw(variables, reference), np.float64)
    window = reference[:3]
    expected = (np.asarray(raw(variables, window), np.float64) - stats.mean(0)) / (stats.std(0) + 1e-6)
    got = np.asarray(loaded.apply(loaded.params, window))
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
    # `pthnet predict` on the kept videos' directory (walked) with the kept backbone and checkpoint.
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "videos" / "Happy"), "--backbone", str(tmp_path / "backbone.safetensors"),
                 "--checkpoint", str(tmp_path / "run" / "best"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    from pthnet_jax.video.predict import predict_files

    row = predict_files(tmp_path / "videos" / "Happy" / "test_000.mp4", tmp_path / "backbone.safetensors",
                        tmp_path / "run" / "best")[0]
    assert list(row["probabilities"]) == list(CLASSES) and row["label"] in CLASSES
    assert "Happy/test_000.mp4" in printed and "Happy/train_001.mp4" in printed and all(c in printed for c in CLASSES)
