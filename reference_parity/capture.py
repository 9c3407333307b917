"""Record golden fixtures from the ORIGINAL PercePiano code into ``reference_parity/fixtures/``.

Regenerate (from the repository root, with a checkout of the original at commit e672299)::

    PERCEPIANO_UPSTREAM=/path/to/PercePiano python -m reference_parity.capture

Live side: needs the original checkout (through :mod:`reference_parity.upstream`); it writes what the recorded
side (:mod:`reference_parity.recorded`, :mod:`reference_parity.compare`) reads, and imports from it, never the
other way round.

Everything recorded is numbers produced by running the original modules (imported in isolation by
:mod:`reference_parity.upstream`); no original code is copied. Intermediates are taken by wrapping attributes of
the loaded original module objects / registering forward hooks for the duration of one call (never by editing
the files):

* ``embedded``: forward hook on ``note_embedder`` (its PackedSequence output, zero-padded);
* ``voice``: the return value of ``score_encoder.run_voice_net`` (instance attribute wrapped);
* ``note``, ``beat``, ``measure`` (+ ``beat_spanned``, ``measure_spanned``): forward hook on ``score_encoder``;
* ``beat_nodes`` / ``measure_nodes``: the return values of ``encoder_score.make_higher_node`` (wrapped);
* ``beat_weights`` / ``measure_weights``: the per-segment softmaxes returned by
  ``model_utils.get_softmax_by_boundary`` (wrapped) during that call, concatenated and zero-padded exactly as
  ``make_higher_node`` does (``pad_sequence([cat(...)])``);
* ``pool_input``, ``pooled``, ``logits``: hooks on the top-level attention and on ``out_fc``;
* ``pool_weights``: the tensor returned by ``torch.softmax`` inside the top-level ``ContextAttention.forward``
  (the ``torch`` global of the original ``module`` is swapped for a recording proxy during that call only).

Determinism: the original runs in eval mode (model fixtures) or with dropout 0 (training fixtures: the published
dropout 0.2 would make a single step non-reproducible, so ``drop_out`` is set to 0 in the net params; train()
mode is otherwise what the original uses). float64 fixtures run the float32-initialised model after
``.double()`` with ``torch.set_default_dtype(torch.float64)`` (the original allocates internal buffers with
``torch.zeros`` in the default dtype, e.g. ``run_voice_net``; in float32 nothing changes).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_packed_sequence, pad_sequence

from percepiano import synthetic as S

from . import inputs
from . import upstream as U
from .recorded import FIXTURE_DIR, MAX_BYTES, REGENERATE, UPSTREAM_ENV, array_specs, save_npz, sha256
from .tolerances import DTYPES

SEED = 20240607  # torch.manual_seed before building each original model of the fixtures

# Small configurations of every level, in our ModelConfig field names. Sizes are mutually distinct where the
# original allows it: its head/pool width is 2*encoder.size (= measure size in the yml), so the level 'beat'
# needs beat == measure, 'note' needs note == measure, 'voice' needs note + voice == 2*measure and
# 'total_note_cat' needs note + voice + beat == 3*measure (otherwise the original's Linear shapes mismatch).
_COMMON = dict(input_size=7, num_heads=4, dropout=0.0, num_labels=5,
               note_layers=2, voice_layers=2, beat_layers=2, measure_layers=1)
MODEL_CASES = {
    "measure": dict(_COMMON, level="measure", note_size=6, voice_size=10, beat_size=12, measure_size=14),
    "beat": dict(_COMMON, level="beat", note_size=6, voice_size=10, beat_size=14, measure_size=14),
    "note": dict(_COMMON, level="note", note_size=14, voice_size=10, beat_size=12, measure_size=14),
    "voice": dict(_COMMON, level="voice", note_size=6, voice_size=10, beat_size=12, measure_size=8),
    "total_note_cat": dict(_COMMON, level="total_note_cat", note_size=6, voice_size=8, beat_size=16, measure_size=10),
}
TOP_ATTENTION = {"note": "note_attention", "voice": "voice_attention", "beat": "beat_attention",
                 "measure": "measure_attention", "total_note_cat": "performance_final_attention"}

# Training fixtures: an even smaller measure-level model.
TRAIN_CASE = dict(input_size=5, num_heads=4, dropout=0.0, num_labels=3, level="measure",
                  note_layers=2, voice_layers=2, beat_layers=2, measure_layers=1,
                  note_size=4, voice_size=6, beat_size=8, measure_size=6)
TRAIN_SEGMENTS = (
    S.Segment(((2, 1), (1, 2, 2)), (1, 2, 1, 0, 2, 1, 2, 1), name="t0"),
    S.Segment(((1,), (2, 2)), (1, 1, 1, 1, 3), first_beat=3, first_measure=1, name="t1"),
    S.Segment(((3, 1, 1),), (2, 2, 1, 0, 2), first_beat=2, first_measure=4, name="t2"),
    S.Segment(((1, 1), (2,), (1, 2)), (1, 1, 1, 2, 2, 1, 1), name="t3"),
)
TRAIN_BATCHES = ((0, 1, 2), (3, 0), (1, 2, 3))  # segment indices per batch
TRAJECTORY = dict(steps=6, batches=(0, 1, 2, 0, 1, 2), lr=1e-3, lr_step_size=2, lr_gamma=0.5)
CLIP_LABEL_SCALE = 60.0  # labels x60: (sigmoid - y) is large, so the total grad norm exceeds the clip 2.0

# Published-size models for the init statistics (docs/original.md#initialization).
INIT_MODELS = {"han": (101, "measure"), "bilstm": (9, "note"), "bilstm_sa": (101, "note")}
INIT_SEEDS = (0, 1, 2, 3, 4)


# ------------------------------------------------------------------------------------------------ utilities


def np_(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class _TorchProxy:
    """Delegates everything to ``torch`` but records what ``softmax`` returns."""

    def __init__(self):
        self.softmax_out = []

    def __getattr__(self, name):
        return getattr(torch, name)

    def softmax(self, *a, **k):
        out = torch.softmax(*a, **k)
        self.softmax_out.append(out)
        return out


@contextlib.contextmanager
def proxied_softmax(up, module: torch.nn.Module):
    """While ``module`` (an original ContextAttention) runs forward, record its softmax weights."""
    mod = up.mod("module")
    box = {}

    def pre(m, inputs):
        box["proxy"] = _TorchProxy()
        box["input"] = inputs[0]
        mod.torch = box["proxy"]

    def post(m, inputs, output):
        mod.torch = torch

    h1, h2 = module.register_forward_pre_hook(pre), module.register_forward_hook(post)
    try:
        yield box
    finally:
        h1.remove()
        h2.remove()
        mod.torch = torch


@contextlib.contextmanager
def instrument(up, model, level: str):
    """Record every intermediate of one forward of an original VirtuosoNetMultiLevel (names as ours)."""
    rec: dict[str, torch.Tensor] = {}
    mu, es = up.mod("model_utils"), up.mod("encoder_score")
    orig_gsb, orig_mhn = mu.get_softmax_by_boundary, es.make_higher_node
    enc = model.score_encoder
    orig_rvn = enc.run_voice_net
    calls: list = []

    def gsb(similarity, boundaries, *a, **k):
        out = orig_gsb(similarity, boundaries, *a, **k)
        calls.append(out)
        return out

    def mhn(lower_out, attention, lower_indices, higher_indices, lower_is_note=False):
        calls.clear()
        out = orig_mhn(lower_out, attention, lower_indices, higher_indices, lower_is_note=lower_is_note)
        name = "beat" if lower_is_note else "measure"
        rec[f"{name}_weights"] = pad_sequence([torch.cat(c) for c in calls], batch_first=True)
        rec[f"{name}_nodes"] = out
        return out

    def rvn(*a, **k):
        out = orig_rvn(*a, **k)
        rec["voice"] = out
        return out

    def emb_hook(m, i, o):
        rec["embedded"] = pad_packed_sequence(o, batch_first=True)[0]

    def enc_hook(m, i, o):
        for k in ("note", "beat", "measure", "beat_spanned", "measure_spanned"):
            rec[k] = o[k]

    def fc_pre(m, i):
        rec["pooled"] = i[0]

    def fc_post(m, i, o):
        rec["logits"] = o

    hooks = [model.note_embedder.register_forward_hook(emb_hook), enc.register_forward_hook(enc_hook),
             model.out_fc.register_forward_pre_hook(fc_pre), model.out_fc.register_forward_hook(fc_post)]
    mu.get_softmax_by_boundary, es.make_higher_node = gsb, mhn
    enc.run_voice_net = rvn
    try:
        with proxied_softmax(up, getattr(model, TOP_ATTENTION[level])) as box:
            yield rec
        (w,) = box["proxy"].softmax_out  # exactly one softmax in ContextAttention.forward
        rec["pool_weights"] = w
        rec["pool_input"] = box["input"]
    finally:
        mu.get_softmax_by_boundary, es.make_higher_node = orig_gsb, orig_mhn
        del enc.run_voice_net
        for h in hooks:
            h.remove()


def build_original(up, case: dict, seed: int):
    sizes = {k: case[k] for k in ("note_size", "voice_size", "beat_size", "measure_size", "note_layers",
                                  "voice_layers", "beat_layers", "measure_layers", "num_heads", "dropout")}
    params = up.net_params(case["input_size"], case["num_labels"], **sizes)
    torch.manual_seed(seed)
    return up.build_model(params, case["level"])


def _args(level: str, **extra):
    return argparse.Namespace(multi_level=level, cont_loss=0, make_log=False, **extra)


def run_original(up, model, batch: dict, dtype, level: str, grads: bool) -> tuple[dict, float, dict]:
    """Forward (+ backward) of the original through its own collate and ``get_batch_result``."""
    tr = up.training()
    model.zero_grad(set_to_none=True)
    with default_dtype(dtype):
        collated = up.collate(inputs.original_samples(batch, dtype))
        with instrument(up, model, level) as rec:
            _, loss = tr.get_batch_result(model, collated, torch.nn.MSELoss(), "cpu", args=_args(level))
        if grads:
            loss.backward()
    g = {n: np_(p.grad) for n, p in model.named_parameters() if p.grad is not None} if grads else {}
    return {k: np_(v) for k, v in rec.items()}, float(loss.item()), g


def batch_arrays(batch: dict, prefix="input/") -> dict:
    return {prefix + k: np.asarray(v) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------ captures


def capture_models(up, out: Path) -> list[dict]:
    entries = []
    batch = S.stack(inputs.MODEL_SEGMENTS, MODEL_CASES["measure"]["input_size"], _COMMON["num_labels"], seed=SEED)
    for level, case in MODEL_CASES.items():
        model32 = build_original(up, case, SEED).eval()
        for dname, dtype in DTYPES.items():
            model = model32 if dtype == torch.float32 else copy.deepcopy(model32).double()
            rec, loss, grads = run_original(up, model, batch, dtype, level, grads=True)
            arrays = {f"param/{k}": np_(v) for k, v in model.state_dict().items()}
            arrays.update(batch_arrays(batch))
            arrays.update({f"out/{k}": v for k, v in rec.items()})
            arrays.update({f"grad/{k}": v for k, v in grads.items()})
            arrays["loss"] = np.asarray(loss, dtype=np.float64)
            name = f"model_{level}_{dname}.npz"
            save_npz(out / name, arrays)
            no_grad = sorted(n for n, _ in model.named_parameters() if n not in grads)
            entries.append({
                "file": name, "kind": "model", "level": level, "dtype": dname, "config": case, "seed": SEED,
                "mode": "eval", "segments": [s.name for s in inputs.MODEL_SEGMENTS],
                "params_without_grad": no_grad,
                "note": "loss = MSELoss(sigmoid(logits), labels) via the original get_batch_result; grad/* after "
                        "loss.backward() in eval mode (no clipping)",
            })
    return entries


def _ragged(lists, fill=-1) -> np.ndarray:
    width = max((len(x) for x in lists), default=0)
    arr = np.full((len(lists), width), fill, dtype=np.int64)
    for i, x in enumerate(lists):
        arr[i, : len(x)] = x
    return arr


def _lengths(rows) -> np.ndarray:
    """Segment lengths of zero-padded index rows: last non-zero position + 1 (the whole row if all zero)."""
    out = []
    for r in rows:
        nz = np.nonzero(np.asarray(r))[0]
        out.append(int(nz[-1]) + 1 if len(nz) else len(r))
    return np.asarray(out, dtype=np.int64)


def _try(fn):
    with contextlib.redirect_stdout(io.StringIO()):  # cal_length prints on its error path
        try:
            return fn(), None
        except Exception as exc:  # noqa: BLE001 - recorded as data
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _attention(up, size, heads, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    att = up.mod("module").ContextAttention(size, heads)
    return att.to(dtype).eval()


def capture_hierarchy(up, out: Path) -> dict:
    u, mu = up.mod("utils"), up.mod("model_utils")
    arrays, cases = {}, []
    t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731

    # find_boundaries_batch
    fb_cases = {
        "spec_jump2_padding": [[0, 0, 1, 1, 3, 3, 4, 5, 5, 0, 0]],
        "spec_contiguous": [[0, 1, 1, 2, 2]],
        "spec_start2": [[2, 2, 3, 3, 4]],
        "batch_offsets_padding": [[3, 3, 4, 5, 5, 6], [7, 8, 8, 9, 0, 0], [0, 0, 0, 1, 1, 0]],
        "one_beat_nonzero": [[4, 4, 4, 0]],
        "big_jump": [[0, 0, 5, 5, 6]],
        "pickup_one_note_beat": [[0, 1, 1, 2]],
        "padded_and_full": [[5, 5, 0, 0], [1, 2, 3, 4]],
        "jumps_in_batch": [[0, 2, 2, 3, 5, 6, 6], [1, 1, 2, 4, 0, 0, 0]],
        "all_zero_row_raises": [[0, 0, 0]],
        "one_beat_at_zero_in_batch_raises": [[0, 1, 1, 2], [0, 0, 0, 0]],
    }
    for name, idx in fb_cases.items():
        res, err = _try(lambda: u.find_boundaries_batch(t(idx)))
        key = f"find_boundaries/{name}"
        arrays[key + "/input"] = np.asarray(idx, dtype=np.int64)
        arrays[key + "/lengths"] = _lengths(idx)
        if res is not None:
            arrays[key + "/output"] = _ragged(res)
        cases.append({"key": key, "function": "utils.find_boundaries_batch", "raises": err,
                      "output_padding": -1})

    # get_softmax_by_boundary
    g = torch.Generator().manual_seed(SEED)
    sb_cases = {
        "spec_boundaries": (11, 3, [0, 2, 6, 7, 9]),
        "leading_empty": (6, 2, [0, 0, 3, 5]),
        "single_segment": (5, 4, [0, 5]),
        "beyond_length": (5, 2, [0, 3, 8]),
        "one_row_segments": (4, 1, [0, 1, 2, 3, 4]),
    }
    for name, (T, C, bnd) in sb_cases.items():
        sim = torch.randn(T, C, generator=g, dtype=torch.float64) * 2
        res, err = _try(lambda: u.get_softmax_by_boundary(sim, bnd))
        key = f"softmax_by_boundary/{name}"
        arrays[key + "/similarity"] = np_(sim)
        arrays[key + "/boundaries"] = np.asarray(bnd, dtype=np.int64)
        if res is not None:
            arrays[key + "/output"] = np_(torch.cat(res)) if res else np.zeros((0, C))
            arrays[key + "/segment_lengths"] = np.asarray([len(r) for r in res], dtype=np.int64)
        cases.append({"key": key, "function": "utils.get_softmax_by_boundary", "raises": err,
                      "note": "output = concatenation of the returned per-segment softmaxes"})

    # cal_length_from_padded_beat_numbers
    cl_cases = {
        "spec_unpadded_bug": [[0, 1, 1, 2, 2, 3]],
        "spec_two_rows": [[0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1, 2, 0, 0, 0]],
        "spec_bug_and_padded": [[0, 1, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1, 2, 0, 0, 0]],
        "constant_then_padding": [[3, 3, 3, 0, 0]],
        "all_zero_row": [[0, 0, 0, 0], [0, 1, 2, 0]],
        "single_note": [[5]],
        "offset_padded": [[7, 7, 8, 9, 9, 0], [2, 2, 2, 3, 3, 3]],
    }
    for name, idx in cl_cases.items():
        res, err = _try(lambda: u.cal_length_from_padded_beat_numbers(t(idx)))
        key = f"cal_length/{name}"
        arrays[key + "/input"] = np.asarray(idx, dtype=np.int64)
        if res is not None:
            arrays[key + "/output"] = np_(res).astype(np.int64)
        cases.append({"key": key, "function": "utils.cal_length_from_padded_beat_numbers", "raises": err})

    # make_higher_node: (lower_out rows per sample, D, heads, lower idx, higher idx, lower_is_note)
    def padded_rows(rows_per_sample, D, T=None):
        T = T or max(rows_per_sample)
        x = torch.zeros(len(rows_per_sample), T, D, dtype=torch.float64)
        for i, r in enumerate(rows_per_sample):
            x[i, :r] = torch.randn(r, D, generator=g, dtype=torch.float64)
        return x

    seg_locs = [s.locations() for s in inputs.MODEL_SEGMENTS[:4]]
    n_max = max(len(l["beat"]) for l in seg_locs)
    pad = lambda key: [list(l[key]) + [0] * (n_max - len(l[key])) for l in seg_locs]  # noqa: E731
    n_beats = [int(l["beat"][-1] - l["beat"][0] + 1) for l in seg_locs]
    mh_cases = {
        "note_to_beat_model_batch": ([len(l["beat"]) for l in seg_locs], 8, 2, pad("beat"), pad("beat"), True),
        "note_to_beat_jump2": ([6, 4], 6, 3, [[0, 0, 2, 2, 3, 4], [1, 1, 2, 4, 0, 0]],
                               [[0, 0, 2, 2, 3, 4], [1, 1, 2, 4, 0, 0]], True),
        "beat_to_measure_model_batch": (n_beats, 8, 4, pad("beat"), pad("measure"), False),
        "beat_to_measure_jump_reads_padding": ([6, 1], 6, 2, [[0, 1, 2, 3, 4, 5], [0, 0, 2, 2, 4, 4]],
                                               [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]], False),
        "beat_to_measure_jump_single": ([1], 4, 2, [[0, 0, 2, 2, 4, 4]], [[0, 0, 1, 1, 2, 2]], False),
        "note_to_beat_one_beat_at_zero_raises": ([3, 2], 4, 2, [[0, 1, 1], [0, 0, 0]], [[0, 1, 1], [0, 0, 0]], True),
        "beat_to_measure_one_measure_at_zero_raises": ([2, 1], 4, 2, [[0, 1, 1], [0, 0, 0]],
                                                       [[0, 1, 1], [0, 0, 0]], False),
    }
    for k, (name, (rows, D, heads, lower, higher, is_note)) in enumerate(mh_cases.items()):
        att = _attention(up, D, heads, SEED + k)
        x = padded_rows(rows, D)
        res, err = _try(lambda: mu.make_higher_node(x, att, t(lower), t(higher), lower_is_note=is_note))
        key = f"make_higher_node/{name}"
        arrays[key + "/lower_out"] = np_(x)
        arrays[key + "/lower_indices"] = np.asarray(lower, dtype=np.int64)
        arrays[key + "/note_lengths"] = _lengths([np.maximum(a, b) for a, b in zip(np.asarray(lower), np.asarray(higher))])
        arrays[key + "/lower_rows"] = np.asarray(rows, dtype=np.int64)
        arrays[key + "/higher_indices"] = np.asarray(higher, dtype=np.int64)
        arrays[key + "/attention_net.weight"] = np_(att.attention_net.weight)
        arrays[key + "/attention_net.bias"] = np_(att.attention_net.bias)
        arrays[key + "/context_vector"] = np_(att.context_vector)
        if res is not None:
            arrays[key + "/output"] = np_(res)
        cases.append({"key": key, "function": "model_utils.make_higher_node", "raises": err,
                      "lower_is_note": is_note, "num_heads": heads})

    # span_beat_to_note_num
    sp_cases = {  # (indices, number of nodes, true segment lengths)
        "padded_offsets": ([[3, 3, 4, 5, 5, 0], [0, 0, 1, 1, 2, 2]], 3, [5, 6]),
        "unpadded_first_two_differ_bug": ([[0, 1, 1, 2, 2, 3]], 4, [6]),
        "one_measure_at_zero_padded": ([[0, 0, 0, 0, 0], [4, 4, 5, 5, 6]], 3, [3, 5]),
        "model_batch_beats": (pad("beat"), max(n_beats), [len(l["beat"]) for l in seg_locs]),
    }
    for name, (idx, tb, lens) in sp_cases.items():
        beat_out = torch.randn(len(idx), tb, 5, generator=g, dtype=torch.float64)
        with default_dtype(torch.float64):
            res, err = _try(lambda: mu.span_beat_to_note_num(beat_out, t(idx)))
        key = f"span/{name}"
        arrays[key + "/beat_out"] = np_(beat_out)
        arrays[key + "/indices"] = np.asarray(idx, dtype=np.int64)
        arrays[key + "/lengths"] = np.asarray(lens, dtype=np.int64)
        if res is not None:
            arrays[key + "/output"] = np_(res)
        cases.append({"key": key, "function": "model_utils.span_beat_to_note_num", "raises": err})

    save_npz(out / "hierarchy.npz", arrays)
    return {"file": "hierarchy.npz", "kind": "hierarchy", "dtype": "float64", "cases": cases}


ZERO_SUM_ROW = (0.5, -1.0, 0.75, 0.25, -0.5, 1.5, -0.75, -0.25, -1.25, 0.75)


def capture_attention(up, out: Path) -> dict:
    arrays, cases = {}, []
    g = torch.Generator().manual_seed(SEED + 1)
    at_cases = {
        "d8_h2_padded": (8, 2, [5, 3, 1], 5, None),
        "d12_h4_padded": (12, 4, [4, 4, 2], 4, None),
        "d6_h3_no_padding": (6, 3, [3, 3], 3, None),
        "d16_h8_fully_padded_sample": (16, 8, [6, 0, 2], 6, None),
        "d10_h2_sum_zero_row": (10, 2, [4, 4], 4, (0, 1)),  # row (0,1) has nonzero entries summing to 0
    }
    for k, (name, (D, h, rows, T, zero_sum)) in enumerate(at_cases.items()):
        for dname, dtype in DTYPES.items():
            att = _attention(up, D, h, SEED + 100 + k, dtype=torch.float32).to(dtype)
            x = torch.zeros(len(rows), T, D, dtype=torch.float64)
            for i, r in enumerate(rows):
                x[i, :r] = torch.randn(r, D, generator=g, dtype=torch.float64)
            if zero_sum is not None:  # dyadic values: the sum is exactly 0 in any order and precision
                x[zero_sum] = torch.tensor(ZERO_SUM_ROW[:D], dtype=torch.float64)
            x = x.to(dtype)
            if dname == "float64":
                x = torch.as_tensor(arrays[f"attention/{name}/float32/x"], dtype=torch.float64)
            with torch.no_grad(), proxied_softmax(up, att) as box:
                y = att(x)
            key = f"attention/{name}/{dname}"
            arrays[key + "/x"] = np_(x)
            arrays[key + "/attention_net.weight"] = np_(att.attention_net.weight)
            arrays[key + "/attention_net.bias"] = np_(att.attention_net.bias)
            arrays[key + "/context_vector"] = np_(att.context_vector)
            with torch.no_grad():
                arrays[key + "/similarity"] = np_(att.get_attention(x))
            arrays[key + "/weights"] = np_(box["proxy"].softmax_out[0])
            arrays[key + "/output"] = np_(y)
            cases.append({"key": key, "size": D, "num_heads": h, "rows": rows,
                          "zero_sum_row": list(zero_sum) if zero_sum else None})
    save_npz(out / "attention.npz", arrays)
    return {"file": "attention.npz", "kind": "attention", "cases": cases,
            "note": "similarity = ContextAttention.get_attention(x); weights = the softmax inside forward "
                    "(masked where x.sum(-1) == 0); output = forward(x). float64 uses the float32 x/params cast."}


def _clip_spy(box: dict):
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *a, **k):
        params = list(parameters)
        box["grad_before"] = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
        norm = real(params, max_norm, *a, **k)
        box["grad_norm"] = float(norm)
        box["grad_after"] = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
        box["max_norm"] = float(max_norm)
        return norm

    return real, spy


def _original_step(up, model, collated, optimizer, scheduler, args, iteration) -> dict:
    """One call of the original ``train_m2pf.train_step``, observing loss and clipping."""
    tr = up.training()
    box: dict = {}
    real_gbr = tr.get_batch_result

    def gbr(*a, **k):
        logits, loss = real_gbr(*a, **k)
        box["loss"] = float(loss.item())
        return logits, loss

    real_clip, spy = _clip_spy(box)
    tr.get_batch_result, torch.nn.utils.clip_grad_norm_ = gbr, spy
    try:
        tr.train_step(model, collated, optimizer, scheduler, torch.nn.MSELoss(), None, "cpu", args, iteration)
    finally:
        tr.get_batch_result, torch.nn.utils.clip_grad_norm_ = real_gbr, real_clip
    box["lr_after"] = optimizer.param_groups[0]["lr"]
    return box


def _published_args(up, **overrides):
    """The original's argparse namespace for the published run (script flags), with overrides."""
    args = up.mod("parser").get_parser().parse_args(_script_flags(up)[0])
    for k, v in overrides.items():
        setattr(args, k, v)
    args.make_log = False
    return args


def _optimizer(model, args):
    # exactly as train_m2pf.train() builds them (Adam over model.parameters(), StepLR stepped per batch)
    opt = torch.optim.Adam(model.parameters(), weight_decay=args.weight_decay, lr=args.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.lr_decay_step, gamma=args.lr_decay_rate)
    return opt, sched


def capture_training(up, out: Path) -> list[dict]:
    entries = []
    case = TRAIN_CASE
    level = case["level"]
    batches = [S.stack([TRAIN_SEGMENTS[i] for i in idx], case["input_size"], case["num_labels"], seed=SEED + 10 + k)
               for k, idx in enumerate(TRAIN_BATCHES)]
    clip_batch = S.stack([TRAIN_SEGMENTS[i] for i in TRAIN_BATCHES[0]], case["input_size"], case["num_labels"],
                         seed=SEED + 10, label_scale=CLIP_LABEL_SCALE)
    model32 = build_original(up, case, SEED + 5)
    names = [n for n, _ in model32.named_parameters()]
    for dname, dtype in DTYPES.items():
        arrays = {f"init/{k}": np_(v.to(dtype)) for k, v in model32.state_dict().items()}
        for k, b in enumerate(batches):
            arrays.update(batch_arrays(b, prefix=f"batch{k}/"))
        arrays.update(batch_arrays(clip_batch, prefix="clip_batch/"))
        runs = {}
        with default_dtype(dtype):
            for run, (b, overrides) in {"step_published": (batches[0], {}),
                                        "step_clip": (clip_batch, {"lr": 1e-3})}.items():
                model = copy.deepcopy(model32).to(dtype).train()
                args = _published_args(up, multi_level=level, **overrides)
                opt, sched = _optimizer(model, args)
                box = _original_step(up, model, up.collate(inputs.original_samples(b, dtype)), opt, sched, args, 0)
                pid = {id(p): n for n, p in model.named_parameters()}
                arrays[f"{run}/loss"] = np.asarray(box["loss"])
                arrays[f"{run}/grad_norm"] = np.asarray(box["grad_norm"])
                arrays[f"{run}/lr_after"] = np.asarray(box["lr_after"])
                for i, gr in box["grad_before"].items():
                    arrays[f"{run}/grad/{pid[i]}"] = np_(gr)
                for i, gr in box["grad_after"].items():
                    arrays[f"{run}/clipped_grad/{pid[i]}"] = np_(gr)
                for n, p in model.named_parameters():
                    arrays[f"{run}/param_after/{n}"] = np_(p)
                runs[run] = {"lr": args.lr, "weight_decay": args.weight_decay, "grad_clip": args.grad_clip,
                             "lr_decay_step": args.lr_decay_step, "lr_decay_rate": args.lr_decay_rate,
                             "grad_norm": box["grad_norm"], "clip_binds": box["grad_norm"] > args.grad_clip,
                             "batch": "batch0" if run == "step_published" else "clip_batch"}
            if not runs["step_clip"]["clip_binds"]:
                raise RuntimeError("the clip case does not bind; raise CLIP_LABEL_SCALE")
            if runs["step_published"]["clip_binds"]:
                raise RuntimeError("the published step unexpectedly clips")
            # trajectory
            model = copy.deepcopy(model32).to(dtype).train()
            args = _published_args(up, multi_level=level, lr=TRAJECTORY["lr"],
                                   lr_decay_step=TRAJECTORY["lr_step_size"], lr_decay_rate=TRAJECTORY["lr_gamma"])
            opt, sched = _optimizer(model, args)
            losses, lrs, norms, lrs_used = [], [], [], []
            for it, bi in enumerate(TRAJECTORY["batches"]):
                lrs_used.append(opt.param_groups[0]["lr"])
                box = _original_step(up, model, up.collate(inputs.original_samples(batches[bi], dtype)), opt, sched, args, it)
                losses.append(box["loss"])
                norms.append(box["grad_norm"])
                lrs.append(box["lr_after"])
            arrays["trajectory/loss"] = np.asarray(losses)
            arrays["trajectory/grad_norm"] = np.asarray(norms)
            arrays["trajectory/lr_used"] = np.asarray(lrs_used)
            arrays["trajectory/lr_after"] = np.asarray(lrs)
            for n, p in model.named_parameters():
                arrays[f"trajectory/param_final/{n}"] = np_(p)
        name = f"training_{dname}.npz"
        save_npz(out / name, arrays)
        entries.append({
            "file": name, "kind": "training", "dtype": dname, "config": case, "seed": SEED + 5,
            "dropout": "0 (disabled for determinism; published 0.2)", "mode": "train()",
            "segments": [s.name for s in TRAIN_SEGMENTS], "batches": [list(b) for b in TRAIN_BATCHES],
            "runs": runs, "trajectory": dict(TRAJECTORY, batches=list(TRAJECTORY["batches"])),
            "clip_label_scale": CLIP_LABEL_SCALE, "parameter_order": names,
            "note": "each step is one call of the original train_m2pf.train_step (zero_grad, backward, "
                    "clip_grad_norm_(all params, grad_clip), Adam.step, StepLR.step); optimizer and scheduler "
                    "built as train_m2pf.train() does from the parsed published args; grad/* = before clipping, "
                    "clipped_grad/* = after, param_after/* = after the Adam step",
        })
    return entries


def _lstm_stats(name: str, w: torch.Tensor):
    """For an LSTM weight_hh (4H, H): max over gates of ||W_g W_g^T - I||_F / sqrt(H) and ||W^T W - I||_F / sqrt(H)."""
    H = w.shape[1]
    eye = torch.eye(H, dtype=torch.float64)
    w = w.double()
    per_gate = max(float(torch.linalg.norm(g @ g.T - eye)) for g in w.split(H, dim=0)) / H**0.5
    whole = float(torch.linalg.norm(w.T @ w - eye)) / H**0.5
    return per_gate, whole


def _trained_names(up, model, level, input_size):
    """Names of parameters that receive a gradient from the loss (one tiny batch, float32)."""
    seg = [S.Segment(((2, 1), (1, 2)), (1, 2, 1, 1, 2, 1)), S.Segment(((1, 2),), (1, 1, 0), first_beat=2, first_measure=1)]
    b = S.stack(seg, input_size, 19, seed=0)
    _, _, grads = run_original(up, model.eval(), b, torch.float32, level, grads=True)
    return set(grads)


def capture_init(up, out: Path) -> dict:
    arrays, meta = {}, {}
    for key, (F, level) in INIT_MODELS.items():
        case = dict(input_size=F, level=level, num_labels=19)
        names, stats, lstm, forget, counts = None, [], [], [], []
        for seed in INIT_SEEDS:
            params = up.net_params(F, 19)
            torch.manual_seed(seed)
            model = up.build_model(params, level)
            sd = dict(model.named_parameters())
            if names is None:
                names = list(sd)
                lstm_names = [n for n in names if ".weight_hh_" in n]
                bias_names = [n for n in names if ".bias_ih_" in n]
                meta[key] = {"config": case, "names": names, "shapes": [list(sd[n].shape) for n in names],
                             "lstm_weight_hh": lstm_names, "lstm_bias_ih": bias_names,
                             "total_params": int(sum(p.numel() for p in sd.values()))}
                trained = _trained_names(up, model, level, F)
                meta[key]["trained_params"] = int(sum(sd[n].numel() for n in trained))
                meta[key]["untrained_tensors"] = sorted(set(names) - trained)
            stats.append([[float(p.min()), float(p.max()), float(p.double().mean()), float(p.double().std())]
                          for p in (sd[n].detach() for n in names)])
            lstm.append([_lstm_stats(n, sd[n].detach()) for n in lstm_names])
            fb = []
            for n in bias_names:
                H = sd[n].shape[0] // 4
                s = (sd[n].detach() + sd[n.replace("bias_ih", "bias_hh")].detach()).double()[H:2 * H]
                fb.append([float(s.min()), float(s.max()), float(s.mean())])
            forget.append(fb)
        arrays[f"{key}/names"] = np.asarray(names)
        arrays[f"{key}/stats"] = np.asarray(stats)  # (seeds, tensors, [min, max, mean, std])
        arrays[f"{key}/lstm_hh_orthogonality"] = np.asarray(lstm)  # (seeds, lstm tensors, [per_gate, whole])
        arrays[f"{key}/forget_bias"] = np.asarray(forget)  # (seeds, lstm layers/dirs, [min, max, mean]) of b_ih+b_hh
    arrays["seeds"] = np.asarray(INIT_SEEDS, dtype=np.int64)
    save_npz(out / "init_stats.npz", arrays)
    return {"file": "init_stats.npz", "kind": "init", "dtype": "float32", "models": meta, "seeds": list(INIT_SEEDS),
            "note": "stats per tensor over seeds; lstm_hh_orthogonality = [max_g ||W_g W_g^T - I||_F/sqrt(H), "
                    "||W^T W - I||_F/sqrt(H)]; forget_bias = stats of (bias_ih + bias_hh)[H:2H]; trained = "
                    "parameters receiving a gradient from the loss of a forward in eval mode"}


# ------------------------------------------------------------------------------------------------ config


def _script_command(path: Path, entry: str, loop_values: dict) -> list[str]:
    """The argument list of the first uncommented ``python virtuoso/<entry>`` command of a run script."""
    text = path.read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    arrays = {}
    for ln in lines:
        s = ln.strip()
        if "=(" in s and s.endswith(")") and not s.startswith("for"):
            var, vals = s.split("=(", 1)
            arrays[var] = shlex.split(vals[:-1])
    joined = "\n".join(lines).replace("\\\n", " ")
    for ln in joined.splitlines():
        if f"virtuoso/{entry}" in ln:
            cmd = ln.split("|")[0]
            env = {k: v[0] for k, v in arrays.items()}
            env.update(loop_values)
            for var in sorted(env, key=len, reverse=True):
                cmd = cmd.replace("${" + var + "}", env[var]).replace("$" + var, env[var])
            argv = shlex.split(cmd)
            return argv[argv.index(next(a for a in argv if a.endswith(entry))) + 1:]
    raise RuntimeError(f"no `python virtuoso/{entry}` command in {path}")


TRAIN_SCRIPT = "performer4fold/0_run_performer_multilevel_measure.sh"
BASELINE_SCRIPT = "composition4fold/1_run_comp_multilevel_perffeat.sh"
EVAL_SCRIPT = "performer4fold/0_eval_performer_multilevel.sh"


def _script_flags(up):
    path = up.root / U.SCRIPTS_DIR / TRAIN_SCRIPT
    # loop variables: the only fold / level / lr each script iterates over is taken (fold 0)
    argv = _script_command(path, "__main__.py", {"fold": "0", "multi_level": "measure", "lr": "2.5e-5"})
    return argv, path


def _redact(v):
    """Absolute paths of the original authors' machines (checkpoint dirs, defaults) are not recorded."""
    if isinstance(v, str) and v.startswith("/"):
        return "<absolute path, not recorded>"
    if isinstance(v, list):
        return [_redact(x) for x in v]
    return v


def capture_config(up, out: Path) -> dict:
    """Resolve the published configuration: yml values, argparse defaults, script flags, each with its source."""
    parser_mod = up.mod("parser")
    parser = parser_mod.get_parser()
    argv, path = _script_flags(up)
    args = parser.parse_args(argv)
    given = {a.dest for a in parser._actions if any(opt in argv for opt in a.option_strings)}
    rel = lambda p: str(Path(p).relative_to(up.root))  # noqa: E731
    resolved = {}
    for k, v in sorted(vars(args).items()):
        val = _redact(str(v) if isinstance(v, Path) else v)
        resolved[k] = {"value": val, "source": f"script flag ({rel(path)})" if k in given
                       else f"argparse default ({rel(up.code_dir / 'parser.py')})"}
    yml = up.read_yml()

    import yaml  # the original reads the yml with PyYAML too (utils.read_model_setting)

    yml_plain = yaml.safe_load((up.root / U.YML).read_text())
    base_argv = _script_command(up.root / U.SCRIPTS_DIR / BASELINE_SCRIPT, "__main__.py",
                                {"fold": "0", "multi_level": "note", "lr": "2.5e-5"})
    eval_argv = _script_command(up.root / U.SCRIPTS_DIR / EVAL_SCRIPT, "eval_main.py",
                                {"level": "measure", "lr": "2.5e-05", "checkpointt": "CHECKPOINT"})
    eval_args = parser.parse_args(eval_argv)
    run_name = parser_mod.get_name(parser, args)
    y = yml["nn_params"]
    published = {
        # value, source
        "hidden_size": (y["note"]["size"], "yml nn_params.{note,voice,beat,measure,encoder}.size"),
        "note_size": (y["note"]["size"], "yml nn_params.note.size"),
        "voice_size": (y["voice"]["size"], "yml nn_params.voice.size"),
        "beat_size": (y["beat"]["size"], "yml nn_params.beat.size"),
        "measure_size": (y["measure"]["size"], "yml nn_params.measure.size"),
        "encoder_size": (y["encoder"]["size"], "yml nn_params.encoder.size"),
        "note_layers": (y["note"]["layer"], "yml nn_params.note.layer"),
        "voice_layers": (y["voice"]["layer"], "yml nn_params.voice.layer"),
        "beat_layers": (y["beat"]["layer"], "yml nn_params.beat.layer"),
        "measure_layers": (y["measure"]["layer"], "yml nn_params.measure.layer"),
        "num_heads": (y["num_attention_head"], "yml nn_params.num_attention_head"),
        "dropout": (y["drop_out"], "yml nn_params.drop_out"),
        "num_labels": (args.num_labels, resolved["num_labels"]["source"]),
        "level_han": (args.multi_level, resolved["multi_level"]["source"]),
        "level_baseline": (parser.parse_args(base_argv).multi_level, f"script flag ({U.SCRIPTS_DIR / BASELINE_SCRIPT})"),
        "lr": (args.lr, resolved["lr"]["source"]),
        "batch_size": (args.batch_size, resolved["batch_size"]["source"]),
        "weight_decay": (args.weight_decay, resolved["weight_decay"]["source"]),
        "lr_step_size": (args.lr_decay_step, resolved["lr_decay_step"]["source"]),
        "lr_gamma": (args.lr_decay_rate, resolved["lr_decay_rate"]["source"]),
        "grad_clip": (args.grad_clip, resolved["grad_clip"]["source"]),
        "epochs": (args.num_epochs, resolved["num_epochs"]["source"]),
        "seed": (args.th_seed, resolved["th_seed"]["source"]),
        "augment": (not args.no_augment, resolved["no_augment"]["source"]),
        "len_slice": (args.len_slice, resolved["len_slice"]["source"]),
        "eval_batch_size": (eval_args.batch_size, f"script flag ({U.SCRIPTS_DIR / EVAL_SCRIPT})"),
        "n_folds": (eval_args.n_folds, f"script flag ({U.SCRIPTS_DIR / EVAL_SCRIPT})"),
        # facts of the training/eval code (not parseable values); verified where noted
        "optimizer": ("Adam", "train_m2pf.py train(): torch.optim.Adam(model.parameters(), lr, weight_decay); "
                              "one param group (verified: the training fixtures run it)"),
        "adam_betas": ([0.9, 0.999], "torch default (not passed)"),
        "adam_eps": (1e-8, "torch default (not passed)"),
        "scheduler": ("StepLR", "train_m2pf.py train(): StepLR(step_size=lr_decay_step, gamma=lr_decay_rate)"),
        "scheduler_stepped": ("per_batch", "train_m2pf.py train_step(): scheduler.step() after every "
                                           "optimizer.step() (verified: trajectory lr_after in training fixtures)"),
        "loss": ("mse_sigmoid", "train_m2pf.py get_batch_result(): nn.MSELoss()(sigmoid(logits[-1]), targets), "
                                "reduction mean (verified: model fixtures' loss)"),
        "grad_clip_kind": ("global_l2_norm_all_parameters", "train_m2pf.py train_step(): "
                           "clip_grad_norm_(model.parameters(), grad_clip) (verified: training fixtures)"),
        "model_selection": ("lowest_valid_loss", "train_m2pf.py train(): checkpoint_best saved when valid_loss < "
                                                 "best (strict), valid_loss = mean of batch-mean MSE"),
        "validation_every": ("epoch", "train_m2pf.py train(): iters_per_checkpoint = len(train_loader)"),
        "eval_metric": ("r2_uniform_average_test_mean_over_folds", "eval_main.py / train_m2pf.py: "
                        "sklearn r2_score(Y, sigmoid(logits)) on the test split per fold, mean over folds"),
        "precision": ("float32", "no autocast / half anywhere"),
    }
    cfg = {
        "published": {k: {"value": v, "source": s} for k, (v, s) in published.items()},
        "argparse_resolved": resolved,
        "train_script": rel(path),
        "train_argv": _redact(argv),
        "baseline_argv": _redact(base_argv),
        "eval_argv": _redact(eval_argv),
        "run_name_from_get_name": run_name,
        "yml_file": str(U.YML),
        "yml": yml_plain,
    }
    (out / "published_config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
    return {"file": "published_config.json", "kind": "config",
            "note": "values resolved by parsing the script flags with the original parser.get_parser(); yml read "
                    "with the original utils.read_model_setting"}


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference_parity.capture", description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", default=None, help=f"original checkout (default ${UPSTREAM_ENV})")
    ap.add_argument("--out", type=Path, default=FIXTURE_DIR, help="output directory (default: reference_parity/fixtures)")
    ap.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="fail if the fixtures exceed this size")
    a = ap.parse_args(argv)
    up = U.load_or_say_why(a.upstream, "capture")
    if up is None:
        return 2
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # identical reductions on every run
    try:
        a.out.mkdir(parents=True, exist_ok=True)
        for old in a.out.glob("*.npz"):
            old.unlink()
        files = [capture_config(up, a.out)]
        files += capture_models(up, a.out)
        files.append(capture_hierarchy(up, a.out))
        files.append(capture_attention(up, a.out))
        files += capture_training(up, a.out)
        files.append(capture_init(up, a.out))
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)
    total = 0
    for entry in files:
        p = a.out / entry["file"]
        entry["sha256"] = sha256(p)
        entry["bytes"] = p.stat().st_size
        total += entry["bytes"]
        if p.suffix == ".npz":
            entry["arrays"] = array_specs(p)
    manifest = {
        "regenerate": REGENERATE,
        "original": {"repo": U.REPO_URL, "commit": U.EXPECTED_COMMIT, "verified_by": up.verification["method"],
                     "key_file_sha256": up.verification["fingerprints"], "shims": up.shims_used},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "seed": SEED,
        "total_bytes": total,
        "files": files,
    }
    (a.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(files)} fixture files ({total / 1e6:.2f} MB) + MANIFEST.json to {a.out}")
    if total > a.max_bytes:
        print(f"capture: fixtures are {total} bytes > {a.max_bytes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
