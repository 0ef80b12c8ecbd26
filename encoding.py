"""The encoding problem of brain alignment and its per-voxel scores: the responses of the
fitted voxels, the test target and its ceiling, the cross-validation splits, and a layer's
ridge encoding model fitted and scored on them (docs/method.md#encoding-model,
docs/method.md#scoring, docs/method.md#uncertainty).
"""

import dataclasses
import logging
import math
from typing import NamedTuple

import numpy as np
import scipy

import arguments
import brain_regions
import data_utils
import eval_utils
import noise_ceilings
import processes
import run_utils
from arguments import flag
from run_utils import DatasetError, UsageError
from summaries import (PARTITION_PARTS, Summaries, divide_rows, figure_regions, load_rois,
                       summary_voxels, summary_weights)

logger = logging.getLogger(__name__)

TEST_TARGETS = ("repeats_mean", "data")  # --test_target; the first is the authors'
NORMALISERS = ("test_repeats", "nc_file", "intersubject")  # --normalise_by; the first is the
#                                                            authors'
GROUP = "stories, voxels and the ridge"
PROTOCOL_GROUP = "scoring protocol (the defaults are the authors'; docs/method.md#scoring)"


@dataclasses.dataclass(kw_only=True)
class EncodingFlags(arguments.Flags):
    """The encoding problem: stories, voxels, the ridge and the scoring protocol."""

    train_stories: list[str] | None = flag(
        None, group=GROUP, help="stories the encoding model is fitted on; default: the paper's "
                                "training list restricted to what the subject has")
    test_story: str = flag(data_utils.TEST_STORY, group=GROUP,
                           help="held-out story (on Narratives one of the subject's, e.g. "
                                "pieman)")
    nc_path: str | None = flag(None, group=GROUP,
                               help="noise-ceiling file (default subject_NCs/UTS0N.npy, computed "
                                    "from the test-story repeats when missing; with "
                                    "--normalise_by intersubject subject_NCs/"
                                    "narratives_<space>_<test story>.npy, from its listeners)")
    nc_thr: float = flag(eval_utils.NC_THRESHOLD, group=GROUP,
                         help="summaries average over voxels whose noise ceiling exceeds this "
                              "(and whose test-story responses vary); a run with no such voxel "
                              "is refused")
    voxels: str = flag("all", metavar="SELECTION", group=GROUP,
                       help="the voxels fitted and scored: 'all', 'nc>T' (noise ceiling of "
                            "--nc_path above T, e.g. nc>0.4) or a region or group of --regions; "
                            "summaries cover them only (docs/alignment.md)")
    alphas: list[float] | None = flag(None, group=GROUP,
                                      help="ridge penalties (ordinary ridge); default: the "
                                           "paper's logspace(1, 4, 15) in singular-value units, "
                                           "squared; the run warns when more than 5%% of the "
                                           "voxels choose an end")
    n_boots: int = flag(3, group=GROUP, help="cross-validation splits")
    chunk_len: int = flag(20, group=GROUP, help="rows per held-out chunk")
    seed: int = flag(0, group=GROUP, help="seed of the cross-validation splits")
    cv_chunks: str = flag(eval_utils.CV_CHUNKS[0], choices=eval_utils.CV_CHUNKS, group=GROUP,
                          protocol=True,
                          help="held-out chunks of the alpha choice: within_stories (ours; "
                               "round(25%% of the chunks)) or stacked (the authors': chunks of "
                               "the stacked rows, int(25%% of rows / --chunk_len)); docs/"
                               "method.md#where-our-defaults-differ-from-the-authors-code")
    delays: str = flag(eval_utils.DELAY_MODES[0], choices=eval_utils.DELAY_MODES, group=GROUP,
                       protocol=True,
                       help="FIR delays of the training stories: per_story (ours, zero-padded) "
                            "or stacked (the authors': after stacking, reaching into the "
                            "previous story); docs/method.md#where-our-defaults-differ-from-"
                            "the-authors-code")
    test_target: str = flag("repeats_mean", choices=TEST_TARGETS, group=PROTOCOL_GROUP,
                            protocol=True,
                            help="what the test prediction is correlated with: the mean of the "
                                 "test story's individual_repeats over the scored rows (the "
                                 "authors'), or its 'data' rows")
    normalise_by: str = flag("test_repeats", choices=NORMALISERS, group=PROTOCOL_GROUP,
                             protocol=True,
                             help="cc_norm = r / cc_max, cc_max from the scored rows of the test "
                                  "story's repeats (the authors'), or the noise-ceiling file "
                                  "(--nc_path, computed on all its rows; the follow-up paper's "
                                  "normaliser), or the test story's intersubject ceiling "
                                  "(Narratives: a story heard once by many; with --test_target "
                                  "data)")
    alpha_score: str = flag("r2", choices=eval_utils.RIDGE_SCORES, group=PROTOCOL_GROUP,
                            protocol=True,
                            help="how each voxel's ridge alpha is chosen on the held-out chunks "
                                 "(and the alphas of --low_level and --semantic_preference): r2 "
                                 "= sign(R2) sqrt(|R2|) with the Huth-lab assumed variance "
                                 "(bootstrap_ridge use_corr=False, the authors'), or corr "
                                 "(Pearson r)")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 1, "n_boots", "chunk_len")
        if not 0 <= self.nc_thr < 1:
            raise UsageError(f"--nc_thr must be in [0, 1) (noise ceilings are correlations), "
                             f"got {self.nc_thr}")
        try:
            voxel_selection(self.voxels)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if self.alphas is None:
            self.alphas = eval_utils.ENCODING_ALPHAS.tolist()
        arguments.check_penalties(self, "alphas")


@dataclasses.dataclass(kw_only=True)
class UncertaintyFlags(arguments.Flags):
    """p-values, intervals and data efficiency (docs/method.md#uncertainty)."""

    n_permutations: int = flag(1000, group="uncertainty and data efficiency", protocol=True,
                               help="per-voxel p-values of the test correlation by a block "
                                    "permutation of the test story (0: none); Benjamini-"
                                    "Hochberg FDR over the fitted voxels (--voxels)")
    fdr_q: float = flag(0.05, group="uncertainty and data efficiency", protocol=True,
                        resumable=True,
                        help="FDR level: a voxel is significant when its BH-adjusted p-value "
                             "is below it (significant_fraction in results.csv)")
    n_bootstrap: int = flag(1000, group="uncertainty and data efficiency", protocol=True,
                            help="block-bootstrap resamples of the test story's time for the 95%% "
                                 "intervals of each mean cc_norm and of each tuned-minus-"
                                 "pretrained difference (the same resamples for every model; "
                                 "0: none)")
    block_len: int = flag(10, group="uncertainty and data efficiency", protocol=True,
                          help="TRs per block of the permutations and of the bootstrap (keeps "
                               "the autocorrelation of fMRI within a block)")
    train_fraction: list[float] = flag([1.0], group="uncertainty and data efficiency",
                                       protocol=True, resumable=True,
                                       help="data efficiency: also fit each layer's encoding "
                                            "model on these fractions of the training rows "
                                            "(whole stories first, then leading rows; the same "
                                            "for every model) and report cc_norm per fraction; "
                                            "1.0 is always included")
    train_story_counts: list[int] = flag(
        [], group="uncertainty and data efficiency", protocol=True, resumable=True,
        help="data efficiency in whole stories (the follow-up paper's form, e.g. 2 3 5 10 15 "
             "20 25): also fit each layer's encoding model on that many training stories, "
             "nested sets drawn from --seed (the same for every model), and report how many "
             "stories a tuned model needs for the pretrained model's full-data alignment; each "
             "below the number of training stories")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 1, "block_len")
        arguments.check_at_least(self, 0, "n_permutations", "n_bootstrap")
        if not 0 < self.fdr_q < 1:
            raise UsageError(f"--fdr_q must be in (0, 1), got {self.fdr_q}")
        if not all(0 < fraction <= 1 for fraction in self.train_fraction):
            raise UsageError(f"--train_fraction values must be in (0, 1], got "
                             f"{' '.join(map(str, self.train_fraction))}")
        self.train_fraction = sorted({*self.train_fraction, 1.0})
        if any(count < 1 for count in self.train_story_counts):
            raise UsageError(f"--train_story_counts must be at least 1, got "
                             f"{' '.join(map(str, self.train_story_counts))}")
        self.train_story_counts = sorted(set(self.train_story_counts))


class Responses(NamedTuple):
    """The fMRI rows encoding models are fitted and scored on."""
    train: np.ndarray  # (rows, voxels) the training stories' rows, stacked in story order
    #                    (under torchrun: this process's share of the voxels, process_share)
    test: np.ndarray  # (rows, voxels) the test target (--test_target) over the scored rows
    test_ceiling: np.ndarray  # (voxels,) cc_max of the test story's repeats over those rows
    normaliser: np.ndarray  # (voxels,) what cc_norm divides r by (--normalise_by)


class TrainingSubset(NamedTuple):
    """The training rows of a --train_fraction or a --train_story_counts."""
    rows: np.ndarray  # indices into the stacked training rows
    splits: list  # (train rows, held-out rows) pairs over ``rows``
    fraction: float  # the --train_fraction, or the share of the training rows the stories hold
    stories: list = None  # the whole training stories of a --train_story_counts (in order)


class Uncertainty(NamedTuple):
    """How p-values and intervals are computed (the same resamples for every model)."""
    n_permutations: int
    block_len: int
    seed: int
    bootstrap_counts: np.ndarray  # (resamples, blocks), or None for no intervals
    block_starts: np.ndarray
    bootstrap_weights: "scipy.sparse.csr_array"  # (voxels, summaries): per-voxel r -> mean
    # cc_norm summaries (or a dense array)
    fdr_q: float


class EncodingTask(NamedTuple):
    """The encoding problem every layer of every model is scored on. Its voxels are the fitted
    ones (``--voxels``): every array over voxels below has one entry per fitted voxel, in the
    order of ``fitted``."""
    stories: list  # training stories, in order
    test_story: str
    responses: Responses
    voxels: np.ndarray  # (voxels,) bool: NC > nc_thr and varying test target (voxel means)
    summaries: Summaries
    splits: list  # (train rows, held-out rows) pairs over the stacked training rows
    subsets: dict  # subset_label(--train_fraction below 1 or --train_story_counts) ->
    #                TrainingSubset
    alphas: list  # ridge penalties
    alpha_score: str  # how alphas are chosen (eval_utils.fit_ridge_cv)
    nc_thr: float  # voxel means average over voxels whose noise ceiling exceeds it
    uncertainty: Uncertainty
    fitted: np.ndarray = None  # (voxels,) int64: their indices among the subject's voxels
    #                            (sorted); None: every voxel, in order
    n_voxels: int = None  # the subject's voxels; None: as many as fitted
    delays: str = eval_utils.DELAY_MODES[0]  # how the training stories are delayed (--delays)
    test_trim: int = data_utils.TEST_RESPONSE_TRIM  # test-story rows not scored

    def fitted_indices(self):
        """(voxels,) int64: the indices of the fitted voxels among the subject's voxels."""
        if self.fitted is None:
            return np.arange(self.voxels.size, dtype=np.int64)
        return np.asarray(self.fitted, np.int64)

    def full(self, values):
        """Per-voxel ``values`` of the fitted voxels in the subject's voxel space: (n_voxels,)
        float, NaN where not fitted (``values`` as they are when every voxel is fitted)."""
        values = np.asarray(values)
        n_voxels = self.voxels.size if self.n_voxels is None else self.n_voxels
        if values.shape[0] == n_voxels:
            return values
        dtype = np.result_type(values.dtype, np.float32)
        out = np.full((n_voxels, *values.shape[1:]), np.nan, dtype)
        out[self.fitted_indices()] = values
        return out


def training_stories(dataset, subject, requested, test_story):
    """The requested training stories, or by default the paper's that the subject has (on
    ds003020) or all the subject's other stories (on another dataset); checked against the
    subject's responses and the test story."""
    available = dataset.stories(subject)
    if requested:
        stories = requested
    elif dataset.name == "ds003020":
        stories = [s for s in data_utils.TRAIN_STORIES if s in available]
    else:
        stories = [s for s in available if s != test_story]
    if not stories:
        raise UsageError(f"{subject} has none of the paper's training stories; name them with "
                         "--train_stories")
    for story in [*stories, test_story]:
        if story not in available:
            raise UsageError(f"story {story!r} has no responses for {subject} (check "
                             f"--train_stories and --test_story); its stories: "
                             f"{', '.join(available[:12])}{' ...' if len(available) > 12 else ''}")
    if test_story in stories:
        raise UsageError(f"the test story {test_story} is also a training story")
    return stories


def encoding_task(settings, dataset, subject, stories):
    """The run's encoding problem, every input checked before any model is loaded
    (``checked_inputs``), then the fitted voxels (``--voxels``, ``fitted_voxels``), the test
    target and its ceiling (``test_scoring``), the summary voxels (``summary_voxels``), the
    cross-validation splits and the --train_fraction subsets. ``settings``: the evaluator's
    (``EncodingFlags``, ``UncertaintyFlags``, ``brain_regions.RegionFlags`` and
    ``cache_dir``).

    Only the fitted voxels' columns are read, and the task is theirs alone: responses, test
    target and ceilings, normaliser, summary voxels and summaries (regions cut to the fitted
    voxels, at their positions among them); ``EncodingTask.full`` takes its per-voxel results
    back to the subject's voxel space.

    Returns the ``EncodingTask`` and the facts about its voxels (``summary_voxels``, and
    ``fitted_voxels``: the selection and its voxel count)."""
    n_voxels, nc, nc_path, region_file = checked_inputs(settings, dataset, subject, stories)
    regions, groups = load_rois(region_file, n_voxels)
    fitted = fitted_voxels(settings.voxels, nc, nc_path, regions, groups, region_file,
                           settings.nc_thr)
    every = fitted.size == n_voxels
    columns = None if every else fitted  # None: every column, read as it is
    if settings.normalise_by == "intersubject":  # the ceiling is the test story's own
        target = dataset.responses(subject, settings.test_story, columns)
        test_ceiling = nc[fitted]
    else:
        target, test_ceiling = test_scoring(dataset, subject, settings.test_story,
                                            settings.test_target, columns)
    if len(target) // settings.block_len < 2:
        raise UsageError(f"--block_len {settings.block_len}: the {len(target)} scored test rows "
                         "make fewer than 2 blocks to permute and resample")
    voxels, voxel_facts = summary_voxels(nc[fitted], settings.nc_thr, nc_path, target,
                                         dataset.response_path(subject, settings.test_story))
    voxel_facts["subject_voxels"] = int(n_voxels)
    voxel_facts["fitted_voxels"] = {"selection": settings.voxels, "n": int(fitted.size)}
    if not every:
        regions = {name: _positions(indices, fitted) for name, indices in regions.items()}
    voxel_facts["regions"] = {"given": settings.regions,
                              "file": region_file and str(region_file), "groups": list(groups),
                              "shown": figure_regions(regions, groups)}
    summaries = summary_weights(voxels, test_ceiling, regions, groups, region_file,
                                settings.nc_thr, "" if every else f" (--voxels {settings.voxels})")
    normaliser = test_ceiling if settings.normalise_by == "test_repeats" else nc[fitted]
    responses = Responses(training_responses(dataset, subject, stories, fitted, n_voxels,
                                             settings.voxels),
                          target, test_ceiling, normaliser)
    lengths = [dataset.response_rows(s) for s in stories]
    splits = cv_splits(lengths, settings.n_boots, settings.chunk_len, settings.seed,
                       chunks=settings.cv_chunks)
    subsets = {subset_label(fraction=fraction): training_subset(
        lengths, fraction, settings.n_boots, settings.chunk_len, settings.seed,
        settings.cv_chunks) for fraction in settings.train_fraction if fraction < 1}
    subsets.update({subset_label(stories=count): story_subset(
        stories, lengths, count, settings.n_boots, settings.chunk_len, settings.seed,
        settings.cv_chunks) for count in settings.train_story_counts})
    counts, starts = (eval_utils.bootstrap_block_counts(len(target), settings.block_len,
                                                        settings.n_bootstrap, settings.seed)
                      if settings.n_bootstrap else (None, None))
    uncertainty = Uncertainty(settings.n_permutations, settings.block_len, settings.seed,
                              counts, starts, divide_rows(summaries.weights, normaliser),
                              settings.fdr_q)
    task = EncodingTask(stories, settings.test_story, responses, voxels, summaries, splits,
                        subsets, settings.alphas, settings.alpha_score, settings.nc_thr,
                        uncertainty, fitted, int(n_voxels), settings.delays,
                        dataset.test_rows_skipped)
    return task, voxel_facts


def checked_inputs(settings, dataset, subject, stories):
    """Every input of the run checked before any model is loaded: the stories' files
    (``Dataset.check_run_inputs``), the noise ceiling (computed if missing, never saved with
    another voxel count than the responses'), the ``--regions`` (made from the anatomy when a
    source is named) and the anatomy of ``--flatmap_layers``. Rank 0 computes and saves what
    is missing before the other processes read it.

    Returns the subject's voxel count, the noise ceiling, its file and the region file (or
    None)."""
    n_voxels = dataset.check_run_inputs(subject, [*stories, settings.test_story])
    if settings.normalise_by == "intersubject":
        if not dataset.shared_space:
            raise UsageError(f"--normalise_by intersubject needs a dataset whose subjects share "
                             f"their voxels (--dataset narratives); {dataset.name}'s are each "
                             "subject's own")
        if settings.test_target != "data":
            raise UsageError("--normalise_by intersubject scores the test story's responses: "
                             "give --test_target data")
    else:  # the test story was repeated
        dataset.repeats_shape(subject, settings.test_story)
    test_rows = dataset.response_rows(settings.test_story)
    if test_rows <= dataset.test_rows_skipped:
        raise DatasetError(f"{dataset.response_path(subject, settings.test_story)}: the test "
                           f"story has {test_rows} response rows, but its first "
                           f"{dataset.test_rows_skipped} are not scored (the paper's "
                           "protocol); choose a longer --test_story")
    nc_path = noise_ceilings.ceiling_file(subject, settings.nc_path, dataset,
                                          settings.test_story)
    with processes.main_process_first():
        nc = noise_ceilings.get_noise_ceiling(dataset, subject, nc_path, settings.test_story,
                                              n_voxels=n_voxels)
        region_file = (brain_regions.subject_regions(dataset, subject, settings.regions,
                                                     settings.cache_dir, settings.annot,
                                                     settings.fsaverage)
                       if settings.regions in brain_regions.SOURCES else settings.regions)
        if settings.flatmap_layers and dataset.shared_space:
            raise UsageError(f"--flatmap_layers draws on a subject's pycortex anatomy; "
                             f"{dataset.name}'s {dataset.space} has none here: leave it out")
        if settings.flatmap_layers:  # pycortex, the anatomy and its voxel count
            anatomy = brain_regions.subject_anatomy(dataset, subject)
            brain_regions.thick_mask(brain_regions.import_cortex(anatomy, settings.cache_dir),
                                     anatomy, n_voxels)
    return n_voxels, nc, nc_path, region_file


def training_responses(dataset, subject, stories, fitted, n_voxels, selection):
    """The training stories' responses of the fitted voxels (``fitted``, sorted indices of the
    subject's ``n_voxels``; ``--voxels selection``), stacked in story order: under torchrun
    only this process's contiguous share of them (``processes.process_share``)."""
    share = processes.process_share(fitted.size)  # all of them without torchrun
    if share.start == share.stop:
        raise UsageError(f"--voxels {selection}: {fitted.size} voxels to fit, fewer than the "
                         "torchrun processes; run fewer processes or select more voxels")
    every = share == slice(0, fitted.size) and fitted.size == n_voxels
    if share != slice(0, fitted.size):
        logger.info("the ridge of each layer is split over the processes: %d of the %d fitted "
                    "voxels in this one", share.stop - share.start, fitted.size)
    columns = None if every else fitted[share]  # None: every column, read as it is
    return np.vstack([dataset.responses(subject, s, columns) for s in stories])



def voxel_selection(text):
    """A ``--voxels`` value parsed: ("all", None), ("nc", threshold) for ``nc>T`` (T a finite
    number) or ("region", name) for anything else. A malformed ``nc>T`` is a ValueError."""
    text = text.strip()
    if text == "all":
        return "all", None
    if text.startswith("nc>"):
        try:
            threshold = float(text[3:])
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold):
            raise ValueError(f"--voxels {text}: expected nc>T with T a finite number, e.g. "
                             "nc>0.4")
        return "nc", threshold
    if not text:
        raise ValueError("--voxels: expected all, nc>T or a region name, got nothing")
    return "region", text


REGION_NAMES_SHOWN = 8  # an unknown --voxels region is answered with this many known names


def fitted_voxels(selection, nc, nc_path, regions, groups, region_file, nc_thr):
    """The (sorted, int64) indices of the voxels ``--voxels selection`` fits: every voxel; those
    whose noise ceiling ``nc`` (from ``nc_path``) exceeds T (``nc>T``); or the voxels of a
    region of ``regions``, or of a group of ``groups`` (the union of its regions'). An unknown
    region name, a selection without voxels and one without any voxel above ``nc_thr`` (no
    summary) are UsageErrors."""
    kind, value = voxel_selection(selection)
    n_voxels = np.size(nc)
    if kind == "all":
        return np.arange(n_voxels, dtype=np.int64)
    if kind == "nc":
        fitted = np.flatnonzero(np.asarray(nc) > value)
        what = f"no voxel has a noise ceiling above {value} in {nc_path} (max {np.max(nc):.3g})"
    else:
        if value in groups:
            members = [index for region in groups[value] for index in regions[region]]
        elif value in regions:
            members = regions[value]
        else:
            names = [*regions, *groups]
            shown = ", ".join(names[:REGION_NAMES_SHOWN]) + (
                f", ... ({len(names)} in all)" if len(names) > REGION_NAMES_SHOWN else "")
            raise UsageError(f"--voxels {value}: no region or group of that name in --regions "
                             f"{region_file}; its names: {shown or 'none'}")
        fitted = np.unique(np.asarray(members, np.int64))
        kind = "group" if value in groups else "region"
        what = f"{kind} {value!r} of {region_file} has no voxel"
    if not fitted.size:
        raise UsageError(f"--voxels {selection}: {what}; nothing to fit")
    if not (np.asarray(nc)[fitted] > nc_thr).any():
        raise UsageError(f"--voxels {selection}: none of its {fitted.size} voxels has a noise "
                         f"ceiling above --nc_thr {nc_thr} ({nc_path}); every summary would be "
                         "empty: lower --nc_thr or choose other voxels")
    logger.info("--voxels %s: fitting %d of the %d voxels", selection, fitted.size, n_voxels)
    return fitted.astype(np.int64)


def _positions(indices, fitted):
    """The positions in ``fitted`` (sorted voxel indices) of those of ``indices`` it holds."""
    indices = np.asarray(indices, np.int64)
    at = np.minimum(np.searchsorted(fitted, indices), max(fitted.size - 1, 0))
    return at[fitted[at] == indices].tolist()


def cv_splits(lengths, n_boots=3, chunk_len=20, seed=0, what="", chunks="within_stories"):
    """The cross-validation splits over stories of ``lengths`` rows: ``chunks``
    "within_stories", chunks inside stories (``eval_utils.bootstrap_chunk_splits``), or
    "stacked", the authors' chunks of the stacked rows (``eval_utils.stacked_chunk_splits``);
    too few rows for them is a UsageError."""
    try:
        if chunks == "stacked":
            return eval_utils.stacked_chunk_splits(int(sum(lengths)), n_boots, chunk_len,
                                                   seed=seed)
        if chunks != "within_stories":
            raise ValueError(f"unknown --cv_chunks {chunks!r}")
        return eval_utils.bootstrap_chunk_splits(lengths, n_boots, chunk_len, seed=seed)
    except ValueError as err:
        raise UsageError(f"--chunk_len {chunk_len}{what}: {err}") from None


def training_subset(lengths, fraction, n_boots=3, chunk_len=20, seed=0,
                    chunks="within_stories"):
    """The ``TrainingSubset`` of a ``fraction`` of the rows of stories of ``lengths`` rows
    (``eval_utils.leading_rows``), with its own cross-validation splits (``cv_splits``)."""
    used = eval_utils.leading_rows(lengths, fraction)
    offsets = np.cumsum([0, *lengths[:-1]])
    rows = np.concatenate([offset + np.arange(n) for offset, n in zip(offsets, used)])
    splits = cv_splits([n for n in used if n], n_boots, chunk_len, seed,
                       f" (--train_fraction {fraction})", chunks)
    return TrainingSubset(rows, splits, fraction)


def story_subset(stories, lengths, count, n_boots=3, chunk_len=20, seed=0,
                 chunks="within_stories"):
    """The ``TrainingSubset`` of ``count`` whole stories of ``stories`` (of ``lengths`` rows):
    the first ``count`` of a permutation drawn from ``seed``, so that the sets of several counts
    are nested and the same for every model; with their own cross-validation splits. A count
    that is not below the number of stories is a UsageError."""
    if count >= len(stories):
        raise UsageError(f"--train_story_counts {count}: the run has {len(stories)} training "
                         f"stories; give counts below {len(stories)} (all of them is the "
                         "full-data fit)")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(stories))[:count])
    offsets = np.cumsum([0, *lengths[:-1]])
    rows = np.concatenate([offsets[i] + np.arange(lengths[i]) for i in chosen])
    splits = cv_splits([lengths[i] for i in chosen], n_boots, chunk_len, seed,
                       f" (--train_story_counts {count})", chunks)
    return TrainingSubset(rows, splits, len(rows) / sum(lengths),
                          [stories[i] for i in chosen])


ALL_ROWS = "all rows"  # the training subset of the full-data fit


def subset_label(fraction=None, stories=None):
    """The name of a training subset: "<fraction> of the rows" or "<count> stories"."""
    return f"{stories} stories" if stories is not None else f"{fraction:g} of the rows"


def test_scoring(dataset, subject, test_story, test_target, voxels=None, voxel_batch=8192):
    """What test predictions are scored against, over the scored rows (the first
    ``dataset.test_rows_skipped`` dropped): the target (``test_target`` "repeats_mean": the
    mean over the story's ``individual_repeats``; "data": its ``data`` rows) and the noise
    ceiling cc_max of the repeats over those rows (``eval_utils.noise_ceiling``), of the
    columns ``voxels`` (sorted indices; None: all). The repeats are read a window of
    ``voxel_batch`` voxel indices at a time (only the selected columns of each).

    Returns (rows, voxels) float32 and (voxels,) float64."""
    trim = dataset.test_rows_skipped
    _, n_rows, n_voxels = dataset.repeats_shape(subject, test_story)
    voxels = np.arange(n_voxels) if voxels is None else np.asarray(voxels, np.intp)
    target = np.empty((n_rows - trim, voxels.size), np.float32)
    ceiling = np.empty(voxels.size)
    for first in range(0, n_voxels, voxel_batch):
        at = np.flatnonzero((voxels >= first) & (voxels < first + voxel_batch))
        if not at.size:
            continue
        repeats = dataset.repeats(subject, test_story, voxels[at])[:, trim:]
        ceiling[at] = eval_utils.noise_ceiling(repeats.astype(np.float64))
        if test_target == "repeats_mean":
            target[:, at] = repeats.mean(axis=0, dtype=np.float64)
    if test_target == "data":
        columns = None if voxels.size == n_voxels else voxels
        target[:] = dataset.responses(subject, test_story, columns)[trim:]
    return target, ceiling


def layer_scores(features, task, device=None, what="features", subset=ALL_ROWS):
    """Encoding-model scores of TR-grid features (story -> (grid TRs, features)) on ``task``,
    the model fitted on the training rows of ``subset`` (a label of ``task.subsets``, or
    ``ALL_ROWS``): per-voxel ``r``,
    ``cc_norm`` and ``alpha``, each (n_voxels,), and where the chosen alphas sit on the grid
    (``alpha_edges``, ``alpha_score_sum``: ``eval_utils.alpha_grid_counts`` over the voxels the
    summaries average, summed over the torchrun processes) and the block-bootstrap means of
    cc_norm (``bootstrap``: (resamples, summaries), with --n_bootstrap). On all the rows also
    the test ``prediction`` ((scored rows, n_voxels) float32) and the permutation ``p_value``
    (``eval_utils.block_permutation_pvalues``, with --n_permutations)."""
    responses = task.responses
    x_train, x_test = design_matrices(features, task.stories, task.test_story, task.delays,
                                      task.test_trim)
    if len(x_train) != len(responses.train) or len(x_test) != len(responses.test):
        raise DatasetError(f"{what}: {len(x_train)}/{len(x_test)} feature rows "
                           f"but {len(responses.train)}/{len(responses.test)} response rows; "
                           "the responses do not match respdict.json")
    if not (np.isfinite(x_train).all() and np.isfinite(x_test).all()):
        raise run_utils.UserError(  # NaN predictions would be scored as a correlation of 0
            f"{what}: the features hold NaN or infinite values (the model overflowed, e.g. in "
            "reduced precision: try --precision fp32); nothing of them is scored")
    y_train, splits = responses.train, task.splits
    if subset != ALL_ROWS:
        rows = task.subsets[subset].rows
        x_train, y_train, splits = x_train[rows], y_train[rows], task.subsets[subset].splits
    weights, alphas, cv_scores = eval_utils.fit_ridge_cv(x_train, y_train, task.alphas, splits,
                                                         device=device,
                                                         progress=processes.is_main_process(),
                                                         score=task.alpha_score)
    parts = processes.gather_from_processes(  # under torchrun: each process's share of voxels
        ((x_test @ weights).astype(np.float32, copy=False), alphas,
         *eval_utils.alpha_grid_counts(  # over the voxels the summaries average
             cv_scores, task.alphas, task.voxels[processes.process_share(task.voxels.size)])))
    prediction = np.hstack([part[0] for part in parts])
    alphas = np.concatenate([part[1] for part in parts])
    r = eval_utils.column_correlation(prediction, responses.test)
    normaliser = responses.normaliser
    cc_norm = np.divide(r, normaliser, out=np.zeros_like(r), where=normaliser > 0)
    scores = {"r": r, "cc_norm": cc_norm.astype(r.dtype, copy=False), "alpha": alphas,
              "alpha_edges": sum(part[2] for part in parts),
              "alpha_score_sum": sum(part[3] for part in parts)}
    uncertainty = task.uncertainty
    if uncertainty.bootstrap_counts is not None:
        scores["bootstrap"] = eval_utils.bootstrap_correlations(
            prediction, responses.test, uncertainty.bootstrap_counts, uncertainty.block_starts,
            uncertainty.bootstrap_weights)
    if subset != ALL_ROWS:
        return scores
    scores["prediction"] = prediction
    if uncertainty.n_permutations:
        scores["p_value"] = eval_utils.block_permutation_pvalues(
            prediction, responses.test, uncertainty.n_permutations, uncertainty.block_len,
            uncertainty.seed)
    return scores


def low_level_prediction(low_level, task, device=None, what="features"):
    """The test prediction, (scored rows, n_voxels) float32, of an ordinary ridge (penalties
    ``task.alphas``) of a low-level feature set alone (story -> (grid TRs, dims)): the same for
    every layer and model, so that ``partition_scores`` takes it once fitted."""
    low_train, low_test = _low_level_design(low_level, task, what)
    weights, _, _ = eval_utils.fit_ridge_cv(low_train, task.responses.train, task.alphas,
                                            task.splits, device=device,
                                            progress=processes.is_main_process(),
                                            score=task.alpha_score)
    return np.hstack(processes.gather_from_processes(  # under torchrun: a share of the voxels
        (low_test @ weights).astype(np.float32, copy=False)))


def partition_scores(features, low_level, task, layer_prediction, low_prediction, ratios,
                     device=None, what="features"):
    """Variance partitioning of a layer's TR-grid features and a low-level feature set
    (story -> (grid TRs, dims) each; docs/method.md#variance-partitioning).

    The variance each model explains on the test target is ``r |r| / normaliser^2`` per voxel
    (the share of the explainable variance, scale-free): of the banded ridge of both
    (``eval_utils.fit_banded_ridge_cv``, penalties ``task.alphas`` x ``ratios``), of the layer
    alone (``layer_prediction``: its own test prediction, (scored rows, n_voxels)) and of the
    low-level set alone (``low_prediction``, ``low_level_prediction``'s). Then per voxel
    ``unique_layer`` = joint - low-level alone, ``unique_low_level`` = joint - layer alone and
    ``shared`` = layer + low-level - joint.

    Returns a dict of (n_voxels,) arrays: those six (``joint``, ``layer_alone``,
    ``low_level_alone`` and ``PARTITION_PARTS``), the joint model's ``alpha`` and ``ratio``;
    with --n_bootstrap also ``bootstrap``: (resamples, 3, summaries) float64, the summaries'
    means of the three parts on each block-bootstrap resample (the same resamples as every
    other interval)."""
    responses = task.responses
    x_train, x_test = design_matrices(features, task.stories, task.test_story, task.delays,
                                      task.test_trim)
    low_train, low_test = _low_level_design(low_level, task, what)
    weights, alphas, ratios, _ = eval_utils.fit_banded_ridge_cv(
        x_train, low_train, responses.train, task.alphas, ratios, task.splits, device=device,
        progress=processes.is_main_process(), score=task.alpha_score)
    parts = processes.gather_from_processes((  # under torchrun: each process's share of voxels
        (np.hstack([x_test, low_test]) @ weights).astype(np.float32, copy=False), alphas,
        ratios))
    predictions = {"joint": np.hstack([part[0] for part in parts]),
                   "layer_alone": layer_prediction, "low_level_alone": low_prediction}
    ceiling = np.square(responses.normaliser.astype(np.float64))
    scores = {}
    for name, prediction in predictions.items():
        r = eval_utils.column_correlation(prediction, responses.test).astype(np.float64)
        scores[name] = np.divide(r * np.abs(r), ceiling, out=np.zeros_like(r),
                                 where=ceiling > 0)
    scores.update(_parts(**scores))
    scores["alpha"] = np.concatenate([part[1] for part in parts])
    scores["ratio"] = np.concatenate([part[2] for part in parts])
    uncertainty = task.uncertainty
    if uncertainty.bootstrap_counts is not None:
        weights = divide_rows(task.summaries.weights, ceiling)
        resampled = {name: eval_utils.bootstrap_correlations(
            prediction, responses.test, uncertainty.bootstrap_counts, uncertainty.block_starts,
            weights, signed_square=True) for name, prediction in predictions.items()}
        parts = _parts(**resampled)
        scores["bootstrap"] = np.stack([parts[name] for name in PARTITION_PARTS], axis=1)
    return scores


def _low_level_design(low_level, task, what):
    """The delayed training and test design matrices of a low-level feature set, checked
    against the responses' rows."""
    low_train, low_test = design_matrices(low_level, task.stories, task.test_story, task.delays,
                                          task.test_trim)
    responses = task.responses
    if len(low_train) != len(responses.train) or len(low_test) != len(responses.test):
        raise DatasetError(f"{what}: the low-level features have {len(low_train)}/"
                           f"{len(low_test)} rows, the responses {len(responses.train)}/"
                           f"{len(responses.test)}; the stimulus does not match respdict.json")
    return low_train, low_test


def _parts(joint, layer_alone, low_level_alone):
    """The three parts of the variance ``joint`` explains, from it and each set's alone."""
    return {"unique_layer": joint - low_level_alone,
            "shared": layer_alone + low_level_alone - joint,
            "unique_low_level": joint - layer_alone}


def design_matrices(tr_level, stories, test_story, delays="per_story",
                    test_trim=data_utils.TEST_RESPONSE_TRIM):
    """Delayed design matrices from TR-grid features (story -> (grid TRs, features)).

    Training stories are trimmed [10:-5] like the responses; the test story [10 + test_trim:
    -5], matching its responses without their first ``test_trim`` rows (ds003020: 40, the
    paper's protocol). ``delays``: how the training stories are delayed
    (``eval_utils.delayed_story_features``).
    """
    x_train = eval_utils.delayed_story_features([tr_level[s] for s in stories], mode=delays)
    x_test = eval_utils.delayed_story_features(
        [tr_level[test_story]],
        trim=(data_utils.TRIM_START_TRS + test_trim, data_utils.TRIM_END_TRS))
    return x_train, x_test
