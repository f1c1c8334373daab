"""Test-wide setup, before JAX is first imported: four fake CPU devices, fast XLA compiles, and a
compilation cache shared by the tests of one session (the tiny model's step compiles once)."""
import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("PTHNET_COMPILATION_CACHE", tempfile.mkdtemp(prefix="pthnet-test-xla-cache-"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_datasets(tmp_path_factory):
    """The training tests' synthetic FERv39k-like data, imported forward and backward, built once."""
    from train_helpers import make_dataset

    return make_dataset(tmp_path_factory.mktemp("tiny-data"))
