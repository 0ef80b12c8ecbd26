"""Write a small synthetic Narratives dataset in the exact layout and formats of the DataLad
dataset (OpenNeuro ds002345 and its afni-nosmooth derivatives), with a planted signal.

    python synthetic_narratives.py --out data/synthetic_narratives --seed 0

The files are what ``narratives.NarrativesDataset`` reads from the real dataset:
``participants.tsv``, ``code/scan_exclude.json``, ``stimuli/<name>_audio.wav``,
``stimuli/gentle/<name>/align.json`` (Gentle's JSON: words found in the audio with their
phones, and transcript words ``not-found-in-audio``), ``sub-XXX/func/*_events.tsv`` and
``*_bold.json``, and ``derivatives/afni-nosmooth/sub-XXX/func/
*_space-fsaverage6_hemi-{L,R}_desc-clean.func.gii`` (one data array per TR, NaN on the medial
wall). The stories mirror the real ones' shapes, shorter: pieman (music first; three subjects
hear it twice), tunnel and lucy (story only, from 3 s), black (from 12 s), slumlordreach (two
stories in one run and one audio file), and milkyway in two versions (original, and synonyms
with a 1.52 s TR). The exclusions drop one scan a priori and one repeat.

The planted signal: the stories are spoken in ``synthetic_speech``'s language, the same as
``synthetic_data.py``'s for a seed (so a model brain-tuned on the synthetic ds003020 meets the
same words here). Per scan TR the semantic features (summed embeddings of the words whose
midpoint falls in it) and the audio's RMS energy pass through the haemodynamic lag; every
subject's vertex reads them through the same weights (the surface is shared) and adds its
own noise: ``zscore(sqrt(p) * signal + sqrt(1 - p) * noise)``, so a vertex's true ceiling of
one subject's response is ``sqrt(p)``, recorded in ``synthetic_truth.json`` with the vertex
types and the stories' words. ``synthetic_annot/?h.HCPMMP1.annot`` labels the vertices with
HCP-MMP1 names (acoustic vertices in A1 and the belt, semantic ones in 44, 45 and STSdp).
"""

import dataclasses
import json
import logging
import sys

import numpy as np

import arguments
import eval_utils
import run_utils
import synthetic_speech
from arguments import flag
from synthetic_speech import haemodynamic_lag, make_story, write_wav

logger = logging.getLogger(__name__)

TR = 1.5
SYNONYMS_TR = 1.52  # milkyway's synonyms version, as its bold.json says
VOLUMES_AFTER_S = 9.0  # scanning goes on after the last events row
TASKS = ("pieman", "tunnel", "lucy", "black", "slumlordreach", "milkyway")  # task_events
AUDIO_FORMATS = {"pieman": (22050, 2, "PCM_16"), "tunnel": (22050, 1, "PCM_16"),
                 "lucy": (16000, 1, "PCM_16"), "black": (22050, 1, "PCM_16"),
                 "slumlordreach": (16000, 2, "PCM_16"), "milkywayoriginal": (16000, 1, "PCM_16"),
                 "milkywaysynonyms": (16000, 1, "PCM_16")}
REGIONS = {"acoustic": ("A1", "LBelt", "PBelt"), "semantic": ("44", "45", "STSdp"),
           "noise": ("V1", "V2")}
MEDIAL_WALL = 4  # NaN vertices per hemisphere


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """Write a small synthetic Narratives dataset in the exact layout of the DataLad dataset,
    with a planted signal recorded in synthetic_truth.json. Deterministic for a seed."""

    out: str = flag(help="output folder (the dataset root)")
    seed: int = flag(0, help="random seed (the same as synthetic_data.py's gives the same "
                             "words)")
    n_subjects: int = flag(8, help="subjects (at least 6)")
    story_seconds: float = flag(120.0, help="length of a story (the two of slumlordreach are "
                                            "0.6 of it each)")
    n_vertices: int = flag(120, help="vertices per hemisphere")
    n_words: int = flag(48, help="vocabulary size (as synthetic_data.py's)")
    semantic_dim: int = flag(16, help="dimension of the planted word embeddings")
    semantic_fraction: float = flag(0.4, help="fraction of semantic vertices")
    acoustic_fraction: float = flag(0.2, help="fraction of acoustic-energy vertices")
    ceiling_range: list[float] = flag([0.3, 0.9], nargs=2, metavar=("LOW", "HIGH"),
                                      help="true single-subject ceilings of the signal "
                                           "vertices, spread uniformly over this range")
    overwrite: bool = flag(False, help="replace a dataset written earlier at --out")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 6, "n_subjects")
        arguments.check_at_least(self, 40, "story_seconds")
        arguments.check_at_least(self, 2 * MEDIAL_WALL + 16, "n_vertices")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=Settings.__doc__,
                           docs="docs/synthetic-data.md")


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


def run(args):
    generate(args.out, args.seed, args.n_subjects, args.story_seconds, args.n_vertices,
             args.n_words, args.semantic_dim, args.semantic_fraction, args.acoustic_fraction,
             tuple(args.ceiling_range), args.overwrite)


def task_events(task, seconds):
    """The events rows of a task's run: (onset, duration, trial_type, audio stem), in the real
    dataset's pattern (docs/dataset.md#narratives), stories ``seconds`` long."""
    story = float(round(seconds))
    if task == "pieman":
        return [(0.0, 13.0, "music", "pieman"), (15.0, story, "story", "pieman")]
    if task in ("tunnel", "lucy"):
        return [(3.0, story, "story", task)]
    if task == "black":
        return [(12.0, story, "story", task)]
    if task == "slumlordreach":
        part = float(round(0.6 * seconds))
        second = 29.5 + part + 15.0 + 25.0
        return [(4.5, 22.0, "music", task), (29.5, part, "story", task),
                (29.5 + part + 15.0, 22.0, "music", task), (second, part, "story", task)]
    if task == "milkyway":
        return [(0.0, 18.0, "music", "milkyway"), (21.0, story, "story", "milkyway")]
    raise ValueError(task)


def subject_plan(n_subjects):
    """subject -> list of (task, run or None, audio stem of milkyway's version)."""
    plan = {}
    for number in range(1, n_subjects + 1):
        runs = [("pieman", 1), ("pieman", 2)] if number <= 3 else [("pieman", None)]
        runs += [("tunnel", None), ("lucy", None), ("slumlordreach", None)]
        runs += [("black", None)] if number <= n_subjects - 2 else []
        version = "milkywayoriginal" if number % 2 else "milkywaysynonyms"
        plan[f"sub-{number:03d}"] = [(task, run, version) for task, run in runs] + [
            ("milkyway", None, version)]
    return plan


def stories_audio(seed, lexicon, seconds):
    """Audio stem -> (audio float64 mono at its rate, rate, Gentle words on the audio clock),
    and stem -> (start, end, word) tokens spoken; the audio starts at its task's first row."""
    audio, tokens = {}, {}
    for task in TASKS:
        rows = task_events(task, seconds)
        stems = ["milkywayoriginal", "milkywaysynonyms"] if task == "milkyway" else [task]
        for stem in stems:
            rate = AUDIO_FORMATS[stem][0]
            start = rows[0][0]
            total = rows[-1][0] + rows[-1][1] - start + 1.0
            sound = synthetic_speech.named_rng(seed, f"music/{stem}").normal(
                0.0, 0.002, int(round(total * rate)))
            spoken = []
            for index, (onset, duration, kind, _) in enumerate(rows):
                first = int(round((onset - start) * rate))
                if kind == "music":
                    t = np.arange(int(round(duration * rate))) / rate
                    sound[first:first + len(t)] += 0.2 * np.sin(2 * np.pi * 330.0 * t) * (
                        0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
                    continue
                story_audio, _, _, story_tokens = make_story(
                    seed, f"{stem}/{index}", lexicon, duration, rate, tail_s=1.0)
                sound[first:first + len(story_audio)] += story_audio
                spoken += [(s + onset - start, e + onset - start, word)
                           for s, e, word, _ in story_tokens]
            audio[stem], tokens[stem] = (sound, rate), spoken
    return audio, tokens


def gentle_json(tokens, lexicon, rng):
    """Gentle's align.json of spoken ``tokens`` (start, end, word): each word with its phones
    (lower case, word-position suffix) and offsets into the transcript; about one word in 40
    of the transcript was not found in the audio (no times, no phones)."""
    words, text, offset = [], [], 0
    for start, end, label in tokens:
        if rng.uniform() < 0.025:
            missing = str(rng.choice(list(lexicon["words"])))
            words.append({"alignedWord": missing, "case": "not-found-in-audio",
                          "endOffset": offset + len(missing), "startOffset": offset,
                          "word": missing})
            text.append(missing)
            offset += len(missing) + 1
        info = lexicon["words"][label]
        phones = [p.rstrip("012").lower() for p in info["phones"]]
        suffixes = ["S"] if len(phones) == 1 else ["B", *["I"] * (len(phones) - 2), "E"]
        words.append({"alignedWord": label, "case": "success", "end": round(end, 3),
                      "endOffset": offset + len(label),
                      "phones": [{"duration": d, "phone": f"{p}_{s}"} for p, d, s in
                                 zip(phones, info["durations"], suffixes)],
                      "start": round(start, 3), "startOffset": offset, "word": label})
        text.append(label)
        offset += len(label) + 1
    return {"transcript": " ".join(text), "words": words}


def scan_features(tokens, audio, rate, audio_start, tr, n_trs, lexicon):
    """Per scan TR: summed embeddings of the words whose midpoint falls in it (n_trs, dim) and
    the audio's RMS energy (n_trs,); the audio starts at ``audio_start`` s of the scan."""
    dim = len(next(iter(lexicon["words"].values()))["embedding"])
    semantic, energy = np.zeros((n_trs, dim)), np.zeros(n_trs)
    for start, end, word in tokens:
        index = int((audio_start + (start + end) / 2) // tr)
        if 0 <= index < n_trs:
            semantic[index] += lexicon["words"][word]["embedding"]
    for index in range(n_trs):
        first = max(0, int(round((index * tr - audio_start) * rate)))
        last = min(len(audio), int(round(((index + 1) * tr - audio_start) * rate)))
        if last > first:
            energy[index] = np.sqrt(np.mean(audio[first:last] ** 2))
    return semantic, energy


def vertex_plan(seed, n_vertices, semantic_dim, semantic_fraction, acoustic_fraction,
                ceiling_range):
    """The shared surface: vertex types, weights and true single-subject ceilings."""
    rng = synthetic_speech.named_rng(seed, "vertices")
    n = 2 * n_vertices
    n_semantic, n_acoustic = int(round(semantic_fraction * n)), int(round(acoustic_fraction * n))
    types = np.array(["semantic"] * n_semantic + ["acoustic"] * n_acoustic
                     + ["noise"] * (n - n_semantic - n_acoustic))[rng.permutation(n)]
    medial = np.concatenate([np.arange(MEDIAL_WALL), n_vertices + np.arange(MEDIAL_WALL)])
    types[medial] = "medial_wall"
    ceiling = np.where(np.isin(types, ("semantic", "acoustic")),
                       rng.uniform(*ceiling_range, n), 0.0)
    return {"types": types, "ceiling": ceiling,
            "semantic_weights": rng.standard_normal((n, semantic_dim)).round(4)
            * (types == "semantic")[:, None],
            "acoustic_sign": rng.choice([-1.0, 1.0], n) * (types == "acoustic")}


def scan_responses(vertices, semantic, energy, rng):
    """One subject's scan: (TRs, vertices) float32, NaN on the medial wall."""
    signal = (haemodynamic_lag(semantic) @ vertices["semantic_weights"].T
              + np.outer(haemodynamic_lag(eval_utils.zscore(energy)), vertices["acoustic_sign"]))
    p = np.square(vertices["ceiling"])
    data = eval_utils.zscore(np.sqrt(p) * eval_utils.zscore(signal)
                             + np.sqrt(1 - p) * rng.standard_normal(signal.shape))
    data[:, vertices["types"] == "medial_wall"] = np.nan
    return data.astype(np.float32)


def write_gifti(path, data):
    """A func.gii of (TRs, vertices): one float32 data array per TR, as fMRIPrep writes."""
    import nibabel

    arrays = [nibabel.gifti.GiftiDataArray(row, intent="NIFTI_INTENT_NONE",
                                           datatype="NIFTI_TYPE_FLOAT32") for row in data]
    nibabel.save(nibabel.gifti.GiftiImage(darrays=arrays), str(path))


def write_annotations(folder, vertices, n_vertices):
    """``?h.HCPMMP1.annot``: each planted type's vertices split among ``REGIONS``' parcels."""
    import nibabel

    folder.mkdir(parents=True)
    parcels = ["???"] + [parcel for kind in REGIONS.values() for parcel in kind]
    colours = np.array([[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256, 0, i]
                        for i in range(len(parcels))], np.int32)
    for index, hemi in enumerate(("lh", "rh")):
        types = vertices["types"][index * n_vertices:(index + 1) * n_vertices]
        labels = np.zeros(n_vertices, np.int32)
        for kind, names in REGIONS.items():
            members = np.flatnonzero(types == kind)
            for name, chunk in zip(names, np.array_split(members, len(names))):
                labels[chunk] = parcels.index(name)
        names = ["???"] + [f"{hemi[0].upper()}_{parcel}_ROI" for parcel in parcels[1:]]
        nibabel.freesurfer.write_annot(str(folder / f"{hemi}.HCPMMP1.annot"), labels, colours,
                                       names, fill_ctab=True)


def write_tsv(path, header, rows):
    path.write_text("\t".join(header) + "\n"
                    + "".join("\t".join(map(str, row)) + "\n" for row in rows))


def generate(out, seed=0, n_subjects=8, story_seconds=120.0, n_vertices=120, n_words=48,
             semantic_dim=16, semantic_fraction=0.4, acoustic_fraction=0.2,
             ceiling_range=(0.3, 0.9), overwrite=False):
    """Write the dataset to ``out`` (built beside it, then moved into place; a dataset written
    earlier is replaced only with ``overwrite``). Returns the truth also written to
    ``synthetic_truth.json``."""
    lexicon = synthetic_speech.make_lexicon(seed, n_words, semantic_dim)
    vertices = vertex_plan(seed, n_vertices, semantic_dim, semantic_fraction,
                           acoustic_fraction, ceiling_range)
    audio, tokens = stories_audio(seed, lexicon, story_seconds)
    plan = subject_plan(n_subjects)
    excluded = {"tunnel": {"sub-004": ["sub-004_task-tunnel"]},
                "pieman": {"sub-002": ["sub-002_task-pieman_run-2"]}}
    with run_utils.output_folder(out, overwrite, what="synthetic Narratives dataset") as tmp:
        (tmp / "code").mkdir()
        (tmp / "code" / "scan_exclude.json").write_text(json.dumps(excluded, indent=4))
        (tmp / "dataset_description.json").write_text(json.dumps(
            {"Name": "Narratives (synthetic)", "BIDSVersion": "1.2.1", "License": "CC0"}))
        gentle_rng = synthetic_speech.named_rng(seed, "gentle")
        for stem, (sound, rate) in audio.items():
            folder = tmp / "stimuli" / "gentle" / stem
            folder.mkdir(parents=True)
            write_wav(tmp / "stimuli" / f"{stem}_audio.wav", sound, rate,
                      *AUDIO_FORMATS[stem][1:])
            aligned = gentle_json(tokens[stem], lexicon, gentle_rng)
            (folder / "align.json").write_text(json.dumps(aligned, indent=4, sort_keys=True))
            (folder / "transcript.txt").write_text(aligned["transcript"] + "\n")
        participants = []
        for subject, runs in plan.items():
            func = tmp / subject / "func"
            derived = tmp / "derivatives" / "afni-nosmooth" / subject / "func"
            func.mkdir(parents=True)
            derived.mkdir(parents=True)
            rng = synthetic_speech.named_rng(seed, f"responses/{subject}")
            for task, run, version in runs:
                name = f"{subject}_task-{task}" + (f"_run-{run}" if run else "")
                rows = task_events(task, story_seconds)
                stem = version if task == "milkyway" else task
                tr = SYNONYMS_TR if stem == "milkywaysynonyms" else TR
                write_tsv(func / f"{name}_events.tsv",
                          ("onset", "duration", "trial_type", "stim_file"),
                          [(f"{onset:g}", f"{duration:g}", kind, f"{stem}_audio.wav")
                           for onset, duration, kind, _ in rows])
                (func / f"{name}_bold.json").write_text(json.dumps(
                    {"RepetitionTime": tr, "TaskName": task,
                     "NumberOfVolumesDiscardedByScanner": 3}, indent=4))
                n_trs = int(np.ceil((rows[-1][0] + rows[-1][1] + VOLUMES_AFTER_S) / tr))
                sound, rate = audio[stem]
                features = scan_features(tokens[stem], sound, rate, rows[0][0], tr, n_trs,
                                         lexicon)
                data = scan_responses(vertices, *features, rng)
                for hemi, part in zip(("L", "R"), (data[:, :n_vertices], data[:, n_vertices:])):
                    write_gifti(derived / f"{name}_space-fsaverage6_hemi-{hemi}_desc-clean."
                                          "func.gii", part)
            tasks = [task for task, run, _ in runs if run != 2]
            participants.append((subject, ",".join(["25"] * len(tasks)),
                                 ",".join(["F"] * len(tasks)), ",".join(tasks),
                                 ",".join(["n/a"] * len(tasks)), ",".join(["n/a"] * len(tasks))))
        write_tsv(tmp / "participants.tsv",
                  ("participant_id", "age", "sex", "task", "condition", "comprehension"),
                  participants)
        write_annotations(tmp / "synthetic_annot", vertices, n_vertices)
        truth = {"generator": "synthetic_narratives.py", "seed": seed, "tr_seconds": TR,
                 "n_vertices_per_hemisphere": n_vertices,
                 "vertex_type": vertices["types"].tolist(),
                 "true_ceiling": vertices["ceiling"].tolist(),
                 "semantic_weights": vertices["semantic_weights"].tolist(),
                 "acoustic_sign": vertices["acoustic_sign"].tolist(),
                 "words": lexicon["words"], "excluded": excluded,
                 "regions": {kind: list(parcels) for kind, parcels in REGIONS.items()}}
        (tmp / "synthetic_truth.json").write_text(json.dumps(truth) + "\n")
    logger.info("wrote %d subjects' scans of %d audio files to %s", len(plan), len(audio), out)
    return truth


if __name__ == "__main__":
    sys.exit(main())
