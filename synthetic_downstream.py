"""Write small synthetic copies of the downstream datasets, in their real layouts and formats.

    python synthetic_downstream.py --layout timit --out data/synthetic_timit

For demos and tests of the probing scripts (``eval_*.py``) without the licensed datasets.
Utterances are spoken in the synthetic language of ``synthetic_speech.py``: words of 2-4 ARPAbet
phones, each phone two harmonics with its own frequencies, so the phones and words of an
utterance are audible to a model. Each layout plants the signal its task needs:

- ``timit``: ``TRAIN/`` and ``TEST/`` trees of ``DR<n>/<speaker>/<utterance>.WAV`` (NIST
  SPHERE, 16 kHz, 16 bit) with ``.PHN`` (TIMIT phones, ``h#`` at both ends), ``.WRD`` and
  ``.TXT``. SA1 and SA2 are the same two sentences for every speaker (as in TIMIT); SX
  sentences use words of a compact third of the vocabulary, SI sentences the rest, and are
  longer. Phone sets differ between utterances, for the phoneme probe. Words are spelled with
  one letter per phone (``SPELLING``) and are apart by a short pause (``pau`` in ``.PHN``),
  so that the characters of ``.WRD``/``.TXT`` and the phones can be heard one after the
  other, for the CTC speech recognition of ``eval_asr.py``.
- ``speech_commands``: a folder per command word (each spoken as one synthetic word at a random
  offset in 1 s of audio, RIFF 16 kHz), ``<speaker>_nohash_<k>.wav`` names,
  ``validation_list.txt`` and ``testing_list.txt`` chosen by speaker, and
  ``_background_noise_/``.
- ``crema_d``: ``AudioWAV/<actor>_<sentence>_<EMOTION>_<level>.wav``; the emotion sets the pitch
  (and the level the loudness) of the sentence.
- ``slurp``: ``train.jsonl``/``test.jsonl`` with ``action`` and two ``recordings`` per utterance
  (FLAC in ``slurp_real/``); each action has a keyword spoken among filler words.

Speakers differ in pitch (+-4%) and loudness. Deterministic for a seed.

``--hub`` writes the same utterances as the usual HuggingFace copy of the dataset is laid
out (``downstream_data.HUB_LAYOUTS``), a ``save_to_disk`` folder for the probes'
``--hf_dataset``, with the audio files' bytes embedded:

- ``timit``: ``timit_asr``'s columns (``audio``, ``file``, ``text``, ``phonetic_detail`` and
  ``word_detail`` with ``start``, ``stop``, ``utterance``, ``dialect_region``,
  ``sentence_type``, ``speaker_id``, ``id``), splits ``train`` and ``test``.
- ``speech_commands``: ``google/speech_commands`` v0.02's (``file``, ``audio``, ``label`` a
  ``ClassLabel`` of the 35 words and ``_silence_``, ``is_unknown``, ``speaker_id``,
  ``utterance_id``), splits ``train`` (with 1-s ``_silence_`` clips of the background noise),
  ``validation`` and ``test``.
- ``crema_d``: ``audio`` (named as the CREMA-D file), ``label`` a ``ClassLabel`` of the
  emotions' names (``anger``, ``disgust``, ...), ``speaker_id``; one split, ``train``.
- ``slurp``: ``audio`` (one row per recording), ``slurp_id``, ``sentence``, ``scenario``,
  ``action``, ``intent``; splits ``train`` and ``test``.
"""

import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

import arguments
import downstream_data
import run_utils
from arguments import flag
import synthetic_speech

logger = logging.getLogger(__name__)

RATE = 16000
LAYOUTS = ("timit", "speech_commands", "crema_d", "slurp")
EMOTION_PITCH = {"SAD": 0.7, "DIS": 0.82, "NEU": 0.95, "HAP": 1.1, "FEA": 1.27, "ANG": 1.45}
LEVEL_GAIN = {"LO": 0.5, "MD": 0.75, "HI": 1.0, "XX": 0.75}
COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right")
SLURP_ACTIONS = ("query", "set", "remove", "play", "hue_lightoff")
# the synthetic TIMIT's orthography: one letter per phone of synthetic_speech's language
SPELLING = {"AA": "a", "AE": "x", "AH": "u", "EH": "e", "IH": "i", "IY": "y", "OW": "o",
            "UW": "w", "B": "b", "D": "d", "F": "f", "G": "g", "K": "k", "L": "l", "M": "m",
            "N": "n", "P": "p", "R": "r", "S": "s", "SH": "h", "T": "t", "Z": "z"}


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """Write a small synthetic downstream dataset (TIMIT, Speech Commands v2, CREMA-D or SLURP
    layout) with a planted, learnable signal."""

    layout: str = flag(choices=LAYOUTS, help="dataset layout")
    out: str = flag(help="output folder (the dataset root)")
    seed: int = flag(0, help="random seed")
    hub: bool = flag(False, help="write it as its usual HuggingFace hub copy is laid out (a "
                                 "save_to_disk folder, for the probes' --hf_dataset) instead of "
                                 "the distribution layout")
    overwrite: bool = flag(False, help="replace a dataset written earlier at --out")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 0, "seed")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=Settings.__doc__,
                           docs="docs/synthetic-data.md")


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


def run(args):
    generate(args.layout, args.out, args.seed, args.overwrite, args.hub)


def speak(words, lexicon, rng, pitch=1.0, gain=0.5, lead=0.1):
    """Audio of ``words`` spoken in a row with short pauses, at 16 kHz.

    Returns the float64 audio and the phone and word intervals as (start sample, end sample,
    label) lists (phones with their stress digits).
    """
    pieces, phones, spoken = [np.zeros(int(lead * RATE))], [], []
    now = len(pieces[0])
    for word in words:
        info = lexicon["words"][word]
        start = now
        for phone, duration in zip(info["phones"], info["durations"]):
            sound = synthetic_speech.phone_sound(lexicon["phones"][phone.rstrip("012")], duration,
                                               RATE, rng, pitch)
            pieces.append(gain * sound)
            phones.append((now, now + len(sound), phone))
            now += len(sound)
        spoken.append((start, now, word))
        pause = np.zeros(int(rng.uniform(0.03, 0.12) * RATE))
        pieces.append(pause)
        now += len(pause)
    pieces.append(np.zeros(int(lead * RATE)))
    audio = np.concatenate(pieces)
    return audio + rng.normal(0.0, 0.002, len(audio)), phones, spoken


def _lexicon(seed):
    return synthetic_speech.make_lexicon(seed, 24, 2)


def _speakers(rng, count):
    """Per speaker: (pitch, gain)."""
    return [(float(rng.uniform(0.96, 1.04)), float(rng.uniform(0.3, 0.6))) for _ in range(count)]


def spelling(word, lexicon):
    """How the synthetic TIMIT writes a word of ``lexicon``: a letter per phone (``SPELLING``)."""
    return "".join(SPELLING[phone.rstrip("012")] for phone in lexicon["words"][word]["phones"])


def write_timit(out, seed=0, n_train_speakers=8, n_test_speakers=4):
    """TIMIT layout: per speaker SA1, SA2, two SX and two SI utterances."""
    rng = synthetic_speech.named_rng(seed, "timit")
    lexicon = _lexicon(seed)
    words = list(lexicon["words"])
    compact, diverse = words[:len(words) // 3], words[len(words) // 3:]
    sa = {"SA1": [words[0], words[9]], "SA2": [words[11], words[20]]}
    speakers = _speakers(rng, n_train_speakers + n_test_speakers)
    for number, (pitch, gain) in enumerate(speakers):
        split = "TRAIN" if number < n_train_speakers else "TEST"
        speaker = f"{'FM'[number % 2]}{''.join(chr(65 + (number * 7 + k) % 26) for k in range(3))}0"
        folder = Path(out) / split / f"DR{number % 2 + 1}" / speaker
        folder.mkdir(parents=True)
        sentences = dict(sa)
        for k in range(2):
            sentences[f"SX{number * 10 + k + 3}"] = list(rng.choice(compact, 2))
            sentences[f"SI{number * 10 + k + 1000}"] = list(rng.choice(diverse, 3))
        for name, sentence in sentences.items():
            audio, phones, spoken = speak(sentence, lexicon, rng, pitch, gain)
            sf.write(folder / f"{name}.WAV", audio, RATE, subtype="PCM_16", format="NIST")
            lines, before = [f"0 {phones[0][0]} h#"], phones[0][0]
            for start, end, phone in phones:
                if start > before:  # the pause between two words
                    lines.append(f"{before} {start} pau")
                lines.append(f"{start} {end} {phone.rstrip('012').lower()}")
                before = end
            lines.append(f"{phones[-1][1]} {len(audio)} h#")
            (folder / f"{name}.PHN").write_text("\n".join(lines) + "\n")
            (folder / f"{name}.WRD").write_text(
                "".join(f"{start} {end} {spelling(word, lexicon)}\n"
                        for start, end, word in spoken))
            text = " ".join(spelling(word, lexicon) for word in sentence)
            (folder / f"{name}.TXT").write_text(f"0 {len(audio)} {text.capitalize()}.\n")


def write_speech_commands(out, seed=0, n_speakers=24, takes=3):
    """Speech Commands v2 layout for ``COMMAND_WORDS``; a sixth of the speakers each for
    validation and testing."""
    rng = synthetic_speech.named_rng(seed, "speech_commands")
    lexicon = _lexicon(seed)
    out = Path(out)
    speakers = [(f"{rng.integers(16 ** 8):08x}", *voice) for voice in _speakers(rng, n_speakers)]
    held_out = {"validation": set(s[0] for s in speakers[:n_speakers // 6]),
                "testing": set(s[0] for s in speakers[n_speakers // 6:n_speakers // 3])}
    lists = {name: [] for name in held_out}
    for index, command in enumerate(COMMAND_WORDS):
        (out / command).mkdir(parents=True)
        for speaker, pitch, gain in speakers:
            for take in range(takes):
                audio = np.zeros(RATE)
                spoken = speak([list(lexicon["words"])[index]], lexicon, rng, pitch, gain, 0.0)[0]
                offset = rng.integers(0, RATE - len(spoken))
                audio[offset:offset + len(spoken)] = spoken
                name = f"{command}/{speaker}_nohash_{take}.wav"
                sf.write(out / name, audio, RATE, subtype="PCM_16")
                for split, members in held_out.items():
                    if speaker in members:
                        lists[split].append(name)
    for split, names in lists.items():
        (out / f"{split}_list.txt").write_text("".join(f"{name}\n" for name in sorted(names)))
    (out / "_background_noise_").mkdir()
    sf.write(out / "_background_noise_" / "white_noise.wav", rng.normal(0, 0.1, 5 * RATE), RATE,
             subtype="PCM_16")


def write_crema_d(out, seed=0, n_actors=10):
    """CREMA-D layout: each actor speaks three sentences in the six emotions (sentence IEO at
    three levels, the others at level XX)."""
    rng = synthetic_speech.named_rng(seed, "crema_d")
    lexicon = _lexicon(seed)
    words = list(lexicon["words"])
    sentences = {"IEO": words[:3], "TIE": words[3:6], "DFA": words[6:9]}
    folder = Path(out) / "AudioWAV"
    folder.mkdir(parents=True)
    for number, (pitch, _) in enumerate(_speakers(rng, n_actors)):
        actor = 1001 + number
        for sentence, spoken in sentences.items():
            for emotion in downstream_data.CREMA_D_EMOTIONS:
                levels = ("LO", "MD", "HI") if sentence == "IEO" and emotion != "NEU" else ("XX",)
                for level in levels:
                    audio = speak(spoken, lexicon, rng, pitch * EMOTION_PITCH[emotion],
                                  LEVEL_GAIN[level] * 0.6)[0]
                    sf.write(folder / f"{actor}_{sentence}_{emotion}_{level}.wav", audio, RATE,
                             subtype="PCM_16")


def write_slurp(out, seed=0, n_train=100, n_test=30):
    """SLURP layout: ``n_train``/``n_test`` utterances, each a keyword of its action among one
    or two filler words, recorded twice (close and far, quieter)."""
    rng = synthetic_speech.named_rng(seed, "slurp")
    lexicon = _lexicon(seed)
    words = list(lexicon["words"])
    keywords, fillers = words[:len(SLURP_ACTIONS)], words[len(SLURP_ACTIONS):]
    out = Path(out)
    (out / "slurp_real").mkdir(parents=True)
    slurp_id = 0
    for split, count in (("train", n_train), ("test", n_test)):
        lines = []
        for index in range(count):
            action = SLURP_ACTIONS[index % len(SLURP_ACTIONS)]
            sentence = [keywords[index % len(SLURP_ACTIONS)],
                        *rng.choice(fillers, rng.integers(1, 3))]
            rng.shuffle(sentence)
            pitch, gain = _speakers(rng, 1)[0]
            recordings = []
            for kind, scale in (("headset", 1.0), ("farfield", 0.4)):
                name = f"audio-{1490000000 + slurp_id}-{kind}.flac"
                audio = speak(sentence, lexicon, rng, pitch, gain * scale)[0]
                sf.write(out / "slurp_real" / name, audio, RATE, subtype="PCM_16", format="FLAC")
                recordings.append({"file": name, "wer": 0.0, "ent_wer": 0.0, "status": "correct"})
            lines.append(json.dumps({"slurp_id": slurp_id, "sentence": " ".join(sentence),
                                     "scenario": "synthetic", "action": action,
                                     "intent": f"synthetic_{action}", "recordings": recordings}))
            slurp_id += 1
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


WRITERS = {"timit": write_timit, "speech_commands": write_speech_commands,
           "crema_d": write_crema_d, "slurp": write_slurp}


def generate(layout, out, seed=0, overwrite=False, hub=False):
    """Write a synthetic dataset in ``layout`` to ``out`` (built beside it, then moved into
    place; see ``run_utils.output_folder``); with ``hub``, as a ``save_to_disk`` folder in the
    layout of the usual HuggingFace copy."""
    with run_utils.output_folder(out, overwrite, what="synthetic dataset") as tmp:
        if hub:
            with tempfile.TemporaryDirectory() as raw:
                WRITERS[layout](raw, seed)
                hub_dataset(layout, raw).save_to_disk(str(tmp))
        else:
            WRITERS[layout](tmp, seed)
    logger.info("wrote a synthetic %s dataset%s to %s", layout, " (hub layout)" if hub else "",
                out)
    return Path(out)


# google/speech_commands v0.02's ClassLabel names, in its order
HUB_SPEECH_COMMANDS_LABELS = (
    "yes no up down left right on off stop go zero one two three four five six seven eight nine "
    "bed bird cat dog happy house marvin sheila tree wow backward forward follow learn visual "
    "_silence_").split()
HUB_EMOTION_NAMES = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy",
                     "NEU": "neutral", "SAD": "sad"}


def hub_dataset(layout, root):
    """The synthetic dataset written at ``root`` in ``layout``, as a ``datasets.DatasetDict``
    laid out as the usual hub copy is (see the module docstring), rows in the order of the
    raw-folder readers."""
    import datasets

    splits = HUB_WRITERS[layout](Path(root))
    features = {"audio": datasets.Audio(sampling_rate=RATE)}
    if layout == "speech_commands":
        features["label"] = datasets.ClassLabel(names=HUB_SPEECH_COMMANDS_LABELS)
    if layout == "crema_d":
        features["label"] = datasets.ClassLabel(names=sorted(HUB_EMOTION_NAMES.values()))
    tables = {}
    for name, rows in splits.items():
        table = datasets.Dataset.from_list(rows)
        for column, feature in features.items():
            table = table.cast_column(column, feature)
        tables[name] = table
    return datasets.DatasetDict(tables)


def _audio(path, root):
    return {"bytes": Path(path).read_bytes(), "path": str(Path(path).relative_to(root))}


def _hub_timit(root):
    def detail(path):
        entries = downstream_data.read_timit_labels(path)
        return {"start": [e[0] for e in entries], "stop": [e[1] for e in entries],
                "utterance": [e[2] for e in entries]}

    splits = {}
    for split in ("train", "test"):
        rows = []
        for utterance in downstream_data.timit_utterances(root, split.upper()):
            wav = utterance["wav"]
            text = wav.with_suffix(".TXT").read_text().split(maxsplit=2)[2].strip()
            rows.append({"file": str(wav.relative_to(root)), "audio": _audio(wav, root),
                         "text": text, "phonetic_detail": detail(utterance["phn"]),
                         "word_detail": detail(utterance["wrd"]),
                         "dialect_region": utterance["region"],
                         "sentence_type": utterance["sentence_type"],
                         "speaker_id": utterance["speaker"], "id": utterance["utterance"]})
        splits[split] = rows
    return splits


def _hub_speech_commands(root):
    def row(path, label, speaker, take):
        return {"file": str(path.relative_to(root)), "audio": _audio(path, root),
                "label": HUB_SPEECH_COMMANDS_LABELS.index(label),
                "is_unknown": label not in HUB_SPEECH_COMMANDS_LABELS[:10],
                "speaker_id": speaker, "utterance_id": take}

    splits = {}
    for split in ("train", "validation", "test"):
        splits[split] = [row(e["audio"], e["label"], e["speaker"],
                             int(e["audio"].stem.rsplit("_", 1)[1]))
                         for e in downstream_data.speech_commands_examples(root, split)]
    noise, rate = sf.read(root / "_background_noise_" / "white_noise.wav", dtype="int16")
    for second in range(len(noise) // rate):
        clip = root / "_background_noise_" / f"white_noise_{second}.wav"
        sf.write(clip, noise[second * rate:(second + 1) * rate], rate, subtype="PCM_16")
        splits["train"].append(row(clip, "_silence_", None, 0))
    return splits


def _hub_crema_d(root):
    rows = [{"audio": {"bytes": e["audio"].read_bytes(), "path": e["audio"].name},
             "label": sorted(HUB_EMOTION_NAMES.values()).index(HUB_EMOTION_NAMES[e["label"]]),
             "speaker_id": e["speaker"]}
            for split in ("train", "test")
            for e in downstream_data.crema_d_examples(root, split)]
    return {"train": sorted(rows, key=lambda row: row["audio"]["path"])}


def _hub_slurp(root):
    splits = {}
    for split in ("train", "test"):
        rows = []
        for line in (root / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            for recording in record["recordings"]:
                path = root / "slurp_real" / recording["file"]
                rows.append({"audio": {"bytes": path.read_bytes(), "path": path.name},
                             **{key: record[key] for key in
                                ("slurp_id", "sentence", "scenario", "action", "intent")}})
        splits[split] = rows
    return splits


HUB_WRITERS = {"timit": _hub_timit, "speech_commands": _hub_speech_commands,
               "crema_d": _hub_crema_d, "slurp": _hub_slurp}


if __name__ == "__main__":
    sys.exit(main())
