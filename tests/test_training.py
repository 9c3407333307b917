"""percepiano.training and percepiano.cv: the original protocol's pieces, fold runs, bitwise resume and the
command line (CPU). The checkpoint helpers themselves: tests/test_checkpoints.py."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from percepiano import training as T
from percepiano.checkpoints import model_from_checkpoint
from percepiano.cli import main
from percepiano.config import get_preset
from percepiano.data import iterate_batches
from percepiano.metrics import r2
from percepiano.synthetic import dataset as synthetic_dataset
from percepiano.synthetic import dataset_arrays as synthetic_arrays

EXACT = dict(rtol=0, atol=0)
FP32 = dict(rtol=1e-5, atol=1e-6)  # same float32 computation, different kernel/batching order


class StandIn(nn.Module):
    """A tiny model with the PercePianoModel interface: (x, lengths, note_locations, shapes=) -> (B, 19)
    logits, and ``batch_shapes`` (it needs none)."""

    def __init__(self, input_size=101, hidden=6, dropout=0.0, gain=1.0):
        super().__init__()
        self.gain = gain  # scales the pooled features up and the output weights down: same logits, larger grads
        self.lin = nn.Linear(input_size, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 19)
        with torch.no_grad():
            self.out.weight.div_(gain)

    def batch_shapes(self, lengths, note_locations):
        return None

    def forward(self, x, lengths, note_locations, shapes=None):
        mask = (torch.arange(x.shape[1]) < lengths[:, None]).to(x.dtype)[:, :, None]  # ignore padding
        h = (torch.tanh(self.lin(x)) * mask).sum(1) / lengths[:, None].to(x.dtype)
        return self.out(self.drop(h * self.gain))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(40, seed=0)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.npz"
    np.savez(path, **synthetic_arrays(40, seed=0))
    return path


def tiny(preset="han", **kw):
    return get_preset(preset, hidden_size=8, **kw)


SMALL = T.TrainConfig(epochs=3, lr=1e-3)


# ------------------------------------------------------------------------------------------ configuration


def test_train_config_defaults_are_the_original():
    c = T.TrainConfig()
    assert (c.lr, c.weight_decay, c.lr_step_size, c.lr_gamma, c.grad_clip) == (2.5e-5, 1e-5, 3000, 0.98, 2.0)
    assert (c.batch_size, c.eval_batch_size, c.final_eval_batch_size, c.epochs, c.seed) == (8, 8, 1, 100, 7)
    assert c.deterministic is False and c.limit_segments is None and c.max_train_batches is None
    assert c.is_original() and not c.replace(lr=1e-3).is_original() and not c.replace(limit_segments=4).is_original()
    assert T.TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(Exception):
        c.lr = 1.0  # frozen
    with pytest.raises(ValueError, match="batch_size"):
        T.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown fields"):
        T.TrainConfig.from_dict({**c.to_dict(), "warmup": 10})


def test_optimizer_is_adam_over_all_parameters_in_one_group():
    model = StandIn()
    opt = T.build_optimizer(model, T.TrainConfig())
    assert type(opt) is torch.optim.Adam  # not AdamW: coupled L2
    assert len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert [id(p) for p in g["params"]] == [id(p) for p in model.parameters()]
    assert (g["lr"], g["weight_decay"], g["betas"], g["eps"], g["amsgrad"]) == (2.5e-5, 1e-5, (0.9, 0.999), 1e-8, False)


def test_scheduler_steps_per_batch_with_the_original_formula():
    p = nn.Parameter(torch.zeros(1))
    tcfg = T.TrainConfig()
    opt = torch.optim.Adam([p], lr=tcfg.lr)
    sched = T.build_scheduler(opt, tcfg)
    seen = {}
    for k in range(6002):
        seen[k] = opt.param_groups[0]["lr"]
        p.grad = torch.zeros(1)
        opt.step()
        sched.step()
    for k in (0, 1, 2999, 3000, 3001, 5999, 6000, 6001):
        assert seen[k] == pytest.approx(2.5e-5 * 0.98 ** (k // 3000), rel=1e-12), k


def test_loss_is_mse_of_sigmoid():
    logits, y = torch.randn(5, 19), torch.rand(5, 19)
    torch.testing.assert_close(T.loss_fn(logits, y), ((torch.sigmoid(logits) - y) ** 2).mean(), **EXACT)


class RecordingAdam(torch.optim.Adam):
    def step(self, closure=None):
        self.grads_at_step = [p.grad.detach().clone() for p in self.param_groups[0]["params"]]
        return super().step(closure)


def test_train_step_order_clipping_and_return(ds):
    torch.manual_seed(0)
    model = StandIn(gain=1e5)  # gradient norm well above the clip
    batch = ds.batch(range(8))
    ref = copy.deepcopy(model)
    ref_loss = T.loss_fn(ref(batch.x, batch.lengths, batch.note_locations), batch.labels)
    ref_loss.backward()
    raw_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in ref.parameters()]))
    assert raw_norm > 10 * T.TrainConfig().grad_clip  # the test only means something if clipping is active
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 2.0)
    opt = RecordingAdam(model.parameters(), lr=2.5e-5, weight_decay=1e-5)
    sched = T.build_scheduler(opt, T.TrainConfig())
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e6)  # stale gradients: zero_grad must come before backward
    loss = T.train_step(model, batch, opt, sched, T.TrainConfig())
    assert not loss.requires_grad and loss.shape == ()
    torch.testing.assert_close(loss, ref_loss.detach(), **EXACT)
    for got, want in zip(opt.grads_at_step, [p.grad for p in ref.parameters()]):
        torch.testing.assert_close(got, want, **FP32)
    step_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in opt.grads_at_step]))
    assert step_norm == pytest.approx(2.0, rel=1e-5)
    assert sched.last_epoch == 1 and model.training


def test_predict_split_uses_the_original_valid_loss_formula(ds):
    torch.manual_seed(1)
    model = StandIn(dropout=0.5).train()
    idx = np.arange(20)  # batches of 8, 8, 4
    p = T.predict_split(model, ds, idx, feature_set="full", batch_size=8)
    assert model.training  # mode restored
    assert p.segment_ids == [str(s) for s in ds.segment_ids[idx]]
    np.testing.assert_allclose(p.predictions, 1 / (1 + np.exp(-p.logits.astype(np.float64))), rtol=1e-6, atol=1e-7)
    sq = (p.predictions.astype(np.float64) - ds.labels[idx]) ** 2
    expect = (sq[:8].mean() + sq[8:16].mean() + sq[16:].mean()) / 20
    assert p.loss == pytest.approx(expect, rel=1e-6)
    assert p.loss == pytest.approx(T.original_valid_loss(ds.labels[idx], p.predictions, 8), rel=1e-6)
    assert p.loss < sq.mean() / 4  # it is ~ MSE / batch size, not the MSE
    # eval mode: no dropout, so the result does not depend on the batch size here
    p1 = T.predict_split(model, ds, idx, feature_set="full", batch_size=1)
    np.testing.assert_allclose(p1.predictions, p.predictions, **FP32)


# ------------------------------------------------------------------------------------------ fold runs


def _run(ds, out, tcfg=SMALL, preset="han", **kw):
    feature_set = "performance_only" if preset == "bilstm" else "full"
    return T.train_fold(tiny(preset), tcfg, ds, "composition", 1, out, feature_set=feature_set, progress=False, **kw)


def test_train_fold_files_log_and_selection(ds, tmp_path):
    res = _run(ds, tmp_path)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    for r in log:
        for key in ("epoch", "train_loss", "valid_loss", "valid_r2", "test_r2", "lr", "seconds"):
            assert key in r and r[key] is not None and np.isfinite(r[key]), key
    losses = [r["valid_loss"] for r in log]
    assert res["best_epoch"] == int(np.argmin(losses)) + 1 and res["valid_loss"] == min(losses)
    for name in ("last.pt", "best.pt", "test_predictions.npz", "fold_result.json"):
        assert (tmp_path / name).is_file(), name
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("model_state", "model_config", "train_config", "optimizer", "scheduler", "epoch", "best", "rng", "history"):
        assert key in last, key
    assert last["epoch"] == 3 and last["scheduler"]["last_epoch"] == 3 * int(np.ceil(len(ds.split_indices("composition", 1, "train")) / 8))
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == res["best_epoch"]
    # the reported test metrics are those of the best checkpoint at batch size 1
    pred = np.load(tmp_path / "test_predictions.npz", allow_pickle=False)
    te = ds.split_indices("composition", 1, "test")
    assert list(pred["segment_ids"]) == [str(s) for s in ds.segment_ids[te]]
    assert r2(pred["labels"], pred["predictions"]) == pytest.approx(res["test_r2"], abs=1e-7)
    model = model_from_checkpoint(best)
    again = T.evaluate_model(model, ds, te, feature_set="full", batch_size=1)
    assert again["metrics"]["r2"] == pytest.approx(res["test_r2"], abs=1e-12)
    with pytest.raises(ValueError, match="--resume"):
        _run(ds, tmp_path)  # never overwrites a run silently


def test_resume_is_bitwise_identical(ds, tmp_path):
    """Interrupt after epoch 1 (checkpoint on disk), resume, and end exactly where an uninterrupted run ends."""
    full = _run(ds, tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop(epoch, record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(ds, tmp_path / "resumed", on_epoch_end=stop)
    assert not (tmp_path / "resumed" / "fold_result.json").exists()
    resumed = _run(ds, tmp_path / "resumed", resume=True)

    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for k in a["model_state"]:
        torch.testing.assert_close(b["model_state"][k], a["model_state"][k], **EXACT)
    for pid, st in a["optimizer"]["state"].items():
        for name, v in st.items():
            torch.testing.assert_close(b["optimizer"]["state"][pid][name], v, **EXACT)
    assert a["scheduler"] == b["scheduler"] and a["best"] == b["best"]
    torch.testing.assert_close(b["rng"]["torch"], a["rng"]["torch"], **EXACT)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    log_b = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert strip(log_b) == strip(a["history"])
    pa = np.load(tmp_path / "full" / "test_predictions.npz")
    pb = np.load(tmp_path / "resumed" / "test_predictions.npz")
    np.testing.assert_array_equal(pa["predictions"], pb["predictions"])
    assert {k: v for k, v in full.items() if "seconds" not in k} == {k: v for k, v in resumed.items() if "seconds" not in k}


def test_a_run_stopped_between_last_pt_and_best_pt_resumes_to_the_uninterrupted_result(ds, tmp_path):
    """train_fold writes a new best epoch to last.pt, then to best.pt: a run stopped in between (here: best.pt of
    epoch 1 never written) leaves the best model in last.pt, and resume rebuilds best.pt from it."""
    full = _run(ds, tmp_path / "full")
    _run(ds, tmp_path / "cut", tcfg=SMALL.replace(epochs=1))
    (tmp_path / "cut" / "best.pt").unlink()
    lines = []
    cut = _run(ds, tmp_path / "cut", resume=True, log=lines.append)
    assert any("best.pt: rebuilt from last.pt (epoch 1" in line for line in lines), lines
    strip = lambda r: {k: v for k, v in r.items() if "seconds" not in k}  # noqa: E731
    assert strip(cut) == strip(full)
    a = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)
    assert b["epoch"] == a["epoch"] == full["best_epoch"]
    for k in a["model_state"]:
        torch.testing.assert_close(b["model_state"][k], a["model_state"][k], **EXACT)


def test_resume_refuses_a_best_pt_that_last_pt_does_not_explain(ds, tmp_path):
    from percepiano.checkpoints import atomic_save

    _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2))
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    atomic_save({**best, "epoch": ck["epoch"] + 5}, tmp_path / "best.pt")  # neither last.pt's best nor newer
    atomic_save({**ck, "epoch": ck["epoch"] + 5, "best": {**ck["best"], "epoch": ck["epoch"] + 4}}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"best\.pt: holds the model of epoch 7, but last\.pt \(epoch 7\) names "
                                         r"epoch 6 as the best: cannot resume"):
        _run(ds, tmp_path, tcfg=SMALL.replace(epochs=9), resume=True)


@pytest.mark.parametrize("epoch_3_is_best", [True, False])
def test_a_best_pt_newer_than_last_pt_is_overwritten_or_refused_never_evaluated(ds, tmp_path, epoch_3_is_best):
    """A best.pt one epoch ahead of last.pt (written first, by percepiano before the last.pt-first order): the
    epoch is trained again; where it is the best again best.pt is rewritten, else the fold stops with an error
    rather than evaluate that model under another epoch's name. The recorded best valid loss decides which."""
    from percepiano.checkpoints import atomic_save

    _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2))
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    atomic_save({**best, "epoch": 3}, tmp_path / "best.pt")  # epoch 3's, written before last.pt of epoch 3
    loss = float("inf") if epoch_3_is_best else float("-inf")
    atomic_save({**ck, "best": {"epoch": 1, "valid_loss": loss}}, tmp_path / "last.pt")  # best epoch 1 of 2
    lines = []
    if epoch_3_is_best:
        res = _run(ds, tmp_path, tcfg=SMALL.replace(epochs=3), resume=True, log=lines.append)
        assert res["best_epoch"] == 3 and torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 3
    else:
        with pytest.raises(ValueError, match=r"best\.pt: holds the model of epoch 3, but the run's best epoch .* is 1"):
            _run(ds, tmp_path, tcfg=SMALL.replace(epochs=3), resume=True, log=lines.append)
        assert json.loads((tmp_path / "fold_result.json").read_text())["epochs_trained"] == 2  # the 2-epoch run's
    assert any("best.pt: holds epoch 3, after last.pt's epoch 2: that epoch is trained again" in x for x in lines)


def test_resume_refuses_a_different_config(ds, tmp_path):
    """Every field of the identity that differs is named with both values; only the epochs may grow."""
    _run(ds, tmp_path, tcfg=SMALL.replace(epochs=1))
    with pytest.raises(ValueError, match=r"cannot resume it(.|\n)*train_config\.lr: saved 0\.001, requested 0\.0001"):
        _run(ds, tmp_path, tcfg=SMALL.replace(lr=1e-4), resume=True)
    with pytest.raises(ValueError, match=r"train_config\.seed: saved 7, requested 8"):
        _run(ds, tmp_path, tcfg=SMALL.replace(seed=8), resume=True)
    with pytest.raises(ValueError, match=r"model_config\.hidden_size: saved 8, requested 16"):
        T.train_fold(get_preset("han", hidden_size=16), SMALL, ds, "composition", 1, tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"fold: saved 1, requested 2"):
        T.train_fold(tiny(), SMALL, ds, "composition", 2, tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"preset: saved None, requested 'han'"):
        _run(ds, tmp_path, resume=True, run_info={"preset": "han"})
    # extending the number of epochs is allowed; shrinking them back is not
    res = _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2), resume=True)
    assert res["epochs_trained"] == 2 and res["identity"]["train_config"]["epochs"] == 2
    with pytest.raises(ValueError, match=r"train_config\.epochs: saved 2, requested 1(.|\n)*may only raise --epochs"):
        _run(ds, tmp_path, tcfg=SMALL.replace(epochs=1), resume=True)


def test_a_directory_holding_a_run_is_never_overwritten(ds, tmp_path):
    """Without --resume any run file refuses the directory (not only last.pt); with --resume a last.pt is needed."""
    for name in ("results.json", "fold_result.json", "best.pt", "fold0"):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).mkdir() if name == "fold0" else (out / name).write_text("{}")
        with pytest.raises(ValueError, match=rf"already holds a run \({name}/?\); pass --resume"):
            _run(ds, out)
        assert sorted(p.name for p in out.iterdir()) == [name]  # untouched
    with pytest.raises(ValueError, match=r"nothing to resume in .*empty: no last\.pt$"):
        _run(ds, tmp_path / "empty", resume=True)
    assert not (tmp_path / "empty").exists()  # not trained from scratch
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="a_file is a file, not a run directory"):
        _run(ds, tmp_path / "a_file")


def test_resume_refuses_another_dataset(data_file, tmp_path):
    """The checkpoint records the dataset's sha256: a resume on other data is refused; the same bytes under
    another file name are the same data."""
    from percepiano.data import load_dataset
    from percepiano.provenance import file_sha256

    other = tmp_path / "other.npz"
    np.savez(other, **synthetic_arrays(40, seed=1))
    same = tmp_path / "renamed.npz"
    same.write_bytes(data_file.read_bytes())
    _run(load_dataset(data_file), tmp_path / "run", tcfg=SMALL.replace(epochs=1))
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["identity"]["data"] == {"file": "synthetic.npz", "sha256": file_sha256(data_file)}
    want = rf"data\.sha256: saved '{file_sha256(data_file)}', requested '{file_sha256(other)}'"
    with pytest.raises(ValueError, match=want):
        _run(load_dataset(other), tmp_path / "run", tcfg=SMALL.replace(epochs=2), resume=True)
    res = _run(load_dataset(same), tmp_path / "run", tcfg=SMALL.replace(epochs=2), resume=True)
    assert res["epochs_trained"] == 2


def test_resume_refuses_a_checkpoint_without_identity(ds, tmp_path):
    """A last.pt written before checkpoints carried their identity cannot be checked, so it is refused."""
    from percepiano.checkpoints import atomic_save

    _run(ds, tmp_path, tcfg=SMALL.replace(epochs=1))
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    del ck["identity"], ck["code_changes"]
    atomic_save(ck, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"last\.pt: written without a run identity \(by an older percepiano"):
        _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2), resume=True)


def test_resume_after_a_commit_that_left_the_package_alone_is_allowed_and_recorded(ds, tmp_path, monkeypatch):
    """Another commit, same version and source sha256 (a docs-only commit, a copy without git): the same code,
    so the resume needs no flag, and the move is recorded in code_changes, nothing lost."""
    from percepiano import provenance

    _run(ds, tmp_path, tcfg=SMALL.replace(epochs=1))
    old = provenance.code_version()
    new = {**old, "commit": "0" * 40}
    monkeypatch.setattr(provenance, "code_version", lambda: dict(new))
    res = _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2), resume=True)
    change = [{"after_epoch": 1, "saved": old, "requested": new}]
    assert res["code_changes"] == change and res["identity"]["code"] == new
    assert torch.load(tmp_path / "best.pt", weights_only=True)["code_changes"] == change


def test_resume_under_another_code_version_needs_allow_code_change(ds, tmp_path, monkeypatch):
    from percepiano import provenance

    _run(ds, tmp_path, tcfg=SMALL.replace(epochs=1))
    old = provenance.code_version()
    new = {**old, "version": "9.9.9", "commit": "0" * 40}
    monkeypatch.setattr(provenance, "code_version", lambda: dict(new))
    with pytest.raises(ValueError, match=r"code\.version: saved .*, requested '9\.9\.9'(.|\n)*--allow-code-change"):
        _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2), resume=True)
    res = _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2), resume=True, allow_code_change=True)
    change = [{"after_epoch": 1, "saved": old, "requested": new}]
    assert res["code_changes"] == change and res["identity"]["code"] == new
    for name in ("last.pt", "best.pt"):  # best.pt says it too, whichever epoch it holds
        ck = torch.load(tmp_path / name, weights_only=True)
        assert ck["code_changes"] == change and ck["identity"] == res["identity"], name
    assert json.loads((tmp_path / "fold_result.json").read_text())["code_changes"] == change


def test_resume_after_an_edit_of_the_source_needs_allow_code_change(ds, tmp_path, monkeypatch):
    """Same version and commit, other source bytes (an uncommitted edit, or an install without git): another
    code version, refused without --allow-code-change."""
    from percepiano import provenance

    _run(ds, tmp_path, tcfg=SMALL.replace(epochs=1))
    saved = provenance.source_sha256()
    monkeypatch.setattr(provenance, "source_sha256", lambda: "f" * 64)
    with pytest.raises(ValueError, match=rf"code\.source_sha256: saved '{saved}', requested 'f{{64}}'(.|\n)*--allow-code-change"):
        _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2), resume=True)
    res = _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2), resume=True, allow_code_change=True)
    assert res["code_changes"][0]["saved"]["source_sha256"] == saved
    assert res["identity"]["code"]["source_sha256"] == "f" * 64


def test_tree_sha256_sees_an_edit_a_rename_and_not_the_location(tmp_path):
    """The source hash of the package: one changed byte or a renamed module is other code; the same files in
    another folder (a worktree, site-packages) are the same code; caches and other files are not code."""
    from pathlib import Path

    import percepiano
    from percepiano import provenance

    package = Path(percepiano.__file__).resolve().parent
    assert provenance.source_sha256() == provenance.tree_sha256(package)
    a, b = tmp_path / "a" / "pkg", tmp_path / "b" / "pkg"
    for root in (a, b):
        (root / "sub" / "__pycache__").mkdir(parents=True)
        (root / "mod.py").write_text("x = 1\n")
        (root / "sub" / "stats.json").write_text('{"mean": 0.5}')
    (b / "sub" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0\1")
    (b / "notes.txt").write_text("not code")
    assert provenance.tree_sha256(a) == provenance.tree_sha256(b)
    before = provenance.tree_sha256(a)
    (a / "mod.py").write_text("x = 2\n")
    assert provenance.tree_sha256(a) != before
    (a / "mod.py").write_text("x = 1\n")
    assert provenance.tree_sha256(a) == before
    (a / "mod.py").rename(a / "other.py")
    assert provenance.tree_sha256(a) != before
    (a / "other.py").rename(a / "mod.py")
    (a / "sub" / "stats.json").write_text('{"mean": 0.25}')
    assert provenance.tree_sha256(a) != before


def test_keep_best_deletes_only_last_pt(ds, tmp_path):
    res = _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2), keep="best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "fold_result.json", "log.jsonl", "test_predictions.npz"]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["identity"] == res["identity"] and best["epoch"] == res["best_epoch"]
    with pytest.raises(ValueError, match=r"no last\.pt \(a finished fold whose last\.pt was removed by --keep best"):
        _run(ds, tmp_path, tcfg=SMALL.replace(epochs=3), resume=True)
    with pytest.raises(ValueError, match="keep: expected one of"):
        _run(ds, tmp_path / "x", keep="none")


def test_console_lines_say_which_test_r2_is_reported(ds, tmp_path):
    """Per epoch the test R2 of the in-training pass (batch 8, logged only); at the end the best checkpoint's
    test R2 at batch 1, the reported number (docs/original.md#reported-number)."""
    lines = []
    res = _run(ds, tmp_path, tcfg=SMALL.replace(epochs=2), log=lines.append)
    assert [bool(re.search(r"test_r2@batch8 -?\d\.\d{4} \(in-training eval, logged only\)", ln)) for ln in lines] == [True, True]
    assert T.fold_summary_line(res) == (
        f"fold 1: best epoch {res['best_epoch']} (lowest valid loss); test R2 of that checkpoint at batch 1, "
        f"as the original eval script (the reported number): {res['test_r2']:.4f}"
    )


def test_feature_set_must_match_the_model(ds, tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        T.train_fold(tiny("bilstm"), SMALL, ds, "composition", 0, tmp_path, feature_set="full", progress=False)


# ------------------------------------------------------------------------------------------ command line


def test_cv_train_and_evaluate_commands(data_file, tmp_path, capsys):
    small = ["--data", str(data_file), "--epochs", "1", "--hidden-size", "8", "--device", "cpu", "--no-progress"]
    out = tmp_path / "cv"
    assert main(["cv", "--preset", "bilstm", "--split", "performer", "--out", str(out), "--folds", "0,2", *small]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["preset"] == "bilstm" and res["split"] == "performer" and res["protocol"] == "modified"
    assert [f["fold"] for f in res["folds"]] == [0, 2]
    assert res["mean_test_r2"] == pytest.approx(np.mean([f["test_r2"] for f in res["folds"]]), abs=1e-12)
    assert set(res["baselines"]) == {"mean", "ridge"}  # shown beside every neural run
    assert res["config"]["model"]["input_size"] == 9 and res["feature_set"] == "performance_only"
    assert res["epochs"] == 1 and res["seed"] == 7 and res["data"]["file"] == "synthetic.npz"
    text = capsys.readouterr().out
    assert "bilstm" in text and "ridge" in text and "mean" in text

    fold_dir = tmp_path / "one"
    assert main(["train", "--preset", "han", "--split", "composition", "--fold", "3", "--out", str(fold_dir), *small]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(fold_dir / "best.pt"), "--split", "composition", "--fold", "3", "--data", str(data_file),
                 "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["r2"] == pytest.approx(trained["test_r2"], abs=1e-12) and evaluated["n"] > 0
    # a second `train` into the same directory without --resume is refused with a clear message
    assert main(["train", "--preset", "han", "--split", "composition", "--fold", "3", "--out", str(fold_dir), *small]) == 2
    assert "--resume" in capsys.readouterr().err


def test_iterate_batches_used_for_training_covers_the_split(ds):
    idx = ds.split_indices("composition", 1, "train")
    seen = sum((b.segment_ids for b in iterate_batches(ds, idx, 8, shuffle=True, seed=7, epoch=4)), [])
    assert sorted(seen) == sorted(str(s) for s in ds.segment_ids[idx])


def test_progress_bar_on_stderr_only_when_asked(ds, tmp_path, capsys):
    tcfg = SMALL.replace(epochs=1)
    _run(ds, tmp_path / "quiet", tcfg=tcfg)
    assert capsys.readouterr().err == ""
    T.train_fold(tiny(), tcfg, ds, "composition", 1, tmp_path / "bar", progress=True)
    captured = capsys.readouterr()
    n = int(np.ceil(len(ds.split_indices("composition", 1, "train")) / 8))
    assert re.search(rf"fold 1 epoch 1/1: +0%\|.*\| 0/{n} ", captured.err)  # a bar, shown from the start
    assert captured.out == ""


def test_parallel_folds_give_the_sequential_results(data_file, tmp_path):
    """`cv --parallel-folds 2` trains folds in worker processes; each fold is seeded as in a sequential run."""
    small = ["--data", str(data_file), "--epochs", "1", "--hidden-size", "8", "--device", "cpu", "--no-progress",
             "--preset", "bilstm", "--split", "performer", "--folds", "1,3"]
    assert main(["cv", "--out", str(tmp_path / "seq"), *small]) == 0
    assert main(["cv", "--out", str(tmp_path / "par"), "--parallel-folds", "2", *small]) == 0
    seq = json.loads((tmp_path / "seq" / "results.json").read_text())
    par = json.loads((tmp_path / "par" / "results.json").read_text())
    assert [f["fold"] for f in par["folds"]] == [1, 3]
    for a, b in zip(seq["folds"], par["folds"]):
        # worker processes may use another thread count: float32 reductions differ in the last bits only
        assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-5)
        assert b["test_r2"] == pytest.approx(a["test_r2"], abs=1e-4)


def test_model_checks_run_once_before_training_and_name_the_segment(tmp_path, monkeypatch):
    from percepiano import PercePianoModel
    from percepiano.data import PercePianoData

    arrays = synthetic_arrays(40, seed=0)
    model = PercePianoModel(get_preset("han", hidden_size=8))
    T.check_data_for_model(model, PercePianoData(arrays), np.arange(40), "full")
    assert model.validate_inputs is True  # it only checks

    # train_fold checks the fold's data once, then trains without the per-forward checks (no host syncs)
    seen = []
    train_step = T.train_step

    def recording_step(model, *args, **kwargs):
        seen.append(model.validate_inputs)
        return train_step(model, *args, **kwargs)

    monkeypatch.setattr(T, "train_step", recording_step)
    _run(PercePianoData(arrays), tmp_path / "ok", tcfg=SMALL.replace(epochs=1, max_train_batches=2))
    assert seen == [False, False]

    # two measures starting inside one beat (still contiguous, so the loader accepts it); the original maps
    # both to the same beat node and gives one of them an empty range of beats
    for seg in range(40):
        s, e = int(arrays["offsets"][seg]), int(arrays["offsets"][seg + 1])
        values, counts = np.unique(arrays["note_beat"][s:e], return_counts=True)
        if (counts >= 3).any():
            break
    first = int(np.nonzero(arrays["note_beat"][s:e] == values[np.nonzero(counts >= 3)[0][0]])[0][0])
    arrays["note_measure"][s + first + 1 : e] += 1
    arrays["note_measure"][s + first + 2 : e] += 1
    data = PercePianoData(arrays)
    model = PercePianoModel(get_preset("han", hidden_size=8))
    named = rf"segment {data.segment_ids[seg]} \(index {seg}\): .*measure starts inside beat node"
    with pytest.raises(ValueError, match=named):
        T.check_data_for_model(model, data, np.arange(40), "full")
    with pytest.raises(ValueError, match=named):
        _run(data, tmp_path / "bad", tcfg=SMALL.replace(epochs=1))
