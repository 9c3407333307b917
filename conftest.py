"""Repository-wide pytest configuration.

Gated tests skip with a reason that names what enables them:
- ``PERCEPIANO_DATA``: path to ``percepiano_vnet_m2pf.npz`` (real-data tests);
- ``PERCEPIANO_UPSTREAM``: path to a checkout of the original PercePiano code (live parity);
- ``--run-slow`` or ``-m slow``: full-dataset checks that take minutes on a CPU;
- ``-m gpu_regression``: the full-protocol R2 gates (also need CUDA, or ``PERCEPIANO_REGRESSION_DEVICE=cpu``).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
# What a notebook kernel sees: a fresh interpreter started in notebooks/ (jupyter_client starts the default
# kernel with this interpreter). find_spec locates the package without importing torch.
_WHERE_IS_PERCEPIANO = "import importlib.util as u; s = u.find_spec('percepiano'); print(s.origin if s and s.origin else '')"


def notebook_import_problem() -> str | None:
    """Why the notebooks' kernels would not run this checkout's percepiano (None when they do). The kernels run
    outside pytest, in notebooks/, so only an installed package reaches them: an editable install of this
    checkout, or a copy with the same source sha256 (tox's). A missing, stale or foreign install would fail every
    notebook cell, with a NameError after the first ModuleNotFoundError."""
    try:
        origin = subprocess.run([sys.executable, "-c", _WHERE_IS_PERCEPIANO], cwd=ROOT / "notebooks",
                                capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"could not ask {sys.executable} where percepiano is: {err}"
    if not origin:
        return f"{sys.executable} started in notebooks/ cannot import percepiano"
    installed, here = Path(origin).resolve().parent, ROOT / "percepiano"
    if installed == here:
        return None
    from percepiano.provenance import tree_sha256  # this checkout's (the root is on pytest's path)

    if tree_sha256(installed) != tree_sha256(here):
        return (f"{sys.executable} started in notebooks/ imports percepiano from {installed}, whose source differs "
                f"from this checkout's ({here})")
    return None


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (full-dataset checks)")


def pytest_collection_modifyitems(config, items):
    if any(Path(str(item.fspath)).suffix == ".ipynb" for item in items):
        problem = notebook_import_problem()
        if problem is not None:
            raise pytest.UsageError(f"the notebooks cannot run: {problem}. Run `pip install -e .` in {ROOT} "
                                    f"(the README's install step) and try again")
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
