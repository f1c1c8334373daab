"""`pthnet demo-video`: the whole path from video files to an emotion, with nothing downloaded.

1. Synthesize short videos (PyAV) of seven classes one can see: each class is a shape of its own
   colour moving its own way (a yellow disc drifting right, a blue square sinking, a still grey
   disc, a shaking red square, a growing white disc, a green diamond drifting left, a purple diamond
   rising), with random sizes, speeds, positions, lengths, frame sizes and background noise.
2. Extract features with a small, randomly initialised VideoMAE V2 (`pthnet extract`'s code path:
   windows at strides 4, 8, 16, the original layout and lists).
3. Import them (`pthnet import-features`) and train PTH-Net with the original recipe.
4. Predict the held-out videos from the files (`pthnet predict`'s code path), report the accuracy and
   show one prediction.

A few minutes on a 2-core CPU, most of it XLA compiling.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")  # FERv39k's order
# (RGB colour, shape, motion) per class.
_LOOKS = {
    0: ((235, 205, 40), "disc", "right"),
    1: ((40, 80, 230), "square", "down"),
    2: ((140, 140, 140), "disc", "still"),
    3: ((225, 40, 40), "square", "shake"),
    4: ((245, 245, 245), "disc", "grow"),
    5: ((40, 200, 70), "diamond", "left"),
    6: ((160, 60, 200), "diamond", "up"),
}
_FRAME_SIZES = ((64, 80), (72, 96), (96, 96), (80, 64))


def synth_frames(label: int, rng: np.random.Generator) -> np.ndarray:
    """(N, H, W, 3) uint8 frames of one clip of class `label`."""
    colour, shape, motion = _LOOKS[label]
    height, width = _FRAME_SIZES[rng.integers(len(_FRAME_SIZES))]
    count = int(rng.integers(18, 49))
    radius = rng.uniform(0.24, 0.32) * min(height, width)
    speed = rng.uniform(0.4, 0.8) * min(height, width) / count
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    background = rng.uniform(20, 40) + rng.uniform(-4, 4, 3)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        px, py, r = cx, cy, radius
        offset = (t - count / 2) * speed
        if motion == "right":
            px += offset
        elif motion == "left":
            px -= offset
        elif motion == "down":
            py += offset
        elif motion == "up":
            py -= offset
        elif motion == "shake":
            px += (4 if t % 2 else -4) * speed
        elif motion == "grow":
            r *= 0.6 + 0.9 * t / count
        if shape == "disc":
            inside = (x - px) ** 2 + (y - py) ** 2 <= r ** 2
        elif shape == "square":
            inside = (np.abs(x - px) <= r) & (np.abs(y - py) <= r)
        else:
            inside = np.abs(x - px) + np.abs(y - py) <= 1.3 * r
        image = background + rng.normal(0, 6, (height, width, 3))
        image[inside] = np.asarray(colour) + rng.normal(0, 6, (int(inside.sum()), 3))
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    import av

    from pthnet_jax.fsutil import atomic_path

    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            stream.options = {"qscale": "3"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def synthesize_videos(out: Path, train_per_class: int, test_per_class: int, seed: int) -> Path:
    """Videos under OUT/<class>/<split>_<i>.mp4 and OUT/labels.txt (`<path> <label> <split>`)."""
    rng = np.random.default_rng(seed)
    lines = []
    for label, name in enumerate(CLASSES):
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for index in range(count):
                relative = f"{name}/{split}_{index:03d}.mp4"
                write_video(out / relative, synth_frames(label, rng))
                lines.append(f"{relative} {label} {split}")
    labels = out.parent / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    return labels


DEMO_BACKBONE_CONFIG = dict(embed_dim=64, depth=2, num_heads=4, mlp_dim=128, patch_size=32)


def demo_videomae(seed: int = 0):
    """(config, {"params": ...}) of the demo's small randomly initialised VideoMAE V2 (width 64, 2 blocks,
    32-pixel patches: 392 tokens), its output standardised per channel.

    A random ViT's mean-pooled features are mostly a constant vector (the position table and the
    biases) with the content in small deviations; PTH-Net trains poorly on that. So the per-channel
    mean and standard deviation of its features over the windows of 14 fixed synthetic clips
    (computed once, in float32) are folded into the final LayerNorm (`fc_norm`: scale / std,
    (bias - mean) / std): the result is a plain VideoMAE V2, which `save_backbone` writes as a file
    `pthnet extract` / `pthnet predict --backbone` read.
    """
    import jax
    import jax.numpy as jnp

    from pthnet_jax.models.videomae import VideoMAE, VideoMAEConfig, init_params
    from pthnet_jax.video.windows import resize_frames

    config = VideoMAEConfig(**DEMO_BACKBONE_CONFIG)
    variables = init_params(config, jax.random.key(seed))
    rng = np.random.default_rng(10_000 + seed)
    windows = jnp.stack([resize_frames(synth_frames(label, rng)[:16]) for label in range(len(CLASSES)) for _ in (0, 1)])
    features = np.asarray(jax.jit(VideoMAE(config).apply)(variables, windows), np.float64)
    mean, std = features.mean(0), features.std(0) + 1e-6
    params = jax.tree.map(np.asarray, variables["params"])
    norm = params["fc_norm"]
    params["fc_norm"] = {"scale": (norm["scale"] / std).astype(np.float32),
                         "bias": ((norm["bias"] - mean) / std).astype(np.float32)}
    return config, {"params": params}


def demo_backbone(seed: int = 0, dtype=None):
    """The demo's backbone (`demo_videomae`) as a `Backbone`; `dtype` is the ViT's compute dtype
    (float32 by default)."""
    import jax.numpy as jnp

    from pthnet_jax.models.videomae import VideoMAE
    from pthnet_jax.video.backbone import videomae_backbone

    config, variables = demo_videomae(seed)
    dtype = dtype or jnp.float32
    return videomae_backbone(VideoMAE(config, dtype=dtype), variables, name="demo VideoMAE (random, standardised)",
                             compute_dtype=jnp.dtype(dtype).name)


def write_demo_backbone(path: str | Path, seed: int = 0) -> Path:
    """The demo's backbone as a `.safetensors` file for `--backbone` (the head count in its metadata)."""
    from pthnet_jax.video.backbone import save_backbone

    config, variables = demo_videomae(seed)
    return save_backbone(path, config, variables)


def run_demo_video(workdir: str | Path | None = None, train_per_class: int = 14, test_per_class: int = 6,
                   epochs: int = 25, seed: int = 0, lr: float = 0.02, overrides: dict | None = None) -> dict:
    """Synthesize, extract, import, train, predict; returns {accuracy, seconds per stage, ...}.
    `overrides`: training config fields by dotted name (e.g. {"train.steps_per_dispatch": 1})."""
    from pthnet_jax import load_model
    from pthnet_jax.configs import demo as demo_config
    from pthnet_jax.data.importer import import_features
    from pthnet_jax.train import train_and_evaluate
    from pthnet_jax.video.extract import ExtractOptions, extract
    from pthnet_jax.video.predict import format_table, predict_videos

    from pthnet_jax.reporting import enable_compilation_cache

    enable_compilation_cache()  # extraction compiles too (training would turn it on only later)
    temporary = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="pthnet-demo-video-") if temporary else workdir).absolute()
    times: dict[str, float] = {}
    started = last = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        times[name] = round(now - last, 1)
        last = now

    try:
        videos, root, data_dir, run_dir = (workdir / n for n in ("videos", "features", "data", "run"))
        for stale in (videos, root, data_dir, run_dir):
            shutil.rmtree(stale, ignore_errors=True)
        labels = synthesize_videos(videos, train_per_class, test_per_class, seed)
        print(f"[1/4] {len(CLASSES) * (train_per_class + test_per_class)} synthetic videos in {videos}")
        stage("synthesize")
        backbone = demo_backbone(seed)  # a plain VideoMAE: its params are what backbone.safetensors holds
        summary = extract(videos, root, "FERv39k", backbone, labels=labels,
                          options=ExtractOptions(directions=("forward",)))
        print(f"[2/4] extracted {summary['distinct_windows']} windows ({summary['windows_per_second']:.1f} windows/s) "
              f"with {backbone.name}, {backbone.dim}-d -> {root}")
        stage("extract")
        import_features("FERv39k", root, data_dir, feature_dim=backbone.dim, quiet=True)
        config = demo_config.get_config()
        config.data.data_dir = str(data_dir)
        config.model.n_in = backbone.dim
        config.train.epochs = epochs
        config.optim.milestones = (int(epochs * 2 / 3),)
        config.optim.lr = lr
        config.train.seed = seed
        for key, value in (overrides or {}).items():
            *parents, leaf = key.split(".")
            node = config
            for name in parents:
                node = node[name]
            node[leaf] = value
        print(f"[3/4] training PTH-Net for {epochs} epochs")
        train_and_evaluate(config, run_dir)
        stage("train")
        model, variables = load_model(run_dir / "best")
        tests = [line.split() for line in labels.read_text().splitlines() if line.endswith(" test")]
        paths = [videos / rel for rel, _, _ in tests]
        truth = np.array([int(label) for _, label, _ in tests])
        probabilities = predict_videos(paths, backbone, model, variables)
        predicted = np.array([int(np.argmax(p)) for p in probabilities])
        accuracy = float((predicted == truth).mean() * 100)
        stage("predict")
        print(f"[4/4] predicted {len(paths)} held-out videos from the files\n")
        shown = int(np.random.default_rng(seed).integers(len(paths)))
        print(format_table([str(paths[shown].relative_to(workdir))], [probabilities[shown]], list(CLASSES)))
        print(f"(true class: {CLASSES[truth[shown]]})\n")
        total = time.perf_counter() - started
        print(f"pthnet demo-video finished in {total:.0f}s: held-out accuracy {accuracy:.1f}% over {len(paths)} "
              f"videos (chance {100 / len(CLASSES):.1f}%); seconds per stage {times}")
        if not temporary:
            from pthnet_jax.models.videomae import VideoMAEConfig
            from pthnet_jax.video.backbone import save_backbone

            backbone_file = save_backbone(workdir / "backbone.safetensors", VideoMAEConfig(**DEMO_BACKBONE_CONFIG),
                                          backbone.params)
            print(f"  videos {videos} (labels {labels})\n  features {root}\n  checkpoint {run_dir / 'best'}\n"
                  f"  backbone {backbone_file} (for --backbone)\n"
                  f"try: pthnet predict {videos} --backbone {backbone_file} --checkpoint {run_dir / 'best'}")
        return {"accuracy": accuracy, "videos": len(paths), "seconds": round(total, 1), "stages": times,
                "windows_per_second": summary["windows_per_second"]}
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pthnet demo-video", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary directory)")
    parser.add_argument("--train-per-class", type=int, default=14)
    parser.add_argument("--test-per-class", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-backbone", type=Path, metavar="FILE.safetensors",
                        help="only write the demo's small random backbone to FILE (seconds) and stop")
    args = parser.parse_args(argv)
    if args.write_backbone:
        print(f"wrote {write_demo_backbone(args.write_backbone, args.seed)}: a small random VideoMAE V2 (64-d) for "
              "--backbone; its features mean nothing until a PTH-Net is trained on them (pthnet demo-video --workdir DIR)")
        return 0
    run_demo_video(args.workdir, args.train_per_class, args.test_per_class, args.epochs, args.seed, args.lr)
    return 0
