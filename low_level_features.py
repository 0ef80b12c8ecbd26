"""Low-level stimulus features of each story on its TR grid (docs/method.md#low-level-reliance).

Five feature sets, each per story an array (n_grid_TRs, dims) float32 on the story's whole
TR grid (``Dataset.tr_times``; the caller trims ``[10:-5]`` as for the model features):

============  ==========================================================================
powspec       log-mel power spectrum of the audio: 32 mel bands from 0 to 8 kHz, dB
phonemes      counts of the 39 ARPAbet phones (``ARPABET_PHONES``, stress digits removed)
diphones      counts of pairs of consecutive phones inside a word, from a vocabulary
triphones     counts of triples of consecutive phones inside a word, from a vocabulary
articulation  counts of the articulatory features of the phones (``ARTICULATION``)
============  ==========================================================================

Downsampling is the one used for the model features: vectors at known times go through
``eval_utils.lanczos_interp`` to the TR centres. Spectrogram frames sit at their centre times;
each phone is an indicator vector at its midpoint and each n-gram one at the midpoint of its
span, so the Lanczos sums are smoothed counts per TR (one event adds up to 0.994-1 over the
TRs, the Huth-lab way). The sums are not normalised: a powspec value is about 200 (10 ms
frames per 2 s TR) times the TR's mean dB, and 0 where the TR's kernel holds no audio (before
story onset). Like the model features, they are z-scored per story downstream.

Phones come from the TextGrid phone tier (``Dataset.phones``, silences and noise
dropped). A phone belongs to the word (``Dataset.words``) whose interval holds its
midpoint; n-grams are runs of consecutive phones of one word, never across words or through
a phone outside any word (silences and noise inside a word are skipped). The
n-gram vocabularies come from the training stories (``build_vocabularies``); n-grams outside
the vocabulary are dropped.

With ``cache_dir`` each feature set of a story is computed once and kept in
``<cache_dir>/<story>_<feature set>_<key>.hf5`` (``run_utils.cache_path``/``cached_arrays``:
dataset ``features``, the settings JSON as the ``settings`` attribute), ``key`` being a digest
of everything that changes the numbers (``cache_settings``): the feature settings and
vocabulary, the identity of the story's WAV or TextGrid, the TR source and the TR centres.
"""

import collections
import hashlib
import logging
import re
import sys
from pathlib import Path

import librosa
import numpy as np

import eval_utils
import run_utils
from audio_io import SAMPLING_RATE
from run_utils import DatasetError
from textgrids import ARPABET_PHONES

logger = logging.getLogger(__name__)

FEATURE_SETS = ("powspec", "phonemes", "diphones", "triphones", "articulation")
NGRAM_ORDER = {"diphones": 2, "triphones": 3}

# Power spectrum: 25 ms Hann windows every 10 ms of the 16 kHz audio (512-point FFT), power
# summed into 32 mel bands (librosa's Slaney mel scale, area-normalised triangles) from 0 Hz to
# 8 kHz, in dB (10 log10, power floored at 1e-10, i.e. -100 dB).
WINDOW_S = 0.025
HOP_S = 0.010
N_MELS = 32
FMAX = 8000.0
POWER_FLOOR = 1e-10

LANCZOS_WINDOW = 3
TR_BLOCK = 64  # TR centres resampled at a time, to bound the memory of the Lanczos kernel

# Articulatory features of General American English phones. Consonants: place (W is
# labial-velar: bilabial and velar, and rounded), manner (L is a lateral approximant, R and ER
# rhotic) and voicing. Vowels are voiced; height and backness of their target, ``rounded`` for
# lip rounding; a diphthong has the features of both its start and end targets
# (AW = a + U, AY = a + I, EY = e + I, OW = o + U, OY = O + I).
ARTICULATORY_FEATURES = (
    "bilabial", "labiodental", "dental", "alveolar", "postalveolar", "palatal", "velar",
    "glottal",
    "stop", "affricate", "fricative", "nasal", "lateral", "approximant", "rhotic",
    "voiced", "voiceless",
    "vowel", "front", "central", "back", "high", "mid", "low", "rounded", "diphthong",
)
ARTICULATION = {phone: frozenset(features.split()) for phone, features in {
    "AA": "vowel voiced back low",
    "AE": "vowel voiced front low",
    "AH": "vowel voiced central mid",
    "AO": "vowel voiced back mid rounded",
    "AW": "vowel voiced diphthong central low back high rounded",
    "AY": "vowel voiced diphthong central low front high",
    "EH": "vowel voiced front mid",
    "ER": "vowel voiced central mid rhotic",
    "EY": "vowel voiced diphthong front mid high",
    "IH": "vowel voiced front high",
    "IY": "vowel voiced front high",
    "OW": "vowel voiced diphthong back mid high rounded",
    "OY": "vowel voiced diphthong back mid rounded front high",
    "UH": "vowel voiced back high rounded",
    "UW": "vowel voiced back high rounded",
    "B": "bilabial stop voiced",
    "P": "bilabial stop voiceless",
    "M": "bilabial nasal voiced",
    "W": "bilabial velar approximant voiced rounded",
    "F": "labiodental fricative voiceless",
    "V": "labiodental fricative voiced",
    "TH": "dental fricative voiceless",
    "DH": "dental fricative voiced",
    "T": "alveolar stop voiceless",
    "D": "alveolar stop voiced",
    "S": "alveolar fricative voiceless",
    "Z": "alveolar fricative voiced",
    "N": "alveolar nasal voiced",
    "L": "alveolar lateral approximant voiced",
    "R": "alveolar approximant rhotic voiced",
    "SH": "postalveolar fricative voiceless",
    "ZH": "postalveolar fricative voiced",
    "CH": "postalveolar affricate voiceless",
    "JH": "postalveolar affricate voiced",
    "Y": "palatal approximant voiced",
    "K": "velar stop voiceless",
    "G": "velar stop voiced",
    "NG": "velar nasal voiced",
    "HH": "glottal fricative voiceless",
}.items()}


def check_feature_sets(names):
    """The requested feature sets as a tuple (a single name is allowed), repeats removed.

    Raises ValueError naming the valid sets for an unknown one.
    """
    names = (names,) if isinstance(names, str) else tuple(dict.fromkeys(names))
    unknown = [name for name in names if name not in FEATURE_SETS]
    if unknown:
        raise ValueError(f"unknown feature set(s) {', '.join(map(repr, unknown))}; valid: "
                         f"{', '.join(FEATURE_SETS)}")
    return names


# ----------------------------------------------------------------------------- phones

def normalise_phone(label, path):
    """ARPAbet phone of a TextGrid label: stress digits removed, upper case ("ah0" -> "AH").

    Raises DatasetError naming the TextGrid ``path`` and the label if it is not one of the 39
    ARPAbet phones.
    """
    phone = re.sub(r"\d+$", "", label.strip().upper())
    if phone not in ARTICULATION:
        raise DatasetError(f"{path}: phone label {label!r} is not an ARPAbet phone (one of "
                           f"{' '.join(ARPABET_PHONES)}, with an optional stress digit); fix "
                           "the label in the phone tier")
    return phone


def story_phones(dataset, story):
    """Phones of a story in time order.

    Returns
    -------
    list of (start s, end s, phone, word): ``phone`` without stress digit; ``word`` the index
    into the story's words (``dataset.words``, sorted by start) of the word whose
    interval [start, end) holds the phone's midpoint, -1 for none.
    """
    path = dataset.alignment_path(story)
    words = sorted(dataset.words(story))
    word_starts = np.array([start for start, _, _ in words], dtype=np.float64)
    # index -1 (before the first word) reads the appended -inf: never inside a word
    word_ends = np.array([end for _, end, _ in words] + [-np.inf], dtype=np.float64)
    phones = sorted(dataset.phones(story))
    mids = np.array([(start + end) / 2 for start, end, _ in phones], dtype=np.float64)
    index = np.searchsorted(word_starts, mids, side="right") - 1
    inside = mids < word_ends[index]
    return [(start, end, normalise_phone(label, path), int(word) if ok else -1)
            for (start, end, label), word, ok in zip(phones, index, inside)]


def phone_ngrams(phones, n):
    """Runs of ``n`` consecutive phones of the same word (see ``story_phones``).

    Returns
    -------
    list of (start s of the first phone, end s of the last, "P1_P2[_P3]").
    """
    grams = []
    for first in range(len(phones) - n + 1):
        run = phones[first:first + n]
        if run[0][3] >= 0 and all(phone[3] == run[0][3] for phone in run):
            grams.append((run[0][0], run[-1][1], "_".join(phone[2] for phone in run)))
    return grams


def build_vocabularies(dataset, stories, names=("diphones", "triphones"), max_size=None):
    """N-gram vocabularies from a list of (training) stories.

    Parameters
    ----------
    names : n-gram feature sets ("diphones", "triphones"); other sets need no vocabulary and
        are skipped.
    max_size : keep only the ``max_size`` most frequent n-grams (ties broken alphabetically).

    Returns
    -------
    dict name -> sorted list of n-gram strings such as "AH_B".
    """
    names = [name for name in check_feature_sets(names) if name in NGRAM_ORDER]
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    counts = {name: collections.Counter() for name in names}
    for story in stories:
        phones = story_phones(dataset, story)
        for name in names:
            counts[name].update(gram for _, _, gram in phone_ngrams(phones, NGRAM_ORDER[name]))
    vocabularies = {}
    for name, counter in counts.items():
        ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:max_size]
        vocabularies[name] = sorted(gram for gram, _ in ranked)
    return vocabularies


def event_matrix(events, columns):
    """Indicator vectors of labelled events at their midpoints.

    Parameters
    ----------
    events : iterable of (start s, end s, labels): labels an iterable of column names.
    columns : sequence of column names.

    Returns
    -------
    values : (n_kept, len(columns)) float64, 1 where the event has the column's label.
    times : (n_kept,) float64 midpoints in seconds. Events with no label among ``columns``
        are left out.
    """
    index = {column: i for i, column in enumerate(columns)}
    hits, times = [], []
    for start, end, labels in events:
        found = [index[label] for label in labels if label in index]
        if found:
            hits.append(found)
            times.append((start + end) / 2)
    values = np.zeros((len(hits), len(columns)))
    for row, found in enumerate(hits):
        values[row, found] = 1.0
    return values, np.asarray(times, dtype=np.float64)


# ----------------------------------------------------------------------------- audio

def power_spectrum(audio, sampling_rate=SAMPLING_RATE):
    """Log-mel power spectrum (see the module constants for windows and bands).

    Parameters
    ----------
    audio : (n_samples,) float mono.

    Returns
    -------
    spectrum : (n_frames, N_MELS) float32 in dB (10 log10 of power, floored at -100 dB).
    times : (n_frames,) float64 frame centres in seconds (frame ``i`` at ``i * HOP_S``).
    """
    win_length = round(WINDOW_S * sampling_rate)
    hop_length = round(HOP_S * sampling_rate)
    mel = librosa.feature.melspectrogram(
        y=np.asarray(audio, dtype=np.float32), sr=sampling_rate,
        n_fft=int(2 ** np.ceil(np.log2(win_length))), hop_length=hop_length,
        win_length=win_length, window="hann", center=True, pad_mode="constant", power=2.0,
        n_mels=N_MELS, fmin=0.0, fmax=min(FMAX, sampling_rate / 2))
    spectrum = librosa.power_to_db(mel, ref=1.0, amin=POWER_FLOOR, top_db=None).T
    times = librosa.frames_to_time(np.arange(len(spectrum)), sr=sampling_rate,
                                   hop_length=hop_length)
    return spectrum.astype(np.float32), times.astype(np.float64)


def band_edges(sampling_rate=SAMPLING_RATE):
    """Mel band edges in Hz, (N_MELS + 2,): band ``k`` rises from ``edges[k]`` to its peak at
    ``edges[k + 1]`` and falls to ``edges[k + 2]``."""
    return librosa.mel_frequencies(N_MELS + 2, fmin=0.0, fmax=min(FMAX, sampling_rate / 2))


# ----------------------------------------------------------------------------- features

def to_tr_grid(values, times, centres):
    """Vectors at ``times`` resampled to the TR ``centres`` as the model features are.

    Equal to ``eval_utils.lanczos_interp(values, times, centres)`` (cutoff 1 / mean TR
    spacing, window 3), computed ``TR_BLOCK`` TRs at a time with only the samples inside the
    kernel's reach, so that 10 ms spectrogram frames of a long story stay small in memory.

    Parameters
    ----------
    values : (n_samples, dims); times : (n_samples,) s; centres : (n_trs,) s, increasing.

    Returns
    -------
    (n_trs, dims) float32.
    """
    values, times = np.asarray(values), np.asarray(times, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    spacing = np.mean(np.diff(centres))
    reach = LANCZOS_WINDOW * spacing  # the kernel is 0 beyond window / cutoff seconds
    blocks = []
    for part in np.array_split(centres, max(1, len(centres) // TR_BLOCK)):
        near = (times >= part[0] - reach) & (times <= part[-1] + reach)
        # cutoff_mult rescales the block's own cutoff (1 / its spacing) to the whole grid's.
        blocks.append(eval_utils.lanczos_interp(values[near], times[near], part, LANCZOS_WINDOW,
                                                np.mean(np.diff(part)) / spacing))
    return np.concatenate(blocks).astype(np.float32)


def feature_names(name, vocabularies=None):
    """Column names of a feature set: band peak frequencies ("250Hz"), phones, n-grams or
    articulatory features."""
    (name,) = check_feature_sets(name)
    if name == "powspec":
        return [f"{frequency:.0f}Hz" for frequency in band_edges()[1:-1]]
    if name == "phonemes":
        return list(ARPABET_PHONES)
    if name == "articulation":
        return list(ARTICULATORY_FEATURES)
    if not vocabularies or name not in vocabularies:
        raise ValueError(f"{name} needs a vocabulary: pass vocabularies="
                         "build_vocabularies(dataset, training_stories)")
    return list(vocabularies[name])


def compute_features(dataset, story, name, centres, vocabulary=None):
    """One feature set of a story resampled to the TR ``centres``: (n_trs, dims) float32.

    ``vocabulary`` (list of n-gram strings) is needed for diphones and triphones.
    """
    if name == "powspec":
        audio = dataset.stimulus(story, SAMPLING_RATE)
        return to_tr_grid(*power_spectrum(audio, SAMPLING_RATE), centres)
    phones = story_phones(dataset, story)
    if name == "phonemes":
        events = [(start, end, (phone,)) for start, end, phone, _ in phones]
        columns = ARPABET_PHONES
    elif name == "articulation":
        events = [(start, end, ARTICULATION[phone]) for start, end, phone, _ in phones]
        columns = ARTICULATORY_FEATURES
    else:
        grams = phone_ngrams(phones, NGRAM_ORDER[name])
        events = [(start, end, (gram,)) for start, end, gram in grams]
        columns = vocabulary
    return to_tr_grid(*event_matrix(events, columns), centres)


def feature_settings(name, vocabulary=None):
    """What fixes the columns and values of a feature set (part of the cache key)."""
    if name == "powspec":
        return {"feature": name, "sampling_rate": SAMPLING_RATE, "window_s": WINDOW_S,
                "hop_s": HOP_S, "n_mels": N_MELS, "fmax": FMAX, "power_floor": POWER_FLOOR}
    if name == "phonemes":
        return {"feature": name, "columns": list(ARPABET_PHONES)}
    if name == "articulation":
        return {"feature": name, "columns": list(ARTICULATORY_FEATURES),
                "table": {phone: sorted(ARTICULATION[phone]) for phone in ARPABET_PHONES}}
    return {"feature": name, "order": NGRAM_ORDER[name], "columns": list(vocabulary)}


def cache_settings(dataset, story, name, centres, vocabulary=None):
    """What the cached values of a feature set of a story depend on (``run_utils.cache_path``
    settings), the identity of the story's WAV or TextGrid included so that a replaced file is
    read again."""
    source = (dataset.stimulus_path(story) if name == "powspec"
              else dataset.alignment_path(story))
    return {**feature_settings(name, vocabulary), **run_utils.file_identity([source]),
            "tr_source": dataset.tr_source, "lanczos_window": LANCZOS_WINDOW,
            "tr_centres": hashlib.sha256(np.ascontiguousarray(centres, np.float64)).hexdigest()}


def cached_features(cache_dir, dataset, story, name, centres, vocabulary=None):
    """``compute_features`` kept in an HDF5 file in ``cache_dir`` and read back next time."""
    def compute(_):
        logger.info("%s: computing %s features", story, name)
        return {"features": compute_features(dataset, story, name, centres, vocabulary)}, {}

    path, settings = run_utils.cache_path(
        cache_dir, f"{story}_{name}", cache_settings(dataset, story, name, centres, vocabulary))
    return run_utils.cached_arrays(path, ["features"], compute, settings)[0]["features"]


def story_features(dataset, story, names=FEATURE_SETS, vocabularies=None, cache_dir=None):
    """Low-level features of a story of ``dataset`` (a ``data_utils.Dataset``) on its whole TR
    grid (under the dataset's TR timing: use the model features' one).

    Parameters
    ----------
    names : feature sets (``FEATURE_SETS``), or one name.
    vocabularies : dict "diphones"/"triphones" -> list of n-grams (``build_vocabularies`` of
        the training stories); needed for those sets.
    cache_dir : keep each feature set in an HDF5 file there and read it back next time.

    Returns
    -------
    dict name -> (n_grid_TRs, dims) float32, n_grid_TRs = len(dataset.tr_times(story)); the
    columns are ``feature_names(name, vocabularies)``.
    """
    names = check_feature_sets(names)
    vocabularies = vocabularies or {}
    for name in names:
        if name in NGRAM_ORDER and name not in vocabularies:
            raise ValueError(f"{name} needs a vocabulary: pass vocabularies="
                             "build_vocabularies(dataset, training_stories)")
    centres = dataset.tr_times(story)
    features = {}
    for name in names:
        vocabulary = vocabularies.get(name) if name in NGRAM_ORDER else None
        if cache_dir is None:
            features[name] = compute_features(dataset, story, name, centres, vocabulary)
        else:
            features[name] = cached_features(cache_dir, dataset, story, name, centres,
                                             vocabulary)
    return features


# ----------------------------------------------------------------------------- semantic features

def load_word_vectors(source, dataset=None):
    """Word vectors: dict lower-case word -> (dim,) float32.

    ``source`` is a text file in the word2vec/GloVe text format (a word and its values per
    line, the values being the last <dim> fields; a first line "<count> <dim>" gives dim,
    otherwise the first entry does; the first entry of a word wins), or
    "synthetic" for the embedding planted in a synthetic ``dataset``.
    """
    if source == "synthetic":
        words = dataset.truth()["words"]
        return {word.lower(): np.asarray(info["embedding"], np.float32)
                for word, info in words.items()}
    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"{path}: no such word-vector file (--word_vectors takes a text file "
                           "of '<word> <values...>' lines, or 'synthetic')")
    vectors, dim = {}, None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip().split(" ")
            if number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                dim = int(fields[1])
                continue
            if len(fields) < 2:
                continue
            if dim is None:
                dim = len(fields) - 1
            # The values are the last ``dim`` fields: some tokens (GloVe 840B) contain spaces.
            if len(fields) < dim + 1:
                raise DatasetError(f"{path}:{number}: {len(fields) - 1} values, expected {dim}")
            try:
                values = np.asarray(fields[-dim:], dtype=np.float32)
            except ValueError:
                raise DatasetError(f"{path}:{number}: expected '<word> <{dim} numbers>'") from None
            if not np.isfinite(values).all():
                raise DatasetError(f"{path}:{number}: NaN or infinite values; the file is "
                                   "damaged, get it again")
            vectors.setdefault(" ".join(fields[:-dim]).lower(), values)
    if not vectors:
        raise DatasetError(f"{path}: no word vectors in the file")
    return vectors


def word_vector_features(dataset, story, vectors):
    """Semantic features of a story on its TR grid: each word's vector at its midpoint,
    resampled to the TR centres like the other features.

    Words without a vector add nothing (their share is logged); a story with no word in
    ``vectors`` is an error.

    Returns
    -------
    (n_grid_TRs, dim) float32.
    """
    words = dataset.words(story)
    found = [(start, end, vectors[word.lower()]) for start, end, word in words
             if word.lower() in vectors]
    if not found:
        raise DatasetError(f"story {story!r}: none of its {len(words)} words has a vector; are "
                           "the word vectors for this language and vocabulary?")
    if len(found) < len(words):
        logger.info("%s: %d of %d words have no vector", story, len(words) - len(found),
                    len(words))
    values = np.stack([vector for _, _, vector in found])
    times = np.array([(start + end) / 2 for start, end, _ in found])
    return to_tr_grid(values, times, dataset.tr_times(story))


if __name__ == "__main__":
    sys.exit("low_level_features.py is a library module with no command line; "
             "brain_evaluate.py --low_level computes these features (see its --help)")
