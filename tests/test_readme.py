"""The README's Python snippets run as written, from a fresh clone's point of view.

Every ```python block of README.md runs in a temporary directory that holds what a fresh clone has (the
committed synthetic dataset under ``tests/data/``) plus what the README's own ``percepiano train`` command
on that dataset writes (its ``--out`` folder). ``PERCEPIANO_DATA`` is unset, so the snippets take the path a
fresh clone without the dataset takes.
"""
from __future__ import annotations

import re
import shlex
import shutil
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
