"""The training data of brain-tuning: the stories and voxels of each subject, the targets
(responses, the random-fMRI controls or feature targets), the audio windows of each response
row as samples, and the optimiser steps of an epoch in an order fixed by (seed, epoch), shared
out over torchrun processes (docs/method.md#brain-tuning).
"""

import dataclasses
import logging
from typing import NamedTuple

import numpy as np

import arguments
import data_utils
import narratives
import eval_utils
import noise_ceilings
import run_utils
from arguments import flag
from audio_io import SAMPLING_RATE
from run_utils import DatasetError, UsageError

# loaded on first use, so that --help and argument errors appear at once
torch = run_utils.LazyModule("torch")

logger = logging.getLogger(__name__)

TARGETS = ("fmri", "random_fmri_all", "random_fmri_local")
CHUNK_TRS = 15  # rows per chunk of the random_fmri_local control
MIN_CHUNK_DISTANCE = 10  # chunks apart that random_fmri_local swaps
BATCH_ORDERS = ("shuffled", "consecutive")  # --batch_order; the first is the default


@dataclasses.dataclass(kw_only=True)
class TargetFlags(arguments.Flags):
    """What brain-tuning learns from: subjects, stories, voxels and targets."""

    subject: list[str] = flag(group="data",
                              help="subject(s): 1, '1' or UTS01; several subjects train one "
                                   "model (see --multi_subject)")
    train_stories: list[str] | None = flag(None, group="data",
                                           help="training stories; default: the paper's 24 "
                                                "restricted to what the subject(s) have; 'all': "
                                                "every story but the validation and test ones")
    val_stories: list[str] | None = flag(None, group="data",
                                         help="validation stories (default: stagefright)")
    nc_path: list[str] | None = flag(None, group="data",
                                     help="noise-ceiling file(s), one per subject; default "
                                          "subject_NCs/UTS0N.npy, computed from the test-story "
                                          "repeats when missing")
    nc_thr: float = flag(eval_utils.NC_THRESHOLD, group="data",
                         help="train on voxels whose noise ceiling exceeds this")
    target: str = flag("fmri", choices=TARGETS, group="data",
                       help="fmri: the responses; random_fmri_all: another story's responses "
                            "(control); random_fmri_local: the story's own responses with 15-TR "
                            "chunks swapped far apart (control)")
    target_features: str | None = flag(None, group="data",
                                       help="HDF5 file with one dataset per story of TR-aligned "
                                            "feature rows (rows = respdict - 20) to predict "
                                            "instead of fMRI, e.g. a big speech model's or a "
                                            "text model's representations (target_features.py)")
    multi_subject: str = flag("shared_head", choices=("shared_head", "per_subject"),
                              group="data",
                              help="with several subjects: one head over their concatenated "
                                   "voxels on the stories all of them heard, or each subject's "
                                   "loss in turn")

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.nc_thr < 1:
            raise UsageError(f"--nc_thr must be in [0, 1) (noise ceilings are correlations), "
                             f"got {self.nc_thr}")
        if self.target_features and self.target != "fmri":
            raise UsageError("--target_features replaces fMRI targets; leave --target at fmri")
        try:
            subjects = self.subjects()
        except DatasetError as err:
            raise UsageError(f"--subject: {err}") from None
        if len(set(subjects)) < len(subjects):
            raise UsageError(f"--subject {' '.join(self.subject)}: a subject is given twice")
        if self.nc_path and len(self.nc_path) != len(subjects):
            raise UsageError(f"--nc_path needs one file per subject ({len(subjects)}), got "
                             f"{len(self.nc_path)}")

    def subjects(self):
        """The subjects' canonical names (UTS0N; on Narratives sub-XXX)."""
        canonical = (narratives.subject_id if getattr(self, "dataset", None) == "narratives"
                     else data_utils.subject_id)
        return [canonical(s) for s in self.subject]


class TargetGroup(NamedTuple):
    """Targets learnt through one stretch of the head's outputs: every subject's side by side
    (shared head) or one subject's (per-subject training)."""

    targets: dict  # story -> (rows, outputs) float32
    offset: int  # first head output of the group
    train_stories: list
    val_stories: list


class GroupDatasets(NamedTuple):
    """The training and validation samples of a ``TargetGroup``."""

    train: "TRWindowDataset"
    val: "TRWindowDataset"


def choose_stories(dataset, subjects, train_stories=None, val_stories=None,
                   multi_subject="shared_head"):
    """Training and validation stories per subject, checked against what is on disk.

    ``train_stories``: None (the paper's, as available), ``["all"]`` or a list;
    ``val_stories``: None (the default validation stories) or a list. With a shared head
    (or one subject) every subject gets the stories all of them have.
    """
    available = {s: set(dataset.stories(s)) for s in subjects}
    if multi_subject == "shared_head" or len(subjects) == 1:
        common = set.intersection(*available.values())
        available = {s: common for s in subjects}
    val = val_stories or [s for s in data_utils.VALIDATION_STORIES
                          if all(s in a for a in available.values())]
    if not val:
        raise DatasetError("none of the default validation stories "
                           f"({', '.join(data_utils.VALIDATION_STORIES)}) is available for "
                           f"{', '.join(subjects)}; pass --val_stories")
    if train_stories == ["all"]:
        train = sorted(set.union(*available.values()) - set(val) - {data_utils.TEST_STORY})
    elif train_stories:
        train = list(train_stories)
    else:
        train = [s for s in data_utils.TRAIN_STORIES if any(s in a for a in available.values())]
        if not train:
            raise DatasetError(f"none of the paper's training stories is available for "
                               f"{', '.join(subjects)}; pass --train_stories (or 'all')")
    for story in [*train, *val]:
        if story == data_utils.TEST_STORY:
            raise UsageError(f"{story} is the test story and is never used for tuning; "
                             "remove it from --train_stories/--val_stories")
        if not any(story in a for a in available.values()):
            raise DatasetError(f"story {story!r} has no responses for {', '.join(subjects)}"
                               f"{' (in common)' if len(subjects) > 1 else ''}; available: "
                               f"{', '.join(sorted(set.union(*available.values())))}")
    if set(train) & set(val):
        raise UsageError(f"stories both in training and validation: "
                         f"{', '.join(sorted(set(train) & set(val)))}")
    for subject in subjects:
        for kind, stories in (("training", train), ("validation", val)):
            if not any(story in available[subject] for story in stories):
                raise DatasetError(f"{subject} has none of the {kind} stories "
                                   f"({', '.join(stories)}); choose stories every subject has")
    return ({s: [t for t in train if t in available[s]] for s in subjects},
            {s: [t for t in val if t in available[s]] for s in subjects})


def select_voxels(dataset, subjects, voxel_counts, nc_paths=None,
                  nc_thr=eval_utils.NC_THRESHOLD, story=data_utils.TEST_STORY):
    """Voxel indices per subject: noise ceiling above ``nc_thr``.

    ``voxel_counts``: dict subject -> voxels of its responses (``Dataset.check_run_inputs``);
    a ceiling of another size is refused (and never computed and saved). ``nc_paths``: one
    noise-ceiling file per subject, or None for the default files (computed when missing).
    ``story``: the story the ceiling is computed on (ds003020: the repeated test story;
    Narratives: a story's intersubject ceiling, the same for every subject)."""
    nc_paths = nc_paths or [None] * len(subjects)
    if len(nc_paths) != len(subjects):
        raise UsageError(f"--nc_path needs one file per subject ({len(subjects)}), got "
                         f"{len(nc_paths)}")
    voxels = {}
    for subject, path in zip(subjects, nc_paths):
        cc_max = noise_ceilings.get_noise_ceiling(dataset, subject, path, story,
                                                  n_voxels=voxel_counts[subject])
        voxels[subject] = np.flatnonzero(noise_ceilings.ceiling_voxels(
            cc_max, nc_thr, noise_ceilings.ceiling_file(subject, path, dataset, story)))
        logger.info("%s: %d of %d voxels have a noise ceiling above %s", subject,
                    voxels[subject].size, cc_max.size, nc_thr)
    return voxels


def swap_chunks(responses, rng, chunk=CHUNK_TRS, min_distance=MIN_CHUNK_DISTANCE):
    """The "local" random-fMRI control: 15-row chunks swapped in pairs far apart.

    Pairs of chunks at least ``min(min_distance, n_chunks // 2)`` chunks apart trade places;
    rows after the last whole chunk stay. Returns a new (rows, voxels) array.
    """
    n_chunks = len(responses) // chunk
    if n_chunks < 2:
        raise DatasetError(f"a story of {len(responses)} rows has fewer than two {chunk}-row "
                           "chunks; the random_fmri_local control needs longer stories")
    distance = min(min_distance, n_chunks // 2)
    order = np.arange(n_chunks)
    unpaired = [int(i) for i in rng.permutation(n_chunks)]
    while unpaired:
        first = unpaired.pop()
        partners = [j for j in unpaired if abs(first - j) >= distance]
        if partners:
            second = partners[rng.integers(len(partners))]
            unpaired.remove(second)
            order[first], order[second] = second, first
    swapped = responses.copy()
    for position, source in enumerate(order):
        swapped[position * chunk:(position + 1) * chunk] = \
            responses[source * chunk:(source + 1) * chunk]
    return swapped


def borrow_responses(responses, train_stories, rng):
    """The "all" random-fMRI control: each story gets a different training story's responses.

    responses: dict story -> (rows, voxels). Training stories take each other's responses (a
    random derangement); any other (validation) story takes a random training story's. A
    donor's rows are trimmed, or padded with its own rows drawn at random, to the length.
    """
    train = [s for s in responses if s in train_stories]
    if len(train) < 2:
        raise DatasetError("the random_fmri_all control needs at least two training stories")
    while True:
        donors = [train[i] for i in rng.permutation(len(train))]
        if all(d != s for d, s in zip(donors, train)):
            break
    donors = dict(zip(train, donors))
    for story in responses:
        if story not in donors:
            donors[story] = train[rng.integers(len(train))]
    borrowed = {}
    for story, donor in donors.items():
        rows, source = len(responses[story]), responses[donor]
        if len(source) >= rows:
            borrowed[story] = source[:rows].copy()
        else:
            extra = source[rng.integers(len(source), size=rows - len(source))]
            borrowed[story] = np.concatenate([source, extra])
    return borrowed


def load_targets(dataset, stories_by_subject, voxels, train_stories, target="fmri",
                 target_features=None, seed=0):
    """Targets per subject and story: (rows, outputs) float32.

    The responses of ``voxels`` (dict subject -> indices), scrambled for the random-fMRI
    ``target`` controls, or the rows of the ``target_features`` file."""
    if target_features:
        return {s: dataset.target_features(target_features, stories)
                for s, stories in stories_by_subject.items()}
    rng = np.random.default_rng(seed)
    targets = {}
    for subject, stories in stories_by_subject.items():
        responses = {story: dataset.responses(subject, story, voxels[subject])
                     for story in run_utils.progress(stories, desc=f"responses {subject}",
                                                     leave=False)}
        if target == "random_fmri_all":
            responses = borrow_responses(responses, train_stories[subject], rng)
        elif target == "random_fmri_local":
            responses = {story: swap_chunks(r, rng) for story, r in responses.items()}
        targets[subject] = responses
    return targets


def target_groups(targets, train_stories, val_stories, shared_head):
    """The ``TargetGroup``s of a run and the head's number of outputs.

    ``targets``: dict subject -> story -> rows. Shared head: one group of every subject's
    targets side by side (they share their stories); else one group per subject, each on
    its own stretch of the outputs."""
    subjects = list(targets)
    if shared_head:
        first = subjects[0]
        merged = {story: np.concatenate([targets[s][story] for s in subjects], axis=1)
                  for story in train_stories[first] + val_stories[first]}
        groups = [TargetGroup(merged, 0, train_stories[first], val_stories[first])]
    else:
        groups, offset = [], 0
        for s in subjects:
            groups.append(TargetGroup(targets[s], offset, train_stories[s], val_stories[s]))
            offset += next(iter(targets[s].values())).shape[1]
    last = groups[-1]
    return groups, last.offset + next(iter(last.targets.values())).shape[1]


def load_stimuli(dataset, stories, progress=True):
    """Audio at ``SAMPLING_RATE`` and TR window bounds (starts, window length) per story."""
    audio, bounds = {}, {}
    for story in run_utils.progress(stories, desc="stimuli", disable=not progress):
        audio[story] = dataset.stimulus(story, SAMPLING_RATE)
        starts, stops = dataset.window_bounds(story, SAMPLING_RATE)
        bounds[story] = (starts, int(stops[0] - starts[0]))
    return audio, bounds


class TRWindowDataset:
    """(audio window, target row) pairs of several stories.

    Each story's audio is loaded, downmixed and resampled once and kept zero-padded, so a
    window is a slice. Items are (window (samples,), target (outputs,), output offset); the
    offset says where the target's columns start in the model output (per-subject training).

    Parameters
    ----------
    audio : dict story -> (n_samples,) float32
    bounds : dict story -> (window starts (rows,), window length), as from
        ``data_utils.Dataset.window_bounds``
    targets : dict story -> (rows, outputs) float32
    """

    def __init__(self, audio, bounds, targets, output_offset=0):
        self.items, self.audio, self.targets = [], {}, targets
        self.output_offset = output_offset
        for story, (starts, length) in bounds.items():
            if story not in targets:
                continue
            if len(starts) != len(targets[story]):
                raise DatasetError(f"story {story!r}: {len(starts)} audio windows but "
                                   f"{len(targets[story])} target rows")
            before = max(0, -int(starts.min()))
            after = max(0, int(starts.max()) + length - len(audio[story]))
            self.audio[story] = (np.pad(audio[story], (before, after)), starts + before, length)
            self.items += [(story, row) for row in range(len(starts))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        story, row = self.items[index]
        padded, starts, length = self.audio[story]
        return padded[starts[row]:starts[row] + length], self.targets[story][row], self.output_offset


class Collate:
    """Stacks a batch and turns its audio into model inputs once (in the loader workers)."""

    def __init__(self, preprocessor):
        self.preprocessor = preprocessor

    def __call__(self, batch):
        windows, targets, offsets = zip(*batch)
        inputs = torch.from_numpy(self.preprocessor(np.stack(windows)))
        return inputs, torch.from_numpy(np.stack(targets)), int(offsets[0])


class _StepDataset:
    """One item per optimiser step: the samples of its micro-batches."""

    def __init__(self, steps):
        self.steps = steps

    def __len__(self):
        return len(self.steps)

    def __getitem__(self, index):
        dataset, micro_batches = self.steps[index]
        return [[dataset[i] for i in micro] for micro in micro_batches]


class _StepCollate:
    """``collate`` applied to each micro-batch of a step."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, micro_batches):
        return [self.collate(batch) for batch in micro_batches]


def epoch_batches(datasets, epoch, seed, batch_size, micro_batch_size, collate, num_workers=0,
                  rank=0, world_size=1, order="shuffled"):
    """A DataLoader over the optimiser steps of an epoch, each a list of collated micro-batches.

    ``batch_size`` samples per step over all ``world_size`` processes, in forward passes of at
    most ``micro_batch_size``. ``order`` (``BATCH_ORDERS``): "shuffled", a permutation of the
    samples that depends only on (seed, epoch), so a resumed run sees the same batches; or
    "consecutive", the authors' order (``consecutive_steps``). With several datasets
    (per-subject training) their steps alternate.
    """
    if order not in BATCH_ORDERS:
        raise ValueError(f"unknown batch order {order!r}; expected one of {BATCH_ORDERS}")
    streams = []
    step = batch_size // world_size
    micro = min(micro_batch_size, step)
    for index, dataset in enumerate(datasets):
        if order == "consecutive":
            batches = []
            for rows in consecutive_steps(dataset, step * world_size):
                if world_size > 1:  # pad the step to a share per rank, then take this rank's
                    share = -(-len(rows) // world_size)
                    rows = (rows * world_size)[:share * world_size][rank * share:
                                                                    (rank + 1) * share]
                batches.append([rows[i:i + micro] for i in range(0, len(rows), micro)])
            streams.append((dataset, batches))
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + index)
        rows = torch.randperm(len(dataset), generator=generator).tolist()
        if world_size > 1:
            # pad as DistributedSampler does, so every rank runs the same number of passes
            rows = (rows + rows[:-len(rows) % world_size])[rank::world_size]
        batches = [[rows[i:i + micro] for i in range(s, min(s + step, len(rows)), micro)]
                   for s in range(0, len(rows), step)]
        streams.append((dataset, batches))
    interleaved = []
    for position in range(max(len(b) for _, b in streams)):
        for dataset, batches in streams:
            if position < len(batches):
                interleaved.append((dataset, batches[position]))
    return torch.utils.data.DataLoader(_StepDataset(interleaved), batch_size=None,
                                       collate_fn=_StepCollate(collate), num_workers=num_workers)


def consecutive_steps(dataset, batch_size):
    """The authors' batches (docs/method.md#where-our-defaults-differ-from-the-authors-code):
    each story's rows in order, cut into steps of ``batch_size`` (a story's last step may be
    shorter; no step spans two stories), the stories in the dataset's order, the same every
    epoch. A dataset without stories (``TRWindowDataset.items``) is one story. Lists of sample
    indices."""
    items = getattr(dataset, "items", None)
    stories = [story for story, _ in items] if items is not None else [None] * len(dataset)
    steps, start = [], 0
    for index in range(1, len(stories) + 1):
        if (index == len(stories) or stories[index] != stories[start]
                or index - start == batch_size):
            steps.append(list(range(start, index)))
            start = index
    return steps


def group_datasets(groups, audio, bounds):
    """The training and validation samples of each ``TargetGroup``."""
    def samples(group, stories):
        return TRWindowDataset({s: audio[s] for s in stories}, {s: bounds[s] for s in stories},
                               group.targets, group.offset)

    return [GroupDatasets(samples(g, g.train_stories), samples(g, g.val_stories))
            for g in groups]

