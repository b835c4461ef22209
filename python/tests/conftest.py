import os

import pytest
import torch

# MINIPUZZLE_TEST_DEVICE=cuda runs the same suite on the GPU host (scripts/gpu/py_kernels.sh); CPU by default.
DEVICE = os.environ.get("MINIPUZZLE_TEST_DEVICE", "cpu")


@pytest.fixture
def device():
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("MINIPUZZLE_TEST_DEVICE=cuda but no CUDA device")
    return torch.device(DEVICE)
