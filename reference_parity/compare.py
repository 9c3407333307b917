"""Compare our implementation with the recorded fixtures of the original (shared by the tests and the CLI).

Recorded side: reads the fixtures (:mod:`reference_parity.recorded`), never the original code. Every comparison
returns :class:`Row` objects (group, tensor, max abs error, tolerance, pass/fail) so the ``percepiano parity``
table and the pytest assertions are the same computation. Tolerances are the named constants of
:mod:`reference_parity.tolerances`, each justified there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from percepiano import synthetic as S
from percepiano.constants import LEVELS, LOCATION_KEYS

from . import inputs
from .recorded import entry, load, published_config, sub
from .tolerances import DTYPES, EXACT, FLOAT64_ATOL, FLOAT64_RTOL, TOLERANCES

# Intermediates our model must produce per level (the original computes the whole encoder for every level; ours
# builds only what the level uses, so e.g. the beat tensors do not exist at level 'note').
REQUIRED = {
    "note": ("embedded", "note", "pool_weights", "pooled", "logits"),
    "voice": ("embedded", "note", "voice", "pool_weights", "pooled", "logits"),
    "beat": ("embedded", "note", "voice", "beat_weights", "beat_nodes", "beat", "pool_weights", "pooled", "logits"),
    "measure": ("embedded", "note", "voice", "beat_weights", "beat_nodes", "beat", "measure_weights",
                "measure_nodes", "measure", "pool_weights", "pooled", "logits"),
}
REQUIRED["total_note_cat"] = REQUIRED["measure"]
ORDER = ("embedded", "note", "voice", "beat_weights", "beat_nodes", "beat", "measure_weights", "measure_nodes",
         "measure", "beat_spanned", "measure_spanned", "pool_input", "pool_weights", "pooled", "logits")


@dataclass
class Row:
    group: str  # e.g. "model/measure/float64"
    name: str  # tensor or check
    error: float  # max abs error (nan when not numeric)
    tol: float  # absolute tolerance (the relative one is in ``note``)
    passed: bool
    note: str = ""
    status: str | None = None  # shown instead of pass/FAIL (deviation reports)

    def line(self) -> str:
        err = "-" if math.isnan(self.error) else f"{self.error:.2e}"
        tol = "-" if math.isnan(self.tol) else f"{self.tol:.0e}"
        status = self.status or ("pass" if self.passed else "FAIL")
        return f"{self.name:<44} {err:>10} {tol:>7}  {status}  {self.note}"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, rows):
        self.rows.extend(rows)
        return self

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.passed]

    def table(self) -> str:
        out, group = [], None
        for r in self.rows:
            if r.group != group:
                group = r.group
                out.append(f"\n== {group}\n{'tensor / check':<44} {'max|err|':>10} {'tol':>7}  result")
            out.append(r.line())
        return "\n".join(out)


def max_abs(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


def close_row(group, name, ours, ref, atol, rtol, note="") -> Row:
    ours, ref = torch.as_tensor(ours), torch.as_tensor(ref).to(torch.as_tensor(ours).dtype)
    if ours.shape != ref.shape:
        return Row(group, name, float("inf"), atol, False, f"shape ours {tuple(ours.shape)} vs original {tuple(ref.shape)}")
    err = max_abs(ours, ref)
    ok = bool(torch.isclose(ours.double(), ref.double(), atol=atol, rtol=rtol).all()) if ours.numel() else True
    return Row(group, name, err, atol, ok, note or (f"rtol {rtol:.0e}" if rtol else ""))


def check_row(group, name, ok: bool, note="") -> Row:
    return Row(group, name, float("nan"), float("nan"), bool(ok), note)


# ---------------------------------------------------------------------------------------------- model


def model_config(case: dict, **overrides):
    from percepiano import ModelConfig

    return ModelConfig(**{**case, **overrides})


def run_ours(cfg, arrays: dict, dtype, grads: bool = True):
    """Our model with the original's weights on the fixture batch: (intermediates, loss, grads by original name)."""
    from percepiano import PercePianoModel
    from percepiano.convert import to_original
    from percepiano.training import loss_fn

    model = PercePianoModel(cfg).to(dtype).eval()
    params = {k: torch.as_tensor(v, dtype=dtype) for k, v in sub(arrays, "param/").items()}
    model.load_original_state_dict(params)
    x = torch.as_tensor(arrays["input/x"], dtype=dtype)
    lengths = torch.as_tensor(arrays["input/lengths"])
    locs = {k: torch.as_tensor(arrays[f"input/{k}"]) for k in LOCATION_KEYS}
    labels = torch.as_tensor(arrays["input/labels"], dtype=dtype)
    out = model(x, lengths, locs, return_intermediates=True)
    loss = loss_fn(out.logits, labels)
    g = {}
    if grads:
        loss.backward()
        g = to_original({n: p.grad for n, p in model.named_parameters()}, cfg.level)
    return {k: v.detach() for k, v in out.intermediates.items()}, loss.detach(), g


def compare_model(level: str, dtype_name: str, fixture_dir=None, arrays=None, case=None, **overrides) -> list[Row]:
    """Every intermediate, the logits, the loss and every gradient of one level / dtype."""
    e = entry("model", fixture_dir, level=level, dtype=dtype_name) if case is None else {"config": case}
    arrays = arrays if arrays is not None else load(e["file"], fixture_dir)
    dtype = DTYPES[dtype_name]
    cfg = model_config(e["config"], **overrides)
    group = f"model/{level}/{dtype_name}" + ("" if not overrides else f" {overrides}")
    atol, rtol = TOLERANCES[dtype_name]["act"]
    gatol, grtol = TOLERANCES[dtype_name]["grad"]
    inter, loss, grads = run_ours(cfg, arrays, dtype)
    ref = sub(arrays, "out/")
    rows = []
    for name in ORDER:
        if name not in ref:
            continue
        if name not in inter:
            if name in REQUIRED[level]:
                rows.append(Row(group, name, float("inf"), atol, False, "missing from our intermediates"))
            continue
        rows.append(close_row(group, name, inter[name], ref[name], atol, rtol))
    rows.append(close_row(group, "loss", loss.reshape(()), arrays["loss"].reshape(()), atol, rtol))
    ref_grads = sub(arrays, "grad/")
    worst, worst_name, all_ok, missing = 0.0, "", True, []
    for name, g_ref in ref_grads.items():
        g = grads.get(name)
        if g is None:
            missing.append(name)
            continue
        r = close_row(group, name, g, g_ref, gatol, grtol)
        all_ok &= r.passed
        if r.error > worst:
            worst, worst_name = r.error, name
    extra = [n for n, g in grads.items() if n not in ref_grads and g is not None and bool(g.abs().max() > 0)]
    note = f"{len(ref_grads)} tensors, worst {worst_name}; rtol {grtol:.0e}"
    if missing:
        note += f"; no gradient in ours: {missing}"
    if extra:
        note += f"; gradient in ours but none in the original: {extra}"
    rows.append(Row(group, "gradients (all parameters)", worst, gatol, all_ok and not missing and not extra, note))
    return rows


# ---------------------------------------------------------------------------------------------- hierarchy


def _t(a) -> torch.Tensor:
    return torch.as_tensor(a)


def _cases(fixture_dir=None) -> dict[str, dict]:
    return {c["key"]: c for c in entry("hierarchy", fixture_dir)["cases"]}


def seg_from_boundaries(bnd, length):
    """Segment ids (1, T) of the positions covered by an original boundary list; the rest go to the dustbin."""
    seg = torch.full((1, length), -1, dtype=torch.long)
    k = 0
    for s, e in zip(bnd[:-1], bnd[1:]):
        if s < e and s < length:
            seg[0, s:min(e, length)] = k
            k += 1
    seg[seg < 0] = k
    return seg, k


def compare_boundaries(fixture_dir=None) -> list[Row]:
    """find_boundaries: diff_eq_1 equals the original; diff_gt_0 differs exactly at jumps > 1; crashes -> ValueError."""
    from percepiano import hierarchy as H

    arrays, cases = load("hierarchy.npz", fixture_dir), _cases(fixture_dir)
    rows, group = [], "hierarchy/find_boundaries"
    for key, c in cases.items():
        if not key.startswith("find_boundaries/"):
            continue
        name = key.split("/", 1)[1]
        idx, lengths = _t(arrays[key + "/input"]), _t(arrays[key + "/lengths"])
        valid = H.valid_mask(lengths, idx.shape[1])
        if c["raises"]:
            try:
                H.check_indices("beat", idx, valid, "diff_eq_1", allow_jumps=True)
                rows.append(check_row(group, name, False, f"original raises {c['raises'][:40]}...; ours accepts"))
            except ValueError:
                rows.append(check_row(group, name, True, "original raises RuntimeError; ours ValueError"))
            continue
        ref = [[v for v in r if v >= 0] for r in arrays[key + "/output"].tolist()]
        ours = H.boundaries_as_lists(idx, lengths, "diff_eq_1")
        rows.append(check_row(group, f"{name} diff_eq_1", ours == ref, f"{ours}" if ours != ref else ""))
        gt0 = H.boundaries_as_lists(idx, lengths, "diff_gt_0")
        ok = True
        for i in range(idx.shape[0]):
            n = int(lengths[i])
            step = (idx[i, 1:n] - idx[i, : n - 1]).tolist()
            jumps = {t + 1 for t, s in enumerate(step) if s > 1}
            ok &= set(gt0[i]) - set(ref[i]) == jumps and set(ref[i]) <= set(gt0[i])
        rows.append(check_row(group, f"{name} diff_gt_0", ok, "differs exactly at jumps > 1" if ok else f"{gt0}"))
    return rows


def compare_hierarchy(fixture_dir=None) -> list[Row]:
    """segment softmax, cal_length, make_higher_node (composed from our functions), span_beat_to_note_num."""
    from percepiano import hierarchy as H
    from percepiano.layers import ContextAttention

    arrays, cases = load("hierarchy.npz", fixture_dir), _cases(fixture_dir)
    rows = []
    for key, c in cases.items():
        kind, name = key.split("/", 1)
        group = f"hierarchy/{kind}"
        if kind == "softmax_by_boundary":
            sim = _t(arrays[key + "/similarity"])
            seg, k = seg_from_boundaries(arrays[key + "/boundaries"].tolist(), sim.shape[0])
            ours = H.segment_softmax(sim[None], seg, k)[0]
            covered = int(arrays[key + "/segment_lengths"].sum())
            rows.append(close_row(group, name, ours[:covered], arrays[key + "/output"], FLOAT64_ATOL, FLOAT64_RTOL))
        elif kind == "cal_length":
            ours = H.lengths_from_padded_indices(_t(arrays[key + "/input"]))
            rows.append(close_row(group, name, ours, arrays[key + "/output"], EXACT, 0.0, "exact"))
        elif kind == "make_higher_node":
            rows.append(_compare_make_higher_node(H, ContextAttention, arrays, key, c, group, name))
        elif kind == "span":
            idx, lengths = _t(arrays[key + "/indices"]), _t(arrays[key + "/lengths"])
            valid = H.valid_mask(lengths, idx.shape[1])
            if bool((~((idx != 0) & valid).any(dim=1)).any()):
                # a row whose indices are all 0: the original's find_boundaries crashes before it ever spans
                try:
                    H.check_indices("measure", idx, valid, "diff_eq_1", allow_jumps=False)
                    rows.append(check_row(group, name, False, "all-zero row accepted by ours"))
                except ValueError:
                    rows.append(check_row(group, name, True, "all-zero row: unreachable in the original "
                                          "(find_boundaries raises first); ours raises ValueError"))
                continue
            nodes = _t(arrays[key + "/beat_out"])
            seg, _, num = H.segment_ids(H.boundary_flags(idx, valid, "diff_eq_1"), valid)
            keep = H.valid_mask(H.lengths_from_padded_indices(idx), idx.shape[1])
            ours = H.span_to_notes(nodes, seg, num, keep)
            rows.append(close_row(group, name, ours, arrays[key + "/output"], FLOAT64_ATOL, FLOAT64_RTOL))
    return rows


def _compare_make_higher_node(H, ContextAttention, arrays, key, c, group, name) -> Row:
    x = _t(arrays[key + "/lower_out"])
    lower, higher = _t(arrays[key + "/lower_indices"]), _t(arrays[key + "/higher_indices"])
    lengths = _t(arrays[key + "/note_lengths"])
    w = _t(arrays[key + "/attention_net.weight"])
    att = ContextAttention(w.shape[0], c["num_heads"]).double()
    with torch.no_grad():
        att.attention_net.weight.copy_(w)
        att.attention_net.bias.copy_(_t(arrays[key + "/attention_net.bias"]))
        att.context_vector.copy_(_t(arrays[key + "/context_vector"]))
    valid = H.valid_mask(lengths, lower.shape[1])
    if c["raises"]:
        try:
            for what, idx in (("beat", lower), ("measure", higher)):
                H.check_indices(what, idx, valid, "diff_eq_1", allow_jumps=True)
            return check_row(group, name, False, f"original raises {c['raises'][:30]}...; ours accepts")
        except ValueError:
            return check_row(group, name, True, "original raises RuntimeError; ours ValueError")
    with torch.no_grad():
        scores = att.similarity(x)
        if c["lower_is_note"]:
            seg, _, num = H.segment_ids(H.boundary_flags(higher, valid, "diff_eq_1"), valid)
            ours = H.pool_segments(x, H.segment_softmax(scores, seg, num), seg, num)
        else:
            jumps = bool((((lower[:, 1:] - lower[:, :-1]) > 1) & valid[:, 1:]).any())
            if jumps:
                # The original maps measures to beat nodes by index arithmetic (beat[first note] - beat[0]); with a
                # jump > 1 those indices point past the merged beat nodes, into the zero padding, and it pools
                # padding silently. Ours refuses such input instead.
                try:
                    H.check_indices("beat", lower, valid, "diff_eq_1", allow_jumps=False)
                    return check_row(group, name, False, "beat jump accepted by ours (original reads padding)")
                except ValueError:
                    return check_row(group, name, True, "original silently pools padding; ours raises ValueError")
            beat_seg, beats, num_beats = H.segment_ids(H.boundary_flags(lower, valid, "diff_eq_1"), valid)
            note_flags = H.boundary_flags(higher, valid, "diff_eq_1")
            flags = H.higher_level_flags(beat_seg, note_flags, x.shape[1])
            bvalid = H.valid_mask(beats, x.shape[1])
            seg, _, num = H.segment_ids(flags, bvalid)
            ours = H.pool_segments(x, H.segment_softmax(scores, seg, num), seg, num)
    return close_row(group, name, ours, arrays[key + "/output"], FLOAT64_ATOL, FLOAT64_RTOL)


# ---------------------------------------------------------------------------------------------- attention


def compare_attention(fixture_dir=None, temperature: float = 1.0) -> list[Row]:
    from percepiano.layers import ContextAttention

    arrays = load("attention.npz", fixture_dir)
    rows = []
    for c in entry("attention", fixture_dir)["cases"]:
        key = c["key"]
        dname = key.rsplit("/", 1)[1]
        dtype = DTYPES[dname]
        atol, rtol = TOLERANCES[dname]["act"]
        att = ContextAttention(c["size"], c["num_heads"], temperature).to(dtype)
        with torch.no_grad():
            att.attention_net.weight.copy_(_t(arrays[key + "/attention_net.weight"]))
            att.attention_net.bias.copy_(_t(arrays[key + "/attention_net.bias"]))
            att.context_vector.copy_(_t(arrays[key + "/context_vector"]))
            x = _t(arrays[key + "/x"]).to(dtype)
            sim = att.similarity(x)
            pooled, weights = att(x)
        group = f"attention/{key.split('/')[1]}/{dname}" + ("" if temperature == 1.0 else f" T={temperature}")
        rows.append(close_row(group, "similarity (get_attention)", sim, arrays[key + "/similarity"], atol, rtol))
        rows.append(close_row(group, "weights (softmax in forward)", weights, arrays[key + "/weights"], atol, rtol))
        rows.append(close_row(group, "output (forward)", pooled, arrays[key + "/output"], atol, rtol))
    return rows


# ---------------------------------------------------------------------------------------------- training


def _batch(arrays, prefix, dtype):
    from percepiano.data import Batch

    x = torch.as_tensor(arrays[prefix + "x"], dtype=dtype)
    locs = {k: torch.as_tensor(arrays[prefix + k]) for k in LOCATION_KEYS}
    return Batch(x=x, lengths=torch.as_tensor(arrays[prefix + "lengths"]), note_locations=locs,
                 labels=torch.as_tensor(arrays[prefix + "labels"], dtype=dtype),
                 segment_ids=[f"s{i}" for i in range(x.shape[0])])


def _train_model(e, arrays, dtype):
    from percepiano import PercePianoModel
    from percepiano.convert import to_original

    model = PercePianoModel(model_config(e["config"])).to(dtype)
    model.load_original_state_dict({k: torch.as_tensor(v) for k, v in sub(arrays, "init/").items()})
    names = to_original({n: n for n, _ in model.named_parameters()}, e["config"]["level"])  # original -> ours
    return model, {orig: dict(model.named_parameters())[ours] for orig, ours in names.items()}


def _spy_clip(box):
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *a, **k):
        params = list(parameters)
        box["before"] = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
        norm = real(params, max_norm, *a, **k)
        box["norm"] = float(norm)
        box["after"] = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
        return norm

    return real, spy


def ours_step(model, batch, optimizer, scheduler, tcfg) -> dict:
    """One call of our ``training.train_step``, observing the gradients before and after clipping."""
    from percepiano import training

    box: dict = {}
    real, spy = _spy_clip(box)
    torch.nn.utils.clip_grad_norm_ = spy
    try:
        box["loss"] = float(training.train_step(model, batch, optimizer, scheduler, tcfg))
    finally:
        torch.nn.utils.clip_grad_norm_ = real
    box["lr_after"] = optimizer.param_groups[0]["lr"]
    return box


def compare_training(dtype_name: str, fixture_dir=None) -> list[Row]:
    from percepiano import training

    e = entry("training", fixture_dir, dtype=dtype_name)
    arrays = load(e["file"], fixture_dir)
    dtype = DTYPES[dtype_name]
    atol, rtol = TOLERANCES[dtype_name]["act"]
    gatol, grtol = TOLERANCES[dtype_name]["grad"]
    patol, prtol = TOLERANCES[dtype_name]["param"]
    rows = []
    for run, batch_prefix in (("step_published", "batch0/"), ("step_clip", "clip_batch/")):
        r = e["runs"][run]
        group = f"training/{run}/{dtype_name}"
        tcfg = training.TrainConfig(lr=r["lr"], weight_decay=r["weight_decay"], grad_clip=float(r["grad_clip"]),
                                    lr_step_size=int(r["lr_decay_step"]), lr_gamma=r["lr_decay_rate"])
        model, by_orig = _train_model(e, arrays, dtype)
        opt = training.build_optimizer(model, tcfg)
        sched = training.build_scheduler(opt, tcfg)
        box = ours_step(model, _batch(arrays, batch_prefix, dtype), opt, sched, tcfg)
        rows.append(close_row(group, "loss", torch.tensor(box["loss"]), arrays[f"{run}/loss"], atol, rtol))
        rows.append(close_row(group, "grad norm (before clipping)", torch.tensor(box["norm"]),
                              arrays[f"{run}/grad_norm"], gatol, grtol,
                              f"clip binds: {r['clip_binds']} (norm {r['grad_norm']:.3g} vs {r['grad_clip']})"))
        rows.append(close_row(group, "lr after the step", torch.tensor(box["lr_after"]),
                              arrays[f"{run}/lr_after"], 0.0, 1e-12))
        for label, key, tol in (("gradients before clipping", "grad", (gatol, grtol)),
                                ("gradients after clipping", "clipped_grad", (gatol, grtol))):
            ref = sub(arrays, f"{run}/{key}/")
            got = {n: box["before" if key == "grad" else "after"].get(id(p)) for n, p in by_orig.items()}
            rows.append(_dict_row(group, label, got, ref, *tol))
        ref = sub(arrays, f"{run}/param_after/")
        rows.append(_dict_row(group, "parameters after the step", {n: p.detach() for n, p in by_orig.items()},
                              ref, patol, prtol, ignore_missing=("performance_encoder.",)))
    # trajectory
    tr = e["trajectory"]
    group = f"training/trajectory/{dtype_name}"
    tcfg = training.TrainConfig(lr=tr["lr"], lr_step_size=tr["lr_step_size"], lr_gamma=tr["lr_gamma"])
    model, by_orig = _train_model(e, arrays, dtype)
    opt = training.build_optimizer(model, tcfg)
    sched = training.build_scheduler(opt, tcfg)
    losses, lrs = [], []
    for bi in tr["batches"]:
        box = ours_step(model, _batch(arrays, f"batch{bi}/", dtype), opt, sched, tcfg)
        losses.append(box["loss"])
        lrs.append(box["lr_after"])
    rows.append(close_row(group, f"loss at each of {len(losses)} steps", torch.tensor(losses, dtype=torch.float64),
                          arrays["trajectory/loss"], atol, rtol))
    rows.append(close_row(group, "lr after each step", torch.tensor(lrs, dtype=torch.float64),
                          arrays["trajectory/lr_after"], 0.0, 1e-12))
    rows.append(_dict_row(group, "final parameters", {n: p.detach() for n, p in by_orig.items()},
                          sub(arrays, "trajectory/param_final/"), patol, prtol, ignore_missing=("performance_encoder.",)))
    return rows


def _dict_row(group, label, got: dict, ref: dict, atol, rtol, ignore_missing=()) -> Row:
    worst, worst_name, ok, missing = 0.0, "", True, []
    for name, r in ref.items():
        g = got.get(name)
        if g is None:
            if not name.startswith(ignore_missing):
                missing.append(name)
            continue
        row = close_row(group, name, g, r, atol, rtol)
        ok &= row.passed
        if row.error > worst:
            worst, worst_name = row.error, name
    note = f"{len(ref)} tensors, worst {worst_name}; rtol {rtol:.0e}" + (f"; missing in ours: {missing}" if missing else "")
    return Row(group, label, worst, atol, ok and not missing, note)


# ---------------------------------------------------------------------------------------------- init laws


def init_laws(names, tensors: dict[str, torch.Tensor]) -> dict[str, bool]:
    """The original's init laws (docs/original.md#initialization), evaluated on one model's tensors (original names).

    - ``context_uniform``: context vectors within [-1, 1], mean ~ 0, std ~ 1/sqrt(3) (U(-1, 1));
    - ``lstm_range``: every LSTM tensor within +-1/sqrt(hidden);
    - ``linear_range``: every Linear weight/bias within +-1/sqrt(fan_in);
    - ``no_orthogonality``: no LSTM W_hh (nor a gate block of it) is orthogonal;
    - ``no_forget_bias``: the forget-gate slice of bias_ih + bias_hh has mean ~ 0 (not 1).
    """
    laws = {"context_uniform": True, "lstm_range": True, "linear_range": True, "no_orthogonality": True,
            "no_forget_bias": True}
    for n in names:
        t = tensors[n].detach().double()
        if n.endswith("context_vector"):
            laws["context_uniform"] &= bool(t.abs().max() <= 1) and abs(float(t.mean())) < 0.25 and \
                abs(float(t.std()) - 3 ** -0.5) < 0.1
        elif any(s in n for s in (".weight_ih_", ".weight_hh_", ".bias_ih_", ".bias_hh_")):
            hidden = tensors[n.replace("weight_ih", "weight_hh").replace("bias_ih", "weight_hh").replace("bias_hh", "weight_hh")].shape[1]
            laws["lstm_range"] &= bool(t.abs().max() <= hidden ** -0.5 + 1e-7)
            if ".weight_hh_" in n:
                per_gate, whole = lstm_orthogonality(t)
                laws["no_orthogonality"] &= per_gate > 0.3 and whole > 0.3
            if ".bias_ih_" in n:
                b = t + tensors[n.replace("bias_ih", "bias_hh")].detach().double()
                laws["no_forget_bias"] &= abs(float(b[hidden:2 * hidden].mean())) < 0.1
        elif n.endswith((".weight", ".bias")):
            w = tensors[n[: -len(".bias")] + ".weight"] if n.endswith(".bias") else t
            laws["linear_range"] &= bool(t.abs().max() <= w.shape[1] ** -0.5 + 1e-7)
    return laws


def lstm_orthogonality(w: torch.Tensor) -> tuple[float, float]:
    """(max over gates of ||W_g W_g^T - I||_F / sqrt(H), ||W^T W - I||_F / sqrt(H)) for a (4H, H) W_hh."""
    H = w.shape[1]
    eye = torch.eye(H, dtype=torch.float64)
    w = w.double()
    per_gate = max(float(torch.linalg.norm(g @ g.T - eye)) for g in w.split(H, dim=0)) / H ** 0.5
    return per_gate, float(torch.linalg.norm(w.T @ w - eye)) / H ** 0.5


def original_laws(preset: str, fixture_dir=None) -> dict[str, bool]:
    """The same laws evaluated on the ORIGINAL's recorded statistics (all seeds): they are properties of the original."""
    e = entry("init", fixture_dir)
    meta, arrays = e["models"][preset], load(e["file"], fixture_dir)
    names = [str(n) for n in arrays[f"{preset}/names"]]
    shapes = dict(zip(meta["names"], meta["shapes"]))
    st = arrays[f"{preset}/stats"]  # (seeds, tensors, [min, max, mean, std])
    laws = {k: True for k in ("context_uniform", "lstm_range", "linear_range", "no_orthogonality", "no_forget_bias")}
    for i, n in enumerate(names):
        amax = max(-st[:, i, 0].min(), st[:, i, 1].max())
        mean, std = st[:, i, 2], st[:, i, 3]
        if n.endswith("context_vector"):
            laws["context_uniform"] &= bool(amax <= 1 and np.abs(mean).max() < 0.25 and np.abs(std - 3 ** -0.5).max() < 0.1)
        elif any(t in n for t in (".weight_ih_", ".weight_hh_", ".bias_ih_", ".bias_hh_")):
            hh = n.replace("weight_ih", "weight_hh").replace("bias_ih", "weight_hh").replace("bias_hh", "weight_hh")
            laws["lstm_range"] &= bool(amax <= shapes[hh][1] ** -0.5 + 1e-7)
        elif n.endswith((".weight", ".bias")):
            w = n[: -len(".bias")] + ".weight" if n.endswith(".bias") else n
            laws["linear_range"] &= bool(amax <= shapes[w][1] ** -0.5 + 1e-7)
    laws["no_orthogonality"] = bool((arrays[f"{preset}/lstm_hh_orthogonality"] > 0.3).all())
    laws["no_forget_bias"] = bool((np.abs(arrays[f"{preset}/forget_bias"][:, :, 2]) < 0.1).all())
    return laws


def our_laws(preset: str, init: str = "pytorch_default", seeds=(0, 1, 2)) -> dict[str, bool]:
    """The laws on our model's tensors (original names), AND-ed over ``seeds``."""
    from percepiano import PercePianoModel, get_preset
    from percepiano.convert import to_original

    cfg = get_preset(preset, init=init)
    out: dict[str, bool] = {}
    for seed in seeds:
        torch.manual_seed(seed)
        model = PercePianoModel(cfg)
        tensors = to_original(dict(model.named_parameters()), cfg.level)
        for k, v in init_laws(list(tensors), tensors).items():
            out[k] = out.get(k, True) and v
    return out


def std_outside_original(preset: str, init: str = "pytorch_default", seed: int = 0, fixture_dir=None) -> list[str]:
    """Tensors (>= 64 elements) whose std in our init lies outside the original's seed range (+-25 %)."""
    from percepiano import PercePianoModel, get_preset
    from percepiano.convert import to_original

    arrays = load(entry("init", fixture_dir)["file"], fixture_dir)
    st = arrays[f"{preset}/stats"]
    cfg = get_preset(preset, init=init)
    torch.manual_seed(seed)
    tensors = to_original(dict(PercePianoModel(cfg).named_parameters()), cfg.level)
    bad = []
    for i, n in enumerate(str(x) for x in arrays[f"{preset}/names"]):
        if n in tensors and tensors[n].numel() >= 64:
            lo, hi = st[:, i, 3].min() * 0.75, st[:, i, 3].max() * 1.25
            if not lo <= float(tensors[n].detach().double().std()) <= hi:
                bad.append(n)
    return bad


def parameter_counts(preset: str, fixture_dir=None) -> dict:
    """Original (recorded) total / trained counts and tensors vs ours."""
    from percepiano import PercePianoModel, get_preset
    from percepiano.convert import to_original

    meta = entry("init", fixture_dir)["models"][preset]
    cfg = get_preset(preset)
    model = PercePianoModel(cfg)
    names = set(to_original(dict(model.named_parameters()), cfg.level))
    return {"original_total": meta["total_params"], "original_trained": meta["trained_params"],
            "ours": sum(p.numel() for p in model.parameters()), "ours_tensors": names,
            "original_trained_tensors": set(meta["names"]) - set(meta["untrained_tensors"])}


def compare_init(preset: str, init: str = "pytorch_default", fixture_dir=None, seeds=(0, 1, 2)) -> list[Row]:
    """Our init (``preset`` at published size) against the original's laws and recorded statistics.

    For ``init="pytorch_default"`` every law must hold; for an alternative init at least one law must be
    violated (the init is detectable) and ``cfg.deviations()`` must name it.
    """
    from percepiano import get_preset

    group = f"init/{preset}/{init}"
    orig, ours = original_laws(preset, fixture_dir), our_laws(preset, init, seeds)
    default = init == "pytorch_default"
    rows = []
    for law in ours:
        row = check_row(group, f"law {law}", (ours[law] and orig[law]) if default else orig[law],
                        f"original: {'holds' if orig[law] else 'VIOLATED'}; ours: {'holds' if ours[law] else 'VIOLATED'}")
        if not default and row.passed:
            row.status = "holds" if ours[law] else "violated"
        rows.append(row)
    bad = std_outside_original(preset, init, seeds[0], fixture_dir)
    row = check_row(group, "per-tensor std within the original's range", not bad or not default,
                    f"outside: {bad[:3]}{'...' if len(bad) > 3 else ''}" if bad else "all tensors")
    if not default:
        row.status = "differs" if bad else "same"
    rows.append(row)
    if not default:
        dev = get_preset(preset, init=init).deviations()
        violated = [k for k, v in ours.items() if not v]
        rows.append(check_row(group, "detected and reported as a deviation", bool(violated) and dev.get("init") == init,
                              f"violated {violated}; cfg.deviations() = {dev}"))
    c = parameter_counts(preset, fixture_dir)
    rows.append(check_row(group, "parameter count = original trained count", c["ours"] == c["original_trained"],
                          f"ours {c['ours']:,} vs original trained {c['original_trained']:,} (original total "
                          f"{c['original_total']:,} incl. never-trained tensors, not built by ours)"))
    rows.append(check_row(group, "our tensors = original trained tensors",
                          c["ours_tensors"] == c["original_trained_tensors"], ""))
    return rows


# ---------------------------------------------------------------------------------------------- config


# Published values compared with our defaults: name -> how to read ours. "han"/"bilstm" = PRESETS entries,
# "train" = TrainConfig(), "fact" = observed behaviour of our training/eval code (see _facts).
CONFIG_KEYS = {
    "hidden_size": "han", "note_size": "han", "voice_size": "han", "beat_size": "han", "measure_size": "han",
    "encoder_size": "han", "note_layers": "han", "voice_layers": "han", "beat_layers": "han",
    "measure_layers": "han", "num_heads": "han", "dropout": "han", "num_labels": "han", "level_han": "han",
    "level_baseline": "bilstm",
    "lr": "train", "batch_size": "train", "in_training_eval_batch_size": "train", "weight_decay": "train",
    "lr_step_size": "train", "lr_gamma": "train", "grad_clip": "train", "epochs": "train", "seed": "train",
    "eval_batch_size": "train", "n_folds": "fact",
    "optimizer": "fact", "adam_betas": "fact", "adam_eps": "fact", "scheduler": "fact", "scheduler_stepped": "fact",
    "grad_clip_kind": "fact", "loss": "fact", "model_selection": "fact", "eval_metric": "fact",
}
# published_config.json has no separate entry for the in-training evaluation batch: the original's valid/test
# loaders use args.batch_size (train_m2pf.py prepare_dataloader).
_ALIASES = {"in_training_eval_batch_size": "batch_size"}


def _observe_training() -> dict:
    """Run 3 of our train_steps on a tiny model: how the scheduler steps and what clip_grad_norm_ receives."""
    from percepiano import PercePianoModel
    from percepiano import training
    from percepiano.data import Batch

    torch.manual_seed(0)
    cfg = model_config(dict(input_size=3, hidden_size=4, num_heads=2, num_labels=2, level="measure", dropout=0.0))
    model = PercePianoModel(cfg)
    seg = [S.Segment(((2, 1), (1,)), (1, 2, 1, 1)), S.Segment(((1, 1),), (1, 1), first_beat=1, first_measure=1)]
    arr = S.stack(seg, 3, 2, seed=0)
    x, lengths, locs, labels = S.to_torch(arr, torch.float32)
    batch = Batch(x=x, lengths=lengths, note_locations=locs, labels=labels, segment_ids=["a", "b"])
    tc = training.TrainConfig(lr_step_size=1, lr_gamma=0.5, grad_clip=1e-9)
    opt = training.build_optimizer(model, tc)
    sched = training.build_scheduler(opt, tc)
    seen, lrs = [], []
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *a, **k):
        params = list(parameters)
        seen.append((len(params), max_norm, k.get("norm_type", a[0] if a else 2.0)))
        return real(params, max_norm, *a, **k)

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        for _ in range(3):
            training.train_step(model, batch, opt, sched, tc)
            lrs.append(opt.param_groups[0]["lr"])
    finally:
        torch.nn.utils.clip_grad_norm_ = real
    n_params = len(list(model.parameters()))
    return {"lrs": lrs, "lr0": tc.lr, "clip_calls": seen, "n_params": n_params, "max_norm": tc.grad_clip}


# Valid-label levels for the 5 epochs of one tiny train_fold run. At >= 2**25 a float32 label minus a prediction
# in (0, 1) rounds to the label itself, so each epoch's valid loss depends on its level alone, not on the weights
# (which do change: lr > 0): the losses fall to a minimum at epoch 3 that epoch 4 ties exactly, then rise. The
# original (train_m2pf.py: train) keeps a checkpoint only when ``valid_loss < best_valid_loss``, so epoch 3; a
# rule keeping ties (<=) would keep epoch 4, the last epoch 5.
SCRIPTED_LABEL_LEVELS = (3e8, 2e8, 1e8, 1e8, 2.5e8)
SCRIPTED_BEST_EPOCH = 3


def _observe_model_selection() -> dict:
    """Run our ``training.train_fold`` for 5 epochs on a tiny synthetic dataset whose valid labels are set to
    :data:`SCRIPTED_LABEL_LEVELS` epoch by epoch: the valid losses, the epoch it reports and whether ``best.pt``
    holds that epoch's weights (read from ``last.pt`` after each epoch)."""
    import tempfile

    from percepiano import get_preset, synthetic, training

    data = synthetic.dataset(32, seed=0, min_notes=10, max_notes=12)
    split, fold = "composition", 0
    tcfg = training.TrainConfig(epochs=len(SCRIPTED_LABEL_LEVELS), lr=1e-2, limit_segments=2,
                                eval_test_every_epoch=False)
    valid = data.split_indices(split, fold, "valid")[: tcfg.limit_segments]
    spread = 1 + np.arange(data.labels.shape[1], dtype=np.float32) / 100  # labels not constant: valid R2 is finite

    def set_level(level):
        data.labels[valid] = np.float32(level) * spread  # in place: the dataset's tensors share this memory

    losses, weights = [], []  # per epoch
    with tempfile.TemporaryDirectory(prefix="percepiano-parity-") as tmp:
        out = Path(tmp)

        def after_epoch(epoch, record):
            losses.append(record["valid_loss"])
            weights.append(torch.load(out / "last.pt", weights_only=True)["model_state"])
            if epoch < len(SCRIPTED_LABEL_LEVELS):
                set_level(SCRIPTED_LABEL_LEVELS[epoch])

        set_level(SCRIPTED_LABEL_LEVELS[0])
        result = training.train_fold(get_preset("han", hidden_size=4), tcfg, data, split, fold, out,
                                     progress=False, on_epoch_end=after_epoch)
        kept = torch.load(out / "best.pt", weights_only=True)

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    epoch, first_min = result["best_epoch"], int(np.argmin(losses)) + 1
    return {
        "valid_losses_as_scripted": losses[1] < losses[0] and losses[2] < losses[1] and losses[3] == losses[2]
        and losses[4] > losses[3] and first_min == SCRIPTED_BEST_EPOCH,
        "best_epoch": epoch,
        "valid_loss_is_that_epochs": result["valid_loss"] == losses[epoch - 1],
        "kept_weights_are_that_epochs": kept["epoch"] == epoch and same(kept["model_state"], weights[epoch - 1]),
        "weights_change_every_epoch": not any(same(a, b) for a, b in zip(weights, weights[1:])),
    }


def _observe_fold_mean() -> dict:
    """Our summary of 4 fold results with known test R2s: is the reported number their mean?"""
    from percepiano.cv import summarize_folds

    folds = [{"test_r2": r2, "per_label_test_r2": [r2, -r2], "test_mse": 0.01} for r2 in (0.1, 0.3, 0.2, 0.6)]
    return {"reported": summarize_folds(folds)["mean_test_r2"], "mean": float(np.mean([f["test_r2"] for f in folds]))}


def _facts() -> dict[str, object]:
    """Our values of the code facts, each derived from running our code."""
    from percepiano import metrics, training
    from percepiano.constants import N_FOLDS

    model = torch.nn.Linear(2, 2)
    tc = training.TrainConfig()
    opt = training.build_optimizer(model, tc)
    sched = training.build_scheduler(opt, tc)
    g = opt.param_groups
    lossv = float(training.loss_fn(torch.tensor([[0.0, 2.0]]), torch.tensor([[0.5, 0.0]])))
    ref_loss = ((0.5 - 0.5) ** 2 + (1 / (1 + math.exp(-2.0))) ** 2) / 2
    obs = _observe_training()
    per_batch = all(abs(lr - obs["lr0"] * 0.5 ** (k + 1)) < 1e-15 for k, lr in enumerate(obs["lrs"]))
    clip_all = obs["clip_calls"] and all(n == obs["n_params"] and m == obs["max_norm"] and float(t) == 2.0
                                         for n, m, t in obs["clip_calls"])
    rng = np.random.default_rng(0)
    y, p_ = rng.uniform(size=(20, 19)), rng.uniform(size=(20, 19))
    # sklearn r2_score(multioutput='uniform_average'): mean over labels of 1 - SS_res / SS_tot
    ref_r2 = float(np.mean(1 - ((y - p_) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))
    r2_ok = abs(metrics.r2(y, p_) - ref_r2) < 1e-12
    yv, pv = rng.uniform(size=(19, 3)), rng.uniform(size=(19, 3))
    formula = sum(((yv[s:s + 8] - pv[s:s + 8]) ** 2).mean() for s in range(0, 19, 8)) / 19
    valid_ok = abs(training.original_valid_loss(yv, pv, 8) - formula) < 1e-15
    sel = _observe_model_selection()
    strict_min = sel["best_epoch"] == SCRIPTED_BEST_EPOCH and all(v for k, v in sel.items() if k != "best_epoch")
    fold_mean = _observe_fold_mean()
    mean_over_folds = abs(fold_mean["reported"] - fold_mean["mean"]) < 1e-15
    return {
        "n_folds": N_FOLDS,
        "optimizer": type(opt).__name__ if len(g) == 1 else f"{type(opt).__name__} with {len(g)} groups",
        "adam_betas": list(g[0]["betas"]),
        "adam_eps": g[0]["eps"],
        "scheduler": type(sched).__name__,
        "scheduler_stepped": "per_batch" if per_batch else f"lrs {obs['lrs']}",
        "grad_clip_kind": "global_l2_norm_all_parameters" if clip_all else f"clip calls {obs['clip_calls']}",
        "loss": "mse_sigmoid" if abs(lossv - ref_loss) < 1e-7 else f"loss_fn gives {lossv}",
        "model_selection": "lowest_valid_loss" if valid_ok and strict_min else
        f"valid-loss formula ok: {valid_ok}; scripted valid losses: {sel} "
        f"(expected best_epoch {SCRIPTED_BEST_EPOCH}, the first epoch at the minimum)",
        "eval_metric": "r2_uniform_average_test_mean_over_folds" if r2_ok and mean_over_folds else
        f"r2 = sklearn uniform average: {r2_ok}; fold summary {fold_mean}",
    }


def config_value(name: str, fixture_dir=None, facts: dict | None = None) -> tuple[object, object, str]:
    """(ours, original, source) for one published value."""
    from percepiano import PRESETS
    from percepiano.training import TrainConfig

    pub = published_config(fixture_dir)["published"][_ALIASES.get(name, name)]
    kind = CONFIG_KEYS[name]
    if kind in ("han", "bilstm"):
        cfg = PRESETS[kind]
        if name == "hidden_size":
            sizes = {cfg.note_size, cfg.voice_size, cfg.beat_size, cfg.measure_size}
            ours = sizes.pop() if len(sizes) == 1 else sorted(sizes)
        elif name.startswith("level"):
            ours = cfg.level
        else:
            ours = getattr(cfg, name)
    elif kind == "train":
        attr = {"eval_batch_size": "final_eval_batch_size", "in_training_eval_batch_size": "eval_batch_size"}.get(name, name)
        ours = getattr(TrainConfig(), attr)
    else:
        ours = (facts if facts is not None else _facts())[name]
    return ours, pub["value"], pub["source"]


def compare_config(fixture_dir=None) -> list[Row]:
    rows, facts = [], _facts()
    for name in CONFIG_KEYS:
        ours, orig, source = config_value(name, fixture_dir, facts)
        rows.append(check_row("config (published values)", name, ours == orig,
                              f"ours {ours!r} / original {orig!r} [{source[:70]}]"))
    return rows


# ---------------------------------------------------------------------------------------------- everything


def run_all(fixture_dir=None, levels=LEVELS, dtypes=("float64", "float32"), training=True, init=True) -> Report:
    rep = Report()
    rep.add(compare_config(fixture_dir))
    for level in levels:
        for d in dtypes:
            rep.add(compare_model(level, d, fixture_dir))
    rep.add(compare_boundaries(fixture_dir))
    rep.add(compare_hierarchy(fixture_dir))
    rep.add(compare_attention(fixture_dir))
    if training:
        for d in dtypes:
            rep.add(compare_training(d, fixture_dir))
    if init:
        rep.add(compare_init("han", fixture_dir=fixture_dir, seeds=(0,)))
    return rep


# ---------------------------------------------------------------------------------------------- deviations


def deviation_effects(cfg, fixture_dir=None, levels=LEVELS) -> list[Row]:
    """What each deviation of ``cfg`` changes, measured on the fixtures (informational rows, never failures).

    Forward deviations (boundary rule, temperature) rerun the float64 model fixtures with the deviation switched
    on and show which tensors now differ from the original; an init deviation is evaluated against the
    original's init laws at ``cfg``'s published size.
    """
    dev = cfg.deviations()
    rows: list[Row] = []
    forward = {k: v for k, v in dev.items() if k in ("boundary_rule", "attention_temperature")}
    for key, value in forward.items():  # one deviation at a time, so each effect is attributed
        for level in levels:
            for r in compare_model(level, "float64", fixture_dir, **{key: value}):
                r.status, r.passed = ("same" if r.passed else "DIFFERS"), True
                rows.append(r)
        if key == "boundary_rule":
            rows.append(check_row(f"boundary_rule={value!r}", "effect", True,
                                  "identical on contiguous indices (the original's data); differs exactly where "
                                  "indices jump by > 1 (hierarchy/find_boundaries rows)"))
            rows[-1].status = "info"
        if key == "attention_temperature":
            for r in compare_attention(fixture_dir, temperature=value):
                r.status, r.passed = ("same" if r.passed else "DIFFERS"), True
                rows.append(r)
    if "init" in dev:
        preset = next((p for p, c in _presets().items() if c.input_size == cfg.input_size and c.level == cfg.level), "han")
        for r in compare_init(preset, init=dev["init"], fixture_dir=fixture_dir, seeds=(0,)):
            rows.append(r)
    return rows


def _presets():
    from percepiano import PRESETS

    return PRESETS
