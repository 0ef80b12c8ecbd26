"""Praat TextGrids: read the text formats and find the phone and word tiers.

``read_textgrid`` reads the long, short and chronological text formats (UTF-8 with or without
BOM, UTF-16, else Latin-1) into tiers of (start, end, label) in file order, checking what it
reads: a damaged or truncated file is a ``DatasetError`` naming the file and line.
``identify_tiers`` tells the phone tier from the word tier by name or content, and
``is_noise`` the labels that are not words (silences, breaths, noise tokens).
"""

import codecs
import logging
import re
from pathlib import Path

import run_utils
from run_utils import DatasetError

logger = logging.getLogger(__name__)

# Word-tier labels that are not words (compared lower-cased, braces stripped).
NOISE_LABELS = frozenset({"", "sp", "br", "lg", "ls", "ns", "cg", "sil", "sentence_start",
                          "sentence_end"})
# The 39 phones of the CMU pronouncing dictionary (ARPAbet without stress digits).
ARPABET_PHONES = ("AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY",
                  "F", "G", "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P",
                  "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH")
# A tier is a phone tier by content when at least this fraction of its non-noise labels are
# ARPAbet phones (a word tier has a few: "uh", "ah").
PHONE_TIER_MIN_FRACTION = 0.5
TIME_TOLERANCE_S = 1e-6  # times closer than this are the same (rounding of the stored text)
PHONE_TIER_NAMES = frozenset({"phone", "phones"})
WORD_TIER_NAMES = frozenset({"word", "words"})


_TEXTGRID_TOKEN = re.compile(r"""
      "(?P<string>(?:[^"]|"")*)"
    | (?P<unterminated>")
    | (?P<flag><exists>|<absent>)
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    | ![^\n]*                      # comment (chronological format)
    | \[[^\]\n]*\]                 # item [3]: index of the long format
    | [A-Za-z_][\w?:]*            # key of the long format (xmin, tiers?, intervals:, ...)
    | \S
""", re.VERBOSE)


class _Tokens:
    """Values of a Praat text file (strings, numbers, flags) read one at a time."""

    def __init__(self, text, path):
        self.text = text
        self.path = path
        self.items = []
        for match in _TEXTGRID_TOKEN.finditer(text):
            if match.group("unterminated") is not None:
                raise DatasetError(f"{self._where(match.start())}: unterminated string; the file "
                                   "is damaged")
            for kind in ("string", "flag", "number"):
                if match.group(kind) is not None:
                    value = match.group(kind)
                    if kind == "string":
                        value = value.replace('""', '"')
                    self.items.append((kind, value, match.start()))
        self.position = 0

    def _where(self, offset):
        return f"{self.path}:{self.text.count(chr(10), 0, offset) + 1}"

    def _take(self, kind):
        if self.position >= len(self.items):
            raise DatasetError(f"{self.path}: file ends early (expected a {kind}); the file is "
                               "truncated or not a Praat TextGrid")
        found, value, offset = self.items[self.position]
        if found != kind:
            raise DatasetError(f"{self._where(offset)}: expected a {kind}, found {value!r}; the "
                               "file is damaged or not a Praat TextGrid")
        self.position += 1
        return value

    def string(self):
        return self._take("string")

    def number(self):
        return float(self._take("number"))

    def integer(self):
        value = self.number()
        if value != int(value) or value < 0:
            raise DatasetError(f"{self.path}: expected a count, found {value}")
        return int(value)

    def at_end(self):
        return self.position >= len(self.items)

    def flag(self):
        """The next value if it is an ``<exists>``/``<absent>`` flag (consumed), else None."""
        if not self.at_end() and self.items[self.position][0] == "flag":
            self.position += 1
            return self.items[self.position - 1][1]
        return None


def _decode_praat_text(raw, path):
    """Decode a Praat text file: UTF-8 with or without BOM, UTF-16 with BOM, else Latin-1."""
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8):].decode("utf-8")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path}: damaged UTF-16 text ({err.reason}); the file is "
                               "truncated or corrupt") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("%s is not UTF-8; reading it as Latin-1", path)
        return raw.decode("latin-1")


def parse_textgrid(text, path="<string>"):
    """Parse the text of a Praat TextGrid (long, short or chronological text format).

    Returns
    -------
    dict tier name -> list of (start, end, label), tiers and entries in file order. Point
    tiers give (time, time, mark). A repeated tier name gets a suffix: ``"word#2"``.
    """
    return _parse_textgrid(text, path)[1]


def _parse_textgrid(text, path):
    """``parse_textgrid`` that also returns the TextGrid's ``xmax``: (xmax seconds, tiers)."""
    tokens = _Tokens(text.lstrip("\ufeff"), path)
    header = tokens.string() if not tokens.at_end() else ""
    tiers = []
    if header == "Praat chronological TextGrid text file":
        xmin, xmax = tokens.number(), tokens.number()
        n_tiers = tokens.integer()
        ends = []
        for _ in range(n_tiers):
            kind, name = tokens.string(), tokens.string()
            tokens.number()
            ends.append(tokens.number())
            tiers.append((kind, name, []))
        while not tokens.at_end():
            index = tokens.integer()
            if not 1 <= index <= n_tiers:
                raise DatasetError(f"{path}: entry for tier {index} but the file has {n_tiers} tiers")
            kind, _, entries = tiers[index - 1]
            start = tokens.number()
            end = tokens.number() if kind == "IntervalTier" else start
            entries.append((start, end, tokens.string()))
        # This format has no entry counts: a file cut at a line end is caught by interval
        # tiers that stop before their declared end (Praat's interval tiers tile it).
        for (kind, name, entries), end in zip(tiers, ends):
            reached = max((entry[1] for entry in entries), default=0)
            if kind == "IntervalTier" and (not entries or abs(reached - end) > TIME_TOLERANCE_S):
                raise DatasetError(f"{path}: tier {name!r} stops at {reached} s but should reach "
                                   f"{end} s; the file is truncated")
    elif header.startswith("ooTextFile"):
        if tokens.string() != "TextGrid":
            raise DatasetError(f"{path}: a Praat text file but not a TextGrid")
        xmin, xmax = tokens.number(), tokens.number()
        has_tiers = tokens.flag() != "<absent>"
        for _ in range(tokens.integer() if has_tiers else 0):
            kind, name = tokens.string(), tokens.string()
            tokens.number(), tokens.number()
            entries = []
            for _ in range(tokens.integer()):
                start = tokens.number()
                end = tokens.number() if kind == "IntervalTier" else start
                entries.append((start, end, tokens.string()))
            tiers.append((kind, name, entries))
    else:
        raise DatasetError(f"{path}: not a Praat TextGrid in text format (first value "
                           f"{header!r}); binary TextGrids must be saved as text from Praat")
    return xmax, run_utils.unique_names(
        (name, _in_time_order(name, entries, (min(xmin, 0), xmax), path))
        for _, name, entries in tiers)


def _in_time_order(name, entries, span, path):
    """A tier's entries in time order, checked: no time outside the file's ``span`` (from 0,
    or an earlier xmin, to xmax) or below 0, no interval that ends before it starts, no two
    intervals that overlap (Praat's tiers tile time). The stored order is not trusted: a tier
    written out of order is read in time order."""
    ordered = sorted(entries, key=lambda entry: (entry[0], entry[1]))
    low, high = span[0] - TIME_TOLERANCE_S, span[1] + TIME_TOLERANCE_S
    for start, end, label in ordered:
        if start < 0 or end < start or start < low or end > high:
            raise DatasetError(f"{path}: tier {name!r} has {label!r} from {start} s to {end} s, "
                               f"outside the file's 0-{span[1]} s or ending before it starts: "
                               "the file is damaged, get it again")
    for before, after in zip(ordered, ordered[1:]):
        if after[0] < before[1] - TIME_TOLERANCE_S:
            raise DatasetError(f"{path}: tier {name!r}: {before[2]!r} ({before[0]}-{before[1]} s) "
                               f"overlaps {after[2]!r} ({after[0]}-{after[1]} s); a tier's "
                               "intervals follow each other: the file is damaged, get it again")
    if ordered != entries:
        logger.warning("%s: tier %r is stored out of time order; read in time order", path, name)
    return ordered


def read_textgrid(path):
    """Read a Praat TextGrid file: (xmax seconds, dict tier name -> list of (start, end, label)
    in file order).

    Long, short and chronological text formats; UTF-8 with or without BOM, or UTF-16.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read TextGrid ({err.strerror})") from None
    return _parse_textgrid(_decode_praat_text(raw, path), path)


def load_textgrid(path):
    """Read a Praat TextGrid file: dict tier name -> list of (start, end, label) in file order."""
    return read_textgrid(path)[1]


def is_noise(label):
    """Whether a tier label is not a word or phone: empty, a silence, breath or noise token."""
    return label.strip().lower().strip("{}").strip() in NOISE_LABELS


def _phone_fraction(entries):
    """Fraction of a tier's non-noise labels that are ARPAbet phones (stress digit allowed)."""
    labels = [label.strip().upper() for _, _, label in entries if not is_noise(label)]
    phones = sum(re.sub(r"[012]$", "", label) in ARPABET_PHONES for label in labels)
    return phones / len(labels) if labels else 0.0


def _role_by_name(name):
    """"phone", "word" or None from a tier's name (case and surrounding spaces ignored)."""
    name = name.strip().lower()
    return "phone" if name in PHONE_TIER_NAMES else "word" if name in WORD_TIER_NAMES else None


def identify_tiers(grid, path):
    """The phone and word tiers of a TextGrid: (phone entries, word entries).

    A tier named phone/phones or word/words (any case) takes that role; otherwise content
    decides: the phone tier is one whose labels are mostly ARPAbet phones, else the one with
    more intervals, and the word tier is one whose labels are not. When the tier read as
    phones is not mostly phones but the tier read as words is, the tiers look swapped: a
    DatasetError naming ``path``.
    """
    if len(grid) < 2:
        raise DatasetError(f"{path}: {len(grid)} tier(s), expected a phone tier and a word tier")
    phone_like = {name: _phone_fraction(entries) >= PHONE_TIER_MIN_FRACTION
                  for name, entries in grid.items()}
    named = {role: next((n for n in grid if _role_by_name(n) == role), None)
             for role in ("phone", "word")}
    phone = named["phone"] or max((n for n in grid if n != named["word"]),
                                  key=lambda n: (phone_like[n], len(grid[n])))
    word = named["word"] or max((n for n in grid if n != phone),
                                key=lambda n: (not phone_like[n], len(grid[n])))
    if phone_like[word] and not phone_like[phone]:
        raise DatasetError(
            f"{path}: the tiers look swapped: tier {phone!r}, read as phones, holds words and "
            f"tier {word!r}, read as words, holds ARPAbet phones; name the phone tier 'phone' "
            "and the word tier 'word' (or get the TextGrid again)")
    return grid[phone], grid[word]

