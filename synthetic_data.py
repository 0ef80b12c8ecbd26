"""Write a small synthetic Moth Radio Hour dataset in the exact layout and formats of ds003020.

    python synthetic_data.py --out data/synthetic --seed 0

The files are what ``data_utils`` reads from the real dataset: ``stimuli/<story>.wav`` (44.1 kHz
16-bit stereo for some stories, 16 kHz mono, 22.05 kHz 24-bit mono for others),
``derivative/respdict.json``, ``derivative/TextGrids/<story>.TextGrid`` (phone and word tiers;
long text format, with ``legacy`` and ``exorcism`` in the short format and ``life`` in the
chronological one; some files start with a UTF-8 BOM) and
``derivative/preprocessed_data/UTS0N/<story>.hf5`` (float64 ``data`` with rows = respdict - 20,
z-scored per story; ``individual_repeats`` for ``wheretheressmoke``).

The planted signal
------------------
Stimulus: each story is a sequence of word tokens from a small vocabulary, with pauses and
noise tokens (``sp``, ``{BR}``, ``{LG}``, ``{NS}``) between them. Every word is a fixed sequence
of 2-4 ARPAbet phones and every phone a short harmonic sound with its own pair of
frequencies, so a word's acoustics identify the word. With ``family_size`` > 1 (``--family_size``)
words come instead in anagram families: 3-4 phones spoken in ``family_size`` different orders.
Each token gets a random loudness, so acoustic energy varies independently of which word is
spoken.

Responses: on the standard TR grid (TR ``k`` covers ``2k - 10 .. 2k - 8`` s from story onset)
two stimulus features are computed per TR:

* semantic: the sum of the fixed ``semantic_dim``-dimensional embeddings (normal, one per
  word) of the words whose midpoint falls in the TR. In anagram families the embeddings are
  centred within each family: as the words of a family share their sounds, the semantic
  signal then cannot be predicted from which sounds are heard (spectrum, phone counts), only
  from word identity, i.e. phone order;
* acoustic: the RMS energy of the audio in the TR.

Both pass through a haemodynamic lag of 2, 3 and 4 TRs (4-8 s, weights ``HRF_WEIGHTS``).
A *semantic* voxel's signal is its lagged semantic features times a fixed random weight
vector; an *acoustic* voxel's signal is the lagged energy (with a random sign); a *noise*
voxel has none. Each voxel has a signal fraction ``p``: one presentation is
``sqrt(p) * signal + sqrt(1 - p) * noise`` (signal z-scored per story, white Gaussian noise),
then z-scored per story. With ``N`` repeats its true noise ceiling is
``1 / sqrt(1 + (1/p - 1) / N)``; signal voxels get ceilings spread uniformly over
``cc_max_range`` (0.1-0.9), noise voxels 0. A few noise voxels are NaN throughout the first
training story, as masked voxels are in the real data.

Everything is recorded in ``synthetic_truth.json`` at the dataset root: voxel types, signal
fractions, true noise ceilings, the words (phones, embedding), the phone frequencies, the
HRF and each story's split and file formats.
"""

import dataclasses
import json
import logging
import sys
from pathlib import Path

import h5py
import numpy as np

import arguments
import data_utils
import eval_utils
import run_utils
import synthetic_speech
import tr_files
from arguments import flag
from synthetic_speech import HRF_DELAYS, HRF_WEIGHTS, haemodynamic_lag, make_story, write_wav

logger = logging.getLogger(__name__)


CC_MAX_RANGE = (0.1, 0.9)
# Training stories in the order they are taken, so that small datasets still hold the
# stories whose TextGrids are in the compact formats.
TRAIN_ORDER = ("souls", "legacy", "exorcism") + tuple(
    s for s in data_utils.TRAIN_STORIES if s not in ("souls", "legacy", "exorcism"))
TEXTGRID_FORMATS = {"legacy": "short", "exorcism": "short", "life": "chronological"}
AUDIO_FORMATS = ((44100, 2, "PCM_16"), (16000, 1, "PCM_16"), (44100, 2, "PCM_16"),
                 (22050, 1, "PCM_24"))


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """Write a small synthetic dataset in the exact ds003020 layout, with a planted signal
    (semantic, acoustic and noise voxels) recorded in synthetic_truth.json. Deterministic for
    a seed."""

    out: str = flag(help="output folder (the dataset root)")
    seed: int = flag(0, help="random seed")
    subjects: list[str] = flag(["1", "2"], help="subjects to write, 1..9")
    n_train_stories: int = flag(8, help="training stories, taken from the paper's list")
    train_trs: int = flag(64, help="TRs acquired per training/validation story, +-8 for "
                                   "training (responses have 20 rows fewer)")
    test_trs: int = flag(120, help="TRs acquired for the test story wheretheressmoke")
    n_voxels: int = flag(200, help="voxels of UTS01; UTSn gets 16 * (n - 1) more")
    n_words: int = flag(48, help="vocabulary size")
    semantic_dim: int = flag(16, help="dimension of the planted word embeddings")
    semantic_fraction: float = flag(0.4, help="fraction of semantic voxels")
    acoustic_fraction: float = flag(0.2, help="fraction of acoustic-energy voxels; the rest are "
                                              "noise")
    cc_max_range: list[float] = flag(list(CC_MAX_RANGE), nargs=2, metavar=("LOW", "HIGH"),
                                     help="true noise ceilings of the signal voxels are spread "
                                          "uniformly over this range; higher means cleaner "
                                          "single presentations")
    family_size: int = flag(1, help="words per anagram family (1: independent words); with 2-6 "
                                    "the semantic signal lives in phone order only")
    overwrite: bool = flag(False, help="replace a dataset written earlier at --out")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=Settings.__doc__,
                           docs="docs/synthetic-data.md")


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


def run(args):
    generate(args.out, args.seed, args.subjects, args.n_train_stories, args.train_trs,
             args.test_trs, args.n_voxels, args.n_words, args.semantic_dim,
             args.semantic_fraction, args.acoustic_fraction, tuple(args.cc_max_range),
             args.family_size, args.overwrite)


def audio_seconds(respdict_trs):
    """The length of a story's WAV: 1 s before its simulated TR grid ends (2 * respdict - 20 s),
    as real ds003020 WAVs end within -2.0..+0.3 s of it."""
    return 2.0 * respdict_trs - 21.0


def tr_features(tokens, audio, rate, n_grid_trs, lexicon):
    """Per grid TR: summed word embeddings (n_grid_trs, dim) and audio RMS energy (n_grid_trs,)."""
    tr_starts = tr_files.TRFile.simulated(n_grid_trs, data_utils.TR_SECONDS,
                                           data_utils.SIMULATED_SOUND_START).tr_starts()
    dim = len(next(iter(lexicon["words"].values()))["embedding"])
    semantic = np.zeros((n_grid_trs, dim))
    for start, end, word, _ in tokens:
        tr = int(np.searchsorted(tr_starts, (start + end) / 2, side="right")) - 1
        if 0 <= tr < n_grid_trs:
            semantic[tr] += lexicon["words"][word]["embedding"]
    energy = np.zeros(n_grid_trs)
    for tr, start in enumerate(tr_starts):
        first = max(0, int(round(start * rate)))
        last = min(len(audio), int(round((start + data_utils.TR_SECONDS) * rate)))
        if last > first:
            energy[tr] = np.sqrt(np.mean(audio[first:last] ** 2))
    return semantic, energy


# ----------------------------------------------------------------------------- responses

VOXEL_TYPES = ("semantic", "acoustic", "noise")


def make_subject(seed, subject, n_voxels, n_repeats, semantic_dim, semantic_fraction,
                 acoustic_fraction, cc_max_range=CC_MAX_RANGE, types=None):
    """Voxel types, signal fractions, true ceilings and weights of one synthetic subject.

    ``types``: None (the fractions, in a random order), or each voxel's type (one of
    ``VOXEL_TYPES``), e.g. to plant effects in brain regions."""
    rng = synthetic_speech.named_rng(seed, f"subject/{subject}")
    n_semantic = int(round(semantic_fraction * n_voxels))
    n_acoustic = int(round(acoustic_fraction * n_voxels))
    planted = np.array(["semantic"] * n_semantic + ["acoustic"] * n_acoustic
                       + ["noise"] * (n_voxels - n_semantic - n_acoustic))
    planted = planted[rng.permutation(n_voxels)]
    if types is None:
        types = planted
    else:
        types = np.asarray(types, dtype=str)
        if types.shape != (n_voxels,) or not np.isin(types, VOXEL_TYPES).all():
            raise ValueError(f"{subject}: voxel types must be {n_voxels} of "
                             f"{', '.join(VOXEL_TYPES)}")
    target = rng.uniform(*cc_max_range, n_voxels)
    signal_fraction = np.where(types == "noise", 0.0,
                               1.0 / (1.0 + n_repeats * (1.0 / target ** 2 - 1.0)))
    true_cc_max = np.zeros(n_voxels)
    has_signal = signal_fraction > 0
    true_cc_max[has_signal] = 1.0 / np.sqrt(
        1.0 + (1.0 / signal_fraction[has_signal] - 1.0) / n_repeats)
    return {
        "types": types,
        "signal_fraction": signal_fraction,
        "true_cc_max": true_cc_max,
        "n_repeats": n_repeats,
        # rounded as written to synthetic_truth.json, so the recorded weights are the ones used
        "semantic_weights": (rng.standard_normal((n_voxels, semantic_dim)).round(4)
                             * (types == "semantic")[:, None]),
        "acoustic_sign": rng.choice([-1.0, 1.0], n_voxels) * (types == "acoustic"),
    }


def voxel_signals(subject, semantic, energy):
    """Noise-free z-scored signal of every voxel on the response rows: (rows, n_voxels)."""
    lagged_semantic = haemodynamic_lag(semantic)
    lagged_energy = haemodynamic_lag(eval_utils.zscore(energy))
    signal = lagged_semantic @ subject["semantic_weights"].T + np.outer(lagged_energy,
                                                                        subject["acoustic_sign"])
    rows = slice(data_utils.TRIM_START_TRS, len(energy) - data_utils.TRIM_END_TRS)
    return eval_utils.zscore(signal[rows])


def presentation(signal, subject, rng):
    """One noisy presentation, z-scored per voxel: (rows, n_voxels)."""
    p = subject["signal_fraction"]
    noise = rng.standard_normal(signal.shape)
    return eval_utils.zscore(np.sqrt(p) * signal + np.sqrt(1.0 - p) * noise)


# ----------------------------------------------------------------------------- writers

def _praat_number(value):
    return repr(float(value)) if value != int(value) else str(int(value))


def _praat_string(text):
    return '"' + text.replace('"', '""') + '"'


def format_textgrid(tiers, duration, fmt="long"):
    """Text of a Praat TextGrid of interval tiers (dict name -> [(start, end, label)]).

    fmt: "long", "short" or "chronological", as Praat writes them.
    """
    n, end = _praat_number, _praat_number(duration)
    if fmt == "chronological":
        lines = ['"Praat chronological TextGrid text file"', f"0 {end}   ! Time domain.",
                 f"{len(tiers)}   ! Number of tiers."]
        lines += [f'"IntervalTier" {_praat_string(name)} 0 {end}' for name in tiers]
        entries = sorted((start, index, stop, label)
                         for index, entries in enumerate(tiers.values(), 1)
                         for start, stop, label in entries)
        for start, index, stop, label in entries:
            lines += ["", f"{index} {n(start)} {n(stop)}", _praat_string(label)]
        return "\n".join(lines) + "\n"
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', ""]
    if fmt == "short":
        lines += ["0", end, "<exists>", str(len(tiers))]
        for name, entries in tiers.items():
            lines += ['"IntervalTier"', _praat_string(name), "0", end, str(len(entries))]
            for start, stop, label in entries:
                lines += [n(start), n(stop), _praat_string(label)]
        return "\n".join(lines) + "\n"
    if fmt != "long":
        raise ValueError(f"unknown TextGrid format {fmt!r}")
    lines += ["xmin = 0 ", f"xmax = {end} ", "tiers? <exists> ", f"size = {len(tiers)} ",
              "item []: "]
    for index, (name, entries) in enumerate(tiers.items(), 1):
        lines += [f"    item [{index}]:", '        class = "IntervalTier" ',
                  f"        name = {_praat_string(name)} ", "        xmin = 0 ",
                  f"        xmax = {end} ", f"        intervals: size = {len(entries)} "]
        for number, (start, stop, label) in enumerate(entries, 1):
            lines += [f"        intervals [{number}]:", f"            xmin = {n(start)} ",
                      f"            xmax = {n(stop)} ",
                      f"            text = {_praat_string(label)} "]
    return "\n".join(lines) + "\n"


def write_textgrid(path, tiers, duration, fmt="long", bom=False):
    """Write a TextGrid in UTF-8, with a byte-order mark if ``bom``."""
    text = format_textgrid(tiers, duration, fmt)
    Path(path).write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))


# ----------------------------------------------------------------------------- dataset

def story_plan(n_train_stories, train_trs, test_trs, seed):
    """Story -> (split, respdict TRs) of the dataset; training lengths vary by +-8 TRs."""
    if not 1 <= n_train_stories <= len(TRAIN_ORDER):
        raise run_utils.UsageError(f"n_train_stories must be 1..{len(TRAIN_ORDER)}")
    if min(train_trs, test_trs) < data_utils.RESPONSE_ROWS_OFFSET + 8:
        raise run_utils.UsageError(
            f"stories need at least {data_utils.RESPONSE_ROWS_OFFSET + 8} TRs")
    rng = synthetic_speech.named_rng(seed, "plan")
    plan = {story: ("train", int(train_trs + rng.integers(-8, 9)))
            for story in TRAIN_ORDER[:n_train_stories]}
    plan["stagefright"] = ("validation", train_trs)
    plan["life"] = ("validation", train_trs)
    plan[data_utils.TEST_STORY] = ("test", test_trs)
    return plan


def generate(out, seed=0, subjects=(1, 2), n_train_stories=8, train_trs=64, test_trs=120,
             n_voxels=200, n_words=48, semantic_dim=16, semantic_fraction=0.4,
             acoustic_fraction=0.2, cc_max_range=CC_MAX_RANGE, family_size=1, overwrite=False,
             voxel_types=None):
    """Write the dataset to ``out`` (built beside it, then moved into place; see
    ``run_utils.output_folder``: a dataset written earlier is replaced only with ``overwrite``,
    a folder the project did not write never).

    Subject ``s`` gets ``n_voxels + 16 * (s - 1)`` voxels and 10 repeats of the test story
    (5 from UTS04 on, as in ds003020); with several subjects the last lacks ``life``.
    ``voxel_types``: subject name -> each voxel's type, for subjects whose voxels should not
    be typed at random by the fractions (``make_subject``).
    Returns the ground truth that is also written to ``synthetic_truth.json``.
    """
    plan = story_plan(n_train_stories, train_trs, test_trs, seed)
    lexicon = synthetic_speech.make_lexicon(seed, n_words, semantic_dim, family_size)
    names = [data_utils.subject_id(s) for s in subjects]
    truth = {
        "generator": "synthetic_data.py", "seed": seed,
        "tr_seconds": data_utils.TR_SECONDS,
        "hrf": {"delays_tr": list(HRF_DELAYS), "weights": list(HRF_WEIGHTS)},
        "semantic_dim": semantic_dim, "family_size": family_size,
        "signal_model": "presentation = zscore(sqrt(p) * zscore(signal) + sqrt(1 - p) * noise)",
        "phones": {p: list(f) for p, f in lexicon["phones"].items()},
        "words": lexicon["words"], "stories": {}, "subjects": {},
    }
    features = {}
    with run_utils.output_folder(out, overwrite, what="synthetic dataset") as tmp:
        derivative = tmp / "derivative"
        for folder in ("stimuli", "derivative/TextGrids"):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        for index, (story, (split, n_trs)) in enumerate(plan.items()):
            rate, channels, subtype = AUDIO_FORMATS[index % len(AUDIO_FORMATS)]
            duration = audio_seconds(n_trs)
            audio, phone_tier, word_tier, tokens = make_story(seed, story, lexicon, duration, rate)
            fmt = TEXTGRID_FORMATS.get(story, "long")
            bom = index % 3 == 1
            write_wav(tmp / "stimuli" / f"{story}.wav", audio, rate, channels, subtype)
            write_textgrid(derivative / "TextGrids" / f"{story}.TextGrid",
                           {"phone": phone_tier, "word": word_tier}, duration, fmt, bom)
            features[story] = tr_features(tokens, audio, rate, n_trs - data_utils.RESPDICT_PAD_TRS,
                                          lexicon)
            truth["stories"][story] = {"split": split, "respdict_trs": n_trs,
                                       "duration_s": duration, "sampling_rate": rate,
                                       "channels": channels, "subtype": subtype,
                                       "textgrid_format": fmt, "bom": bom,
                                       "n_words": len(tokens)}
        (derivative / "respdict.json").write_text(
            json.dumps({story: n_trs for story, (_, n_trs) in plan.items()}, indent=1))
        for number, name in enumerate(names):
            subject_number = int(name[3:])
            n_repeats = 10 if subject_number <= 3 else 5
            subject = make_subject(seed, name, n_voxels + 16 * (subject_number - 1), n_repeats,
                                   semantic_dim, semantic_fraction, acoustic_fraction,
                                   cc_max_range, (voxel_types or {}).get(name))
            stories = [s for s in plan if not (s == "life" and len(names) > 1
                                               and number == len(names) - 1)]
            rng = synthetic_speech.named_rng(seed, f"responses/{name}")
            nan_story = next(s for s in plan if plan[s][0] == "train")
            nan_voxels = np.flatnonzero(subject["types"] == "noise")[:2]
            folder = derivative / "preprocessed_data" / name
            folder.mkdir(parents=True)
            for story in stories:
                signal = voxel_signals(subject, *features[story])
                with h5py.File(folder / f"{story}.hf5", "w") as handle:
                    if story == data_utils.TEST_STORY:
                        repeats = np.stack([presentation(signal, subject, rng)
                                            for _ in range(n_repeats)])
                        handle.create_dataset("data", data=eval_utils.zscore(repeats.mean(axis=0)))
                        handle.create_dataset("individual_repeats", data=repeats)
                    else:
                        data = presentation(signal, subject, rng)
                        if story == nan_story:
                            data[:, nan_voxels] = np.nan
                        handle.create_dataset("data", data=data)
            truth["subjects"][name] = {
                "n_voxels": len(subject["types"]), "n_repeats": n_repeats, "stories": stories,
                "voxel_type": subject["types"].tolist(),
                **{f"{kind}_voxels": np.flatnonzero(subject["types"] == kind).tolist()
                   for kind in ("semantic", "acoustic", "noise")},
                "signal_fraction": subject["signal_fraction"].tolist(),
                "true_cc_max": subject["true_cc_max"].tolist(),
                "nan_voxels": {nan_story: nan_voxels.tolist()},
                "semantic_weights": subject["semantic_weights"].tolist(),
                "acoustic_sign": subject["acoustic_sign"].tolist(),
            }
        (tmp / "synthetic_truth.json").write_text(json.dumps(truth) + "\n")
    logger.info("wrote %d stories and %d subject(s) to %s", len(plan), len(names), out)
    return truth


if __name__ == "__main__":
    sys.exit(main())
