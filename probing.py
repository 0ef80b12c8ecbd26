"""Linear probes on mean-pooled layer features: the downstream tasks (SPEC section 6).

The shared core of the ``eval_*.py`` scripts, one per task:

==================  ====================  ==========================================
script              dataset (--data_path)  target
==================  ====================  ==========================================
eval_phonemes       TIMIT                 the 39 phone classes present (multi-label)
eval_sentence_type  TIMIT                 SA, SI or SX
eval_words          Speech Commands v2    one of 35 words
eval_emotion        CREMA-D               one of 6 emotions (speaker-disjoint split)
eval_intent         SLURP                 one of the actions (46 in SLURP)
==================  ====================  ==========================================

``--hf_dataset`` reads the dataset with the ``datasets`` library instead (a ``save_to_disk``
folder, a folder of data files or a hub id in the local cache; ``downstream_data.HubDataset``).

For each model (pretrained, and every ``--model_path``/``--logs_dir`` checkpoint) and layer:
the hidden states of each utterance averaged over time, cached per model and dataset split;
then one linear layer trained full-batch with Adam (lr 1e-3) on the training split (binary
cross-entropy per class for the multi-label phonemes, softmax cross-entropy otherwise), its
inputs standardised with the training mean and std; scored on the test split by micro and
macro F1 and, for single-label tasks, accuracy. For the multi-label phonemes the accuracy would
be the exact match of the whole set of 39 classes (subset accuracy), near 0 for every layer and
model: it is stored as ``exact_match`` (not ``accuracy``) and left out of the log lines and
printed tables, which show micro and macro F1 only.

Chance (``chance_f1_macro``): the macro F1 of guessing without the audio, each test label drawn
from the training labels' frequencies (multi-label: each class said yes with its training
prevalence). It is the F1 of the expected counts, per class 2 p q / (p + q) with p the class's
test frequency and q its training frequency, averaged over the classes present in the test set
as the macro F1 is; about 1/classes for balanced classes. Predicting the most frequent class
instead would give a macro F1 near 0, far below what guessing gets.

Outputs in ``<save_dir>/<exp_name>/``: ``results.json`` (the task, classes, models, the chance
level and the rows) and ``results.csv`` (per model and layer: f1_micro, f1_macro, accuracy or
exact_match, n_train, n_test), ``<task>.png`` (macro F1 per layer, one line per model, chance
dashed) and ``run_config.json`` (the arguments and the run). They are written together once
every model is probed; an existing folder is refused before any work unless ``--overwrite``,
and a failed run leaves it as it was (see ``run_utils.output_folder``).

Under ``torchrun --nproc_per_node N eval_<task>.py ...`` the processes share out the
utterances to encode (the same features as one process: utterances are never padded); every
process trains the same probes and rank 0 alone writes the results.
"""

import argparse
import functools
import logging
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

import data_utils
import downstream_data
import plots
import run_utils
import speech_models
from data_utils import DatasetError

logger = logging.getLogger(__name__)

MIN_SECONDS = 0.025  # the wav2vec2 CNN's receptive field: shorter audio gives no frame


def parse_args(task, argv=None):
    dataset = downstream_data.TASKS[task].dataset
    parser = argparse.ArgumentParser(
        description=f"Linear probes of every layer of pretrained and brain-tuned speech models "
                    f"on {dataset} ({task}).", formatter_class=run_utils.HelpFormatter)
    source = add_probe_arguments(parser, dataset, tasks=[task])
    parser.add_argument("--num_epochs", type=int, default=50,
                        help="full-batch Adam steps of each probe")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the probe")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the probe initialisation, --max_examples subsets and the "
                             "CREMA-D actor split")
    # the dataset-specific flags exist for their task only; the others read None
    if task == "emotion":
        source.add_argument("--test_fraction", type=float, default=0.2,
                            help="fraction of the CREMA-D actors held out for testing")
        source.add_argument("--speaker_column", default=None,
                            help="with --hf_dataset: column of the actor (default: speaker_id, "
                                 "or else the actor of the CREMA-D file name)")
    else:
        parser.set_defaults(test_fraction=None)
    if task == "intent":
        source.add_argument("--audio_dir", default=None,
                            help="folder of the SLURP recordings (default: slurp_real/ found in "
                                 "--data_path, audio/ or scripts/audio/)")
    else:
        parser.set_defaults(audio_dir=None)
    parser.add_argument("--batch_size", type=int, default=16,
                        help="utterances of equal length per forward pass")
    run_utils.add_results_arguments(parser, "outputs/downstream", "<model>_<task>")
    args = parser.parse_args(argv)
    args.task = task
    check_probe_arguments(parser, args)
    if args.audio_dir is not None and args.hf_dataset is not None:
        parser.error("--audio_dir finds SLURP's recordings beside --data_path; a --hf_dataset "
                     "holds them")
    run_utils.finish_results_arguments(parser, args, task)
    run_utils.check_at_least(parser, args, 1, "num_epochs", "batch_size")
    if not 0 < args.lr < math.inf:
        parser.error(f"--lr must be a positive number, got {args.lr}")
    run_utils.check_at_least(parser, args, 0, "seed")
    if args.test_fraction is not None and not 0 < args.test_fraction < 1:
        parser.error(f"--test_fraction must be in (0, 1), got {args.test_fraction}")
    return args


def add_probe_arguments(parser, dataset, default_layers="all", tasks=()):
    """The flags of every probe script (these and ``eval_asr.py``): the dataset (a folder in
    its distribution layout, or a HuggingFace dataset with the ``HUB_LAYOUTS`` of ``tasks``),
    the models, the layers and the ``--max_examples`` subsets; ``check_probe_arguments``
    checks them. Returns the dataset flags' argument group, for a task's own."""
    source = parser.add_argument_group("dataset: --data_path, or --hf_dataset and its flags")
    source.add_argument("--data_path", default=None,
                        help=f"root of the local {dataset} copy, in its distribution layout")
    usual = sorted({layout.name + (f" (config {layout.config})" if layout.config else "")
                    for layout in map(downstream_data.HUB_LAYOUTS.get, tasks) if layout.name})
    source.add_argument("--hf_dataset", default=None, metavar="NAME_OR_PATH",
                        help="read the dataset with the datasets library instead: a save_to_disk "
                             "folder, a folder of data files (a clone of a hub repository), or a "
                             "hub id that load_dataset has put in the local cache" +
                             (f" (usually {', '.join(usual)})" if usual else "") +
                             "; never downloaded; audio decoded by soundfile, not torchcodec")
    source.add_argument("--hf_config", default=None,
                        help="the dataset's config, for a hub id or a folder of data files "
                             "(default: the usual one for the usual hub id, else the only one)")

    train_split = _hub_default(tasks, lambda layout: layout.splits[0])
    test_split = _hub_default(tasks, lambda layout: layout.splits[1])
    source.add_argument("--hf_split_train", default=None,
                        help=f"split to train on (default: {train_split})")
    source.add_argument("--hf_split_test", default=None,
                        help=f"split to test on (default: {test_split}); for emotion, naming "
                             "the training split splits its actors")
    source.add_argument("--audio_column", default="audio",
                        help="column of the audio (an Audio feature, or file paths)")
    source.add_argument("--label_column", default=None,
                        help="column of the label (default: "
                             f"{_hub_default(tasks, lambda layout: layout.label_column)})")
    parser.set_defaults(speaker_column=None)  # a flag of eval_emotion.py only
    run_utils.add_model_arguments(parser)
    parser.add_argument("--layers", nargs="+", type=int, default=None,
                        help=f"hidden-state indices to probe (default: {default_layers}, "
                             "0 = encoder input)")
    parser.add_argument("--max_examples", type=int, default=None,
                        help="use a random subset of at most this many utterances per split "
                             "(quick looks; the paper uses all)")
    return source


def _hub_default(tasks, field):
    """What a hub flag's help gives as its default: ``field`` of the tasks' ``HUB_LAYOUTS``,
    per task where they differ."""
    values = {task: field(downstream_data.HUB_LAYOUTS[task]) for task in tasks}
    if len(set(values.values())) == 1:
        return str(next(iter(values.values())))
    return "; ".join(f"{task} {value}" for task, value in values.items())


HUB_FLAGS = ("hf_config", "hf_split_train", "hf_split_test", "label_column", "speaker_column")


def check_probe_arguments(parser, args):
    """``parser.error`` on the ``add_probe_arguments`` flags that choose nothing, choose two
    datasets or are out of range."""
    if (args.data_path is None) == (args.hf_dataset is None):
        parser.error("give the dataset as one of --data_path (a folder in the distribution "
                     "layout) and --hf_dataset (a HuggingFace dataset)")
    if args.data_path is not None:
        given = [flag for flag in HUB_FLAGS if getattr(args, flag, None) is not None]
        if args.audio_column != "audio":
            given.append("audio_column")
        if given:
            parser.error(f"--{given[0]} chooses from a HuggingFace dataset: give --hf_dataset "
                         "instead of --data_path")
    run_utils.check_model_arguments(parser, args)
    run_utils.check_at_least(parser, args, 1, "max_examples")
    if args.layers is not None and min(args.layers) < 0:
        parser.error(f"--layers must be hidden-state indices >= 0, got {min(args.layers)}")


def data_source(args):
    """The dataset the probe flags name: ``--data_path``, or a ``downstream_data.HubDataset``."""
    if args.hf_dataset is None:
        return args.data_path
    return downstream_data.HubDataset(args.hf_dataset, args.hf_config, args.hf_split_train,
                                      args.hf_split_test, args.audio_column, args.label_column,
                                      args.speaker_column)


def main(task, argv=None):
    """Command-line entry of the ``eval_<task>.py`` scripts; returns the exit status."""
    return run_utils.main(functools.partial(parse_args, task), run, argv)


class Split(NamedTuple):
    """The examples of a dataset split and their ``targets``."""

    examples: list
    targets: np.ndarray


class ProbeData(NamedTuple):
    """What every model of a run is probed on."""

    dataset: str
    train: Split
    test: Split
    classes: tuple
    multi_label: bool


def run(args):
    """Probe, in this process and the others of its torchrun process group (if any)."""
    with speech_models.process_group(args.device) as processes:
        return probe(args, processes)


def probe(args, processes):
    """The whole run: under torchrun the processes share the feature extraction, and rank 0
    alone locks and writes the results (the others return None)."""
    out_dir = Path(args.save_dir) / args.exp_name
    run_utils.check_replaceable(out_dir, args.overwrite)  # before the slow part
    with processes.folder_lock(out_dir):  # held for the run's life
        models = checked_models(args)
        device = processes.device
        dtype = speech_models.autocast_dtype(args.precision, device)
        task = downstream_data.TASKS[args.task]
        source = data_source(args)
        train, test = [split_examples(args.task, source, split, args.seed,
                                      args.max_examples, args.test_fraction, args.audio_dir)
                       for split in ("train", "test")]
        classes = downstream_data.task_classes(args.task, train, test)
        logger.info("%s %s: %d training and %d test utterances, %d classes", task.dataset,
                    args.task, len(train), len(test), len(classes))
        data = ProbeData(task.dataset, Split(train, targets(train, classes, task.multi_label)),
                         Split(test, targets(test, classes, task.multi_label)), classes,
                         task.multi_label)
        chance = chance_f1_macro(data.train.targets, data.test.targets, len(classes),
                                 task.multi_label)
        logger.info("chance: macro F1 %.3f (guessing by the training label frequencies)", chance)
        rows = []
        for label, checkpoint in models:
            rows += evaluate_model(label, checkpoint, data, args.layers, args.cache_dir,
                                   args.batch_size, args.num_epochs, args.lr, args.seed, device,
                                   dtype)
        if not processes.is_main:
            return None
        facts = {"task": args.task, "dataset": task.dataset,
                 "source": downstream_data.source_facts(args.task, source),
                 "classes": list(classes), "models": dict(models)}
        what = f"{args.task} probes"
        with run_utils.output_folder(out_dir, args.overwrite, what=what) as staging:
            run_utils.write_json(staging / "run_config.json", run_utils.run_config(args, **facts))
            write_results(staging, rows, facts, chance)
        for key in ("f1_micro", "f1_macro"):
            print(run_utils.comparison_table(rows, key))
        logger.info("results in %s", out_dir)


def checked_models(args):
    """The (label, checkpoint) pairs the model flags name (``run_utils.models_to_evaluate``),
    each loaded once here so that a broken checkpoint stops the run before any extraction."""
    models = run_utils.models_to_evaluate(args.model_name, args.model_path, args.logs_dir,
                                          args.epochs, args.skip_pretrained)
    for _, checkpoint in models:
        speech_models.load_encoder(checkpoint)
    return models


def split_examples(task, data_path, split, seed=0, max_examples=None, test_fraction=0.2,
                   audio_dir=None):
    """Examples of a split of the dataset at ``data_path`` (a folder, or a
    ``downstream_data.HubDataset``), a random subset of ``max_examples`` of them when given."""
    examples = downstream_data.task_examples(task, data_path, split, seed=seed,
                                             test_fraction=test_fraction, audio_dir=audio_dir)
    return subset_examples(examples, max_examples, seed)


def subset_examples(examples, max_examples=None, seed=0):
    """A random subset (``seed``) of at most ``max_examples`` examples, in their order; all of
    them when None."""
    if max_examples is not None and len(examples) > max_examples:
        keep = np.random.default_rng(seed).choice(len(examples), max_examples, replace=False)
        examples = [examples[i] for i in sorted(keep)]
    return examples


def targets(examples, classes, multi_label):
    """Labels as class indices (n,) int64, or a (n, classes) float32 indicator when multi-label."""
    index = {name: i for i, name in enumerate(classes)}
    if not multi_label:
        return np.array([index[e["label"]] for e in examples], dtype=np.int64)
    y = np.zeros((len(examples), len(classes)), dtype=np.float32)
    for row, example in enumerate(examples):
        y[row, [index[label] for label in example["label"]]] = 1.0
    return y


def evaluate_model(label, checkpoint, data, layers, cache_dir, batch_size, num_epochs, lr, seed,
                   device, dtype):
    """Result rows (one per layer: ``layers``, or all when None) of one model on ``data``."""
    encoder = speech_models.load_encoder(checkpoint, device)
    layers = run_utils.choose_layers(layers, encoder.depth)
    features = {name: utterance_features(cache_dir, encoder, data.dataset, split.examples,
                                         layers, batch_size, device, dtype)
                for name, split in (("train", data.train), ("test", data.test))}
    rows = []
    for layer in layers:
        predictions = probe_predictions(
            features["train"][layer], data.train.targets, features["test"][layer],
            len(data.classes), data.multi_label, num_epochs, lr, seed, device)
        scores = probe_scores(data.test.targets, predictions, data.multi_label)
        rows.append({"model": label, "layer": layer, **scores,
                     "n_train": len(data.train.targets), "n_test": len(data.test.targets)})
        logger.info("%s layer %d: F1 micro %.3f, macro %.3f%s", label, layer, scores["f1_micro"],
                    scores["f1_macro"],
                    "" if data.multi_label else f", accuracy {scores['accuracy']:.3f}")
    return rows


def utterance_features(cache_dir, encoder, dataset_name, examples, layers, batch_size, device,
                       dtype):
    """Mean-pooled layer features of the examples (dict layer -> (n, hidden) float32), cached
    per model and list of audio files (or dataset rows)."""
    settings = {**data_utils.audio_identity(e["audio"] for e in examples), "autocast": str(dtype),
                "preprocessor": encoder.preprocessor.digest()}
    path, text = run_utils.cache_path(cache_dir, dataset_name.replace(" ", "_").lower(),
                                      settings, model_key=encoder.fingerprint)

    def extract(missing):  # under torchrun each process encodes a share of the examples
        share = examples[speech_models.process_share(len(examples))]
        waveforms = _waveforms(share, encoder.preprocessor.sampling_rate, encoder.family)
        part = speech_models.pooled_layer_features(
            encoder.backbone, encoder.preprocessor, waveforms, missing, batch_size, device, dtype,
            progress=speech_models.is_main_process(), total=len(share)) if share else None
        parts = [part for part in speech_models.gather_from_processes(part) if part is not None]
        return {layer: np.concatenate([part[layer] for part in parts]) for layer in missing}, {}

    return run_utils.cached_arrays(path, layers, extract, text)[0]


def _waveforms(examples, sampling_rate, family):
    """The examples' audio, read one at a time, with the file named on bad lengths."""
    for example in examples:
        audio = data_utils.read_audio(example["audio"], sampling_rate)
        if len(audio) < MIN_SECONDS * sampling_rate:
            raise DatasetError(f"{example['audio']}: {len(audio)} samples, shorter than "
                               f"{MIN_SECONDS * 1000:.0f} ms; remove it from the dataset")
        if family == "whisper" and len(audio) > speech_models.WHISPER_MAX_SECONDS * sampling_rate:
            raise DatasetError(f"{example['audio']}: longer than the "
                               f"{speech_models.WHISPER_MAX_SECONDS} s the Whisper encoder takes")
        yield audio


def probe_predictions(x_train, y_train, x_test, n_classes, multi_label, num_epochs=50, lr=1e-3,
                      seed=0, device="cpu"):
    """Train a linear probe full-batch with Adam and predict the test set.

    Parameters
    ----------
    x_train, x_test : (n_train, d), (n_test, d) features; standardised with the training mean
        and std (constant columns only centred)
    y_train : (n_train,) class indices, or (n_train, n_classes) 0/1 when ``multi_label``
    seed : seed of the probe's initial weights (the global RNG is left untouched)

    Returns
    -------
    (n_test,) int64 class indices, or (n_test, n_classes) bool (sigmoid > 0.5) when multi-label.
    """
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    train = torch.from_numpy(((x_train - mean) / std).astype(np.float32)).to(device)
    test = torch.from_numpy(((x_test - mean) / std).astype(np.float32)).to(device)
    labels = torch.from_numpy(y_train).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = torch.nn.Linear(train.shape[1], n_classes).to(device)
    loss_fn = torch.nn.BCEWithLogitsLoss() if multi_label else torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(num_epochs):
        optimizer.zero_grad()
        loss_fn(probe(train), labels).backward()
        optimizer.step()
    with torch.no_grad():
        logits = probe(test).cpu()
    return (logits > 0).numpy() if multi_label else logits.argmax(dim=1).numpy()


def probe_scores(y_true, y_pred, multi_label):
    """Micro and macro F1, and ``accuracy`` (single-label) or ``exact_match`` (multi-label: the
    fraction of examples whose whole label set is right).

    Macro F1 averages over the classes present in ``y_true``; micro F1 counts every prediction
    (a predicted class absent from the test set is a false positive)."""
    if multi_label:
        y_true, y_pred = np.asarray(y_true) > 0.5, np.asarray(y_pred).astype(bool)
        present = y_true.any(axis=0)
        macro = f1_score(y_true[:, present], y_pred[:, present], average="macro", zero_division=0)
    else:
        macro = f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro",
                         zero_division=0)
    return {"f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "f1_macro": float(macro),
            "exact_match" if multi_label else "accuracy": float(accuracy_score(y_true, y_pred))}


def chance_f1_macro(y_train, y_test, n_classes, multi_label):
    """Macro F1 of guessing each test label from the training label frequencies (see the
    module docstring): per class 2 p q / (p + q), over the classes present in ``y_test``.

    y_train, y_test : (n,) class indices, or (n, n_classes) 0/1 when ``multi_label``.
    """
    if multi_label:
        p, q = np.asarray(y_test).mean(axis=0), np.asarray(y_train).mean(axis=0)
    else:
        p = np.bincount(y_test, minlength=n_classes) / len(y_test)
        q = np.bincount(y_train, minlength=n_classes) / len(y_train)
    present = p > 0
    return float(np.mean(2 * p[present] * q[present] / (p[present] + q[present])))


def write_results(out_dir, rows, facts, chance):
    """results.json (``facts``, ``chance_f1_macro`` and the rows), results.csv and
    <task>.png with the chance level dashed."""
    run_utils.write_json(out_dir / "results.json",
                         {**facts, "chance_f1_macro": chance, "results": rows})
    run_utils.write_csv(out_dir / "results.csv", rows)
    series = {}
    for row in rows:
        series.setdefault(row["model"], {})[row["layer"]] = row["f1_macro"]
    plots.plot_per_layer(out_dir / f"{facts['task']}.png", series, "macro F1 (test)",
                         f"Linear probes: {facts['task']} ({facts['dataset']}, "
                         f"{rows[0]['n_test']} test utterances)", chance=chance)


if __name__ == "__main__":
    sys.exit("probing.py is a library module with no command line; run one of eval_phonemes.py, "
             "eval_sentence_type.py, eval_words.py, eval_emotion.py, eval_intent.py "
             "(--help lists their flags)")
