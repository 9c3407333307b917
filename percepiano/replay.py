"""Seed-exact replay of the original's training run (``TrainConfig.rng = "original"``, ``--rng original``).

With the same seed, ours consumes the global RNGs exactly as the original's ``__main__.py: main`` +
``train_m2pf.py: train`` do, in the same order and with the same shapes, so that on a CPU the run is the
original's step for step (README.md, "Seed-exact replay"). The original seeds ``random``, ``numpy`` and
torch with ``th_seed`` and then draws only from torch's global CPU generator:

1. **init** (:func:`original_modules`, :func:`init_like_original`): building ``VirtuosoNetMultiLevel`` draws
   every parameter of its module tree in construction order, the branches a level does not use and the
   never-trained performance encoder included; ours takes the tensors it has from those draws;
2. **batch order**, per epoch (:func:`train_order`): the train ``DataLoader(shuffle=True)`` iterator draws a
   base seed (one int64 ``random_``, used only by worker processes), then ``RandomSampler`` draws the seed of its
   own generator and takes ``randperm(n)`` from it, over the train files in listing order
   (:func:`original_file_order`: segment ids sorted as Python strings);
3. **dropout**, per training step (:func:`draw_step_masks`): every mask the forward draws, in its order: the
   voice LSTM once per voice number (a zero row for each sample without that voice included), the note LSTM,
   the beat LSTM (the whole ``HanEncoder`` runs at every level, so at level ``note`` the voice and beat masks are
   drawn too), then the two ``nn.Dropout`` of ``out_fc``. ATen's packed LSTM drops out the packed data between
   layers; the masks are drawn on that packed shape and mapped to our padded rows (:class:`DropoutMasks`);
4. after the epoch, the valid and the test loader iterators draw one base seed each (:func:`loader_seed_draw`);
   evaluation runs in eval mode and draws nothing.

Nothing else in the original loop touches an RNG: ``random`` only under key augmentation (off in the
published runs: ``--no_augment``) and segment slicing (only above 5000 notes), ``numpy.random`` never.

The draws make the run the original's up to rounding. ``--rng original`` (asked for explicitly) also runs
the note, beat and measure BiLSTMs packed, as the original does (``PercePianoModel.exact_lstm``,
:func:`percepiano.lstm.run_lstm_packed` with the masks taken back to the packed rows), and the embedder reads
the packed rows in their order (``hierarchy.packed_rows``): on a CPU with one thread the bilstm's run is then
the original's to the last bit. The default ``auto`` keeps our faster engine (1.7-2.6x faster per step on a
CPU); its rounding differs from the original's by about one ulp per operation, which training amplifies
(README.md, "Seed-exact replay", measures both).

The replay holds on a CPU. On CUDA the original's LSTM dropout is cuDNN's, drawn from another stream, so a GPU
run of the original is not replayed (nor is it a deterministic function of the seed there).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import hierarchy as hier
from .config import ModelConfig
from .layers import ContextAttention

# The original's top-level pooling modules per level (``model_m2pf.py``: ``VirtuosoNetMultiLevel.__init__``),
# in the order it builds them when several levels are given; each entry: (name, kind, input width in encoder
# sizes), kind "linear" (a contractor) or "attention" (a ContextAttention of width 2 * encoder size).
ORIGINAL_LEVEL_HEADS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "measure": (("measure_attention", "attention", 2),),
    "beat": (("beat_attention", "attention", 2),),
    "voice": (("voice_contractor", "linear", 4), ("voice_attention", "attention", 2)),
    "note": (("note_contractor", "linear", 2), ("note_attention", "attention", 2)),
    "total_note_cat": (("performance_contractor", "linear", 8), ("performance_final_attention", "attention", 2)),
}


# --------------------------------------------------------------------------------------------- init


def original_modules(cfg: ModelConfig) -> list[tuple[str, nn.Module]]:
    """The original's module tree for ``cfg``, built in its construction order from torch's global generator.

    Each module draws its parameters when it is constructed (``nn.Linear``, ``nn.LSTM`` and ``ContextAttention``
    initialise themselves; ours is built exactly as ``module.ContextAttention``: its Linear, then the context
    vector U(-1, 1)), so building them in this order makes the original's draws:
    ``note_embedder`` (``MixEmbedder``: one Linear), ``score_encoder`` (``HanEncoder.__init__``: note LSTM, voice
    LSTM, beat attention, beat LSTM, measure attention, measure LSTM), ``performance_encoder``
    (``HanSkipEncoder``, the yml's ``performance_encoder_name``: a Linear and a ContextAttention, never trained),
    the level's pooling modules, then ``out_fc``'s two Linears. Everything is float32, as the original builds it.
    Returns (original module name, module) pairs.
    """
    n, v, b, m = cfg.note_size, cfg.voice_size, cfg.beat_size, cfg.measure_size
    enc, heads = cfg.encoder_size, cfg.num_heads

    def lstm(inp, hidden, layers):
        return nn.LSTM(inp, hidden, layers, batch_first=True, bidirectional=True)

    plan = [
        ("note_embedder.fc", lambda: nn.Linear(cfg.input_size, n)),
        ("score_encoder.lstm", lambda: lstm(n, n, cfg.note_layers)),
        ("score_encoder.voice_net", lambda: lstm(n, v, cfg.voice_layers)),
        ("score_encoder.beat_attention", lambda: ContextAttention(2 * (n + v), heads)),
        ("score_encoder.beat_rnn", lambda: lstm(2 * (n + v), b, cfg.beat_layers)),
        ("score_encoder.measure_attention", lambda: ContextAttention(2 * b, heads)),
        ("score_encoder.measure_rnn", lambda: lstm(2 * b, m, cfg.measure_layers)),
        ("performance_encoder.performance_contractor", lambda: nn.Linear(8 * enc, 2 * enc)),
        ("performance_encoder.performance_final_attention", lambda: ContextAttention(2 * enc, heads)),
    ]
    for name, kind, width in ORIGINAL_LEVEL_HEADS[cfg.level]:
        plan.append((name, (lambda w=width: nn.Linear(w * enc, 2 * enc)) if kind == "linear"
                     else (lambda: ContextAttention(2 * enc, heads))))
    plan += [("out_fc.1", lambda: nn.Linear(2 * enc, 2 * enc)), ("out_fc.4", lambda: nn.Linear(2 * enc, cfg.num_labels))]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        return [(name, build()) for name, build in plan]  # one after the other: the draw order
    finally:
        torch.set_default_dtype(old)


def draw_original_init(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The original's initial state dict for ``cfg`` (its parameter names), drawn from torch's global generator
    as building ``VirtuosoNetMultiLevel`` right after seeding draws it (:func:`original_modules`)."""
    return {f"{prefix}.{key}": value.detach() for prefix, module in original_modules(cfg)
            for key, value in module.state_dict().items()}


def init_like_original(model: nn.Module) -> dict[str, torch.Tensor]:
    """Give ``model`` (a PercePianoModel) the original's initial weights, drawn now from the global generator
    (the caller has just seeded it, as the original's ``main`` does). Returns the whole original state dict
    drawn (what :func:`weight_checksums` records)."""
    cfg = model.config
    if cfg.init != "pytorch_default":
        raise ValueError(f"rng 'original' replays the original's init draws; init {cfg.init!r} is a deviation from "
                         "them (use init 'pytorch_default' or rng 'own')")
    state = draw_original_init(cfg)
    model.load_original_state_dict(state)
    return state


def weight_checksums(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """sha256 of every tensor's bytes (C order, native little-endian), by name: equal checksums are
    bit-identical weights."""
    return {k: hashlib.sha256(np.ascontiguousarray(v.detach().cpu().numpy()).tobytes()).hexdigest()
            for k, v in state.items()}


# --------------------------------------------------------------------------------------------- batch order


def original_file_order(segment_ids: Sequence[str], indices) -> np.ndarray:
    """``indices`` in the order the original lists their files: segment ids sorted as Python strings. The
    original takes ``Path.rglob`` order, which is the file system's and not reproducible; sorted, its listing of
    ``<id>.pkl`` files is this order (no id has a character that sorts before ``.``)."""
    idx = np.asarray(indices, dtype=np.int64)
    return idx[sorted(range(len(idx)), key=lambda i: str(segment_ids[idx[i]]))]


def loader_seed_draw() -> None:
    """The base seed every ``DataLoader`` iterator draws from torch's global generator when it is created
    (``torch/utils/data/dataloader.py``: ``_BaseDataLoaderIter.__init__``); with ``num_workers=0`` it is unused,
    but drawn."""
    torch.empty((), dtype=torch.int64).random_()


def train_order(n: int) -> torch.Tensor:
    """The positions one epoch of the original's ``DataLoader(train_set, shuffle=True)`` visits: its iterator's
    base seed, then ``RandomSampler.__iter__`` (``torch/utils/data/sampler.py``): a seed drawn from the global
    generator for a fresh ``torch.Generator``, and ``randperm(n)`` from that one."""
    loader_seed_draw()
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator)


# --------------------------------------------------------------------------------------------- dropout


@dataclass(frozen=True)
class DropoutMasks:
    """The dropout of one training step, drawn in the original's order and laid out for our forward.

    Each LSTM entry holds one scaled mask (0 or 1/(1-p)) per gap between layers, multiplied into the layer's
    input as ``nn.LSTM`` does; the model applies them instead of drawing its own (``PercePianoModel.forward``).
    """

    note: tuple[torch.Tensor, ...] = ()  # (B, N, 2 * note_size) each, N = the longest segment
    voice: tuple[torch.Tensor, ...] = ()  # (K, L, 2 * voice_size) each: our voice sequences (lstm.run_voice_lstm)
    beat: tuple[torch.Tensor, ...] = ()  # (B, Tb, 2 * beat_size) each
    head: tuple[torch.Tensor, ...] = ()  # the two nn.Dropout of out_fc: (B, 2 * encoder_size) each
    drawn: dict[str, int] = field(default_factory=dict)  # elements drawn per module, unused branches included

    def to(self, device) -> "DropoutMasks":
        mv = lambda masks: tuple(m.to(device, non_blocking=True) for m in masks)  # noqa: E731
        return DropoutMasks(mv(self.note), mv(self.voice), mv(self.beat), mv(self.head), dict(self.drawn))


def dropout_noise(shape, p: float, dtype: torch.dtype) -> torch.Tensor:
    """What ATen's CPU dropout draws for an input of ``shape`` (``_dropout_impl``: ``empty_like(input)
    .bernoulli_(1 - p)``, then ``div_(1 - p)``); the input is then multiplied by it."""
    return torch.empty(tuple(shape), dtype=dtype).bernoulli_(1 - p).div_(1 - p)


def packed_to_padded(rows: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Rows laid out as ``pack_padded_sequence(..., enforce_sorted=False)`` packs sequences of ``lengths``
    (time-major, longest first) -> (B, width, C), zero past each length. The layout is
    :func:`percepiano.hierarchy.packed_rows`' (the one the exact LSTM engine reads back), whose length sort
    breaks ties as torch's packing does."""
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    batch, channels = len(lengths), rows.shape[1]
    padded = rows.new_zeros(batch * width, channels)  # (B * width, C)
    padded.index_copy_(0, hier.packed_rows(lengths, width), rows)
    return padded.view(batch, width, channels)  # (B, width, C)


def _lstm_masks(lengths: torch.Tensor, hidden: int, layers: int, p: float, dtype, width: int,
                drawn: dict, name: str) -> list[torch.Tensor]:
    """The inter-layer masks of one packed bidirectional LSTM call, in layer order, mapped to (B, width, 2H)."""
    total = int(lengths.sum())
    out = []
    for _ in range(layers - 1):
        out.append(packed_to_padded(dropout_noise((total, 2 * hidden), p, dtype), lengths, width))
        drawn[name] = drawn.get(name, 0) + total * 2 * hidden
    return out


def draw_step_masks(cfg: ModelConfig, lengths: torch.Tensor, note_locations: dict,
                    dtype: torch.dtype) -> DropoutMasks | None:
    """Draw one training step's dropout from torch's global generator as the original's forward does
    (``model_m2pf.py``: ``VirtuosoNetMultiLevel.forward``; ``encoder_score.py``: ``HanEncoder.forward``,
    ``run_voice_net``; ``model_utils.py``: ``run_hierarchy_lstm_with_pack``), for a CPU batch of ``lengths``
    and ``note_locations`` (beat, measure, voice; the shapes are known on the host).

    Order: for every voice number 1..max that some note of the batch has, the voice LSTM on one sequence per
    sample (its voice notes in order, or a single zero row); the note LSTM on the segments; the beat LSTM on
    the beat nodes; the measure LSTM draws nothing (the original builds it without dropout); then ``out_fc``'s
    two Dropouts on (B, 2 * encoder size). Inter-layer masks exist only with more than one layer. With dropout
    0 nothing is drawn (ATen's dropout returns its input) and the result is None.
    """
    p = float(cfg.dropout)
    if p == 0:
        return None
    drawn: dict[str, int] = {}
    lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()
    batch, notes = len(lengths), int(lengths.max())
    valid = hier.valid_mask(lengths, notes)
    loc = {k: torch.as_tensor(note_locations[k])[:, :notes].long().cpu() for k in ("voice", "beat")}

    # voices (run_voice_net: `for i in range(1, max_voice + 1)`, skipped when no note has voice i)
    voice = torch.where(valid, loc["voice"], torch.zeros_like(loc["voice"]))
    num_voices, num_sequences, longest = hier.voice_shapes(voice, valid)
    voice_masks = [torch.zeros(num_sequences, longest, 2 * cfg.voice_size, dtype=dtype)
                   for _ in range(cfg.voice_layers - 1)]
    if num_voices:
        counts = ((voice[:, :, None] == torch.arange(1, num_voices + 1)) & valid[:, :, None]).sum(dim=1)  # (B, V)
        sequence = (torch.cumsum((counts > 0).flatten(), 0) - 1).view(batch, num_voices)  # our sequence of (b, v)
        for v in range(num_voices):
            if int(counts[:, v].sum()) == 0:
                continue
            per_sample = counts[:, v].clamp(min=1)  # a sample without voice v feeds one zero row
            has = torch.nonzero(counts[:, v] > 0).flatten()
            for gap, mask in enumerate(_lstm_masks(per_sample, cfg.voice_size, cfg.voice_layers, p, dtype,
                                                   longest, drawn, "voice")):
                voice_masks[gap][sequence[has, v]] = mask[has]

    note_masks = _lstm_masks(lengths, cfg.note_size, cfg.note_layers, p, dtype, notes, drawn, "note")
    nodes = hier.node_segments(loc, valid, cfg.boundary_rule)
    beat_masks = _lstm_masks(nodes.beats_per_sample, cfg.beat_size, cfg.beat_layers, p, dtype, nodes.beats,
                             drawn, "beat")
    head = tuple(dropout_noise((batch, 2 * cfg.encoder_size), p, dtype) for _ in range(2))
    drawn["head"] = 2 * batch * 2 * cfg.encoder_size
    return DropoutMasks(tuple(note_masks), tuple(voice_masks), tuple(beat_masks), head, drawn)


# --------------------------------------------------------------------------------------------- the model


def build_model(cfg: ModelConfig, seed: int, device="cpu"):
    """Our model for ``cfg`` with the original's initial weights for ``seed``: seed as the original's ``main``
    does (``random``, ``numpy``, torch), then draw its init (:func:`init_like_original`). Our own module
    construction runs before the seeding, so its draws do not count."""
    from .checkpoints import set_seed
    from .model import PercePianoModel

    model = PercePianoModel(cfg)
    set_seed(seed)
    init_like_original(model)
    return model.to(device)
