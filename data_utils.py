"""The Moth Radio Hour fMRI dataset (OpenNeuro ds003020) exactly as it lies on disk, behind one
handle, ``Dataset``, that the rest of the toolkit asks its questions (docs/method.md#the-dataset).

    python data_utils.py check --data_dir /path/to/ds003020

checks a downloaded copy: per subject the stories, rows, voxels and test-story repeats, every
inconsistency found, one line each naming the file, and the TR timing sources it offers.

Layout::

    <data_dir>/stimuli/<story>.wav
    <data_dir>/derivative/respdict.json                      story -> TRs acquired
    <data_dir>/derivative/TextGrids/<story>.TextGrid          phone tier, word tier
    <data_dir>/derivative/preprocessed_data/UTS0N/<story>.hf5 dataset "data" (rows, voxels)

``derivatives/`` is accepted in place of ``derivative/``. Timing: the simulated TR grid of a
story has ``respdict[story] - 5`` TRs of 2 s; TR ``k`` starts ``2k - 10`` s after story onset.
Response row ``i`` is grid TR ``i + 10`` (rows = respdict - 20). Measured trigger times from
``.report`` files or the ``trfiles_huge.jbl`` pickle can be used instead (``tr_source``).
"""

import collections
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path

import h5py
import numpy as np

import arguments
import audio_io
import hdf5_io
import run_utils
import textgrids
import tr_files
from arguments import flag
from audio_io import SAMPLING_RATE
from run_utils import DatasetError

logger = logging.getLogger(__name__)

TR_SECONDS = 2.0
SIMULATED_SOUND_START = 10.0  # seconds of scanner time before the story starts
RESPDICT_PAD_TRS = 5  # respdict counts 5 TRs more than the simulated grid
TRIM_START_TRS = 10  # response row 0 is grid TR 10
TRIM_END_TRS = 5
RESPONSE_ROWS_OFFSET = 20  # rows = respdict - 20

TEST_STORY = "wheretheressmoke"
TEST_RESPONSE_TRIM = 40  # the paper does not score the test story's first 40 response rows
VALIDATION_STORIES = ("stagefright",)
TRAIN_STORIES = (
    "souls", "howtodraw", "alternateithicatom", "hangtime", "swimmingwithastronauts",
    "eyespy", "itsabox", "myfirstdaywiththeyankees", "legacy", "theclosetthatateeverything",
    "haveyoumethimyet", "thatthingonmyarm", "undertheinfluence", "avatar", "tildeath", "naked",
    "fromboyhoodtofatherhood", "adollshouse", "odetostepfather", "adventuresinsayingyes",
    "sloth", "exorcism", "buck", "inamoment",
)
TR_SOURCES = ("respdict", "report", "trfiles")
# The stimulus must reach the end of the simulated respdict grid, at most this much earlier
# (real WAVs end within -2.0..+0.3 s of it; the measured grids of the TR files are offset from
# it by the sound start, so they are held to the next rule only) ...
GRID_PAST_AUDIO_TOLERANCE_S = TR_SECONDS
# ... and on every grid the end of the last response row's TR, at most this much earlier ...
AUDIO_SHORT_TOLERANCE_S = TR_SECONDS
# ... and may not run past the end of the TR grid by more than this (real WAVs end within
# -2.0..+0.3 s of it) ...
AUDIO_LONG_TOLERANCE_S = TR_SECONDS
# ... nor differ from the TextGrid's xmax by more than this.
TEXTGRID_AUDIO_TOLERANCE_S = TR_SECONDS
ROOT_HINT = "--data_dir must be the ds003020 root (the folder that holds stimuli/ and derivative/)"
DATASETS = ("ds003020", "narratives")  # --dataset: the layouts the toolkit reads
NARRATIVES_SPACES = ("fsaverage6", "MNI152NLin2009cAsym")  # --space: Narratives' derivatives


def subject_id(subject):
    """Canonical subject name: ``1``, ``"1"``, ``"01"``, ``"uts01"`` -> ``"UTS01"``."""
    match = re.fullmatch(r"(?:UTS)?0*([1-9]\d?)", str(subject).strip(), flags=re.IGNORECASE)
    if match is None:
        raise DatasetError(f"subject {subject!r} not understood: give a number (1, '1') or a "
                           "name such as 'UTS01'")
    return f"UTS{int(match.group(1)):02d}"


def constant_voxels(responses):
    """Voxels whose responses carry no signal: constant over rows (NaN read as 0, so all-NaN
    voxels too). ``responses``: (rows, n_voxels) as ``Dataset.responses`` returns. (n_voxels,)
    bool."""
    return np.ptp(responses, axis=0) == 0


@dataclasses.dataclass(kw_only=True)
class DatasetFlags(arguments.Flags):
    """The flags of a script that reads the dataset: where it is and the TR timing."""

    data_dir: str = flag(help="dataset root: ds003020's folder holding stimuli/ and "
                              "derivative/, or the Narratives DataLad dataset",
                         group="data")
    dataset: str = flag(DATASETS[0], choices=DATASETS, group="data", protocol=True,
                        help="the dataset's layout: ds003020 (the Moth Radio Hour, LeBel et al.) "
                             "or narratives (OpenNeuro ds002345 with its afni-nosmooth "
                             "derivatives; docs/dataset.md#narratives)")
    space: str | None = flag(None, choices=NARRATIVES_SPACES, group="data",
                             protocol=True,
                             help="narratives only: responses on the fsaverage6 surface "
                                  "(vertices; the default) or in MNI volumes (voxels in the "
                                  "task's brain mask)")
    tr_source: str = flag("respdict", choices=TR_SOURCES, group="data", protocol=True,
                          help="TR timing: the simulated grid of respdict.json, .report files "
                               "or trfiles_huge.jbl (docs/method.md#the-dataset)")
    tr_path: str | None = flag(None, group="data", protocol=True,
                               help="folder of .report files or the .jbl file (default: looked "
                                    "up in the dataset)")

    def __post_init__(self):
        super().__post_init__()
        if self.dataset == "narratives" and (self.tr_source, self.tr_path) != ("respdict", None):
            raise run_utils.UsageError("--tr_source and --tr_path belong to ds003020; "
                                       "Narratives' timing is its BIDS events and bold.json")
        if self.dataset == "narratives" and self.space is None:
            self.space = "fsaverage6"
        elif self.dataset != "narratives" and self.space is not None:
            raise run_utils.UsageError("--space belongs to Narratives (--dataset narratives); "
                                       "ds003020's voxels are each subject's own")

    def open_dataset(self):
        """The dataset handle these flags name (a DatasetError when it is not one):
        ``Dataset`` or ``narratives.NarrativesDataset``."""
        if self.dataset == "narratives":
            import narratives  # it builds on this module
            return narratives.NarrativesDataset(self.data_dir, self.space)
        return Dataset(self.data_dir, self.tr_source, self.tr_path)


class Dataset:
    """A ds003020 copy on disk (``root``) and the TR timing its runs use (``tr_source``: the
    simulated "respdict" grid, "report" files or "trfiles", from ``tr_path`` or found in the
    copy).

    The questions the toolkit asks of a listening dataset, each answered from the files, with
    a ``DatasetError`` naming the file and the fix when they cannot be: which subjects and
    stories there are (``subjects``, ``stories``); the responses (``responses``, ``repeats``,
    ``response_rows``); the TR timing (``tr_times``, ``window_bounds``); the stimulus audio
    (``stimulus``, ``stimulus_duration``); its words and phones (``words``, ``phones``); and
    whether a run's inputs are usable (``check_run_inputs``). Another layout of a listening
    dataset answers the same questions with its own class.
    """

    name = "ds003020"
    test_rows_skipped = TEST_RESPONSE_TRIM  # the test story's first rows are not scored
    shared_space = False  # each subject's voxels are its own
    subject_id = staticmethod(subject_id)

    def __init__(self, root, tr_source="respdict", tr_path=None):
        if tr_source not in TR_SOURCES:
            raise DatasetError(f"tr_source must be one of {', '.join(TR_SOURCES)}, got "
                               f"{tr_source!r}")
        self.root = Path(root)
        self.tr_source, self.tr_path = tr_source, tr_path
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such directory; {ROOT_HINT}")
        found = [self.root / name for name in ("derivative", "derivatives")
                 if (self.root / name).is_dir()]
        if not found:
            raise DatasetError(f"{self.root}: no derivative/ (or derivatives/) folder; "
                               f"{ROOT_HINT}")
        self.derivative = found[0]
        self._respdict = None

    def __repr__(self):
        return f"Dataset({str(self.root)!r}, tr_source={self.tr_source!r})"

    def settings(self):
        """What a run records of its dataset: the root and the TR timing."""
        return {"dataset": self.name, "data_dir": str(self.root), "tr_source": self.tr_source,
                "tr_path": None if self.tr_path is None else str(self.tr_path)}

    # ------------------------------------------------------------------------- files

    def subjects(self):
        """Sorted subject names that have a ``preprocessed_data`` folder."""
        base = self.derivative / "preprocessed_data"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir()
                      if p.is_dir() and re.fullmatch(r"UTS\d\d", p.name))

    def subject_dir(self, subject):
        """``derivative/preprocessed_data/UTS0N``; lists the subjects there if absent."""
        base = self.derivative / "preprocessed_data"
        path = base / subject_id(subject)
        if not path.is_dir():
            found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
            raise DatasetError(f"{path}: no responses for subject {subject_id(subject)}; "
                               f"subjects found: {', '.join(found) or 'none'}")
        return path

    def stories(self, subject):
        """Sorted names of the stories that have responses (``.hf5`` files) for a subject."""
        return sorted(p.stem for p in self.subject_dir(subject).glob("*.hf5"))

    def response_path(self, subject, story):
        """A story's ``.hf5`` response file; a clear error naming the stories if absent."""
        path = self.subject_dir(subject) / f"{story}.hf5"
        _not_a_folder(path)
        if not path.is_file():
            stories = self.stories(subject)
            raise DatasetError(
                f"{path}: subject {subject_id(subject)} has no responses for story {story!r}; "
                f"{len(stories)} stories available: {', '.join(stories[:8])}"
                f"{' ...' if len(stories) > 8 else ''}")
        return path

    def stimulus_path(self, story):
        """``stimuli/<story>.wav``."""
        return _story_file(self.root / "stimuli" / f"{story}.wav", "stimulus WAV", story,
                           "stimuli/")

    def textgrid_path(self, story):
        """``derivative/TextGrids/<story>.TextGrid``."""
        return _story_file(self.derivative / "TextGrids" / f"{story}.TextGrid", "TextGrid",
                           story, "derivative/TextGrids/")

    def alignment_path(self, story):
        """The file of a story's words and phones: its TextGrid."""
        return self.textgrid_path(story)

    def n_columns(self, subject, story):
        """Voxels of a subject's responses to a story, from the file's metadata."""
        return hdf5_io.hdf5_shape(self.response_path(subject, story))[1]

    def is_group(self, subject):
        """ds003020 has no group subject: each subject's voxels are its own."""
        return False

    def ceiling_inputs(self, subject, story):
        """The files a subject's noise ceiling on ``story`` is computed from."""
        return [self.response_path(subject, story)]

    def tr_seconds(self, story):
        """The TR of a story's grid, in seconds."""
        return TR_SECONDS

    def input_files(self, subject, stories):
        """Every file a run on ``stories`` reads: respdict.json and each story's response file,
        WAV and TextGrid (for ``run_utils.file_identity``)."""
        return [self.derivative / "respdict.json",
                *(self.response_path(subject, s) for s in stories),
                *(self.stimulus_path(s) for s in stories),
                *(self.textgrid_path(s) for s in stories)]

    def story_record(self, stories, kinds=("wav", "textgrid")):
        """What a file derived from ``stories`` records of its inputs: the content hash of
        respdict.json and of each story's files of ``kinds`` ("wav", "textgrid"); checked by
        ``check_story_record`` when the file is used again."""
        paths = {"wav": self.stimulus_path, "textgrid": self.textgrid_path}
        return {"respdict": run_utils.content_hash(self.derivative / "respdict.json"),
                "stories": {story: {kind: run_utils.content_hash(paths[kind](story))
                                    for kind in kinds} for story in stories}}

    def check_story_record(self, record, stories, path):
        """A DatasetError, naming ``path`` (the derived file) and the input, when ``record``
        (``story_record`` of when it was made) says one of ``stories``' files had other
        content then; a file without a record is used with a warning."""
        if not isinstance(record, dict) or not isinstance(record.get("stories"), dict):
            logger.warning("%s has no record of the dataset files it was made from; its "
                           "source cannot be checked", path)
            return
        paths = {"wav": self.stimulus_path, "textgrid": self.textgrid_path}
        for story in stories:
            for kind, made in record["stories"].get(story, {}).items():
                now = run_utils.content_hash(paths[kind](story))
                if now != made:
                    raise DatasetError(
                        f"{path} was made from another {paths[kind](story).name} (sha256 "
                        f"{str(made)[:12]}) than this dataset's {paths[kind](story)} "
                        f"({now[:12]}): make the file again from this dataset")

    # ------------------------------------------------------------------------- respdict

    def respdict(self):
        """``derivative/respdict.json``: story -> number of TRs acquired, as stored.

        Only the file is checked here (a JSON object); each entry is checked when it is used
        (``respdict_trs``, ``respdict_problem``), so that a bad entry is named."""
        if self._respdict is not None:
            return self._respdict
        path = self.derivative / "respdict.json"
        try:
            respdict = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing; download derivative/respdict.json of "
                               "ds003020") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path}: not valid JSON ({err}); download it again") from None
        except OSError as err:  # a folder in its place, or no permission to read it
            raise DatasetError(f"{path}: cannot be read ({err.strerror}); download "
                               "derivative/respdict.json of ds003020 again") from None
        if not isinstance(respdict, dict):
            raise DatasetError(f"{path}: expected a JSON object mapping story names to TR "
                               f"counts, found a JSON {type(respdict).__name__}; download it "
                               "again")
        self._respdict = respdict
        return respdict

    def respdict_problem(self, story, respdict=None):
        """What is wrong with a story's entry of ``respdict`` (default: the file's), one line
        naming it, or None if usable: a JSON integer that leaves a response row (>= 21)."""
        respdict = self.respdict() if respdict is None else respdict
        path = self.derivative / "respdict.json"
        if story not in respdict:
            return (f"{path}: no entry for story {story!r}; check the story name or download "
                    "respdict.json again")
        where, value = f"{path}: entry {story!r}", respdict[story]
        if not isinstance(value, int) or isinstance(value, bool):
            return (f"{where} is {json.dumps(value)}, not a whole number of TRs; write the TR "
                    "count as an integer (or download respdict.json again)")
        if value - RESPONSE_ROWS_OFFSET < 1:
            return (f"{where} is {value} TRs, which leaves {value - RESPONSE_ROWS_OFFSET} "
                    f"response rows (rows = TRs - {RESPONSE_ROWS_OFFSET}); it must be at least "
                    f"{RESPONSE_ROWS_OFFSET + 1}: download respdict.json again")
        return None

    def respdict_trs(self, story):
        """TRs acquired for a story according to ``respdict.json`` (a checked integer >= 21)."""
        problem = self.respdict_problem(story)
        if problem:
            raise DatasetError(problem)
        return self.respdict()[story]

    def response_rows(self, story):
        """Rows of a story's response matrix: ``respdict[story] - 20``."""
        return self.respdict_trs(story) - RESPONSE_ROWS_OFFSET

    # ------------------------------------------------------------------------- responses

    def responses(self, subject, story, voxels=None):
        """A subject's responses to a story: (rows, n_selected) float32, NaN -> 0; row ``i``
        is grid TR ``i + 10``. ``voxels``: None, (n_selected,) int indices or an (n_voxels,)
        bool mask; only these columns are read from the float64 file."""
        return hdf5_io.read_matrix(self.response_path(subject, story), "data", 2, voxels)

    def repeats(self, subject, story=TEST_STORY, voxels=None):
        """Individual repeats of the test story: (repeats, rows, n_selected) float32, NaN -> 0."""
        path = self.response_path(subject, story)
        with hdf5_io.open_hdf5(path) as handle:
            if "individual_repeats" not in handle:
                raise DatasetError(f"{path}: no 'individual_repeats' dataset; only the test "
                                   f"story ({TEST_STORY}) was presented several times")
        return hdf5_io.read_matrix(path, "individual_repeats", 3, voxels)

    def repeats_shape(self, subject, story=TEST_STORY):
        """Shape (repeats, rows, voxels) of a story's ``individual_repeats``, from metadata; a
        DatasetError naming the file unless it has 3 axes and the voxel count of ``data``."""
        path = self.response_path(subject, story)
        shape = hdf5_io.hdf5_shape(path, "individual_repeats")
        if len(shape) != 3:
            raise DatasetError(f"{path}: 'individual_repeats' has shape {shape}, expected "
                               "(repeats, rows, voxels)")
        n_voxels = hdf5_io.hdf5_shape(path)[-1]
        if shape[2] != n_voxels:
            raise DatasetError(f"{path}: 'individual_repeats' has {shape[2]} voxels but 'data' "
                               f"has {n_voxels}; no noise ceiling can be computed for these "
                               "responses: download the file again")
        return shape

    def target_features(self, path, stories):
        """Feature targets of a ``target_features.py`` file (the trainer's
        ``--target_features``, the evaluator's ``--semantic_features``): story -> (response
        rows, features) float32. Each story needs one (response rows, features) dataset, all
        of one width; a file made on another TR timing is read with a warning."""
        features = {}
        try:
            handle = h5py.File(path, "r")
        except OSError as err:
            raise DatasetError(f"{path}: unreadable target-features file ({err}); make it "
                               "with target_features.py") from None
        with handle:
            settings = json.loads(handle.attrs.get("settings", "{}"))
            self.check_story_record(settings.get("inputs"), stories, path)
            made_with = settings.get("tr_source", self.tr_source)
            if made_with != self.tr_source:
                logger.warning("%s was made on the %s TR timing and is read for the %s one; "
                               "make it with --tr_source %s", path, made_with, self.tr_source,
                               self.tr_source)
            for story in stories:
                if story not in handle:
                    raise DatasetError(f"{path}: no dataset for story {story!r}; make the "
                                       "file again with that story (target_features.py "
                                       "--stories)")
                rows = self.response_rows(story)
                if handle[story].ndim != 2 or handle[story].shape[0] != rows:
                    raise DatasetError(f"{path}: dataset {story!r} has shape "
                                       f"{handle[story].shape}, expected ({rows}, features): "
                                       "the story's response rows")
                values = handle[story][()]
                if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
                    raise DatasetError(f"{path}: dataset {story!r} holds values that are not "
                                       "finite numbers; make the file again with "
                                       "target_features.py")
                features[story] = values.astype(np.float32, copy=False)
        widths = {values.shape[1] for values in features.values()}
        if len(widths) > 1:
            raise DatasetError(f"{path}: stories have different feature counts {sorted(widths)}")
        return features

    def truth(self):
        """The ground truth ``synthetic_data.py`` writes beside a synthetic dataset
        (``synthetic_truth.json``): planted voxels, words and their embeddings."""
        path = self.root / "synthetic_truth.json"
        if not path.is_file():
            raise DatasetError(f"{path}: missing; {self.root} is not a synthetic dataset "
                               "written by synthetic_data.py")
        return json.loads(path.read_text())

    # ------------------------------------------------------------------------- words and phones

    def textgrid(self, story):
        """A story's TextGrid: (xmax seconds, phone entries, word entries), the tiers found by
        ``textgrids.identify_tiers``."""
        path = self.textgrid_path(story)
        xmax, grid = textgrids.read_textgrid(path)
        return (xmax, *textgrids.identify_tiers(grid, path))

    def words(self, story):
        """Word tier of a story: list of (start, end, word) without empty labels and noise."""
        return _labelled(self.textgrid(story)[2])

    def phones(self, story):
        """Phone tier of a story: (start, end, ARPAbet phone with stress digit), no silences."""
        return _labelled(self.textgrid(story)[1])

    # ------------------------------------------------------------------------- TR timing

    def trfile(self, story):
        """The ``tr_files.TRFile`` of a story under the dataset's ``tr_source``: the simulated
        2 s grid of ``respdict[story] - 5`` TRs, ``<tr_path>/<story>.report`` (or the one file
        given), or the story's entry of the ``trfiles_huge.jbl`` pickle. Use one source for
        every story: they drift about 1.3 s apart over a story."""
        if self.tr_source == "respdict":
            return tr_files.TRFile.simulated(self.respdict_trs(story) - RESPDICT_PAD_TRS,
                                             TR_SECONDS, SIMULATED_SOUND_START)
        path = self.tr_file_path(self.tr_source)
        if self.tr_source == "report":
            return tr_files.TRFile.from_report(path / f"{story}.report" if path.is_dir()
                                               else path)
        trfiles = tr_files.load_research_pickle(path)
        if story not in trfiles:
            raise DatasetError(f"{path}: no TR file for story {story!r}")
        trfile = trfiles[story]
        return tr_files.checked(trfile[0] if isinstance(trfile, (list, tuple)) else trfile,
                                f"{path} [{story}]")

    def tr_file_path(self, source):
        """Where the TR files of ``source`` ("report" or "trfiles") are: ``tr_path`` for the
        dataset's own source, else looked up in the copy."""
        if self.tr_path is not None and source == self.tr_source:
            return Path(self.tr_path)
        name = "trfiles_huge.jbl" if source == "trfiles" else "TRfiles"
        candidates = [self.derivative / name, self.root / name]
        for candidate in candidates:
            if candidate.exists():
                return candidate
        raise DatasetError(f"tr_source={source!r} needs tr_path (none of "
                           f"{', '.join(map(str, candidates))} exists)")

    def tr_times(self, story):
        """Centres of a story's TRs in seconds from story onset, float64 (n_trs,); on the
        simulated grid TR ``k`` is centred at ``2k - 9`` s."""
        return self.trfile(story).tr_centres()

    def _row_tr_starts(self, trfile, story):
        """Starts of the TRs of the response rows (grid TRs 10 .. 10 + rows - 1): (rows,)."""
        n_rows = self.response_rows(story)
        starts = trfile.tr_starts()[TRIM_START_TRS:TRIM_START_TRS + n_rows]
        if len(starts) < n_rows:
            raise DatasetError(f"story {story!r}: the {self.tr_source} TR timing has "
                               f"{len(trfile.trtimes)} TRs but its {n_rows} response rows need "
                               f"{n_rows + TRIM_START_TRS}")
        return starts

    def story_span(self, story):
        """Where a story's audio must end, in seconds from onset: (rows_end, grid_end), the end
        of the last response row's TR (``2 * respdict - 30`` s on the simulated grid) and of
        the TR grid (``2 * respdict - 20`` s)."""
        trfile = self.trfile(story)
        starts = self._row_tr_starts(trfile, story)
        return float(starts[-1] + trfile.avgtr), float(trfile.tr_starts()[-1] + trfile.avgtr)

    def window_bounds(self, story, sampling_rate=SAMPLING_RATE, n_delays=4):
        """Sample range of the audio input of each response row: row ``i`` gets the
        ``(n_delays + 1) * 2`` s ending at the end of grid TR ``i + 10``.

        Returns (rows,) int64 starts and stops from story onset; they may lie before 0 or past
        the audio's end (zero padding); ``stops - starts`` is constant."""
        trfile = self.trfile(story)
        starts = self._row_tr_starts(trfile, story)
        stops = np.round((starts + trfile.avgtr) * sampling_rate).astype(np.int64)
        length = int(round((n_delays + 1) * TR_SECONDS * sampling_rate))
        return stops - length, stops

    # ------------------------------------------------------------------------- audio

    def stimulus_duration(self, story):
        """Seconds of a story's audio, from the WAV's header."""
        return audio_io.audio_duration(self.stimulus_path(story))

    def stimulus_problem(self, story, duration, xmax=None):
        """What is wrong with a story's audio length (one line naming the WAV), or None.

        The audio (``duration`` s) must reach, on the simulated respdict grid, the grid's end
        (less ``GRID_PAST_AUDIO_TOLERANCE_S``), on every grid the end of the last response row's
        TR (less ``AUDIO_SHORT_TOLERANCE_S``), end before the TR grid does (plus
        ``AUDIO_LONG_TOLERANCE_S``) and, when ``xmax`` (the TextGrid's end) is given, end
        within ``TEXTGRID_AUDIO_TOLERANCE_S`` of it."""
        wav = self.root / "stimuli" / f"{story}.wav"
        rows_end, grid_end = self.story_span(story)
        if self.tr_source == "respdict" and duration < grid_end - GRID_PAST_AUDIO_TOLERANCE_S:
            return (f"{wav}: {duration:.2f} s of audio, but the story's TR grid (respdict.json: "
                    f"{self.respdict_trs(story)} TRs) ends at {grid_end:.2f} s, more than a TR "
                    "later; the respdict entry is wrong (download respdict.json again) or the WAV "
                    "is truncated (download it again)")
        if duration < rows_end - AUDIO_SHORT_TOLERANCE_S:
            return (f"{wav}: {duration:.2f} s of audio, but the story's response rows need "
                    f"audio until {rows_end:.2f} s ({self.tr_source} TR timing); the WAV is "
                    "truncated or belongs to another story: download it again")
        if duration > grid_end + AUDIO_LONG_TOLERANCE_S:
            return (f"{wav}: {duration:.2f} s of audio, but the story's TR grid ends at "
                    f"{grid_end:.2f} s ({self.tr_source} TR timing); the WAV belongs to another "
                    "story or respdict.json to another release: download them again")
        if xmax is not None and abs(duration - xmax) > TEXTGRID_AUDIO_TOLERANCE_S:
            return (f"{wav}: {duration:.2f} s of audio, but its TextGrid "
                    f"{self.derivative / 'TextGrids' / (story + '.TextGrid')} ends at "
                    f"{xmax:.2f} s; one of them belongs to another story: download them again")
        return None

    def stimulus(self, story, sampling_rate=SAMPLING_RATE):
        """A story's audio as float32 mono at ``sampling_rate`` Hz (channels averaged,
        resampled). Audio that does not cover the story (``stimulus_problem``, against the
        TR timing and the TextGrid's end when there is one; the decoded length) is a
        DatasetError naming the WAV and both durations."""
        audio = audio_io.read_audio(self.stimulus_path(story), sampling_rate)
        if not np.any(audio):
            raise DatasetError(f"{self.stimulus_path(story)}: the audio is silent (every sample "
                               "zero); a story's audio carries its signal: get the file again")
        textgrid = self.derivative / "TextGrids" / f"{story}.TextGrid"
        xmax = textgrids.read_textgrid(textgrid)[0] if textgrid.is_file() else None
        problem = self.stimulus_problem(story, len(audio) / sampling_rate, xmax)
        if problem:
            raise DatasetError(problem)
        return audio

    def audio_windows(self, story, sampling_rate=SAMPLING_RATE, n_delays=4):
        """Audio input of each response row: float32 (rows, (n_delays + 1) * 2 *
        sampling_rate); row ``i`` pairs with row ``i`` of ``responses``: the 10 s (default)
        ending at the end of grid TR ``i + 10``, zero-padded outside the story."""
        audio = self.stimulus(story, sampling_rate)
        starts, stops = self.window_bounds(story, sampling_rate, n_delays)
        return audio_io.slice_windows(audio, starts, int(stops[0] - starts[0]))

    # ------------------------------------------------------------------------- checks

    def check_run_inputs(self, subject, stories):
        """Check every input a run on ``stories`` needs, from metadata and headers: each
        story's respdict entry, response file (readable, 2-D numeric ``data`` with respdict - 20
        rows, one voxel count for every story), WAV (readable, as long as the story, a signal:
        ``audio_io.signal_problem``) and TextGrid (readable, times in order, phone and word
        tiers identifiable). Quick: no response matrix read, of a PCM WAV 16 sampled seconds.

        Returns the subject's voxel count. Raises one DatasetError with the first problem and
        how many more there are."""
        file_problems, response_problems, _, n_voxels = self.subject_story_problems(
            subject, stories, self.respdict(), set())
        problems = file_problems + response_problems
        if problems:
            more = (f" (and {len(problems) - 1} more problems; run python data_utils.py check "
                    f"--data_dir {self.root})" if len(problems) > 1 else "")
            raise DatasetError(problems[0] + more)
        return int(n_voxels)

    def subject_story_problems(self, subject, stories, respdict, checked):
        """Problems of a subject's stories, one line each: those of the story files (respdict
        entry, TextGrid, WAV; skipped for stories in ``checked``, which gains these) and those
        of the response files (shape, rows, voxel counts).

        Returns (file problems, response problems, story -> response shape, voxel count)."""
        file_problems, response_problems, shapes = [], [], {}
        for story in dict.fromkeys(stories):
            if story not in checked:
                checked.add(story)
                file_problems += self._story_problems(story, respdict)
            shape, problem = self._response_shape(subject, story, respdict)
            response_problems += [problem] if problem else []
            if shape is not None:
                shapes[story] = shape
        counts = collections.Counter(shape[1] for shape in shapes.values())
        n_voxels = counts.most_common(1)[0][0] if counts else 0
        response_problems += [
            f"{self.subject_dir(subject) / (story + '.hf5')}: {shape[1]} voxels but the "
            f"subject's other stories have {n_voxels}; download the file again"
            for story, shape in shapes.items() if shape[1] != n_voxels]
        return file_problems, response_problems, shapes, n_voxels

    def _story_problems(self, story, respdict):
        """Problems with a story's respdict entry, TextGrid and WAV, one line each, from
        headers and the TextGrid only: the entry usable, the TextGrid readable with its tiers
        identifiable, the WAV readable and as long as the story (``stimulus_problem``)."""
        entry_problem = self.respdict_problem(story, respdict)
        found = [entry_problem] if entry_problem else []
        xmax = None
        try:
            xmax = self.textgrid(story)[0]
        except DatasetError as err:
            found.append(str(err))
        try:
            duration = self.stimulus_duration(story)
            length_problem = None if entry_problem else self.stimulus_problem(story, duration,
                                                                              xmax)
            signal = audio_io.signal_problem(self.stimulus_path(story))
            found += [problem for problem in (length_problem, signal) if problem]
        except DatasetError as err:
            found.append(str(err))
        return found

    def _response_shape(self, subject, story, respdict):
        """Shape of a story's response ``data`` from metadata: (shape or None, problem or
        None): a problem when the file is missing or unreadable, ``data`` is not 2-D (shape
        None) or its rows differ from ``respdict - 20`` (shape given)."""
        try:
            path = self.response_path(subject, story)
            shape = hdf5_io.hdf5_shape(path)
        except DatasetError as err:
            return None, str(err)
        if len(shape) != 2:
            return None, f"{path}: 'data' has shape {shape}, expected (rows, voxels)"
        if self.respdict_problem(story, respdict) is None:
            expected = respdict[story] - RESPONSE_ROWS_OFFSET
            if shape[0] != expected:
                return shape, (f"{path}: {shape[0]} rows but respdict.json says "
                               f"{respdict[story]} TRs, so {expected} rows are expected; the "
                               "file or respdict.json is from another release")
        return shape, None


def _story_file(path, what, story, folder):
    """``path``, a story's ``what``, or a DatasetError saying to download ``folder``."""
    _not_a_folder(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} of story {story!r} is missing; download {folder} "
                           "of ds003020")
    return path


def _not_a_folder(path):
    """A DatasetError when a dataset file's path is a folder (or anything but a file)."""
    if path.exists() and not path.is_file():
        raise DatasetError(f"{path}: a folder (or other non-file) stands where the dataset's "
                           "file should be; remove it and download the file")


def _labelled(entries):
    """Tier entries without empty labels and noise, labels stripped."""
    return [(start, end, label.strip()) for start, end, label in entries
            if not textgrids.is_noise(label)]


# ---------------------------------------------------------------------- python data_utils.py check

def check_dataset(dataset, subjects=None):
    """Check a ds003020 copy. Returns (summary lines, problems, notes), problems being fatal.

    Each problem and note is one line naming the file and what is wrong. The per-story checks
    are those of ``Dataset.check_run_inputs``, audio lengths against the dataset's TR timing.
    The summary ends with one line per TR timing source the copy offers (``tr_sources``) and,
    when TR files are there but the simulated grid is used, a note on how to switch."""
    lines, problems, notes = [], [], []
    try:
        respdict = dataset.respdict()
    except DatasetError as err:
        problems.append(str(err))
        respdict = {}
    lines.append(f"dataset {dataset.root}: respdict.json lists {len(respdict)} stories")
    checked_stories = set()
    names = [subject_id(s) for s in subjects] if subjects else dataset.subjects()
    if not names:
        problems.append(f"{dataset.derivative / 'preprocessed_data'}: no subject folders "
                        "(UTS01 ...)")
    for name in names:
        try:
            stories = dataset.stories(name)
        except DatasetError as err:
            problems.append(str(err))
            continue
        if not stories:
            problems.append(f"{dataset.subject_dir(name)}: no .hf5 response files")
            continue
        file_problems, subject_problems, shapes, n_voxels = dataset.subject_story_problems(
            name, stories, respdict, checked_stories)
        problems += file_problems
        repeats = "none"
        if TEST_STORY in shapes:
            repeats = _test_story_checks(dataset, name, shapes[TEST_STORY], subject_problems,
                                         notes)
        else:
            notes.append(f"{name}: no responses for the test story {TEST_STORY}")
        rows = [shape[0] for shape in shapes.values()]
        lines.append(f"{name}: {len(stories)} stories, {sum(rows)} rows "
                     f"({min(rows, default=0)}-{max(rows, default=0)} per story), "
                     f"{n_voxels} voxels, {repeats} repeats of {TEST_STORY}")
        problems += subject_problems
    source_lines, source_notes = _tr_source_report(
        tr_sources(dataset, sorted(checked_stories) if checked_stories else None),
        dataset.tr_source)
    return lines + source_lines, problems, notes + source_notes


def _test_story_checks(dataset, subject, shape, problems, notes):
    """The test story's constant voxels (a note) and repeats (a problem when their shape does
    not match ``shape``, the story's ``data``; a note when there are none), added to
    ``problems`` and ``notes``. Returns the number of repeats, as text ("none")."""
    path = dataset.subject_dir(subject) / f"{TEST_STORY}.hf5"
    if shape[0] <= TEST_RESPONSE_TRIM:
        problems.append(f"{path}: {shape[0]} response rows, but brain_evaluate.py does not score "
                        f"the test story's first {TEST_RESPONSE_TRIM} (the paper's protocol): "
                        "the file is cut short, download it again")
    try:
        n_constant, n_all_nan = hdf5_io.constant_voxel_counts(path)
    except DatasetError as err:
        problems.append(str(err))
        n_constant = 0
    if n_constant:
        notes.append(f"{path}: {n_constant} of {shape[1]} voxels have constant test-story "
                     f"responses ({n_all_nan} of them all NaN); they carry no signal and are "
                     "left out of evaluation summaries")
    try:
        repeat_shape = hdf5_io.hdf5_shape(path, "individual_repeats")
    except DatasetError as err:
        notes.append(f"{err}; noise ceilings of {subject} cannot be computed from the data")
        return "none"
    if len(repeat_shape) != 3 or tuple(repeat_shape[1:]) != tuple(shape):
        problems.append(f"{path}: 'individual_repeats' has shape {repeat_shape}, expected "
                        f"(repeats, {shape[0]}, {shape[1]})")
    return str(repeat_shape[0]) if len(repeat_shape) == 3 else "none"


def _file_source_kind(path):
    """The TR file source a ``tr_path`` is for: a folder or a ``.report`` file is "report",
    another file "trfiles" (a pickle)."""
    path = Path(path)
    return "report" if path.is_dir() or path.suffix == ".report" else "trfiles"


def tr_sources(dataset, stories=None):
    """The TR timing sources a ds003020 copy offers and how many stories each covers.

    "respdict" (the simulated grid, the toolkit's default) is always listed; "report" when a
    folder of ``.report`` files (or one ``.report`` file) is where ``Dataset.trfile`` looks
    (the dataset's ``tr_path``, else ``Dataset.tr_file_path``); "trfiles" likewise for a
    ``trfiles_huge.jbl`` pickle. ``tr_path`` belongs to the dataset's ``tr_source`` when that
    is "report" or "trfiles", else its kind is told by the path (a folder or ``.report`` file:
    report; another file: trfiles). Cheap: one folder listing, and the pickle loaded once
    (``tr_files.load_research_pickle`` is cached).

    Returns source -> {"path": str or None, "stories": int or None, "of": int or None,
    "error": str or None}: ``stories`` of the ``of`` stories (``stories``, default those of
    respdict.json) have timing from this source (for respdict: a usable entry; one report
    file serves every story). Without stories to count (respdict.json unreadable and
    ``stories`` None), ``stories`` is how many the source holds and ``of`` None. ``error``
    (one line naming the file; ``stories`` None) when the source is there but unusable."""
    found, respdict, respdict_error = {}, None, None
    try:
        respdict = dataset.respdict()
    except DatasetError as err:
        respdict_error = str(err)
    names = list(dict.fromkeys((respdict or ()) if stories is None else stories))
    counted = stories is not None or respdict is not None
    of = len(names) if counted else None

    def entry(path, present=None, error=None):
        return {"path": None if path is None else str(path),
                "stories": None if error else (sum(s in present for s in names) if counted
                                               else len(present)),
                "of": of, "error": error}

    found["respdict"] = entry(dataset.derivative / "respdict.json", error=respdict_error,
                              present=[s for s in names if dataset.respdict_problem(
                                  s, respdict) is None] if respdict else [])
    tr_path, explicit = dataset.tr_path, None
    if tr_path is not None:
        explicit = (dataset.tr_source if dataset.tr_source in ("report", "trfiles")
                    else _file_source_kind(tr_path)), Path(tr_path)
    for source in TR_SOURCES[1:]:
        if explicit is not None and explicit[0] == source:
            path = explicit[1]
        else:
            try:
                path = dataset.tr_file_path(source)
            except DatasetError:
                continue
        found[source] = _tr_file_entry(source, path, names, counted, entry)
    return found


def _tr_file_entry(source, path, names, counted, entry):
    """``tr_sources``' entry of the TR files of ``source`` at ``path``."""
    if not path.exists():
        return entry(path, error=f"{path}: no such file or folder")
    if source == "report" and path.is_dir():
        return entry(path, {p.name[:-len(".report")] for p in path.iterdir()
                            if p.name.endswith(".report") and p.is_file()})
    if source == "report":  # one report file: Dataset.trfile uses it for every story
        return entry(path, names if counted else [path.stem])
    try:
        trfiles = tr_files.load_research_pickle(path)
    except DatasetError as err:
        return entry(path, error=str(err))
    if isinstance(trfiles, dict):
        return entry(path, trfiles)
    return entry(path, error=f"{path}: holds a {type(trfiles).__name__}, not a dict of story "
                             "-> TRFile")


def _tr_source_report(sources, tr_source):
    """Check's lines (one per TR timing source) and notes about ``tr_sources``' result."""
    lines, usable = [], {}
    for source, found in sources.items():
        where = f" ({found['path']})" if found["path"] else ""
        if found["error"]:
            prefix = f"{found['path']}: "
            detail = f"not usable: {found['error'].removeprefix(prefix)}"
        else:
            detail = f"{found['stories']} of {found['of']} stories" if found["of"] is not None \
                else f"{found['stories']} stories"
            if source != "respdict" and found["stories"]:
                usable[source] = found["path"]
        if source == "respdict":
            detail = (f"simulated {TR_SECONDS:g} s grid of respdict - {RESPDICT_PAD_TRS} TRs, "
                      f"{detail}; the toolkit's default")
        lines.append(f"TR timing {source}{where}: {detail}"
                     f"{' (used by this check)' if source == tr_source else ''}")
    notes = []
    if usable and tr_source == "respdict":
        switch = " or ".join(f"--tr_source {source} --tr_path {usable[source]}"
                             for source in sorted(usable, key=("trfiles", "report").index))
        notes.append("the authors (Antonello et al.) used the measured TR files; the toolkit's "
                     "default, used here, is the simulated respdict grid, and the two drift "
                     f"~1.3 s apart over a story. To use the TR files pass {switch} to check, "
                     "the trainer and the evaluator alike")
    return lines, notes


@dataclasses.dataclass(kw_only=True)
class CheckCommand(DatasetFlags):
    """Print per subject the stories, rows, voxels and test-story repeats, and every
    inconsistency found (missing or bad WAV/TextGrid/respdict entry, audio shorter or longer
    than the story, TextGrid tiers that look swapped, wrong row count, unreadable HDF5, voxel
    counts that differ between stories), and the TR timing sources found (simulated respdict
    grid, .report files, trfiles_huge.jbl) with the stories each covers. Notes (not problems)
    name test-story voxels with constant responses and how to use the TR files. Exit status 0
    when the dataset is usable, 1 otherwise. --tr_source: the TR timing the stimulus lengths are
    checked against; use the one of your runs."""

    subjects: list[str] | None = flag(None, help="subjects to check (1, '1' or UTS01); "
                                                 "default: all found")


def parse_args(argv=None):
    return arguments.parse_command(
        {"check": (CheckCommand, "check a downloaded ds003020 copy and print what it holds")},
        argv, docs="docs/dataset.md", description="Dataset tools for the Moth Radio Hour fMRI "
                                                   "dataset (OpenNeuro ds003020).")


def run(args):
    """Print the dataset report; a dataset with problems is a DatasetError (exit status 1)."""
    try:
        dataset = args.open_dataset()
        check = check_dataset
        if args.dataset == "narratives":
            import narratives  # it builds on this module
            check = narratives.check_dataset
        lines, problems, notes = check(dataset, args.subjects)
    except DatasetError as err:
        lines, problems, notes = [], [str(err)], []
    for line in lines:
        print(line)
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(problems)} problem(s): dataset {'NOT ' if problems else ''}usable")
    if problems:
        raise DatasetError(f"{args.data_dir}: {len(problems)} problem(s), listed above")


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())