"""Brain-tune a pretrained speech encoder: fine-tune it to predict fMRI responses to stories.

    python brain_trainer_story.py --model_name facebook/wav2vec2-base --subject 3 \\
        --data_dir /path/to/ds003020 --num_epochs 30

One sample per response row (fMRI TR): the 10 s of 16 kHz audio ending at the end of that TR,
and the row's responses of the voxels whose noise ceiling exceeds ``--nc_thr``. The model is
the encoder, the mean of its last hidden state over time and one linear layer (SPEC section 2).

Outputs under ``<save_dir>/<exp_name>/``: ``checkpoint-epoch<k>/`` and ``final/`` (each loads
with ``transformers.AutoModel.from_pretrained`` as the tuned encoder and holds the feature
extractor, ``brain_head.safetensors``, ``voxels.json`` and ``brain_tuning.json``),
``metrics.jsonl`` (one line per epoch), ``run_config.json`` and ``last/`` (the state that
``--resume`` continues from). Runs under ``torchrun --nproc_per_node N`` with one process per
GPU.
"""

import argparse
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import data_utils
import eval_utils
import noise_ceilings
import run_utils
import speech_models
from data_utils import DatasetError

logger = logging.getLogger(__name__)

TARGETS = ("fmri", "random_fmri_all", "random_fmri_local")
CHUNK_TRS = 15
MIN_CHUNK_DISTANCE = 10
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
    data.add_argument("--nc_thr", type=float, default=0.4,
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
                     help="delete an existing run folder and start again")
    out.add_argument("--log_level", default="INFO", help="logging level")
    args = parser.parse_args(argv)
    if args.micro_batch_size is None:
        args.micro_batch_size = args.batch_size
    if args.exp_name is None:
        subjects = "-".join(data_utils.subject_id(s) for s in args.subject) if all(
            _is_subject(s) for s in args.subject) else "subjects"
        target = "features" if args.target_features else args.target
        args.exp_name = f"{Path(args.model_name.rstrip('/')).name}_{subjects}_{target}"
    return args


def _is_subject(text):
    try:
        data_utils.subject_id(text)
    except DatasetError:
        return False
    return True


# ----------------------------------------------------------------------------- schedules

def backbone_lr_factor(epoch, num_epochs, warmup_epochs):
    """Linear warm-up from 0 over ``warmup_epochs``, then linear decay to 0 at ``num_epochs``."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    return max(0.0, (num_epochs - epoch) / max(1, num_epochs - warmup_epochs))


def head_lr_factor(epoch, decay, floor):
    """``decay ** epoch``, never below ``floor``."""
    return max(decay ** epoch, floor)


# ----------------------------------------------------------------------------- data

def choose_stories(args, subjects):
    """Training and validation stories per subject, checked against what is on disk."""
    available = {s: set(data_utils.list_stories(args.data_dir, s)) for s in subjects}
    if args.multi_subject == "shared_head" or len(subjects) == 1:
        common = set.intersection(*available.values())
        available = {s: common for s in subjects}
    val = args.val_stories or [s for s in data_utils.VALIDATION_STORIES
                               if all(s in a for a in available.values())]
    if not val:
        raise DatasetError("none of the default validation stories "
                           f"({', '.join(data_utils.VALIDATION_STORIES)}) is available for "
                           f"{', '.join(subjects)}; pass --val_stories")
    if args.train_stories == ["all"]:
        train = sorted(set.union(*available.values()) - set(val) - {data_utils.TEST_STORY})
    elif args.train_stories:
        train = list(args.train_stories)
    else:
        train = [s for s in data_utils.TRAIN_STORIES if any(s in a for a in available.values())]
        if not train:
            raise DatasetError(f"none of the paper's training stories is available for "
                               f"{', '.join(subjects)}; pass --train_stories (or 'all')")
    for story in [*train, *val]:
        if story == data_utils.TEST_STORY:
            raise DatasetError(f"{story} is the test story and is never used for tuning; "
                               "remove it from --train_stories/--val_stories")
        if not any(story in a for a in available.values()):
            raise DatasetError(f"story {story!r} has no responses for {', '.join(subjects)}"
                               f"{' (in common)' if len(subjects) > 1 else ''}; available: "
                               f"{', '.join(sorted(set.union(*available.values())))}")
    if set(train) & set(val):
        raise DatasetError(f"stories both in training and validation: "
                           f"{', '.join(sorted(set(train) & set(val)))}")
    for subject in subjects:
        for kind, stories in (("training", train), ("validation", val)):
            if not any(story in available[subject] for story in stories):
                raise DatasetError(f"{subject} has none of the {kind} stories "
                                   f"({', '.join(stories)}); choose stories every subject has")
    return ({s: [t for t in train if t in available[s]] for s in subjects},
            {s: [t for t in val if t in available[s]] for s in subjects})


def select_voxels(args, subjects):
    """Voxel indices per subject: noise ceiling above ``--nc_thr``."""
    paths = args.nc_path or [None] * len(subjects)
    if len(paths) != len(subjects):
        raise DatasetError(f"--nc_path needs one file per subject ({len(subjects)}), got {len(paths)}")
    voxels = {}
    for subject, path in zip(subjects, paths):
        cc_max = noise_ceilings.get_noise_ceiling(args.data_dir, subject, path)
        voxels[subject] = np.flatnonzero(cc_max > args.nc_thr)
        if voxels[subject].size == 0:
            raise DatasetError(f"no voxel of {subject} has a noise ceiling above --nc_thr "
                               f"{args.nc_thr} (highest: {cc_max.max():.3f}); lower --nc_thr")
        logger.info("%s: %d of %d voxels have a noise ceiling above %s", subject,
                    voxels[subject].size, cc_max.size, args.nc_thr)
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
        swapped[position * chunk:(position + 1) * chunk] = responses[source * chunk:(source + 1) * chunk]
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


def load_targets(args, subjects, stories_by_subject, voxels, train_stories):
    """Targets per subject and story: (rows, outputs) float32."""
    if args.target_features:
        return {s: load_target_features(args.target_features, args.data_dir, stories)
                for s, stories in stories_by_subject.items()}
    rng = np.random.default_rng(args.seed)
    targets = {}
    for subject, stories in stories_by_subject.items():
        responses = {story: data_utils.load_fmri(args.data_dir, subject, story, voxels[subject])
                     for story in tqdm(stories, desc=f"responses {subject}", leave=False)}
        if args.target == "random_fmri_all":
            responses = borrow_responses(responses, train_stories[subject], rng)
        elif args.target == "random_fmri_local":
            responses = {story: swap_chunks(r, rng) for story, r in responses.items()}
        targets[subject] = responses
    return targets


def load_target_features(path, data_dir, stories):
    """TR-aligned feature rows per story from an HDF5 file (one dataset per story)."""
    features = {}
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: unreadable --target_features file ({err})") from None
    with handle:
        for story in stories:
            if story not in handle:
                raise DatasetError(f"{path}: no dataset for story {story!r}; it needs one "
                                   "(rows, features) dataset per training/validation story")
            rows = data_utils.response_rows(data_dir, story)
            if handle[story].ndim != 2 or handle[story].shape[0] != rows:
                raise DatasetError(f"{path}: dataset {story!r} has shape {handle[story].shape}, "
                                   f"expected ({rows}, features) to match the response rows")
            features[story] = data_utils.read_columns(handle[story])
    widths = {f.shape[1] for f in features.values()}
    if len(widths) > 1:
        raise DatasetError(f"{path}: stories have different feature counts {sorted(widths)}")
    return features


class TRWindowDataset(Dataset):
    """(audio window, target row) pairs of several stories.

    Each story's audio is loaded, downmixed and resampled once and kept zero-padded, so a
    window is a slice. Items are (window (samples,), target (outputs,), output offset); the
    offset says where the target's columns start in the model output (per-subject training).
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


# ----------------------------------------------------------------------------- run

def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_tuned_model(directory, model, preprocessor, voxels, run_config, overwrite=False):
    """Write a folder that ``AutoModel.from_pretrained`` loads as the tuned encoder.

    Holds the encoder (the whole model for Whisper; LoRA adapters merged), its feature
    extractor, the head (``brain_head.safetensors``), the voxels predicted (``voxels.json``)
    and the run configuration (``brain_tuning.json``). Written atomically.
    """
    with run_utils.atomic_output(directory, overwrite) as tmp:
        speech_models.plain_backbone(model).save_pretrained(tmp)
        preprocessor.feature_extractor.save_pretrained(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                  str(tmp / "brain_head.safetensors"))
        (tmp / "voxels.json").write_text(json.dumps(
            {s: v.tolist() for s, v in voxels.items()} if voxels else {}))
        (tmp / "brain_tuning.json").write_text(json.dumps(run_config, indent=2, default=str))


def save_training_state(run_dir, state):
    """Everything ``--resume`` needs, in ``last/``, written atomically."""
    with run_utils.atomic_output(run_dir / "last", overwrite=True) as tmp:
        tmp.mkdir()
        torch.save(state, tmp / "training_state.pt")


def write_metrics(run_dir, metrics):
    with run_utils.atomic_output(run_dir / "metrics.jsonl", overwrite=True) as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in metrics))


def prepare_run_dir(args, is_main):
    """Create the run folder, or check it for --resume; never silently overwrite."""
    run_dir = Path(args.save_dir) / args.exp_name
    state_path = run_dir / "last" / "training_state.pt"
    if args.resume:
        if not state_path.exists():
            raise DatasetError(f"{run_dir}: nothing to resume (no last/training_state.pt); "
                               "start the run without --resume")
        saved = json.loads((run_dir / "run_config.json").read_text())["arguments"]
        changed = {k: (saved.get(k), v) for k, v in vars(args).items()
                   if k not in RESUME_MAY_CHANGE and saved.get(k) != v}
        if changed:
            raise DatasetError(f"{run_dir}: --resume with other settings than the run: "
                               + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        return run_dir, state_path
    if not is_main:  # rank 0 decides; the others only wait for it
        return run_dir, None
    if run_dir.exists() and any(run_dir.iterdir()):
        if not args.overwrite:
            raise FileExistsError(f"{run_dir} exists; pass --resume to continue that run, "
                                  "--overwrite to start it again, or another --exp_name")
        if is_main:
            shutil.rmtree(run_dir)
    return run_dir, None


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
    correlation = eval_utils.column_correlation(np.concatenate(predictions), np.concatenate(targets))
    return total / count, float(correlation.mean())


def train(args):
    """Run (or resume) a brain-tuning run; returns the run folder."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = speech_models.resolve_device(args.device, local_rank)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    is_main = rank == 0
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(args.seed)
    subjects = [data_utils.subject_id(s) for s in args.subject]
    if args.target_features and args.target != "fmri":
        raise DatasetError("--target_features replaces fMRI targets; leave --target at fmri")
    run_dir, state_path = prepare_run_dir(args, is_main)
    if distributed:
        dist.barrier()
    speech_models.load_config(args.model_name)

    train_stories, val_stories = choose_stories(args, subjects)
    if distributed and not is_main:
        dist.barrier()  # rank 0 computes and saves missing noise ceilings first
    voxels = None if args.target_features else select_voxels(args, subjects)
    if distributed and is_main:
        dist.barrier()
    stories_by_subject = {s: train_stories[s] + val_stories[s] for s in subjects}
    targets = load_targets(args, subjects, stories_by_subject, voxels, train_stories)
    if args.multi_subject == "shared_head" or len(subjects) == 1:
        merged = {story: np.concatenate([targets[s][story] for s in subjects], axis=1)
                  for story in stories_by_subject[subjects[0]]}
        groups = {"all": (merged, 0, train_stories[subjects[0]], val_stories[subjects[0]])}
        n_outputs = next(iter(merged.values())).shape[1]
    else:
        groups, offset = {}, 0
        for s in subjects:
            groups[s] = (targets[s], offset, train_stories[s], val_stories[s])
            offset += next(iter(targets[s].values())).shape[1]
        n_outputs = offset

    sampling_rate = 16000
    all_stories = sorted({story for g in groups.values() for story in g[0]})
    audio, bounds = {}, {}
    for story in tqdm(all_stories, desc="stimuli", disable=not is_main):
        audio[story] = data_utils.load_stimulus(args.data_dir, story, sampling_rate)
        starts, stops = data_utils.tr_window_bounds(args.data_dir, story, sampling_rate,
                                                    tr_source=args.tr_source, tr_path=args.tr_path)
        bounds[story] = (starts, int(stops[0] - starts[0]))
    window_samples = next(iter(bounds.values()))[1]

    model, preprocessor = speech_models.build_model(args.model_name, n_outputs, window_samples)
    if args.lora_rank:
        speech_models.add_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)
    model.to(device)
    head_params = list(model.head.parameters())
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([{"params": backbone_params, "lr": args.base_lr},
                                  {"params": head_params, "lr": args.linear_layer_lr}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
        lambda e: backbone_lr_factor(e, args.num_epochs, args.warmup_epochs),
        lambda e: head_lr_factor(e, args.head_lr_decay, args.head_lr_floor)])
    dtype = speech_models.autocast_dtype(args.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # SpecAugment's mask embedding (wav2vec2-like) is used only in batches where a mask was
    # drawn, so some steps leave parameters without gradient.
    network = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True) if distributed else model

    num_workers = args.num_workers if args.num_workers is not None else (4 if device.type == "cuda" else 0)
    collate = Collate(preprocessor)
    loaders = []
    for name, (group_targets, offset, train_list, val_list) in groups.items():
        train_set = TRWindowDataset({s: audio[s] for s in train_list},
                                    {s: bounds[s] for s in train_list}, group_targets, offset)
        val_set = TRWindowDataset({s: audio[s] for s in val_list},
                                  {s: bounds[s] for s in val_list}, group_targets, offset)
        loaders.append((name, train_set, val_set))
    val_loaders = [DataLoader(v, batch_size=args.micro_batch_size, collate_fn=collate,
                              num_workers=num_workers) for _, _, v in loaders]

    run_config = {"arguments": vars(args), "subjects": subjects,
                  "train_stories": train_stories, "val_stories": val_stories,
                  "n_outputs": n_outputs, "family": model.family,
                  "voxel_counts": {s: int(v.size) for s, v in (voxels or {}).items()},
                  "window_samples": window_samples, "run": run_utils.run_metadata()}
    metrics, best = [], {"val_loss": math.inf, "epoch": -1, "state": None}
    start_epoch, stale = 0, 0
    if state_path is not None:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        metrics, best, stale = state["metrics"], state["best"], state["stale"]
        start_epoch = state["epoch"] + 1
        logger.info("resuming %s after epoch %d", run_dir, start_epoch)
    elif is_main:
        run_utils.write_json(run_dir / "run_config.json", run_config)

    for epoch in range(start_epoch, args.num_epochs):
        if args.patience and stale >= args.patience:
            break
        began = time.time()
        lrs = [group["lr"] for group in optimizer.param_groups]
        network.train()
        batches = epoch_batches(loaders, args, epoch, rank, distributed, collate, num_workers)
        total, count = 0.0, 0
        progress = tqdm(batches, desc=f"epoch {epoch + 1}/{args.num_epochs}", disable=not is_main)
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
        if distributed:
            sums = torch.tensor([total, count], dtype=torch.float64, device=device)
            dist.all_reduce(sums)
            total, count = sums.tolist()
        val_loss, val_corr = np.mean([evaluate(model, loader, device, dtype)
                                      for loader in val_loaders], axis=0)
        if distributed:  # every rank takes rank 0's numbers, so they stop at the same epoch
            shared = torch.tensor([val_loss, val_corr], dtype=torch.float64, device=device)
            dist.broadcast(shared, src=0)
            val_loss, val_corr = shared.tolist()
        line = {"epoch": epoch + 1, "train_loss": total / max(count, 1),
                "val_loss": float(val_loss), "val_corr": float(val_corr),
                "lr_backbone": lrs[0], "lr_head": lrs[1], "seconds": time.time() - began}
        metrics.append(line)
        logger.info("epoch %d: train loss %.4f, val loss %.4f, val corr %.4f", epoch + 1,
                    line["train_loss"], line["val_loss"], line["val_corr"])
        if val_loss < best["val_loss"]:
            best = {"val_loss": float(val_loss), "epoch": epoch + 1,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            stale = 0
        else:
            stale += 1
        if is_main:
            if args.save_every and (epoch + 1) % args.save_every == 0:
                save_tuned_model(run_dir / f"checkpoint-epoch{epoch + 1}", model, preprocessor,
                                 voxels, {**run_config, "epoch": epoch + 1}, overwrite=True)
            write_metrics(run_dir, metrics)
            save_training_state(run_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng_state(), "epoch": epoch, "metrics": metrics, "best": best,
                "stale": stale})
        if distributed:
            dist.barrier()

    if is_main:
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        save_tuned_model(run_dir / "final", model, preprocessor, voxels,
                         {**run_config, "epoch": best["epoch"], "best_val_loss": best["val_loss"]},
                         overwrite=True)
        logger.info("best validation loss %.4f at epoch %d; tuned model in %s",
                    best["val_loss"], best["epoch"], run_dir / "final")
    if distributed:
        dist.barrier()
    return run_dir


def epoch_batches(loaders, args, epoch, rank, distributed, collate, num_workers):
    """Optimiser steps of an epoch, each a list of micro-batches.

    The order depends only on (seed, epoch), so a resumed run sees the same batches. With
    several subject groups (per-subject training) their steps alternate.
    """
    streams = []
    for index, (_, train_set, _) in enumerate(loaders):
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch * 101 + index)
        order = torch.randperm(len(train_set), generator=generator).tolist()
        if distributed:
            # pad as DistributedSampler does, so every rank runs the same number of passes
            world = dist.get_world_size()
            order = (order + order[:-len(order) % world])[rank::world]
        step = args.batch_size // (dist.get_world_size() if distributed else 1)
        micro = min(args.micro_batch_size, step)
        batches = [[order[i:i + micro] for i in range(s, min(s + step, len(order)), micro)]
                   for s in range(0, len(order), step)]
        streams.append((train_set, batches))
    interleaved = []
    for position in range(max(len(b) for _, b in streams)):
        for train_set, batches in streams:
            if position < len(batches):
                interleaved.append((train_set, batches[position]))
    loader = DataLoader(_StepDataset(interleaved), batch_size=None, collate_fn=_StepCollate(collate),
                        num_workers=num_workers)
    return loader


class _StepDataset(Dataset):
    """One item per optimiser step: the samples of its micro-batches."""

    def __init__(self, steps):
        self.steps = steps

    def __len__(self):
        return len(self.steps)

    def __getitem__(self, index):
        dataset, micro_batches = self.steps[index]
        return [[dataset[i] for i in micro] for micro in micro_batches]


class _StepCollate:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, micro_batches):
        return [self.collate(batch) for batch in micro_batches]


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        train(args)
    except (DatasetError, speech_models.ModelError, FileExistsError) as err:
        logger.error("%s", err)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
