"""A training step with host-computed shapes reads nothing back from the device.

The proof on a CPU-only machine runs the step on the ``meta`` device: meta tensors have shapes and no
data, so every operation that needs a value on the host (``.item()``, ``int(t.max())``, ``nonzero``,
boolean-mask indexing, ``pack_padded_sequence``'s lengths) raises there. The same step on a GPU would
therefore never wait for the device; ``test_cuda_training_step_does_not_synchronise`` checks that directly
with CUDA's sync debug mode when a GPU is present.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import LEVELS, SIZES, make_batch, tiny

from percepiano import PRESETS, PercePianoModel
from percepiano import hierarchy as hier
from percepiano.data import Batch, collate
from percepiano.lstm import length_groups
from percepiano.synthetic import random_sample
from percepiano.training import TrainConfig, build_optimizer, build_scheduler, to_device, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

EXACT = dict(rtol=0.0, atol=0.0)  # shapes only size the axes: the arithmetic is the same


def as_batch(x, lengths, locations) -> Batch:
    return Batch(x=x, lengths=lengths, note_locations=locations, labels=torch.rand(x.shape[0], 19), segment_ids=[])


def realistic_batch(input_size: int, segments: int = 8) -> Batch:
    """``segments`` synthetic segments shaped like the dataset (51-413 notes, 1-7 voices)."""
    rng = np.random.default_rng(3)
    return collate([random_sample(rng, input_size) for _ in range(segments)])


def meta_step(model: PercePianoModel, batch: Batch, shapes):
    model = model.to("meta")
    model.validate_inputs = False  # what the training loop does once the data is validated
    tcfg = TrainConfig()
    optimizer = build_optimizer(model, tcfg)
    return train_step(model, batch.to("meta"), optimizer, build_scheduler(optimizer, tcfg), tcfg, shapes)


@pytest.mark.parametrize("level", LEVELS)
def test_training_step_with_shapes_reads_nothing_from_the_device(level):
    batch = as_batch(*make_batch())
    model = PercePianoModel(tiny(level))
    shapes = model.batch_shapes(batch.lengths, batch.note_locations)
    loss = meta_step(model, batch, shapes)
    assert loss.device.type == "meta" and loss.shape == ()


@pytest.mark.parametrize("level", LEVELS)
def test_without_shapes_the_step_reads_from_the_device(level):
    """The check above can fail: the same step that has to find its sizes on the device raises on meta."""
    batch = as_batch(*make_batch())
    with pytest.raises((RuntimeError, NotImplementedError)):
        meta_step(PercePianoModel(tiny(level)), batch, None)


@pytest.mark.slow  # 25 s: every LSTM time step is its own op on meta
@pytest.mark.parametrize("preset", ["han", "bilstm"])
def test_preset_training_step_on_a_realistic_batch_reads_nothing_from_the_device(preset):
    batch = realistic_batch(PRESETS[preset].input_size)
    model = PercePianoModel(PRESETS[preset])
    shapes = model.batch_shapes(batch.lengths, batch.note_locations)
    assert meta_step(model, batch, shapes).device.type == "meta"


@pytest.mark.parametrize("level", LEVELS)
def test_forward_with_host_shapes_equals_reading_them(level):
    x, lengths, locations = make_batch()
    model = PercePianoModel(tiny(level)).eval()
    moved, shapes = to_device(model, as_batch(x, lengths, locations), torch.device("cpu"))
    expected = model(x, lengths, locations, return_intermediates=True).intermediates
    model.validate_inputs = False
    got = model(moved.x, moved.lengths, moved.note_locations, return_intermediates=True, shapes=shapes).intermediates
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **EXACT, msg=key)


def test_batch_shapes_values_on_the_hand_made_batch():
    x, lengths, locations = make_batch()
    shapes = hier.batch_shapes(lengths, {k: locations[k] for k in ("voice", "beat", "measure")})
    # voices 1-3; non-empty (sample, voice): sample 0 {1,2,3}, sample 1 {1,3}, sample 2 {2} = 6, longest:
    # sample 0 voice 1 (6 notes); beats per sample 6, 5, 3; measures 3, 3, 2
    assert shapes == hier.BatchShapes(notes=12, voices=3, voice_sequences=6, voice_length=6, beats=6, measures=3)
    assert hier.batch_shapes(lengths[1:], {"beat": locations["beat"][1:]}) == hier.BatchShapes(notes=9, beats=5)
    with pytest.raises(ValueError, match="needs 'beat' too"):
        hier.batch_shapes(lengths, {"measure": locations["measure"]})


@pytest.mark.parametrize("field, delta", [("notes", -1), ("voice_sequences", 1), ("beats", 1), ("measures", -1)])
def test_wrong_shapes_are_an_error_while_inputs_are_validated(field, delta):
    x, lengths, locations = make_batch()
    model = PercePianoModel(tiny("total_note_cat"))
    shapes = model.batch_shapes(lengths, locations)
    wrong = dataclasses.replace(shapes, **{field: getattr(shapes, field) + delta})
    with pytest.raises(ValueError, match=r"shapes: given .*" + field):
        model(x, lengths, locations, shapes=wrong)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_voice_lstm_with_host_shapes_equals_reading_them(data):
    """Random voice layouts (empty voices, voice-0 notes, one-note sequences): same output either way,
    and every note's output equals running its voice alone."""
    batch = data.draw(st.integers(1, 4))
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, 9), min_size=batch, max_size=batch)))
    width = int(lengths.max())
    voice = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, 4), min_size=width, max_size=width),
                                            min_size=batch, max_size=batch)))
    valid = hier.valid_mask(lengths, width)
    voice = voice * valid
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, 2, batch_first=True, bidirectional=True)
    from percepiano.lstm import run_voice_lstm

    x = torch.randn(batch, width, 3) * valid[:, :, None]
    shape = hier.voice_shapes(voice, valid)
    out = run_voice_lstm(lstm, x, voice, valid, shape)
    torch.testing.assert_close(out, run_voice_lstm(lstm, x, voice, valid), **EXACT)
    for b in range(batch):
        for v in range(1, 5):
            notes = torch.nonzero((voice[b] == v) & valid[b]).flatten()
            if len(notes):
                alone = lstm(x[b, notes][None])[0][0]
                torch.testing.assert_close(out[b, notes], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[(voice == 0) | ~valid], torch.zeros(int(((voice == 0) | ~valid).sum()), 10), **EXACT)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: run on a GPU machine (marker gpu)")
@pytest.mark.parametrize("preset", ["han", "bilstm"])
def test_cuda_training_step_does_not_synchronise(preset):
    cpu_batch = realistic_batch(PRESETS[preset].input_size)
    model = PercePianoModel(PRESETS[preset]).cuda()
    model.validate_inputs = False
    tcfg = TrainConfig()
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    batch, shapes = to_device(model, cpu_batch, torch.device("cuda"))
    train_step(model, batch, optimizer, scheduler, tcfg, shapes)  # warm-up: lazy CUDA and cuDNN set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            train_step(model, batch, optimizer, scheduler, tcfg, shapes)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype, tol", [(torch.float64, dict(rtol=1e-12, atol=1e-13)), (torch.float32, dict(rtol=1e-5, atol=1e-6))])
@pytest.mark.parametrize("level", LEVELS)
def test_device_path_equals_the_cpu_shortcuts(level, dtype, tol):
    """What a GPU runs (no length groups, every row scored) gives the CPU path's outputs and gradients,
    so the parity proven on CPU carries over to the device path's arithmetic."""
    batch = realistic_batch(SIZES["input_size"], segments=6)
    x, lengths, locations = batch.x.to(dtype), batch.lengths, batch.note_locations
    assert len(length_groups(lengths.tolist())) > 1  # the CPU path does split the rows
    torch.manual_seed(0)
    model = PercePianoModel(tiny(level)).to(dtype)
    results = []
    for shortcuts in (True, False):
        model.cpu_shortcuts = shortcuts
        model.zero_grad()
        out = model(x, lengths, locations, return_intermediates=True)
        out.logits.square().sum().backward()
        results.append((out.intermediates, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (cpu_inter, cpu_grads), (dev_inter, dev_grads) = results
    for key in cpu_inter:
        torch.testing.assert_close(dev_inter[key], cpu_inter[key], **tol, msg=key)
    for name in cpu_grads:
        torch.testing.assert_close(dev_grads[name], cpu_grads[name], **tol, msg=name)
