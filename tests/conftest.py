import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    """Device of the device-parametrised tests: PMOE_TEST_DEVICE=cuda runs them on the GPU (default: cpu)."""
    return torch.device(os.environ.get("PMOE_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: they gain nothing from threads, and OpenMP's spin-waits on a busy
    2-core machine cost 10x. Modules use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
