"""Audio files as the models take them: float32 mono at 16 kHz, from any file soundfile reads
(RIFF WAV, NIST SPHERE, FLAC, ...) or from a HuggingFace dataset row (``DatasetAudio``).
"""

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

import run_utils
from run_utils import DatasetError

SAMPLING_RATE = 16000  # Hz: every model here takes 16 kHz audio
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the soundfile subtypes that can hold NaN
SAMPLED_SECONDS = 16  # seconds of a PCM file signal_problem reads


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
    files' paths and content hashes (``run_utils.file_identity``), or each row's split key and
    index."""
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
    if not np.isfinite(audio).all():  # only float WAVs can hold them; no model input can
        raise DatasetError(f"{path}: {int((~np.isfinite(audio)).sum())} audio samples are NaN or "
                           "infinite; the file is damaged, get it again")
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


def signal_problem(path, sampled_seconds=SAMPLED_SECONDS):
    """What keeps an audio file's samples from carrying a signal (one line naming it), or None:
    NaN or infinite samples (a float WAV is read whole: only float formats can hold them), or
    silence at every one of ``sampled_seconds`` seconds spread over the file (a PCM file is
    sampled, not decoded whole, so that checking a dataset stays quick)."""
    info = sf.info(str(path))
    if info.subtype in FLOAT_SUBTYPES:
        audio = sf.read(str(path), dtype="float64", always_2d=True)[0]
        bad = int((~np.isfinite(audio)).sum())
        if bad:
            return (f"{path}: {bad} audio samples are NaN or infinite; the file is damaged, get "
                    "it again")
        silent = not np.any(audio)
    else:
        length = min(info.samplerate, info.frames)
        starts = np.linspace(0, info.frames - length, sampled_seconds).astype(np.int64)
        silent = True
        with sf.SoundFile(str(path)) as handle:
            for start in starts:
                handle.seek(int(start))
                if np.any(handle.read(length, dtype="float32")):
                    silent = False
                    break
    if not silent:
        return None
    where = "" if info.subtype in FLOAT_SUBTYPES else f" in {sampled_seconds} seconds over it"
    return (f"{path}: the audio is silent (every sample zero{where}); a story's audio carries "
            "its signal: get the file again")


def slice_windows(audio, starts, length):
    """Windows ``audio[s:s + length]`` for each start, zero outside the audio: (n, length)."""
    starts = np.asarray(starts, dtype=np.int64)
    before = max(0, -int(starts.min())) if starts.size else 0
    after = max(0, int(starts.max()) + length - len(audio)) if starts.size else 0
    padded = np.pad(audio, (before, after))
    view = np.lib.stride_tricks.sliding_window_view(padded, length)
    return view[starts + before]

