"""`percepiano parity`: the README's main job. Exit 0 when every check passes, 1 on any failure."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from percepiano.cli import main
from reference_parity import recorded as R

pytestmark = [pytest.mark.parity, pytest.mark.usefixtures("one_thread")]

# Runs `percepiano parity` with the live side (the modules that need the original checkout) made unimportable.
WITHOUT_THE_ORIGINAL = """
import sys

LIVE = ("reference_parity.upstream", "reference_parity.capture")


class RefuseLive:
    def find_spec(self, name, path=None, target=None):
        if name in LIVE:
            raise ImportError(f"the recorded side imported {name}")


sys.meta_path.insert(0, RefuseLive())
from percepiano.cli import main

sys.exit(main(["parity", "--levels", "measure,note", "--dtypes", "float64"]))
"""


def test_parity_passes_on_the_recorded_fixtures_without_the_original():
    env = {k: v for k, v in os.environ.items() if k != R.UPSTREAM_ENV}
    proc = subprocess.run([sys.executable, "-c", WITHOUT_THE_ORIGINAL], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAIL" not in proc.stdout and "deviations from the original: none" in proc.stdout


def test_parity_fails_when_a_recorded_tensor_is_off(tmp_path, capsys):
    fixtures = tmp_path / "fixtures"
    shutil.copytree(R.FIXTURE_DIR, fixtures)
    path = fixtures / "model_measure_float64.npz"
    arrays = dict(np.load(path, allow_pickle=False))
    arrays["out/logits"] = arrays["out/logits"] + 1e-6  # far above the float64 tolerance
    np.savez_compressed(path, **arrays)
    assert main(["parity", "--fixtures", str(fixtures), "--levels", "measure", "--dtypes", "float64"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_parity_reports_deviations_of_a_config(capsys):
    assert main(["parity", "--levels", "measure", "--dtypes", "float64", "--attention-temperature", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "attention_temperature = 0.5" in out
