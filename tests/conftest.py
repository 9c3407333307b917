"""Shared fixtures for the unit tests."""
from __future__ import annotations

import pytest
from batches import make_batch


@pytest.fixture
def batch():
    return make_batch()
