"""Brain-tune a pretrained speech encoder: fine-tune it to predict fMRI responses to stories.

    python brain_trainer_story.py --model_name facebook/wav2vec2-base --subject 3 \\
        --data_dir /path/to/ds003020 --num_epochs 30

One sample per response row (fMRI TR): the 10 s of 16 kHz audio ending at the end of that TR,
and the row's responses of the voxels whose noise ceiling exceeds ``--nc_thr``. The model is
the encoder, the mean of its last hidden state over time and one linear layer (SPEC section 2).
Every input the run needs (respdict entries, response shapes, WAV durations, TextGrids, the
noise ceiling's voxel count) is checked before any model or audio is loaded; a run whose loss
turns NaN or infinite stops with one line and saves nothing of that epoch.

Outputs under ``<save_dir>/<exp_name>/``: ``checkpoint-epoch<k>/`` and ``final/`` (each loads
with ``transformers.AutoModel.from_pretrained`` as the tuned encoder and holds the feature
extractor, ``brain_head.safetensors``, ``voxels.json`` and ``brain_tuning.json``),
``metrics.jsonl`` (one line per epoch), ``run_config.json`` and ``last/`` (the state that
``--resume`` continues from). ``--overwrite`` replaces an earlier run only once the new run
has set itself up (data, voxels, model), and only a folder with the project's marker file
(``run_utils.RUN_MARKER``); a lock file
``<save_dir>/.<exp_name>.lock`` keeps two runs of one folder apart. Runs under
``torchrun --nproc_per_node N`` with one process per GPU.
"""

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import data_utils
import eval_utils
import noise_ceilings
import run_utils
import speech_models
from data_utils import DatasetError
from run_utils import UsageError

logger = logging.getLogger(__name__)

TARGETS = ("fmri", "random_fmri_all", "random_fmri_local")
CHUNK_TRS = 15
MIN_CHUNK_DISTANCE = 10
STATE_FILE = "last/training_state.pt"  # inside the run folder: what --resume continues from
# Settings that may differ between a run and its --resume.
RESUME_MAY_CHANGE = {"resume", "overwrite", "device", "num_workers", "log_level"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Brain-tune a pretrained speech encoder (wav2vec2, HuBERT, WavLM, "
                    "data2vec-audio, Whisper) to predict fMRI responses (ds003020).",
        formatter_class=run_utils.HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data_dir", required=True,
                      help="ds003020 root: the folder holding stimuli/ and derivative/")
    data.add_argument("--subject", nargs="+", required=True,
                      help="subject(s): 1, '1' or UTS01; several subjects train one model "
                           "(see --multi_subject)")
    data.add_argument("--train_stories", nargs="+", default=None,
                      help="training stories; default: the paper's 24 restricted to what the "
                           "subject(s) have; 'all': every story but the validation and test ones")
    data.add_argument("--val_stories", nargs="+", default=None,
                      help="validation stories (default: stagefright)")
    data.add_argument("--nc_path", nargs="+", default=None,
                      help="noise-ceiling file(s), one per subject; default "
                           "subject_NCs/UTS0N.npy, computed from the test-story repeats when "
                           "missing")
    data.add_argument("--nc_thr", type=float, default=eval_utils.NC_THRESHOLD,
                      help="train on voxels whose noise ceiling exceeds this")
    data.add_argument("--target", choices=TARGETS, default="fmri",
                      help="fmri: the responses; random_fmri_all: another story's responses "
                           "(control); random_fmri_local: the story's own responses with 15-TR "
                           "chunks swapped far apart (control)")
    data.add_argument("--target_features", default=None,
                      help="HDF5 file with one dataset per story of TR-aligned feature rows "
                           "(rows = respdict - 20) to predict instead of fMRI, e.g. a big speech "
                           "model's or a text model's representations")
    data.add_argument("--multi_subject", choices=("shared_head", "per_subject"),
                      default="shared_head",
                      help="with several subjects: one head over their concatenated voxels on "
                           "the stories all of them heard, or each subject's loss in turn")
    data.add_argument("--tr_source", choices=data_utils.TR_SOURCES, default="respdict",
                      help="TR timing: simulated grid from respdict.json, .report files or "
                           "trfiles_huge.jbl (with --tr_path)")
    data.add_argument("--tr_path", default=None, help="folder of .report files or the .jbl file")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name", required=True,
                       help="checkpoint folder or hub id (family read from its config.json)")
    model.add_argument("--lora_rank", type=int, default=0,
                       help="train LoRA adapters of this rank on the attention projections "
                            "instead of the whole encoder (0: full fine-tuning)")
    model.add_argument("--lora_alpha", type=float, default=32.0, help="LoRA scaling alpha")
    model.add_argument("--lora_dropout", type=float, default=0.1, help="LoRA dropout")

    train = parser.add_argument_group("training")
    train.add_argument("--num_epochs", type=int, default=30, help="maximum number of epochs")
    train.add_argument("--batch_size", type=int, default=128, help="samples per optimiser step")
    train.add_argument("--micro_batch_size", type=int, default=None,
                       help="samples per forward pass (gradients accumulate up to "
                            "--batch_size); default: --batch_size")
    train.add_argument("--base_lr", type=float, default=5e-5, help="encoder learning rate")
    train.add_argument("--linear_layer_lr", type=float, default=1e-4, help="head learning rate")
    train.add_argument("--warmup_epochs", type=int, default=5,
                       help="encoder lr rises linearly from 0 over these epochs, then falls "
                            "linearly to 0 at --num_epochs")
    train.add_argument("--head_lr_decay", type=float, default=0.8,
                       help="head lr factor per epoch (lr * decay**epoch)")
    train.add_argument("--head_lr_floor", type=float, default=0.1,
                       help="lowest head lr factor")
    train.add_argument("--patience", type=int, default=5,
                       help="stop after this many epochs without a lower validation loss "
                            "(0: never stop early)")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                       help="auto: bf16 autocast on a GPU that supports it, else fp32")
    train.add_argument("--num_workers", type=int, default=None,
                       help="DataLoader worker processes (default: 4 on GPU, 0 on CPU)")

    out = parser.add_argument_group("output")
    out.add_argument("--save_dir", default="outputs/brain_tuning", help="parent of the run folder")
    out.add_argument("--exp_name", default=None,
                     help="run folder name (default: <model>_<subjects>_<target>)")
    out.add_argument("--save_every", type=int, default=1,
                     help="write checkpoint-epoch<k>/ every this many epochs (0: never)")
    out.add_argument("--resume", action="store_true",
                     help="continue the run in <save_dir>/<exp_name> from its last epoch")
    out.add_argument("--overwrite", action="store_true",
                     help="start an existing run folder again (the old run is deleted once "
                          "the new one has set itself up)")
    out.add_argument("--log_level", default="INFO", type=str.upper,
                     choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="logging level")
    args = parser.parse_args(argv)
    run_utils.check_at_least(parser, args, 1, "num_epochs", "batch_size", "micro_batch_size")
    run_utils.check_at_least(parser, args, 0, "warmup_epochs", "patience", "save_every",
                             "lora_rank", "num_workers", "seed", "base_lr", "linear_layer_lr")
    if not 0 <= args.nc_thr < 1:
        parser.error(f"--nc_thr must be in [0, 1) (noise ceilings are correlations), got "
                     f"{args.nc_thr}")
    if not 0 < args.head_lr_decay <= 1:
        parser.error(f"--head_lr_decay must be in (0, 1], got {args.head_lr_decay}")
    if not 0 <= args.head_lr_floor <= 1:
        parser.error(f"--head_lr_floor must be in [0, 1], got {args.head_lr_floor}")
    if not 0 <= args.lora_dropout < 1:
        parser.error(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if not 0 < args.lora_alpha < math.inf:
        parser.error(f"--lora_alpha must be positive, got {args.lora_alpha}")
    if args.micro_batch_size is None:
        args.micro_batch_size = args.batch_size
    elif args.micro_batch_size > args.batch_size:
        parser.error(f"--micro_batch_size {args.micro_batch_size} is larger than --batch_size "
                     f"{args.batch_size}")
    if args.target_features and args.target != "fmri":
        parser.error("--target_features replaces fMRI targets; leave --target at fmri")
    if args.resume and args.overwrite:
        parser.error("--resume continues the run and --overwrite starts it again: give one")
    try:
        subjects = [data_utils.subject_id(s) for s in args.subject]
    except DatasetError as err:
        parser.error(f"--subject: {err}")
    if len(set(subjects)) < len(subjects):
        parser.error(f"--subject {' '.join(args.subject)}: a subject is given twice")
    if args.nc_path and len(args.nc_path) != len(subjects):
        parser.error(f"--nc_path needs one file per subject ({len(subjects)}), got "
                     f"{len(args.nc_path)}")
    run_utils.set_exp_name(parser, args, "-".join(subjects),
                           "features" if args.target_features else args.target)
    return args


# ----------------------------------------------------------------------------- schedules

def backbone_lr_factor(epoch, num_epochs, warmup_epochs):
    """Linear warm-up from 0 over ``warmup_epochs``, then linear decay to 0 at ``num_epochs``."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    return max(0.0, (num_epochs - epoch) / max(1, num_epochs - warmup_epochs))


def head_lr_factor(epoch, decay, floor):
    """``decay ** epoch``, never below ``floor``."""
    return max(decay ** epoch, floor)


# ----------------------------------------------------------------------------- run folder

def check_resumable(run_dir, arguments):
    """Stop unless ``run_dir`` holds a run to continue with the same ``arguments`` (a dict)."""
    if not (run_dir / STATE_FILE).is_file() or not (run_dir / "run_config.json").is_file():
        raise UsageError(f"{run_dir}: nothing to resume (no {STATE_FILE} or run_config.json); "
                         "start the run without --resume")
    saved = json.loads((run_dir / "run_config.json").read_text())["arguments"]
    changed = {k: (saved.get(k), v) for k, v in arguments.items()
               if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
    if changed:
        raise UsageError(f"{run_dir}: --resume with other settings than the run: "
                         + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))


@contextlib.contextmanager
def run_folder(run_dir, resume, overwrite, arguments, processes):
    """The run folder, held for the block: rank 0 locks it and checks it (``resume``: repairs
    an interrupted write of ``last/`` and checks the settings against ``arguments``).

    Yields the ``RunFolder`` (None on the other ranks). Nothing is deleted here: a new run
    calls its ``start()`` once it has set itself up. The lock is released at the end, also
    after an error."""
    folder = run_utils.RunFolder(run_dir, what="brain-tuning run") if processes.is_main else None
    try:
        if folder is not None and resume:
            folder.resume_from(STATE_FILE)
            check_resumable(run_dir, arguments)
        elif folder is not None:
            folder.check(overwrite)
        speech_models.barrier()  # the other ranks read last/ only once rank 0 has repaired it
        yield folder
    finally:
        if folder is not None:
            folder.release()


# ----------------------------------------------------------------------------- data

class TargetGroup(NamedTuple):
    """Targets learnt through one stretch of the head's outputs: every subject's side by side
    (shared head) or one subject's (per-subject training)."""

    targets: dict  # story -> (rows, outputs) float32
    offset: int  # first head output of the group
    train_stories: list
    val_stories: list


class GroupDatasets(NamedTuple):
    """The training and validation samples of a ``TargetGroup``."""

    train: speech_models.TRWindowDataset
    val: speech_models.TRWindowDataset


def choose_stories(data_dir, subjects, train_stories=None, val_stories=None,
                   multi_subject="shared_head"):
    """Training and validation stories per subject, checked against what is on disk.

    ``train_stories``: None (the paper's, as available), ``["all"]`` or a list;
    ``val_stories``: None (the default validation stories) or a list. With a shared head
    (or one subject) every subject gets the stories all of them have.
    """
    available = {s: set(data_utils.list_stories(data_dir, s)) for s in subjects}
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


def select_voxels(data_dir, subjects, voxel_counts, nc_paths=None,
                  nc_thr=eval_utils.NC_THRESHOLD):
    """Voxel indices per subject: noise ceiling above ``nc_thr``.

    ``voxel_counts``: dict subject -> voxels of its responses (``data_utils.check_run_inputs``);
    a ceiling of another size is refused (and never computed and saved). ``nc_paths``: one
    noise-ceiling file per subject, or None for the default files (computed when missing)."""
    nc_paths = nc_paths or [None] * len(subjects)
    if len(nc_paths) != len(subjects):
        raise UsageError(f"--nc_path needs one file per subject ({len(subjects)}), got "
                         f"{len(nc_paths)}")
    voxels = {}
    for subject, path in zip(subjects, nc_paths):
        cc_max = noise_ceilings.get_noise_ceiling(data_dir, subject, path,
                                                  n_voxels=voxel_counts[subject])
        voxels[subject] = np.flatnonzero(noise_ceilings.ceiling_voxels(
            cc_max, nc_thr, noise_ceilings.ceiling_file(subject, path)))
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


def load_targets(data_dir, stories_by_subject, voxels, train_stories, target="fmri",
                 target_features=None, seed=0):
    """Targets per subject and story: (rows, outputs) float32.

    The responses of ``voxels`` (dict subject -> indices), scrambled for the random-fMRI
    ``target`` controls, or the rows of the ``target_features`` file."""
    if target_features:
        return {s: data_utils.load_target_features(target_features, data_dir, stories)
                for s, stories in stories_by_subject.items()}
    rng = np.random.default_rng(seed)
    targets = {}
    for subject, stories in stories_by_subject.items():
        responses = {story: data_utils.load_fmri(data_dir, subject, story, voxels[subject])
                     for story in tqdm(stories, desc=f"responses {subject}", leave=False)}
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


def load_stimuli(data_dir, stories, tr_source="respdict", tr_path=None, progress=True):
    """Audio at ``data_utils.SAMPLING_RATE`` and TR window bounds (starts, window length) per
    story."""
    audio, bounds = {}, {}
    for story in tqdm(stories, desc="stimuli", disable=not progress):
        audio[story] = data_utils.load_stimulus(data_dir, story, data_utils.SAMPLING_RATE)
        starts, stops = data_utils.tr_window_bounds(data_dir, story, data_utils.SAMPLING_RATE,
                                                    tr_source=tr_source, tr_path=tr_path)
        bounds[story] = (starts, int(stops[0] - starts[0]))
    return audio, bounds


def group_datasets(groups, audio, bounds):
    """The training and validation samples of each ``TargetGroup``."""
    def samples(group, stories):
        return speech_models.TRWindowDataset({s: audio[s] for s in stories},
                                             {s: bounds[s] for s in stories}, group.targets,
                                             group.offset)

    return [GroupDatasets(samples(g, g.train_stories), samples(g, g.val_stories))
            for g in groups]


# ----------------------------------------------------------------------------- run

def save_tuned_model(directory, model, preprocessor, voxels, run_config, overwrite=False):
    """Write a folder that ``AutoModel.from_pretrained`` loads as the tuned encoder.

    Holds the encoder (the whole model for Whisper; LoRA adapters merged), its feature
    extractor, the head (``brain_head.safetensors``), the voxels predicted (``voxels.json``)
    and the run configuration (``brain_tuning.json``). Written atomically.
    """
    with run_utils.atomic_output(directory, overwrite) as tmp, speech_models.quiet_transformers():
        speech_models.plain_backbone(model).save_pretrained(tmp)
        preprocessor.feature_extractor.save_pretrained(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                  str(tmp / "brain_head.safetensors"))
        run_utils.write_json(tmp / "voxels.json", voxels or {})
        run_utils.write_json(tmp / "brain_tuning.json", run_config)


def save_training_state(run_dir, state):
    """Everything ``--resume`` needs, in ``last/``, written atomically."""
    with run_utils.atomic_output(run_dir / "last", overwrite=True) as tmp:
        tmp.mkdir()
        torch.save(state, tmp / "training_state.pt")


def write_metrics(run_dir, metrics):
    """``metrics.jsonl``: one JSON object per epoch (NaN and Infinity as null)."""
    run_utils.write_text(run_dir / "metrics.jsonl",
                         "".join(run_utils.json_text(line, indent=None) + "\n"
                                 for line in metrics), overwrite=True)


def check_finite(line):
    """Stop, before the epoch is saved, when its losses are not finite (training diverged):
    nothing of a diverged epoch becomes a checkpoint or ``final/``."""
    bad = [key for key in ("train_loss", "val_loss") if not math.isfinite(line[key])]
    if bad:
        raise run_utils.UserError(
            f"epoch {line['epoch']}: {', '.join(f'{k} {line[k]}' for k in bad)}: training "
            "diverged; lower --base_lr/--linear_layer_lr, use --precision fp32 or check the "
            "targets for NaN (the checkpoints of earlier epochs are kept)")


def make_optimizer(model, base_lr, head_lr, num_epochs, warmup_epochs, head_lr_decay,
                   head_lr_floor):
    """Adam over the trainable encoder weights and the head, with their per-epoch schedules
    (``backbone_lr_factor``, ``head_lr_factor``)."""
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([{"params": backbone_params, "lr": base_lr},
                                  {"params": list(model.head.parameters()), "lr": head_lr}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
        lambda e: backbone_lr_factor(e, num_epochs, warmup_epochs),
        lambda e: head_lr_factor(e, head_lr_decay, head_lr_floor)])
    return optimizer, scheduler


class Progress(NamedTuple):
    """Where a run stands between epochs (saved in ``last/`` and restored by ``--resume``)."""

    start_epoch: int  # epochs done
    metrics: list  # one line per epoch
    best: dict  # "val_loss", "epoch" and "state" (weights) of the best epoch so far
    stale: int  # epochs since the best one


def load_training_state(path, model, optimizer, scheduler, scaler):
    """Restore the model, optimiser, schedules and random states of ``last/``; returns the
    run's ``Progress``."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    speech_models.set_rng_state(state["rng"])
    return Progress(state["epoch"] + 1, state["metrics"], state["best"], state["stale"])


def evaluate(model, loader, device, dtype):
    """Validation loss (MSE) and mean voxel correlation, in eval mode."""
    model.eval()
    predictions, targets, total, count = [], [], 0.0, 0
    with torch.inference_mode():
        for inputs, target, offset in loader:
            inputs, target = inputs.to(device), target.to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                output = model(inputs)
            output = output.float()[:, offset:offset + target.shape[1]]
            total += torch.nn.functional.mse_loss(output, target, reduction="sum").item()
            count += target.numel()
            predictions.append(output.cpu().numpy())
            targets.append(target.cpu().numpy())
    correlation = eval_utils.column_correlation(np.concatenate(predictions),
                                                np.concatenate(targets))
    return total / count, float(correlation.mean())


def train_one_epoch(network, model, batches, val_loaders, optimizer, scheduler, scaler, dtype,
                    processes, epoch, num_epochs):
    """One epoch: an optimiser step per item of ``batches`` (its micro-batches' gradients
    summed), the schedules' step, then the validation loss and correlation (of rank 0, on
    every rank). Returns the epoch's metrics line."""
    began = time.time()
    device = processes.device
    lrs = [group["lr"] for group in optimizer.param_groups]
    network.train()
    total, count = 0.0, 0
    progress = tqdm(batches, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not processes.is_main)
    for micro_batches in progress:
        optimizer.zero_grad(set_to_none=True)
        n_samples = sum(len(b[1]) for b in micro_batches)
        for inputs, target, offset in micro_batches:
            inputs, target = inputs.to(device), target.to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                output = network(inputs)
            loss = torch.nn.functional.mse_loss(
                output.float()[:, offset:offset + target.shape[1]], target)
            scaler.scale(loss * len(target) / n_samples).backward()
            total += loss.item() * len(target)
            count += len(target)
        scaler.step(optimizer)
        scaler.update()
        progress.set_postfix(loss=f"{total / count:.4f}")
    scheduler.step()
    if processes.distributed:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total, count = sums.tolist()
    val_loss, val_corr = np.mean([evaluate(model, loader, device, dtype)
                                  for loader in val_loaders], axis=0)
    if processes.distributed:  # every rank takes rank 0's numbers, so they stop at the same epoch
        shared = torch.tensor([val_loss, val_corr], dtype=torch.float64, device=device)
        dist.broadcast(shared, src=0)
        val_loss, val_corr = shared.tolist()
    return {"epoch": epoch + 1, "train_loss": total / max(count, 1),
            "val_loss": float(val_loss), "val_corr": float(val_corr),
            "lr_backbone": lrs[0], "lr_head": lrs[1], "seconds": time.time() - began}


def train(args, processes):
    """Run (or resume) a brain-tuning run in this process of ``processes``; returns the run
    folder."""
    device, is_main = processes.device, processes.is_main
    if args.batch_size < processes.world_size:
        raise UsageError(f"--batch_size {args.batch_size} is smaller than the number of "
                         f"processes ({processes.world_size}); each needs a sample per step")
    speech_models.seed_everything(args.seed)
    subjects = [data_utils.subject_id(s) for s in args.subject]
    shared_head = args.multi_subject == "shared_head" or len(subjects) == 1
    run_dir = Path(args.save_dir) / args.exp_name
    state_path = run_dir / STATE_FILE if args.resume else None
    with run_folder(run_dir, args.resume, args.overwrite, vars(args), processes) as folder:
        speech_models.load_config(args.model_name)  # a bad --model_name stops before any loading

        # data: stories (every input checked before anything slow), voxels, targets, audio
        train_stories, val_stories = choose_stories(args.data_dir, subjects, args.train_stories,
                                                    args.val_stories, args.multi_subject)
        stories = {s: train_stories[s] + val_stories[s] for s in subjects}
        voxel_counts = {s: data_utils.check_run_inputs(args.data_dir, s, stories[s],
                                                       args.tr_source, args.tr_path)
                        for s in subjects}
        with speech_models.main_process_first():  # it computes and saves missing ceilings
            voxels = None if args.target_features else select_voxels(
                args.data_dir, subjects, voxel_counts, args.nc_path, args.nc_thr)
        targets = load_targets(args.data_dir, stories, voxels, train_stories, args.target,
                               args.target_features, args.seed)
        groups, n_outputs = target_groups(targets, train_stories, val_stories, shared_head)
        audio, bounds = load_stimuli(args.data_dir, sorted({s for g in groups for s in g.targets}),
                                     args.tr_source, args.tr_path, progress=is_main)
        window_samples = next(iter(bounds.values()))[1]

        # model, optimiser, data loaders
        model, preprocessor = speech_models.build_model(args.model_name, n_outputs,
                                                        window_samples)
        if args.lora_rank:
            speech_models.add_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)
        model.to(device)
        optimizer, scheduler = make_optimizer(model, args.base_lr, args.linear_layer_lr,
                                              args.num_epochs, args.warmup_epochs,
                                              args.head_lr_decay, args.head_lr_floor)
        dtype = speech_models.autocast_dtype(args.precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        # SpecAugment's mask embedding (wav2vec2-like) is used only in batches where a mask
        # was drawn, so some steps leave parameters without gradient.
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True) if processes.distributed else model
        num_workers = args.num_workers if args.num_workers is not None else (
            4 if device.type == "cuda" else 0)
        collate = speech_models.Collate(preprocessor)
        datasets = group_datasets(groups, audio, bounds)
        val_loaders = [DataLoader(d.val, batch_size=args.micro_batch_size, collate_fn=collate,
                                  num_workers=num_workers) for d in datasets]
        config = run_utils.run_config(
            args, subjects=subjects, train_stories=train_stories, val_stories=val_stories,
            n_outputs=n_outputs, family=model.family,
            voxel_counts={s: int(v.size) for s, v in (voxels or {}).items()},
            window_samples=window_samples)

        if state_path is not None:
            start_epoch, metrics, best, stale = load_training_state(state_path, model, optimizer,
                                                                    scheduler, scaler)
            logger.info("resuming %s after epoch %d", run_dir, start_epoch)
        else:
            start_epoch, metrics, stale = 0, [], 0
            best = {"val_loss": None, "epoch": None, "state": None}  # no epoch yet
            if is_main:  # set up without error: only now is an old run replaced
                folder.start()
                run_utils.write_json(run_dir / "run_config.json", config)

        for epoch in range(start_epoch, args.num_epochs):
            if args.patience and stale >= args.patience:
                break
            batches = speech_models.epoch_batches(
                [d.train for d in datasets], epoch, args.seed, args.batch_size,
                args.micro_batch_size, collate, num_workers, processes.rank, processes.world_size)
            line = train_one_epoch(network, model, batches, val_loaders, optimizer, scheduler,
                                   scaler, dtype, processes, epoch, args.num_epochs)
            logger.info("epoch %d: train loss %.4f, val loss %.4f, val corr %.4f", epoch + 1,
                        line["train_loss"], line["val_loss"], line["val_corr"])
            check_finite(line)
            metrics.append(line)
            if best["val_loss"] is None or line["val_loss"] < best["val_loss"]:
                best = {"val_loss": line["val_loss"], "epoch": epoch + 1, "state": {
                    k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
                stale = 0
            else:
                stale += 1
            if is_main:
                if args.save_every and (epoch + 1) % args.save_every == 0:
                    save_tuned_model(run_dir / f"checkpoint-epoch{epoch + 1}", model,
                                     preprocessor, voxels, {**config, "epoch": epoch + 1},
                                     overwrite=True)
                write_metrics(run_dir, metrics)
                save_training_state(run_dir, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "rng": speech_models.rng_state(), "epoch": epoch, "metrics": metrics,
                    "best": best, "stale": stale})
            speech_models.barrier()

        if is_main:
            model.load_state_dict(best["state"])
            save_tuned_model(run_dir / "final", model, preprocessor, voxels,
                             {**config, "epoch": best["epoch"], "best_val_loss": best["val_loss"]},
                             overwrite=True)
            logger.info("best validation loss %.4f at epoch %d; tuned model in %s",
                        best["val_loss"], best["epoch"], run_dir / "final")
        speech_models.barrier()
    return run_dir


def run(args):
    """``train``, in this process and the others of its torchrun process group (if any)."""
    with speech_models.process_group(args.device) as processes:
        train(args, processes)


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
