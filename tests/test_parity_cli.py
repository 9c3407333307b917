"""`percepiano parity`: the README's main job. Exit 0 when every check passes, 1 on any failure."""
import shutil

import numpy as np
import pytest

from percepiano.cli import main
from reference_parity import compare

pytestmark = [pytest.mark.parity, pytest.mark.usefixtures("one_thread")]


def test_parity_passes_on_the_recorded_fixtures(capsys):
    assert main(["parity", "--levels", "measure,note", "--dtypes", "float64"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "deviations from the original: none" in out


def test_parity_fails_when_a_recorded_tensor_is_off(tmp_path, capsys):
    fixtures = tmp_path / "fixtures"
    shutil.copytree(compare.FIXTURE_DIR, fixtures)
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
