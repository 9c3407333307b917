"""Pure-Python feature extraction: MusicXML score + performance MIDI -> the 101-dim PercePiano model input.

    from percepiano.features import extract
    res = extract("score.musicxml", "performance.mid")   # aligner: the `features` extra (parangonar)
    x, lengths, note_locations = res.model_inputs

See docs/features.md (modules, the reproduced quirks and their named fixes, measured parity).
"""
from .midi import MidiFileError, read_midi
from .musicxml import UnsupportedScoreError, read_musicxml
from .performance import AlignmentError
from .pipeline import FeatureResult, extract, extract_with_corresp, load_score
from .quirks import FIXES

__all__ = ["extract", "extract_with_corresp", "load_score", "FeatureResult", "read_midi", "read_musicxml",
           "MidiFileError", "UnsupportedScoreError", "AlignmentError", "FIXES"]
