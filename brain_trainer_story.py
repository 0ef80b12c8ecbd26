"""Brain-tune a pretrained speech encoder: fine-tune it to predict fMRI responses to stories
(docs/method.md#brain-tuning).

    python brain_trainer_story.py --model_name facebook/wav2vec2-base --subject 3 \\
        --data_dir /path/to/ds003020
    python brain_trainer_story.py --config configs/iclr2025_wav2vec2-base.json --subject 3 \\
        --data_dir /path/to/ds003020 --model_name /models/wav2vec2-base   # the paper's settings
    torchrun --nproc_per_node 4 brain_trainer_story.py ...                # one process per GPU

One sample per response row: the 10 s of audio ending at the end of that TR, and the row's
responses of the voxels whose noise ceiling exceeds ``--nc_thr``; the model is the encoder, the
mean of its last hidden state over time and one linear layer. Every input is checked before any
model or audio is loaded; a loss that turns NaN or infinite stops the run with one line.

Outputs under ``<save_dir>/<exp_name>/`` (``checkpoints``): ``checkpoint-epoch<k>/`` and
``final/`` (the epoch of lowest validation loss; ``--select_by corr``: of highest validation
correlation), each loadable with ``transformers.AutoModel.from_pretrained`` (a Whisper one also
with ``WhisperForConditionalGeneration``, with the base's tokenizer); ``metrics.jsonl``;
``run_config.json``; ``last/``, what ``--resume`` continues from. ``--overwrite`` replaces an
earlier run only once the new one has set itself up.
"""

import dataclasses
import logging
import sys
from pathlib import Path
from typing import NamedTuple


import arguments
import checkpoints
import data_utils
import noise_ceilings
import processes
import run_utils
import speech_models
import training_data
import training_log
import training_steps
from arguments import flag
from data_utils import DatasetFlags
from run_utils import UsageError
from training_data import TargetFlags
from training_steps import TrainingFlags

# loaded on first use, so that --help and argument errors appear at once
brain_model = run_utils.LazyModule("brain_model")
torch = run_utils.LazyModule("torch")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class Settings(TrainingFlags, TargetFlags, DatasetFlags):  # --help lists them in reverse
    """The trainer's settings: its flags, each declared once in its group."""

    model_name: str = flag(group="model", help="checkpoint folder or hub id (family read from "
                                               "its config.json)")
    lora_rank: int = flag(0, group="model",
                          help="train LoRA adapters of this rank on the attention projections "
                               "instead of the whole encoder (0: full fine-tuning)")
    lora_alpha: float = flag(32.0, group="model", help="LoRA scaling alpha")
    lora_dropout: float = flag(0.1, group="model", help="LoRA dropout")
    device: str = flag("auto", group="training", resumable=True, help="auto, cpu, cuda or cuda:N")
    precision: str = flag("auto", choices=("auto", "fp32", "bf16", "fp16"), group="training",
                          help="auto: bf16 autocast on a GPU that supports it, else fp32")
    num_workers: int | None = flag(None, group="training", resumable=True,
                                   help="DataLoader worker processes (default: 4 on GPU, 0 on "
                                        "CPU)")
    save_dir: str = flag("outputs/brain_tuning", group="output", help="parent of the run folder")
    exp_name: str | None = flag(None, group="output",
                                help="run folder name (default: <model>_<subjects>_<target>)")
    save_every: int = flag(1, group="output",
                           help="write checkpoint-epoch<k>/ every this many epochs (0: never)")
    resume: bool = flag(False, group="output", resumable=True,
                        help="continue the run in <save_dir>/<exp_name> from its last epoch")
    overwrite: bool = flag(False, group="output", resumable=True,
                           help="start an existing run folder again (the old run is deleted "
                                "once the new one has set itself up)")
    log_level: str = flag("INFO", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                          group="output", resumable=True, help="logging level")
    report_to: str = flag("none", choices=training_log.REPORT_TO, group="output",
                          resumable=True,
                          help="also log the loss and learning rates per step and the "
                               "validation scores per epoch for TensorBoard (in <run>/"
                               "tensorboard/; needs the tensorboard package), beside "
                               "metrics.jsonl")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 0, "save_every", "lora_rank", "num_workers")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        arguments.check_positive(self, "lora_alpha")
        if self.resume and self.overwrite:
            raise UsageError("--resume continues the run and --overwrite starts it again: give "
                             "one")
        if self.exp_name is None:
            self.exp_name = arguments.default_exp_name(
                self.model_name, "-".join(self.subjects()),
                "features" if self.target_features else self.target)
        arguments.check_exp_name(self.exp_name)
        training_log.check_report_to(self.report_to)


def parse_args(argv=None):
    return arguments.parse(Settings, argv, section="train", docs="docs/brain-tuning.md",
                           description="Brain-tune a pretrained speech encoder (wav2vec2, HuBERT, "
                                       "WavLM, data2vec-audio, Whisper) to predict fMRI "
                                       "responses (ds003020).")


class RunData(NamedTuple):
    """What a run learns from, every input checked."""

    stories: tuple  # (training stories, validation stories), each subject -> list
    voxels: dict  # subject -> voxel indices (None with feature targets)
    groups: list  # training_data.TargetGroup
    n_outputs: int  # of the head
    audio: dict  # story -> (samples,) float32
    bounds: dict  # story -> (window starts, window length)
    inputs: dict  # every file read, with its content hash (run_utils.file_identity)


def load_data(settings, dataset, group):
    """The run's ``RunData``, every input checked before anything slow: the stories per
    subject, the voxels, the ``TargetGroup``s, the head's outputs, the audio and window bounds
    of every story, and the identity of every file read."""
    subjects = settings.subjects()
    shared_head = settings.multi_subject == "shared_head" or len(subjects) == 1
    train_stories, val_stories = training_data.choose_stories(
        dataset, subjects, settings.train_stories, settings.val_stories, settings.multi_subject)
    stories = {s: train_stories[s] + val_stories[s] for s in subjects}
    voxel_counts = {s: dataset.check_run_inputs(s, stories[s]) for s in subjects}
    # ds003020: each subject's ceiling from the test story's repeats; a shared space
    # (Narratives): the first validation story's intersubject ceiling
    ceiling_story = (val_stories[subjects[0]][0] if dataset.shared_space
                     else data_utils.TEST_STORY)
    with processes.main_process_first():  # it computes and saves missing ceilings
        voxels = None if settings.target_features else training_data.select_voxels(
            dataset, subjects, voxel_counts, settings.nc_path, settings.nc_thr, ceiling_story)
    targets = training_data.load_targets(dataset, stories, voxels, train_stories,
                                         settings.target, settings.target_features,
                                         settings.seed)
    groups, n_outputs = training_data.target_groups(targets, train_stories, val_stories,
                                                    shared_head)
    audio, bounds = training_data.load_stimuli(
        dataset, sorted({s for g in groups for s in g.targets}), progress=group.is_main)
    files = [path for s in subjects for path in dataset.input_files(s, stories[s])]
    if voxels is not None:
        files += [noise_ceilings.ceiling_file(s, path, dataset, ceiling_story)
                  for s, path in zip(subjects, settings.nc_path or [None] * len(subjects))]
    files += [settings.target_features] if settings.target_features else []
    return RunData((train_stories, val_stories), voxels, groups, n_outputs, audio, bounds,
                   run_utils.file_identity(list(dict.fromkeys(map(str, files)))))


def build_model(settings, n_outputs, window_samples, group):
    """The model with the paper's freezing (and LoRA adapters with ``--lora_rank``) on the
    device, its preprocessor, the optimiser, schedules and gradient scaler, and the network
    the steps run (the model in DistributedDataParallel under torchrun)."""
    model, preprocessor = brain_model.build_model(settings.model_name, n_outputs,
                                                    window_samples)
    if settings.lora_rank:
        brain_model.add_lora(model, settings.lora_rank, settings.lora_alpha,
                               settings.lora_dropout)
    model.to(group.device)
    optimizer, scheduler = training_steps.make_optimizer(
        model, settings.base_lr, settings.linear_layer_lr, settings.num_epochs,
        settings.warmup_epochs, settings.head_lr_decay, settings.head_lr_floor)
    dtype = processes.autocast_dtype(settings.precision, group.device)
    scaler = torch.amp.GradScaler(group.device.type, enabled=dtype == torch.float16)
    # SpecAugment's mask embedding (wav2vec2-like) is used only in batches where a mask was
    # drawn, so some steps leave parameters without gradient.
    network = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[group.device.index] if group.device.type == "cuda" else None,
        find_unused_parameters=True) if group.distributed else model
    return model, preprocessor, optimizer, scheduler, scaler, network, dtype


def train(settings, group):
    """Run (or resume) a brain-tuning run in this process of the torchrun ``group``; returns
    the run folder."""
    if settings.batch_size < group.world_size:
        raise UsageError(f"--batch_size {settings.batch_size} is smaller than the number of "
                         f"processes ({group.world_size}); each needs a sample per step")
    processes.seed_everything(settings.seed)
    run_dir = Path(settings.save_dir) / settings.exp_name
    with checkpoints.run_folder(run_dir, settings, group) as folder:
        speech_models.load_config(settings.model_name)  # a bad --model_name stops at once

        # data and model
        data = load_data(settings, settings.open_dataset(), group)
        (train_stories, val_stories), voxels = data.stories, data.voxels
        window_samples = next(iter(data.bounds.values()))[1]
        model, preprocessor, optimizer, scheduler, scaler, network, dtype = build_model(
            settings, data.n_outputs, window_samples, group)
        beside = [*speech_models.load_base_files(settings.model_name),
                  preprocessor.feature_extractor]  # saved with the weights
        num_workers = settings.num_workers if settings.num_workers is not None else (
            4 if group.device.type == "cuda" else 0)
        collate = training_data.Collate(preprocessor)
        datasets = training_data.group_datasets(data.groups, data.audio, data.bounds)
        val_loaders = [torch.utils.data.DataLoader(d.val, batch_size=settings.micro_batch_size,
                                  collate_fn=collate, num_workers=num_workers) for d in datasets]
        config = run_utils.run_config(
            arguments.as_dict(settings), subjects=settings.subjects(),
            train_stories=train_stories, val_stories=val_stories, n_outputs=data.n_outputs,
            family=model.family, voxel_counts={s: int(v.size) for s, v in (voxels or {}).items()},
            window_samples=window_samples,
            inputs={**data.inputs, "model_fingerprint": speech_models.fingerprint(model.backbone)})

        # where the run stands: resumed, or started (only now is an old run replaced)
        if settings.resume:
            checkpoints.check_inputs(run_dir, config["inputs"])
            progress = checkpoints.load_training_state(run_dir / checkpoints.STATE_FILE, model,
                                                       optimizer, scheduler, scaler)
            logger.info("resuming %s after epoch %d", run_dir, progress.start_epoch)
        else:
            progress = checkpoints.Progress(0, [], None, 0)
            if group.is_main:
                folder.start()
                run_utils.write_json(run_dir / "run_config.json", config)

        # the epochs, until --num_epochs or --patience epochs without a better --select_by
        metrics, best, stale = progress.metrics, progress.best, progress.stale
        with training_log.TrainingLog(run_dir, settings.report_to, group.is_main) as log:
            for epoch in range(progress.start_epoch, settings.num_epochs):
                if settings.patience and stale >= settings.patience:
                    break
                batches = training_data.epoch_batches(
                    [d.train for d in datasets], epoch, settings.seed, settings.batch_size,
                    settings.micro_batch_size, collate, num_workers, group.rank,
                    group.world_size, settings.batch_order)
                line = training_steps.train_one_epoch(network, model, batches, val_loaders,
                                                      optimizer, scheduler, scaler, dtype, group,
                                                      epoch, settings.num_epochs, log)
                logger.info("epoch %d: train loss %.4f, val loss %.4f, val corr %.4f",
                            epoch + 1, line["train_loss"], line["val_loss"], line["val_corr"])
                training_steps.check_finite(line)
                metrics.append(line)
                log.epoch(line)
                best, stale = checkpoints.best_epoch(best, stale, line, model,
                                                     settings.select_by)
                if group.is_main:
                    checkpoints.save_epoch(run_dir, settings.save_every, epoch, model, beside,
                                           voxels, config, optimizer, scheduler, scaler,
                                           metrics, best, stale)
                processes.barrier()

        if group.is_main:  # final/: the best epoch by --select_by
            model.load_state_dict(best["state"])
            checkpoints.save_tuned_model(run_dir / "final", model, beside, voxels, {
                **config, "selected_by": best["selected_by"], "epoch": best["epoch"],
                "best_val_loss": best["val_loss"], "best_val_corr": best["val_corr"]}, metrics,
                overwrite=True)
            logger.info("epoch %d has the %s (--select_by %s): val loss %.4f, val corr %.4f; "
                        "tuned model in %s", best["epoch"],
                        training_steps.SELECT_BY[best["selected_by"]], best["selected_by"],
                        best["val_loss"], best["val_corr"], run_dir / "final")
            warn_if_criteria_disagree(metrics, best["selected_by"])
        processes.barrier()
    return run_dir


def warn_if_criteria_disagree(metrics, select_by):
    """A warning when the other ``--select_by`` would have kept another of the epochs run."""
    epochs = {by: checkpoints.chosen_epoch(metrics, by) for by in training_steps.SELECT_BY}
    if epochs["loss"]["epoch"] != epochs["corr"]["epoch"]:
        other = next(by for by in training_steps.SELECT_BY if by != select_by)
        logger.warning("the validation loss is lowest at epoch %d (%.4f), the validation "
                       "correlation highest at epoch %d (%.4f): final/ is epoch %d (--select_by "
                       "%s); --select_by %s would keep epoch %d", epochs["loss"]["epoch"],
                       epochs["loss"]["val_loss"], epochs["corr"]["epoch"],
                       epochs["corr"]["val_corr"], epochs[select_by]["epoch"], select_by, other,
                       epochs[other]["epoch"])


def run(settings):
    """``train``, in this process and the others of its torchrun process group (if any)."""
    with processes.process_group(settings.device) as group:
        train(settings, group)


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
