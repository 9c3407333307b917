"""Model configuration: one frozen dataclass, presets in a dict, deviations listed by name.

Defaults are the published HAN (docs/original.md#hyperparameters, #model): the yml
``ymls/shared/label19/han_bigger256_concat.yml`` with the script flags of
``scripts/*/0_run_*_multilevel_measure.sh``. Every field that can make the model differ from the original is a
*named deviation* whose default is the original behaviour.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from .constants import BOUNDARY_RULES, INITS, LEVELS, PRESET_FEATURES  # noqa: F401 (PRESET_FEATURES re-exported)

# Original value of every field that is a deviation switch (field name -> original value).
ORIGINAL_BEHAVIOUR = {
    "boundary_rule": "diff_eq_1",
    "attention_temperature": 1.0,
    "init": "pytorch_default",
}

# Why each alternative is not the original (shown by `percepiano parity` and the reports).
DEVIATION_NOTES = {
    "boundary_rule": "original utils.find_boundaries_batch starts a node only where indices step by exactly 1",
    "attention_temperature": "original ContextAttention / get_softmax_by_boundary apply no temperature",
    "init": "original uses PyTorch default inits only (context vectors U(-1, 1))",
}


class DictRoundTrip:
    """Plain-dict round trip for the frozen config dataclasses (results files, checkpoints)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class ModelConfig(DictRoundTrip):
    input_size: int = 101  # per-note features: 101 = score + performance (HAN, +SA); 9 = performance-only baseline
    hidden_size: int | None = None  # if set, overrides note/voice/beat/measure sizes at once
    note_size: int = 256  # note LSTM hidden size per direction; also the embedder output (yml note.size)
    voice_size: int = 256  # voice LSTM hidden size per direction (yml voice.size)
    beat_size: int = 256  # beat LSTM hidden size per direction (yml beat.size)
    measure_size: int = 256  # measure LSTM hidden size per direction (yml measure.size)
    note_layers: int = 2  # yml note.layer
    voice_layers: int = 2  # yml voice.layer
    beat_layers: int = 2  # yml beat.layer
    measure_layers: int = 1  # yml measure.layer; the original measure LSTM has no inter-layer dropout
    num_heads: int = 8  # yml num_attention_head, used by every ContextAttention
    dropout: float = 0.2  # yml drop_out: between LSTM layers (not measure) and the two Dropouts of out_fc
    num_labels: int = 19  # script flag --num_labels
    level: str = "measure"  # script flag --multi_level: what the head pools (note, voice, beat, measure, total_note_cat)
    # --- named deviations (defaults = original) ---
    boundary_rule: str = "diff_eq_1"  # "diff_eq_1" (original) or "diff_gt_0" (any increase starts a node)
    attention_temperature: float = 1.0  # similarity is divided by this before every softmax; 1.0 = original (none)
    init: str = "pytorch_default"  # "pytorch_default" (original), "orthogonal_lstm", "xavier_attention"

    def __post_init__(self):
        if self.hidden_size is not None:
            for name in ("note_size", "voice_size", "beat_size", "measure_size"):
                object.__setattr__(self, name, int(self.hidden_size))
        if self.level not in LEVELS:
            raise ValueError(f"ModelConfig.level: expected one of {LEVELS}, got {self.level!r}")
        if self.boundary_rule not in BOUNDARY_RULES:
            raise ValueError(f"ModelConfig.boundary_rule: expected one of {BOUNDARY_RULES}, got {self.boundary_rule!r}")
        if self.init not in INITS:
            raise ValueError(f"ModelConfig.init: expected one of {INITS}, got {self.init!r}")
        if not self.attention_temperature > 0:
            raise ValueError(f"ModelConfig.attention_temperature: expected > 0, got {self.attention_temperature!r}")
        for name in ("input_size", "note_size", "voice_size", "beat_size", "measure_size", "num_heads", "num_labels",
                     "note_layers", "voice_layers", "beat_layers", "measure_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"ModelConfig.{name}: expected a positive integer, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout: expected 0 <= dropout < 1, got {self.dropout!r}")
        # The original sizes its context attentions from these widths; each must split into equal heads.
        for what, width in (
            ("beat attention (2*(note_size+voice_size))", 2 * (self.note_size + self.voice_size)),
            ("measure attention (2*beat_size)", 2 * self.beat_size),
            ("pooling attention (2*measure_size)", 2 * self.measure_size),
        ):
            if width % self.num_heads:
                raise ValueError(f"ModelConfig: {what} = {width} is not divisible by num_heads = {self.num_heads}"
                                 + (f" (hidden_size {self.hidden_size}, --hidden-size: choose a multiple of "
                                    f"{self.num_heads // math.gcd(self.num_heads, 2)})" if self.hidden_size is not None else ""))

    @property
    def encoder_size(self) -> int:
        """yml ``encoder.size``: the head and pooling attentions are 2 * this wide (the measure LSTM output)."""
        return self.measure_size

    def deviations(self) -> dict[str, object]:
        """Fields whose value differs from the original code's behaviour: {field: value}."""
        return {k: getattr(self, k) for k, v in ORIGINAL_BEHAVIOUR.items() if getattr(self, k) != v}

    def is_original(self) -> bool:
        return not self.deviations()

    def replace(self, **changes) -> "ModelConfig":
        if "hidden_size" not in changes and self.hidden_size is not None:
            changes["hidden_size"] = None  # keep the explicit per-level sizes already resolved
        return dataclasses.replace(self, **changes)


def describe_deviations(cfg: ModelConfig) -> list[str]:
    """Human-readable lines, one per deviation from the original, empty for an original config."""
    return [
        f"{k} = {v!r} (original: {ORIGINAL_BEHAVIOUR[k]!r}; {DEVIATION_NOTES[k]})" for k, v in cfg.deviations().items()
    ]


# Published models (docs/original.md#published-runs): which run of the original each preset reproduces.
PRESETS: dict[str, ModelConfig] = {
    "han": ModelConfig(input_size=101, level="measure"),  # "Bi-LSTM + SA + HAN" (Ours): measure level, 101 dims
    "bilstm": ModelConfig(input_size=9, level="note"),  # Bi-LSTM baseline: note level on the 9 performance-only dims
    "bilstm_sa": ModelConfig(input_size=101, level="note"),  # Bi-LSTM + SA: note level on the full 101 dims
}

# Which feature set (see percepiano.data) each preset reads.


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
