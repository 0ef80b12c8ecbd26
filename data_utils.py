"""Read the Moth Radio Hour fMRI dataset (OpenNeuro ds003020) exactly as it lies on disk.

Layout (SPEC section 3)::

    <data_dir>/stimuli/<story>.wav
    <data_dir>/derivative/respdict.json                      story -> TRs acquired
    <data_dir>/derivative/TextGrids/<story>.TextGrid          tier 1 phones, tier 2 words
    <data_dir>/derivative/preprocessed_data/UTS0N/<story>.hf5 dataset "data" (rows, voxels)

``derivatives/`` is accepted in place of ``derivative/``.

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

import h5py
import librosa
import numpy as np
import soundfile as sf

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
    """``derivative/respdict.json``: story -> number of TRs acquired."""
    path = derivative_dir(data_dir) / "respdict.json"
    try:
        respdict = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; download derivative/respdict.json of ds003020") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err}); download it again") from None
    if not isinstance(respdict, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in respdict.values()):
        raise DatasetError(f"{path}: expected a JSON object mapping story names to TR counts")
    return respdict


def respdict_trs(data_dir, story):
    """TRs acquired for a story according to ``respdict.json``."""
    respdict = load_respdict(data_dir)
    if story not in respdict:
        raise DatasetError(f"{derivative_dir(data_dir) / 'respdict.json'}: no entry for story "
                           f"{story!r}; check the story name")
    return respdict[story]


def response_rows(data_dir, story):
    """Rows of a story's response matrix: ``respdict[story] - 20``."""
    return respdict_trs(data_dir, story) - RESPONSE_ROWS_OFFSET


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
    tokens = _Tokens(text.lstrip("\ufeff"), path)
    header = tokens.string() if not tokens.at_end() else ""
    tiers = []
    if header == "Praat chronological TextGrid text file":
        tokens.number(), tokens.number()
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
        tokens.number(), tokens.number()
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
    return run_utils.unique_names((name, entries) for _, name, entries in tiers)


def load_textgrid(path):
    """Read a Praat TextGrid file: dict tier name -> list of (start, end, label) in file order.

    Long, short and chronological text formats; UTF-8 with or without BOM, or UTF-16.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read TextGrid ({err.strerror})") from None
    return parse_textgrid(_decode_praat_text(raw, path), path)


def _tier(data_dir, story, names, position):
    """A tier of a story's TextGrid, by name if present, else by position (0 phones, 1 words)."""
    path = textgrid_path(data_dir, story)
    grid = load_textgrid(path)
    for name, entries in grid.items():
        if name.strip().lower() in names:
            return entries
    if len(grid) < 2:
        raise DatasetError(f"{path}: expected a phone tier and a word tier, found "
                           f"{len(grid)} tier(s)")
    return list(grid.values())[position]


def _is_noise(label):
    return label.strip().lower().strip("{}").strip() in NOISE_LABELS


def load_words(data_dir, story):
    """Word tier of a story: list of (start, end, word) without empty labels and noise tokens."""
    entries = _tier(data_dir, story, {"word", "words"}, 1)
    return [(start, end, label.strip()) for start, end, label in entries if not _is_noise(label)]


def load_phones(data_dir, story):
    """Phone tier of a story: list of (start, end, ARPAbet phone with stress digit), no silences."""
    entries = _tier(data_dir, story, {"phone", "phones"}, 0)
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

def read_audio(path, sampling_rate=SAMPLING_RATE):
    """An audio file (RIFF WAV, NIST SPHERE, FLAC, ...) as float32 mono at ``sampling_rate``:
    channels averaged, resampled from any rate."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable audio ({err}); the file is damaged, get it "
                           "again") from None
    if audio.size == 0:
        raise DatasetError(f"{path}: the audio file holds no samples; get it again")
    mono = audio.mean(axis=1, dtype=np.float32)
    if rate != sampling_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=sampling_rate)
    return mono.astype(np.float32, copy=False)


def load_stimulus(data_dir, story, sampling_rate=SAMPLING_RATE):
    """A story's audio as float32 mono at ``sampling_rate`` Hz (channels averaged, resampled)."""
    return read_audio(stimulus_path(data_dir, story), sampling_rate)


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
    n_rows = response_rows(data_dir, story)
    starts = trfile.tr_starts()[TRIM_START_TRS:TRIM_START_TRS + n_rows]
    if len(starts) < n_rows:
        raise DatasetError(f"story {story!r}: the {tr_source} TR timing has "
                           f"{len(trfile.trtimes)} TRs but its {n_rows} response rows need "
                           f"{n_rows + TRIM_START_TRS}")
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
    grid TR ``i + 10``, zero-padded before story onset and after its end.
    """
    audio = load_stimulus(data_dir, story, sampling_rate)
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

def _check_story_files(root, story, respdict):
    """Problems with a story's WAV, TextGrid and respdict entry, one line each."""
    found = []
    if story not in respdict:
        found.append(f"{derivative_dir(root) / 'respdict.json'}: no entry for story {story!r}")
    try:
        path = stimulus_path(root, story)
        if sf.info(str(path)).frames == 0:
            found.append(f"{path}: holds no audio; download it again")
    except DatasetError as err:
        found.append(str(err))
    except (sf.LibsndfileError, RuntimeError) as err:
        found.append(f"{root / 'stimuli' / (story + '.wav')}: unreadable audio ({err}); "
                     "download it again")
    try:
        path = textgrid_path(root, story)
        n_tiers = len(load_textgrid(path))
        if n_tiers < 2:
            found.append(f"{path}: {n_tiers} tier(s), expected a phone tier and a word tier")
    except DatasetError as err:
        found.append(str(err))
    return found


def check_dataset(data_dir, subjects=None):
    """Check a ds003020 copy. Returns (summary lines, problems, notes), problems being fatal.

    Each problem and note is a one-line string naming the file and what is wrong.
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

    story_problems = {}
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
        shapes, subject_problems = {}, []
        for story in stories:
            path = subject_dir(root, name) / f"{story}.hf5"
            if story not in story_problems:
                story_problems[story] = _check_story_files(root, story, respdict)
                problems += story_problems[story]
            try:
                shape = hdf5_shape(path)
            except DatasetError as err:
                subject_problems.append(str(err))
                continue
            if len(shape) != 2:
                subject_problems.append(f"{path}: 'data' has shape {shape}, expected (rows, voxels)")
                continue
            shapes[story] = shape
            if story in respdict and shape[0] != respdict[story] - RESPONSE_ROWS_OFFSET:
                subject_problems.append(
                    f"{path}: {shape[0]} rows but respdict.json says {respdict[story]} TRs, so "
                    f"{respdict[story] - RESPONSE_ROWS_OFFSET} rows are expected; the file or "
                    "respdict.json is from another release")
        voxel_counts = collections.Counter(shape[1] for shape in shapes.values())
        n_voxels = voxel_counts.most_common(1)[0][0] if voxel_counts else 0
        for story, shape in shapes.items():
            if shape[1] != n_voxels:
                subject_problems.append(
                    f"{subject_dir(root, name) / (story + '.hf5')}: {shape[1]} voxels but the "
                    f"subject's other stories have {n_voxels}; download the file again")
        repeats = "none"
        if TEST_STORY in shapes:
            path = subject_dir(root, name) / f"{TEST_STORY}.hf5"
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
    return lines, problems, notes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Dataset tools for the Moth Radio Hour fMRI dataset (OpenNeuro ds003020).")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="check a downloaded ds003020 copy and print what it holds",
        description="Print per subject the stories, rows, voxels and test-story repeats, and "
                    "every inconsistency found (missing WAV/TextGrid/respdict entry, wrong row "
                    "count, unreadable HDF5, voxel counts that differ between stories). Exit "
                    "status 0 when the dataset is usable, 1 otherwise.")
    check.add_argument("--data_dir", required=True,
                       help="ds003020 root: the folder holding stimuli/ and derivative/")
    check.add_argument("--subjects", nargs="+", default=None,
                       help="subjects to check (1, '1' or UTS01); default: all found")
    return parser.parse_args(argv)


def run(args):
    """Print the dataset report; a dataset with problems is a DatasetError (exit status 1)."""
    try:
        lines, problems, notes = check_dataset(args.data_dir, args.subjects)
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
