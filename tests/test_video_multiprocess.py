"""`pthnet extract` split over two processes (jax.distributed on localhost, as training is) writes
the same files as one process, and one merged skipped.json.

The file is also the worker: `python tests/test_video_multiprocess.py VIDEOS OUT`.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _worker(videos: str, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from pthnet_jax import parallel

    parallel.maybe_initialize_distributed()
    from pthnet_jax.video.extract import extract
    from video_helpers import toy_backbone

    summary = extract(videos, out, "TEST", toy_backbone(), pool_frames=64, progress=False)
    print("clips", summary["clips"], "process", summary["process"], "of", summary["processes"])


@pytest.mark.slow
def test_two_processes_split_the_clips(tmp_path):
    from pthnet_jax.video.extract import extract
    from video_helpers import moving_frames, toy_backbone, write_video

    videos = tmp_path / "videos"
    for i, count in enumerate((17, 20, 26)):
        write_video(videos / f"c{i}.mp4", moving_frames(count, 48, 64, seed=i))
    (videos / "bad.mp4").write_bytes(b"not a video")
    single = tmp_path / "single"
    extract(videos, single, "TEST", toy_backbone(), pool_frames=64, progress=False)

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PTHNET_COORDINATOR": f"localhost:{port}",
           "PTHNET_NUM_PROCESSES": "2", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    multi = tmp_path / "multi"
    workers = [subprocess.Popen([sys.executable, __file__, str(videos), str(multi)],
                                env={**env, "PTHNET_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    assert "clips 2 process 0 of 2" in outputs[0] and "clips 2 process 1 of 2" in outputs[1]
    files = sorted(p.relative_to(single) for p in (single / "get_features").rglob("*.npy"))
    assert len(files) == 3 * 6
    assert files == sorted(p.relative_to(multi) for p in (multi / "get_features").rglob("*.npy"))
    import numpy as np

    for f in files:
        np.testing.assert_allclose(np.load(multi / f), np.load(single / f), rtol=0, atol=1e-6)
    assert "bad.mp4" in (multi / "skipped.json").read_text()


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
