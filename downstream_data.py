"""Readers for the downstream datasets of the probing tasks (docs/method.md#downstream-tasks).

Each task reader returns examples (dicts with ``audio``, the file, and ``label``) of a split,
read from the dataset's own distribution layout:

- TIMIT (LDC): ``TRAIN/`` and ``TEST/`` trees of ``DR<n>/<speaker>/<utterance>.WAV|.PHN|...``,
  upper or lower case, optionally under a ``data/`` folder; WAV files in NIST SPHERE or RIFF;
  ``.PHN`` lines ``<start sample> <end sample> <phone>``. Tasks ``phonemes`` (the 39 Lee & Hon
  classes present in the utterance, multi-label) and ``sentence_type`` (SA, SI or SX).
- Speech Commands v2: a folder per word, ``validation_list.txt`` and ``testing_list.txt``
  (paths relative to the root); training is every other file. Task ``words``, 35 classes.
- CREMA-D: ``<actor>_<sentence>_<EMOTION>_<level>.wav`` in ``AudioWAV/`` (or the root). Task
  ``emotion``, 6 classes, split by actor so that no speaker is in both splits.
- SLURP: ``train.jsonl``/``test.jsonl`` (in the root or ``dataset/slurp/``), one utterance per
  line with its ``action`` and ``recordings``; the audio files in ``slurp_real/`` (searched in
  the root, ``audio/`` and ``scripts/audio/``, or given). Task ``intent``: the action, every
  recording an example.

The same tasks from HuggingFace datasets (``HubDataset``, ``hub_examples``): a ``save_to_disk``
folder, a folder of data files or a hub id in the local cache, read without the network, with
the columns of the usual hub copies (``HUB_LAYOUTS``) or others named.

Audio is read later, by ``audio_io.read_audio`` (every format libsndfile reads, NIST SPHERE
included, resampled with soxr). A dataset's ``Audio`` feature is read undecoded
(``Audio(decode=False)``), its bytes decoded by that reader: since datasets 4 the feature
decodes through torchcodec/FFmpeg, which is not a dependency here.
"""

import collections
import json
import logging
import random
import re
import sys
from pathlib import Path
from typing import NamedTuple

import soundfile as sf

import audio_io
import run_utils
from run_utils import DatasetError

logger = logging.getLogger(__name__)

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
    return set(timit_phone_sequence(entries, path))


def timit_phone_sequence(entries, path="<phones>"):
    """The 39 Lee & Hon classes of a ``.PHN`` file's entries in order (list of str): ``q``
    dropped, and a class that follows itself (e.g. ``pau h#`` -> ``sil``) said once."""
    sequence = []
    for _, _, label in entries:
        if label.lower() not in TIMIT_61_TO_39:
            raise DatasetError(f"{path}: {label!r} is not one of the 61 TIMIT phones")
        mapped = TIMIT_61_TO_39[label.lower()]
        if mapped is not None and (not sequence or sequence[-1] != mapped):
            sequence.append(mapped)
    return sequence


def timit_words(path):
    """The words of a ``.WRD`` file in order, lowercased (list of str); an empty file is a
    ``DatasetError``."""
    words = [label.lower() for _, _, label in read_timit_labels(path)]
    if not words:
        raise DatasetError(f"{path}: no words; the transcript is empty, get the file again")
    return words


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


def _beside(wav, suffix):
    """The file named like ``wav`` with ``suffix`` (any case) in its folder, or None."""
    return next((p for p in wav.parent.iterdir()
                 if p.stem.lower() == wav.stem.lower() and p.suffix.lower() == suffix), None)


def timit_utterances(root, split):
    """Utterances of a TIMIT split, sorted: dicts with wav, phn, wrd (None when the utterance
    has no ``.WRD`` file), speaker, utterance, dialect region and sentence type (SA, SI or
    SX)."""
    utterances = []
    for wav in sorted(timit_split_dir(root, split).glob("*/*/*")):
        # some copies hold RIFF conversions named <utt>.WAV.wav beside the SPHERE originals
        if wav.suffix.lower() != ".wav" or wav.name.lower().endswith(".wav.wav"):
            continue
        phn = _beside(wav, ".phn")
        if phn is None:
            raise DatasetError(f"{wav}: no .PHN file beside it")
        kind = wav.stem[:2].upper()
        if kind not in SENTENCE_TYPES:
            raise DatasetError(f"{wav}: utterance names start with SA, SI or SX")
        utterances.append({"wav": wav, "phn": phn, "wrd": _beside(wav, ".wrd"),
                           "speaker": wav.parent.name.upper(),
                           "utterance": wav.stem.upper(), "region": wav.parent.parent.name.upper(),
                           "sentence_type": kind})
    if not utterances:
        raise DatasetError(f"{timit_split_dir(root, split)}: no "
                           "DR*/<speaker>/<utterance>.WAV files")
    return utterances


def timit_examples(root, split, target):
    """TIMIT examples of ``split`` ("train" or "test") for ``target`` "phonemes" (label: sorted
    tuple of the 39 classes present) or "sentence_type" (label: SA, SI or SX)."""
    examples = []
    for utterance in timit_utterances(root, split.upper()):
        if target == "phonemes":
            path = utterance["phn"]
            label = tuple(sorted(timit_phone_classes(read_timit_labels(path), path)))
        else:
            label = utterance["sentence_type"]
        examples.append({"audio": utterance["wav"], "label": label,
                         "speaker": utterance["speaker"]})
    return examples


SPEECH_COMMANDS_WORDS = tuple(sorted(
    "backward bed bird cat dog down eight five follow forward four go happy house learn left "
    "marvin nine no off on one right seven sheila six stop three tree two up visual wow yes "
    "zero".split()))


def _read_list(path):
    """Relative paths listed one per line in a Speech Commands split file."""
    try:
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from None


def speech_commands_examples(root, split):
    """Speech Commands v2 examples of ``split`` ("train", "validation" or "test")."""
    root = Path(root)
    lists = {name: root / f"{name}_list.txt" for name in ("validation", "testing")}
    if not root.is_dir() or not all(path.is_file() for path in lists.values()):
        raise DatasetError(f"{root}: not a Speech Commands v2 folder (word folders with "
                           "validation_list.txt and testing_list.txt beside them)")
    held_out = {name: _read_list(path) for name, path in lists.items()}
    words = [folder for folder in sorted(root.iterdir())
             if folder.is_dir() and not folder.name.startswith("_")]
    unknown = [folder.name for folder in words if folder.name not in SPEECH_COMMANDS_WORDS]
    if unknown:
        raise DatasetError(f"{root}: folders {', '.join(unknown)} are not Speech Commands v2 "
                           f"words ({' '.join(SPEECH_COMMANDS_WORDS)})")
    for name, listed in held_out.items():
        for relative in sorted(listed):
            if not (root / relative).is_file():
                raise DatasetError(f"{lists[name]}: lists {relative}, which is not in {root}")
    examples = []
    for folder in words:
        for wav in sorted(folder.glob("*.wav")):
            relative = f"{folder.name}/{wav.name}"
            in_split = {"validation": relative in held_out["validation"],
                        "test": relative in held_out["testing"]}
            in_split["train"] = not any(in_split.values())
            if in_split[split]:
                examples.append({"audio": wav, "label": folder.name,
                                 "speaker": wav.name.split("_nohash_")[0]})
    if not examples:
        raise DatasetError(f"{root}: no {split} examples in the word folders")
    return examples


CREMA_D_EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
# The level is LO, MD, HI, XX or (in a few names such as 1040_ITH_SAD_X) X.
CREMA_D_NAME = re.compile(r"^(\d+)_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")


def crema_d_examples(root, split, test_fraction=0.2, seed=0):
    """CREMA-D examples of ``split`` ("train" or "test"); the actors are split at random
    (``seed``), ``test_fraction`` of them (at least one) held out for testing."""
    root = Path(root)
    audio_dir = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    if not audio_dir.is_dir():
        raise DatasetError(f"{root}: no such directory; --data_path must be the CREMA-D root")
    files = sorted(audio_dir.glob("*.wav"))
    if not files:
        raise DatasetError(f"{audio_dir}: no .wav files; --data_path must be the CREMA-D root "
                           "(holding AudioWAV/)")
    parsed = []
    for wav in files:
        match = CREMA_D_NAME.match(wav.stem)
        if match is None:
            raise DatasetError(f"{wav}: expected <actor>_<sentence>_<EMOTION>_<level>.wav")
        if match.group(3) not in CREMA_D_EMOTIONS:
            raise DatasetError(f"{wav}: emotion {match.group(3)!r} is not one of "
                               f"{', '.join(CREMA_D_EMOTIONS)}")
        if sf.info(str(wav)).frames == 0:
            # The distribution has an empty recording (1076_MTI_SAD_XX.wav); nothing to re-get.
            logger.warning("%s: holds no audio; left out", wav)
            continue
        parsed.append({"audio": wav, "label": match.group(3), "speaker": match.group(1)})
    return speaker_split(parsed, split, test_fraction, seed, where=audio_dir)


def speaker_split(examples, split, test_fraction=0.2, seed=0, where="<examples>"):
    """The examples of ``split`` ("train" or "test") when the speakers are split at random
    (``seed``): ``test_fraction`` of them (at least one, and never all) held out for testing,
    so that no speaker is in both splits."""
    speakers = sorted({example["speaker"] for example in examples})
    if len(speakers) < 2:
        raise DatasetError(f"{where}: a speaker-disjoint split needs at least two speakers")
    random.Random(seed).shuffle(speakers)
    held_out = set(speakers[:min(len(speakers) - 1,
                                 max(1, round(test_fraction * len(speakers))))])
    return [example for example in examples
            if (example["speaker"] in held_out) == (split == "test")]


def _slurp_file(root, name):
    for folder in (root, root / "dataset" / "slurp"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{root}: no {name} (looked in {root} and {root / 'dataset' / 'slurp'}); "
                       "--data_path must be the SLURP root")


def slurp_audio_dir(root):
    """The folder of SLURP's recordings: ``slurp_real/`` in the root, ``audio/`` or
    ``scripts/audio/``."""
    root = Path(root)
    for folder in (root / "slurp_real", root / "audio" / "slurp_real",
                   root / "scripts" / "audio" / "slurp_real"):
        if folder.is_dir():
            return folder
    raise DatasetError(f"{root}: no slurp_real/ audio folder (looked in the root, audio/ and "
                       "scripts/audio/); pass --audio_dir")


def slurp_examples(root, split, audio_dir=None):
    """SLURP examples of ``split`` ("train", "devel" or "test"): one per recording, labelled
    with the utterance's action."""
    root = Path(root)
    path = _slurp_file(root, f"{split}.jsonl")
    audio_dir = Path(audio_dir) if audio_dir else slurp_audio_dir(root)
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            action, recordings = record["action"], record["recordings"]
            files = [recording["file"] for recording in recordings]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DatasetError(f"{path}:{number}: expected a JSON object with 'action' and "
                               "'recordings' (a list of {'file': ...})") from None
        if not isinstance(action, str) or not action:
            raise DatasetError(f"{path}:{number}: 'action' must be a non-empty string")
        for name in files:
            if not (audio_dir / name).is_file():
                raise DatasetError(f"{path}:{number}: recording {name} is not in {audio_dir}")
            examples.append({"audio": audio_dir / name, "label": action})
    if not examples:
        raise DatasetError(f"{path}: no utterances")
    return examples


class Task(NamedTuple):
    """A probing task: its dataset, whether an example has several labels, and its classes
    (None: read from the data)."""

    dataset: str
    multi_label: bool
    classes: tuple | None


TASKS = {
    "phonemes": Task("TIMIT", True, TIMIT_39),
    "sentence_type": Task("TIMIT", False, SENTENCE_TYPES),
    "words": Task("Speech Commands v2", False, SPEECH_COMMANDS_WORDS),
    "emotion": Task("CREMA-D", False, CREMA_D_EMOTIONS),
    "intent": Task("SLURP", False, None),
}


def task_examples(task, data_path, split, seed=0, test_fraction=0.2, audio_dir=None):
    """Examples of a probing task's ``split`` ("train" or "test"), from the dataset's folder
    (``data_path``) or a ``HubDataset``."""
    if isinstance(data_path, HubDataset):
        return hub_examples(task, data_path, split, seed, test_fraction)
    if task in ("phonemes", "sentence_type"):
        return timit_examples(data_path, split, task)
    if task == "words":
        return speech_commands_examples(data_path, split)
    if task == "emotion":
        return crema_d_examples(data_path, split, test_fraction, seed)
    if task == "intent":
        return slurp_examples(data_path, split, audio_dir)
    raise ValueError(f"unknown task {task!r}; one of {', '.join(TASKS)}")


def task_classes(task, train, test):
    """The classes of a task, checking every label against them.

    Intent has no fixed list: its classes are the actions of both splits. A test action that
    no training example has (rare actions, or a ``--max_examples`` subset) stays a class the
    probe can never predict, so it counts against the scores, and a warning says so.
    """
    dataset, multi_label, classes = TASKS[task]
    if classes is None:
        seen = {example["label"] for example in train}
        unseen = sorted({example["label"] for example in test} - seen)
        if unseen:
            logger.warning("%s %s: %d test label(s) have no training example (%s); their test "
                           "examples count as errors", dataset, task, len(unseen),
                           ", ".join(unseen[:10]) + (" ..." if len(unseen) > 10 else ""))
        return tuple(sorted(seen | set(unseen)))
    known = set(classes)
    for example in [*train, *test]:
        labels = example["label"] if multi_label else (example["label"],)
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise DatasetError(f"{example['audio']}: label {unknown[0]!r} is not one of the "
                               f"{len(classes)} {dataset} {task} classes")
    return classes


# ----------------------------------------------------------------------------- HuggingFace datasets

class HubLayout(NamedTuple):
    """How the usual HuggingFace copies of a task's dataset are laid out: the hub id (None
    where copies differ and none is the usual one), its config, the default train and test
    split names (the same name: the speakers of that one split are split) and the column of
    the label."""

    name: str | None
    config: str | None
    splits: tuple
    label_column: str


# docs/downstream.md#datasets-from-the-huggingface-hub documents these; the flags override every
# field.
HUB_LAYOUTS = {
    "phonemes": HubLayout("timit_asr", None, ("train", "test"), "phonetic_detail"),
    "sentence_type": HubLayout("timit_asr", None, ("train", "test"), "sentence_type"),
    # the hub copy has no split of testing_list.txt: its test split is the separate test set
    # of the 10 core commands; validation (validation_list.txt) holds all 35 words
    "words": HubLayout("google/speech_commands", "v0.02", ("train", "validation"), "label"),
    "emotion": HubLayout(None, None, ("train", "train"), "label"),
    "intent": HubLayout(None, None, ("train", "test"), "action"),
    "asr": HubLayout("timit_asr", None, ("train", "test"), "word_detail"),
    "asr_phones": HubLayout("timit_asr", None, ("train", "test"), "phonetic_detail"),
}


class HubDataset(NamedTuple):
    """A dataset read with the ``datasets`` library, from a ``save_to_disk`` folder, a folder
    of data files (a clone of a hub repository) or the local cache of ``load_dataset(path,
    config)``; never downloaded. None fields take the task's ``HUB_LAYOUTS`` entry."""

    path: str
    config: str | None = None
    train_split: str | None = None
    test_split: str | None = None
    audio_column: str = "audio"
    label_column: str | None = None
    speaker_column: str | None = None

    def layout(self, task):
        """The task's layout with this dataset's choices in place of the defaults (where the
        usual layout tests on its training split, a training split chosen alone is tested on
        too)."""
        usual = HUB_LAYOUTS[task]
        train = self.train_split or usual.splits[0]
        one_split = usual.splits[0] == usual.splits[1]
        return usual._replace(
            name=self.path,
            config=self.config or (usual.config if self.path == usual.name else None),
            splits=(train, self.test_split or (train if one_split else usual.splits[1])),
            label_column=self.label_column or usual.label_column)


def load_hub_splits(path, config=None):
    """The splits of a dataset (dict name -> ``datasets.Dataset``), read without the network:
    a ``save_to_disk`` folder (one split's folder is called ``train``), a folder of data files,
    or a hub id whose ``load_dataset`` is in the local cache."""
    import datasets  # here, not at the top: its import costs seconds that raw folders need not pay

    folder = Path(path).expanduser()
    saved = folder.is_dir() and any((folder / name).is_file()
                                    for name in ("dataset_dict.json", "state.json"))
    if saved and config is not None:
        raise DatasetError(f"{path}: a save_to_disk folder holds one config; --hf_config "
                           f"{config} chooses among a hub dataset's")
    offline = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True  # the cache only, whatever HF_DATASETS_OFFLINE says
    try:
        if saved:
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(str(folder) if folder.is_dir() else path, config)
    # not found, not cached, several configs cached, damaged Arrow or parquet, a loading script
    except (OSError, ValueError, RuntimeError, datasets.exceptions.DatasetsError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetError(
            f"{path}: cannot be read by the datasets library without the network ({reason}); "
            "choose the config with --hf_config, or give a save_to_disk folder (load_dataset "
            "it with the network, or with datasets < 4 for a loading script, and save_to_disk), "
            f"or run load_dataset once so that it is in the cache "
            f"({datasets.config.HF_DATASETS_CACHE})") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def source_facts(task, source):
    """What results record of where a task's examples were read: the folder (``data_path``),
    or the HuggingFace dataset with the config, splits and columns read from it."""
    if not isinstance(source, HubDataset):
        return {"data_path": str(Path(source).resolve())}
    layout = source.layout(task)
    return {"hf_dataset": source.path, "hf_config": layout.config, "splits": list(layout.splits),
            "audio_column": source.audio_column, "label_column": layout.label_column}


def hub_split(layout, split, audio_column="audio"):
    """One split of a hub dataset and the audio of each of its rows.

    layout : a ``HubLayout`` whose ``name`` is the dataset's folder or hub id
    Returns the split (``datasets.Dataset``), what messages call it (``<dataset> [<split>]``)
    and its rows' audio (list of ``audio_io.DatasetAudio``).
    """
    import datasets

    splits = load_hub_splits(layout.name, layout.config)
    if split not in splits:
        raise DatasetError(f"{layout.name}: no split {split!r}; it has {', '.join(splits)} "
                           "(choose with --hf_split_train, --hf_split_test)")
    table, where = splits[split], f"{layout.name} [{split}]"
    feature = _feature(table, audio_column, where, "--audio_column")
    audio = table.select_columns([audio_column])
    if isinstance(feature, datasets.Audio):
        audio = audio.cast_column(audio_column, datasets.Audio(decode=False))
    elif not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise DatasetError(f"{where}: column {audio_column!r} holds {feature}, not audio or "
                           "audio file paths (choose with --audio_column)")
    files = [entry["filename"] for entry in table.cache_files]
    key = run_utils.digest(json.dumps({"fingerprint": table._fingerprint, "column": audio_column,
                                       **run_utils.file_identity(files)}, sort_keys=True))
    return table, where, [audio_io.DatasetAudio(audio, audio_column, row, where, key)
                          for row in range(len(table))]


def _feature(table, column, where, flag):
    if column not in table.features:
        raise DatasetError(f"{where}: no column {column!r}; its columns are "
                           f"{', '.join(table.features)} (choose with {flag})")
    return table.features[column]


def hub_column(table, column, where, flag="--label_column"):
    """A column's values (list), a ``ClassLabel``'s as label names (None for -1, no label)."""
    names = getattr(_feature(table, column, where, flag), "names", None)
    values = table[column]
    if names is not None:
        values = [names[i] if 0 <= i < len(names) else None for i in values]
    return list(values)


def hub_examples(task, source, split, seed=0, test_fraction=0.2):
    """Examples of a probing task's ``split`` ("train" or "test") from a ``HubDataset``, as
    the raw-folder readers give them (``label`` in the task's classes, ``speaker``)."""
    layout = source.layout(task)
    train_name, test_name = layout.splits
    if train_name == test_name and task != "emotion":
        raise DatasetError(f"{source.path}: --hf_split_train and --hf_split_test are both "
                           f"{train_name!r}; the {task} probe needs a held-out split")
    name = train_name if split == "train" else test_name
    table, where, audios = hub_split(layout, name, source.audio_column)
    labels = hub_column(table, layout.label_column, where)
    speakers = (_hub_speakers(table, source.speaker_column, audios, where)
                if train_name == test_name else [None] * len(audios))
    examples, dropped = [], collections.Counter()
    for audio, value, speaker in zip(audios, labels, speakers):
        label = hub_label(task, value, audio)
        if label is None:
            dropped[value] += 1
        elif task == "emotion" and _audio_frames(audio) == 0:
            # as crema_d_examples: the distribution has an empty recording
            logger.warning("%s: holds no audio; left out", audio)
        else:
            examples.append({"audio": audio, "label": label, "speaker": speaker})
    if dropped:
        logger.info("%s: left out %s", where, ", ".join(
            f"{count} rows labelled {label}" for label, count in sorted(dropped.items())))
    if not examples:
        raise DatasetError(f"{where}: no examples")
    if train_name == test_name:
        return speaker_split(examples, split, test_fraction, seed, where=where)
    return examples


def _audio_frames(audio):
    """Samples in a ``audio_io.DatasetAudio``, from its header."""
    try:
        return sf.info(audio.sound_file()).frames
    except RuntimeError as err:  # soundfile's LibsndfileError
        raise DatasetError(f"{audio}: unreadable audio ({err}); the dataset is damaged, save it "
                           "again") from None


def _hub_speakers(table, column, audios, where):
    """Each row's speaker: its ``column`` (None: ``speaker_id`` if there is one), or else the
    actor of its CREMA-D file name."""
    if column is not None or "speaker_id" in table.features:
        return [str(value) for value in hub_column(table, column or "speaker_id", where,
                                                   "--speaker_column")]
    speakers = []
    for audio in audios:
        path = audio.stored_path()
        match = CREMA_D_NAME.match(Path(path).stem)
        if match is None:
            raise DatasetError(f"{audio}: no column speaker_id (choose with --speaker_column), "
                               f"and its file name {path!r} is not CREMA-D's <actor>_<sentence>_"
                               "<EMOTION>_<level>.wav, so its speaker is unknown")
        speakers.append(match.group(1))
    return speakers


def hub_label(task, value, where):
    """A hub dataset's label value as the task's label, or None for a row the task leaves out
    (Speech Commands ``_silence_`` and ``_unknown_``)."""
    if value is None:
        raise DatasetError(f"{where}: no label")
    if task == "phonemes":
        return tuple(sorted(set(hub_phones(value, where))))
    if not isinstance(value, str):
        raise DatasetError(f"{where}: label {value!r} is not text or a class label "
                           "(choose the column with --label_column)")
    if task == "words":
        return None if value.startswith("_") else value.lower()
    if task == "sentence_type":
        return value.upper()
    if task == "emotion":  # ANG, anger, angry; DIS, disgust; HAP, happy, happiness; ...
        return value[:3].upper()
    return value


def hub_phones(value, where):
    """The 39 folded phones, in order, of a TIMIT ``phonetic_detail`` value (a dict whose
    ``utterance`` lists the 61 TIMIT phones, as in ``timit_asr``) or a string of phones."""
    phones = value.get("utterance") if isinstance(value, dict) else value
    if isinstance(phones, str):
        phones = phones.split()
    if not isinstance(phones, list):
        raise DatasetError(f"{where}: label {value!r} is not TIMIT phonetic detail (a dict with "
                           "'utterance', the phones) (choose the column with --label_column)")
    return timit_phone_sequence([(0, 0, phone) for phone in phones], where)


def hub_words(value, where):
    """The words, lowercased, of a TIMIT ``word_detail`` value (a dict whose ``utterance``
    lists them) or of a transcript string (punctuation other than apostrophes dropped)."""
    words = value.get("utterance") if isinstance(value, dict) else value
    if isinstance(words, str):
        words = re.findall(r"[a-z0-9']+", words.lower())
    if not isinstance(words, list):
        raise DatasetError(f"{where}: transcript {value!r} is not TIMIT word detail (a dict with "
                           "'utterance', the words) or text (choose with --label_column)")
    words = [word.lower() for word in words]
    if not words:
        raise DatasetError(f"{where}: no words; the transcript is empty")
    return words


if __name__ == "__main__":
    sys.exit("downstream_data.py is a library module with no command line (the probes' dataset "
             "readers); run one of eval_phonemes.py, eval_sentence_type.py, eval_words.py, "
             "eval_emotion.py, eval_intent.py (--help lists their flags), or "
             "synthetic_downstream.py to write small datasets in these layouts")
