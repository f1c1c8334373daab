"""The `pthnet` command: a table of contents that hands each subcommand to its module.

Every subcommand module defines `main(argv: list[str]) -> int`; modules are imported lazily so
`pthnet convert` does not pay for importing the training stack.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pthnet_jax.commands.demo", "synthesize data, import it, train, evaluate (the built-in default job)"),
    "train": ("pthnet_jax.commands.train", "train from a config (by name, e.g. ferv39k, or file) on all local devices"),
    "folds": ("pthnet_jax.commands.folds", "train every fold of a benchmark (forward, and backward + fused): mean +- std"),
    "evaluate": ("pthnet_jax.commands.evaluate", "UAR/WAR/F1 of a checkpoint, forward/backward fusion, mu sweep"),
    "convert": ("pthnet_jax.convert.cli", "PyTorch .pth <-> pthnet-jax checkpoint directory"),
    "import-features": ("pthnet_jax.data.importer", "import VideoMAE V2 feature lists + .npy files into TFDS"),
    "synth": ("pthnet_jax.data.synth", "write synthetic features in the original layout"),
    "bench": ("pthnet_jax.benchmarks.speed", "side-by-side speed benchmark against a PyTorch baseline"),
    "extract": ("pthnet_jax.video.extract", "VideoMAE V2 features of videos, in the original layout"),
    "predict": ("pthnet_jax.video.predict", "class probabilities of video files (backbone + PTH-Net)"),
    "demo-video": ("pthnet_jax.commands.demo_video", "the whole video path on synthetic clips, nothing downloaded"),
    "import-clips": ("pthnet_jax.commands.import_clips", "import LSTPNet clip lists (frame folders or videos) into TFDS"),
    "synth-clips": ("pthnet_jax.commands.synth_clips", "write synthetic LSTPNet clips (JPEG frame folders + lists)"),
    "demo-lstpnet": ("pthnet_jax.commands.demo_lstpnet", "LSTPNet end to end on synthetic clips (CPU, nothing downloaded)"),
    "import-htnet": ("pthnet_jax.commands.import_htnet", "import HTNet's released flow images (a checkout) into TFDS"),
    "loso": ("pthnet_jax.commands.loso", "leave-one-subject-out (HTNet): a run per subject, pooled UF1/UAR"),
    "bench-extract": ("pthnet_jax.benchmarks.extract", "feature extraction speed against PyTorch (one window f32, batched bf16)"),
}

SIGNAL_HANDLED = frozenset({"demo", "train", "folds", "extract", "demo-video", "predict", "import-features"})


def _usage() -> str:
    lines = ["usage: pthnet <command> [options]   |   pthnet --version", "", "commands:"]
    width = max(len(name) for name in SUBCOMMANDS)
    for name, (_, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("Run `pthnet <command> --help` for the options of one command.")
    return "\n".join(lines)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pthnet-jax")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from pthnet_jax import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        print(f"pthnet-jax {_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"pthnet: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM: saved and exit 75, never a KeyboardInterrupt inside XLA (pthnet_jax.interrupts).
    from pthnet_jax.interrupts import handle_signals

    try:
        with handle_signals(f"pthnet {name}") if name in SIGNAL_HANDLED else contextlib.nullcontext():
            module = importlib.import_module(SUBCOMMANDS[name][0])
            return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        print(f"pthnet {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001
        # The commands report the errors they expect themselves; anything else is still one readable
        # line, not a traceback (which PTHNET_DEBUG=1 shows).
        if os.environ.get("PTHNET_DEBUG"):
            raise
        print(f"pthnet {name}: {type(err).__name__}: {err}\n(set PTHNET_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
