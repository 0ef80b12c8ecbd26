"""Pretrained speech encoders with a voxel regression head: the model that brain-tuning trains.

The family is read from the checkpoint's ``config.json`` (``model_type``), never guessed from
its name. wav2vec2-like encoders (wav2vec2, HuBERT, WavLM, data2vec-audio) take normalised
raw audio; Whisper takes log-mel features of 30 s (the audio zero-padded) and only its
encoder is used. Audio preprocessing happens once in the data pipeline (``AudioPreprocessor``,
``Collate``), never inside ``forward``; ``TRWindowDataset`` and ``epoch_batches`` are the
training data pipeline of ``brain_trainer_story.py`` (and of its benchmark).
"""

import argparse
import contextlib
import copy
import dataclasses
import functools
import hashlib
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import (AutoConfig, AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor,
                          WhisperFeatureExtractor)
from transformers.utils import logging as transformers_logging

import data_utils
import eval_utils
import run_utils

logger = logging.getLogger(__name__)

WAV2VEC2_LIKE = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer")
WHISPER = ("whisper",)
SUPPORTED = WAV2VEC2_LIKE + WHISPER
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
WHISPER_MAX_SECONDS = 30  # the Whisper encoder takes at most this much audio


class ModelError(run_utils.UserError, ValueError):
    """A checkpoint that cannot be used as a speech encoder; the message says why."""


def model_family(config):
    """``"wav2vec2"`` for wav2vec2-like encoders, ``"whisper"`` for Whisper."""
    model_type = getattr(config, "model_type", None)
    if model_type in WAV2VEC2_LIKE:
        return "wav2vec2"
    if model_type in WHISPER:
        return "whisper"
    raise ModelError(f"model_type {model_type!r} is not a supported audio encoder (supported: "
                     f"{', '.join(SUPPORTED)})")


def read_config(name_or_path, example="a checkpoint folder or a hub id such as "
                                      "facebook/wav2vec2-base"):
    """Any checkpoint's ``AutoConfig``, with one-line errors (ModelError) for a missing folder
    or config; ``example``: what to give instead, for the message."""
    looks_local = str(name_or_path).startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not (Path(name_or_path).expanduser() / "config.json").is_file():
        raise ModelError(f"{name_or_path}: no such model directory (or no config.json in it); "
                         f"give {example}")
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelError(f"{name_or_path}: cannot load a model config ({str(err).splitlines()[0]}); "
                         "give a checkpoint folder or a hub id that is available offline") from None


def load_config(name_or_path):
    """The checkpoint's config, with one-line errors for missing or non-audio checkpoints."""
    config = read_config(name_or_path)
    model_family(config)
    return config


def _silent_bar(factory, args, kwargs):
    return factory(*args, **{**kwargs, "disable": True})


@contextlib.contextmanager
def quiet_transformers():
    """Inside the block transformers draws none of its own progress bars ("Loading weights",
    "Writing model shards"), which would break up ours; the hub's download bars stay."""
    previous = transformers_logging.set_tqdm_hook(_silent_bar)
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous)


def load_backbone(name_or_path):
    """Pretrained encoder (``AutoModel``; the whole ``WhisperModel`` for Whisper) and its family.

    A folder without weights, or with a truncated or damaged weights file, is a ``ModelError``.
    """
    config = load_config(name_or_path)
    try:
        with quiet_transformers():
            backbone = AutoModel.from_pretrained(name_or_path, config=config)
    except torch.OutOfMemoryError:
        raise
    except (OSError, SafetensorError, RuntimeError, EOFError) as err:
        # OSError: no weights file; SafetensorError / RuntimeError (torch's zip reader) /
        # EOFError: a truncated or damaged one
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        fix = ("the folder needs the weights saved beside config.json (model.safetensors or "
               "pytorch_model.bin, whole): copy or save the checkpoint again"
               if Path(name_or_path).expanduser().is_dir() else
               "give a checkpoint folder or a hub id whose weights are available offline")
        raise ModelError(f"{name_or_path}: cannot load the model weights ({reason}); "
                         f"{fix}") from None
    return backbone, model_family(config)


@dataclasses.dataclass
class Encoder:
    """A loaded speech encoder and what every script needs beside it."""

    backbone: nn.Module  # ``AutoModel`` (the whole ``WhisperModel`` for Whisper)
    family: str  # "wav2vec2" (wav2vec2-like) or "whisper"
    preprocessor: "AudioPreprocessor"
    depth: int  # transformer layers: hidden-state indices run 0..depth

    @functools.cached_property
    def fingerprint(self):
        """SHA-256 of the weights and config (``fingerprint``), computed on first use."""
        return fingerprint(self.backbone)


def load_encoder(name_or_path, device=None):
    """A checkpoint as an ``Encoder``: backbone (moved to ``device`` if given), family,
    preprocessor (the saved feature extractor or the family's default) and depth."""
    backbone, family = load_backbone(name_or_path)
    preprocessor = AudioPreprocessor(load_feature_extractor(name_or_path, family), family)
    if device is not None:
        backbone.to(device)
    return Encoder(backbone, family, preprocessor, num_layers(backbone))


def default_feature_extractor(family):
    """The standard feature extractor of a family (wav2vec2-like: normalised raw audio)."""
    if family == "whisper":
        return WhisperFeatureExtractor()
    return Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)


def load_feature_extractor(name_or_path, family):
    """The checkpoint's feature extractor, or the family's default when none was saved."""
    saved = Path(name_or_path).expanduser() / "preprocessor_config.json"
    try:
        return AutoFeatureExtractor.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        if saved.is_file():
            raise ModelError(f"{saved}: unreadable feature-extractor settings "
                             f"({str(err).splitlines()[0]}); save the checkpoint's feature "
                             "extractor again, or delete the file to use the family's "
                             "default") from None
        logger.warning("%s has no preprocessor_config.json: using the default %s feature extractor",
                       name_or_path, family)
        return default_feature_extractor(family)


def resolve_device(name, local_rank=0):
    """``auto`` -> the local rank's GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {name}: no CUDA GPU is available; use --device cpu")
    return device


def autocast_dtype(precision, device):
    """The autocast dtype for ``--precision`` on ``device`` (None: plain fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ----------------------------------------------------------------------------- torchrun processes

class Processes(NamedTuple):
    """This process's device and rank, and the number of processes (1 without torchrun)."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def folder_lock(self, folder):
        """``run_utils.FolderLock(folder)`` in rank 0, which alone writes results; nothing in
        the other processes."""
        return run_utils.FolderLock(folder) if self.is_main else contextlib.nullcontext()


def setup_processes(device):
    """Join the torchrun process group (if torchrun started this process; one node or several
    through its rendezvous) and pick the device (``--device``; ``auto``: the local rank's GPU).
    Processes other than rank 0 log warnings and errors only."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    processes = Processes(device, dist.get_rank() if world_size > 1 else 0, world_size)
    if not processes.is_main:
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    return processes


def leave_processes():
    """Leave the torchrun process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device):
    """The block runs in this process and the others of its torchrun process group (if any):
    ``setup_processes(device)`` gives the block its ``Processes``, and the group is left after
    the block, also after an error."""
    try:
        yield setup_processes(device)
    finally:
        leave_processes()


def is_main_process():
    """Whether this process is rank 0 of the torchrun process group (or runs alone); only it
    writes results and shows progress bars."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier():
    """Wait for every process of the torchrun process group (nothing without one)."""
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block before the other processes do (they then read what it saved:
    noise ceilings, caches, the run folder), as every process sees the same file system."""
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
    yield
    if dist.is_initialized() and dist.get_rank() == 0:
        dist.barrier()


def process_share(n):
    """This process's contiguous share of ``range(n)`` (a slice; as ``np.array_split`` cuts it
    over the processes; all of it without torchrun)."""
    if not dist.is_initialized():
        return slice(0, n)
    base, extra = divmod(n, dist.get_world_size())
    rank = dist.get_rank()
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def process_items(costs):
    """The indices of the items (``costs``: one number each) this process handles, the items
    dealt out greedily, costliest first, to the process with the least work so far; every
    item without torchrun. The same on every process, for the same ``costs``."""
    if not dist.is_initialized():
        return list(range(len(costs)))
    loads = [0.0] * dist.get_world_size()
    mine = []
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        process = loads.index(min(loads))
        loads[process] += costs[index]
        if process == dist.get_rank():
            mine.append(index)
    return sorted(mine)


def gather_from_processes(part):
    """Every process's ``part`` (any picklable object), in rank order: ``[part]`` without
    torchrun."""
    if not dist.is_initialized():
        return [part]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts


def rng_state():
    """The global random states of Python, numpy, torch and CUDA (for checkpoints)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    """Put back the global random states ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed):
    """Seed the global random states of Python, numpy and torch (and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed):
    """Every global random state seeded with ``seed`` for a block, then put back: transformers
    draws SpecAugment masks and layerdrop from numpy's, dropout from torch's."""
    state = rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        set_rng_state(state)


def sum_across_processes(tensors):
    """Add up each tensor over the processes, in place (nothing without torchrun); one
    all-reduce for all of them. ``tensors``: same device and dtype."""
    if not dist.is_initialized() or not tensors:
        return
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    dist.all_reduce(flat)
    for tensor, summed in zip(tensors, flat.split([tensor.numel() for tensor in tensors])):
        tensor.copy_(summed.view_as(tensor))


def sum_gradients(parameters):
    """Add up the gradients of ``parameters`` over the processes (nothing without torchrun):
    with each process's loss its share of the whole, the sum is the whole loss's gradient. A
    parameter without a gradient in some processes counts as zero there; one without a
    gradient in any keeps none, so that the optimiser skips it as one process's would."""
    if not dist.is_initialized():
        return
    parameters = list(parameters)
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32,
                           device=parameters[0].device)
    dist.all_reduce(present)
    used = [p for p, count in zip(parameters, present.tolist()) if count > 0]
    for parameter in used:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    sum_across_processes([parameter.grad for parameter in used])


class AudioPreprocessor:
    """Turns raw 16 kHz audio windows into model inputs, as the feature extractor would.

    wav2vec2-like: zero-mean unit-variance per window when the extractor normalises (as
    ``Wav2Vec2FeatureExtractor``), else the raw audio. Whisper: log-mel features of the window
    zero-padded to 30 s, from the checkpoint's ``WhisperFeatureExtractor``.
    """

    def __init__(self, feature_extractor, family):
        self.feature_extractor = feature_extractor
        self.family = family
        self.sampling_rate = getattr(feature_extractor, "sampling_rate", data_utils.SAMPLING_RATE)

    def __call__(self, windows):
        """windows: (n, samples) float32 -> float32 (n, samples) or (n, mel bins, frames).
        Whisper pads every window to 30 s, so its windows may also be a list of 1-D arrays of
        different lengths."""
        if self.family == "whisper":
            windows = [np.asarray(window, dtype=np.float32) for window in windows]
            return self.feature_extractor(windows, sampling_rate=self.sampling_rate,
                                          return_tensors="np").input_features.astype(np.float32)
        windows = np.asarray(windows, dtype=np.float32)
        if getattr(self.feature_extractor, "do_normalize", False):
            mean = windows.mean(axis=-1, keepdims=True)
            var = windows.var(axis=-1, keepdims=True)
            return (windows - mean) / np.sqrt(var + 1e-7)
        return windows

    def digest(self):
        """SHA-256 of the feature extractor's settings, to key cached features."""
        return hashlib.sha256(self.feature_extractor.to_json_string().encode()).hexdigest()

    def whisper_frames(self, n_samples):
        """Encoder frames of a Whisper input that come from ``n_samples`` of real audio."""
        return max(1, math.ceil((n_samples // self.feature_extractor.hop_length) / 2))


# ----------------------------------------------------------------------------- training data pipeline

class TRWindowDataset(Dataset):
    """(audio window, target row) pairs of several stories.

    Each story's audio is loaded, downmixed and resampled once and kept zero-padded, so a
    window is a slice. Items are (window (samples,), target (outputs,), output offset); the
    offset says where the target's columns start in the model output (per-subject training).

    Parameters
    ----------
    audio : dict story -> (n_samples,) float32
    bounds : dict story -> (window starts (rows,), window length), as from
        ``data_utils.tr_window_bounds``
    targets : dict story -> (rows, outputs) float32
    """

    def __init__(self, audio, bounds, targets, output_offset=0):
        self.items, self.audio, self.targets = [], {}, targets
        self.output_offset = output_offset
        for story, (starts, length) in bounds.items():
            if story not in targets:
                continue
            if len(starts) != len(targets[story]):
                raise data_utils.DatasetError(f"story {story!r}: {len(starts)} audio windows but "
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
    """``collate`` applied to each micro-batch of a step."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, micro_batches):
        return [self.collate(batch) for batch in micro_batches]


def epoch_batches(datasets, epoch, seed, batch_size, micro_batch_size, collate, num_workers=0,
                  rank=0, world_size=1):
    """A DataLoader over the optimiser steps of an epoch, each a list of collated micro-batches.

    ``batch_size`` samples per step over all ``world_size`` processes, in forward passes of at
    most ``micro_batch_size``. The order depends only on (seed, epoch), so a resumed run sees
    the same batches; with several datasets (per-subject training) their steps alternate.
    """
    streams = []
    for index, dataset in enumerate(datasets):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + index)
        order = torch.randperm(len(dataset), generator=generator).tolist()
        if world_size > 1:
            # pad as DistributedSampler does, so every rank runs the same number of passes
            order = (order + order[:-len(order) % world_size])[rank::world_size]
        step = batch_size // world_size
        micro = min(micro_batch_size, step)
        batches = [[order[i:i + micro] for i in range(s, min(s + step, len(order)), micro)]
                   for s in range(0, len(order), step)]
        streams.append((dataset, batches))
    interleaved = []
    for position in range(max(len(b) for _, b in streams)):
        for dataset, batches in streams:
            if position < len(batches):
                interleaved.append((dataset, batches[position]))
    return DataLoader(_StepDataset(interleaved), batch_size=None, collate_fn=_StepCollate(collate),
                      num_workers=num_workers)


# ----------------------------------------------------------------------------- the model

class BrainTuningModel(nn.Module):
    """Speech encoder -> mean over time of the last hidden state -> one linear layer.

    Parameters
    ----------
    backbone : a transformers audio model (wav2vec2-like, or ``WhisperModel``)
    family : "wav2vec2" or "whisper"
    n_outputs : voxels (or target features) predicted
    whisper_frames : for Whisper, the encoder frames that hold real audio (the rest is the
        30 s padding and is left out of the mean)
    """

    def __init__(self, backbone, family, n_outputs, whisper_frames=None):
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.whisper_frames = whisper_frames
        self.head = nn.Linear(hidden_size(backbone), n_outputs)

    def freeze(self):
        """Freeze what the paper keeps fixed: the CNN feature encoder (wav2vec2-like); the
        decoder, conv1, conv2 and positional embeddings (Whisper)."""
        if self.family != "whisper":
            # _freeze_parameters (every wav2vec2-like feature encoder has it) also stops the
            # CNN from asking for gradients of its input, so no backward pass runs through it
            self.backbone.feature_extractor._freeze_parameters()
            return
        for module in (self.backbone.decoder, self.backbone.encoder.conv1,
                       self.backbone.encoder.conv2, self.backbone.encoder.embed_positions):
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def pooled(self, inputs):
        """Mean of the last hidden state over time: (batch, hidden)."""
        if self.family == "whisper":
            hidden = self.backbone.encoder(inputs).last_hidden_state
            return hidden[:, :self.whisper_frames].mean(dim=1)
        return self.backbone(inputs).last_hidden_state.mean(dim=1)

    def forward(self, inputs):
        """inputs: (batch, samples) audio or (batch, mel, frames) -> (batch, n_outputs)."""
        return self.head(self.pooled(inputs))


def build_model(name_or_path, n_outputs, window_samples):
    """Load a checkpoint as a ``BrainTuningModel`` with the paper's freezing, plus its
    ``AudioPreprocessor``."""
    encoder = load_encoder(name_or_path)
    preprocessor = encoder.preprocessor
    frames = preprocessor.whisper_frames(window_samples) if encoder.family == "whisper" else None
    model = BrainTuningModel(encoder.backbone, encoder.family, n_outputs, frames)
    model.freeze()
    return model, preprocessor


def add_lora(model, rank, alpha=32, dropout=0.1):
    """Train LoRA adapters instead of the whole encoder (multi-participant brain-tuning).

    Adapters of ``rank`` go on the q/k/v/out attention projections of the encoder layers
    (Whisper: not the decoder); every base weight of the backbone is frozen. The head still
    trains fully.
    """
    from peft import LoraConfig, get_peft_model

    pattern = r".*encoder\.layers\.\d+\.(self_attn|attention)\.(" + "|".join(LORA_TARGETS) + ")"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
    model.backbone = get_peft_model(model.backbone, config)
    return model


def plain_backbone(model):
    """The backbone as a plain transformers model: LoRA adapters, if any, merged into a copy."""
    from peft import PeftModel

    if isinstance(model.backbone, PeftModel):
        return copy.deepcopy(model.backbone).merge_and_unload()
    return model.backbone


# A wider variant for the synthetic demo. Wav2vec2-like: one 25 ms / 20 ms convolution of 128
# channels with per-frame layer norm, whose random filters already tell the synthetic phones
# apart (the default 3-layer, 32-channel CNN does much worse, and the CNN stays frozen in
# brain-tuning; its group norm over time also removes the loudness and the mix of sounds that a
# window holds), and a 64-wide transformer.
DEMO_SIZE = {"wav2vec2": dict(conv_dim=(128,), conv_kernel=(400,), conv_stride=(320,),
                              feat_extract_norm="layer", hidden_size=64, num_attention_heads=4,
                              intermediate_size=128),
             "whisper": dict(d_model=64, encoder_attention_heads=4, encoder_ffn_dim=128)}


def tiny_config(family, **overrides):
    """A small random-weight config of a family, for tests and the synthetic demo."""
    from transformers import (Data2VecAudioConfig, HubertConfig, Wav2Vec2Config, WavLMConfig,
                              WhisperConfig)

    if family == "whisper":
        settings = dict(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        num_mel_bins=80, vocab_size=64, max_source_positions=1500,
                        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=1)
        settings.update(overrides)
        return WhisperConfig(**settings)
    classes = {"wav2vec2": Wav2Vec2Config, "hubert": HubertConfig, "wavlm": WavLMConfig,
               "data2vec-audio": Data2VecAudioConfig}
    settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, conv_dim=(32, 32, 32), conv_stride=(10, 8, 4),
                    conv_kernel=(10, 8, 4), num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=2, num_buckets=16, max_bucket_distance=64)
    settings.update(overrides)
    return classes[family](**settings)


# ----------------------------------------------------------------------------- layer features

def num_layers(backbone):
    """Transformer layers of the encoder (hidden-state indices run 0..num_layers)."""
    return len(backbone.encoder.layers)


def hidden_size(backbone):
    """Width of the encoder's hidden states."""
    config = backbone.config
    return config.d_model if config.model_type == "whisper" else config.hidden_size


@contextlib.contextmanager
def first_layers(backbone, count):
    """Run only the first ``count`` encoder layers inside the block."""
    original = backbone.encoder.layers
    backbone.encoder.layers = nn.ModuleList(list(original)[:count])
    try:
        yield
    finally:
        backbone.encoder.layers = original


def hidden_states_at(backbone, family, inputs, layers, frame):
    """Hidden states of ``layers`` at time frame ``frame`` (an int, or a (batch,) tensor: a
    frame per row): dict layer -> (batch, hidden).

    Index 0 is the encoder input, ``i`` the output of layer ``i``. Only the layers up to one
    past the highest requested one run: the extra layer keeps the requested index free of
    the final layer norm that some encoders apply after their last layer, so the values are
    those of the full model.
    """
    states = layer_hidden_states(backbone, family, inputs, layers)
    if torch.is_tensor(frame):  # a frame per batch row
        rows = torch.arange(len(frame), device=inputs.device)
        return {layer: hidden[rows, frame.to(inputs.device)] for layer, hidden in states.items()}
    return {layer: hidden[:, frame] for layer, hidden in states.items()}


def record_hidden_states(model):
    """Have ``model`` record the hidden states of all its layers from now on.

    transformers >= 5 records them through hooks that it installs at a model's first call
    asking for them, on the layers the model holds then: a first call inside ``first_layers``
    would leave the other layers unrecorded for the model's life. Earlier versions return the
    hidden states without hooks (nothing to do).
    """
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return
    maybe_install_capturing_hooks(model)


def layer_hidden_states(backbone, family, inputs, layers):
    """Hidden states of ``layers``: dict layer -> (batch, frames, hidden), see
    ``hidden_states_at``."""
    total = num_layers(backbone)
    encoder = backbone.encoder if family == "whisper" else backbone
    record_hidden_states(encoder)  # while every layer is in place
    with first_layers(backbone, min(max(layers) + 1, total)):
        hidden = encoder(inputs, output_hidden_states=True).hidden_states
    return {layer: hidden[layer] for layer in layers}


def _equal_length_batches(waveforms, batch_size):
    """Consecutive waveforms grouped into batches of equal length: lists of (index, waveform)."""
    batch = []
    for index, waveform in enumerate(waveforms):
        if batch and (len(batch) == batch_size or len(waveform) != len(batch[0][1])):
            yield batch
            batch = []
        batch.append((index, waveform))
    if batch:
        yield batch


def pooled_layer_features(backbone, preprocessor, waveforms, layers, batch_size=16,
                          device="cpu", dtype=None, progress=False, total=None):
    """Mean over time of each layer's hidden states, one row per utterance (SPEC section 6).

    Consecutive utterances of equal length share a forward pass (no padding, so the values are
    those of one utterance at a time); Whisper means over the frames that hold real audio.

    Parameters
    ----------
    waveforms : iterable of (n_samples,) float32 at ``preprocessor.sampling_rate``, read lazily
    total : number of waveforms, for the progress bar

    Returns
    -------
    dict layer -> (n_utterances, hidden) float32.
    """
    family = backbone_family(backbone)
    limit = WHISPER_MAX_SECONDS * preprocessor.sampling_rate
    rows = {layer: [] for layer in layers}
    backbone.eval()
    with torch.inference_mode(), tqdm(desc="utterances", unit="utt", total=total,
                                      disable=not progress) as bar:
        for batch in _equal_length_batches(waveforms, batch_size):
            length = len(batch[0][1])
            if family == "whisper" and length > limit:
                raise ModelError(f"utterance {batch[0][0]} is {length / preprocessor.sampling_rate:.1f}"
                                 f" s long; the Whisper encoder takes at most "
                                 f"{WHISPER_MAX_SECONDS} s")
            inputs = torch.from_numpy(preprocessor(np.stack([w for _, w in batch]))).to(device)
            frames = preprocessor.whisper_frames(length) if family == "whisper" else None
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                states = layer_hidden_states(backbone, family, inputs, layers)
            for layer, hidden in states.items():
                rows[layer].append(hidden[:, :frames].float().mean(dim=1).cpu().numpy())
            bar.update(len(batch))
    if not rows[layers[0]]:
        raise ValueError("no waveforms to encode")
    return {layer: np.concatenate(values).astype(np.float32, copy=False)
            for layer, values in rows.items()}


def window_ends(n_samples, chunk):
    """End sample of each sliding window: every ``chunk`` samples, the last at the audio end."""
    return np.minimum(np.arange(1, math.ceil(n_samples / chunk) + 1) * chunk, n_samples)


def sliding_window_features(backbone, preprocessor, audio, layers, context_s=16.0, chunk_s=0.1,
                            batch_size=16, device="cpu", dtype=None, naive=False, progress=False,
                            on_batch=None):
    """Features of a story for brain alignment (SPEC section 4).

    A window of ``context_s`` s of context plus a ``chunk_s`` s chunk slides over the audio in
    ``chunk_s`` steps (shorter windows at the start); each window gives the hidden state of its
    last frame (Whisper: the last frame from real audio) at each requested layer.

    Parameters
    ----------
    audio : (n_samples,) float32 at ``preprocessor.sampling_rate``
    naive : one window per forward pass, as the original code; same values, slower.
    on_batch : None, or called with the number of windows of each batch once it is done
        (e.g. to estimate the time left).

    Returns
    -------
    dict layer -> (n_windows, hidden) float32, and the window end times (n_windows,) in s.
    """
    rate = preprocessor.sampling_rate
    chunk, context = int(round(chunk_s * rate)), int(round(context_s * rate))
    ends = window_ends(len(audio), chunk)
    starts = np.maximum(0, ends - context - chunk)
    lengths = ends - starts
    out = {layer: None for layer in layers}
    family = backbone_family(backbone)
    groups = {}
    for index, length in enumerate(lengths):
        # windows of one length share a batch; Whisper's inputs are all 30 s long
        groups.setdefault(0 if family == "whisper" else int(length), []).append(index)
    step = 1 if naive else batch_size
    jobs = [indices[i:i + step] for indices in groups.values()
            for i in range(0, len(indices), step)]
    backbone.eval()
    with torch.inference_mode():
        for indices in tqdm(jobs, desc="windows", unit="batch", disable=not progress):
            windows = [audio[starts[i]:ends[i]] for i in indices]
            inputs = torch.from_numpy(preprocessor(windows)).to(device)
            # the last frame (Whisper: the last one from real audio) of each window
            frame = (torch.as_tensor([preprocessor.whisper_frames(lengths[i]) - 1
                                      for i in indices]) if family == "whisper" else -1)
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                states = hidden_states_at(backbone, family, inputs, layers, frame)
            for layer, values in states.items():
                if out[layer] is None:
                    out[layer] = np.empty((len(ends), values.shape[-1]), np.float32)
                out[layer][indices] = values.float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(indices))
    return out, ends / rate


# ----------------------------------------------------------------------------- story features on the TR grid

class Extraction(NamedTuple):
    """Where the stories' features come from and how window features are extracted
    (``model_tr_features``)."""
    data_dir: str
    cache_dir: str  # model features; stimulus features in <cache_dir>/stimulus
    context_s: float
    chunk_s: float
    batch_size: int
    naive: bool
    dtype: object  # autocast dtype (None: fp32)
    tr_source: str = "respdict"
    tr_path: str = None


def model_tr_features(encoder, layers, stories, extraction, device="cpu"):
    """TR-grid features of a model's ``layers``: layer -> story -> (grid TRs, hidden), from
    the feature cache or extracted (nothing is read for no layers). The number of windows is
    logged first, and an estimate of the extraction time once the first batches are done."""
    features = {layer: {} for layer in layers}
    if not layers:
        return features
    counts = [story_windows(extraction.data_dir, story, extraction.chunk_s) for story in stories]
    mine = [stories[i] for i in process_items(counts)]  # all without torchrun
    clock = ExtractionClock(sum(counts[stories.index(story)] for story in mine))
    logger.info("%d sliding windows of up to %g s over %d stories per layer set (stories "
                "already in the feature cache are read, not extracted)", clock.total,
                extraction.context_s + extraction.chunk_s, len(mine))
    resampled = {}
    for story in mine:
        window_features, times = cached_story_features(encoder, story, layers, extraction,
                                                       device, clock.batch_done)
        clock.story_done(counts[stories.index(story)])
        resampled[story] = tr_features(extraction.data_dir, story, window_features, times,
                                       extraction.tr_source, extraction.tr_path)
    for part in gather_from_processes(resampled):
        for story, by_layer in part.items():
            for layer, values in by_layer.items():
                features[layer][story] = values
    return {layer: {story: by_story[story] for story in stories}
            for layer, by_story in features.items()}


def story_windows(data_dir, story, chunk_s):
    """The number of sliding windows of a story (one per ``chunk_s`` of its WAV's audio)."""
    return math.ceil(round(data_utils.audio_duration(data_utils.stimulus_path(data_dir, story))
                           / chunk_s, 6))


class ExtractionClock:
    """Counts the windows extracted and, once ``ESTIMATE_AFTER_S`` of extraction have been
    timed, logs the rate and the time left for the windows not yet done (counting those of
    cached stories, which are not known in advance, as to be extracted)."""

    ESTIMATE_AFTER_S = 30.0

    def __init__(self, total):
        self.total, self.done, self.in_story = total, 0, 0  # windows: all, finished stories
        self.timed, self.seconds, self.last = 0, 0.0, None  # of the timed batches
        self.estimated = False

    def batch_done(self, n_windows):
        now = time.perf_counter()
        if self.last is not None:  # a story's first batch also holds its start-up: not timed
            self.timed += n_windows
            self.seconds += now - self.last
        self.last = now
        self.in_story += n_windows
        if not self.estimated and self.seconds >= self.ESTIMATE_AFTER_S:
            self.estimated = True
            rate = self.timed / self.seconds
            left = max(self.total - self.done - self.in_story, 0) / rate
            logger.info("extracting %.1f windows/s: about %s left for this model's %d windows",
                        rate, _duration(left), self.total)

    def story_done(self, n_windows):
        self.done += n_windows
        self.in_story, self.last = 0, None


def _duration(seconds):
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def cached_story_features(encoder, story, layers, extraction, device="cpu", on_batch=None):
    """Window features of a story (layer -> (windows, hidden)) and their end times, from the
    cache; missing layers are extracted and cached (keyed by the model's fingerprint, the
    window settings, the autocast dtype, the preprocessor and the story's WAV). ``on_batch``:
    see ``sliding_window_features``."""
    settings = {"context_s": extraction.context_s, "chunk_s": extraction.chunk_s,
                "autocast": str(extraction.dtype), "preprocessor": encoder.preprocessor.digest(),
                **run_utils.file_identity([data_utils.stimulus_path(extraction.data_dir,
                                                                     story)])}
    path, text = run_utils.cache_path(extraction.cache_dir, story, settings, encoder.fingerprint)

    def extract(missing):
        logger.info("%s: extracting layers %s", story, " ".join(map(str, missing)))
        audio = data_utils.load_stimulus(extraction.data_dir, story,
                                         encoder.preprocessor.sampling_rate)
        features, times = sliding_window_features(
            encoder.backbone, encoder.preprocessor, audio, missing, extraction.context_s,
            extraction.chunk_s, extraction.batch_size, device, extraction.dtype,
            naive=extraction.naive, progress=is_main_process(), on_batch=on_batch)
        return features, {"times": times}

    features, extras = run_utils.cached_arrays(path, layers, extract, text)
    return features, extras["times"]


def tr_features(data_dir, story, window_features, times, tr_source="respdict", tr_path=None):
    """Window features resampled to the story's TR centres: layer -> (grid TRs, hidden)."""
    centres = data_utils.tr_times(data_dir, story, tr_source, tr_path)
    return {layer: eval_utils.lanczos_interp(values, times, centres)
            for layer, values in window_features.items()}


def backbone_family(backbone):
    """Family of a loaded transformers model."""
    return model_family(backbone.config)


def fingerprint(backbone):
    """SHA-256 of a model's weights and config, to key cached features."""
    digest = hashlib.sha256(backbone.config.to_json_string().encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                      .tobytes())
    return digest.hexdigest()


def save_tiny_model(out, family, seed=0, size="tiny"):
    """Write a tiny random-weight checkpoint (model and feature extractor) to ``out``;
    ``size="demo"`` gives the wider variant ``DEMO_SIZE``."""
    torch.manual_seed(seed)
    kind = "whisper" if family == "whisper" else "wav2vec2"
    overrides = {} if size == "tiny" else DEMO_SIZE[kind]
    with quiet_transformers():
        AutoModel.from_config(tiny_config(family, **overrides)).save_pretrained(out)
    default_feature_extractor(kind).save_pretrained(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Speech-model utilities for brain-tuning.")
    commands = parser.add_subparsers(dest="command", required=True)
    tiny = commands.add_parser(
        "make-tiny", help="write a tiny random-weight checkpoint (no download)",
        description="Write a tiny random-weight checkpoint of a family, with its feature "
                    "extractor, that every script loads like a real one. For demos and tests: "
                    "it has learned nothing.", formatter_class=run_utils.HelpFormatter)
    tiny.add_argument("--family", choices=("wav2vec2", "hubert", "wavlm", "data2vec-audio",
                                           "whisper"), default="wav2vec2", help="model family")
    tiny.add_argument("--out", required=True, help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    tiny.add_argument("--size", choices=("tiny", "demo"), default="tiny",
                      help="tiny: hidden size 32, three 32-channel CNN layers (fast, for tests); "
                           "demo: hidden size 64 and one 128-channel 25 ms CNN layer whose random "
                           "filters tell the synthetic phones apart (what make demo uses)")
    tiny.add_argument("--overwrite", action="store_true",
                      help="replace a model folder written earlier by make-tiny")
    args = parser.parse_args(argv)
    run_utils.check_at_least(tiny, args, 0, "seed")
    return args


def run(args):
    with run_utils.output_folder(args.out, args.overwrite, what="tiny model") as staging:
        save_tiny_model(staging, args.family, args.seed, args.size)
    logger.info("wrote a tiny %s checkpoint to %s", args.family, args.out)


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
