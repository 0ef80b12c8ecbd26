"""TR files: the scanner trigger times of a story run (``TRFile``), read from a ``.report``
file or from the joblib pickles of the authors' research code (``trfiles_huge.jbl``,
``grids_huge.jbl``), which are loaded by an unpickler that maps their classes onto ours and
refuses anything else. Which TR timing a run uses is the dataset handle's choice
(``data_utils.Dataset``, ``--tr_source``).
"""

import bz2
import functools
import gzip
import io
import lzma
import pickle
import zlib
from pathlib import Path

import numpy as np

import run_utils
from run_utils import DatasetError

REPORT_EXPECTED_TR = 2.0045  # seconds: the trigger spacing of the .report files


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
    def simulated(cls, n_trs, tr, sound_start):
        """A simulated grid: trigger ``k`` at ``k * tr`` s, sound starting at ``sound_start``."""
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
        checked(cls(trtimes, start), path)
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


def checked(trfile, where):
    """``trfile`` if its trigger times are finite and increase (at least two of them) and its
    sound start is a finite time, else a DatasetError naming ``where``: TR timing out of order
    would place every feature at the wrong TR."""
    times = np.asarray(trfile.trtimes, dtype=np.float64)
    start = float(trfile.soundstarttime)
    if len(times) < 2 or not np.isfinite(times).all() or not np.isfinite(start):
        raise DatasetError(f"{where}: the TR timing needs at least two finite trigger times and "
                           "a finite sound start; get the TR files again")
    if (np.diff(times) <= 0).any():
        at = int(np.flatnonzero(np.diff(times) <= 0)[0])
        raise DatasetError(f"{where}: trigger times do not increase ({times[at]:g} s, then "
                           f"{times[at + 1]:g} s); the TR file is damaged: get it again")
    return trfile


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

