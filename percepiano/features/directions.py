"""Direction words and marks → per-note dynamic / tempo state and their small embeddings.

The keyword lists and the embedding values are facts of the original (``xml_direction_encoding``), carried over in
our own form; the passes are written from its behaviour (``get_dynamics``, ``get_tempos``,
``xml_utils.apply_directions_to_notes``, ``dynamic_embedding``). Quirks kept (see docs/features.md):

* Q-KEYWORDS: two missing commas in the original's relative-dynamics list make the keywords ``diminsotto voce`` and
  ``rf,sffz`` (so "sotto voce" is never a relative dynamic);
* Q-FP: ``fp``/``ffp``/``sfp`` split into their first part and a ``p`` 0.1 divisions later, appended as (p, f), so the
  absolute-dynamics list is unsorted there and the original bisection (:func:`binary_index`) decides;
* Q-SFDROP: sf-type dynamics move to the relative list and are then dropped, so ``dynamic[2]`` is always 0;
* Q-WEDGE-TEMPO: an active relative *dynamic* moves the "recent tempo" anchor (``distance_from_recent_tempo``).
"""
from __future__ import annotations

import copy

from ._search import binary_index

# -- keyword lists (facts of the original, typos included) --------------------------------------------------------
TEMPO_PRIMO_WORDS = ("tempo i", "tempo primo", "erstes tempo", "1er mouvement", "1er mouvt", "au mouvtdu début",
                     "au mouvement", "au mouvt", "1o tempo")
ABS_TEMPO_KEYWORDS = ("adagio", "grave", "lento", "largo", "larghetto", "andante", "andantino", "moderato",
                      "allegretto", "allegro", "vivace", "accarezzevole", "languido", "tempo giusto", "mesto",
                      "presto", "prestissimo", "maestoso", "lullaby", "doppio movimento", "agitato", "precipitato",
                      "leicht und zart", "aufgeregt", "bewegt", "rasch", "innig", "lebhaft", "geschwind",
                      "d'un rythme souple", "lent", "large", "vif", "animé", "scherzo", "menuetto",
                      "minuetto") + TEMPO_PRIMO_WORDS
REL_TEMPO_KEYWORDS = ("animato", "pesante", "veloce", "agitato", "acc", "accel", "rit", "ritard", "ritardando",
                      "accelerando", "rall", "rallentando", "ritenuto", "string", "a tempo", "im tempo", "stretto",
                      "slentando", "meno mosso", "meno vivo", "più mosso", "allargando", "smorzando",
                      "appassionato", "perdendo", "langsamer", "schneller", "bewegter", "retenu", "revenez",
                      "cédez", "mesuré", "élargissant", "accélerez", "rapide", "reprenez  le  mouvement")
LONG_REL_TEMPO_KEYWORDS = ("meno mosso", "meno vivo", "più mosso", "animato", "langsamer", "schneller", "stretto",
                           "bewegter", "tranquillo", "agitato", "appassionato")
ABS_DYNAMIC_KEYWORDS = ("pppp", "ppp", "pp", "p", "piano", "mp", "mf", "f", "forte", "ff", "fff", "fp", "ffp",
                        "dynamic")
REL_DYNAMIC_KEYWORDS = ("crescendo", "diminuendo", "cresc", "dim", "diminsotto voce", "mezza voce", "sf", "fz",
                        "sfz", "rf,sffz", "rf", "rinf", "con brio", "con forza", "con fuoco", "smorzando",
                        "appassionato", "perdendo")
RELATIVE_MARKERS = ("più", "meno", "plus", "moins", "mehr", "bewegter", "langsamer")
SF_LIKE = ("sf", "fz", "sfz", "sffz", "rf", "rfz")

# -- embedding tables: (keyword, slot, value), in the original's order (duplicates kept: first one wins a lookup) ---
DYNAMIC_TABLE = (
    ("pppp", 0, -1.1), ("ppp", 0, -0.9), ("pp", 0, -0.7), ("piano", 0, -0.4), ("p", 0, -0.4), ("mp", 0, -0.2),
    ("mf", 0, 0.2), ("f", 0, 0.4), ("forte", 0, 0.4), ("ff", 0, 0.7), ("fff", 0, 0.9),
    ("più p", 3, -0.5), ("più piano", 3, -0.5), ("più pp", 3, -0.7), ("più f", 3, 0.5), ("più forte", 3, 0.5),
    ("più forte possibile", 0, 1),
    ("cresc", 1, 0.7), ("crescendo", 1, 0.7), ("allargando", 1, 0.4), ("dim", 1, -0.7), ("diminuendo", 1, -0.7),
    ("decresc", 1, -0.7), ("decrescendo", 1, -0.7), ("smorz", 1, -0.4), ("poco a poco meno f", 1, -0.2),
    ("poco cresc", 1, 0.5), ("più cresc", 1, 0.85), ("molto cresc", 1, 1), ("cresc molto", 1, 1),
    ("fz", 2, 0.3), ("sf", 2, 0.5), ("sfz", 2, 0.7), ("ffz", 2, 0.8), ("sffz", 2, 0.9),
    ("rf", 3, 0.3), ("rinf", 3, 0.3), ("rinforzando", 3, 0.3), ("rinforzando molto", 3, 0.7),
    ("rinforzando assai", 3, 0.6), ("rinforz assai", 3, 0.6), ("molto rin", 3, 0.5),
    ("con brio", 3, 0.3), ("con forza", 3, 0.5), ("con fuoco", 3, 0.7), ("con più fuoco possibile", 3, 1),
    ("sotto voce", 3, -0.5), ("mezza voce", 3, -0.3), ("appassionato", 3, 0.5), ("più rinforz", 3, 0.5),
)
TEMPO_TABLE = (
    ("scherzo", 4, 1), ("menuetto", 4, -1), ("minuetto", 4, -1), ("rit", 2, -0.5), ("acc", 2, 0.5),
    ("lent", 0, -0.9), ("lento", 0, -0.9), ("grave", 0, -0.9), ("largo", 0, -0.7), ("languido", 0, -0.6),
    ("molto languido", 0, -0.7), ("adagio", 0, -0.6), ("larghetto", 0, -0.6), ("adagietto", 0, -0.55),
    ("andante", 0, -0.5), ("andantino", 0, -0.3), ("mesto", 0, -0.3), ("andantino molto", 0, -0.4),
    ("maestoso", 0, -0.2), ("accarezzevole", 0, -0.4), ("moderato", 0, 0), ("tempo giusto", 0, 0.1),
    ("allegretto", 0, 0.3), ("allegro", 0, 0.5), ("allegro assai", 0, 0.6), ("vivace", 0, 0.6),
    ("vivacissimo", 0, 0.8), ("molto vivace", 0, 0.7), ("vivace assai", 0, 0.7), ("presto", 0, 0.8),
    ("precipitato", 0, 0.8), ("prestissimo", 0, 0.9), ("doppio movimento", 0, 0.6), ("molto allegro", 0, 0.6),
    ("allegro molto", 0, 0.6), ("allegro ma non troppo", 0, 0.4), ("più presto possibile", 0, 1),
    ("largo e mesto", 0, -0.8), ("non troppo presto", 0, 0.75), ("andante con moto", 0, -0.4),
    ("allegretto vivace", 0, 0.4), ("adagio molto", 0, -0.9), ("adagio ma non troppo", 0, -0.5),
    ("a tempo", 1, 0), ("im tempo", 1, 0), ("meno mosso", 1, -0.6), ("meno vivo", 1, -0.6), ("più lento", 1, -0.5),
    ("animato", 1, 0.5), ("più animato", 1, 0.6), ("molto animato", 1, 0.8), ("agitato", 1, 0.4),
    ("più mosso", 1, 0.6), ("stretto", 1, 0.5), ("appassionato", 1, 0.2), ("più moderato", 1, -0.1),
    ("più allegro", 1, 0.8), ("più allegro quasi presto", 1, 1), ("più largo", 1, -0.5),
    ("poco meno mosso", 1, -0.3), ("poco più mosso", 1, 0.3), ("poco più vivace", 1, 0.3),
    ("molto agitato", 1, 0.8), ("tranquillo", 1, -0.2), ("meno adagio", 1, 0.2), ("più adagio", 1, -0.2),
    ("riten", 3, -0.5), ("ritenuto", 3, -0.5), ("più riten", 3, -0.7), ("poco riten", 3, -0.3),
    ("poco ritenuto", 3, -0.3),
    ("très grave", 0, -1), ("très lent", 0, -1), ("large", 0, -0.7),
    ("Assez doux, mais d'une sonoritè large", 0, -0.6), ("assez vif", 0, 0.6), ("assez animé", 0, 0.7),
    ("d'un rythme souple", 0, 0),
    ("un peau retenu", 1, -0.3), ("retenez", 1, -0.5), ("en élargissant beaucoup", 2, -0.4),
    ("plus lent", 1, -0.5), ("un peu plus lent", 1, -0.3), ("encore plus lent", 1, -0.5), ("cédez", 1, -0.4),
    ("un peu retenu", 1, -0.2), ("Un pe moins vif", 1, -0.2), ("cédez légèrement", 1, -0.2), ("mesuré", 1, 0),
    ("au mouvt", 1, 0), ("reprenez le mouvement", 1, 0), ("Un peu plus vif", 1, 0.2), ("en accélérant", 1, 0.3),
    ("en animant", 1, 0.6), ("rapide", 1, 0.6), ("rapido molto", 1, 0.8),
    ("accélerez", 2, 0.5), ("sans ralentir", 2, 0.01),
    ("sehr langsam", 0, -0.55), ("sehr innig", 0, -0.5), ("innig", 0, -0.4), ("leicht und zart", 0, 0.2),
    ("sehr lebhaft", 0, 0.6), ("sehr aufgeregt", 0, 0.6), ("sehr rasch", 0, 0.8),
    ("Sehr innig und nicht zu rasch", 0, -0.8), ("lebhaftig", 0, 0.5), ("nicht zu geschwind", 0, -0.3),
    ("langsamer", 1, -0.5), ("etwas langsamer", 1, -0.3), ("bewegter", 1, 0.4), ("schneller", 1, 0.5),
    ("allargando", 2, -0.2), ("ritardando", 2, -0.5), ("rit", 2, -0.5), ("ritar", 2, -0.5),
    ("rallentando", 2, -0.5), ("rall", 2, -0.5), ("slentando", 2, -0.3), ("accel", 2, 0.5),
    ("accelerando", 2, 0.5), ("smorz", 2, -0.5), ("string", 2, 0.4), ("stringendo", 2, 0.4),
    ("molto stringendo", 2, 0.7), ("stringendo molto", 2, 0.7), ("poco rall", 2, -0.3), ("poco rit", 2, -0.3),
)


def normalize_words(text: str | None) -> str | None:
    """Lower case; ',' '.' and newlines become spaces; brackets go; one pass of double-space squeezing."""
    if not text:
        return None
    return (text.replace(",", " ").replace(".", " ").replace("\n", " ").replace("(", "").replace(")", "")
            .replace("  ", " ").lower())


def _matches(d, keywords) -> bool:
    if d.type in keywords:
        return True
    if d.type == "words" and d.content is not None:
        word = normalize_words(d.content)
        if word is None:  # an empty <words/>: the original would fail on it; we treat it as no match
            return False
        if word in keywords:
            return True
        if any(w in keywords for w in word.split(" ")):
            return True
        return any(len(k) > 2 and k in word for k in keywords)
    return False


def _select(directions, keywords) -> list:
    return [d for d in directions if _matches(d, keywords)]


def _split_relative_words(directions) -> tuple:
    absolute, relative = [], []
    for d in directions:
        word = normalize_words(d.content) or ""
        (relative if any(m in word for m in RELATIVE_MARKERS) else absolute).append(d)
    return absolute, relative


def _contains(seq, item) -> bool:
    return any(x is item for x in seq)


def dynamics(directions, sort_absolute: bool = False) -> tuple:
    """(absolute, relative) dynamics, with relative ends set (get_dynamics); ``sort_absolute`` fixes Q-FP."""
    absolute = _select(directions, ABS_DYNAMIC_KEYWORDS)
    relative = _select(directions, REL_DYNAMIC_KEYWORDS)
    kept = []
    for d in absolute:
        split = {"fp": "f", "ffp": "ff", "sfp": "sf"}.get(d.content)
        if split is not None:
            d.content = split
            second = copy.copy(d)
            second.pos = d.pos + 0.1
            second.content = "p"
            kept.append(second)  # Q-FP: appended before its first part
        if d.content in SF_LIKE:
            relative.append(d)
        else:
            kept.append(d)
    absolute, moved = _split_relative_words(kept)
    if sort_absolute:
        absolute.sort(key=lambda d: d.pos)
    relative = [d for d in relative + moved if not _contains(absolute, d)]
    relative.sort(key=lambda d: d.pos)
    relative = _merge_wedges(relative)
    abs_pos = [d.pos for d in absolute]
    for i, rel in enumerate(relative):
        index = binary_index(abs_pos, rel.pos) if absolute else 0
        if rel.end is None and i + 1 < len(relative):
            rel.end = relative[i + 1].pos
        if absolute and rel.end is not None and index < len(absolute) - 1 and absolute[index + 1].pos < rel.end:
            rel.end = abs_pos[index + 1]
        if rel.end is None:
            rel.end = float("inf")
    return absolute, relative


def _merge_wedges(directions) -> list:
    for i, d in enumerate(directions):
        if d.type in ("crescendo", "diminuendo", "pedal") and d.content == "stop":
            for j in range(i - 1, -1, -1):
                prev = directions[j]
                if prev.type == d.type and prev.content == "start" and prev.staff == d.staff:
                    prev.end = d.pos
                    break
    return [d for d in directions
            if (d.type in ("crescendo", "diminuendo", "pedal") and d.content != "stop") or d.type == "words"]


def tempos(directions) -> tuple:
    """(absolute, relative) tempo directions, with relative ends set (get_tempos). Run after :func:`dynamics`."""
    absolute = _select(directions, ABS_TEMPO_KEYWORDS)
    relative = _select(directions, REL_TEMPO_KEYWORDS)
    long_rel = _select(directions, LONG_REL_TEMPO_KEYWORDS)
    if (not absolute or absolute[0].pos != 0) and long_rel and long_rel[0].pos == 0:
        absolute.insert(0, long_rel[0])
    relative = [d for d in relative if not _contains(absolute, d)]
    long_rel = [d for d in long_rel if not _contains(absolute, d)]
    absolute, moved = _split_relative_words(absolute)
    relative += moved
    long_rel += moved
    relative.sort(key=lambda d: d.pos)
    abs_pos = [d.pos for d in absolute]
    for d in absolute:
        if any(w in d.content.lower() for w in TEMPO_PRIMO_WORDS):
            d.content = absolute[0].content
    n = len(relative)
    for i, rel in enumerate(relative):
        is_long = _contains(long_rel, rel)
        if not is_long and i + 1 < n:
            rel.end = relative[i + 1].pos
        elif is_long:
            for nxt in relative[i + 1:]:
                if _contains(long_rel, nxt):
                    rel.end = nxt.pos
                    break
        if absolute:
            index = binary_index(abs_pos, rel.pos)
            if index + 1 < len(absolute) and (rel.end is None or rel.end > abs_pos[index + 1]):
                rel.end = abs_pos[index + 1]
        if rel.end is None:
            rel.end = float("inf")
    return absolute, relative


def apply_directions(notes, directions, time_signatures, sort_absolute: bool = False) -> None:
    """Per-note absolute/relative dynamics and tempi and the governing time signature (apply_directions_to_notes)."""
    abs_dyn, rel_dyn = dynamics(directions, sort_absolute)
    abs_tmp, rel_tmp = tempos(directions)
    dyn_pos = [d.pos for d in abs_dyn]
    tmp_pos = [d.pos for d in abs_tmp]
    sig_pos = [s.pos for s in time_signatures]
    for note in notes:
        pos = note.pos
        if abs_dyn:
            d = abs_dyn[binary_index(dyn_pos, pos)]
            note.dyn_absolute, note.dyn_absolute_pos = d.content, d.pos
        if abs_tmp:
            t = abs_tmp[binary_index(tmp_pos, pos)]
            note.tempo_absolute, note.recent_tempo_pos = t.content, t.pos
        note.time_signature = time_signatures[binary_index(sig_pos, pos)]
        for rel in rel_dyn:
            if rel.pos > pos:
                continue
            if pos < rel.end:
                note.dyn_relative.append(rel)
                if rel.pos > note.recent_tempo_pos:  # Q-WEDGE-TEMPO
                    note.recent_tempo_pos = rel.pos
        if len(note.dyn_relative) > 1:
            _divide_wedges_by_staff(note)
        for rel in rel_tmp:
            if rel.pos > pos:
                continue
            if pos < rel.end:
                note.tempo_relative.append(rel)


def _divide_wedges_by_staff(note) -> None:
    kinds = {d.type for d in note.dyn_relative}
    if "crescendo" in kinds and "diminuendo" in kinds:
        note.dyn_relative = [
            d for d in note.dyn_relative
            if not (d.type in ("crescendo", "diminuendo")
                    and ((d.placement == "above" and note.staff == 2) or (d.placement == "below" and note.staff == 1)))]


def flatten_words(absolute: str | None, relative) -> str:
    words = absolute if absolute is not None else ""
    for rel in relative:
        words = words + " " + (rel.content if rel.type == "words" else rel.type)
    return words


_KEYS: dict = {}


def _keys(table) -> list:
    if id(table) not in _KEYS:
        _KEYS[id(table)] = (table, [k for k, _, _ in table])  # keep the table alive with its key list
    return _KEYS[id(table)][1]


def embed(text: str | None, table, size: int) -> list:
    """The original's keyword embedding (dynamic_embedding): whole phrase, else tokens + long substrings."""
    vec = [0] * size
    keys = _keys(table)
    word = normalize_words(text)
    if word is None:
        return vec
    if word in keys:
        _, slot, value = table[keys.index(word)]
        vec[slot] = value
        return vec
    applied = [w for w in word.split(" ") if w in keys]
    applied += [k for k in keys if len(k) > 4 and k in word]
    for w in applied:
        if any(len(w) > 4 and w != other and w in other for other in applied):
            continue
        _, slot, value = table[keys.index(w)]
        vec[slot] = value
    return vec
