"""Weights under the original parameter names (``VirtuosoNetMultiLevel.state_dict()``) <-> ours.

The rename table is data: (our module prefix, original module prefix). Everything below a prefix keeps its
name (``weight_ih_l0``, ``context_vector``, ...). Keys are checked strictly: anything missing, unexpected or
of the wrong shape is an error that lists every offending key. The original builds modules that never
influence the output of a level (``performance_encoder.*``, the encoder branches a level does not use, the
pooling modules of other levels): those are accepted and ignored when loading.
"""
from __future__ import annotations

import torch

# Modules every level has, then the encoder branches in the order the original builds them.
RENAME_ENCODER: list[tuple[str, str]] = [
    ("embed", "note_embedder.fc"),
    ("note_lstm", "score_encoder.lstm"),
    ("voice_lstm", "score_encoder.voice_net"),
    ("beat_attention", "score_encoder.beat_attention"),
    ("beat_lstm", "score_encoder.beat_rnn"),
    ("measure_attention", "score_encoder.measure_attention"),
    ("measure_lstm", "score_encoder.measure_rnn"),
    ("head.1", "out_fc.1"),
    ("head.4", "out_fc.4"),
]

# Per level: the original names of the level's pooling modules (model_m2pf.VirtuosoNetMultiLevel).
RENAME_POOLING: dict[str, list[tuple[str, str]]] = {
    "note": [("pool_contractor", "note_contractor"), ("pool_attention", "note_attention")],
    "voice": [("pool_contractor", "voice_contractor"), ("pool_attention", "voice_attention")],
    "beat": [("pool_attention", "beat_attention")],
    "measure": [("pool_attention", "measure_attention")],
    "total_note_cat": [("pool_contractor", "performance_contractor"), ("pool_attention", "performance_final_attention")],
}

# Original top-level prefixes that never influence a level's output and are therefore ignored on load.
IGNORED_ORIGINAL_PREFIXES = ("performance_encoder.",)


def rename_table(level: str) -> list[tuple[str, str]]:
    return RENAME_ENCODER + RENAME_POOLING[level]


def _rename(key: str, table: list[tuple[str, str]], src: int) -> str | None:
    for pair in table:
        prefix = pair[src] + "."
        if key.startswith(prefix):
            return pair[1 - src] + "." + key[len(prefix) :]
    return None


def to_original(state_dict: dict[str, torch.Tensor], level: str) -> dict[str, torch.Tensor]:
    """Our state dict -> original names."""
    table = rename_table(level)
    out = {}
    for key, value in state_dict.items():
        name = _rename(key, table, src=0)
        if name is None:
            raise KeyError(f"no original name for parameter {key!r} (level {level!r})")
        out[name] = value
    return out


def _ignorable(key: str, level: str) -> bool:
    """Original keys that belong to modules a level never uses."""
    if key.startswith(IGNORED_ORIGINAL_PREFIXES):
        return True
    other_levels = [prefix for lvl, pairs in RENAME_POOLING.items() if lvl != level for _, prefix in pairs]
    own = [prefix for _, prefix in RENAME_POOLING[level]]
    return any(key.startswith(p + ".") for p in other_levels if p not in own)


def from_original(state_dict: dict[str, torch.Tensor], model, strict: bool = True) -> dict[str, torch.Tensor]:
    """Original state dict -> our names, checked against ``model`` (a PercePianoModel)."""
    level = model.config.level
    table = rename_table(level)
    expected = model.state_dict()
    converted, unexpected, mismatched = {}, [], []
    for key, value in state_dict.items():
        name = _rename(key, table, src=1)
        if name is None or name not in expected:
            if not (_ignorable(key, level) or _is_unused_branch(key, expected)):
                unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(expected[name].shape):
            mismatched.append(f"{key}: original {tuple(value.shape)} vs ours {tuple(expected[name].shape)}")
            continue
        converted[name] = value
    missing = [_rename(k, table, src=0) or k for k in expected if k not in converted]
    if strict and (missing or unexpected or mismatched):
        lines = [f"original state dict does not fit PercePianoModel(level={level!r}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {mismatched}")
        raise ValueError("\n".join(lines))
    return converted


def _is_unused_branch(key: str, expected: dict) -> bool:
    """An encoder branch the original always builds but this level does not use (e.g. the voice LSTM at level note)."""
    for ours, original in RENAME_ENCODER:
        if key.startswith(original + ".") and not any(k.startswith(ours + ".") for k in expected):
            return True
    return False


def load_original_checkpoint(path) -> dict[str, torch.Tensor]:
    """State dict from an original checkpoint file (a dict holding ``state_dict``), without executing pickle code.

    ``torch.load(weights_only=True)`` refuses arbitrary objects; the original saves only tensors and plain
    values next to the state dict, which it accepts.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with what to do
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}). It may hold pickled Python "
            f"objects; re-save its 'state_dict' alone from a trusted environment: "
            f"torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pt')"
        ) from exc
    if isinstance(payload, dict) and "state_dict" in payload:
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{path}: expected a state dict (or a dict holding 'state_dict') of tensors")
    return payload
