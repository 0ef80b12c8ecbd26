"""Readers for the downstream datasets of the probing tasks (SPEC section 6).

TIMIT as distributed by the LDC: ``TRAIN/`` and ``TEST/`` trees of
``DR<n>/<speaker>/<utterance>.WAV|.PHN|.WRD|.TXT``, upper or lower case, optionally under a
``data/`` folder; WAV files in NIST SPHERE or RIFF format; ``.PHN``/``.WRD`` lines
``<start sample> <end sample> <label>``. Audio of every format is read with
``data_utils.read_audio``.
"""

from pathlib import Path

from data_utils import DatasetError

# Lee & Hon (1989): the 61 TIMIT phones folded onto 39 classes; the glottal stop q is dropped.
TIMIT_61_TO_39 = {
    "iy": "iy", "ih": "ih", "ix": "ih", "eh": "eh", "ey": "ey", "ae": "ae", "aa": "aa",
    "ao": "aa", "aw": "aw", "ay": "ay", "ah": "ah", "ax": "ah", "ax-h": "ah", "oy": "oy",
    "ow": "ow", "uh": "uh", "uw": "uw", "ux": "uw", "er": "er", "axr": "er", "l": "l",
    "el": "l", "r": "r", "w": "w", "y": "y", "m": "m", "em": "m", "n": "n", "en": "n",
    "nx": "n", "ng": "ng", "eng": "ng", "ch": "ch", "jh": "jh", "dh": "dh", "b": "b", "d": "d",
    "dx": "dx", "g": "g", "p": "p", "t": "t", "k": "k", "z": "z", "zh": "sh", "v": "v",
    "f": "f", "th": "th", "s": "s", "sh": "sh", "hh": "hh", "hv": "hh", "bcl": "sil",
    "dcl": "sil", "gcl": "sil", "pcl": "sil", "tcl": "sil", "kcl": "sil", "h#": "sil",
    "pau": "sil", "epi": "sil", "q": None,
}
TIMIT_39 = tuple(sorted({p for p in TIMIT_61_TO_39.values() if p is not None}))
SENTENCE_TYPES = ("SA", "SI", "SX")


def read_timit_labels(path):
    """A ``.PHN`` or ``.WRD`` file: list of (start sample, end sample, label)."""
    entries = []
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 3:
                raise ValueError
            entries.append((int(fields[0]), int(fields[1]), fields[2]))
        except ValueError:
            raise DatasetError(f"{path}:{number}: expected '<start> <end> <label>', found "
                               f"{line!r}") from None
    return entries


def timit_phone_classes(entries, path="<phones>"):
    """The set of the 39 Lee & Hon classes present in a ``.PHN`` file's entries."""
    classes = set()
    for _, _, label in entries:
        if label.lower() not in TIMIT_61_TO_39:
            raise DatasetError(f"{path}: {label!r} is not one of the 61 TIMIT phones")
        mapped = TIMIT_61_TO_39[label.lower()]
        if mapped is not None:
            classes.add(mapped)
    return classes


def _child(folder, name):
    """A child folder or file of ``folder`` matched case-insensitively, or None."""
    for child in folder.iterdir():
        if child.name.lower() == name.lower():
            return child
    return None


def timit_split_dir(root, split):
    """``TRAIN``/``TEST`` folder of a TIMIT copy (any case, optionally under ``data/``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory; --data_path must be the TIMIT root")
    for base in (root, _child(root, "data")):
        if base is not None and base.is_dir():
            found = _child(base, split)
            if found is not None and found.is_dir():
                return found
    raise DatasetError(f"{root}: no {split}/ folder (also looked in {root / 'data'}); "
                       "--data_path must be the TIMIT root holding TRAIN/ and TEST/")


def timit_utterances(root, split):
    """Utterances of a TIMIT split, sorted: dicts with wav, phn, speaker, utterance,
    dialect region and sentence type (SA, SI or SX)."""
    utterances = []
    for wav in sorted(timit_split_dir(root, split).glob("*/*/*")):
        # some copies hold RIFF conversions named <utt>.WAV.wav beside the SPHERE originals
        if wav.suffix.lower() != ".wav" or wav.name.lower().endswith(".wav.wav"):
            continue
        phn = next((p for p in wav.parent.iterdir()
                    if p.stem.lower() == wav.stem.lower() and p.suffix.lower() == ".phn"), None)
        if phn is None:
            raise DatasetError(f"{wav}: no .PHN file beside it")
        kind = wav.stem[:2].upper()
        if kind not in SENTENCE_TYPES:
            raise DatasetError(f"{wav}: utterance names start with SA, SI or SX")
        utterances.append({"wav": wav, "phn": phn, "speaker": wav.parent.name.upper(),
                           "utterance": wav.stem.upper(), "region": wav.parent.parent.name.upper(),
                           "sentence_type": kind})
    if not utterances:
        raise DatasetError(f"{timit_split_dir(root, split)}: no DR*/<speaker>/<utterance>.WAV files")
    return utterances
