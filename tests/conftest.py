"""Shared fixtures for the unit tests."""
from __future__ import annotations

import pytest
import torch
from tiny import make_batch


@pytest.fixture
def batch():
    return make_batch()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only add synchronisation (and on a shared CPU, a lot of it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
