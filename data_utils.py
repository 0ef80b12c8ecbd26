"""Read the Moth Radio Hour fMRI dataset (OpenNeuro ds003020) exactly as it lies on disk.

Layout (SPEC section 3)::

    <data_dir>/stimuli/<story>.wav
    <data_dir>/derivative/respdict.json                      story -> TRs acquired
    <data_dir>/derivative/TextGrids/<story>.TextGrid          phone tier, word tier
    <data_dir>/derivative/preprocessed_data/UTS0N/<story>.hf5 dataset "data" (rows, voxels)

``derivatives/`` is accepted in place of ``derivative/``. The WAV must cover the story
(``stimulus_problem``) and the TextGrid tiers are found by name or content
(``identify_tiers``). ``check_run_inputs`` checks all a run needs from headers, quickly.

Timing: the standard (simulated) TR grid of a story has ``N = respdict[story] - 5`` TRs of
2 s; TR ``k`` starts ``2k - 10`` s after story onset and its centre is ``2k - 9`` s. Response
row ``i`` of the ``.hf5`` files is grid TR ``i + 10`` (10 TRs trimmed at the start, 5 at the
end, so rows = respdict - 20). Measured trigger times from ``.report`` files or from the
``trfiles_huge.jbl`` pickle of Antonello et al. can be used instead (``tr_source``).

Run ``python data_utils.py check --data_dir D`` to check a downloaded copy of the dataset.
"""

import argparse
import bz2
import codecs
import collections
import contextlib
import functools
import gzip
import io
import json
import logging
import lzma
import pickle
import re
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import soundfile as sf
import soxr

import run_utils

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000  # Hz: every model here takes 16 kHz audio
TR_SECONDS = 2.0
SIMULATED_SOUND_START = 10.0  # seconds of scanner time before the story starts
RESPDICT_PAD_TRS = 5  # respdict counts 5 TRs more than the simulated grid
TRIM_START_TRS = 10  # response row 0 is grid TR 10
TRIM_END_TRS = 5
RESPONSE_ROWS_OFFSET = 20  # rows = respdict - 20
REPORT_EXPECTED_TR = 2.0045

TEST_STORY = "wheretheressmoke"
VALIDATION_STORIES = ("stagefright",)
TRAIN_STORIES = (
    "souls", "howtodraw", "alternateithicatom", "hangtime", "swimmingwithastronauts",
    "eyespy", "itsabox", "myfirstdaywiththeyankees", "legacy", "theclosetthatateeverything",
    "haveyoumethimyet", "thatthingonmyarm", "undertheinfluence", "avatar", "tildeath", "naked",
    "fromboyhoodtofatherhood", "adollshouse", "odetostepfather", "adventuresinsayingyes",
    "sloth", "exorcism", "buck", "inamoment",
)
# Word-tier labels that are not words (compared lower-cased, braces stripped).
NOISE_LABELS = frozenset({"", "sp", "br", "lg", "ls", "ns", "cg", "sil", "sentence_start",
                          "sentence_end"})
TR_SOURCES = ("respdict", "report", "trfiles")
HDF5_BLOCK_BYTES = 64 * 2**20
# The stimulus must reach the end of the last response row's TR, at most this much earlier ...
AUDIO_SHORT_TOLERANCE_S = TR_SECONDS
# ... and may not run past the end of the TR grid by more than this (real WAVs end within
# -2.0..+0.3 s of it) ...
AUDIO_LONG_TOLERANCE_S = TR_SECONDS
# ... nor differ from the TextGrid's xmax by more than this.
TEXTGRID_AUDIO_TOLERANCE_S = TR_SECONDS
# The 39 phones of the CMU pronouncing dictionary (ARPAbet without stress digits).
ARPABET_PHONES = ("AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY",
                  "F", "G", "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P",
                  "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH")
# A tier is a phone tier by content when at least this fraction of its non-noise labels are
# ARPAbet phones (a word tier has a few: "uh", "ah").
PHONE_TIER_MIN_FRACTION = 0.5
PHONE_TIER_NAMES = frozenset({"phone", "phones"})
WORD_TIER_NAMES = frozenset({"word", "words"})


class DatasetError(run_utils.UserError, ValueError):
    """A problem with the dataset on disk; the message names the file and says the fix."""


# ----------------------------------------------------------------------------- paths

def subject_id(subject):
    """Canonical subject name: ``1``, ``"1"``, ``"01"``, ``"uts01"`` -> ``"UTS01"``."""
    match = re.fullmatch(r"(?:UTS)?0*([1-9]\d?)", str(subject).strip(), flags=re.IGNORECASE)
    if match is None:
        raise DatasetError(f"subject {subject!r} not understood: give a number (1, '1') or a "
                           "name such as 'UTS01'")
    return f"UTS{int(match.group(1)):02d}"


def derivative_dir(data_dir):
    """The ``derivative/`` (or ``derivatives/``) folder of a ds003020 copy."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory; --data_dir must be the ds003020 root "
                           "(the folder that holds stimuli/ and derivative/)")
    for name in ("derivative", "derivatives"):
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root}: no derivative/ (or derivatives/) folder; --data_dir must be the "
                       "ds003020 root (the folder that holds stimuli/ and derivative/)")


def subject_dir(data_dir, subject):
    """``derivative/preprocessed_data/UTS0N`` of a subject; lists the subjects there if absent."""
    base = derivative_dir(data_dir) / "preprocessed_data"
    path = base / subject_id(subject)
    if not path.is_dir():
        found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise DatasetError(f"{path}: no responses for subject {subject_id(subject)}; subjects "
                           f"found: {', '.join(found) or 'none'}")
    return path


def response_path(data_dir, subject, story):
    """Path of a story's ``.hf5`` response file; a clear error naming the stories if absent."""
    path = subject_dir(data_dir, subject) / f"{story}.hf5"
    if not path.is_file():
        stories = list_stories(data_dir, subject)
        raise DatasetError(f"{path}: subject {subject_id(subject)} has no responses for story "
                           f"{story!r}; {len(stories)} stories available: "
                           f"{', '.join(stories[:8])}{' ...' if len(stories) > 8 else ''}")
    return path


def stimulus_path(data_dir, story):
    """Path of ``stimuli/<story>.wav``."""
    path = Path(data_dir) / "stimuli" / f"{story}.wav"
    if not path.is_file():
        raise DatasetError(f"{path}: stimulus WAV of story {story!r} is missing; download "
                           "stimuli/ of ds003020")
    return path


def textgrid_path(data_dir, story):
    """Path of ``derivative/TextGrids/<story>.TextGrid``."""
    path = derivative_dir(data_dir) / "TextGrids" / f"{story}.TextGrid"
    if not path.is_file():
        raise DatasetError(f"{path}: TextGrid of story {story!r} is missing; download "
                           "derivative/TextGrids/ of ds003020")
    return path


def list_stories(data_dir, subject):
    """Sorted names of the stories that have responses (``.hf5`` files) for a subject."""
    return sorted(p.stem for p in subject_dir(data_dir, subject).glob("*.hf5"))


def list_subjects(data_dir):
    """Sorted subject names that have a ``preprocessed_data`` folder."""
    base = derivative_dir(data_dir) / "preprocessed_data"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and re.fullmatch(r"UTS\d\d", p.name))


def load_respdict(data_dir):
    """``derivative/respdict.json``: story -> number of TRs acquired, as stored.

    Only the file is checked here (a JSON object); each entry is checked when it is used
    (``respdict_trs``, ``respdict_problem``), so a bad entry is named.
    """
    path = derivative_dir(data_dir) / "respdict.json"
    try:
        respdict = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; download derivative/respdict.json of ds003020") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err}); download it again") from None
    if not isinstance(respdict, dict):
        raise DatasetError(f"{path}: expected a JSON object mapping story names to TR counts, "
                           f"found a JSON {type(respdict).__name__}; download it again")
    return respdict


def respdict_problem(data_dir, respdict, story):
    """What is wrong with a story's respdict entry (one line naming it), or None if usable.

    A usable entry is a JSON integer that leaves at least one response row (>= 21).
    """
    path = derivative_dir(data_dir) / "respdict.json"
    if story not in respdict:
        return (f"{path}: no entry for story {story!r}; check the story name or download "
                "respdict.json again")
    where, value = f"{path}: entry {story!r}", respdict[story]
    if not isinstance(value, int) or isinstance(value, bool):
        return (f"{where} is {json.dumps(value)}, not a whole number of TRs; write the TR count "
                "as an integer (or download respdict.json again)")
    if value - RESPONSE_ROWS_OFFSET < 1:
        return (f"{where} is {value} TRs, which leaves {value - RESPONSE_ROWS_OFFSET} response "
                f"rows (rows = TRs - {RESPONSE_ROWS_OFFSET}); it must be at least "
                f"{RESPONSE_ROWS_OFFSET + 1}: download respdict.json again")
    return None


def respdict_trs(data_dir, story):
    """TRs acquired for a story according to ``respdict.json`` (a checked integer >= 21)."""
    respdict = load_respdict(data_dir)
    problem = respdict_problem(data_dir, respdict, story)
    if problem:
        raise DatasetError(problem)
    return respdict[story]


def response_rows(data_dir, story):
    """Rows of a story's response matrix: ``respdict[story] - 20``."""
    return respdict_trs(data_dir, story) - RESPONSE_ROWS_OFFSET


def load_target_features(path, data_dir, stories, tr_source=None):
    """Feature targets of a ``target_features.py`` file (the trainer's ``--target_features``,
    the evaluator's ``--semantic_features``): story -> (response rows, features) float32.

    Each story must have one (response rows, features) dataset, all of the same width; a file
    made on another TR timing than ``tr_source`` (when given) is read with a warning."""
    features = {}
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: unreadable target-features file ({err}); make it with "
                           "target_features.py") from None
    with handle:
        made_with = json.loads(handle.attrs.get("settings", "{}")).get("tr_source", tr_source)
        if tr_source is not None and made_with != tr_source:
            logger.warning("%s was made on the %s TR timing and is read for the %s one; make "
                           "it with --tr_source %s", path, made_with, tr_source, tr_source)
        for story in stories:
            if story not in handle:
                raise DatasetError(f"{path}: no dataset for story {story!r}; make the file "
                                   "again with that story (target_features.py --stories)")
            rows = response_rows(data_dir, story)
            if handle[story].ndim != 2 or handle[story].shape[0] != rows:
                raise DatasetError(f"{path}: dataset {story!r} has shape {handle[story].shape}, "
                                   f"expected ({rows}, features): the story's response rows")
            features[story] = read_columns(handle[story]).astype(np.float32, copy=False)
    widths = {values.shape[1] for values in features.values()}
    if len(widths) > 1:
        raise DatasetError(f"{path}: stories have different feature counts {sorted(widths)}")
    return features


# ----------------------------------------------------------------------------- fMRI

@contextlib.contextmanager
def _open_hdf5(path):
    """Open an HDF5 file for reading; unreadable files and failed reads become DatasetError."""
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: unreadable HDF5 ({err}); the file is incomplete or corrupt, "
                           "download it again") from None
    try:
        with handle:
            yield handle
    except OSError as err:
        raise DatasetError(f"{path}: reading failed ({err}); the file is incomplete or corrupt, "
                           "download it again") from None


def _dataset(handle, name, path, ndim=None):
    """The HDF5 dataset ``name`` (with ``ndim`` axes, if given), or a DatasetError."""
    if name not in handle or not isinstance(handle[name], h5py.Dataset):
        raise DatasetError(f"{path}: no dataset {name!r} (found: {', '.join(handle.keys()) or 'none'})")
    dataset = handle[name]
    if ndim is not None and dataset.ndim != ndim:
        raise DatasetError(f"{path}: dataset {name!r} has shape {dataset.shape}, expected {ndim} axes")
    return dataset


def _voxel_columns(voxels, n_voxels, path):
    """Validate a voxel selection (indices or boolean mask) against a file's voxel count."""
    if voxels is None:
        return None
    voxels = np.asarray(voxels)
    if voxels.dtype == bool:
        if voxels.shape != (n_voxels,):
            raise DatasetError(f"{path}: boolean voxel mask has shape {voxels.shape} but the file "
                               f"has {n_voxels} voxels; the mask was made for another subject")
        return np.flatnonzero(voxels)
    if voxels.ndim != 1 or not (voxels.size == 0 or np.issubdtype(voxels.dtype, np.integer)):
        raise DatasetError("voxels must be a 1-D array of integer indices or a boolean mask, "
                           f"got dtype {voxels.dtype} and shape {voxels.shape}")
    voxels = voxels.astype(np.intp)
    if voxels.size and (voxels.min() < 0 or voxels.max() >= n_voxels):
        raise DatasetError(f"{path}: voxel indices {voxels.min()}..{voxels.max()} are outside the "
                           f"file's {n_voxels} voxels; the selection was made for another subject")
    return voxels


def read_columns(dataset, columns=None, block_bytes=HDF5_BLOCK_BYTES):
    """``dataset[..., columns]`` as float32 with non-finite values set to 0.

    Reads blocks of rows that span only ``columns.min() .. columns.max()`` and hold at most
    ``block_bytes``, so memory stays at the float32 output plus one block: the full float64
    matrix is never loaded when a subset of voxels is asked for.

    Parameters
    ----------
    dataset : h5py.Dataset (or array-like with ``shape``, ``dtype`` and slicing), >= 2 axes
    columns : (n_selected,) int array or None (all columns)
    """
    shape = dataset.shape
    n_rows, n_columns = shape[-2], shape[-1]
    if columns is None:
        first, stop, take = 0, n_columns, None
    elif len(columns) == 0:
        return np.zeros(shape[:-1] + (0,), np.float32)
    else:
        first, stop = int(columns.min()), int(columns.max()) + 1
        take = columns - first
    out = np.empty(shape[:-1] + (n_columns if take is None else len(take),), np.float32)
    rows_per_block = max(1, block_bytes // (dataset.dtype.itemsize * (stop - first)))
    for lead in np.ndindex(*shape[:-2]):
        for row in range(0, n_rows, rows_per_block):
            rows = slice(row, min(row + rows_per_block, n_rows))
            block = np.asarray(dataset[lead + (rows, slice(first, stop))])
            out[lead + (rows,)] = block if take is None else block[:, take]
    out[~np.isfinite(out)] = 0.0
    return out


def load_fmri(data_dir, subject, story, voxels=None):
    """Responses of a subject to a story.

    Parameters
    ----------
    voxels : None, (n_selected,) int indices or (n_voxels,) bool mask
        Only these columns are read from the float64 file.

    Returns
    -------
    (rows, n_selected) float32, NaN -> 0. Row ``i`` is grid TR ``i + 10``.
    """
    path = response_path(data_dir, subject, story)
    with _open_hdf5(path) as handle:
        dataset = _dataset(handle, "data", path, ndim=2)
        return read_columns(dataset, _voxel_columns(voxels, dataset.shape[1], path))


def load_repeats(data_dir, subject, story=TEST_STORY, voxels=None):
    """Individual repeats of the test story: (repeats, rows, n_selected) float32, NaN -> 0."""
    path = response_path(data_dir, subject, story)
    with _open_hdf5(path) as handle:
        if "individual_repeats" not in handle:
            raise DatasetError(f"{path}: no 'individual_repeats' dataset; only the test story "
                               f"({TEST_STORY}) was presented several times")
        dataset = _dataset(handle, "individual_repeats", path, ndim=3)
        return read_columns(dataset, _voxel_columns(voxels, dataset.shape[2], path))


def hdf5_shape(path, name="data"):
    """Shape of a dataset in an HDF5 file, read from metadata only."""
    with _open_hdf5(path) as handle:
        return _dataset(handle, name, path).shape


# ----------------------------------------------------------------------------- TextGrids

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
        _, xmax = tokens.number(), tokens.number()
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
            if kind == "IntervalTier" and (not entries or abs(entries[-1][1] - end) > 1e-6):
                raise DatasetError(f"{path}: tier {name!r} stops at "
                                   f"{entries[-1][1] if entries else 0} s but should reach {end} s; "
                                   "the file is truncated")
    elif header.startswith("ooTextFile"):
        if tokens.string() != "TextGrid":
            raise DatasetError(f"{path}: a Praat text file but not a TextGrid")
        _, xmax = tokens.number(), tokens.number()
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
    return xmax, run_utils.unique_names((name, entries) for _, name, entries in tiers)


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


def _is_noise(label):
    return label.strip().lower().strip("{}").strip() in NOISE_LABELS


def _phone_fraction(entries):
    """Fraction of a tier's non-noise labels that are ARPAbet phones (stress digit allowed)."""
    labels = [label.strip().upper() for _, _, label in entries if not _is_noise(label)]
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


def story_textgrid(data_dir, story):
    """A story's TextGrid: (xmax seconds, phone entries, word entries); see ``identify_tiers``."""
    path = textgrid_path(data_dir, story)
    xmax, grid = read_textgrid(path)
    return (xmax, *identify_tiers(grid, path))


def load_words(data_dir, story):
    """Word tier of a story: list of (start, end, word) without empty labels and noise tokens."""
    entries = story_textgrid(data_dir, story)[2]
    return [(start, end, label.strip()) for start, end, label in entries if not _is_noise(label)]


def load_phones(data_dir, story):
    """Phone tier of a story: list of (start, end, ARPAbet phone with stress digit), no silences."""
    entries = story_textgrid(data_dir, story)[1]
    return [(start, end, label.strip()) for start, end, label in entries if not _is_noise(label)]


# ----------------------------------------------------------------------------- TR timing

class TRFile:
    """Scanner trigger times of one story run, in scanner seconds.

    The attribute names are those of the Huth lab's ``TRFile`` so that pickles of it
    (``trfiles_huge.jbl``) load into this class.
    """

    def __init__(self, trtimes, soundstarttime, soundstoptime=-1.0, otherlabels=(),
                 expectedtr=REPORT_EXPECTED_TR):
        self.trtimes = list(trtimes)
        self.soundstarttime = soundstarttime
        self.soundstoptime = soundstoptime
        self.otherlabels = list(otherlabels)
        self.expectedtr = expectedtr

    @classmethod
    def simulated(cls, n_trs, tr=TR_SECONDS, sound_start=SIMULATED_SOUND_START):
        """The standard grid: trigger ``k`` at ``k * tr`` s, sound starting at ``sound_start``."""
        return cls(np.arange(n_trs) * tr, sound_start, expectedtr=tr)

    @classmethod
    def from_report(cls, path, expectedtr=REPORT_EXPECTED_TR):
        """Read a ``.report`` file of ``<time> <label>`` lines; a missed trigger is re-inserted."""
        trtimes, others, start, stop = [], [], None, -1.0
        try:
            lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
        except OSError as err:
            raise DatasetError(f"{path}: cannot read TR report ({err.strerror})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=1)
            try:
                when = float(fields[0])
            except ValueError:
                raise DatasetError(f"{path}:{number}: expected '<time> <label>', found {line!r}") from None
            label = fields[1].strip() if len(fields) > 1 else ""
            if label in ("init-trigger", "trigger"):
                trtimes.append(when)
            elif label == "sound-start":
                start = when
            elif label == "sound-stop":
                stop = when
            else:
                others.append((when, label))
        if start is None or len(trtimes) < 2:
            raise DatasetError(f"{path}: needs a 'sound-start' line and at least two triggers")
        # A gap of more than 1.5 typical TRs means missed triggers: put them back.
        gaps = np.diff(trtimes)
        for missed in np.flatnonzero(gaps > 1.5 * np.median(gaps))[::-1]:
            n_missing = max(1, int(round(gaps[missed] / expectedtr)) - 1)
            trtimes[missed + 1:missed + 1] = [trtimes[missed] + k * expectedtr
                                              for k in range(1, n_missing + 1)]
        return cls(trtimes, start, stop, others, expectedtr)

    @property
    def avgtr(self):
        """Mean trigger spacing in seconds."""
        return float(np.diff(self.trtimes).mean())

    def tr_starts(self):
        """Start of each TR in seconds from story onset, float64 (n_trs,)."""
        return np.asarray(self.trtimes, dtype=np.float64) - float(self.soundstarttime)

    def tr_centres(self):
        """Centre of each TR in seconds from story onset, float64 (n_trs,)."""
        return self.tr_starts() + self.avgtr / 2.0


class _ResearchTextGrid:
    """Stand-in for the research code's ``TextGrid`` class inside ``grids_huge.jbl``."""

    def to_tiers(self):
        return run_utils.unique_names(
            (tier.nameid, [(float(s), float(s if e is None else e), str(label))
                           for s, e, label in _simple_entries(tier)])
            for tier in self.tiers)


class _ResearchTier:
    """Stand-in for the research code's ``Tier`` class inside ``grids_huge.jbl``."""


def _simple_entries(tier):
    for entry in tier.simple_transcript:
        if len(entry) == 2:  # point tier: (time, mark)
            yield entry[0], None, entry[1]
        else:
            yield entry


class _ResearchUnpickler(pickle.Unpickler):
    """Unpickler that maps the research code's classes onto ours and refuses anything else.

    Only the exact (module, name) pairs that pickled lists, dicts, numpy scalars and arrays
    need are allowed, so a pickle cannot reach functions such as ``exec`` or ``os.system``.
    """

    CLASSES = {"TRFile": TRFile, "TextGrid": _ResearchTextGrid, "Tier": _ResearchTier}
    ALLOWED = {
        ("builtins", "object"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"),
        ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "object"),
        ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"),
        ("collections", "OrderedDict"), ("_codecs", "encode"),
        ("numpy", "dtype"), ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if name in self.CLASSES:
            return self.CLASSES[name]
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


# Compressed joblib files are plain compressed pickles; the prefixes are those joblib writes.
_COMPRESSIONS = ((b"\x78", zlib.decompress), (b"\x1f\x8b", gzip.decompress),
                 (b"BZh", bz2.decompress), (b"\xfd7zXZ", lzma.decompress),
                 (b"\x5d\x00\x00", lzma.decompress))


@functools.lru_cache(maxsize=4)
def _load_research_pickle_cached(path, _mtime_ns, _size):
    raw = Path(path).read_bytes()
    if not raw.startswith(b"\x80"):
        for magic, decompress in _COMPRESSIONS:
            if raw.startswith(magic):
                raw = decompress(raw)
                break
    return _ResearchUnpickler(io.BytesIO(raw)).load()


def load_research_pickle(path):
    """Load a joblib/pickle file of the research code (``grids_huge.jbl``, ``trfiles_huge.jbl``).

    Its ``TRFile``, ``TextGrid`` and ``Tier`` classes are mapped onto this module's; any
    other class outside builtins/numpy is refused rather than executed.
    """
    path = Path(path)
    try:
        stat = path.stat()
        return _load_research_pickle_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror or err})") from None
    except (pickle.UnpicklingError, EOFError, zlib.error, lzma.LZMAError, ValueError,
            AttributeError, ImportError, TypeError) as err:
        raise DatasetError(f"{path}: not a readable research pickle ({err}); joblib files written "
                           "with numpy arrays inside are not supported") from None


def load_research_grid(path, story):
    """One story's TextGrid from ``grids_huge.jbl``, as ``load_textgrid`` returns it."""
    grids = load_research_pickle(path)
    if story not in grids:
        raise DatasetError(f"{path}: no TextGrid for story {story!r}")
    return grids[story].to_tiers()


def _default_tr_path(data_dir, tr_source):
    if tr_source == "trfiles":
        candidates = [derivative_dir(data_dir) / "trfiles_huge.jbl", Path(data_dir) / "trfiles_huge.jbl"]
    else:
        candidates = [derivative_dir(data_dir) / "TRfiles", Path(data_dir) / "TRfiles"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise DatasetError(f"tr_source={tr_source!r} needs tr_path (none of "
                       f"{', '.join(map(str, candidates))} exists)")


def load_trfile(data_dir, story, tr_source="respdict", tr_path=None):
    """The TR timing of a story.

    Parameters
    ----------
    tr_source : "respdict" (simulated 2 s grid of ``respdict[story] - 5`` TRs, the standard),
        "report" (``<tr_path>/<story>.report`` or the file itself) or "trfiles" (the
        ``trfiles_huge.jbl`` pickle at ``tr_path``). Pick one and use it for every story: the
        sources drift about 1.3 s apart over a story.
    """
    if tr_source == "respdict":
        return TRFile.simulated(respdict_trs(data_dir, story) - RESPDICT_PAD_TRS)
    if tr_source not in TR_SOURCES:
        raise DatasetError(f"tr_source must be one of {', '.join(TR_SOURCES)}, got {tr_source!r}")
    path = Path(tr_path) if tr_path is not None else _default_tr_path(data_dir, tr_source)
    if tr_source == "report":
        return TRFile.from_report(path / f"{story}.report" if path.is_dir() else path)
    trfiles = load_research_pickle(path)
    if story not in trfiles:
        raise DatasetError(f"{path}: no TR file for story {story!r}")
    trfile = trfiles[story]
    return trfile[0] if isinstance(trfile, (list, tuple)) else trfile


def tr_times(data_dir, story, tr_source="respdict", tr_path=None):
    """Centres of a story's TRs in seconds from story onset, float64 (n_trs,).

    With the default simulated grid, TR ``k`` is centred at ``2k - 9`` s and there are
    ``respdict[story] - 5`` TRs. See ``load_trfile`` for the other sources.
    """
    return load_trfile(data_dir, story, tr_source, tr_path).tr_centres()


# ----------------------------------------------------------------------------- audio

class DatasetAudio(NamedTuple):
    """The audio of one row of a HuggingFace dataset split, read only when needed.

    table : the split's audio column (a ``datasets.Dataset`` whose ``Audio`` feature does not
        decode: each value is ``{"bytes", "path"}``, or a path string)
    column : the column's name
    row : the row's index in ``table``
    split : what the split is called in messages, e.g. ``google/speech_commands [train]``
    split_key : what the split's features are cached by (its fingerprint and files)
    """

    table: object
    column: str
    row: int
    split: str
    split_key: str

    def __str__(self):
        name = Path(self.stored_path()).name
        return f"{self.split} row {self.row}" + (f" ({name})" if name else "")

    def _value(self):
        value = self.table[self.row][self.column]
        return {"bytes": None, "path": value} if isinstance(value, str) else value

    def stored_path(self):
        """The file name the dataset keeps with the audio ("" when none)."""
        return self._value().get("path") or ""

    def sound_file(self):
        """The audio as soundfile reads it: a file object over the stored bytes, or the path
        they came from when the dataset holds none."""
        value = self._value()
        if value.get("bytes"):
            return io.BytesIO(value["bytes"])
        path = value.get("path")
        if path and Path(path).is_file():
            return path
        raise DatasetError(f"{self}: no audio bytes in the dataset, and its path {path!r} is not a "
                           "file here; save the dataset again with the audio embedded")


def audio_identity(audios):
    """What a cache of features of these audios (paths or ``DatasetAudio``) is keyed by: the
    files' paths, sizes and modification times, or each row's split key and index."""
    audios = list(audios)
    if not any(isinstance(audio, DatasetAudio) for audio in audios):
        return run_utils.file_identity(audios)
    keys = sorted({audio.split_key for audio in audios})
    return {"dataset_splits": keys,
            "rows": [[keys.index(audio.split_key), audio.row] for audio in audios]}


def read_audio(path, sampling_rate=SAMPLING_RATE):
    """An audio file (RIFF WAV, NIST SPHERE, FLAC, ...), or a ``DatasetAudio``, as float32 mono
    at ``sampling_rate``: channels averaged, resampled from any rate."""
    # a DatasetAudio's own DatasetError (no bytes, no file) is not a damaged file's
    source = path.sound_file() if isinstance(path, DatasetAudio) else path
    try:
        audio, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable audio ({err}); the file is damaged, get it "
                           "again") from None
    if audio.size == 0:
        raise DatasetError(f"{path}: the audio file holds no samples; get it again")
    mono = audio.mean(axis=1, dtype=np.float32)
    if rate != sampling_rate:
        # soxr directly: librosa.resample's default (soxr_hq, the same numbers) costs seconds
        # of start-up on its first call in a process
        mono = soxr.resample(mono, rate, sampling_rate, quality="HQ")
    return mono.astype(np.float32, copy=False)


def audio_duration(path):
    """Seconds of audio in a file (or a ``DatasetAudio``), from its header only.

    libsndfile counts only the frames the file's bytes hold (a WAV cut short by an
    interrupted download reports its real length, not the length its header claims), so
    this equals ``len(sf.read(path)[0]) / samplerate``.
    """
    try:
        info = sf.info(path.sound_file() if isinstance(path, DatasetAudio) else str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise DatasetError(f"{path}: unreadable audio ({err}); download it again") from None
    if info.frames == 0:
        raise DatasetError(f"{path}: holds no audio; download it again")
    return info.frames / info.samplerate


def _row_tr_starts(trfile, n_rows, story, tr_source):
    """Starts of the TRs of the response rows (grid TRs 10 .. 10 + rows - 1): (rows,) float64."""
    starts = trfile.tr_starts()[TRIM_START_TRS:TRIM_START_TRS + n_rows]
    if len(starts) < n_rows:
        raise DatasetError(f"story {story!r}: the {tr_source} TR timing has "
                           f"{len(trfile.trtimes)} TRs but its {n_rows} response rows need "
                           f"{n_rows + TRIM_START_TRS}")
    return starts


def story_span(data_dir, story, tr_source="respdict", tr_path=None):
    """Where the audio of a story must end, in seconds from story onset: (rows_end, grid_end).

    ``rows_end`` is the end of the last response row's TR (``2 * respdict - 30`` s on the
    simulated grid), ``grid_end`` the end of the TR grid (``2 * respdict - 20`` s).
    """
    trfile = load_trfile(data_dir, story, tr_source, tr_path)
    starts = _row_tr_starts(trfile, response_rows(data_dir, story), story, tr_source)
    return float(starts[-1] + trfile.avgtr), float(trfile.tr_starts()[-1] + trfile.avgtr)


def stimulus_problem(data_dir, story, duration, xmax=None, tr_source="respdict", tr_path=None):
    """What is wrong with a story's audio length (one line naming the WAV), or None.

    The audio (``duration`` s) must reach the end of the last response row's TR (less
    ``AUDIO_SHORT_TOLERANCE_S``), end before the TR grid does (plus
    ``AUDIO_LONG_TOLERANCE_S``) and, when ``xmax`` (the TextGrid's end) is given, end within
    ``TEXTGRID_AUDIO_TOLERANCE_S`` of it.
    """
    wav = Path(data_dir) / "stimuli" / f"{story}.wav"
    rows_end, grid_end = story_span(data_dir, story, tr_source, tr_path)
    if duration < rows_end - AUDIO_SHORT_TOLERANCE_S:
        return (f"{wav}: {duration:.2f} s of audio, but the story's response rows need audio "
                f"until {rows_end:.2f} s ({tr_source} TR timing); the WAV is truncated or "
                "belongs to another story: download it again")
    if duration > grid_end + AUDIO_LONG_TOLERANCE_S:
        return (f"{wav}: {duration:.2f} s of audio, but the story's TR grid ends at "
                f"{grid_end:.2f} s ({tr_source} TR timing); the WAV belongs to another story or "
                "respdict.json to another release: download them again")
    if xmax is not None and abs(duration - xmax) > TEXTGRID_AUDIO_TOLERANCE_S:
        return (f"{wav}: {duration:.2f} s of audio, but its TextGrid "
                f"{derivative_dir(data_dir) / 'TextGrids' / (story + '.TextGrid')} ends at "
                f"{xmax:.2f} s; one of them belongs to another story: download them again")
    return None


def _textgrid_xmax(data_dir, story):
    """The ``xmax`` of a story's TextGrid, or None when the story has no TextGrid file."""
    path = derivative_dir(data_dir) / "TextGrids" / f"{story}.TextGrid"
    return read_textgrid(path)[0] if path.is_file() else None


def load_stimulus(data_dir, story, sampling_rate=SAMPLING_RATE, tr_source="respdict",
                  tr_path=None):
    """A story's audio as float32 mono at ``sampling_rate`` Hz (channels averaged, resampled).

    Audio that does not cover the story (``stimulus_problem``: against the TR timing
    ``tr_source`` and the TextGrid's end, when there is a TextGrid) is a DatasetError naming
    the WAV and both durations. The length checked is that of the decoded samples.
    """
    audio = read_audio(stimulus_path(data_dir, story), sampling_rate)
    problem = stimulus_problem(data_dir, story, len(audio) / sampling_rate,
                               _textgrid_xmax(data_dir, story), tr_source, tr_path)
    if problem:
        raise DatasetError(problem)
    return audio


def tr_window_bounds(data_dir, story, sampling_rate=SAMPLING_RATE, n_delays=4, tr_source="respdict",
                     tr_path=None):
    """Sample range of the audio input of each response row.

    Row ``i`` gets the ``(n_delays + 1) * 2`` s ending at the end of grid TR ``i + 10``.

    Returns
    -------
    starts, stops : (rows,) int64 sample indices from story onset; may lie before 0 or past
        the end of the audio (zero padding). ``stops - starts`` is constant.
    """
    trfile = load_trfile(data_dir, story, tr_source, tr_path)
    starts = _row_tr_starts(trfile, response_rows(data_dir, story), story, tr_source)
    stops = np.round((starts + trfile.avgtr) * sampling_rate).astype(np.int64)
    length = int(round((n_delays + 1) * TR_SECONDS * sampling_rate))
    return stops - length, stops


def slice_windows(audio, starts, length):
    """Windows ``audio[s:s + length]`` for each start, zero outside the audio: (n, length)."""
    starts = np.asarray(starts, dtype=np.int64)
    before = max(0, -int(starts.min())) if starts.size else 0
    after = max(0, int(starts.max()) + length - len(audio)) if starts.size else 0
    padded = np.pad(audio, (before, after))
    view = np.lib.stride_tricks.sliding_window_view(padded, length)
    return view[starts + before]


def tr_audio_windows(data_dir, story, sampling_rate=SAMPLING_RATE, n_delays=4, tr_source="respdict",
                     tr_path=None):
    """Audio input of each response row: float32 (rows, (n_delays + 1) * 2 * sampling_rate).

    Row ``i`` pairs with row ``i`` of ``load_fmri``: the 10 s (default) ending at the end of
    grid TR ``i + 10``, zero-padded before story onset and after its end. Audio that does
    not cover the story is refused (``load_stimulus``).
    """
    audio = load_stimulus(data_dir, story, sampling_rate, tr_source, tr_path)
    starts, stops = tr_window_bounds(data_dir, story, sampling_rate, n_delays, tr_source, tr_path)
    return slice_windows(audio, starts, int(stops[0] - starts[0]))


def load_truth(data_dir):
    """The ground truth that ``synthetic_data.py`` writes next to a synthetic dataset
    (``synthetic_truth.json``): planted voxels, words and their embeddings."""
    path = Path(data_dir) / "synthetic_truth.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing; {data_dir} is not a synthetic dataset written by "
                           "synthetic_data.py")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- check

def _story_problems(data_dir, story, respdict, tr_source, tr_path):
    """Problems with a story's respdict entry, TextGrid and WAV, one line each.

    Reads headers and the TextGrid only (no audio decoding): the entry is usable, the
    TextGrid readable with identifiable phone and word tiers, the WAV readable and as long as
    the story (``stimulus_problem``).
    """
    entry_problem = respdict_problem(data_dir, respdict, story)
    found = [entry_problem] if entry_problem else []
    xmax = None
    try:
        xmax = story_textgrid(data_dir, story)[0]
    except DatasetError as err:
        found.append(str(err))
    try:
        duration = audio_duration(stimulus_path(data_dir, story))
        length_problem = None if entry_problem else stimulus_problem(
            data_dir, story, duration, xmax, tr_source, tr_path)
        found += [length_problem] if length_problem else []
    except DatasetError as err:
        found.append(str(err))
    return found


def _response_shape(data_dir, subject, story, respdict):
    """Shape of a story's response ``data`` from metadata: (shape or None, problem or None).

    A problem when the file is missing or unreadable, ``data`` is not 2-D (shape None) or its
    rows differ from ``respdict - 20`` (shape given).
    """
    try:
        path = response_path(data_dir, subject, story)
        shape = hdf5_shape(path)
    except DatasetError as err:
        return None, str(err)
    if len(shape) != 2:
        return None, f"{path}: 'data' has shape {shape}, expected (rows, voxels)"
    if respdict_problem(data_dir, respdict, story) is None:
        expected = respdict[story] - RESPONSE_ROWS_OFFSET
        if shape[0] != expected:
            return shape, (f"{path}: {shape[0]} rows but respdict.json says {respdict[story]} "
                           f"TRs, so {expected} rows are expected; the file or respdict.json "
                           "is from another release")
    return shape, None


def _voxel_count(data_dir, subject, shapes):
    """The subject's voxel count (the most common one) and a problem line for each story
    whose response file has another: (n_voxels, problems)."""
    counts = collections.Counter(shape[1] for shape in shapes.values())
    n_voxels = counts.most_common(1)[0][0] if counts else 0
    return n_voxels, [f"{subject_dir(data_dir, subject) / (story + '.hf5')}: {shape[1]} voxels "
                      f"but the subject's other stories have {n_voxels}; download the file again"
                      for story, shape in shapes.items() if shape[1] != n_voxels]


def _subject_story_problems(data_dir, subject, stories, respdict, tr_source, tr_path, checked):
    """Problems of a subject's stories, one line each: those of the story files (respdict
    entry, TextGrid, WAV; skipped for stories in ``checked``, which gains these) and those of
    the response files (shape, rows, voxel counts).

    Returns (file problems, response problems, story -> response shape, voxel count)."""
    file_problems, response_problems, shapes = [], [], {}
    for story in dict.fromkeys(stories):
        if story not in checked:
            checked.add(story)
            file_problems += _story_problems(data_dir, story, respdict, tr_source, tr_path)
        shape, problem = _response_shape(data_dir, subject, story, respdict)
        response_problems += [problem] if problem else []
        if shape is not None:
            shapes[story] = shape
    n_voxels, voxel_problems = _voxel_count(data_dir, subject, shapes)
    return file_problems, response_problems + voxel_problems, shapes, n_voxels


def check_run_inputs(data_dir, subject, stories, tr_source="respdict", tr_path=None):
    """Check every input a run on ``stories`` needs, from metadata and headers only.

    For each story: its respdict entry, its response file (readable, 2-D ``data`` with
    respdict - 20 rows, the same voxel count in every story), its WAV (readable, as long as
    the story: ``stimulus_problem``) and its TextGrid (readable, phone and word tiers
    identifiable). Quick: no audio is decoded and no response matrix read.

    Returns the subject's voxel count (int). Raises one DatasetError with the first problem,
    and how many more there are.
    """
    file_problems, response_problems, _, n_voxels = _subject_story_problems(
        data_dir, subject, stories, load_respdict(data_dir), tr_source, tr_path, set())
    problems = file_problems + response_problems
    if problems:
        more = (f" (and {len(problems) - 1} more problems; run python data_utils.py check "
                f"--data_dir {data_dir})" if len(problems) > 1 else "")
        raise DatasetError(problems[0] + more)
    return int(n_voxels)


def constant_voxels(responses):
    """Voxels whose responses carry no signal: constant over rows (NaN read as 0, so all-NaN
    voxels too). ``responses``: (rows, n_voxels) as ``load_fmri`` returns. (n_voxels,) bool."""
    return np.ptp(responses, axis=0) == 0


def _constant_voxel_counts(path):
    """(constant voxels, all-NaN voxels) of a response file's ``data``, NaN read as 0 as the
    loaders do; read in row blocks of at most ``HDF5_BLOCK_BYTES``."""
    with _open_hdf5(path) as handle:
        dataset = _dataset(handle, "data", path, ndim=2)
        n_rows, n_voxels = dataset.shape
        missing = np.zeros(n_voxels, np.int64)
        low, high = np.full(n_voxels, np.inf), np.full(n_voxels, -np.inf)
        rows_per_block = max(1, HDF5_BLOCK_BYTES // (dataset.dtype.itemsize * max(1, n_voxels)))
        for row in range(0, n_rows, rows_per_block):
            block = np.asarray(dataset[row:row + rows_per_block], dtype=np.float64)
            finite = np.isfinite(block)
            missing += (~finite).sum(axis=0)
            block[~finite] = 0.0
            low, high = np.minimum(low, block.min(axis=0)), np.maximum(high, block.max(axis=0))
    return int((low == high).sum()), int((missing == n_rows).sum())


def check_dataset(data_dir, subjects=None, tr_source="respdict", tr_path=None):
    """Check a ds003020 copy. Returns (summary lines, problems, notes), problems being fatal.

    Each problem and note is a one-line string naming the file and what is wrong. The
    per-story checks are those of ``check_run_inputs``; audio lengths are checked against
    the TR timing ``tr_source``. The summary ends with one line per TR timing source the
    dataset offers (``tr_sources``) and, when TR files are there but the simulated grid is
    used, a note on how to switch.
    """
    lines, problems, notes = [], [], []
    root = Path(data_dir)
    try:
        derivative = derivative_dir(root)
    except DatasetError as err:
        return lines, [str(err)], notes
    try:
        respdict = load_respdict(root)
    except DatasetError as err:
        problems.append(str(err))
        respdict = {}
    lines.append(f"dataset {root}: respdict.json lists {len(respdict)} stories")

    checked_stories = set()
    names = [subject_id(s) for s in subjects] if subjects else list_subjects(root)
    if not names:
        problems.append(f"{derivative / 'preprocessed_data'}: no subject folders (UTS01 ...)")
    for name in names:
        try:
            stories = list_stories(root, name)
        except DatasetError as err:
            problems.append(str(err))
            continue
        if not stories:
            problems.append(f"{subject_dir(root, name)}: no .hf5 response files")
            continue
        file_problems, subject_problems, shapes, n_voxels = _subject_story_problems(
            root, name, stories, respdict, tr_source, tr_path, checked_stories)
        problems += file_problems
        repeats = "none"
        if TEST_STORY in shapes:
            path = subject_dir(root, name) / f"{TEST_STORY}.hf5"
            try:
                n_constant, n_all_nan = _constant_voxel_counts(path)
            except DatasetError as err:
                subject_problems.append(str(err))
                n_constant = 0
            if n_constant:
                notes.append(f"{path}: {n_constant} of {shapes[TEST_STORY][1]} voxels have "
                             f"constant test-story responses ({n_all_nan} of them all NaN); they "
                             "carry no signal and are left out of evaluation summaries")
            try:
                repeat_shape = hdf5_shape(path, "individual_repeats")
                if len(repeat_shape) == 3:
                    repeats = str(repeat_shape[0])
                if len(repeat_shape) != 3 or tuple(repeat_shape[1:]) != tuple(shapes[TEST_STORY]):
                    subject_problems.append(
                        f"{path}: 'individual_repeats' has shape {repeat_shape}, expected "
                        f"(repeats, {shapes[TEST_STORY][0]}, {shapes[TEST_STORY][1]})")
            except DatasetError as err:
                notes.append(f"{err}; noise ceilings of {name} cannot be computed from the data")
        else:
            notes.append(f"{name}: no responses for the test story {TEST_STORY}")
        rows = [shape[0] for shape in shapes.values()]
        lines.append(f"{name}: {len(stories)} stories, {sum(rows)} rows "
                     f"({min(rows, default=0)}-{max(rows, default=0)} per story), "
                     f"{n_voxels} voxels, {repeats} repeats of {TEST_STORY}")
        problems += subject_problems
    source_lines, source_notes = _tr_source_report(
        tr_sources(root, sorted(checked_stories) if checked_stories else None, tr_path, tr_source),
        tr_source)
    return lines + source_lines, problems, notes + source_notes


def _file_source_kind(path):
    """The TR file source a ``tr_path`` is for: a folder or a ``.report`` file is "report",
    another file "trfiles" (a pickle)."""
    path = Path(path)
    return "report" if path.is_dir() or path.suffix == ".report" else "trfiles"


def tr_sources(data_dir, stories=None, tr_path=None, tr_source=None):
    """The TR timing sources a ds003020 copy offers and how many stories each covers.

    "respdict" (the simulated grid from ``respdict.json``, the toolkit's default) is always
    listed; "report" when a folder of ``.report`` files (or one ``.report`` file) is where
    ``load_trfile`` looks (``tr_path``, else ``_default_tr_path``); "trfiles" likewise for
    a ``trfiles_huge.jbl`` pickle. ``tr_path`` belongs to ``tr_source`` when that is "report"
    or "trfiles", else its kind is told by the path (a folder or ``.report`` file: report;
    another file: trfiles); the other file source is looked up where ``_default_tr_path``
    looks. Cheap: one folder listing, and the pickle loaded once (``load_research_pickle``,
    cached, so a check that also reads it per story unpickles it once).

    Returns source -> {"path": str or None, "stories": int or None, "of": int or None,
    "error": str or None}: ``stories`` of the ``of`` stories (``stories``, default those of
    respdict.json) have timing from this source (for respdict: a usable entry; one report
    file serves every story). Without stories to count (respdict.json unreadable and
    ``stories`` None), ``stories`` is how many the source holds and ``of`` None. ``error``
    (one line naming the file; ``stories`` None) when the source is there but unusable.
    """
    root = Path(data_dir)
    found, respdict, respdict_path, respdict_error = {}, None, None, None
    try:
        respdict_path = derivative_dir(root) / "respdict.json"
        respdict = load_respdict(root)
    except DatasetError as err:
        respdict_error = str(err)
    names = list(dict.fromkeys((respdict or ()) if stories is None else stories))
    counted = stories is not None or respdict is not None
    of = len(names) if counted else None

    def entry(path, present=None, error=None):
        return {"path": None if path is None else str(path),
                "stories": None if error else (sum(s in present for s in names) if counted
                                               else len(present)),
                "of": of, "error": error}

    found["respdict"] = entry(respdict_path, error=respdict_error, present=[
        s for s in names if respdict_problem(root, respdict, s) is None] if respdict else [])
    explicit = None
    if tr_path is not None:
        kind = tr_source if tr_source in ("report", "trfiles") else _file_source_kind(tr_path)
        explicit = kind, Path(tr_path)
    for source in TR_SOURCES[1:]:
        if explicit is not None and explicit[0] == source:
            path = explicit[1]
        else:
            try:
                path = _default_tr_path(root, source)
            except DatasetError:
                continue
        if not path.exists():
            found[source] = entry(path, error=f"{path}: no such file or folder")
        elif source == "report" and path.is_dir():
            found[source] = entry(path, {p.name[:-len(".report")] for p in path.iterdir()
                                         if p.name.endswith(".report") and p.is_file()})
        elif source == "report":  # one report file: load_trfile uses it for every story
            found[source] = entry(path, names if counted else [path.stem])
        else:
            try:
                trfiles = load_research_pickle(path)
            except DatasetError as err:
                found[source] = entry(path, error=str(err))
                continue
            if isinstance(trfiles, dict):
                found[source] = entry(path, trfiles)
            else:
                found[source] = entry(path, error=f"{path}: holds a {type(trfiles).__name__}, "
                                                  "not a dict of story -> TRFile")
    return found


def _tr_source_report(sources, tr_source):
    """Check's lines (one per TR timing source) and notes about ``tr_sources``' result."""
    lines, usable = [], {}
    for source, found in sources.items():
        where = f" ({found['path']})" if found["path"] else ""
        if found["error"]:
            prefix = f"{found['path']}: "
            detail = f"not usable: {found['error'].removeprefix(prefix)}"
        else:
            detail = f"{found['stories']} of {found['of']} stories" if found["of"] is not None \
                else f"{found['stories']} stories"
            if source != "respdict" and found["stories"]:
                usable[source] = found["path"]
        if source == "respdict":
            detail = (f"simulated {TR_SECONDS:g} s grid of respdict - {RESPDICT_PAD_TRS} TRs, "
                      f"{detail}; the toolkit's default")
        lines.append(f"TR timing {source}{where}: {detail}"
                     f"{' (used by this check)' if source == tr_source else ''}")
    notes = []
    if usable and tr_source == "respdict":
        switch = " or ".join(f"--tr_source {source} --tr_path {usable[source]}"
                             for source in sorted(usable, key=("trfiles", "report").index))
        notes.append("the authors (Antonello et al.) used the measured TR files; the toolkit's "
                     "default, used here, is the simulated respdict grid, and the two drift "
                     f"~1.3 s apart over a story. To use the TR files pass {switch} to check, "
                     "the trainer and the evaluator alike")
    return lines, notes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Dataset tools for the Moth Radio Hour fMRI dataset (OpenNeuro ds003020).")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="check a downloaded ds003020 copy and print what it holds",
        description="Print per subject the stories, rows, voxels and test-story repeats, and "
                    "every inconsistency found (missing or bad WAV/TextGrid/respdict entry, "
                    "audio shorter or longer than the story, TextGrid tiers that look swapped, "
                    "wrong row count, unreadable HDF5, voxel counts that differ between "
                    "stories), and the TR timing sources found (simulated respdict grid, "
                    ".report files, trfiles_huge.jbl) with the stories each covers. Notes (not "
                    "problems) name test-story voxels with constant responses and how to use "
                    "the TR files. Exit status 0 when the dataset is usable, 1 otherwise.")
    check.add_argument("--data_dir", required=True,
                       help="ds003020 root: the folder holding stimuli/ and derivative/")
    check.add_argument("--subjects", nargs="+", default=None,
                       help="subjects to check (1, '1' or UTS01); default: all found")
    check.add_argument("--tr_source", choices=TR_SOURCES, default="respdict",
                       help="TR timing the stimulus lengths are checked against (see "
                            "data_utils.load_trfile); use the one of your runs")
    check.add_argument("--tr_path", default=None,
                       help="TR files for --tr_source report/trfiles (default: looked up in "
                            "the dataset)")
    return parser.parse_args(argv)


def run(args):
    """Print the dataset report; a dataset with problems is a DatasetError (exit status 1)."""
    try:
        lines, problems, notes = check_dataset(args.data_dir, args.subjects, args.tr_source,
                                               args.tr_path)
    except DatasetError as err:
        lines, problems, notes = [], [str(err)], []
    for line in lines:
        print(line)
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(problems)} problem(s): dataset {'NOT ' if problems else ''}usable")
    if problems:
        raise DatasetError(f"{args.data_dir}: {len(problems)} problem(s), listed above")


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
