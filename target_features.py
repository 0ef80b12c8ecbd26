"""Targets of the BigSLM-tuned and LM-tuned baselines: ``brain_trainer_story.py --target_features``
files made from a big speech model's or a text language model's representations of the stories.

    python target_features.py speech --model_name /models/whisper-medium --data_dir D \\
        --out outputs/targets/whisper-medium.hf5
    python target_features.py text --model_name /models/gpt2 --data_dir D \\
        --out outputs/targets/gpt2.hf5 --context_words 100
    python brain_trainer_story.py --model_name /models/wav2vec2-base --subject 3 --data_dir D \\
        --target_features outputs/targets/whisper-medium.hf5 --exp_name wav2vec2-base_bigslm

``speech`` (BigSLM-tuned, docs/method.md#brain-tuning): one hidden state of a speech encoder (wav2vec2,
HuBERT, WavLM, data2vec-audio, Whisper) on each story's TR grid, computed exactly as
``brain_evaluate.py`` computes its layer features, by the same code
(``layer_features.model_tr_features``): windows of ``--context_s`` s of context plus a
``--chunk_s`` s chunk every ``--chunk_s`` s, the hidden state of each window's last frame at its
end time, Lanczos-resampled to the TR centres; cached in ``--cache_dir`` (the evaluator's cache
format, so a model evaluated there is not extracted again), and under ``torchrun`` the stories
are dealt out to the processes.

``text`` (LM-tuned): a causal text LM (a local checkpoint folder or a hub id in the HF cache,
e.g. GPT-2 or a LLaMA-family model, loaded with ``AutoModel`` and ``AutoTokenizer``) reads each
story's word tier (``Dataset.words``: no silences, empty labels or noise tokens). Each
word is embedded with exactly its ``--context_words`` preceding words (fewer at the story's
start): the text ``" ".join(words[i - context_words : i + 1])`` is tokenised and the hidden state
of its last non-special token (the word's last sub-token) at ``--layer`` is the word's vector.
These left-truncated contexts are batched (``--batch_size`` contexts per forward pass, padded
on the right: in a causal model no real token attends to the padding, so every word's state
is the one a forward pass over its own context alone gives, to float rounding). Each vector is
placed at the word's midpoint and Lanczos-resampled to the TR centres as the evaluator's word
vectors are (``low_level_features.word_vector_features``, ``to_tr_grid``). The weights run in
bf16 on a GPU that supports it (``--precision``), else in fp32.

``--layer`` is a hidden-state index as transformers counts them (0: the embeddings, k: the
output of block k); the default is the model's last one (the state brain-tuning itself pools,
for a speech model; for a text LM its last block's output after the final layer norm). No
layer for these baselines is given in the paper's description; pass a
middle layer to target the representations that predict the brain best.

Both cut each story's TR-grid rows to its response rows exactly as the responses are cut
(``data_utils.TRIM_START_TRS`` grid TRs at the start, ``TRIM_END_TRS`` at the end: respdict - 20
rows), checked against ``Dataset.response_rows`` before any model is loaded. The stories are
``--stories`` or every story with responses of some subject in ``derivative/preprocessed_data``
(the test story too: the trainer ignores it, the evaluator's semantic preference needs it).

Output ``--out``: an HDF5 file, written atomically and never replaced without ``--overwrite``,
with one float32 dataset ``<story>`` of shape (response rows, features) per story and the
attributes ``kind``, ``model``, ``layer``, ``fingerprint`` (SHA-256 of the weights and config,
``speech_models.fingerprint``), ``settings`` (JSON: every setting the numbers depend on) and
``run`` (JSON: command, time, host, package versions). ``data_utils.Dataset.target_features``
reads it (the trainer's ``--target_features``, the evaluator's ``--semantic_features``).
"""

import dataclasses
import logging
import sys
from pathlib import Path

import h5py
import numpy as np

import arguments
import data_utils
import eval_utils
import layer_features
import low_level_features
import processes
import run_utils
import speech_models
from arguments import flag
from data_utils import DatasetFlags
from layer_features import ExtractionFlags
from run_utils import DatasetError, UsageError
from speech_models import ModelError

# loaded on first use, so that --help and argument errors appear at once
torch = run_utils.LazyModule("torch")
transformers = run_utils.LazyModule("transformers")

logger = logging.getLogger(__name__)

KINDS = ("speech", "text")
TRIM = (data_utils.TRIM_START_TRS, data_utils.TRIM_END_TRS)


@dataclasses.dataclass(kw_only=True)
class TargetFileFlags(DatasetFlags):
    """The flags of both kinds of target file."""

    model_name: str = flag(help="checkpoint folder or hub id already in the HF cache (nothing "
                                "is downloaded)")
    out: str = flag(help="the HDF5 file to write (e.g. outputs/targets/MODEL.hf5)")
    layer: int | None = flag(None, help="hidden-state index (0: the embeddings, k: the output of "
                                        "block k); default: the model's last")
    stories: list[str] | None = flag(None, help="stories to write; default: every story with "
                                                "responses of some subject (the trainer needs "
                                                "its training and validation stories, the "
                                                "evaluator's semantic preference also the test "
                                                "story)")
    device: str = flag("auto", help="auto, cpu, cuda or cuda:N")
    precision: str = flag("auto", choices=("auto", "fp32", "bf16"),
                          help="auto: bf16 on a GPU that supports it, else fp32")
    overwrite: bool = flag(False, help="replace an existing --out file (once the new one is "
                                       "complete)")
    log_level: str = flag("INFO", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                          help="logging level")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 0, "layer")


@dataclasses.dataclass(kw_only=True)
class SpeechCommand(TargetFileFlags, ExtractionFlags):
    """A speech encoder's hidden state of --layer on each story's TR grid, extracted as
    brain_evaluate.py extracts its layer features (sliding windows, last frame, Lanczos to the
    TR centres), cut to the response rows."""

    cache_dir: str | None = flag(None, help="window-feature cache, brain_evaluate.py's format "
                                            "(default: feature_cache/ beside --out)")

    def __post_init__(self):
        super().__post_init__()
        if self.cache_dir is None:
            self.cache_dir = str(Path(self.out).parent / "feature_cache")


@dataclasses.dataclass(kw_only=True)
class TextCommand(TargetFileFlags):
    """A causal text LM's hidden state of --layer for each word of each story's word tier,
    with exactly --context_words preceding words as context, at the word's midpoint,
    Lanczos-resampled to the TR centres, cut to the response rows."""

    context_words: int = flag(100, help="preceding words in each word's context (fewer at a "
                                        "story's start)")
    batch_size: int = flag(32, help="word contexts per forward pass")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 1, "batch_size")
        arguments.check_at_least(self, 0, "context_words")


COMMANDS = {"speech": (SpeechCommand, "a speech encoder's layer features on the TR grid "
                                      "(BigSLM-tuned)"),
            "text": (TextCommand, "a causal text LM's word states on the TR grid (LM-tuned)")}


def parse_args(argv=None):
    return arguments.parse_command(
        COMMANDS, argv, docs="docs/brain-tuning.md",
        description="Write a --target_features file of brain_trainer_story.py for the BigSLM-tuned "
                    "(speech) or LM-tuned (text) baseline.")


def run(args):
    """Write the file, in this process and the others of its torchrun process group (if any)."""
    with processes.process_group(args.device) as group:
        return make_target_features(args, group)


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


def make_target_features(args, group):
    """The whole run (``args``: a ``SpeechCommand`` or ``TextCommand``): check the output and
    the stories, compute, and (rank 0) write ``--out``. Returns the path written (None on the
    other ranks)."""
    out = Path(args.out)
    check_output(out, args.overwrite)
    dataset = args.open_dataset()
    stories = choose_stories(dataset, args.stories)
    for story in stories:  # every story's TR grid and files, before any model is loaded
        response_grid(dataset, story)
    dtype = processes.autocast_dtype(args.precision, group.device)
    kind = "speech" if isinstance(args, SpeechCommand) else "text"
    make = speech_targets if kind == "speech" else text_targets
    features, settings = make(args, dataset, stories, group.device, dtype)
    if not group.is_main:
        return None
    settings = {"kind": kind, "model": args.model_name, "stories": stories,
                "inputs": dataset.story_record(stories, ("wav",) if kind == "speech"
                                               else ("textgrid",)),
                "tr_source": args.tr_source, "tr_path": args.tr_path,
                "trim_trs": list(TRIM), **settings}
    write_target_features(out, features, settings, args.overwrite)
    logger.info("wrote %s: %d stories, %d features (%s, layer %d)", out, len(features),
                next(iter(features.values())).shape[1], kind, settings["layer"])
    return out


def check_output(path, overwrite):
    """Stop before any work when ``path`` exists and may not be replaced, or is a folder."""
    if path.is_dir():
        raise run_utils.OutputExistsError(f"--out {path} is a folder; give the path of the "
                                          "HDF5 file to write (e.g. targets/MODEL.hf5)")
    if path.exists() and not overwrite:
        raise run_utils.OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def choose_stories(dataset, requested):
    """``requested``, or every story with responses of some subject (sorted)."""
    if requested:
        return list(dict.fromkeys(requested))
    stories = sorted({story for subject in dataset.subjects()
                      for story in dataset.stories(subject)})
    if not stories:
        raise UsageError(f"{dataset.derivative / 'preprocessed_data'}: no responses of any "
                         "subject; name the stories with --stories")
    return stories


def response_grid(dataset, story):
    """The TR centres of a story ((grid TRs,) float64 s), checked to leave exactly its response
    rows (``Dataset.response_rows``) once ``TRIM`` TRs are cut at the start and the end."""
    centres = dataset.tr_times(story)
    rows = dataset.response_rows(story)
    tr_source = dataset.tr_source
    if len(centres) - sum(TRIM) != rows:
        raise DatasetError(f"story {story!r}: the {tr_source} TR timing has {len(centres)} TRs, "
                           f"which leave {len(centres) - sum(TRIM)} rows once {TRIM[0]} and "
                           f"{TRIM[1]} are cut, but respdict.json gives {rows} response rows; "
                           "use --tr_source respdict or TR files of this release")
    return centres


# ----------------------------------------------------------------------------- speech (BigSLM)

def speech_targets(args, dataset, stories, device, dtype):
    """A speech encoder's ``--layer`` on each story's response rows: (story -> (rows, hidden)
    float32, settings). The WAVs are checked to cover their stories before the model loads."""
    for story in stories:
        problem = dataset.stimulus_problem(story, dataset.stimulus_duration(story))
        if problem:
            raise DatasetError(problem)
    encoder = speech_models.load_encoder(args.model_name, device)
    layer = check_layer(args.layer, encoder.depth, args.model_name)
    grid = layer_features.model_tr_features(encoder, [layer], dataset, stories,
                                            args.extraction(dtype), args.cache_dir,
                                            device)[layer]
    features = {story: eval_utils.trim_rows(grid[story], TRIM).astype(np.float32, copy=False)
                for story in stories}
    return features, {"layer": layer, "fingerprint": encoder.fingerprint,
                      "family": encoder.family, "context_s": args.context_s,
                      "chunk_s": args.chunk_s, "window_time": "end", "autocast": str(dtype),
                      "preprocessor": encoder.preprocessor.digest()}


def check_layer(layer, depth, model_name):
    """``layer`` (None: ``depth``, the last) if the model has that hidden state, else a
    UsageError naming --layer and the range."""
    if layer is None:
        return depth
    if not 0 <= layer <= depth:
        raise UsageError(f"--layer {layer}: {model_name} has hidden states 0..{depth} only; "
                         "give one of them")
    return layer


# ----------------------------------------------------------------------------- text (LM)

def text_targets(args, dataset, stories, device, dtype):
    """A causal text LM's ``--layer`` word states on each story's response rows: (story ->
    (rows, hidden) float32, settings). Every word tier is read before the model loads; under
    torchrun the stories are dealt out to the processes by their word counts."""
    words = {story: story_words(dataset, story) for story in stories}
    model, tokenizer = load_text_model(args.model_name, device, dtype)
    layer = check_layer(args.layer, model.config.num_hidden_layers, args.model_name)
    mine = [stories[i] for i in processes.process_items([len(words[s]) for s in stories])]
    part = {}
    for story in run_utils.progress(mine, desc="stories", unit="story",
                                    disable=not processes.is_main_process()):
        states = word_states(model, tokenizer, [word for _, _, word in words[story]], layer,
                             args.context_words, args.batch_size, device, story)
        times = np.array([(start + end) / 2 for start, end, _ in words[story]])
        grid = low_level_features.to_tr_grid(states, times, response_grid(dataset, story))
        part[story] = eval_utils.trim_rows(grid, TRIM)
    features = {}
    for done in processes.gather_from_processes(part):
        features.update(done)
    return {story: features[story] for story in stories}, {
        "layer": layer, "fingerprint": speech_models.fingerprint(model),
        "context_words": args.context_words, "word_time": "midpoint",
        "weights_dtype": str(dtype or torch.float32),
        "tokenizer": {"class": type(tokenizer).__name__, "size": len(tokenizer)}}


def story_words(dataset, story):
    """The word tier of a story (``Dataset.words``); a story without words is a DatasetError
    naming its TextGrid."""
    words = dataset.words(story)
    if not words:
        raise DatasetError(f"{dataset.alignment_path(story)}: its word tier holds no "
                           "words (only silences or noise); get the TextGrid again")
    return words


def load_text_model(name_or_path, device, dtype=None):
    """A causal text LM's base model (``AutoModel``, weights in ``dtype`` or fp32, on
    ``device``, in eval mode) and its tokenizer; a missing checkpoint or one that is not a
    causal LM is a ModelError."""
    config = speech_models.read_config(
        name_or_path, "a text LM's checkpoint folder or a hub id such as gpt2")
    check_causal_lm(config, name_or_path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
        with speech_models.quiet_transformers():
            model = transformers.AutoModel.from_pretrained(name_or_path, config=config,
                                              dtype=dtype or torch.float32)
    except (OSError, ValueError, RuntimeError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"{name_or_path}: cannot load the tokenizer and weights ({reason}); "
                         "the folder needs the tokenizer files and the weights saved beside "
                         "config.json (save_pretrained of both)") from None
    return model.to(device).eval(), tokenizer


def check_causal_lm(config, name_or_path):
    """A ModelError unless ``config`` is a decoder-only causal LM's (a model type with a causal
    LM head in transformers that is neither a masked LM nor an encoder-decoder)."""
    model_type = getattr(config, "model_type", None)
    auto = transformers.models.auto.modeling_auto
    if (model_type not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            or model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
            or getattr(config, "is_encoder_decoder", False)):
        raise ModelError(f"{name_or_path}: model_type {model_type!r} is not a causal text LM; "
                         "`target_features.py text` needs a decoder-only LM such as GPT-2 or "
                         "LLaMA (a speech encoder goes to `target_features.py speech`)")


def word_states(model, tokenizer, words, layer, context_words, batch_size=32, device="cpu",
                story=""):
    """Each word's hidden state of ``layer`` with exactly its ``context_words`` preceding words.

    Word ``i``'s context is ``" ".join(words[max(0, i - context_words) : i + 1])``, tokenised
    alone (with the tokenizer's special tokens); its state is that of the context's last
    non-special token. Contexts are sorted by length and run ``batch_size`` at a time, padded on
    the right with an attention mask: a causal LM's states of the real tokens are then those
    of each context run alone (to float rounding).

    Parameters
    ----------
    words : list of str, in story order
    story : for the progress bar and errors

    Returns
    -------
    (n_words, hidden) float32.
    """
    contexts = [" ".join(words[max(0, i - context_words):i + 1]) for i in range(len(words))]
    encoded = tokenizer(contexts, return_special_tokens_mask=True)
    ids, special = encoded["input_ids"], encoded["special_tokens_mask"]
    last = [max((j for j, is_special in enumerate(mask) if not is_special), default=-1)
            for mask in special]
    if min(last) < 0:
        raise ModelError(f"story {story!r}: the tokenizer gives no token for the word "
                         f"{words[last.index(-1)]!r}")
    longest = max(len(row) for row in ids)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and longest > limit:
        raise UsageError(f"--context_words {context_words}: a context of story {story!r} has "
                         f"{longest} tokens, more than the model's {limit} positions; lower "
                         "--context_words")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    states = None
    with torch.inference_mode():
        for first in run_utils.progress(range(0, len(order), batch_size), desc=story,
                                        unit="batch", leave=False,
                                        disable=not processes.is_main_process()):
            batch = order[first:first + batch_size]
            width = max(len(ids[i]) for i in batch)
            inputs = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                inputs[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
            hidden = model(input_ids=inputs.to(device), attention_mask=mask.to(device),
                           output_hidden_states=True, use_cache=False).hidden_states[layer]
            values = hidden[torch.arange(len(batch)), torch.tensor([last[i] for i in batch])]
            if states is None:
                states = np.empty((len(words), values.shape[-1]), np.float32)
            states[batch] = values.float().cpu().numpy()
    return states


# ----------------------------------------------------------------------------- the file

def write_target_features(path, features, settings, overwrite=False):
    """Write ``features`` (story -> (rows, features)) as float32 datasets of an HDF5 file,
    atomically, with ``settings`` (a dict) as attributes (see the module docstring)."""
    run_utils.check_free_space(path, sum(np.asarray(v, np.float32).nbytes
                                         for v in features.values()))
    with run_utils.atomic_output(path, overwrite) as tmp, h5py.File(tmp, "w") as handle:
        for story, values in features.items():
            handle.create_dataset(story, data=np.asarray(values, np.float32))
        for name in ("kind", "model", "layer", "fingerprint"):
            handle.attrs[name] = settings[name]
        handle.attrs["settings"] = run_utils.json_text(settings)
        handle.attrs["run"] = run_utils.json_text(run_utils.run_metadata())


if __name__ == "__main__":
    sys.exit(main())
