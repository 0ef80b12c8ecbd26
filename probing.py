"""Linear probes on mean-pooled layer features: the downstream tasks
(docs/method.md#downstream-tasks).

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
Each task's settings are its class of ``SETTINGS`` (``ProbeFlags``, the models, the outputs and
the probe's training); ``--config FILE`` gives them from its section "probe".

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

import dataclasses
import functools
import logging
import sys
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

import arguments
import audio_io
import downstream_data
import layer_features
import plots
import processes
import run_utils
import speech_models
from arguments import ModelFlags, OutputFlags, flag
from run_utils import DatasetError, UsageError
from speech_models import WHISPER_MAX_SECONDS

# loaded on first use, so that --help and argument errors appear at once
sklearn = run_utils.LazyModule("sklearn")
torch = run_utils.LazyModule("torch")

logger = logging.getLogger(__name__)

MIN_SECONDS = 0.025  # the wav2vec2 CNN's receptive field: shorter audio gives no frame
SOURCE = "dataset: --data_path, or --hf_dataset and its flags"  # the --help heading
HUB_FLAGS = ("hf_config", "hf_split_train", "hf_split_test", "label_column", "speaker_column")


# ----------------------------------------------------------------------------- flags

@dataclasses.dataclass(kw_only=True)
class ProbeFlags(arguments.Flags):
    """What the probes (and ``eval_asr.py``) read: the dataset, a folder in its distribution
    layout or a HuggingFace dataset, the layers and the ``--max_examples`` subsets.

    A subclass states its dataset for ``--help``: ``class Settings(ProbeFlags, dataset="TIMIT",
    hub_tasks=("asr",), default_layers="all")`` fills the help of these flags with the dataset's
    name, the usual hub layouts of ``hub_tasks`` (``downstream_data.HUB_LAYOUTS``) and the
    layers probed by default (``HELP_VALUES``)."""

    HELP_VALUES: ClassVar[dict] = {
        "dataset": "dataset", "usual": "", "train_split": "the task's usual one",
        "test_split": "the task's usual one", "label_column": "the task's usual one",
        "default_layers": "all"}

    data_path: str | None = flag(None, group=SOURCE, help="root of the local {dataset} copy, "
                                                          "in its distribution layout")
    hf_dataset: str | None = flag(
        None, group=SOURCE, metavar="NAME_OR_PATH",
        help="read the dataset with the datasets library instead: a save_to_disk folder, a folder "
             "of data files (a clone of a hub repository), or a hub id that load_dataset has put "
             "in the local cache{usual}; never downloaded; audio decoded by soundfile, not "
             "torchcodec")
    hf_config: str | None = flag(None, group=SOURCE,
                                 help="the dataset's config, for a hub id or a folder of data "
                                      "files (default: the usual one for the usual hub id, else "
                                      "the only one)")
    hf_split_train: str | None = flag(None, group=SOURCE,
                                      help="split to train on (default: {train_split})")
    hf_split_test: str | None = flag(None, group=SOURCE,
                                     help="split to test on (default: {test_split}); for "
                                          "emotion, naming the training split splits its actors")
    audio_column: str = flag("audio", group=SOURCE,
                             help="column of the audio (an Audio feature, or file paths)")
    label_column: str | None = flag(None, group=SOURCE,
                                    help="column of the label (default: {label_column})")
    layers: list[int] | None = flag(None, help="hidden-state indices to probe (default: "
                                               "{default_layers}, 0 = encoder input)")
    max_examples: int | None = flag(None, help="use a random subset of at most this many "
                                               "utterances per split (quick looks; the paper "
                                               "uses all)")

    speaker_column = None  # a flag of the emotion probe only

    def __init_subclass__(cls, *, dataset=None, hub_tasks=(), default_layers="all", **kwargs):
        super().__init_subclass__(**kwargs)
        if dataset is not None:
            cls.HELP_VALUES = _help_values(dataset, hub_tasks, default_layers)

    def __post_init__(self):
        super().__post_init__()
        if (self.data_path is None) == (self.hf_dataset is None):
            raise UsageError("give the dataset as one of --data_path (a folder in the "
                             "distribution layout) and --hf_dataset (a HuggingFace dataset)")
        if self.data_path is not None:
            given = [name for name in HUB_FLAGS if getattr(self, name) is not None]
            if self.audio_column != "audio":
                given.append("audio_column")
            if given:
                raise UsageError(f"--{given[0]} chooses from a HuggingFace dataset: give "
                                 "--hf_dataset instead of --data_path")
        arguments.check_at_least(self, 1, "max_examples")
        if self.layers is not None and min(self.layers) < 0:
            raise UsageError(f"--layers must be hidden-state indices >= 0, got "
                             f"{min(self.layers)}")

    def data_source(self):
        """The dataset these flags name: ``--data_path``, or a ``downstream_data.HubDataset``."""
        if self.hf_dataset is None:
            return self.data_path
        return downstream_data.HubDataset(self.hf_dataset, self.hf_config, self.hf_split_train,
                                          self.hf_split_test, self.audio_column,
                                          self.label_column, self.speaker_column)


def _help_values(dataset, tasks, default_layers):
    """What the help of ``ProbeFlags`` says of ``dataset`` and the ``HUB_LAYOUTS`` of
    ``tasks``."""
    usual = sorted({layout.name + (f" (config {layout.config})" if layout.config else "")
                    for layout in map(downstream_data.HUB_LAYOUTS.get, tasks) if layout.name})
    return {"dataset": dataset, "usual": f" (usually {', '.join(usual)})" if usual else "",
            "train_split": _hub_default(tasks, lambda layout: layout.splits[0]),
            "test_split": _hub_default(tasks, lambda layout: layout.splits[1]),
            "label_column": _hub_default(tasks, lambda layout: layout.label_column),
            "default_layers": default_layers}


def _hub_default(tasks, field):
    """What a hub flag's help gives as its default: ``field`` of the tasks' ``HUB_LAYOUTS``,
    per task where they differ."""
    values = {task: field(downstream_data.HUB_LAYOUTS[task]) for task in tasks}
    if len(set(values.values())) == 1:
        return str(next(iter(values.values())))
    return "; ".join(f"{task} {value}" for task, value in values.items())


@dataclasses.dataclass(kw_only=True)
class ProbeSettings(OutputFlags, ModelFlags, ProbeFlags):
    """A linear probe's settings; each task has its subclass (``SETTINGS``), which names the
    task: ``class WordsSettings(ProbeSettings, task="words")``."""

    task: ClassVar[str | None] = None
    test_fraction = None  # a flag of the emotion probe only
    audio_dir = None  # a flag of the intent probe only

    num_epochs: int = flag(50, help="full-batch Adam steps of each probe")
    lr: float = flag(1e-3, help="Adam learning rate of the probe")
    seed: int = flag(0, help="seed of the probe initialisation, --max_examples subsets and the "
                             "CREMA-D actor split")
    batch_size: int = flag(16, help="utterances of equal length per forward pass")
    save_dir: str = flag("outputs/downstream", group="output", resumable=True,
                         help="parent of the results folder")
    exp_name: str | None = flag(None, group="output", resumable=True,
                                help="results folder name (default: <model>_<task>)")

    def __init_subclass__(cls, *, task=None, **kwargs):
        if task is not None:
            cls.task = task
            kwargs = {"dataset": downstream_data.TASKS[task].dataset, "hub_tasks": (task,),
                      **kwargs}
        super().__init_subclass__(**kwargs)

    def __post_init__(self):
        super().__post_init__()
        if self.task is None:
            raise TypeError("ProbeSettings names no task: use a task's class of "
                            "probing.SETTINGS")
        self.finish_outputs(self.model_name, self.task)
        arguments.check_at_least(self, 1, "num_epochs", "batch_size")
        arguments.check_positive(self, "lr")
        arguments.check_at_least(self, 0, "seed")


@dataclasses.dataclass(kw_only=True)
class PhonemesSettings(ProbeSettings, task="phonemes"):
    """The phoneme probe's settings (TIMIT)."""


@dataclasses.dataclass(kw_only=True)
class SentenceTypeSettings(ProbeSettings, task="sentence_type"):
    """The sentence-type probe's settings (TIMIT)."""


@dataclasses.dataclass(kw_only=True)
class WordsSettings(ProbeSettings, task="words"):
    """The word probe's settings (Speech Commands v2)."""


@dataclasses.dataclass(kw_only=True)
class EmotionSettings(ProbeSettings, task="emotion"):
    """The emotion probe's settings (CREMA-D): its actors are split for the test set."""

    test_fraction: float = flag(0.2, group=SOURCE,
                                help="fraction of the CREMA-D actors held out for testing")
    speaker_column: str | None = flag(None, group=SOURCE,
                                      help="with --hf_dataset: column of the actor (default: "
                                           "speaker_id, or else the actor of the CREMA-D file "
                                           "name)")

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.test_fraction < 1:
            raise UsageError(f"--test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclasses.dataclass(kw_only=True)
class IntentSettings(ProbeSettings, task="intent"):
    """The intent probe's settings (SLURP): where its recordings are."""

    audio_dir: str | None = flag(None, group=SOURCE,
                                 help="folder of the SLURP recordings (default: slurp_real/ "
                                      "found in --data_path, audio/ or scripts/audio/)")

    def __post_init__(self):
        super().__post_init__()
        if self.audio_dir is not None and self.hf_dataset is not None:
            raise UsageError("--audio_dir finds SLURP's recordings beside --data_path; a "
                             "--hf_dataset holds them")


SETTINGS = {settings.task: settings for settings in (
    PhonemesSettings, SentenceTypeSettings, WordsSettings, EmotionSettings, IntentSettings)}


def parse_args(task, argv=None):
    """The settings of ``task``'s probe from the command line (and its ``--config``)."""
    description = (f"Linear probes of every layer of pretrained and brain-tuned speech models "
                   f"on {downstream_data.TASKS[task].dataset} ({task}).")
    # the probes share the config section "probe": one probe's own flags are others' to skip
    return arguments.parse(SETTINGS[task], argv, section="probe", shared=SETTINGS.values(),
                           description=description, docs="docs/downstream.md")


def main(task, argv=None):
    """Command-line entry of the ``eval_<task>.py`` scripts; returns the exit status."""
    return run_utils.main(functools.partial(parse_args, task), run, argv)


# ----------------------------------------------------------------------------- the run

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


def run(settings):
    """Probe, in this process and the others of its torchrun process group (if any)."""
    with processes.process_group(settings.device) as group:
        return probe(settings, group)


def probe(settings, group):
    """The whole run: under torchrun the processes share the feature extraction, and rank 0
    alone locks and writes the results (the others return None)."""
    out_dir = Path(settings.save_dir) / settings.exp_name
    run_utils.check_replaceable(out_dir, settings.overwrite)  # before the slow part
    with group.folder_lock(out_dir):  # held for the run's life
        models = speech_models.checked_models(settings, settings.layers)
        device = group.device
        dtype = processes.autocast_dtype(settings.precision, device)
        task = downstream_data.TASKS[settings.task]
        source = settings.data_source()
        train, test = [split_examples(settings.task, source, split, settings.seed,
                                      settings.max_examples, settings.test_fraction,
                                      settings.audio_dir)
                       for split in ("train", "test")]
        classes = downstream_data.task_classes(settings.task, train, test)
        logger.info("%s %s: %d training and %d test utterances, %d classes", task.dataset,
                    settings.task, len(train), len(test), len(classes))
        data = ProbeData(task.dataset, Split(train, targets(train, classes, task.multi_label)),
                         Split(test, targets(test, classes, task.multi_label)), classes,
                         task.multi_label)
        chance = chance_f1_macro(data.train.targets, data.test.targets, len(classes),
                                 task.multi_label)
        logger.info("chance: macro F1 %.3f (guessing by the training label frequencies)", chance)
        rows = []
        for label, checkpoint in models:
            rows += evaluate_model(label, checkpoint, data, settings.layers, settings.cache_dir,
                                   settings.batch_size, settings.num_epochs, settings.lr,
                                   settings.seed, device, dtype)
        if not group.is_main:
            return None
        facts = {"task": settings.task, "dataset": task.dataset,
                 "source": downstream_data.source_facts(settings.task, source),
                 "classes": list(classes), "models": dict(models)}
        what = f"{settings.task} probes"
        with run_utils.output_folder(out_dir, settings.overwrite, what=what) as staging:
            run_utils.write_json(staging / "run_config.json", run_utils.run_config(
                arguments.as_dict(settings), **facts))
            write_results(staging, rows, facts, chance)
        for key in ("f1_micro", "f1_macro"):
            print(run_utils.comparison_table(rows, key))
        logger.info("results in %s", out_dir)


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
    settings = {**audio_io.audio_identity(e["audio"] for e in examples), "autocast": str(dtype),
                "preprocessor": encoder.preprocessor.digest()}
    path, text = run_utils.cache_path(cache_dir, dataset_name.replace(" ", "_").lower(),
                                      settings, model_key=encoder.fingerprint)

    def extract(missing):  # under torchrun each process encodes a share of the examples
        share = examples[processes.process_share(len(examples))]
        waveforms = utterance_waveforms(share, encoder.preprocessor.sampling_rate,
                                        encoder.family)
        part = layer_features.pooled_layer_features(
            encoder.backbone, encoder.preprocessor, waveforms, missing, batch_size, device, dtype,
            progress=processes.is_main_process(), total=len(share)) if share else None
        parts = [part for part in processes.gather_from_processes(part) if part is not None]
        return {layer: np.concatenate([part[layer] for part in parts]) for layer in missing}, {}

    return run_utils.cached_arrays(path, layers, extract, text)[0]


def utterance_waveforms(examples, sampling_rate, family):
    """The examples' audio, read one at a time, with the file named on bad lengths."""
    for example in examples:
        audio = audio_io.read_audio(example["audio"], sampling_rate)
        if len(audio) < MIN_SECONDS * sampling_rate:
            raise DatasetError(f"{example['audio']}: {len(audio)} samples, shorter than "
                               f"{MIN_SECONDS * 1000:.0f} ms; remove it from the dataset")
        if family == "whisper" and len(audio) > WHISPER_MAX_SECONDS * sampling_rate:
            raise DatasetError(f"{example['audio']}: longer than the {WHISPER_MAX_SECONDS} s "
                               "the Whisper encoder takes")
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
    f1_score, accuracy_score = sklearn.metrics.f1_score, sklearn.metrics.accuracy_score
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
