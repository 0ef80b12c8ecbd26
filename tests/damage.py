"""One defect each, applied to a private copy of a synthetic dataset (``dataset_copy``), given
by its root folder (a ``data_utils.Dataset`` opened before ``set_respdict`` keeps the respdict
it has read: open a new one).

The bad inputs a new user meets: stimuli that do not cover the story, respdict counts that
make no sense, response files of the wrong shape, TextGrid tiers in an unexpected order.
"""

import json

import h5py
import numpy as np
import soundfile as sf

import data_utils
import synthetic_data
import textgrids


def _dataset(data_dir):
    return data_utils.Dataset(data_dir)


def _wav(data_dir, story):
    return _dataset(data_dir).stimulus_path(story)


def shorten_wav(data_dir, story, seconds):
    """Rewrite ``stimuli/<story>.wav`` as a valid WAV holding only its first ``seconds``."""
    path = _wav(data_dir, story)
    info = sf.info(str(path))
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    sf.write(path, audio[:int(round(seconds * rate))], rate, subtype=info.subtype)


def truncate_wav_bytes(data_dir, story, fraction):
    """Cut ``stimuli/<story>.wav`` to ``fraction`` of its bytes; its header still claims the
    full length (an interrupted download)."""
    path = _wav(data_dir, story)
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * fraction)])


def set_respdict(data_dir, story, value):
    """Set ``respdict[story]`` to ``value`` (any JSON value)."""
    path = _dataset(data_dir).derivative / "respdict.json"
    respdict = json.loads(path.read_text())
    respdict[story] = value
    path.write_text(json.dumps(respdict))


def read_hdf5(data_dir, subject, story, name="data"):
    """Dataset ``name`` of a story's response file, as stored (float64)."""
    with h5py.File(_dataset(data_dir).response_path(subject, story), "r") as handle:
        return handle[name][()]


def replace_hdf5(data_dir, subject, story, name, array):
    """Replace dataset ``name`` of a story's response file by ``array``."""
    with h5py.File(_dataset(data_dir).response_path(subject, story), "a") as handle:
        del handle[name]
        handle.create_dataset(name, data=np.asarray(array))


def swap_tiers(data_dir, story, names=("", "")):
    """Rewrite a story's TextGrid with the word tier first; ``names`` are the names the
    (word, phone) tiers get: unnamed by default, ("phone", "word") for names that contradict
    the content, ("word", "phone") for honest names."""
    path = _dataset(data_dir).textgrid_path(story)
    grid = textgrids.load_textgrid(path)
    phones, words = list(grid.values())[:2]
    end = max(entry[1] for entry in phones + words)
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0",
             f"xmax = {end}", "tiers? <exists>", "size = 2", "item []:"]
    for number, (name, entries) in enumerate(zip(names, (words, phones)), 1):
        lines += [f"    item [{number}]:", '        class = "IntervalTier"',
                  f'        name = "{name}"', "        xmin = 0", f"        xmax = {end}",
                  f"        intervals: size = {len(entries)}"]
        for index, (start, stop, label) in enumerate(entries, 1):
            lines += [f"        intervals [{index}]:", f"            xmin = {start}",
                      f"            xmax = {stop}", f'            text = "{label}"']
    path.write_text("\n".join(lines) + "\n")


def shorten_story(data_dir, story, rows):
    """Make a story ``rows`` response rows long, consistently: every subject's responses (and
    repeats) cut to ``rows``, respdict ``rows + 20``, the WAV cut to end 1 s before the TR grid
    does (``synthetic_data.audio_seconds``) and the TextGrid cut there too (a story that is merely short, not damaged)."""
    dataset = _dataset(data_dir)
    for subject in dataset.subjects():
        path = dataset.subject_dir(subject) / f"{story}.hf5"
        if not path.is_file():
            continue
        with h5py.File(path, "a") as handle:
            for name in ("data", "individual_repeats"):
                if name in handle:
                    values = handle[name][()]
                    del handle[name]
                    handle[name] = values[:rows] if values.ndim == 2 else values[:, :rows]
    set_respdict(data_dir, story, rows + 20)
    seconds = synthetic_data.audio_seconds(rows + 20)
    shorten_wav(data_dir, story, seconds)
    path = dataset.textgrid_path(story)
    _, grid = textgrids.read_textgrid(path)
    cut = {name: [(start, min(end, seconds), label) for start, end, label in entries
                  if start < seconds] for name, entries in grid.items()}
    synthetic_data.write_textgrid(path, cut, seconds)
