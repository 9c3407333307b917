"""A MusicXML reader with the original pipeline's semantics.

Written from the behaviour of the original ``musicxml_parser`` package (``MusicXMLDocument``, ``Part``, ``Measure``,
``Note``, ``Direction``) and ``playable_notes.get_playable_notes``; see docs/features.md for the list of quirks it
keeps on purpose. It is a single cursor pass over the XML elements in document order:

* the cursor (``pos``, in divisions) advances by ``<duration>`` for every non-chord note or rest, ``<backup>`` /
  ``<forward>`` move it, a chord note takes the previous note's position *and duration*, grace notes have
  duration 0; a measure starts wherever the cursor stands (bar lines are not recomputed, so rounded tuplet
  durations make positions drift);
* only the first ``<direction-type>`` of a ``<direction>`` is read, its ``<offset>`` is ignored;
* beams are a sticky parser state that chord notes copy (quirk Q-BEAM);
* only the first child of ``<articulations>`` is read (Q-ARTIC).

Unsupported input (several parts, repeats or endings, no time signature, SMPTE, ...) raises
:class:`UnsupportedScoreError` instead of producing silent garbage.
"""
from __future__ import annotations

import math
import zipfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ._search import binary_index

DEFAULT_QPM = 120.0
_STEP_TO_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


class UnsupportedScoreError(ValueError):
    """The MusicXML file cannot be read with the original's semantics (or is not MusicXML at all)."""


@dataclass(eq=False)
class Slur:
    kind: str  # 'start' | 'stop' | 'continue'
    number: str
    pos: float = 0
    end: float = 0
    voice: int = 0


@dataclass(eq=False)
class TimeSignature:
    numerator: int
    denominator: int
    pos: int
    divisions: int


@dataclass(eq=False)
class Direction:
    """One ``<direction>``: its first ``<direction-type>`` only, positioned at the cursor."""
    pos: float
    staff: str | None = None
    placement: str | None = None
    type: str | None = None
    content: str | None = None
    number: str | None = None
    has_number: bool = False
    end: float | None = None  # set by the direction passes; None = "no end attribute yet"


@dataclass(eq=False)
class ScoreNote:
    pitch: int = 0
    has_pitch: bool = False
    pos: int = 0
    duration: int = 0
    divisions: int = 1
    time_position: float = 0.0
    qpm: float = DEFAULT_QPM
    voice: int = 1
    staff: int = 1
    measure_index: int = 0  # 0-based index of the <measure> element it is written in
    is_rest: bool = False
    is_grace: bool = True  # like the original: true until a <duration> says otherwise
    is_chord: bool = False
    chord_index: int = 0
    unpitched: bool = False
    print_object: bool = True
    grace_order: int = 0
    preceded_by_grace: bool = False
    tied_start: bool = False
    tied_stop: bool = False
    slurs: list = field(default_factory=list)
    slur_start: bool = False
    slur_continue: bool = False
    slur_stop: bool = False
    beam_start: bool = False
    beam_continue: bool = False
    beam_stop: bool = False
    is_trill: bool = False
    is_tenuto: bool = False
    is_accent: bool = False
    is_staccato: bool = False
    is_fermata: bool = False
    is_arpeggiate: bool = False
    is_strong_accent: bool = False
    is_cue: bool = False
    is_slash: bool = False
    has_wavy_line: bool = False
    is_overlapped: bool = False
    following_rest: float = 0
    followed_by_fermata_rest: bool = False
    # filled by the direction pass
    dyn_absolute: str | None = None
    dyn_absolute_pos: float = 0
    dyn_relative: list = field(default_factory=list)
    tempo_absolute: str | None = None
    tempo_relative: list = field(default_factory=list)
    recent_tempo_pos: float = 0
    time_signature: TimeSignature | None = None


@dataclass(eq=False)
class Measure:
    start: int
    implicit: bool
    notes: list  # every parsed <note> (rests and grace notes included)
    time_signature: TimeSignature | None = None


@dataclass(eq=False)
class Score:
    """What the rest of the pipeline needs from one MusicXML file."""
    notes: list            # playable notes, in the original's order
    rests: list
    measures: list
    directions: list       # sorted by position, wedge stops re-typed
    time_signatures: list
    tempos: list           # (pos, qpm, divisions) from <sound tempo>
    path: str = ""

    @property
    def measure_positions(self) -> list:
        return [m.start for m in self.measures]


class _State:
    def __init__(self):
        self.divisions = 1
        self.pos = 0
        self.qpm = DEFAULT_QPM
        self.transpose = 0
        self.prev_duration = 0
        self.prev_pos = 0
        self.chord_index = 0
        self.beam_start = self.beam_continue = self.beam_stop = False
        self.head_beams = (False, False, False)  # own beams of the last non-chord note (fix "beam_state")
        self.measure_index = 0
        self.fixes: frozenset = frozenset()


def _read_root(path: str | Path) -> ET.Element:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such score file: {path}")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if not n.startswith("META-INF/")]
                target = None
                if "META-INF/container.xml" in zf.namelist():
                    container = ET.fromstring(zf.read("META-INF/container.xml"))
                    for rootfile in container.iter("rootfile"):
                        target = rootfile.get("full-path")
                        break
                if target is None:
                    xmls = [n for n in names if n.endswith((".xml", ".musicxml"))]
                    if not xmls:
                        raise UnsupportedScoreError(f"{path}: compressed file holds no MusicXML document")
                    target = xmls[0]
                root = ET.fromstring(zf.read(target))
        else:
            root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise UnsupportedScoreError(f"{path}: not a MusicXML file ({exc})") from None
    if root.tag == "score-timewise":
        raise UnsupportedScoreError(f"{path}: timewise MusicXML is not supported (export it as partwise)")
    if root.tag != "score-partwise":
        raise UnsupportedScoreError(f"{path}: not a MusicXML score (root element <{root.tag}>)")
    return root


def _int(text: str | None, what: str) -> int:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UnsupportedScoreError(f"cannot read {what} {text!r}") from None


def _parse_note(el: ET.Element, st: _State) -> ScoreNote:
    n = ScoreNote(divisions=st.divisions, qpm=st.qpm, measure_index=st.measure_index)
    if el.get("print-object") == "no":
        n.print_object = False
    n.pos = 0
    for child in el:
        tag = child.tag
        if tag == "chord":
            n.is_chord = True
            st.chord_index += 1
            n.chord_index = st.chord_index
            if "beam_state" in st.fixes:
                n.beam_start, n.beam_continue, n.beam_stop = st.head_beams
            else:  # Q-BEAM: the sticky parser state
                n.beam_start, n.beam_continue, n.beam_stop = st.beam_start, st.beam_continue, st.beam_stop
        elif tag == "duration":
            _set_duration(n, st, False, _int(child.text, "duration"))
        elif tag == "pitch":
            step = child.findtext("step")
            if step not in _STEP_TO_PC:
                raise UnsupportedScoreError(f"unknown pitch step {step!r}")
            alter = child.findtext("alter")
            alter_f = float(alter) if alter else 0.0
            octave = _int(child.findtext("octave"), "octave")
            n.pitch = 12 + _STEP_TO_PC[step] + int(alter_f) + 12 * octave + st.transpose
            n.has_pitch = True
        elif tag == "rest":
            n.is_rest = True
        elif tag == "voice":
            n.voice = _int(child.text, "voice")
        elif tag == "notations":
            _parse_notations(n, child, "articulations" in st.fixes)
        elif tag == "unpitched":
            n.unpitched = True
        elif tag == "grace":
            _set_duration(n, st, True, 0)
            if child.get("slash") == "yes":
                n.is_slash = True
        elif tag == "staff":
            n.staff = _int(child.text, "staff")
        elif tag == "cue":
            n.is_cue = True
        elif tag == "beam":
            text = (child.text or "").strip()
            if text == "begin":
                n.beam_start = st.beam_start = True
            elif text == "end":
                n.beam_stop = st.beam_stop = True
            elif text == "continue":
                n.beam_continue = st.beam_continue = True
    if not n.is_chord:
        st.chord_index = 0
        st.head_beams = (n.beam_start, n.beam_continue, n.beam_stop)
    return n


def _set_duration(n: ScoreNote, st: _State, grace: bool, duration: int) -> None:
    """Mirrors NoteDuration.parse_duration: a chord note takes the previous note's duration and position."""
    n.duration = duration
    if n.is_chord:
        n.duration = st.prev_duration
    n.is_grace = grace
    if n.is_chord:
        n.pos = st.prev_pos
    else:
        n.pos = st.pos
        st.pos += n.duration


def _parse_notations(n: ScoreNote, el: ET.Element, all_articulations: bool = False) -> None:
    for child in el:
        tag = child.tag
        if tag == "articulations":
            kids = list(child)
            for first in [k.tag for k in (kids if all_articulations else kids[:1])]:  # Q-ARTIC: only the first
                if first == "arpeggiate":
                    n.is_arpeggiate = True
                elif first == "accent":
                    n.is_accent = True
                elif first == "fermata":
                    n.is_fermata = True
                elif first == "staccato":
                    n.is_staccato = True
                elif first == "tenuto":
                    n.is_tenuto = True
                elif first == "strong-accent":
                    n.is_strong_accent = True
        elif tag == "arpeggiate":
            n.is_arpeggiate = True
        elif tag == "fermata":
            n.is_fermata = True
        elif tag == "tied":
            kind = child.get("type")
            if kind == "start":
                n.tied_start = True
            elif kind == "stop":
                n.tied_stop = True
        elif tag == "ornaments":
            for orn in child:
                if orn.tag == "trill-mark":
                    n.is_trill = True
                elif orn.tag == "wavy-line":
                    n.has_wavy_line = True
        elif tag == "slur":
            n.slurs.append(Slur(child.get("type", ""), child.get("number", "1")))


def _parse_direction(el: ET.Element, st: _State) -> Direction | None:
    d = Direction(pos=st.pos)
    dtype = el.find("direction-type")
    if dtype is None:
        return None
    kids = list(dtype)
    if not kids:
        return d
    staff = el.find("staff")
    if staff is not None:
        d.staff = staff.text
    d.placement = el.get("placement")
    for child in kids:
        tag = child.tag
        if tag == "dynamics":
            marks = list(child)
            if not marks:
                continue
            first = marks[0]
            if first.tag == "other-dynamics":
                if first.text is not None:
                    d.type, d.content = "words", first.text
                    d.has_number = False
            else:
                d.type, d.content, d.has_number = "dynamic", first.tag, False
        elif tag == "pedal":
            d.type, d.content, d.has_number = "pedal", child.get("type"), False
        elif tag == "wedge":
            kind = child.get("type")
            d.number, d.has_number = child.get("number"), True
            if kind in ("crescendo", "diminuendo"):
                d.type, d.content = kind, "start"
            else:
                d.type, d.content = "none", kind
        elif tag in ("words", "other-dynamics"):
            if d.content is None:
                d.type, d.content, d.has_number = "words", child.text, False
            elif child.text is not None:
                d.content += child.text
        elif tag == "octave-shift":
            d.type, d.content, d.has_number = "octave-shift", child.get("type"), False
        elif tag == "metronome":
            d.type, d.content, d.has_number = "metronome", None, False
    return d


def read_musicxml(path: str | Path, fixes=frozenset()) -> Score:
    """Parse one MusicXML file into the original's playable-note list, rests, measures and directions.

    ``fixes``: names from :data:`percepiano.features.quirks.FIXES` (``beam_state``, ``articulations``).
    """
    from .quirks import check_fixes
    root = _read_root(path)
    parts = root.findall("part")
    if len(parts) == 0:
        raise UnsupportedScoreError(f"{path}: the score has no <part>")
    if len(parts) > 1:
        raise UnsupportedScoreError(
            f"{path}: the score has {len(parts)} parts; only single-part (piano) scores are supported")
    part = parts[0]
    st = _State()
    st.fixes = check_fixes(fixes)
    measures: list[Measure] = []
    directions: list[Direction] = []
    time_sigs: list[TimeSignature] = []
    tempos: list[tuple] = []
    xml_measures = part.findall("measure")
    if not xml_measures:
        raise UnsupportedScoreError(f"{path}: the part has no measures")
    for index, xm in enumerate(xml_measures):
        st.measure_index = index
        _repair_empty_measure(xm)
        measure = Measure(start=st.pos, implicit=("implicit" in xm.attrib), notes=[])
        for child in xm:
            tag = child.tag
            if tag == "attributes":
                for a in child:
                    if a.tag == "divisions":
                        divisions = _int(a.text, "divisions")
                        if divisions <= 0:
                            raise UnsupportedScoreError(f"{path}: divisions must be positive")
                        if divisions != st.divisions and any(m.notes for m in measures + [measure]):
                            # positions would mix units (the original does not rescale them either)
                            raise UnsupportedScoreError(f"{path}: <divisions> changes inside the part "
                                                        f"({st.divisions} -> {divisions}); re-export the score")
                        st.divisions = divisions
                    elif a.tag == "time" and measure.time_signature is None:
                        measure.time_signature = _parse_time(a, st)
                        time_sigs.append(measure.time_signature)
                    elif a.tag == "transpose":
                        st.transpose = _int(a.findtext("chromatic"), "transpose")
            elif tag == "backup":
                st.pos -= _int(child.findtext("duration"), "backup duration")
            elif tag == "forward":
                st.pos += _int(child.findtext("duration"), "forward duration")
            elif tag == "barline":
                if child.find("repeat") is not None or child.find("ending") is not None:
                    raise UnsupportedScoreError(
                        f"{path}: repeats and endings are not supported; write the repeats out")
            elif tag == "direction":
                for s in child.iter("sound"):
                    if s.get("tempo") is not None:
                        qpm = float(s.get("tempo"))
                        if qpm == 0:
                            qpm = DEFAULT_QPM
                        tempos.append((st.pos, qpm, st.divisions))
                        st.qpm = qpm
                    elif any(s.get(k) is not None for k in ("dacapo", "dalsegno", "fine", "coda", "segno")):
                        raise UnsupportedScoreError(f"{path}: da capo / segno / coda jumps are not supported")
                d = _parse_direction(child, st)
                if d is not None:
                    directions.append(d)
            elif tag == "note":
                n = _parse_note(child, st)
                measure.notes.append(n)
                st.prev_duration, st.prev_pos = n.duration, n.pos
        measures.append(measure)
    if not time_sigs:
        raise UnsupportedScoreError(f"{path}: the score has no time signature")
    _recalculate_time_positions(measures, tempos, st)
    notes, rests = _playable_notes(measures)
    if not notes:
        raise UnsupportedScoreError(f"{path}: the score has no playable notes")
    directions = _sort_directions(directions)
    return Score(notes=notes, rests=rests, measures=measures, directions=directions,
                 time_signatures=_dedupe_time_signatures(time_sigs), tempos=tempos, path=str(path))


def _repair_empty_measure(xm: ET.Element) -> None:
    """A measure made of one <forward> only reads as a whole-measure rest (as in the original)."""
    forwards = xm.findall("forward")
    if not xm.findall("note") and len(forwards) == 1:
        duration = forwards[0].findtext("duration")
        xm.remove(forwards[0])
        xm.append(ET.fromstring(f"<note><rest/><duration>{duration}</duration><voice>1</voice>"
                                f"<type>whole</type><staff>1</staff></note>"))


def _parse_time(el: ET.Element, st: _State) -> TimeSignature:
    if len(el.findall("beats")) > 1 or len(el.findall("beat-type")) > 1:
        raise UnsupportedScoreError("alternating time signatures are not supported")
    symbol = el.get("symbol")
    if symbol == "cut":
        num, den = 2, 2
    elif symbol == "common":
        num, den = 4, 4
    else:
        beats, beat_type = el.findtext("beats"), el.findtext("beat-type")
        try:
            num, den = int(beats), int(beat_type)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UnsupportedScoreError(f"cannot read time signature {beats}/{beat_type}") from None
    if den not in (2, 4, 8, 16, 32):
        raise UnsupportedScoreError(f"unsupported time signature denominator {den}")
    return TimeSignature(num, den, st.pos, st.divisions)


def _dedupe_time_signatures(sigs: list) -> list:
    out = []
    for s in sigs:
        if not any(o.numerator == s.numerator and o.denominator == s.denominator and o.pos == s.pos for o in out):
            out.append(s)
    return out


def _recalculate_time_positions(measures: list, tempos: list, st: _State) -> None:
    """Onset times in seconds from the <sound tempo> map (MusicXMLDocument._recalculate_time_position)."""
    marks = sorted(tempos, key=lambda t: t[0])
    if not marks:
        marks = [(0, st.qpm, st.divisions)]
    if marks[0][0] != 0:
        marks.insert(0, (0, DEFAULT_QPM, marks[0][2]))
    starts = []
    t = 0.0
    for i, (pos, qpm, div) in enumerate(marks):
        starts.append(t)
        if i + 1 < len(marks):
            t += (marks[i + 1][0] - pos) / qpm * 60 / div
    for m in measures:
        for n in m.notes:
            for i in range(len(marks)):
                if i + 1 == len(marks) or marks[i][0] <= n.pos < marks[i + 1][0]:
                    break
            pos, qpm, div = marks[i]
            rate = qpm / 60 * div
            n.time_position = starts[i] + (n.pos - pos) / rate
            n.qpm = qpm


def _sort_directions(directions: list) -> list:
    """Sort by position and give each wedge stop the type of the latest earlier wedge with its number."""
    directions = sorted(directions, key=lambda d: d.pos)
    for i, d in enumerate(directions):
        if d.type == "none":
            for j in range(i - 1, -1, -1):
                prev = directions[j]
                if not prev.has_number:
                    continue
                if prev.number == d.number:
                    if prev.type in ("crescendo", "diminuendo"):
                        d.type = prev.type
                        break
    return directions


# --------------------------------------------------------------------------------------------------------------
# playable notes (playable_notes.get_playable_notes)

def _playable_notes(measures: list) -> tuple:
    notes = []
    for index, m in enumerate(measures):
        for n in m.notes:
            if n.unpitched:
                continue
            n.measure_index = index
            notes.append(n)
    notes, rests = _classify(notes)
    _mark_grace_chords(notes)
    notes = _merge_ties(notes)
    notes.sort(key=lambda n: (n.pos, n.grace_order, -n.pitch))
    _mark_overlaps(notes)
    _attach_rests(notes, rests)
    notes = _drop_invisible_and_move_trills(notes)
    _apply_slurs(notes)
    return notes, rests


def _classify(notes: list) -> tuple:
    """Grace-note order and the preceded-by-grace flag (classify_notes); rests are set aside."""
    pending: list = []
    rests: list = []
    out: list = []
    for n in notes:
        if n.is_grace and n.has_pitch:
            pending.append(n)
            out.append(n)
        elif not n.is_rest:
            if pending:
                others = []
                order = -1
                for g in reversed(pending):
                    if g.voice == n.voice:
                        n.preceded_by_grace = True
                        g.grace_order = order
                        if g.chord_index == 0:
                            order -= 1
                    else:
                        others.append(g)
                pending = others  # kept in reversed order, as the original does
            out.append(n)
        elif n.print_object:
            rests.append(n)
    return out, rests


def _mark_grace_chords(notes: list) -> None:
    for n in notes:
        if n.preceded_by_grace:
            for m in notes:
                if m.pos == n.pos and m.voice == n.voice and not m.is_grace:
                    m.preceded_by_grace = True


def _merge_ties(notes: list) -> list:
    """A tied-stop note is folded into the latest kept tied-start note of the same pitch, in any voice (Q-TIE)."""
    kept: list = []
    for n in notes:
        if not n.tied_stop:
            kept.append(n)
            continue
        for head in reversed(kept):
            if head.tied_start and head.pitch == n.pitch:
                head.duration += n.duration
                head.slurs.extend(n.slurs)  # Q-SLURTIE: the continuation's slurs move to the head
                break
    return kept


def _mark_overlaps(notes: list) -> None:
    prev_onset = -1
    pitches: list = []
    onset_notes: list = []
    for n in notes:
        if n.is_grace:
            continue
        if n.pos > prev_onset:
            prev_onset = n.pos
            pitches = [n.pitch]
            onset_notes = [n]
        elif n.pitch in pitches:
            other = onset_notes[pitches.index(n.pitch)]
            if other.duration > n.duration:
                n.is_overlapped = True
            else:
                other.is_overlapped = True
        else:
            pitches.append(n.pitch)
            onset_notes.append(n)


def _attach_rests(notes: list, rests: list) -> None:
    """following_rest / followed_by_fermata_rest (apply_rest_to_note), loop bounds included (Q-REST)."""
    positions = [n.pos for n in notes]
    count = len(rests)
    merged = []
    for i, rest in enumerate(rests):
        j = 1
        end = rest.pos + rest.duration
        while i + j < count - 1:
            nxt = rests[i + j]
            if nxt.duration == 0:
                break
            if nxt.pos == end and nxt.voice == rest.voice:
                rest.duration += nxt.duration
                nxt.duration = 0
                end = rest.pos + rest.duration
                if nxt.is_fermata:
                    rest.is_fermata = True
            elif nxt.pos > end:
                break
            j += 1
        if rest.duration != 0:
            merged.append(rest)
    for rest in merged:
        k = binary_index(positions, rest.pos)
        while k >= 0:
            prev = notes[k]
            if prev.voice == rest.voice:
                prev_end = prev.pos + prev.duration
                if prev_end == rest.pos:
                    prev.following_rest = rest.duration
                    if rest.is_fermata:
                        prev.followed_by_fermata_rest = True
                elif prev_end < rest.pos:
                    break
            k -= 1


def _drop_invisible_and_move_trills(notes: list) -> list:
    """Remove print-object="no" notes and move trill marks to the highest note of the onset (omit_trill_notes).

    Wavy-line trill extensions (which the original turns into duration changes and deletions) are not supported.
    """
    count = len(notes)
    hidden_trills = []
    for i, n in enumerate(notes):
        if not n.print_object and n.is_trill:
            hidden_trills.append((n.pos, n.pitch))
        if n.has_wavy_line:
            raise UnsupportedScoreError("wavy-line trill extensions are not supported")
        if n.is_trill:
            same = []
            k = i
            while k + 1 < count and notes[k + 1].pos == n.pos:
                k += 1
                same.append(notes[k])
            k = i
            while k - 1 >= 0 and notes[k - 1].pos == n.pos:
                k -= 1
                same.append(notes[k])
            for other in same:
                if other.voice == n.voice and other.pitch > n.pitch and not other.is_grace:
                    n.is_trill = False
                    other.is_trill = True
    notes = [n for n in notes if n.print_object]
    for pos, pitch in hidden_trills:
        for n in notes:
            if n.pos == pos and abs(n.pitch - pitch) < 4 and not n.is_grace:
                n.is_trill = True
                break
    return notes


def _apply_slurs(notes: list) -> None:
    """Slur start/continue/stop flags (extract_and_apply_slurs)."""
    resolved: list = []
    open_slurs: list = []
    for n in notes:
        if not n.slurs:
            continue
        for slur in list(reversed(n.slurs)):
            slur.pos = n.pos
            slur.voice = n.voice
            if slur.kind == "start":
                open_slurs.append(slur)
                n.slur_start = True
            elif slur.kind == "stop":
                n.slur_stop = True
                for prev in open_slurs:
                    if prev.number == slur.number and prev.voice == slur.voice:
                        prev.end = slur.pos
                        resolved.append(prev)
                        open_slurs.remove(prev)
                        n.slurs.remove(slur)
                        n.slurs.append(prev)
                        break
    for n in notes:
        if n.slurs:
            continue
        for slur in resolved:
            if slur.voice == n.voice and slur.pos <= n.pos <= slur.end:
                n.slurs.append(slur)
                if slur.pos == n.pos:
                    n.slur_start = True
                elif slur.end == n.pos:
                    n.slur_stop = True
                else:
                    n.slur_continue = True


def beat_positions(score: Score) -> list:
    """The beat grid (MusicXMLDocument.get_beat_positions), implicit-measure rules included."""
    beats: list = []
    measures = score.measures
    sig_pos = [s.pos for s in score.time_signatures]
    for i, m in enumerate(measures):
        sig = score.time_signatures[binary_index(sig_pos, m.start)]
        full = sig.divisions * sig.numerator / sig.denominator * 4
        if i < len(measures) - 1:
            actual = measures[i + 1].start - m.start
        else:
            if not m.notes:
                raise UnsupportedScoreError("the last measure is empty")
            actual = max(n.pos + n.duration - m.start for n in m.notes)
        count = {6: 2, 9: 3, 12: 4, 18: 3, 24: 4}.get(sig.numerator, sig.numerator)
        step = full / count
        implicit = m.implicit or actual != full
        if implicit:
            count = int(math.ceil((actual / full) / (1 / count)))
            if i == 0:
                if len(measures) < 2:
                    raise UnsupportedScoreError("a one-measure pickup score is not supported")
                for j in range(-count, 0):
                    beat = measures[1].start + j * step
                    if not beats or beat > beats[-1]:
                        beats.append(beat)
            else:
                for j in range(count):
                    beat = m.start + j * step
                    if beat > beats[-1]:
                        beats.append(beat)
        else:
            for j in range(count):
                beats.append(m.start + j * step)
    return beats
