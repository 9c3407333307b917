"""Repository-wide pytest configuration.

Gated tests skip with a reason that names what enables them:
- ``PERCEPIANO_DATA``: path to ``percepiano_vnet_m2pf.npz`` (real-data tests);
- ``PERCEPIANO_UPSTREAM``: path to a checkout of the original PercePiano code (live parity);
- ``--run-slow`` or ``-m slow``: full-dataset checks that take minutes on a CPU;
- ``-m gpu_regression``: the full-protocol R2 gates (also need CUDA, or ``PERCEPIANO_REGRESSION_DEVICE=cpu``).
"""
from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (full-dataset checks)")


def pytest_collection_modifyitems(config, items):
    selected = config.getoption("-m") or ""
    run_slow = config.getoption("--run-slow") or "slow" in selected.replace("not slow", "")
    skip_slow = pytest.mark.skip(reason="slow full-dataset check: run with --run-slow (or -m slow)")
    # The full-protocol gates train for hours; they run only when selected explicitly.
    run_gates = "gpu_regression" in selected.replace("not gpu_regression", "")
    skip_gate = pytest.mark.skip(reason="full-protocol regression gate: run with `pytest -m gpu_regression` (tox -e gpu_regression)")
    for item in items:
        if "gpu_regression" in item.keywords and not run_gates:
            item.add_marker(skip_gate)
        elif "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
