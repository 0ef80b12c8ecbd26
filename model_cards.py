"""The model card of a brain-tuned checkpoint: ``README.md`` in the HuggingFace format (YAML
front matter, then what was tuned on what, the losses and the command), written with every
checkpoint and completed with its brain alignment by ``report.py --model_card``
(docs/brain-tuning.md#model-cards).
"""

from pathlib import Path

import run_utils

CARD_FILE = "README.md"
ALIGNMENT_HEADING = "## Brain alignment"  # the section report.py --model_card writes
DATASET = "OpenNeuro/ds003020"  # the Moth Radio Hour fMRI dataset (LeBel et al. 2023)


def tuning_card(config, metrics):
    """The card of a checkpoint: ``config``, what it records in ``brain_tuning.json`` (the run's
    ``run_utils.run_config`` with its epoch), and ``metrics``, the epochs' lines of
    ``metrics.jsonl`` so far. ``base_model`` is the base's hub id (left out for a local
    folder, which the text names). Returns the card's text."""
    from huggingface_hub import ModelCard, ModelCardData

    args = config["arguments"]
    base = args["model_name"]
    local = Path(base).exists()
    data = ModelCardData(base_model=None if local else base, library_name="transformers",
                         tags=["brain-tuning", "fmri", "speech", "audio", config["family"]],
                         datasets=[DATASET])
    epoch = config.get("epoch")
    chosen = (f"epoch {epoch}, the {config['selected_by']} rule of `--select_by`"
              if "selected_by" in config else f"the weights after epoch {epoch}")
    voxels = ", ".join(f"{subject}: {n}" for subject, n in config["voxel_counts"].items())
    lora = (f"rank {args['lora_rank']} (alpha {args['lora_alpha']}), merged"
            if args.get("lora_rank") else "none (every encoder weight above the frozen CNN)")
    settings = [
        ("base model", f"`{base}`" + (" (a local folder)" if local else "")),
        ("family", config["family"]),
        ("target", args["target"]),
        ("subjects", ", ".join(config["subjects"])),
        ("voxels predicted", voxels or "none (not an fMRI target)"),
        ("training stories", _per_subject(config["train_stories"])),
        ("validation stories", _per_subject(config["val_stories"])),
        ("these weights", chosen),
        ("epochs", f"{len(metrics)} run of --num_epochs {args['num_epochs']}"),
        ("batch size", args["batch_size"]),
        ("learning rates", f"encoder {args['base_lr']}, head {args['linear_layer_lr']}"),
        ("LoRA", lora)]
    losses = [[line["epoch"], f"{line['train_loss']:.4f}", f"{line['val_loss']:.4f}",
               f"{line['val_corr']:.4f}"] for line in metrics]
    command = config.get("run", {}).get("command", "")
    lines = [
        f"# {Path(base).name} brain-tuned on {', '.join(config['subjects'])}", "",
        "A speech encoder fine-tuned to predict human fMRI responses to natural stories "
        f"(the Moth Radio Hour, {DATASET}) with the brain-tuning toolkit: a linear head on its "
        "last hidden states predicts each voxel's response of the subjects below, and the "
        "encoder's weights are trained with it. This folder holds the encoder (loadable with "
        "`transformers.AutoModel`), its feature extractor, the head "
        "(`brain_head.safetensors`), the voxels it predicts (`voxels.json`) and the run's "
        "settings (`brain_tuning.json`).", "",
        "## Tuning", "", _table(["setting", "value"], settings), "",
        "## Losses per epoch", "",
        _table(["epoch", "train loss", "validation loss", "validation correlation"], losses),
        "", "## Use", "", "```python", "from transformers import AutoModel", "",
        'model = AutoModel.from_pretrained("path/to/this/folder")', "```", "",
        "Share it as it is: `hf upload <user>/<name> path/to/this/folder` (huggingface_hub's "
        "command line; `huggingface-cli upload` in its older releases).", ""]
    if command:
        lines += ["## Command", "", "```bash", command, "```", ""]
    return str(ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines)))


def with_alignment(card_text, lines):
    """``card_text`` with its ``ALIGNMENT_HEADING`` section (added, or replaced where there is
    one) holding ``lines`` (Markdown)."""
    before, _, after = card_text.partition(ALIGNMENT_HEADING)
    rest = after.split("\n## ", 1)
    tail = "\n## " + rest[1] if len(rest) > 1 else ""
    return before.rstrip("\n") + "\n\n" + "\n".join([ALIGNMENT_HEADING, "", *lines]) + tail


def card_file(checkpoint):
    """The card of ``checkpoint`` (a folder); a UsageError where it has none (not a checkpoint
    of brain_trainer_story.py)."""
    path = Path(checkpoint) / CARD_FILE
    if not path.is_file():
        raise run_utils.UsageError(f"{path}: no model card; --model_card completes the card "
                                   "brain_trainer_story.py writes with a tuned checkpoint")
    return path


def add_alignment(path, lines):
    """Write ``lines`` into the card at ``path`` (``card_file``), atomically."""
    run_utils.write_text(path, with_alignment(path.read_text(), lines), overwrite=True)


def _per_subject(stories):
    """"UTS01: a, b; UTS02: c" of subject -> stories."""
    return "; ".join(f"{subject}: {', '.join(names)}" for subject, names in stories.items())


def _table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *["| " + " | ".join(map(str, row)) + " |" for row in rows]])
