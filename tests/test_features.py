"""Feature extraction: unit behaviour on hand-written MusicXML/MIDI, and the CLI's error handling.

Real-data parity lives in tests/test_features_parity.py.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from percepiano.cli import main
from percepiano.features import directions as D
from percepiano.features._search import binary_index
from percepiano.features.assemble import feature_names, insert_positions, norm_stats
from percepiano.features.midi import MidiFileError, pedal_segments, read_midi
from percepiano.features.musicxml import UnsupportedScoreError, beat_positions, read_musicxml
from percepiano.features.performance import clean_pairs, longer_level_dynamics
from percepiano.features.score_features import (beat_importance, extract_score_features, make_index_continuous,
                                                time_signature_vector)

EXACT = 1e-12


# ------------------------------------------------------------------------------------------- small builders
def xml(measures: str, divisions: int = 2, time: str = "<time><beats>3</beats><beat-type>4</beat-type></time>",
        parts: int = 1) -> str:
    part = f"""<part id="P1"><measure number="1"><attributes><divisions>{divisions}</divisions>{time}</attributes>
{measures}</part>"""
    extra = "".join(f'<part id="P{i + 2}"><measure number="1"/></part>' for i in range(parts - 1))
    return f'<?xml version="1.0"?><score-partwise><part-list/>{part}{extra}</score-partwise>'


def note(step="C", octave=4, dur=2, voice=1, staff=1, extra="", notations="", chord=False, grace=False, beam=""):
    parts = ["<grace/>" if grace else "", "<chord/>" if chord else "",
             f"<pitch><step>{step}</step><octave>{octave}</octave></pitch>",
             "" if grace else f"<duration>{dur}</duration>", f"<voice>{voice}</voice>", extra,
             f"<staff>{staff}</staff>", beam, f"<notations>{notations}</notations>" if notations else ""]
    return "<note>" + "".join(parts) + "</note>"


def rest(dur=2, voice=1):
    return f"<note><rest/><duration>{dur}</duration><voice>{voice}</voice></note>"


@pytest.fixture
def write(tmp_path):
    def _write(text: str, name: str = "s.musicxml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p
    return _write


def smf(events_per_track: list, division: int = 480) -> bytes:
    """A format-1 MIDI file from [(delta, bytes), ...] per track."""
    def varlen(v):
        out = [v & 0x7F]
        v >>= 7
        while v:
            out.insert(0, (v & 0x7F) | 0x80)
            v >>= 7
        return bytes(out)
    data = struct.pack(">4sIHHH", b"MThd", 6, 1, len(events_per_track), division)
    for events in events_per_track:
        body = b"".join(varlen(d) + e for d, e in events) + b"\x00\xff\x2f\x00"
        data += struct.pack(">4sI", b"MTrk", len(body)) + body
    return data


# ------------------------------------------------------------------------------------------- search & helpers
def test_binary_index_sorted_and_quirky():
    assert binary_index([0, 1, 1, 1, 5], 1) == 3  # last of a run of equal entries
    assert binary_index([0, 1, 5], 3) == 1
    assert binary_index([2, 4], 1) == 0  # before every entry
    assert binary_index([0, 4, 8], 100) == 2
    # Q-FP: the fp split appends (p@x+0.1, f@x): unsorted; at and before x the search returns the p entry
    assert binary_index([10.1, 10], 10) == 0
    assert binary_index([10.1, 10], 15) == 1
    assert binary_index([0, 10.1, 10], 10) == 0


def test_make_index_continuous_squeezes_gaps_from_zero():
    assert make_index_continuous([0, 0, 2, 2, 5]) == [0, 0, 1, 1, 2]
    assert make_index_continuous([3, 3, 4]) == [1, 1, 2]  # the running start is 0, as in the original


def test_beat_importance_table():
    assert beat_importance(0, 3) == 4
    assert beat_importance(0.5, 4) == 3
    assert beat_importance(1 / 3, 3) == 2
    assert beat_importance(1 / 12, 3) == 0.5
    assert beat_importance(0.1, 3) == 0
    assert time_signature_vector(3, 4) == [0, 1, 0, 0, 0, 0, 1, 0, 0]
    assert time_signature_vector(12, 32) == [1, 0, 1, 1, 0, 0, 0, 0, 1]


def test_layout_and_norm_stats_shipped():
    names = feature_names()
    assert len(names) == 101 and names[3] == "qpm_primo" and names[96] == "midi_pitch_unnorm"
    stats = norm_stats()["normalized"]
    assert len(stats) == 22 and all(s["std"] > 0 for s in stats.values())


# ------------------------------------------------------------------------------------------- MusicXML reader
def test_cursor_chords_backup_and_drift(write):
    body = (note("C", dur=2) + note("E", dur=2, chord=True) + note("D", dur=3)
            + "<backup><duration>5</duration></backup>" + note("C", 3, dur=5, voice=2, staff=2) + "</measure>"
            + '<measure number="2">' + note("G", dur=6) + "</measure>")
    score = read_musicxml(write(xml(body)))
    got = [(n.pitch, n.pos, n.duration, n.voice) for n in score.notes]
    assert got == [(64, 0, 2, 1), (60, 0, 2, 1), (48, 0, 5, 2), (62, 2, 3, 1), (67, 5, 6, 1)]
    # the second bar starts where the cursor stood (5, not 6): bar lines are not recomputed
    assert score.measure_positions == [0, 5]


def test_ties_fold_into_latest_head_any_voice(write):
    tie_start = '<notations><tied type="start"/></notations>'
    body = (note("C", dur=2, extra="", notations='<tied type="start"/>') + note("C", dur=2, notations='<tied type="stop"/>')
            + note("D", dur=2) + "</measure>")
    score = read_musicxml(write(xml(body)))
    assert [(n.pitch, n.duration) for n in score.notes] == [(60, 4), (62, 2)]
    assert tie_start  # (documentation of the element read: <notations><tied>, not <tie>)


def test_grace_order_and_chord_flags(write):
    body = (note("A", 4, grace=True) + note("B", 4, grace=True) + note("C", 5, dur=2) + note("E", 4, dur=2, chord=True)
            + note("D", 5, dur=4) + "</measure>")
    score = read_musicxml(write(xml(body)))
    by = {n.pitch: n for n in score.notes}
    assert (by[69].grace_order, by[71].grace_order) == (-2, -1)
    assert by[72].preceded_by_grace and by[64].preceded_by_grace and not by[74].preceded_by_grace
    assert [n.pitch for n in score.notes][:2] == [69, 71]  # grace notes first at their onset


def test_sticky_beam_state_and_first_articulation_only(write):
    body = (note("C", dur=1, beam='<beam number="1">begin</beam>') + note("D", dur=1, beam='<beam number="1">end</beam>')
            + note("E", dur=2) + note("G", dur=2, chord=True)
            + note("F", dur=2, notations="<articulations><staccato/><accent/></articulations>") + "</measure>"
            + '<measure number="2">' + note("C", dur=6) + "</measure>")
    sf = extract_score_features(read_musicxml(write(xml(body))))
    beams = {n.pitch: f[3:] for n, f in zip(sf.score.notes, sf.features["slur_beam_vec"])}
    assert beams[67] == [1, 0, 1]  # Q-BEAM: the chord note copies every beam type seen so far
    assert beams[64] == [0, 0, 0]
    notation = {n.pitch: f for n, f in zip(sf.score.notes, sf.features["notation"])}
    assert notation[65][3] == 1 and notation[65][2] == 0  # Q-ARTIC: staccato read, accent not


def test_fp_split_uses_the_original_search(write):
    fp = '<direction><direction-type><dynamics><fp/></dynamics></direction-type></direction>'
    body = (note("C", dur=2) + fp + note("D", dur=2) + note("E", dur=2) + "</measure>"
            + '<measure number="2">' + note("F", dur=6) + "</measure>")
    sf = extract_score_features(read_musicxml(write(xml(body))))
    dyn = [f[0] for f in sf.features["dynamic"]]
    # Q-FP: the list is (p@2.1, f@2); the original search gives p up to position 2 and f after it
    assert dyn == [-0.4, -0.4, 0.4, 0.4]
    assert sf.features["distance_from_abs_dynamic"][0] == pytest.approx(-2.1 / 2, abs=EXACT)


def test_keyword_typos_and_embedding():
    assert "diminsotto voce" in D.REL_DYNAMIC_KEYWORDS and "sotto voce" not in D.REL_DYNAMIC_KEYWORDS
    table = D.TEMPO_TABLE
    assert D.embed("Allegro vivace", table, 5)[0] == 0.6  # 'vivace' (0.6) written after 'allegro' (0.5)
    assert D.embed("Andante", table, 5) == [-0.5, 0, 0, 0, 0]
    assert D.embed("", table, 5) == [0] * 5
    assert D.embed("cresc.", D.DYNAMIC_TABLE, 4) == [0, 0.7, 0, 0]


def test_beat_grid_pickup(write):
    body = note("C", dur=2) + "</measure>" + '<measure number="2">' + note("D", dur=6) + "</measure>"
    score = read_musicxml(write(xml(body)))
    assert beat_positions(score) == [0.0, 2.0, 4.0, 6.0]  # the 1-beat pickup counts back from bar 2


@pytest.mark.parametrize("text, msg", [
    (xml(note() + "</measure>", parts=2), "parts"),
    (xml(note() + '<barline location="right"><repeat direction="backward"/></barline></measure>'), "repeats"),
    (xml(note() + "</measure>", time=""), "time signature"),
    ("<html><body>hello</body></html>", "not a MusicXML"),
    ("this is not xml at all", "not a MusicXML"),
])
def test_unsupported_scores_raise(write, text, msg):
    with pytest.raises(UnsupportedScoreError, match=msg):
        read_musicxml(write(text))


# ------------------------------------------------------------------------------------------- MIDI and pedal
def test_midi_reader_pairs_tempo_and_pedal(tmp_path):
    tempo = b"\xff\x51\x03" + (1_000_000).to_bytes(3, "big")  # 60 bpm: one beat = 1 s
    track0 = [(0, tempo)]
    track1 = [(0, b"\xb0\x40\x7f"), (0, b"\x90\x3c\x50"), (240, b"\x90\x40\x40"), (240, b"\x80\x3c\x00"),
              (0, b"\xb0\x40\x00"), (480, b"\x90\x40\x00"), (0, b"\x90\x15\x10"), (480, b"\x80\x15\x00"),
              (0, b"\x90\x6d\x10"), (10, b"\x80\x6d\x00")]
    path = tmp_path / "p.mid"
    path.write_bytes(smf([track0, track1]))
    perf = read_midi(path)
    got = [(n.pitch, n.velocity, n.start, n.end) for n in perf.notes]
    assert got == [(60, 80, 0.0, 1.0), (64, 64, 0.5, 2.0), (21, 16, 2.0, 3.0)]  # 109 is outside 21-108
    segs = pedal_segments(perf)
    assert [(s.start, s.value) for s in segs] == [(0.0, 0), (0.0, 127)]  # a release creates no segment
    assert perf.notes[2].pedal_at_start == 127  # Q-PEDALRELEASE: the pressed value still holds after release


def test_not_midi_raises(tmp_path):
    p = tmp_path / "x.mid"
    p.write_bytes(b"RIFF0000WAVEfmt ")
    with pytest.raises(MidiFileError):
        read_midi(p)


def test_midi_reader_reads_back_a_pretty_midi_file(tmp_path):
    pretty_midi = pytest.importorskip("pretty_midi")
    midi = pretty_midi.PrettyMIDI(initial_tempo=60.0)  # 220 ticks per beat, one beat = 1 s: times are exact
    piano, second = pretty_midi.Instrument(program=0), pretty_midi.Instrument(program=1)
    piano.notes += [pretty_midi.Note(velocity=80, pitch=64, start=0.5, end=2.0),
                    pretty_midi.Note(velocity=70, pitch=60, start=0.0, end=1.0)]
    piano.control_changes += [pretty_midi.ControlChange(64, 100, 0.0), pretty_midi.ControlChange(64, 0, 1.5),
                              pretty_midi.ControlChange(67, 30, 0.5)]
    second.notes += [pretty_midi.Note(velocity=50, pitch=21, start=2.5, end=3.0),
                     pretty_midi.Note(velocity=50, pitch=109, start=2.5, end=3.0)]  # above the piano range
    second.control_changes += [pretty_midi.ControlChange(64, 40, 1.0)]
    midi.instruments += [piano, second]
    path = tmp_path / "written.mid"
    midi.write(str(path))
    perf = read_midi(path)
    assert [(n.pitch, n.velocity) for n in perf.notes] == [(60, 70), (64, 80), (21, 50)]  # onset order, 109 dropped
    assert [(n.start, n.end) for n in perf.notes] == [(0.0, 1.0), (0.5, 2.0), (2.5, 3.0)]
    # Q-PEDALORDER: control changes come instrument by instrument (time-sorted within one), not merged by time
    assert [(c.number, c.value, c.time) for c in perf.control_changes] == [(64, 100, 0.0), (67, 30, 0.5),
                                                                           (64, 0, 1.5), (64, 40, 1.0)]
    first, second_note, last = perf.notes
    # sustain segments (0, 0), (0, 100), (1.0, 40): the release at 1.5 creates none (Q-PEDALRELEASE)
    assert (first.pedal_at_start, first.pedal_at_end, first.soft_pedal) == (100, 40, 0)
    assert (second_note.pedal_at_start, second_note.pedal_at_end, second_note.soft_pedal) == (100, 40, 30)
    assert last.pedal_at_start == 40  # the last pressed value still holds
    assert perf.end_time == 3.0


def test_midi_reader_pairs_overlapping_notes_like_pretty_midi(tmp_path):
    # two note-ons of one pitch, then one note-off: it closes both; a note-on on the note-off's tick stays open
    track = [(0, b"\x90\x3c\x40"), (480, b"\x90\x3c\x50"), (480, b"\x80\x3c\x00"), (0, b"\x90\x3c\x60"),
             (480, b"\x80\x3c\x00")]
    path = tmp_path / "overlap.mid"
    path.write_bytes(smf([track]))
    got = [(n.velocity, n.start, n.end) for n in read_midi(path).notes]
    assert got == [(64, 0.0, 1.0), (80, 0.5, 1.0), (96, 1.0, 1.5)]  # 120 bpm default tempo


def test_midi_tempo_outside_track_0_is_ignored_with_a_warning(tmp_path):
    tempo = b"\xff\x51\x03" + (1_000_000).to_bytes(3, "big")  # 60 bpm, but on track 1
    path = tmp_path / "tempo.mid"
    path.write_bytes(smf([[], [(0, tempo), (0, b"\x90\x3c\x40"), (480, b"\x80\x3c\x00")]]))
    with pytest.warns(RuntimeWarning, match="tempo changes outside track 0"):
        perf = read_midi(path)
    assert [(n.start, n.end) for n in perf.notes] == [(0.0, 0.5)]  # still the default 120 bpm


@pytest.mark.parametrize("division, msg", [(0xE728, "SMPTE"), (0, "0 ticks per beat")])
def test_midi_unsupported_time_division_raises(tmp_path, division, msg):
    path = tmp_path / "smpte.mid"
    path.write_bytes(smf([[(0, b"\x90\x3c\x40"), (40, b"\x80\x3c\x00")]], division=division))
    with pytest.raises(MidiFileError, match=msg):
        read_midi(path)


def test_truncated_midi_raises(tmp_path):
    path = tmp_path / "cut.mid"
    path.write_bytes(smf([[(0, b"\x90\x3c\x40"), (480, b"\x80\x3c\x00")]])[:-6])
    with pytest.raises(MidiFileError):
        read_midi(path)


# ------------------------------------------------------------------------------------------- cleaning & dynamics
class _N:
    def __init__(self, pos, grace=False):
        self.pos, self.is_grace, self.divisions, self.is_arpeggiate = pos, grace, 1, False


class _P:
    def __init__(self, start):
        self.start = start


def test_cleaning_flags_out_of_order_pairs_and_never_closes_last_group():
    notes = [_N(0), _N(0), _N(1), _N(2), _N(3)]
    perf = [_P(0.0), _P(0.05), _P(1.0), _P(0.5), _P(3.0)]
    anchors, cleaned = clean_pairs(notes, [0, 1, 2, 3, 4], perf)
    assert [(a.pos, a.time) for a in anchors] == [(0, 0.025), (1, 1.0)]
    assert cleaned == [0, 1, None, None, 4]  # row 3 goes back in time: it and the group it follows are flagged


def test_longer_level_dynamics_quirks():
    vel = [60, 80, 100, 50]
    out = longer_level_dynamics(vel, [1, 1, 1, 1], [1, 1, 2, 2])
    # Q-LASTGROUP: the group index starts at 0 and only updates on a close, so the 2nd matched note closes a
    # one-note group; the last group uses (sum + max) / 2 / n instead of (mean + max) / 2
    assert out == [60, 80, (100 + 50 + 100) / 2 / 2, (100 + 50 + 100) / 2 / 2]


def test_insert_positions_count_matched_pairs_only():
    pairs = [None, None, 0, 2]  # two unmatched score notes first, performance note 1 unmatched
    rows, sources = insert_positions(pairs, 3)
    assert sources == [1] and rows == [1]  # one matched pair before it -> row 1 (too early: Q-INSERT)
    assert insert_positions(pairs, 3, fix_insert_index=True)[0] == [3]


# ------------------------------------------------------------------------------------------- CLI errors
def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_without_checkpoint_explains(capsys, write, tmp_path):
    score = write(xml(note() + "</measure>"))
    midi = tmp_path / "p.mid"
    midi.write_bytes(smf([[(0, b"\x90\x3c\x50"), (480, b"\x80\x3c\x00")]]))
    code, out, err = _run(capsys, ["predict", str(midi), "--score", str(score)])
    assert code == 2 and "checkpoint" in err and "percepiano train" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["not_midi", "not_xml", "empty", "missing"])
def test_predict_bad_inputs_exit_cleanly(capsys, write, tmp_path, case):
    score = write(xml(note() + note("D") + "</measure>" + '<measure number="2">' + note("E", dur=6) + "</measure>"))
    midi = tmp_path / "p.mid"
    midi.write_bytes(smf([[(0, b"\x90\x3c\x50"), (480, b"\x80\x3c\x00")]]))
    if case == "not_midi":
        midi.write_text("hello")
    elif case == "not_xml":
        score = write("not xml", "bad.musicxml")
    elif case == "empty":
        midi.write_bytes(smf([[(0, b"\xb0\x40\x7f")]]))
    else:
        midi = tmp_path / "nope.mid"
    code, out, err = _run(capsys, ["predict", str(midi), "--score", str(score), "--features-only"])
    assert code == 2, err
    assert "error" in err and "Traceback" not in err and out == ""


def test_cli_registers_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["features-parity", "--help"])
    assert exc.value.code == 0
    assert "--alignments" in capsys.readouterr().out
    assert math.isfinite(1.0) and np.isfinite(EXACT)


# ------------------------------------------------------------------------------------------- named quirk fixes
def test_unknown_fix_is_rejected(write):
    with pytest.raises(ValueError, match="unknown quirk fix"):
        read_musicxml(write(xml(note() + "</measure>")), fixes={"nonsense"})


def test_fixes_change_what_they_name(write, tmp_path):
    body = (note("C", dur=1, beam='<beam number="1">begin</beam>') + note("D", dur=1, beam='<beam number="1">end</beam>')
            + note("E", dur=2) + note("G", dur=2, chord=True)
            + note("F", dur=2, notations="<articulations><staccato/><accent/></articulations>") + "</measure>"
            + '<measure number="2">' + note("C", dur=6) + "</measure>")
    path = write(xml(body))
    fixed = extract_score_features(read_musicxml(path, fixes={"beam_state", "articulations"}))
    beams = {n.pitch: f[3:] for n, f in zip(fixed.score.notes, fixed.features["slur_beam_vec"])}
    notation = {n.pitch: f for n, f in zip(fixed.score.notes, fixed.features["notation"])}
    assert beams[67] == [0, 0, 0]  # the chord head (E) has no beam of its own
    assert notation[65][2] == 1 and notation[65][3] == 1  # accent and staccato

    tempo = b"\xff\x51\x03" + (1_000_000).to_bytes(3, "big")
    events = [(0, tempo), (0, b"\xb0\x40\x7f"), (0, b"\x90\x3c\x50"), (480, b"\x80\x3c\x00"), (0, b"\xb0\x40\x00"),
              (0, b"\x90\x3e\x50"), (480, b"\x80\x3e\x00")]
    midi = tmp_path / "p.mid"
    midi.write_bytes(smf([events]))
    assert read_midi(midi).notes[1].pedal_at_start == 127  # Q-PEDALRELEASE
    assert read_midi(midi, pedal_release_fix=True).notes[1].pedal_at_start == 0

    vel, matched, locs = [60, 80, 100, 50], [1, 1, 1, 1], [1, 1, 2, 2]
    assert longer_level_dynamics(vel, matched, locs, fix=True) == [75, 75, 87.5, 87.5]  # (mean+max)/2 per bar


def test_divisions_change_is_rejected(write):
    body = note("C", dur=2) + "</measure>" + '<measure number="2"><attributes><divisions>4</divisions></attributes>' \
        + note("D", dur=12) + "</measure>"
    with pytest.raises(UnsupportedScoreError, match="divisions"):
        read_musicxml(write(xml(body)))


def test_articulation_loss_weight_rules():
    from percepiano.features.dataset import articulation_loss_weight
    feats = {"pedal_at_end": [80, 62, 10, 80, 80], "pedal_refresh": [80, 62, 10, 10, 0]}
    kind = np.array([0, 0, 0, 1, 2])
    # matched: pedal > 70 -> 0.05, > 60 -> 0.5, else 1; a refresh inside a pedalled note -> 1, unmatched too
    np.testing.assert_array_equal(articulation_loss_weight(feats, kind), np.float32([0.05, 0.5, 1.0, 1.0, 0.0]))


def test_predict_rejects_a_bad_checkpoint(capsys, write, tmp_path):
    import torch
    score = write(xml(note() + "</measure>"))
    midi = tmp_path / "p.mid"
    midi.write_bytes(smf([[(0, b"\x90\x3c\x50"), (480, b"\x80\x3c\x00")]]))
    bad = tmp_path / "bad.pt"
    torch.save({"model_state": {}, "model_config": {"no_such_field": 1}}, bad)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    for ck in (bad, junk):
        code, out, err = _run(capsys, ["predict", str(midi), "--score", str(score), "--checkpoint", str(ck)])
        assert code == 2 and ck.name in err and "error" in err, err
        assert "Traceback" not in err and out == ""


# ------------------------------------------------------------------------------------------- performances that do not fit
def _fit(n_score: int, n_perf: int, n_matched: int):
    """What check_alignment reads of an extraction result."""
    from types import SimpleNamespace
    return SimpleNamespace(n_score_notes=n_score, n_perf_notes=n_perf, n_matched=n_matched,
                           match_rate=n_matched / n_score)


def test_check_alignment_warns_on_a_repeated_excerpt_and_on_unmatched_performed_notes():
    from percepiano.features.rating import MAX_NOTES_PER_SCORE_NOTE, MAX_UNMATCHED_PERFORMED, check_alignment
    # the case reported: the excerpt 20 times, 1080 performed notes for 54 score notes, 90.7 % matched
    notes = check_alignment(_fit(54, 1080, 49))
    assert any("1080 notes for 54 score notes" in n and "more than one performance" in n for n in notes), notes
    assert any("matched no score note" in n for n in notes), notes  # 1031 of 1080 performed notes unmatched
    # the dataset's extremes stay silent: 108 notes for 62 (1.742 per score note), 65 of 101 unmatched (0.644)
    assert check_alignment(_fit(62, 108, 62)) == []
    assert check_alignment(_fit(62, 101, 36 + 26)) == []
    # a genuine-looking count with most of it unmatched warns on its own (1.9 per score note, 71 % unmatched)
    notes = check_alignment(_fit(100, 190, 55))
    assert len(notes) == 2 and "matched no score note" in notes[1] and "below 80%" in notes[0], notes
    assert 190 / 100 < MAX_NOTES_PER_SCORE_NOTE and (190 - 55) / 190 > MAX_UNMATCHED_PERFORMED


def _excerpt_and_performance(tmp_path, repeats: int) -> tuple:
    """A 4-bar, 12-note MusicXML excerpt and a MIDI playing it ``repeats`` times, note for note."""
    pretty_midi = pytest.importorskip("pretty_midi")
    from percepiano.features.pipeline import load_score
    steps = "CDEFGAB"
    bars = ["".join(note(steps[(m + k) % 7], 4 + k % 2, dur=2) for k in range(3)) for m in range(4)]
    score = tmp_path / "excerpt.musicxml"
    score.write_text(xml(bars[0] + "</measure>" + "".join(f'<measure number="{i + 2}">{b}</measure>'
                                                           for i, b in enumerate(bars[1:]))))
    notes = load_score(score).score.notes
    seconds = 0.25  # per division (divisions = 2 per quarter, 120 bpm)
    length = max(n.pos + n.duration for n in notes) * seconds + 0.5
    midi = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(program=0)
    for r in range(repeats):
        for n in notes:
            start = r * length + n.pos * seconds
            piano.notes.append(pretty_midi.Note(velocity=64, pitch=n.pitch, start=start,
                                                end=start + 0.9 * n.duration * seconds))
    midi.instruments.append(piano)
    path = tmp_path / f"played_{repeats}x.mid"
    midi.write(str(path))
    return score, path


def test_predict_warns_when_the_midi_holds_the_excerpt_20_times(capsys, tmp_path):
    import json
    pytest.importorskip("parangonar", reason="predict needs the `features` extra (parangonar)")
    score, once = _excerpt_and_performance(tmp_path, 1)
    _, twenty = _excerpt_and_performance(tmp_path, 20)
    code, out, err = _run(capsys, ["predict", str(once), "--score", str(score), "--features-only", "--format", "json"])
    assert code == 0 and json.loads(out)["warnings"] == [] and "warning" not in err
    code, out, err = _run(capsys, ["predict", str(twenty), "--score", str(score), "--features-only", "--format", "json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["alignment"]["performance_notes"] == 240 and report["alignment"]["score_notes"] == 12
    assert any("240 notes for 12 score notes" in w for w in report["warnings"]), report["warnings"]
    assert "warning: the performance has 240 notes for 12 score notes" in err
    # rated with a checkpoint, the warning travels with the ratings
    code, out, err = _run(capsys, ["predict", str(twenty), "--score", str(score), "--checkpoint",
                                   str(_tiny_checkpoint(tmp_path)), "--format", "json"])
    assert code == 0, err
    assert any("more than one performance" in w for w in json.loads(out)["warnings"])


# ------------------------------------------------------------------------------------------- checkpoints and ratings
def _tiny_checkpoint(tmp_path, name: str = "best.pt", poison: float | None = None, **train) -> Path:
    """A random-weight 101-input model in the `percepiano train` checkpoint format (``poison``: every weight;
    ``train``: TrainConfig fields, recorded as its train_config)."""
    import torch
    from percepiano import ModelConfig, PercePianoModel
    from percepiano.checkpoints import CHECKPOINT_FORMAT
    from percepiano.training import TrainConfig
    cfg = ModelConfig(hidden_size=8, num_heads=2, level="note")
    torch.manual_seed(0)
    state = PercePianoModel(cfg).state_dict()
    if poison is not None:
        state = {k: torch.full_like(v, poison) for k, v in state.items()}
    path = tmp_path / name
    torch.save({"format": CHECKPOINT_FORMAT, "kind": "best", "model_state": state, "model_config": cfg.to_dict(),
                "train_config": TrainConfig(**train).to_dict()}, path)
    return path


def test_predict_refuses_features_only_with_a_checkpoint(capsys, tmp_path):
    score, midi = _excerpt_and_performance(tmp_path, 1)  # a valid pair: each flag alone would succeed
    ck = _tiny_checkpoint(tmp_path)
    code, out, err = _run(capsys, ["predict", str(midi), "--score", str(score), "--features-only", "--checkpoint", str(ck)])
    assert code == 2 and out == ""
    assert "--features-only" in err and "--checkpoint" in err and "ignored" in err and "Traceback" not in err


def test_rate_refuses_nan_ratings():
    import torch
    from types import SimpleNamespace
    from percepiano import ModelConfig, PercePianoModel
    from percepiano.features.rating import RatingError, rate
    from percepiano.synthetic import random_sample
    sample = random_sample(np.random.default_rng(0))
    n = sample.x.shape[0]
    result = SimpleNamespace(model_inputs=(sample.x.unsqueeze(0), torch.tensor([n]),
                                           {k: v.unsqueeze(0) for k, v in sample.note_locations.items()}))
    torch.manual_seed(0)
    model = PercePianoModel(ModelConfig(hidden_size=8, num_heads=2, level="note")).eval()
    ratings = rate(model, result)
    assert ratings.shape == (19,) and np.isfinite(ratings).all()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(RatingError, match="non-finite ratings for 19 of 19 labels"):
        rate(model, result)
    model = PercePianoModel(ModelConfig(hidden_size=8, num_heads=2, level="note")).eval()
    result.model_inputs[0][0, 1, 5] = float("inf")
    with pytest.raises(RatingError, match=r"features are not finite .*columns \[5\]"):
        rate(model, result)


def test_predict_refuses_a_checkpoint_with_nan_weights(capsys, tmp_path):
    score, midi = _excerpt_and_performance(tmp_path, 1)
    ck = _tiny_checkpoint(tmp_path, "diverged.pt", poison=float("nan"))
    code, out, err = _run(capsys, ["predict", str(midi), "--score", str(score), "--checkpoint", str(ck)])
    assert code == 2 and out == "", out  # not 19 NaN ratings with exit 0
    assert "diverged.pt" in err and "non-finite weights" in err and "Traceback" not in err


def test_predict_says_when_the_checkpoint_departs_from_the_protocol(capsys, tmp_path):
    import json
    pytest.importorskip("parangonar", reason="predict needs the `features` extra (parangonar)")
    score, midi = _excerpt_and_performance(tmp_path, 1)
    short = _tiny_checkpoint(tmp_path, "short.pt", epochs=1, limit_segments=4, lr=1e-3)
    code, out, err = _run(capsys, ["predict", str(midi), "--score", str(score), "--checkpoint", str(short),
                                   "--format", "json"])
    assert code == 0, err
    notes = json.loads(out)["checkpoint_protocol_notes"]
    for what in ("trained on a subset: limit_segments=4", "trained for 1 epoch(s)", "lr = 0.001"):
        assert any(what in n for n in notes), (what, notes)
        assert f"warning: checkpoint {short}: " in err and what in err
    code, out, err = _run(capsys, ["predict", str(midi), "--score", str(score), "--checkpoint", str(short)])
    assert code == 0 and "departure(s) from the original training protocol" in out
