import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    """Device of the device-parametrised tests: PMOE_TEST_DEVICE=cuda runs them on the GPU (default: cpu)."""
    return torch.device(os.environ.get("PMOE_TEST_DEVICE", "cpu"))
