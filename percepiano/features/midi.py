"""Performance-MIDI reading with pedal information.

The file is read with pretty_midi, as the original does (``midi_utils.to_midi_zero``), so its semantics hold by
construction: tempo map from track 0 only; a note-off (or note-on with velocity 0) closes *every* open note of
that channel/pitch that did not start on the same tick; instruments are (program, channel, track) in order of
first note, and control changes on a channel/track that never carries a note are lost. Then, as
``to_midi_zero`` + ``add_pedal_inf_to_notes`` do:

* all instruments merged in that order, pitches outside 21-108 and notes with end <= start dropped, notes
  stably sorted by onset; control changes concatenated instrument by instrument, *not* re-sorted (Q-PEDALORDER);
* pedal segments (``read_sustain_pedal``): a dummy (t=0, value 0) segment, then one segment per CC value > 0; a
  value of 0 only closes the open segment (Q-PEDALRELEASE), so after a release the last non-zero value still
  "holds" until the next press.

``docs/features.md`` ("Why these readers") records the check that this gives the same notes and pedal values as
the hand-written reader it replaced, on every MIDI file of the dataset.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ._search import binary_index


class MidiFileError(ValueError):
    """The file is not a readable Standard MIDI File."""


@dataclass(eq=False)
class PerfNote:
    pitch: int
    velocity: int
    start: float
    end: float
    pedal_at_start: int = 0
    pedal_at_end: int = 0
    soft_pedal: int = 0
    pedal_refresh: int = 0
    pedal_refresh_time: float = 0.0
    pedal_cut: int = 0
    pedal_cut_time: float = 0.0


@dataclass(eq=False)
class ControlChange:
    number: int
    value: int
    time: float


@dataclass
class Performance:
    notes: list                       # PerfNote, sorted by onset (stable)
    control_changes: list = field(default_factory=list)
    end_time: float = 0.0
    path: str = ""


def _load(path: Path):
    """The file as a ``pretty_midi.PrettyMIDI``; any unreadable file raises MidiFileError."""
    try:
        import mido
        import pretty_midi
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading MIDI needs pretty_midi: pip install 'percepiano[features]'") from exc
    try:
        midi_file = mido.MidiFile(filename=path)
    except (OSError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise MidiFileError(f"{path}: not a readable Standard MIDI File ({exc})") from exc
    # mido reads the division as a signed number: SMPTE timing is negative, and pretty_midi only knows ticks per beat
    if midi_file.ticks_per_beat < 0:
        raise MidiFileError(f"{path}: SMPTE time division is not supported")
    if midi_file.ticks_per_beat == 0:
        raise MidiFileError(f"{path}: MIDI file with 0 ticks per beat")
    if not midi_file.tracks or not any(midi_file.tracks):
        raise MidiFileError(f"{path}: MIDI file without events")
    if any(event.type == "set_tempo" for track in midi_file.tracks[1:] for event in track):
        warnings.warn(f"{path}: tempo changes outside track 0 are ignored (as pretty_midi and the original do)",
                      RuntimeWarning, stacklevel=3)
    try:
        with warnings.catch_warnings():
            # its warning also covers key and time signatures outside track 0, which no feature reads
            warnings.filterwarnings("ignore", message="Tempo, Key or Time signature", category=RuntimeWarning)
            return pretty_midi.PrettyMIDI(mido_object=midi_file)
    except (ValueError, KeyError, IndexError) as exc:  # e.g. pretty_midi's MAX_TICK guard against corrupt files
        raise MidiFileError(f"{path}: {exc}") from exc


def read_midi(path: str | Path, pitch_range: tuple = (21, 108), pedal_release_fix: bool = False) -> Performance:
    """Read a performance (or score) MIDI file into onset-sorted notes with pedal values attached.

    ``pedal_release_fix`` (quirk fix ``pedal_release``): a pedal value of 0 starts a zero segment.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such MIDI file: {path}")
    midi = _load(path)
    lo, hi = pitch_range
    notes, ccs = [], []
    for inst in midi.instruments:
        notes += [PerfNote(int(n.pitch), int(n.velocity), float(n.start), float(n.end))
                  for n in inst.notes if lo <= n.pitch <= hi]
        ccs += [ControlChange(int(c.number), int(c.value), float(c.time)) for c in inst.control_changes]
    notes = [n for n in notes if n.end > n.start]  # Instrument.remove_invalid_notes
    end_time = max([n.end for n in notes] + [c.time for c in ccs] + [0.0])
    notes.sort(key=lambda n: n.start)
    perf = Performance(notes=notes, control_changes=ccs, end_time=end_time, path=str(path))
    add_pedal_info(perf, pedal_release_fix)
    return perf


@dataclass(eq=False)
class PedalSegment:
    start: float
    value: int


def pedal_segments(perf: Performance, numbers: tuple = (64, 127), release_fix: bool = False) -> list:
    """Pedal segments in the order the original builds them (a release creates none, Q-PEDALRELEASE)."""
    segments = [PedalSegment(0.0, 0)]
    current = None
    for cc in perf.control_changes:
        if cc.number not in numbers:
            continue
        if cc.value > 0 or release_fix:
            if current is not None:
                segments.append(current)
            current = PedalSegment(cc.time, cc.value)
        elif current is not None:
            segments.append(current)
            current = None
    if current is not None:
        segments.append(current)
    return segments


def add_pedal_info(perf: Performance, release_fix: bool = False) -> None:
    """Per note: pedal at onset/offset, soft pedal, refresh and cut values and times (add_pedal_inf_to_notes)."""
    sustain = pedal_segments(perf, release_fix=release_fix)
    sustain_pos = [p.start for p in sustain]
    soft = pedal_segments(perf, (67,), release_fix=release_fix)
    soft_pos = [p.start for p in soft]
    notes = perf.notes
    for idx, note in enumerate(notes):
        i_start = binary_index(sustain_pos, note.start)
        i_end = binary_index(sustain_pos, note.end)
        note.pedal_at_start = sustain[i_start].value
        note.pedal_at_end = sustain[i_end].value
        note.soft_pedal = soft[binary_index(soft_pos, note.start)].value
        note.pedal_refresh, note.pedal_refresh_time = note.pedal_at_start, 0.0
        if i_start != i_end:
            low = min(sustain[i_start:i_end], key=lambda p: p.value)
            if low.value < note.pedal_at_start:
                note.pedal_refresh, note.pedal_refresh_time = low.value, low.start - note.start
        if idx == 0:
            note.pedal_cut, note.pedal_cut_time = 0, 0
            continue
        next_onset = math.inf
        for later in notes[idx + 1:]:
            if later.start > note.end:
                next_onset = later.start
                break
        i_cut = binary_index(sustain_pos, next_onset)
        note.pedal_cut, note.pedal_cut_time = note.pedal_at_end, 0.0
        if i_end != i_cut:
            low = min(sustain[i_end:i_cut], key=lambda p: p.value)
            if low.value < note.pedal_at_end:
                note.pedal_cut, note.pedal_cut_time = low.value, low.start - note.end


def pedal_sigmoid(value: float, k: float = 8) -> int:
    return int(127 / (1 + math.exp(-(value - 64) / k)))
