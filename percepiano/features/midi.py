"""Performance-MIDI reading with pedal information, standard library only.

A small Standard MIDI File reader that reproduces what the original pipeline got from pretty_midi 0.2.x
(``PrettyMIDI`` + ``midi_utils.to_midi_zero`` + ``add_pedal_inf_to_notes``):

* tempo map from track 0 only, tick times as ``segment_start + tick_scale * ticks`` (float64);
* note pairing: a note-off (or note-on with velocity 0) closes *every* open note of that channel/pitch that did
  not start on the same tick; instruments are (program, channel, track) in order of first note; control changes
  on a channel/track that never carries a note are lost;
* all instruments merged in that order, pitches outside 21-108 and notes with end <= start dropped, notes
  stably sorted by onset; control changes concatenated instrument by instrument, *not* re-sorted (Q-PEDALORDER);
* pedal segments (``read_sustain_pedal``): a dummy (t=0, value 0) segment, then one segment per CC value > 0; a
  value of 0 only closes the open segment (Q-PEDALRELEASE), so after a release the last non-zero value still
  "holds" until the next press.
"""
from __future__ import annotations

import math
import struct
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


def _varlen(data: bytes, i: int) -> tuple:
    value = 0
    for _ in range(4):
        if i >= len(data):
            raise MidiFileError("truncated variable-length number")
        b = data[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, i
    raise MidiFileError("variable-length number too long")


_DATA_LEN = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}


def _read_tracks(data: bytes) -> tuple:
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiFileError("not a Standard MIDI File (no MThd header)")
    hlen, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if fmt not in (0, 1, 2):
        raise MidiFileError(f"unknown MIDI file format {fmt}")
    if division & 0x8000:
        raise MidiFileError("SMPTE time division is not supported")
    if division == 0:
        raise MidiFileError("MIDI file with 0 ticks per beat")
    i = 8 + hlen
    tracks = []
    while len(tracks) < ntracks and i + 8 <= len(data):
        tag, length = data[i:i + 4], struct.unpack(">I", data[i + 4:i + 8])[0]
        i += 8
        chunk = data[i:i + length]
        i += length
        if tag != b"MTrk":
            continue
        tracks.append(_parse_track(chunk))
    if not tracks:
        raise MidiFileError("MIDI file without tracks")
    return division, tracks


def _parse_track(chunk: bytes) -> list:
    """Events as (abs_tick, kind, channel, a, b); kind in note_on/note_off/cc/program/tempo."""
    events = []
    i = 0
    tick = 0
    status = None
    n = len(chunk)
    while i < n:
        delta, i = _varlen(chunk, i)
        tick += delta
        if i >= n:
            break
        byte = chunk[i]
        if byte < 0x80:
            if status is None:
                raise MidiFileError("running status without a previous status byte")
            cur = status
        else:
            cur = byte
            i += 1
            if cur != 0xFF:
                status = cur
        if cur == 0xFF:
            if i >= n:
                raise MidiFileError("truncated meta event")
            mtype = chunk[i]
            length, i = _varlen(chunk, i + 1)
            payload = chunk[i:i + length]
            i += length
            if mtype == 0x51 and len(payload) == 3:
                events.append((tick, "tempo", 0, (payload[0] << 16) | (payload[1] << 8) | payload[2], 0))
            elif mtype == 0x2F:
                events.append((tick, "end", 0, 0, 0))
            else:
                events.append((tick, "meta", 0, 0, 0))
        elif cur in (0xF0, 0xF7):
            length, i = _varlen(chunk, i)
            i += length
            events.append((tick, "sysex", 0, 0, 0))
        elif cur >= 0xF0:
            raise MidiFileError(f"unexpected status byte 0x{cur:02X} in a track")
        else:
            kind, ch = cur & 0xF0, cur & 0x0F
            nbytes = _DATA_LEN[kind]
            vals = chunk[i:i + nbytes]
            if len(vals) < nbytes:
                raise MidiFileError("truncated channel message")
            if any(v > 127 for v in vals):
                raise MidiFileError("data byte out of range")
            i += nbytes
            a = vals[0]
            b = vals[1] if nbytes == 2 else 0
            if kind == 0x90:
                events.append((tick, "note_on", ch, a, b))
            elif kind == 0x80:
                events.append((tick, "note_off", ch, a, b))
            elif kind == 0xB0:
                events.append((tick, "cc", ch, a, b))
            elif kind == 0xC0:
                events.append((tick, "program", ch, a, 0))
            else:
                events.append((tick, "other", ch, a, b))
    return events


def _tick_scales(tracks: list, resolution: int) -> list:
    scales = [(0, 60.0 / (120.0 * resolution))]
    for tick, kind, _, tempo, _ in tracks[0]:
        if kind != "tempo" or tempo == 0:
            continue
        if tick == 0:
            bpm = 6e7 / tempo
            scales = [(0, 60.0 / (bpm * resolution))]
        else:
            scale = 60.0 / ((6e7 / tempo) * resolution)
            if scale != scales[-1][1]:
                scales.append((tick, scale))
    return scales


class _Clock:
    """tick -> seconds exactly as pretty_midi's tick_to_time table computes it."""

    def __init__(self, scales: list):
        self.ticks = [t for t, _ in scales]
        self.scales = [s for _, s in scales]
        self.starts = [0.0]
        for k in range(1, len(scales)):
            prev = self.starts[-1] + self.scales[k - 1] * (self.ticks[k] - self.ticks[k - 1])
            self.starts.append(prev)

    def __call__(self, tick: int) -> float:
        k = binary_index(self.ticks, tick)
        return self.starts[k] + self.scales[k] * (tick - self.ticks[k])


def read_midi(path: str | Path, pitch_range: tuple = (21, 108), pedal_release_fix: bool = False) -> Performance:
    """Read a performance (or score) MIDI file into onset-sorted notes with pedal values attached.

    ``pedal_release_fix`` (quirk fix ``pedal_release``): a pedal value of 0 starts a zero segment.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such MIDI file: {path}")
    data = path.read_bytes()
    resolution, tracks = _read_tracks(data)
    clock = _Clock(_tick_scales(tracks, resolution))
    instruments: dict = {}   # (program, channel, track) -> {"notes": [], "cc": []}
    stragglers: dict = {}    # (channel, track) -> cc list of a channel with no note yet
    for t_idx, events in enumerate(tracks):
        program = [0] * 16
        open_notes: dict = {}
        for tick, kind, ch, a, b in events:
            if kind == "program":
                program[ch] = a
            elif kind == "note_on" and b > 0:
                open_notes.setdefault((ch, a), []).append((tick, b))
            elif kind == "note_off" or (kind == "note_on" and b == 0):
                key = (ch, a)
                if key not in open_notes:
                    continue
                pending = open_notes[key]
                close = [(s, v) for s, v in pending if s != tick]
                keep = [(s, v) for s, v in pending if s == tick]
                if close:
                    inst = _instrument(instruments, stragglers, program[ch], ch, t_idx)
                    for s, v in close:
                        inst["notes"].append(PerfNote(a, v, clock(s), clock(tick)))
                if close and keep:
                    open_notes[key] = keep
                else:
                    del open_notes[key]
            elif kind == "cc":
                ident = (program[ch], ch, t_idx)
                if ident in instruments:
                    target = instruments[ident]["cc"]
                else:
                    target = stragglers.setdefault((ch, t_idx), [])
                target.append(ControlChange(a, b, clock(tick)))
    notes, ccs = [], []
    lo, hi = pitch_range
    for inst in instruments.values():
        notes += [n for n in inst["notes"] if lo <= n.pitch <= hi]
        ccs += inst["cc"]
    notes = [n for n in notes if n.end > n.start]
    end_time = max([n.end for n in notes] + [c.time for c in ccs] + [0.0])
    notes.sort(key=lambda n: n.start)
    perf = Performance(notes=notes, control_changes=ccs, end_time=end_time, path=str(path))
    add_pedal_info(perf, pedal_release_fix)
    return perf


def _instrument(instruments: dict, stragglers: dict, program: int, ch: int, track: int) -> dict:
    ident = (program, ch, track)
    if ident not in instruments:
        inst = {"notes": [], "cc": []}
        if (ch, track) in stragglers:
            inst["cc"] = stragglers[(ch, track)]
        instruments[ident] = inst
    return instruments[ident]


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
