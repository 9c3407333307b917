"""Throughput benchmarks (pytest-benchmark): ours and, with PERCEPIANO_UPSTREAM set, the original.

Run: ``tox -e bench`` or ``pytest benchmarks --benchmark-only``. Batches come from the dataset when
``PERCEPIANO_DATA`` is set, else synthetic batches with the dataset's shape distribution. Each measurement
records notes/second and peak memory in ``extra_info``; at the end a table with the ratio ours/original is
printed and, with ``PERCEPIANO_BENCH_OUT=FILE.json``, written to that file (see benchmarks/README.md).
"""
from __future__ import annotations

import json
import os
import platform

import pytest
import torch

RESULTS: list[dict] = []


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def results():
    return RESULTS


def machine_class() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-")
    return f"cpu-{os.cpu_count()}cores-{platform.machine()}"


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    by_key = {(r["preset"], r["mode"], r["device"], r["impl"]): r for r in RESULTS}
    lines = ["", f"notes/second at batch 8 ({machine_class()}, torch {torch.__version__}, {torch.get_num_threads()} threads)",
             f"{'preset':<10}{'mode':<18}{'device':<7}{'ours':>12}{'original':>12}{'ratio':>8}{'peak MB':>10}"]
    for (preset, mode, device, impl), r in sorted(by_key.items()):
        if impl != "ours":
            continue
        orig = by_key.get((preset, mode, device, "original"))
        ratio = f"{r['notes_per_s'] / orig['notes_per_s']:.2f}" if orig else "-"
        lines.append(f"{preset:<10}{mode:<18}{device:<7}{r['notes_per_s']:>12.0f}"
                     f"{(orig['notes_per_s'] if orig else float('nan')):>12.0f}{ratio:>8}{r['peak_mb']:>10.0f}")
    for line in lines:
        terminalreporter.write_line(line)
    out = os.environ.get("PERCEPIANO_BENCH_OUT")
    if out:
        with open(out, "w") as fh:
            json.dump({"machine": machine_class(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "results": RESULTS}, fh, indent=1)
