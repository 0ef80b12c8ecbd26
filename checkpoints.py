"""The files of a brain-tuning run: the lock and checks of its folder, the tuned checkpoints
(loadable with ``AutoModel.from_pretrained``), the metrics and the state ``--resume``
continues from.
"""

import contextlib
import json
from typing import NamedTuple


import arguments
import model_cards
import processes
import run_utils
import speech_models
from run_utils import UsageError

# loaded on first use, so that --help and argument errors appear at once
brain_model = run_utils.LazyModule("brain_model")
torch = run_utils.LazyModule("torch")

STATE_FILE = "last/training_state.pt"  # inside the run folder: what --resume continues from


def check_resumable(run_dir, settings):
    """Stop unless ``run_dir`` holds a run to continue with the same ``settings`` (those
    ``--resume`` may not change, ``arguments.resume_changes``)."""
    if not (run_dir / STATE_FILE).is_file() or not (run_dir / "run_config.json").is_file():
        raise UsageError(f"{run_dir}: nothing to resume (no {STATE_FILE} or run_config.json); "
                         "start the run without --resume")
    saved = json.loads((run_dir / "run_config.json").read_text())["arguments"]
    saved.setdefault("select_by", "loss")  # runs from before --select_by chose by the loss
    changed = arguments.resume_changes(settings, saved)
    if changed:
        raise UsageError(f"{run_dir}: --resume with other settings than the run: "
                         + "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed))


def check_inputs(run_dir, inputs):
    """Stop unless the run in ``run_dir`` was made from the same inputs (files and their
    content hashes, the model's fingerprint) as ``inputs``: one line naming what changed."""
    saved = json.loads((run_dir / "run_config.json").read_text()).get("inputs")
    if saved is None:
        raise UsageError(f"{run_dir}: its run_config.json records no inputs (an older run); "
                         "start the run again with --overwrite")
    current = json.loads(run_utils.json_text(inputs))
    if saved == current:
        return
    changed = [f"{file} ({old[:12]} -> {new[:12]})" for file, old, new in zip(
        current.get("files", []), saved.get("sha256", []), current.get("sha256", []))
        if old != new]
    if saved.get("files") != current.get("files"):
        changed.append(f"the files read ({len(saved.get('files', []))} -> "
                       f"{len(current.get('files', []))})")
    if saved.get("model_fingerprint") != current.get("model_fingerprint"):
        changed.append("the pretrained model's weights")
    raise UsageError(f"{run_dir}: --resume with other inputs than the run's: "
                     f"{'; '.join(changed)}; resume with the run's inputs, or start again with "
                     "--overwrite")


@contextlib.contextmanager
def run_folder(run_dir, settings, group):
    """The run folder, held for the block: rank 0 locks it and checks it (``--resume``:
    repairs an interrupted write of ``last/`` and checks ``settings`` against the run's).

    Yields the ``RunFolder`` (None on the other ranks). Nothing is deleted here: a new run
    calls its ``start()`` once it has set itself up. The lock is released at the end, also
    after an error."""
    folder = run_utils.RunFolder(run_dir, what="brain-tuning run") if group.is_main else None
    try:
        if folder is not None and settings.resume:
            folder.resume_from(STATE_FILE)
            check_resumable(run_dir, settings)
        elif folder is not None:
            folder.check(settings.overwrite)
        processes.barrier()  # the other ranks read last/ only once rank 0 has repaired it
        yield folder
    finally:
        if folder is not None:
            folder.release()


def save_tuned_model(directory, model, beside, voxels, run_config, metrics, overwrite=False):
    """Write a folder that ``AutoModel.from_pretrained`` loads as the tuned encoder; for
    Whisper also ``WhisperForConditionalGeneration``, as the base with its encoder tuned (the
    whole model is saved, decoder and output projection the base's), which transcribes with
    the base's tokenizer and generation config. A wav2vec2-like base's task head (e.g. a CTC
    ``lm_head``) is not kept, its tokenizer is.

    Holds the encoder (LoRA adapters merged), what ``beside`` holds (objects with
    ``save_pretrained``: the feature extractor and ``speech_models.load_base_files``, e.g. the
    base's tokenizer and generation config), the head (``brain_head.safetensors``), the voxels
    predicted (``voxels.json``), the run configuration (``brain_tuning.json``) and the model
    card (``README.md``, ``model_cards.tuning_card``, with the epochs' ``metrics``). Written
    atomically.
    """
    import safetensors.torch  # a torch module: loaded only when a checkpoint is written

    with run_utils.atomic_output(directory, overwrite) as tmp, speech_models.quiet_transformers():
        brain_model.plain_backbone(model).save_pretrained(tmp)
        for item in beside:
            item.save_pretrained(tmp)
        head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
        safetensors.torch.save_file(head, str(tmp / "brain_head.safetensors"))
        run_utils.write_json(tmp / "voxels.json", voxels or {})
        run_utils.write_json(tmp / "brain_tuning.json", run_config)
        run_utils.write_text(tmp / model_cards.CARD_FILE,
                             model_cards.tuning_card(run_config, metrics))



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



class Progress(NamedTuple):
    """Where a run stands between epochs (saved in ``last/`` and restored by ``--resume``)."""

    start_epoch: int  # epochs done
    metrics: list  # one line per epoch
    best: dict | None  # the best epoch so far (``best_epoch``); None before the first
    stale: int  # epochs since the best one



def load_training_state(path, model, optimizer, scheduler, scaler):
    """Restore the model, optimiser, schedules and random states of ``last/``; returns the
    run's ``Progress``."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    processes.set_rng_state(state["rng"])
    best = state["best"]
    # states saved before --select_by chose by the loss and kept only its value
    best.setdefault("selected_by", "loss")
    best.setdefault("val_corr", state["metrics"][best["epoch"] - 1]["val_corr"])
    return Progress(state["epoch"] + 1, state["metrics"], best, state["stale"])



def improves(line, best, select_by):
    """Whether the epoch of metrics ``line`` beats ``best`` (the best epoch's "val_loss" and
    "val_corr"; None: no epoch yet) by ``select_by``: "loss", a lower validation loss (the
    paper's rule), or "corr", a higher mean validation correlation."""
    if best is None:
        return True
    if select_by == "loss":
        return line["val_loss"] < best["val_loss"]
    return line["val_corr"] > best["val_corr"]


def chosen_epoch(metrics, select_by):
    """The metrics line of the epoch ``select_by`` chooses among ``metrics`` (the first of
    equals)."""
    best = None
    for line in metrics:
        if improves(line, best, select_by):
            best = line
    return best


def best_epoch(best, stale, line, model, select_by):
    """The best epoch so far by ``select_by`` (``best``: "selected_by", its "epoch",
    "val_loss", "val_corr" and weights "state"; None before the first) and the epochs since it
    (``stale``), after the epoch of metrics ``line``."""
    if improves(line, best, select_by):
        return {"selected_by": select_by, "epoch": line["epoch"], "val_loss": line["val_loss"],
                "val_corr": line["val_corr"], "state": {
                    k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}, 0
    return best, stale + 1


def save_epoch(run_dir, save_every, epoch, model, beside, voxels, config, optimizer,
               scheduler, scaler, metrics, best, stale):
    """What rank 0 keeps after an epoch (0-based ``epoch``): ``checkpoint-epoch<k>/`` every
    ``save_every`` epochs (``save_tuned_model``), ``metrics.jsonl`` and the state of
    ``last/``."""
    if save_every and (epoch + 1) % save_every == 0:
        save_tuned_model(run_dir / f"checkpoint-epoch{epoch + 1}", model, beside, voxels,
                         {**config, "epoch": epoch + 1}, metrics, overwrite=True)
    write_metrics(run_dir, metrics)
    save_training_state(run_dir, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "rng": processes.rng_state(), "epoch": epoch, "metrics": metrics, "best": best,
        "stale": stale})
