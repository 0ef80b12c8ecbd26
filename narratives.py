"""The Narratives fMRI dataset (Nastase et al. 2021; OpenNeuro ds002345 with its DataLad
derivatives) behind the same handle as ds003020, ``NarrativesDataset``
(docs/dataset.md#narratives).

    python data_utils.py check --dataset narratives --data_dir /path/to/narratives

Layout (the DataLad dataset ``///labs/hasson/narratives``)::

    <root>/code/scan_exclude.json                      task -> subject -> excluded scan names
    <root>/stimuli/<name>_audio.wav                    the file an events row's stim_file names
    <root>/stimuli/gentle/<name>/align.json            Gentle words and phones, audio clock
    <root>/sub-XXX/func/sub-XXX_task-T[_run-N]_events.tsv, ..._bold.json
    <root>/derivatives/afni-nosmooth/sub-XXX/func/
        sub-XXX_task-T[_run-N]_space-fsaverage6_hemi-{L,R}_desc-clean.func.gii
        sub-XXX_task-T[_run-N]_space-MNI152NLin2009cAsym_res-native_desc-clean_bold.nii.gz
    <root>/derivatives/afni-nosmooth/tpl-MNI152NLin2009cAsym/
        tpl-MNI152NLin2009cAsym_res-<task>_desc-brain_mask.nii.gz

A story is an events row of ``trial_type`` "story", named after its ``stim_file`` without
``_audio.wav`` (so milkyway's three versions are three stories); a run holding two rows of one
file (slumlordreach) gives one story per row, named by ``SPLIT_STORIES``; a story a subject
heard in several runs (pieman) is its repeats. Checked assumptions (docs/dataset.md#narratives):
the audio starts on the scan clock at the first events row of its file; every listener of a
story has the same TR, story duration and audio onset (up to a TR's rounding).

Timing: a scan's TR is its bold.json ``RepetitionTime`` (1.5 s; 1.52 s for milkyway's
synonyms). A subject's response rows of a story are its scan TRs from ``round(onset / TR) +
STORY_START_TRIM_TRS`` for ``round(duration / TR) - STORY_START_TRIM_TRS`` TRs, z-scored per
vertex (the authors' trimming). The story's TR grid (``tr_times``) has ``TRIM_START_TRS`` TRs
before the first response row and ``TRIM_END_TRS`` after the last, as ds003020's does, on the
audio clock.
"""

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np

import audio_io
import data_utils
import eval_utils
import run_utils
from audio_io import SAMPLING_RATE
from run_utils import DatasetError

HEMIS = ("L", "R")
PIPELINE = "afni-nosmooth"  # the cleaned, unsmoothed derivatives
STORY_START_TRIM_TRS = 6  # the authors' initial_trim: TRs after the story onset left out
WINDOW_TR_S = 1.5  # the brain-tuning windows span this many seconds per delay
SPLIT_STORIES = {"slumlordreach": ("slumlord", "reach")}  # one file, two stories in one run
ONSET_TOLERANCE_S = 0.01  # listeners' audio onsets of a story may differ this much
AUDIO_SHORT_TOLERANCE_S = 1.5  # a story's audio may end this much before its events row
ONSET_CHECK_S = 10.0  # speech is expected from a story's onset, none in the seconds before it
GENTLE_PHONE_SUFFIX = re.compile(r"_[BIES]$")
GENTLE_NOISE_PHONES = {"sil", "sp", "spn", "oov"}
GROUP = "group"  # the subject that is the mean of a story's listeners
ROOT_HINT = ("--data_dir must be the Narratives root (the DataLad dataset holding sub-*/, "
             "stimuli/, code/ and derivatives/)")
FETCH = "datalad get"


def subject_id(subject):
    """Canonical Narratives subject name: ``1``, ``"001"``, ``"sub-001"`` -> ``"sub-001"``;
    ``"group"``: the mean of each story's listeners (``GROUP``)."""
    if str(subject).strip().lower() == GROUP:
        return GROUP
    match = re.fullmatch(r"(?:sub-)?0*([1-9]\d{0,2})", str(subject).strip(), re.IGNORECASE)
    if match is None:
        raise DatasetError(f"subject {subject!r} not understood: give a number (1, '001') or a "
                           "name such as 'sub-001'")
    return f"sub-{int(match.group(1)):03d}"


@dataclasses.dataclass(frozen=True)
class Scan:
    """One BOLD run of a subject: its BIDS name and the rows of its events.tsv."""
    subject: str
    task: str
    name: str  # sub-XXX_task-T[_run-N]
    events: tuple  # (onset s, duration s, trial_type, stim_file) per row

    def audio_start(self, stim_file):
        """Scan time of the audio file's t=0: the first events row of that file."""
        return next(onset for onset, _, _, stim in self.events if stim == stim_file)


@dataclasses.dataclass(frozen=True)
class Hearing:
    """A story as one scan holds it."""
    scan: Scan
    onset: float  # scan seconds
    duration: float
    stim_file: str


class NarrativesDataset:
    """A Narratives copy on disk (``root``), its responses in ``space`` (fsaverage6 surface
    vertices, left then right hemisphere, or MNI152NLin2009cAsym voxels in the task's brain
    mask).

    It answers the questions ``data_utils.Dataset`` answers for ds003020, with the same names
    and meanings (subjects, stories, responses, TR grid, audio, words and phones, run checks),
    and those of a dataset heard once by many: ``listeners`` and the ``intersubject_ceiling``
    of a story.
    """

    name = "narratives"
    tr_source = "events"  # timing: the scan clock of the BIDS events and bold.json
    test_rows_skipped = 0  # scored from the first response row of the test story
    shared_space = True  # every subject's columns are the same vertices

    def __init__(self, root, space="fsaverage6"):
        if space not in data_utils.NARRATIVES_SPACES:
            raise DatasetError(f"space must be one of {', '.join(data_utils.NARRATIVES_SPACES)}, "
                               f"got {space!r}")
        self.root, self.space = Path(root), space
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such directory; {ROOT_HINT}")
        if not any(self.root.glob("sub-*/func")):
            raise DatasetError(f"{self.root}: no sub-*/func folders; {ROOT_HINT}")
        self.derivative = self.root / "derivatives" / PIPELINE
        self._scans = self._hearings = None
        self._repetition_times, self._timings = {}, {}

    def __repr__(self):
        return f"NarrativesDataset({str(self.root)!r}, space={self.space!r})"

    def settings(self):
        """What a run records of its dataset."""
        return {"dataset": self.name, "data_dir": str(self.root), "space": self.space}

    subject_id = staticmethod(subject_id)

    # ------------------------------------------------------------------------- scans

    def exclusions(self):
        """``code/scan_exclude.json``: task -> subject -> substrings of excluded scan names."""
        path = self.root / "code" / "scan_exclude.json"
        try:
            value = json.loads(path.read_text())
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing; the authors' scan exclusions are part of the "
                               f"dataset: `{FETCH} code/scan_exclude.json`") from None
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: not readable JSON ({err}); get it again") from None
        if not isinstance(value, dict) or not all(
                isinstance(v, dict) and all(isinstance(p, list) for p in v.values())
                for v in value.values()):
            raise DatasetError(f"{path}: expected task -> subject -> list of scan names")
        return value

    def scans(self):
        """Every kept scan (not in ``exclusions``), read from its events.tsv: a list of
        ``Scan``. An events file without the BIDS columns is a DatasetError naming it."""
        if self._scans is None:
            excluded = self.exclusions()
            scans = []
            for path in sorted(self.root.glob("sub-*/func/sub-*_task-*_events.tsv")):
                name = path.name[:-len("_events.tsv")]
                subject, task = name.split("_")[0], re.search(r"_task-([^_]+)", name).group(1)
                patterns = excluded.get(task, {}).get(subject, [])
                if any(pattern in name for pattern in patterns):
                    continue
                scans.append(Scan(subject, task, name, _read_events(path)))
            self._scans = scans
        return self._scans

    def func_dir(self, subject):
        return self.root / subject / "func"

    def events_path(self, scan):
        return self.func_dir(scan.subject) / f"{scan.name}_events.tsv"

    def bold_json_path(self, scan):
        return self.func_dir(scan.subject) / f"{scan.name}_bold.json"

    def repetition_time(self, scan):
        """A scan's TR in seconds, from its bold.json ``RepetitionTime``."""
        if scan.name not in self._repetition_times:
            path = self.bold_json_path(scan)
            try:
                tr = json.loads(path.read_text())["RepetitionTime"]
            except FileNotFoundError:
                raise DatasetError(f"{path}: missing; `{FETCH} {path.relative_to(self.root)}` "
                                   "(it holds the scan's RepetitionTime)") from None
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise DatasetError(f"{path}: no readable RepetitionTime ({err!r}); get the "
                                   "file again") from None
            if not isinstance(tr, (int, float)) or not 0.3 < tr < 5:
                raise DatasetError(f"{path}: RepetitionTime {tr!r} is not a TR in seconds")
            self._repetition_times[scan.name] = float(tr)
        return self._repetition_times[scan.name]

    def hearings(self):
        """story -> subject -> the ``Hearing``s (one per kept run; several: repeats)."""
        if self._hearings is None:
            found = {}
            for scan in self.scans():
                rows = [row for row in scan.events if row[2] == "story"]
                names = _story_names(rows, self.events_path(scan))
                for name, (onset, duration, _, stim) in zip(names, rows):
                    found.setdefault(name, {}).setdefault(scan.subject, []).append(
                        Hearing(scan, onset, duration, stim))
            self._hearings = found
        return self._hearings

    def listeners(self, story):
        """Sorted subjects with kept scans of ``story``."""
        return sorted(self._story(story))

    def _story(self, story):
        hearings = self.hearings()
        if story not in hearings:
            known = sorted(hearings)
            raise DatasetError(f"{self.root}: no kept scan of story {story!r}; stories: "
                               f"{', '.join(known[:12])}{' ...' if len(known) > 12 else ''}")
        return hearings[story]

    def subjects(self):
        """Sorted subjects with at least one kept scan of a story."""
        return sorted({s for by_subject in self.hearings().values() for s in by_subject})

    def stories(self, subject):
        """Sorted stories a subject heard in kept scans (the group: every story)."""
        subject = subject_id(subject)
        if subject == GROUP:
            return sorted(self.hearings())
        return sorted(story for story, by_subject in self.hearings().items()
                      if subject in by_subject)

    def is_group(self, subject):
        """Whether ``subject`` is the mean of each story's listeners (``--subject group``)."""
        return subject_id(subject) == GROUP

    def _hearing_runs(self, subject, story):
        """A subject's kept runs of a story (the group: every listener's)."""
        if self.is_group(subject):
            return [run for runs in self._story(story).values() for run in runs]
        runs = self._story(story).get(subject_id(subject))
        if not runs:
            raise DatasetError(f"{self.root / subject_id(subject)}: subject "
                               f"{subject_id(subject)} has no kept scan of story {story!r}; "
                               f"its stories: {', '.join(self.stories(subject)) or 'none'}")
        return runs

    # ------------------------------------------------------------------------- story timing

    def story_timing(self, story):
        """A story's timing, the same for every listener (checked): dict with ``tr`` (s),
        ``rows`` (response rows), ``audio_onset`` (the story's onset on the audio clock, s),
        ``first_row_audio`` (audio time of the first response row's TR start: the listeners'
        own where they agree; where their onsets differ within a TR (schema), the story's
        ``audio_onset + STORY_START_TRIM_TRS * tr``, which each listener's rounded rows lie
        within half a TR of), ``stim_file`` and ``row_spread`` (the largest distance, s,
        between a listener's first row and ``first_row_audio``)."""
        if story not in self._timings:
            self._timings[story] = self._story_timing(story)
        return self._timings[story]

    def _story_timing(self, story):
        facts = []
        for subject, runs in sorted(self._story(story).items()):
            for hearing in runs:
                tr = self.repetition_time(hearing.scan)
                audio0 = hearing.scan.audio_start(hearing.stim_file)
                facts.append((hearing, tr, hearing.onset - audio0,
                              round(hearing.duration / tr) - STORY_START_TRIM_TRS,
                              _first_row(hearing, tr) * tr - audio0))
        reference = facts[0]
        for hearing, tr, audio_onset, rows, _ in facts[1:]:
            where = f"{self.events_path(hearing.scan)} and {self.events_path(reference[0].scan)}"
            if tr != reference[1]:
                raise DatasetError(f"{where}: listeners of story {story!r} have TRs {tr} and "
                                   f"{reference[1]} s (bold.json); a story needs one TR grid")
            if rows != reference[3] or hearing.stim_file != reference[0].stim_file:
                raise DatasetError(f"{where}: story {story!r} has other durations or audio "
                                   "files in them; get the events files again")
            if abs(audio_onset - reference[2]) > ONSET_TOLERANCE_S:
                raise DatasetError(
                    f"{where}: story {story!r} starts {audio_onset:.2f} and {reference[2]:.2f} "
                    "s into its audio; the audio is assumed to start at the first events row "
                    "of its file, which these rows contradict (exclude the scan or fix its "
                    "events)")
        if reference[3] < 1:
            raise DatasetError(f"{self.events_path(reference[0].scan)}: story {story!r} lasts "
                               f"{reference[0].duration} s, no response row after the first "
                               f"{STORY_START_TRIM_TRS} TRs")
        starts = np.array([fact[4] for fact in facts])
        first_row = (starts[0] if np.ptp(starts) <= ONSET_TOLERANCE_S
                     else reference[2] + STORY_START_TRIM_TRS * reference[1])
        return {"tr": reference[1], "rows": reference[3], "audio_onset": reference[2],
                "first_row_audio": float(first_row), "stim_file": reference[0].stim_file,
                "row_spread": float(np.max(np.abs(starts - first_row)))}

    def response_rows(self, story):
        """Response rows of a story: ``round(duration / TR) - STORY_START_TRIM_TRS``."""
        return self.story_timing(story)["rows"]

    def tr_seconds(self, story):
        return self.story_timing(story)["tr"]

    def tr_times(self, story):
        """Centres of the story's grid TRs on the audio clock (s): ``TRIM_START_TRS`` before
        the first response row's TR, then one per row, then ``TRIM_END_TRS``."""
        timing = self.story_timing(story)
        tr = timing["tr"]
        k = np.arange(timing["rows"] + data_utils.TRIM_START_TRS + data_utils.TRIM_END_TRS)
        return timing["first_row_audio"] + (k - data_utils.TRIM_START_TRS + 0.5) * tr

    def window_bounds(self, story, sampling_rate=SAMPLING_RATE, n_delays=4):
        """Sample range of the audio input of each response row: ``(n_delays + 1) *
        WINDOW_TR_S`` seconds (one length for every story, whatever its TR) ending at the end
        of the row's TR. (rows,) int64 starts and stops on the audio clock."""
        timing = self.story_timing(story)
        ends = timing["first_row_audio"] + (np.arange(timing["rows"]) + 1) * timing["tr"]
        stops = np.round(ends * sampling_rate).astype(np.int64)
        return stops - int(round((n_delays + 1) * WINDOW_TR_S * sampling_rate)), stops

    # ------------------------------------------------------------------------- responses

    def response_files(self, subject, story):
        """The derivative files of a subject's kept runs of a story (both hemispheres)."""
        return [path for hearing in self._hearing_runs(subject, story)
                for path in self._scan_files(hearing.scan)]

    def _scan_files(self, scan):
        folder = self.derivative / scan.subject / "func"
        if self.space == "fsaverage6":
            return [folder / f"{scan.name}_space-fsaverage6_hemi-{hemi}_desc-clean.func.gii"
                    for hemi in HEMIS]
        return [folder / f"{scan.name}_space-{self.space}_res-native_desc-clean_bold.nii.gz"]

    def mask_path(self, task):
        return (self.derivative / f"tpl-{self.space}" /
                f"tpl-{self.space}_res-{task}_desc-brain_mask.nii.gz")

    def response_path(self, subject, story):
        """The first of a subject's response files of a story (named in messages)."""
        return self.response_files(subject, story)[0]

    def _scan_matrix(self, scan):
        """A scan's cleaned data: (TRs, columns) float32, NaN as it is."""
        files = self._scan_files(scan)
        for path in files:
            if not path.is_file():
                raise DatasetError(f"{path}: missing; `{FETCH} "
                                   f"{path.relative_to(self.root)}`")
        nibabel = _nibabel()
        if self.space == "fsaverage6":
            return np.hstack([_read_gifti(nibabel, path) for path in files])
        volume = _load(nibabel, files[0]).get_fdata(dtype=np.float32)
        mask = self._mask(scan.task)
        if volume.ndim != 4 or volume.shape[:3] != mask.shape:
            raise DatasetError(f"{files[0]}: shape {volume.shape}, expected 4-D on the grid "
                               f"of {self.mask_path(scan.task)} {mask.shape}")
        return volume[mask].T

    def _mask(self, task):
        path = self.mask_path(task)
        if not path.is_file():
            raise DatasetError(f"{path}: missing; `{FETCH} {path.relative_to(self.root)}`")
        return _load(_nibabel(), path).get_fdata() > 0

    def _run_rows(self, subject, story):
        """Each kept run's response rows: list of (rows, columns) float32, z-scored."""
        timing, out = self.story_timing(story), []
        for hearing in self._hearing_runs(subject, story):
            data = self._scan_matrix(hearing.scan)
            first = _first_row(hearing, timing["tr"])
            if first + timing["rows"] > len(data):
                raise DatasetError(
                    f"{self._scan_files(hearing.scan)[0]}: {len(data)} TRs, but story {story!r} "
                    f"(events.tsv: onset {hearing.onset} s, {hearing.duration} s) needs "
                    f"{first + timing['rows']}; the file is cut short or of another scan")
            rows = np.nan_to_num(data[first:first + timing["rows"]], nan=0.0)
            out.append(eval_utils.zscore(rows.astype(np.float32, copy=False)))
        return out

    def responses(self, subject, story, voxels=None):
        """A subject's responses to a story: (rows, n_selected) float32, z-scored per column,
        NaN (the medial wall) -> 0; the mean of the runs when the story was heard twice; the
        group's: the mean of the listeners' responses, z-scored. ``voxels``: None, indices or
        a bool mask of the columns."""
        if self.is_group(subject):
            total = 0
            for listener in self.listeners(story):  # one listener at a time in memory
                total = total + self.responses(listener, story, voxels).astype(np.float64)
            return eval_utils.zscore(total).astype(np.float32)
        runs = self._run_rows(subject, story)
        data = runs[0] if len(runs) == 1 else np.mean(runs, axis=0, dtype=np.float32)
        return data if voxels is None else data[:, np.asarray(voxels)]

    def repeats_shape(self, subject, story):
        """(repeats, rows, columns) of a story heard in several kept runs (pieman); a
        DatasetError otherwise."""
        runs = self._hearing_runs(subject, story)
        if len(runs) < 2 or self.is_group(subject):
            who = (f"the group has no repeats of {story!r}" if self.is_group(subject)
                   else f"{subject_id(subject)} heard {story!r} once")
            raise DatasetError(f"{self.response_path(subject, story)}: {who}; "
                               "Narratives has no repeats (pieman aside): score with "
                               "--test_target data --normalise_by intersubject")
        return len(runs), self.response_rows(story), self.n_columns(subject, story)

    def repeats(self, subject, story, voxels=None):
        """The runs of a story heard several times: (repeats, rows, n_selected) float32."""
        self.repeats_shape(subject, story)
        runs = np.stack(self._run_rows(subject, story))
        return runs if voxels is None else runs[:, :, np.asarray(voxels)]

    def n_columns(self, subject, story):
        """Columns (vertices or voxels) of a subject's responses to a story, from headers."""
        shape, problem = self._scan_shape(self._hearing_runs(subject, story)[0].scan, 0)
        if problem:
            raise DatasetError(problem)
        return shape[1]

    def intersubject_ceiling(self, story, voxels=None):
        """Per-column ceiling of a story from its listeners (``eval_utils.intersubject_ceiling``,
        each listener read twice rather than all held at once). Returns (isc, ceiling), each
        (columns,) float64, and the listeners."""
        listeners = self.listeners(story)
        if len(listeners) < 3:
            raise DatasetError(f"story {story!r} has {len(listeners)} kept listeners; an "
                               "intersubject ceiling needs at least 3")
        lazy = _Listeners(self, story, listeners, voxels)
        return (*eval_utils.intersubject_ceiling(lazy), listeners)

    def ceiling_inputs(self, subject, story):
        """The files a story's ceiling is computed from: every listener's responses."""
        return [path for listener in self.listeners(story)
                for path in self.response_files(listener, story)]

    # ------------------------------------------------------------------------- audio, words

    def stimulus_path(self, story):
        path = self.root / "stimuli" / self.story_timing(story)["stim_file"]
        if not path.is_file():
            raise DatasetError(f"{path}: the audio of story {story!r} is missing; `{FETCH} "
                               f"stimuli/{path.name}`")
        return path

    def stimulus_duration(self, story):
        return audio_io.audio_duration(self.stimulus_path(story))

    def stimulus_problem(self, story, duration):
        """One line when the audio (``duration`` s) ends before the story does, else None."""
        end = self.story_interval(story)[1]
        if duration < end - AUDIO_SHORT_TOLERANCE_S:
            return (f"{self.stimulus_path(story)}: {duration:.2f} s of audio, but story {story!r} "
                    f"ends {end:.2f} s into it (events.tsv); the WAV is truncated or of another "
                    "story: get it again")
        return None

    def stimulus(self, story, sampling_rate=SAMPLING_RATE):
        """The audio file of a story (the whole file: music included, and both stories of a
        split file) as float32 mono at ``sampling_rate``; checked to cover the story."""
        audio = audio_io.read_audio(self.stimulus_path(story), sampling_rate)
        problem = self.stimulus_problem(story, len(audio) / sampling_rate)
        if problem:
            raise DatasetError(problem)
        return audio

    def alignment_path(self, story):
        """``stimuli/gentle/<file>/align.json`` of the story's audio file."""
        folder = self.story_timing(story)["stim_file"].removesuffix("_audio.wav")
        path = self.root / "stimuli" / "gentle" / folder / "align.json"
        if not path.is_file():
            raise DatasetError(f"{path}: the Gentle alignment of story {story!r} is missing; "
                               f"`{FETCH} stimuli/gentle/{folder}`")
        return path

    def _file_words(self, story):
        """Gentle's words found in the audio of the story's file (every story it holds):
        (start, end, word, phones) on the audio clock."""
        path = self.alignment_path(story)
        try:
            words = json.loads(path.read_text())["words"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{path}: not a Gentle align.json ({err!r}); get it again") \
                from None
        found = []
        for word in words:
            if word.get("case") != "success":
                continue  # not-found-in-audio (no times) and not-found-in-transcript
            try:
                start, stop = float(word["start"]), float(word["end"])
                phones = [(str(p["phone"]), float(p["duration"])) for p in word.get("phones", [])]
            except (KeyError, TypeError, ValueError) as err:
                raise DatasetError(f"{path}: word {word.get('word')!r} lacks {err}; get the "
                                   "file again") from None
            found.append((start, stop, str(word.get("word", word.get("alignedWord"))), phones))
        return found

    def story_interval(self, story):
        """(start, end) of the story on its audio clock, in seconds."""
        timing = self.story_timing(story)
        hearing = next(iter(self._story(story).values()))[0]
        return timing["audio_onset"], timing["audio_onset"] + hearing.duration

    def _aligned_words(self, story):
        """Gentle's words found in the audio within the story: (start, end, word, phones)."""
        begin, end = self.story_interval(story)
        return [word for word in self._file_words(story) if begin <= word[0] < end]

    def onset_problem(self, story):
        """One line when the words contradict the assumed audio start (the first events row
        of the file): speech in the ``ONSET_CHECK_S`` before the story's onset that belongs to
        no other story of the file, or none in the ``ONSET_CHECK_S`` after it; else None."""
        begin, _ = self.story_interval(story)
        stim_file = self.story_timing(story)["stim_file"]
        spans = [self.story_interval(other) for other, by_subject in self.hearings().items()
                 if other != story and next(iter(by_subject.values()))[0].stim_file == stim_file]
        words = self._file_words(story)
        early = [start for start, _, _, _ in words if begin - ONSET_CHECK_S <= start < begin - 1
                 and not any(low <= start < high for low, high in spans)]
        first = min((start for start, _, _, _ in words if start >= begin), default=np.inf)
        if len(early) < 3 and first <= begin + ONSET_CHECK_S:
            return None
        what = (f"{len(early)} words start in the {ONSET_CHECK_S:g} s before it" if len(early) >= 3
                else f"its first word starts {first - begin:.1f} s after it")
        return (f"{self.alignment_path(story)}: story {story!r} starts {begin:.2f} s into its "
                f"audio (events.tsv, the audio taken to start at the first events row of its "
                f"file), but {what}; the audio starts elsewhere on the scan clock: fix the "
                "events' onsets or exclude the scans")

    def words(self, story):
        """Words of the story found in the audio: list of (start, end, word) on the audio clock."""
        return [(start, end, word) for start, end, word, _ in self._aligned_words(story)]

    def phones(self, story):
        """Phones of those words: (start, end, ARPAbet phone), word-position suffix dropped
        ("ay_S" -> "AY"), each phone starting where the one before ends."""
        phones = []
        for start, _, _, word_phones in self._aligned_words(story):
            now = start
            for label, duration in word_phones:
                base = GENTLE_PHONE_SUFFIX.sub("", label)
                if base.lower() not in GENTLE_NOISE_PHONES:
                    phones.append((now, now + duration, base.upper()))
                now += duration
        return phones

    def truth(self):
        """The ground truth ``synthetic_narratives.py`` writes beside a synthetic copy."""
        path = self.root / "synthetic_truth.json"
        if not path.is_file():
            raise DatasetError(f"{path}: missing; {self.root} is not a synthetic dataset")
        return json.loads(path.read_text())

    # ------------------------------------------------------------------------- records, checks

    def input_files(self, subject, stories):
        """Every file a run on ``stories`` reads (for ``run_utils.file_identity``)."""
        files = [self.root / "code" / "scan_exclude.json"]
        for story in stories:
            runs = self._hearing_runs(subject, story)
            files += [path for hearing in runs for path in (
                self.events_path(hearing.scan), self.bold_json_path(hearing.scan),
                *self._scan_files(hearing.scan))]
            files += [self.stimulus_path(story), self.alignment_path(story)]
        return files

    def story_record(self, stories, kinds=("wav", "textgrid")):
        """What a derived file records of its stories' inputs ("textgrid": the words file)."""
        paths = {"wav": self.stimulus_path, "textgrid": self.alignment_path}
        return {"stories": {story: {kind: run_utils.content_hash(paths[kind](story))
                                    for kind in kinds} for story in stories}}

    def check_run_inputs(self, subject, stories):
        """Check a run's inputs from headers: each story's timing, audio, words and every
        response file's shape (the same columns for all). Returns the column count."""
        problems, counts = [], {}
        for story in dict.fromkeys(stories):
            story_problems, count = self.story_problems(subject, story)
            problems += story_problems
            if count is not None:
                counts[story] = count
        if len(set(counts.values())) > 1:
            problems.append(f"{subject_id(subject)}: stories have different column counts "
                            f"{counts}; use one --space for all")
        elif self.space != "fsaverage6" and not problems:  # each task has its own mask
            tasks = {self._hearing_runs(subject, story)[0].scan.task: story for story in counts}
            masks = {task: self._mask(task) for task in tasks}
            first = next(iter(masks))
            problems += [f"{self.mask_path(task)}: the brain masks of {tasks[first]} and "
                         f"{tasks[task]} differ, so their columns are not the same voxels; "
                         "use --space fsaverage6 or stories of one task grid"
                         for task, mask in masks.items()
                         if mask.shape != masks[first].shape or (mask != masks[first]).any()]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DatasetError(problems[0] + more)
        return next(iter(counts.values()))

    def story_problems(self, subject, story):
        """One line per problem of a subject's story (``story_file_problems`` and
        ``scan_problems``) and its column count (None when unknown)."""
        problems, count = self.scan_problems(subject, story)
        return self.story_file_problems(story) + problems, count

    def story_file_problems(self, story):
        """One line per problem of a story's files shared by its listeners: its timing, its
        audio (long enough, a signal) and the words' agreement with the audio start."""
        problems = []
        for step in (lambda: self.stimulus_problem(story, self.stimulus_duration(story)),
                     lambda: audio_io.signal_problem(self.stimulus_path(story)),
                     lambda: self.onset_problem(story)):
            try:
                problem = step()
            except DatasetError as err:
                problem = str(err)
            problems += [problem] if problem and problem not in problems else []
        return problems

    def scan_problems(self, subject, story):
        """One line per problem of a subject's response files of a story (present, readable,
        holding the story's rows) and its column count (None when unknown)."""
        problems, count = [], None
        try:
            timing = self.story_timing(story)
            for hearing in self._hearing_runs(subject, story):
                shape, problem = self._scan_shape(
                    hearing.scan, _first_row(hearing, timing["tr"]) + timing["rows"])
                problems += [problem] if problem else []
                count = count if shape is None else shape[1]
        except DatasetError as err:
            problems.append(str(err))
        return problems, count

    def _scan_shape(self, scan, needed_trs):
        """(TRs, columns) of a scan's response files from headers, and a problem or None."""
        try:
            files = self._scan_files(scan)
            for path in files:
                if not path.is_file():
                    return None, (f"{path}: missing; `{FETCH} {path.relative_to(self.root)}`")
            nibabel = _nibabel()
            if self.space == "fsaverage6":
                shapes = [_gifti_shape(nibabel, path) for path in files]
                if shapes[0][0] != shapes[1][0]:
                    return None, (f"{files[1]}: {shapes[1][0]} TRs but {files[0].name} has "
                                  f"{shapes[0][0]}; get both again")
                shape = (shapes[0][0], shapes[0][1] + shapes[1][1])
            else:
                volume = _load(nibabel, files[0])
                shape = (volume.shape[-1], int(self._mask(scan.task).sum()))
        except DatasetError as err:
            return None, str(err)
        if shape[0] < needed_trs:
            return shape, (f"{files[0]}: {shape[0]} TRs, but the story's rows need "
                           f"{needed_trs} (events.tsv); the file is cut short or of another "
                           "scan")
        return shape, None


class _Listeners:
    """A story's listeners' responses, read one at a time (for ``intersubject_ceiling``)."""

    def __init__(self, dataset, story, listeners, voxels):
        self.dataset, self.story, self.listeners, self.voxels = dataset, story, listeners, voxels

    def __len__(self):
        return len(self.listeners)

    def __getitem__(self, index):
        return self.dataset.responses(self.listeners[index], self.story, self.voxels)


def _read_events(path):
    """(onset, duration, trial_type, stim_file) rows of a BIDS events.tsv."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        return tuple((float(row["onset"]), float(row["duration"]), row["trial_type"].strip(),
                      row["stim_file"].strip()) for row in rows)
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as err:
        raise DatasetError(f"{path}: not a BIDS events file with onset, duration, trial_type "
                           f"and stim_file columns ({err!r}); get it again") from None


def _first_row(hearing, tr):
    """The scan TR of a hearing's first response row: ``round(onset / TR)`` plus the authors'
    ``STORY_START_TRIM_TRS``."""
    return round(hearing.onset / tr) + STORY_START_TRIM_TRS


def _story_names(rows, path):
    """The story name of each story row of a run: its audio file's name, or the names of
    ``SPLIT_STORIES`` for the rows of a file holding several stories."""
    stems = [stim.removesuffix("_audio.wav") for _, _, _, stim in rows]
    for stem, (_, _, _, stim) in zip(stems, rows):
        if stim in ("", "n/a") or stem == stim:
            raise DatasetError(f"{path}: a story row has stim_file {stim!r}, not a "
                               "<name>_audio.wav; get the events file again")
    names = []
    for stem in stems:
        count = stems.count(stem)
        if count == 1:
            names.append(stem)
            continue
        parts = SPLIT_STORIES.get(stem)
        if parts is None or len(parts) != count:
            raise DatasetError(f"{path}: {count} story rows share {stem}_audio.wav; only "
                               f"{', '.join(SPLIT_STORIES)} is known to hold several stories")
        names.append(parts[sum(s == stem for s in stems[:len(names)])])
    return names


def _nibabel():
    try:
        import nibabel
    except ImportError as err:
        raise run_utils.UsageError(f"Narratives needs nibabel ({err}): pip install "
                                   "nibabel") from None
    return nibabel


def _load(nibabel, path):
    try:
        return nibabel.load(str(path))
    except Exception as err:  # nibabel raises many kinds on a damaged file
        raise DatasetError(f"{path}: unreadable ({type(err).__name__}: {err}); `{FETCH}` it "
                           "again") from None


def _read_gifti(nibabel, path):
    """A func.gii's data arrays stacked: (TRs, vertices) float32."""
    image = _load(nibabel, path)
    try:
        return np.stack([np.asarray(array.data, np.float32).ravel()
                         for array in image.darrays])
    except ValueError as err:
        raise DatasetError(f"{path}: data arrays of different lengths ({err}); get it "
                           "again") from None


def _gifti_shape(nibabel, path):
    """(TRs, vertices) of a func.gii (the file is parsed; its arrays are not kept)."""
    image = _load(nibabel, path)
    if not image.darrays:
        raise DatasetError(f"{path}: no data arrays; get it again")
    return len(image.darrays), int(np.prod(image.darrays[0].dims))


# ---------------------------------------------------------------------- data_utils.py check

def check_dataset(dataset, subjects=None):
    """Check a Narratives copy. Returns (summary lines, problems, notes), problems being fatal,
    each one line naming the file: per story its listeners, TR, rows and audio, and every
    problem of its files and of each listener's (``story_file_problems``,
    ``scan_problems``)."""
    lines, problems, notes = [], [], []
    try:
        scans, hearings = dataset.scans(), dataset.hearings()
    except DatasetError as err:
        return lines, [str(err)], notes
    lines.append(f"dataset {dataset.root}: {len(scans)} kept scans, {len(hearings)} stories, "
                 f"{len(dataset.subjects())} subjects ({dataset.space})")
    wanted = {subject_id(s) for s in subjects} if subjects else None
    for story in sorted(hearings):
        try:
            timing = dataset.story_timing(story)
        except DatasetError as err:
            problems.append(str(err))
            continue
        listeners = dataset.listeners(story)
        repeated = [s for s in listeners if len(hearings[story][s]) > 1]
        lines.append(f"{story}: {len(listeners)} listeners, TR {timing['tr']:g} s, "
                     f"{timing['rows']} rows, audio {timing['stim_file']}"
                     + (f", heard twice by {len(repeated)}" if repeated else ""))
        if len(listeners) < 3:
            notes.append(f"{story}: {len(listeners)} kept listeners; no intersubject ceiling "
                         "(it needs 3)")
        if timing["row_spread"] > 0.1:
            notes.append(f"{story}: listeners' onsets differ within the TR; their rows lie up to "
                         f"{timing['row_spread']:.2f} s from the story's TR grid (the authors' "
                         "rounding)")
        problems += [p for p in dataset.story_file_problems(story) if p not in problems]
        counts = set()
        for subject in listeners:
            if wanted is not None and subject not in wanted:
                continue
            scan_problems, count = dataset.scan_problems(subject, story)
            problems += [p for p in scan_problems if p not in problems]
            counts.add(count)
        counts.discard(None)
        if len(counts) > 1:
            problems.append(f"{story}: listeners' responses have different column counts "
                            f"{sorted(counts)}; get the derivatives again")
    return lines, problems, notes
