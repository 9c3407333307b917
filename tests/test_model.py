"""PercePianoModel: structure, gradients, padding behaviour, weight conversion, deviations."""
import argparse
import math

import pytest
import torch

from percepiano import PRESETS, ModelConfig, PercePianoModel
from percepiano.constants import MAX_VOICE
from percepiano.convert import RENAME_POOLING, rename_table
from percepiano.lstm import run_lstm

from tiny import LEVELS, make_batch, tiny

# float64 through a few LSTMs and softmaxes: agreement to ~1e-15 is routine; 1e-10 leaves room for BLAS order.
F64 = {"rtol": 1e-10, "atol": 1e-10}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("level", LEVELS)
def test_intermediate_shapes(level, batch):
    x, lengths, loc = batch
    out = PercePianoModel(tiny(level)).eval()(x, lengths, loc, return_intermediates=True)
    inter, (B, N) = out.intermediates, x.shape[:2]
    assert out.logits.shape == (B, 19)
    assert inter["embedded"].shape == (B, N, 6) and inter["note"].shape == (B, N, 12)
    if level != "note":
        assert inter["voice"].shape == (B, N, 20)
    if level in ("beat", "measure", "total_note_cat"):
        assert inter["beat_weights"].shape == (B, N, 2)
        assert inter["beat_nodes"].shape == (B, 6, 32) and inter["beat"].shape == (B, 6, 24)  # 6 = max beats (row 0)
    if level in ("measure", "total_note_cat"):
        assert inter["measure_weights"].shape == (B, 6, 2)
        assert inter["measure_nodes"].shape == (B, 3, 24) and inter["measure"].shape == (B, 3, 16)
    pooled_width = 24 if level == "beat" else 16
    assert inter["pooled"].shape == (B, pooled_width)
    expected_t = {"note": N, "voice": N, "total_note_cat": N, "beat": 6, "measure": 3}[level]
    assert inter["pool_weights"].shape == (B, expected_t, 2)
    assert {"beat": "measure_weights", "note": "voice"}.get(level, "absent") not in inter


def test_plain_call_returns_logits(batch):
    x, lengths, loc = batch
    model = PercePianoModel(tiny("measure")).eval()
    logits = model(x, lengths, loc)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, model(x, lengths, loc, return_intermediates=True).logits, rtol=0, atol=0)


@pytest.mark.parametrize("level", LEVELS)
def test_every_parameter_gets_a_gradient(level, batch):
    x, lengths, loc = batch
    model = PercePianoModel(tiny(level)).train()
    torch.sigmoid(model(x, lengths, loc)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


@pytest.mark.parametrize("preset, trained", [("han", 12_914_195), ("bilstm", 3_430_419), ("bilstm_sa", 3_453_971)])
def test_parameter_count_equals_the_original_trained_parameters(preset, trained):
    assert PercePianoModel(PRESETS[preset]).num_parameters() == trained


@pytest.mark.parametrize("level", ["beat", "measure"])
def test_node_levels_are_batch_composition_invariant(level):
    x, lengths, loc = make_batch(dtype=torch.float64)
    model = PercePianoModel(tiny(level)).double().eval()
    batched = model(x, lengths, loc)
    for i in range(3):
        n = int(lengths[i])
        alone = model(x[i : i + 1, :n], lengths[i : i + 1], {k: v[i : i + 1, :n] for k, v in loc.items()})
        torch.testing.assert_close(alone[0], batched[i], **F64)


@pytest.mark.parametrize("level", ["note", "voice", "total_note_cat"])
def test_contracted_levels_reproduce_the_original_padding_dependence(level):
    """The contractor maps padded rows to its bias, whose sum is not 0, so the original pools over them."""
    x, lengths, loc = make_batch(dtype=torch.float64)
    model = PercePianoModel(tiny(level)).double().eval()
    batched = model(x, lengths, loc)
    i, n = 2, int(lengths[2])
    alone = model(x[i : i + 1, :n], lengths[i : i + 1], {k: v[i : i + 1, :n] for k, v in loc.items()})
    assert float((alone[0] - batched[i]).abs().max().detach()) > 1e-6
    # ... and it depends on the batch only through the padded length (the longest segment)
    torch.testing.assert_close(model(x[[2, 0]], lengths[[2, 0]], {k: v[[2, 0]] for k, v in loc.items()})[0], batched[2], **F64)


def test_extra_padding_beyond_the_longest_segment_changes_nothing():
    x, lengths, loc = make_batch(dtype=torch.float64)
    pad = lambda t: torch.cat([t, torch.zeros(t.shape[0], 3, *t.shape[2:], dtype=t.dtype)], 1)  # noqa: E731
    for level in ("note", "measure"):
        model = PercePianoModel(tiny(level)).double().eval()
        ref = model(x, lengths, loc, return_intermediates=True)
        out = model(pad(x), lengths, {k: pad(v) for k, v in loc.items()}, return_intermediates=True)
        torch.testing.assert_close(out.logits, ref.logits, **F64)
        assert out.intermediates["note"].shape[1] == 15 and bool((out.intermediates["note"][:, 12:] == 0).all())


def test_voice_output_is_zero_for_voice_0_and_padding_and_per_voice_independent():
    x, lengths, loc = make_batch(dtype=torch.float64)
    model = PercePianoModel(tiny("voice")).double().eval()
    inter = model(x, lengths, loc, return_intermediates=True).intermediates
    voice, emb = inter["voice"], inter["embedded"]
    real = torch.arange(12)[None] < lengths[:, None]
    assert bool((voice[(loc["voice"] == 0) | ~real] == 0).all())
    for b in range(3):
        for v in torch.unique(loc["voice"][b][real[b]]).tolist():
            if v == 0:
                continue
            where = torch.nonzero((loc["voice"][b] == v) & real[b]).flatten()
            alone = run_lstm(model.voice_lstm, emb[b : b + 1, where], torch.tensor([len(where)]))
            torch.testing.assert_close(voice[b, where], alone[0], **F64)


def test_note_lstm_padded_batch_equals_per_segment_runs():
    x, lengths, loc = make_batch(dtype=torch.float64)
    model = PercePianoModel(tiny("note")).double().eval()
    note = model(x, lengths, loc, return_intermediates=True).intermediates["note"]
    for b in range(3):
        n = int(lengths[b])
        alone = model(x[b : b + 1, :n], lengths[b : b + 1], {k: v[b : b + 1, :n] for k, v in loc.items()}, return_intermediates=True)
        torch.testing.assert_close(note[b, :n], alone.intermediates["note"][0], **F64)
        assert bool((note[b, n:] == 0).all())


@pytest.mark.parametrize("level", LEVELS)
def test_float64_forward(level):
    x, lengths, loc = make_batch(dtype=torch.float64)
    model = PercePianoModel(tiny(level)).double().eval()
    out = model(x, lengths, loc, return_intermediates=True)
    assert all(v.dtype == torch.float64 for v in out.intermediates.values())
    logits32 = model.float()(x.float(), lengths, loc)
    torch.testing.assert_close(logits32.double(), out.logits, rtol=1e-4, atol=1e-5)  # float32 rounding through 5 LSTM layers


def test_head_and_pooling_structure():
    model = PercePianoModel(PRESETS["han"])
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Dropout", "Linear", "GELU", "Dropout", "Linear"] and model.head[2].approximate == "none"
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)) for m in model.modules())
    assert not hasattr(model, "pool_contractor")  # HAN pools measures directly
    assert model.beat_attention.context_vector.shape == (8, 128, 1)
    assert model.measure_attention.context_vector.shape == (8, 64, 1)
    assert model.measure_lstm.num_layers == 1 and model.measure_lstm.dropout == 0.0
    assert model.beat_lstm.input_size == 1024 and model.beat_lstm.dropout == 0.2


# ---------------------------------------------------------------- original names
@pytest.mark.parametrize("level", LEVELS)
def test_original_state_dict_round_trip(level, batch):
    x, lengths, loc = batch
    a, b = PercePianoModel(tiny(level)).eval(), PercePianoModel(tiny(level)).eval()
    original = a.original_state_dict()
    assert "note_embedder.fc.weight" in original and "out_fc.4.bias" in original
    for ours, theirs in RENAME_POOLING[level]:
        assert any(k.startswith(theirs + ".") for k in original)
    b.load_original_state_dict(original)
    torch.testing.assert_close(b(x, lengths, loc), a(x, lengths, loc), rtol=0, atol=0)


def test_published_names_are_the_original_ones():
    names = set(PercePianoModel(PRESETS["han"]).original_state_dict())
    for key in [
        "note_embedder.fc.weight", "score_encoder.lstm.weight_ih_l0", "score_encoder.voice_net.weight_hh_l1_reverse",
        "score_encoder.beat_attention.context_vector", "score_encoder.beat_rnn.bias_ih_l1",
        "score_encoder.measure_attention.attention_net.weight", "score_encoder.measure_rnn.weight_ih_l0",
        "measure_attention.attention_net.weight", "measure_attention.context_vector", "out_fc.1.weight", "out_fc.4.bias",
    ]:
        assert key in names
    assert "note_contractor.weight" in set(PercePianoModel(PRESETS["bilstm"]).original_state_dict())


def test_unused_original_modules_are_accepted_and_ignored():
    han = PercePianoModel(tiny("measure")).original_state_dict()
    note_model = PercePianoModel(tiny("note"))
    original = dict(han)  # a note-level checkpoint of the original also holds every encoder branch
    original.update({f"note_contractor.{k}": v for k, v in note_model.pool_contractor.state_dict().items()})
    original.update({f"note_attention.{k}": v for k, v in note_model.pool_attention.state_dict().items()})
    original.pop("measure_attention.attention_net.weight")
    original["performance_encoder.performance_contractor.weight"] = torch.zeros(3, 3)
    del original["measure_attention.attention_net.bias"], original["measure_attention.context_vector"]
    note_model.load_original_state_dict(original)
    torch.testing.assert_close(note_model.embed.weight, han["note_embedder.fc.weight"], rtol=0, atol=0)


def test_strict_loading_lists_missing_unexpected_and_mismatched_keys():
    model = PercePianoModel(tiny("measure"))
    original = model.original_state_dict()
    original.pop("score_encoder.beat_rnn.weight_ih_l0")
    original["score_encoder.lstm.weight_ih_l9"] = torch.zeros(1)
    original["out_fc.4.weight"] = torch.zeros(5, 16)
    with pytest.raises(ValueError) as err:
        model.load_original_state_dict(original)
    text = str(err.value)
    assert "missing keys (2)" in text and "score_encoder.beat_rnn.weight_ih_l0" in text and "out_fc.4.weight" in text
    assert "unexpected keys (1)" in text and "weight_ih_l9" in text
    assert "shape mismatches (1)" in text and "(5, 16)" in text


def test_non_strict_loading_loads_what_fits_and_keeps_the_rest():
    source = PercePianoModel(tiny("measure"))
    original = source.original_state_dict()
    original.pop("score_encoder.beat_rnn.weight_ih_l0")
    original["out_fc.4.weight"] = torch.zeros(5, 16)  # another shape: not loaded either
    target = PercePianoModel(tiny("measure"))
    kept = {k: v.clone() for k, v in target.state_dict().items()}
    target.load_original_state_dict(original, strict=False)
    loaded = target.state_dict()
    torch.testing.assert_close(target.embed.weight, source.embed.weight, rtol=0, atol=0)
    changed = {k for k in kept if not torch.equal(loaded[k], kept[k])}
    assert changed and len(changed) == len(kept) - 2  # every key but the missing and the mis-shaped one
    ours = dict(zip(source.original_state_dict(), source.state_dict()))  # original name -> ours, in order
    assert set(kept) - changed == {ours["score_encoder.beat_rnn.weight_ih_l0"], ours["out_fc.4.weight"]}


def test_rename_table_covers_every_parameter():
    for level in LEVELS:
        ours = PercePianoModel(tiny(level)).state_dict()
        prefixes = [o for o, _ in rename_table(level)]
        assert all(any(k.startswith(p + ".") for p in prefixes) for k in ours)


# ---------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x, l, loc: loc["beat"].__setitem__((1, 3), 1), "row 1: indices decrease"),
        (lambda x, l, loc: loc["beat"].__setitem__((2, slice(0, 5)), 0), "row 2: all indices are 0"),
        (lambda x, l, loc: loc["beat"].__setitem__((0, slice(10, 12)), 6), "row 0: index jumps by 2"),
        (lambda x, l, loc: loc["measure"].__setitem__((1, 10), 3), "row 1: padding"),
        (lambda x, l, loc: loc["measure"][0, 1:12].add_(1), "row 0: a measure starts inside beat node 0"),
        (lambda x, l, loc: loc["voice"].__setitem__((0, 0), -1), "voice.*row 0"),
        (lambda x, l, loc: loc.pop("measure"), "missing 'measure'"),
        (lambda x, l, loc: l.__setitem__(0, 13), "lengths"),
    ],
)
def test_bad_note_locations_raise_naming_row_and_reason(mutate, message, batch):
    x, lengths, loc = batch
    lengths, loc = lengths.clone(), {k: v.clone() for k, v in loc.items()}
    mutate(x, lengths, loc)
    with pytest.raises(ValueError, match=message):
        PercePianoModel(tiny("measure"))(x, lengths, loc)


@pytest.mark.parametrize("where, value", [("real note", float("nan")), ("real note", float("inf")),
                                          ("padding", float("nan"))])
def test_non_finite_inputs_are_refused_naming_the_first_bad_row(batch, where, value):
    """NaN anywhere in x gave NaN logits without a word (in padding too, where the embedder runs on every row:
    0 * NaN is NaN); refused everywhere, so that the two embedder paths cannot differ on it."""
    x, lengths, loc = batch
    x = x.clone()
    col = 3 if where == "real note" else 7  # row 2 has 5 notes: position 7 is padding within the longest row
    x[2, col, 1] = value
    with pytest.raises(ValueError, match=rf"x: row 2 position {col} holds a non-finite value"):
        PercePianoModel(tiny("measure"))(x, lengths, loc)
    model = PercePianoModel(tiny("measure"))
    model.validate_inputs = False  # a training loop on validated data skips the check (and the host sync)
    model.cpu_shortcuts = False  # every row embedded, as on a GPU
    assert not torch.isfinite(model(x, lengths, loc)).all()
    model.cpu_shortcuts = True  # the real notes only, in packed order, as the original: padding is never read
    assert torch.isfinite(model(x, lengths, loc)).all() == (where == "padding")


def test_voice_numbers_above_the_maximum_are_refused(batch):
    x, lengths, loc = batch
    loc = {k: v.clone() for k, v in loc.items()}
    loc["voice"][0, 2] = 2**31 - 1
    with pytest.raises(ValueError, match=rf"voice.*row 0 position 2: voice numbers must be 0 to {MAX_VOICE}"):
        PercePianoModel(tiny("voice"))(x, lengths, loc)


def test_one_note_segment_is_an_error_only_where_the_original_spans_nodes_to_notes(batch):
    x, lengths, loc = batch
    lengths = lengths.clone()
    lengths[1] = 1  # its beat and measure indices are not 0 (a lone 0 is an error of its own)
    loc = {k: v * (torch.arange(12)[None, :] < lengths[:, None]) for k, v in loc.items()}
    with pytest.raises(ValueError, match="row 1 has one note"):
        PercePianoModel(tiny("total_note_cat"))(x, lengths, loc)
    assert torch.isfinite(PercePianoModel(tiny("measure"))(x, lengths, loc)).all()


def test_wrong_feature_width_is_an_error(batch):
    x, lengths, loc = batch
    with pytest.raises(ValueError, match=r"x: expected \(B, N, 9\)"):
        PercePianoModel(PRESETS["bilstm"])(x, lengths, loc)


# ---------------------------------------------------------------- deviations
def test_boundary_rule_gt0_equals_original_on_contiguous_data_and_runs_on_jumps(batch):
    x, lengths, loc = batch
    a = PercePianoModel(tiny("measure")).eval()
    b = PercePianoModel(tiny("measure", boundary_rule="diff_gt_0")).eval()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x, lengths, loc), a(x, lengths, loc), rtol=0, atol=0)
    jumped = {k: v.clone() for k, v in loc.items()}
    jumped["beat"][0, 10:] = jumped["beat"][0, 10:] + 2  # beats 4, 4 -> 4, 6: a jump of 2 at position 10
    with pytest.raises(ValueError, match="jumps by 2"):
        a(x, lengths, jumped)
    assert torch.isfinite(b(x, lengths, jumped)).all()


def test_temperature_changes_attention_weights_only_when_not_1(batch):
    x, lengths, loc = batch
    base = PercePianoModel(tiny("measure")).eval()
    ref = base(x, lengths, loc, return_intermediates=True).intermediates
    for temperature, same in [(1.0, True), (0.5, False)]:
        other = PercePianoModel(tiny("measure", attention_temperature=temperature)).eval()
        other.load_state_dict(base.state_dict())
        inter = other(x, lengths, loc, return_intermediates=True).intermediates
        for key in ("beat_weights", "measure_weights", "pool_weights"):
            assert torch.equal(inter[key], ref[key]) is same


@torch.no_grad()  # reads the initial values only
def test_default_init_follows_the_original_laws():
    model = PercePianoModel(PRESETS["han"])
    for name, p in model.named_parameters():
        if "context_vector" in name:
            assert -1 <= float(p.min()) < -0.9 and 0.9 < float(p.max()) <= 1
        elif "lstm" in name:
            assert float(p.abs().max()) <= 1 / math.sqrt(256) + 1e-7
    w_hh = model.note_lstm.weight_hh_l0[:256]
    assert float((w_hh @ w_hh.T - torch.eye(256)).abs().max()) > 0.5  # not orthogonal
    forget = model.note_lstm.bias_ih_l0[256:512]
    assert abs(float(forget.mean())) < 0.01  # no forget-gate bias of 1


@torch.no_grad()  # reads the initial values only
def test_alternative_inits_are_detectable():
    ortho = PercePianoModel(ModelConfig(init="orthogonal_lstm", hidden_size=16))
    w = ortho.note_lstm.weight_hh_l0[:16]
    torch.testing.assert_close(w @ w.T, torch.eye(16), rtol=0, atol=1e-5)
    assert torch.equal(ortho.note_lstm.bias_ih_l0[16:32], torch.ones(16))
    xavier = PercePianoModel(ModelConfig(init="xavier_attention", hidden_size=16))
    assert float(xavier.pool_attention.context_vector.abs().max()) > 1.0  # outside U(-1, 1)
    assert torch.equal(xavier.pool_attention.attention_net.bias, torch.zeros(32))


def test_original_checkpoint_file_loads_without_pickle(tmp_path):
    from percepiano.convert import load_original_checkpoint

    model = PercePianoModel(tiny("measure"))
    path = tmp_path / "checkpoint_best.pt"
    # the original saves {'epoch', 'state_dict', 'optimizer', 'best_valid_loss', ...} (utils.save_checkpoint)
    torch.save({"epoch": 12, "state_dict": model.original_state_dict(), "best_valid_loss": 0.01}, path)
    other = PercePianoModel(tiny("measure"))
    other.load_original_state_dict(load_original_checkpoint(path))
    torch.testing.assert_close(other.embed.weight, model.embed.weight, rtol=0, atol=0)

    # an arbitrary pickled object (the original's argparse Namespace, say) must be refused, not executed
    torch.save({"state_dict": model.original_state_dict(), "args": argparse.Namespace(lr=1.0)}, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_original_checkpoint(tmp_path / "unsafe.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: run on a GPU machine (marker gpu)")
@pytest.mark.parametrize("level", LEVELS)
def test_cuda_equals_cpu_in_float64(level):
    x, lengths, loc = make_batch(dtype=torch.float64)
    model = PercePianoModel(tiny(level)).double().eval()
    ref = model(x, lengths, loc, return_intermediates=True)
    out = model.cuda()(x.cuda(), lengths.cuda(), {k: v.cuda() for k, v in loc.items()}, return_intermediates=True)
    for key, value in ref.intermediates.items():
        torch.testing.assert_close(out.intermediates[key].cpu(), value, **F64)
