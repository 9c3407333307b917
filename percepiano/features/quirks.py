"""Named fixes for quirks of the original pipeline (docs/features.md, "Quirks").

The default (no fix) reproduces the original exactly, which is what a model trained on the original npz needs.
A fix changes the features; a model would have to be retrained on features extracted with it.
"""
from __future__ import annotations

FIXES = {
    "insert_index": "Q-INSERT: insert a performance-only note before the row of the first matched score note "
                    "played after it (the original counts matched pairs only, so the row lands too early)",
    "pedal_release": "Q-PEDALRELEASE: a sustain/soft pedal value of 0 starts a zero segment (the original keeps "
                     "the last pressed value after a release)",
    "beam_state": "Q-BEAM: a chord note copies the beams of its chord's first note instead of the parser's sticky "
                  "state (every beam type seen so far)",
    "articulations": "Q-ARTIC: read every articulation of a note, not only the first",
    "longer_dynamics": "Q-LASTGROUP: beat/measure dynamics use (mean+max)/2 for every group, the last included, "
                       "and start the group index at the first matched note",
    "fp_order": "Q-FP: sort the absolute dynamics after splitting fp/ffp/sfp, so a plain search applies",
}


def check_fixes(fixes) -> frozenset:
    fixes = frozenset(fixes or ())
    unknown = sorted(fixes - set(FIXES))
    if unknown:
        raise ValueError(f"unknown quirk fix(es) {unknown}; available: {sorted(FIXES)}")
    return fixes
