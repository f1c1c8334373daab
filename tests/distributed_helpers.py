"""Launching the two-process (`jax.distributed` on localhost, gloo CPU collectives) test workers."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def start_workers(script: str, args: list[str], log_dir: Path, name: str, processes: int = 2,
                  devices_per_process: int = 2) -> list[tuple[subprocess.Popen, Path]]:
    """`python script *args` once per rank, with the PTHNET_* environment `pthnet train` reads."""
    port = free_port()
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    workers = []
    for rank in range(processes):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PTHNET_COORDINATOR": f"localhost:{port}",
               "PTHNET_NUM_PROCESSES": str(processes), "PTHNET_PROCESS_ID": str(rank),
               "XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count={devices_per_process}".strip()}
        log_path = log_dir / f"{name}-{rank}.log"
        with open(log_path, "w") as log:
            workers.append((subprocess.Popen([sys.executable, script, *args], env=env, stdout=log,
                                             stderr=subprocess.STDOUT), log_path))
    return workers


def wait_for_workers(workers, timeout: float = 400) -> str:
    """Wait for every worker; returns the tail of their logs. Kills what is still running."""
    for process, _ in workers:
        try:
            process.wait(timeout=timeout)
        finally:
            process.kill()
    return "\n".join(path.read_text()[-3000:] for _, path in workers)
