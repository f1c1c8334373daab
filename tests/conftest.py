"""Test-wide setup, before JAX is first imported: four fake CPU devices, fast XLA compiles, and a
compilation cache shared by the tests of one session (the tiny model's step compiles once)."""
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = "PTHNET_COMPILATION_CACHE" not in os.environ  # made here: removed when the session ends
if _OWN_CACHE:
    os.environ["PTHNET_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="pthnet-test-xla-cache-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_datasets(tmp_path_factory):
    """The training tests' synthetic FERv39k-like data, imported forward and backward, built once."""
    from train_helpers import make_dataset

    return make_dataset(tmp_path_factory.mktemp("tiny-data"))


# The files that take longest, longest first (measured under `.ci/run`, 2026-12-03, after the training
# tests moved to the shallow tiny model). With `-n 2 --dist loadfile` a file runs whole on one worker
# and a worker takes the next file in this order, so starting with the long ones keeps both workers
# busy to the end (pytest-xdist would otherwise order the files by their number of tests, which put
# the few long end-to-end tests last). A file not listed runs after these, in the usual order.
LONGEST_FIRST = (
    "test_runs_streaming.py", "test_gpu_report.py", "test_faults.py", "test_preemption.py", "test_readme.py",
    "test_runs.py", "test_lstpnet_train.py", "test_video_demo_bench.py", "test_demo.py", "test_folds.py",
    "test_bench.py", "test_train.py", "test_runs_placement.py", "test_lstpnet_model.py", "test_cli_run.py",
    "test_model.py", "test_interrupts.py", "test_convert.py", "test_parity.py", "test_evaluate.py",
    "test_multihost.py", "test_cli_convert.py", "test_reliability.py", "test_htnet_model.py",
    "test_video_predict.py", "test_htnet_loso.py", "test_lstpnet_predict.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order below
        config.option.loadscopereorder = False


def pytest_unconfigure(config):
    # The pytest-xdist workers inherit the cache from the process that made it, which ends last.
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["PTHNET_COMPILATION_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
