"""The README's Python snippets run as written, from a fresh clone's point of view.

Every ```python block of README.md runs in a temporary directory that holds what a fresh clone has (the
committed synthetic dataset under ``tests/data/``) plus what the README's own ``percepiano train`` command
on that dataset writes (its ``--out`` folder). ``PERCEPIANO_DATA`` is unset, so the snippets take the path a
fresh clone without the dataset takes.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from percepiano.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SYNTHETIC = "tests/data/synthetic_m2pf.npz"  # the committed dataset the README's tiny run trains on
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, source) of each fenced block of ``language`` in the README."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in BLOCK.finditer(text) if m.group(1) == language]


def tiny_train_command() -> list[str]:
    """The README's ``percepiano train`` command on the synthetic dataset, as argv (without ``percepiano``)."""
    found = [line for _, src in blocks("bash") for line in src.splitlines()
             if line.startswith("percepiano train ") and SYNTHETIC in line]
    assert len(found) == 1, f"README.md: expected one `percepiano train ... {SYNTHETIC}` line, found {found}"
    return shlex.split(found[0])[1:]


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    """A directory with the committed synthetic dataset, after the README's tiny training run."""
    where = tmp_path_factory.mktemp("clone")
    (where / SYNTHETIC).parent.mkdir(parents=True)
    shutil.copy(ROOT / SYNTHETIC, where / SYNTHETIC)
    argv = tiny_train_command()
    argv = [a if not (i and argv[i - 1] in ("--data", "--out")) else str(where / a) for i, a in enumerate(argv)]
    threads = torch.get_num_threads()
    try:
        assert main(argv + ["--threads", "1", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)  # --threads sets the whole process's
    return where


def test_readme_has_python_snippets():
    assert blocks("python"), "README.md has no ```python block"


@pytest.mark.parametrize("line, source", blocks("python"), ids=[f"line{n}" for n, _ in blocks("python")])
def test_readme_python_block_runs(line, source, fresh_clone, monkeypatch):
    monkeypatch.chdir(fresh_clone)
    monkeypatch.delenv("PERCEPIANO_DATA", raising=False)
    code = compile(source, f"README.md (```python block at line {line})", "exec")
    exec(code, {"__name__": "__readme__"})  # noqa: S102 - the README's own code, the point of the test


def _collect_a_notebook(pythonpath: Path) -> subprocess.CompletedProcess:
    """``pytest --collect-only`` of one notebook, with ``pythonpath`` first on the path of every interpreter
    started (the notebooks' kernels among them)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "--nbval-lax",
         "notebooks/01_quickstart.ipynb"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_notebooks_refuse_a_kernel_that_imports_another_percepiano(tmp_path):
    """The notebooks run in kernels that import the installed percepiano, not the checkout pytest sees. A
    foreign or stale install stops the run before any cell, naming where it is; an installed copy of this
    checkout (tox installs a wheel) runs."""
    foreign = tmp_path / "foreign"
    (foreign / "percepiano").mkdir(parents=True)
    (foreign / "percepiano" / "__init__.py").write_text("__version__ = '0.0.0'\n")
    done = _collect_a_notebook(foreign)
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"imports percepiano from {(foreign / 'percepiano').resolve()}, whose source differs" in done.stderr
    assert "Run `pip install -e .`" in done.stderr

    wheel = tmp_path / "wheel"  # the package as a wheel installs it: the same files, so the same source sha256
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(wheel), str(ROOT)], check=True, capture_output=True, timeout=600)
    done = _collect_a_notebook(wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Cell 0" in done.stdout and "tests collected" in done.stdout
