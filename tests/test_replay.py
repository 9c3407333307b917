"""percepiano.replay and rng "original" in training: the original's random draws, replayed (CPU, no original needed).

Each draw is checked against the torch code the original runs: ``DataLoader(shuffle=True)`` for the batch order,
``nn.LSTM`` on packed sequences (ATen's packed LSTM drops out the packed data between layers) and ``nn.Dropout``
for the masks; the whole replay against the original itself is tests/test_parity_replay.py. The perturbation
tests show that the step-by-step comparison (reference_parity/replay_compare.py) fails when one mask element,
one batch position or one initial weight is off, at the step where it happens.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import HAND_MADE, tiny
from torch.nn.utils.rnn import pack_sequence, pad_sequence
from torch.testing import assert_close
from torch.utils.data import DataLoader

from percepiano import PercePianoModel, replay
from percepiano import training as T
from percepiano.checkpoints import set_seed
from percepiano.cli import main
from percepiano.config import get_preset
from percepiano.lstm import run_lstm, run_lstm_packed
from percepiano.synthetic import dataset as synthetic_dataset
from percepiano.synthetic import stack, to_torch
from reference_parity import replay_compare as RC

EXACT = dict(rtol=0, atol=0)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(40, seed=0)


def marker() -> torch.Tensor:
    """The next draws of the global generator: equal markers = the same RNG state."""
    return torch.rand(4, dtype=torch.float64)


# --------------------------------------------------------------------------------------------- init


@pytest.mark.parametrize("preset", ["han", "bilstm", "bilstm_sa"])
def test_our_model_gets_the_drawn_tensors_and_drops_the_rest(preset):
    cfg = get_preset(preset, hidden_size=8)
    set_seed(3)
    drawn = replay.draw_original_init(cfg)
    model = replay.build_model(cfg, 3)
    ours = model.original_state_dict()
    assert set(ours) < set(drawn)  # the tree holds more: performance encoder, unused branches
    assert any(k.startswith("performance_encoder.") for k in set(drawn) - set(ours))
    for name, value in ours.items():
        assert_close(value, drawn[name], **EXACT)
    assert replay.weight_checksums(ours) == {k: v for k, v in replay.weight_checksums(drawn).items() if k in ours}


def test_init_draws_follow_the_construction_order():
    """Moving one module changes every later draw: the order is part of the plan (one extra draw shifts all)."""
    cfg = get_preset("han", hidden_size=8)
    set_seed(0)
    plan = replay.original_modules(cfg)
    names = [n for n, _ in plan]
    assert names[:9] == ["note_embedder.fc", "score_encoder.lstm", "score_encoder.voice_net",
                         "score_encoder.beat_attention", "score_encoder.beat_rnn", "score_encoder.measure_attention",
                         "score_encoder.measure_rnn", "performance_encoder.performance_contractor",
                         "performance_encoder.performance_final_attention"]
    assert names[9:] == ["measure_attention", "out_fc.1", "out_fc.4"]
    set_seed(0)
    torch.rand(1)
    shifted = replay.draw_original_init(cfg)
    set_seed(0)
    drawn = replay.draw_original_init(cfg)
    assert not torch.equal(shifted["out_fc.4.bias"], drawn["out_fc.4.bias"])


def test_replay_init_refuses_a_deviating_init():
    model = PercePianoModel(tiny("measure", init="orthogonal_lstm"))
    with pytest.raises(ValueError, match="init 'orthogonal_lstm' is a deviation"):
        replay.init_like_original(model)


# --------------------------------------------------------------------------------------------- batch order


@pytest.mark.parametrize("n, seed", [(1, 0), (29, 7), (828, 7), (64, 123)])
def test_train_order_is_what_the_dataloader_draws(n, seed):
    torch.manual_seed(seed)
    loader = DataLoader(list(range(n)), batch_size=8, shuffle=True)
    expected = [i for batch in loader for i in batch.tolist()]
    list(DataLoader(list(range(3)), batch_size=8))  # an evaluation loader: one base-seed draw
    after = marker()
    torch.manual_seed(seed)
    got = replay.train_order(n).tolist()
    replay.loader_seed_draw()
    assert got == expected and sorted(got) == list(range(n))
    assert_close(marker(), after, **EXACT)


def test_original_file_order_sorts_ids_as_python_strings():
    ids = np.asarray(["b_10", "b_1", "a.2", "B", "b_2"])
    assert [ids[i] for i in replay.original_file_order(ids, [0, 1, 2, 3, 4])] == sorted(ids.tolist())
    assert replay.original_file_order(ids, [4, 0]).tolist() == [0, 4]  # "b_10" < "b_2"


# --------------------------------------------------------------------------------------------- dropout


def _packed_reference(lstm, x, lengths, seed):
    torch.manual_seed(seed)
    out = run_lstm_packed(lstm, x, lengths)  # nn.LSTM on a PackedSequence: ATen's packed path, as the original
    return out, marker()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=9), st.integers(0, 3))
def test_packed_to_padded_inverts_pack_sequence(lengths, extra):
    """Masks drawn on packed rows land where ``pack_sequence(enforce_sorted=False)`` took each row from (ties
    in length included), zero in the padding."""
    lengths = torch.tensor(lengths)
    width = int(lengths.max()) + extra
    valid = torch.arange(width)[None, :] < lengths[:, None]  # (B, width)
    x = torch.randn(len(lengths), width, 3, dtype=torch.float64) * valid[..., None]  # (B, width, 3)
    packed = pack_sequence([x[b, : int(n)] for b, n in enumerate(lengths)], enforce_sorted=False)
    assert torch.equal(replay.packed_to_padded(packed.data, lengths, width), x)


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("layers", [2, 3])
def test_lstm_masks_replay_the_packed_lstm_dropout(group_by_length, layers):
    lstm = torch.nn.LSTM(5, 4, layers, batch_first=True, bidirectional=True, dropout=0.3).double().train()
    lengths = torch.tensor([6, 2, 9, 6, 1, 9])  # ties: the packing sort decides which row is which
    x = torch.randn(6, 9, 5, dtype=torch.float64) * (torch.arange(9) < lengths[:, None])[:, :, None]
    ref, after = _packed_reference(lstm, x, lengths, seed=11)
    torch.manual_seed(11)
    drawn = {}
    masks = replay._lstm_masks(lengths, 4, layers, 0.3, torch.float64, 9, drawn, "note")
    ours = run_lstm(lstm, x, lengths, group_by_length, masks)
    assert_close(ours, ref, rtol=0, atol=1e-15)
    assert_close(marker(), after, **EXACT)
    assert drawn["note"] == (layers - 1) * int(lengths.sum()) * 8


@pytest.mark.parametrize("layers", [2, 3])
def test_exact_engine_with_masks_is_the_packed_lstm_to_the_last_bit(layers):
    """The replay's exact engine (``run_lstm_packed`` with the replayed masks, layer by layer on the packed
    data) is bitwise ``nn.LSTM``'s own packed run with its own dropout: outputs and every weight gradient."""
    lstm = torch.nn.LSTM(5, 4, layers, batch_first=True, bidirectional=True, dropout=0.3).double().train()
    lengths = torch.tensor([6, 2, 9, 6, 1, 9])
    x = torch.randn(6, 9, 5, dtype=torch.float64) * (torch.arange(9) < lengths[:, None])[:, :, None]
    ref, after = _packed_reference(lstm, x, lengths, seed=5)
    ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in lstm.parameters()]
    lstm.zero_grad()
    torch.manual_seed(5)
    masks = replay._lstm_masks(lengths, 4, layers, 0.3, torch.float64, 9, {}, "note")
    ours = run_lstm_packed(lstm, x, lengths, masks)
    ours.square().sum().backward()
    assert torch.equal(ours, ref) and torch.equal(marker(), after)
    assert all(torch.equal(p.grad, g) for p, g in zip(lstm.parameters(), ref_grads))


def test_only_an_explicit_rng_original_takes_the_exact_engine():
    """``auto`` replays the draws with our faster engine; ``original`` asked for also takes the original's
    packed LSTM arithmetic (2-3x slower per step); the two give the same step up to rounding."""
    cfg = get_preset("bilstm", hidden_size=8)
    assert [T.build_training(cfg, T.TrainConfig(rng=r))[0].exact_lstm for r in ("auto", "original", "own")] == [
        False, True, False]
    batch = to_torch(stack(HAND_MADE, 7, num_labels=3, seed=0, label_scale=60), torch.float64)
    outputs = []
    for exact in (False, True):
        config = tiny("measure", num_labels=3, dropout=0.3, note_layers=2, beat_layers=2)
        model, _, _ = T.build_training(config, T.TrainConfig(dtype="float64"), exact_lstm=exact)
        torch.manual_seed(0)
        masks = replay.draw_step_masks(model.config, batch[1], batch[2], torch.float64)
        model.train()
        loss = T.loss_fn(model(*batch[:3], dropout_masks=masks), batch[3])
        loss.backward()
        outputs.append([loss.detach()] + [p.grad for p in model.parameters()])
    for ours, exact in zip(*outputs):
        assert_close(ours, exact, rtol=1e-12, atol=1e-15)


def test_wrong_masks_are_refused():
    lstm = torch.nn.LSTM(5, 4, 2, batch_first=True, bidirectional=True, dropout=0.3)
    x, lengths = torch.randn(2, 3, 5), torch.tensor([3, 2])
    with pytest.raises(ValueError, match=r"expected 1 mask\(s\) of shape \(2, 3, 8\)"):
        run_lstm(lstm, x, lengths, dropout_masks=[torch.ones(2, 3, 8), torch.ones(2, 3, 8)])
    with pytest.raises(ValueError, match="expected 1 mask"):
        run_lstm(lstm, x, lengths, dropout_masks=[torch.ones(2, 4, 8)])


def _voice_reference(lstm, embedded, voice, valid):
    """``HanEncoder.run_voice_net`` as docs/original.md describes it: per voice number present, one packed
    sequence per sample (its voice notes, or a single zero row), through torch's packed LSTM."""
    out = embedded.new_zeros(*embedded.shape[:2], 2 * lstm.hidden_size)
    for v in range(1, int(voice[valid].max()) + 1):
        member = (voice == v) & valid
        if not member.any():
            continue
        rows = [embedded[b, member[b]] if member[b].any() else embedded.new_zeros(1, embedded.shape[-1])
                for b in range(len(embedded))]
        hidden = run_lstm_packed(lstm, pad_sequence(rows, batch_first=True), torch.tensor([len(r) for r in rows]))
        for b in range(len(embedded)):
            out[b, member[b]] = hidden[b, : int(member[b].sum())]
    return out


@pytest.mark.parametrize("level", ["measure", "note"])
def test_step_masks_replay_voice_note_beat_and_head_in_order(level):
    """A whole step's draws: the voice LSTM per voice number (zero rows for samples without it), the note LSTM,
    the beat LSTM, the head's two Dropouts; at level note the voice and beat draws happen all the same."""
    cfg = tiny(level, dropout=0.25)
    x, lengths, locs, _ = to_torch(stack(HAND_MADE, 7, num_labels=1, seed=0), torch.float64)
    model = PercePianoModel(cfg).double().train()
    voice_lstm = torch.nn.LSTM(cfg.note_size, cfg.voice_size, 2, batch_first=True, bidirectional=True,
                               dropout=0.25).double().train()
    note_lstm = model.note_lstm
    beat_lstm = torch.nn.LSTM(2 * (cfg.note_size + cfg.voice_size), cfg.beat_size, 2, batch_first=True,
                              bidirectional=True, dropout=0.25).double().train()
    nodes = torch.randn(3, 9, 2 * (cfg.note_size + cfg.voice_size), dtype=torch.float64)
    from percepiano import hierarchy as hier

    valid = hier.valid_mask(lengths, x.shape[1])
    beats = hier.node_segments(locs, valid).beats_per_sample
    embedded = model.embed(x) * valid[:, :, None]
    head_in = torch.randn(3, 2 * cfg.encoder_size, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(5)
        ref_voice = _voice_reference(voice_lstm, embedded, locs["voice"], valid)
        ref_note = run_lstm_packed(note_lstm, embedded, lengths)
        ref_beat = run_lstm_packed(beat_lstm, nodes[:, : int(beats.max())], beats)
        ref_head = model.head(head_in)
        after = marker()

        torch.manual_seed(5)
        masks = replay.draw_step_masks(cfg, lengths, locs, torch.float64)
        assert_close(marker(), after, **EXACT)  # the same draws, in the same order
        from percepiano.lstm import run_voice_lstm

        ours_voice = run_voice_lstm(voice_lstm, embedded, locs["voice"], valid, None, True, masks.voice)
        assert_close(ours_voice, ref_voice, rtol=0, atol=1e-15)
        assert_close(run_lstm(note_lstm, embedded, lengths, True, masks.note), ref_note, rtol=0, atol=1e-15)
        assert_close(run_lstm(beat_lstm, nodes[:, : int(beats.max())], beats, True, masks.beat), ref_beat,
                     rtol=0, atol=1e-15)
        assert_close(model._head_with_masks(head_in, masks.head), ref_head, rtol=0, atol=1e-15)
    # voice draws: every voice number present, every sample (one zero row where the voice is absent)
    voice, v_max = locs["voice"], int(locs["voice"].max())
    rows = sum(int(torch.clamp(((voice == v) & valid).sum(1), min=1).sum())
               for v in range(1, v_max + 1) if ((voice == v) & valid).any())
    assert masks.drawn["voice"] == rows * 2 * cfg.voice_size
    assert masks.drawn["beat"] == int(beats.sum()) * 2 * cfg.beat_size


def test_no_dropout_draws_nothing():
    x, lengths, locs, _ = to_torch(stack(HAND_MADE, 7, num_labels=1, seed=0))
    torch.manual_seed(0)
    before = marker()
    torch.manual_seed(0)
    assert replay.draw_step_masks(tiny("measure", dropout=0.0), lengths, locs, torch.float32) is None
    assert_close(marker(), before, **EXACT)


def test_unit_masks_are_the_forward_without_dropout():
    """All-ones masks (nothing dropped, scale 1) give the dropout-free training forward: the hook only multiplies."""
    cfg = tiny("total_note_cat", dropout=0.3)
    x, lengths, locs, _ = to_torch(stack(HAND_MADE, 7, num_labels=1, seed=1), torch.float64)
    torch.manual_seed(0)
    model = PercePianoModel(cfg).double().train()
    plain = PercePianoModel(cfg.replace(dropout=0.0)).double().train()
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    masks = replay.draw_step_masks(cfg, lengths, locs, torch.float64)
    ones = replay.DropoutMasks(*(tuple(torch.ones_like(m) for m in group)
                                 for group in (masks.note, masks.voice, masks.beat, masks.head)))
    assert_close(model(x, lengths, locs, dropout_masks=ones), plain(x, lengths, locs), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="expected the 2 masks of the head"):
        model(x, lengths, locs, dropout_masks=replay.DropoutMasks(masks.note, masks.voice, masks.beat, masks.head[:1]))


# --------------------------------------------------------------------------------------------- training


def _train(ds, out, **kw):
    tcfg = T.TrainConfig(**{"epochs": 2, "lr": 1e-3, **kw})
    return T.train_fold(get_preset("han", hidden_size=8), tcfg, ds, "composition", 0, out, progress=False,
                        step_log=True)


def test_auto_replays_on_a_cpu_only():
    cfg = get_preset("han")
    assert T.TrainConfig().rng == "auto"
    assert T.effective_rng(T.TrainConfig(), cfg, "cpu") == "original"
    assert T.effective_rng(T.TrainConfig(), cfg, "cuda") == "own"  # the original's GPU dropout is cuDNN's
    assert T.effective_rng(T.TrainConfig(), cfg.replace(init="xavier_attention"), "cpu") == "own"
    assert T.effective_rng(T.TrainConfig(rng="own"), cfg, "cpu") == "own"
    with pytest.raises(ValueError, match="TrainConfig.rng: expected one of"):
        T.TrainConfig(rng="torch")
    with pytest.raises(ValueError, match="TrainConfig.dtype: expected one of"):
        T.TrainConfig(dtype="float16")
    with pytest.raises(ValueError, match="resolve it with effective_rng"):
        T.fold_indices(None, "performer", 0, T.TrainConfig())


def test_replayed_run_is_a_function_of_the_seed_and_resumes_bitwise(ds, tmp_path):
    whole = _train(ds, tmp_path / "whole", rng="original")
    again = _train(ds, tmp_path / "again", rng="original")
    auto = _train(ds, tmp_path / "auto")  # auto on a CPU: the same draws, our faster LSTM arithmetic
    assert whole["rng"] == again["rng"] == auto["rng"] == "original"
    steps = (tmp_path / "whole" / T.STEPS).read_text()
    assert steps == (tmp_path / "again" / T.STEPS).read_text()
    exact, fast = ([json.loads(line) for line in (tmp_path / d / T.STEPS).read_text().splitlines()]
                   for d in ("whole", "auto"))
    assert [r["segment_ids"] for r in fast] == [r["segment_ids"] for r in exact]
    assert_close([r["loss"] for r in fast], [r["loss"] for r in exact], rtol=1e-5, atol=0)  # float32 rounding

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.train_fold(get_preset("han", hidden_size=8), T.TrainConfig(epochs=2, lr=1e-3, rng="original"), ds,
                     "composition", 0, tmp_path / "cut", progress=False, step_log=True, on_epoch_end=stop)
    resumed = T.train_fold(get_preset("han", hidden_size=8), T.TrainConfig(epochs=2, lr=1e-3, rng="original"), ds,
                           "composition", 0, tmp_path / "cut", progress=False, step_log=True, resume=True)
    assert resumed["valid_loss"] == whole["valid_loss"] and resumed["test_r2"] == whole["test_r2"]
    assert (tmp_path / "cut" / T.STEPS).read_text() == steps  # the eval loaders' seed draws are in the saved state


def test_the_step_log_survives_a_run_killed_between_or_while_writing(ds, tmp_path, monkeypatch):
    """An epoch's steps go to steps.jsonl before its last.pt: a run killed right after last.pt, or while it
    appends the next epoch's steps (a line cut short), resumes to the uninterrupted run's step log; a damaged
    line elsewhere is an error naming the file and the line."""
    cfg, tcfg = get_preset("han", hidden_size=8), T.TrainConfig(epochs=2, lr=1e-3)

    def train(name, **kw):
        return T.train_fold(cfg, tcfg, ds, "composition", 0, tmp_path / name, progress=False, step_log=True, **kw)

    train("whole")
    whole = (tmp_path / "whole" / T.STEPS).read_text()
    save = T.atomic_save

    def killed_after_last_pt(state, path):
        save(state, path)
        if state.get("kind") == "last" and state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "atomic_save", killed_after_last_pt)
    with pytest.raises(KeyboardInterrupt):
        train("after_last")
    monkeypatch.setattr(T, "atomic_save", save)
    train("after_last", resume=True)
    assert (tmp_path / "after_last" / T.STEPS).read_text() == whole

    def stop(epoch, record):
        raise KeyboardInterrupt

    for name in ("cut", "damaged"):
        with pytest.raises(KeyboardInterrupt):
            train(name, on_epoch_end=stop)
    cut = tmp_path / "cut" / T.STEPS
    cut.write_text(cut.read_text() + '{"step": 99, "epoch": 2, "lo')  # killed while appending epoch 2's steps
    train("cut", resume=True)
    assert cut.read_text() == whole
    damaged = tmp_path / "damaged" / T.STEPS
    damaged.write_text('{"step": 1, "epo\n' + damaged.read_text())
    with pytest.raises(ValueError, match="steps.jsonl: line 1 is not valid JSON"):
        train("damaged", resume=True)


def test_resume_refuses_another_plan_of_draws(ds, tmp_path, monkeypatch):
    """rng "auto" is the same identity on every device, but not the same draws: a run replaying the original
    (CPU) is not continued with our own plan (what auto gives on a GPU)."""
    tcfg = T.TrainConfig(epochs=2, lr=1e-3)
    T.train_fold(get_preset("han", hidden_size=8), tcfg.replace(epochs=1), ds, "composition", 0, tmp_path / "run",
                 progress=False)
    monkeypatch.setattr(T, "effective_rng", lambda *a: "own")
    with pytest.raises(ValueError, match="trained with rng 'original'.*would use 'own'.*pass --rng original"):
        T.train_fold(get_preset("han", hidden_size=8), tcfg, ds, "composition", 0, tmp_path / "run", progress=False,
                     resume=True)


def test_step_log_records_every_step(ds, tmp_path):
    res = _train(ds, tmp_path / "run", rng="original", dtype="float64")
    records = [json.loads(line) for line in (tmp_path / "run" / T.STEPS).read_text().splitlines()]
    per_epoch = -(-res["n_train"] // 8)
    assert [r["step"] for r in records] == list(range(1, 2 * per_epoch + 1))
    assert [r["epoch"] for r in records] == [1] * per_epoch + [2] * per_epoch
    assert all(r["lr"] == 1e-3 and r["grad_norm"] > 0 and len(r["segment_ids"]) <= 8 for r in records)
    log = [json.loads(line) for line in (tmp_path / "run" / T.LOG).read_text().splitlines()]
    assert log[0]["train_loss"] == pytest.approx(np.mean([r["loss"] for r in records[:per_epoch]]), rel=1e-12)
    visited = [s for r in records[:per_epoch] for s in r["segment_ids"]]
    assert sorted(visited) == sorted(str(ds.segment_ids[i]) for i in ds.split_indices("composition", 0, "train"))


def test_grad_norm_is_the_norm_before_clipping():
    model = PercePianoModel(tiny("measure")).double()
    x, lengths, locs, labels = to_torch(stack(HAND_MADE, 7, num_labels=19, seed=0, label_scale=60), torch.float64)
    from percepiano.data import Batch

    batch = Batch(x=x, lengths=lengths, note_locations=locs, labels=labels, segment_ids=["a", "b", "c"])
    tcfg = T.TrainConfig(grad_clip=1e-3)
    opt = T.build_optimizer(model, tcfg)
    loss = T.loss_fn(model(x, lengths, locs), labels)
    loss.backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    opt.zero_grad()
    record = {}
    T.train_step(model, batch, opt, T.build_scheduler(opt, tcfg), tcfg, record=record)
    assert_close(record["grad_norm"], expected, rtol=1e-12, atol=0)
    assert record["grad_norm"] > 1e-3 and record["lr"] == tcfg.lr  # the clip bound: the norm is the one before it


def test_float64_training_keeps_float64(ds, tmp_path):
    res = _train(ds, tmp_path / "run", dtype="float64", epochs=1)
    best = torch.load(tmp_path / "run" / T.BEST, weights_only=True)
    assert all(v.dtype == torch.float64 for v in best["model_state"].values())
    assert np.load(tmp_path / "run" / T.PREDICTIONS)["predictions"].dtype == np.float32  # files stay float32
    assert res["rng"] == "original"


def test_cli_rng_dtype_and_step_log(tmp_path, capsys):
    data = "tests/data/synthetic_m2pf.npz"
    args = ["train", "--preset", "bilstm", "--split", "performer", "--fold", "0", "--data", data, "--epochs", "1",
            "--hidden-size", "8", "--threads", "1", "--no-progress", "--max-batches", "2"]
    assert main(args + ["--out", str(tmp_path / "a"), "--rng", "original", "--dtype", "float64", "--step-log"]) == 0
    assert len((tmp_path / "a" / T.STEPS).read_text().splitlines()) == 2
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "b" / T.STEPS).exists()
    with pytest.raises(SystemExit) as exc:
        main(args + ["--out", str(tmp_path / "c"), "--dtype", "float16"])
    assert exc.value.code == 2
    assert "argument --dtype: invalid choice: 'float16'" in capsys.readouterr().err


def test_cv_step_log_writes_each_folds_steps_as_train_does(tmp_path, capsys):
    """``cv --step-log``: every fold directory gets the steps.jsonl that ``train --step-log`` writes for it."""
    data = "tests/data/synthetic_m2pf.npz"
    common = ["--preset", "bilstm", "--split", "performer", "--data", data, "--epochs", "1", "--hidden-size", "8",
              "--threads", "1", "--no-progress", "--max-batches", "2", "--step-log"]
    assert main(["cv", *common, "--folds", "0,2", "--out", str(tmp_path / "cv")]) == 0
    assert main(["train", *common, "--fold", "2", "--out", str(tmp_path / "train")]) == 0
    fold2 = [json.loads(line) for line in (tmp_path / "cv" / "fold2" / T.STEPS).read_text().splitlines()]
    assert fold2 == [json.loads(line) for line in (tmp_path / "train" / T.STEPS).read_text().splitlines()]
    assert len(fold2) == 2 and len((tmp_path / "cv" / "fold0" / T.STEPS).read_text().splitlines()) == 2
    assert main(["cv", "--preset", "ridge", "--split", "performer", "--data", data, "--step-log",
                 "--out", str(tmp_path / "ridge")]) == 2
    assert "--step-log: the ridge baseline trains nothing" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- perturbations

CASE = {"preset": "han", "hidden_size": 8, "dtype": "float64", "split": "composition", "fold": 0, "seed": 4,
        "epochs": 1}


def _as_fixture(run: dict) -> dict:
    """A run in the layout the capture records (what compare_case reads)."""
    e = run["epochs"][0]
    return {"step/loss": np.asarray([s["loss"] for s in run["steps"]]),
            "step/grad_norm": np.asarray([s["grad_norm"] for s in run["steps"]]),
            "step/lr": np.asarray([s["lr"] for s in run["steps"]]), "order": np.asarray(run["order"]),
            "init/names": np.asarray(list(run["init"]["drawn"])), "init/sha256": np.asarray(list(run["init"]["drawn"].values())),
            **{f"epoch/{k}": np.asarray([e[k]]) for k in ("valid_loss", "valid_r2", "test_loss", "test_r2")}}


@pytest.fixture(scope="module")
def reference(ds):
    return _as_fixture(RC.run_ours(CASE, ds))


def _rows(rows):
    return {r.name.split(" (")[0]: r for r in rows}


def test_an_identical_run_passes_every_check(ds, reference):
    rows = RC.compare_case(CASE, reference, RC.run_ours(CASE, ds))
    assert [r.name for r in rows if not r.passed] == []
    assert len(rows) == 10


def test_one_mask_element_off_fails_from_its_step(ds, reference, monkeypatch):
    draw, calls = replay.draw_step_masks, []

    def off_at_step_3(*args, **kwargs):
        masks = draw(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            m = masks.note[0]
            m[0, 0, 0] = 0.0 if m[0, 0, 0] != 0 else 1 / (1 - 0.2)  # one element of the note LSTM's mask
        return masks

    monkeypatch.setattr(replay, "draw_step_masks", off_at_step_3)
    rows = _rows(RC.compare_case(CASE, reference, RC.run_ours(CASE, ds)))
    assert not rows["loss"].passed and "first step over tol: 3" in rows["loss"].note
    assert rows["batch order"].passed and rows["init: our model's weights"].passed


def test_one_batch_position_off_fails_order_and_loss(ds, reference, monkeypatch):
    order = replay.train_order

    def swapped(n):
        perm = order(n)
        perm[[9, 17]] = perm[[17, 9]]  # one segment of step 2 and one of step 3 change places
        return perm

    monkeypatch.setattr(replay, "train_order", swapped)
    rows = _rows(RC.compare_case(CASE, reference, RC.run_ours(CASE, ds)))
    assert not rows["batch order"].passed and "first differing at step 2" in rows["batch order"].note
    assert not rows["loss"].passed and "first step over tol: 2" in rows["loss"].note
    assert rows["init: original module tree drawn"].passed


def test_one_init_draw_off_fails_init_and_the_curve(ds, reference, monkeypatch):
    draw = replay.draw_original_init

    def one_off(cfg):
        state = draw(cfg)
        state["out_fc.4.bias"][0] += 1e-6
        return state

    monkeypatch.setattr(replay, "draw_original_init", one_off)
    rows = _rows(RC.compare_case(CASE, reference, RC.run_ours(CASE, ds)))
    assert not rows["init: original module tree drawn"].passed and "first out_fc.4.bias" in rows["init: original module tree drawn"].note
    assert not rows["init: our model's weights"].passed
    assert not rows["loss"].passed and "first step over tol: 1" in rows["loss"].note
