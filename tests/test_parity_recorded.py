"""Parity with the original PercePiano code, from the recorded fixtures (reference_parity/fixtures).

No original code is needed: the fixtures hold what the original computed (see reference_parity/README.md for
how they were recorded and how to regenerate them). Tolerances are the named constants of
:mod:`reference_parity.tolerances`, each justified there.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from percepiano import ModelConfig, PercePianoModel, get_preset
from percepiano import hierarchy as H
from percepiano.config import describe_deviations
from percepiano.constants import LEVELS
from reference_parity import compare as C
from reference_parity import recorded as R
from reference_parity.tolerances import DTYPES, TOLERANCES

pytestmark = [pytest.mark.parity, pytest.mark.usefixtures("one_thread")]


def tol(dtype_name: str, kind: str = "act") -> dict:
    atol, rtol = TOLERANCES[dtype_name][kind]
    return {"atol": atol, "rtol": rtol}


# ------------------------------------------------------------------------------------------ fixtures


def test_fixtures_are_complete_small_and_pickle_free():
    man = R.manifest()
    assert man["original"]["commit"] == "e672299"
    assert man["regenerate"] == R.REGENERATE == "PERCEPIANO_UPSTREAM=/path/to/PercePiano python -m reference_parity.capture"
    assert R.integrity_problems() == []  # sha256, array shapes and dtypes (no object arrays), total size
    kinds = {e["kind"] for e in man["files"]}
    assert kinds == {"config", "model", "hierarchy", "attention", "training", "init"}
    assert {(e["level"], e["dtype"]) for e in man["files"] if e["kind"] == "model"} == {
        (lv, d) for lv in LEVELS for d in ("float32", "float64")}


def test_integrity_check_finds_a_changed_fixture(tmp_path):
    shutil.copytree(R.FIXTURE_DIR, tmp_path, dirs_exist_ok=True)
    arrays = R.load("attention.npz", tmp_path)
    arrays["extra"] = np.zeros(1)
    R.save_npz(tmp_path / "attention.npz", arrays)
    (tmp_path / "hierarchy.npz").unlink()
    assert set(R.integrity_problems(tmp_path)) == {
        "attention.npz: changed since it was recorded (sha256)", "attention.npz: arrays differ from MANIFEST.json",
        "hierarchy.npz: missing"}


def test_no_absolute_paths_in_recorded_json():
    for name in ("MANIFEST.json", "published_config.json"):
        text = (R.FIXTURE_DIR / name).read_text()
        assert not re.search(r'"/(root|home|work|tmp|Users)/', text), name


# ------------------------------------------------------------------------------------------ config table


@pytest.fixture(scope="module")
def facts():
    return C._facts()


@pytest.mark.parametrize("name", list(C.CONFIG_KEYS))
def test_published_value(name, facts):
    ours, original, source = C.config_value(name, facts=facts)
    assert ours == original, f"{name}: ours {ours!r} != original {original!r} ({source})"


def test_config_table_covers_the_resolved_original_args():
    cfg = R.published_config()
    resolved = cfg["argparse_resolved"]
    # the values that make up the published run, read back from the original parser (script flag or default)
    assert resolved["lr"]["value"] == 2.5e-5 and "script flag" in resolved["lr"]["source"]
    assert resolved["batch_size"]["value"] == 8 and "script flag" in resolved["batch_size"]["source"]
    for k, v in {"weight_decay": 1e-5, "lr_decay_step": 3000, "lr_decay_rate": 0.98, "grad_clip": 2,
                 "num_epochs": 100, "th_seed": 7, "len_slice": 5000}.items():
        assert resolved[k]["value"] == v and "argparse default" in resolved[k]["source"], k
    assert cfg["yml"]["nn_params"]["num_attention_head"] == 8


# ------------------------------------------------------------------------------------------ init


@pytest.mark.parametrize("preset", ["han", "bilstm", "bilstm_sa"])
def test_original_init_laws_hold_on_the_recorded_original(preset):
    # the laws are properties of the original (all 5 recorded seeds), not assumptions
    assert all(C.original_laws(preset).values()), C.original_laws(preset)


@pytest.mark.parametrize("preset", ["han", "bilstm", "bilstm_sa"])
def test_default_init_follows_the_original_laws(preset):
    laws = C.our_laws(preset, "pytorch_default", seeds=(0, 1, 2))
    assert all(laws.values()), laws
    assert C.std_outside_original(preset, "pytorch_default") == []
    assert get_preset(preset).deviations() == {}


@pytest.mark.parametrize("init, violated", [
    ("orthogonal_lstm", {"no_orthogonality", "no_forget_bias"}),
    ("xavier_attention", {"context_uniform", "linear_range"}),
])
def test_alternative_init_is_detected_and_reported(init, violated):
    laws = C.our_laws("han", init, seeds=(0,))
    assert violated <= {k for k, v in laws.items() if not v}, laws
    assert C.std_outside_original("han", init) != []
    cfg = get_preset("han", init=init)
    assert cfg.deviations() == {"init": init}
    assert any(line.startswith(f"init = {init!r}") for line in describe_deviations(cfg))


@pytest.mark.parametrize("preset, total, trained", [
    ("han", 14_226_451, 12_914_195), ("bilstm", 14_465_555, 3_430_419), ("bilstm_sa", 14_489_107, 3_453_971)])
def test_parameter_counts(preset, total, trained):
    c = C.parameter_counts(preset)
    assert (c["original_total"], c["original_trained"]) == (total, trained)  # docs/original.md#parameter-counts, recorded from the original
    assert c["ours"] == trained  # ours builds exactly the tensors that the original trains
    assert c["ours_tensors"] == c["original_trained_tensors"]


# ------------------------------------------------------------------------------------------ boundaries / hierarchy


def _hier_rows(kind):
    rows = C.compare_boundaries() if kind == "find_boundaries" else [
        r for r in C.compare_hierarchy() if r.group == f"hierarchy/{kind}"]
    assert rows
    return rows


@pytest.mark.parametrize("kind", ["find_boundaries", "softmax_by_boundary", "cal_length", "make_higher_node", "span"])
def test_hierarchy_utilities(kind):
    bad = [f"{r.name}: {r.note}" for r in _hier_rows(kind) if not r.passed]
    assert not bad, bad


def test_boundaries_diff_eq_1_equal_and_diff_gt_0_differ_exactly_at_jumps():
    arrays = R.load("hierarchy.npz")
    cases = [c for c in C._cases().values() if c["key"].startswith("find_boundaries/")]
    jumps_seen = 0
    for c in cases:
        key = c["key"]
        idx, lengths = torch.as_tensor(arrays[key + "/input"]), torch.as_tensor(arrays[key + "/lengths"])
        valid = H.valid_mask(lengths, idx.shape[1])
        if c["raises"]:  # the original crashes (torch.max of an empty tensor); ours raises ValueError
            assert c["raises"].startswith("RuntimeError")
            with pytest.raises(ValueError):
                H.check_indices("beat", idx, valid, "diff_eq_1", allow_jumps=True)
            continue
        ref = [[v for v in row if v >= 0] for row in arrays[key + "/output"].tolist()]
        assert H.boundaries_as_lists(idx, lengths, "diff_eq_1") == ref, key
        gt0 = H.boundaries_as_lists(idx, lengths, "diff_gt_0")
        for i in range(idx.shape[0]):
            n = int(lengths[i])
            jumps = {t + 1 for t in range(n - 1) if int(idx[i, t + 1] - idx[i, t]) > 1}
            jumps_seen += len(jumps)
            assert set(gt0[i]) - set(ref[i]) == jumps and set(ref[i]) <= set(gt0[i]), (key, i)
    assert jumps_seen >= 4  # the recorded cases do contain jumps


def test_original_crash_cases_raise_value_error_in_our_model():
    # a segment within a single measure numbered 0 crashes the original (recorded: make_higher_node raises)
    c = C._cases()["make_higher_node/beat_to_measure_one_measure_at_zero_raises"]
    assert c["raises"].startswith("RuntimeError")
    e = R.entry("model", level="measure", dtype="float64")
    arrays = R.load(e["file"])
    model = PercePianoModel(ModelConfig(**e["config"])).double().eval()
    x = torch.as_tensor(arrays["input/x"])
    locs = {k: torch.as_tensor(arrays[f"input/{k}"]).clone() for k in ("beat", "measure", "section", "voice")}
    lengths = torch.as_tensor(arrays["input/lengths"])
    n = int(lengths[0])
    locs["measure"][0, :n] = 0  # segment 0 ("short", beats start at 0): now one measure numbered 0
    with pytest.raises(ValueError):
        model(x, lengths, locs)


# ------------------------------------------------------------------------------------------ attention / temperature


@pytest.mark.parametrize("case", [c["key"] for c in R.entry("attention")["cases"]])
def test_context_attention(case):
    from percepiano.layers import ContextAttention

    arrays, c = R.load("attention.npz"), next(c for c in R.entry("attention")["cases"] if c["key"] == case)
    dname = case.rsplit("/", 1)[1]
    dtype = DTYPES[dname]
    att = ContextAttention(c["size"], c["num_heads"]).to(dtype)
    with torch.no_grad():
        for name in ("attention_net.weight", "attention_net.bias", "context_vector"):
            att.get_parameter(name).copy_(torch.as_tensor(arrays[f"{case}/{name}"]))
        x = torch.as_tensor(arrays[f"{case}/x"])
        pooled, weights = att(x)
        assert_close(att.similarity(x), torch.as_tensor(arrays[f"{case}/similarity"]), **tol(dname))
    assert_close(weights, torch.as_tensor(arrays[f"{case}/weights"]), **tol(dname))
    assert_close(pooled, torch.as_tensor(arrays[f"{case}/output"]), **tol(dname))


def test_temperature_original_has_none_and_any_other_is_a_reported_deviation():
    # default path (temperature 1) equals the original in float64 ...
    default = C.compare_model("measure", "float64")
    assert all(r.passed for r in default), [r.name for r in default if not r.passed]
    assert ModelConfig().attention_temperature == 1.0 and ModelConfig().deviations() == {}
    # ... any other temperature changes the attention weights (hierarchy and pooling) and is reported
    for t in (0.5, 2.0):
        rows = {r.name: r for r in C.compare_model("measure", "float64", attention_temperature=t)}
        for name in ("beat_weights", "measure_weights", "pool_weights", "logits"):
            assert not rows[name].passed and rows[name].error > 1e-6, (t, name, rows[name].error)
        for name in ("embedded", "note", "voice"):  # below the first attention nothing changes
            assert rows[name].passed, (t, name)
        att = [r for r in C.compare_attention(temperature=t) if r.name.startswith("weights")]
        assert all(not r.passed for r in att)
        cfg = ModelConfig(attention_temperature=t)
        assert cfg.deviations() == {"attention_temperature": t}
        assert "no temperature" in describe_deviations(cfg)[0]


# ------------------------------------------------------------------------------------------ layer by layer


@pytest.fixture(scope="module")
def model_runs():
    """Our model on every level / dtype fixture with the original's weights (computed once)."""
    out = {}
    for level in LEVELS:
        for dname in ("float64", "float32"):
            e = R.entry("model", level=level, dtype=dname)
            arrays = R.load(e["file"])
            out[level, dname] = (arrays, *C.run_ours(ModelConfig(**e["config"]), arrays, DTYPES[dname]))
    return out


@pytest.mark.parametrize("dname", ["float64", "float32"])
@pytest.mark.parametrize("level", LEVELS)
def test_every_intermediate(level, dname, model_runs):
    arrays, inter, _, _ = model_runs[level, dname]
    ref = R.sub(arrays, "out/")
    missing = [k for k in C.REQUIRED[level] if k not in inter]
    assert not missing, f"our model does not expose {missing}"
    compared = []
    for name in C.ORDER:
        if name in ref and name in inter:
            assert_close(inter[name], torch.as_tensor(ref[name]), **tol(dname), msg=lambda m, n=name: f"{level}/{n}: {m}")
            compared.append(name)
    assert set(C.REQUIRED[level]) <= set(compared)


@pytest.mark.parametrize("dname", ["float64", "float32"])
@pytest.mark.parametrize("level", LEVELS)
def test_logits_loss_and_gradients(level, dname, model_runs):
    arrays, inter, loss, grads = model_runs[level, dname]
    assert_close(inter["logits"], torch.as_tensor(arrays["out/logits"]), **tol(dname))
    assert_close(loss, torch.as_tensor(arrays["loss"]).to(loss.dtype).reshape(()), **tol(dname))
    ref = R.sub(arrays, "grad/")
    assert len(ref) > 20
    for name, g in ref.items():
        assert grads.get(name) is not None, f"{level}: no gradient for {name} in ours"
        assert_close(grads[name], torch.as_tensor(g), **tol(dname, "grad"), msg=lambda m, n=name: f"{level}/{n}: {m}")
    # what never gets a gradient in the original is not a trained parameter of ours either
    no_grad = set(R.entry("model", level=level, dtype=dname)["params_without_grad"])
    assert not (no_grad & {n for n, g in grads.items() if g is not None and bool(g.abs().max() > 0)})


def test_level_note_is_not_batch_invariant_like_the_original(model_runs):
    # docs/original.md#levels-and-pooling, invariant 17: the contractor maps padded rows to its bias, which the
    # original does not mask; the recorded pooling weights put mass on padded notes and ours reproduces them
    # (compared above).
    arrays, inter, _, _ = model_runs["note", "float64"]
    w = torch.as_tensor(arrays["out/pool_weights"])
    lengths = arrays["input/lengths"]
    padded_mass = max(float(w[i, lengths[i]:].sum()) for i in range(len(lengths)))
    assert padded_mass > 1e-3
    assert_close(inter["pool_weights"], w, **tol("float64"))
