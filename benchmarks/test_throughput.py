"""Forward, forward+backward and a full optimizer step at batch 8: ours, and the original when available."""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from workloads import benchmark_batch  # noqa: E402
from conftest import devices  # noqa: E402

from percepiano import PRESETS, PercePianoModel  # noqa: E402
from percepiano.config import PRESET_FEATURES  # noqa: E402
from percepiano.training import (  # noqa: E402
    TrainConfig, build_optimizer, build_scheduler, loss_fn, to_device, train_step,
)

MODES = ["forward", "forward_backward", "train_step"]
ROUNDS = int(os.environ.get("PERCEPIANO_BENCH_ROUNDS", "3"))


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def _ours(preset: str, cpu_batch, device: str):
    model = PercePianoModel(PRESETS[preset]).to(device)
    model.validate_inputs = False  # the loader validated the data; no host syncs in the step
    # as in training: the batch's sizes are worked out on the host (a loader's job, like the original's
    # collate), so nothing in the step reads back from the device
    batch, shapes = to_device(model, cpu_batch, torch.device(device))
    tcfg = TrainConfig()
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg)

    def forward():
        with torch.no_grad():
            return model.eval()(batch.x, batch.lengths, batch.note_locations, shapes=shapes)

    def forward_backward():
        model.train()
        loss_fn(model(batch.x, batch.lengths, batch.note_locations, shapes=shapes), batch.labels).backward()

    def step():
        model.train()
        return train_step(model, batch, optimizer, scheduler, tcfg, shapes)

    return {"forward": forward, "forward_backward": forward_backward, "train_step": step}


def _original(preset: str, batch, device: str):
    from reference_parity import upstream
    from reference_parity.inputs import original_samples

    up = upstream.load()
    cfg = PRESETS[preset]
    params = up.net_params(cfg.input_size, cfg.num_labels)
    model = up.build_model(params, cfg.level).to(device)
    arrays = {"x": batch.x.numpy(), "lengths": batch.lengths.numpy(), "labels": batch.labels.numpy(),
              **{k: v.numpy() for k, v in batch.note_locations.items()}}
    collated = up.collate(original_samples(arrays, torch.float32))
    x = collated[0].to(device)
    locations = {k: v.to(device) for k, v in collated[4].items()}
    labels = batch.labels.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-5, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3000, gamma=0.98)

    def logits():
        return model(x, labels, None, locations)[-1]

    def forward():
        with torch.no_grad():
            model.eval()
            return logits()

    def forward_backward():
        model.train()
        torch.nn.functional.mse_loss(torch.sigmoid(logits()), labels).backward()

    def step():  # train_m2pf.train_step: loss -> zero_grad -> backward -> clip 2.0 -> step -> scheduler
        model.train()
        loss = torch.nn.functional.mse_loss(torch.sigmoid(logits()), labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        scheduler.step()
        return loss

    return {"forward": forward, "forward_backward": forward_backward, "train_step": step}


IMPLS = ["ours"] + (["original"] if os.environ.get("PERCEPIANO_UPSTREAM") else [])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("preset", ["han", "bilstm"])
def test_throughput(benchmark, results, preset, mode, device, impl):
    batch, source = benchmark_batch(PRESET_FEATURES[preset])  # on the CPU
    torch.manual_seed(0)
    fn = (_ours if impl == "ours" else _original)(preset, batch, device)[mode]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

        def run():
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    benchmark.group = f"{preset}-{mode}-{device}"
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    notes = int(batch.lengths.sum())
    record = {"preset": preset, "mode": mode, "device": device, "impl": impl, "batches": source,
              "notes_per_batch": notes, "seconds_median": benchmark.stats.stats.median,
              "notes_per_s": notes / benchmark.stats.stats.median, "peak_mb": _peak_mb(device)}
    benchmark.extra_info.update(record)
    results.append(record)
