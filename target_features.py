"""Targets of the BigSLM-tuned and LM-tuned baselines: ``brain_trainer_story.py --target_features``
files made from a big speech model's or a text language model's representations of the stories.

    python target_features.py speech --model_name /models/whisper-medium --data_dir D \\
        --out outputs/targets/whisper-medium.hf5
    python target_features.py text --model_name /models/gpt2 --data_dir D \\
        --out outputs/targets/gpt2.hf5 --context_words 100
    python brain_trainer_story.py --model_name /models/wav2vec2-base --subject 3 --data_dir D \\
        --target_features outputs/targets/whisper-medium.hf5 --exp_name wav2vec2-base_bigslm

``speech`` (BigSLM-tuned, SPEC section 2): one hidden state of a speech encoder (wav2vec2,
HuBERT, WavLM, data2vec-audio, Whisper) on each story's TR grid, computed exactly as
``brain_evaluate.py`` computes its layer features, by the same code
(``speech_models.model_tr_features``): windows of ``--context_s`` s of context plus a
``--chunk_s`` s chunk every ``--chunk_s`` s, the hidden state of each window's last frame at its
end time, Lanczos-resampled to the TR centres; cached in ``--cache_dir`` (the evaluator's cache
format, so a model evaluated there is not extracted again), and under ``torchrun`` the stories
are dealt out to the processes.

``text`` (LM-tuned): a causal text LM (a local checkpoint folder or a hub id in the HF cache,
e.g. GPT-2 or a LLaMA-family model, loaded with ``AutoModel`` and ``AutoTokenizer``) reads each
story's word tier (``data_utils.load_words``: no silences, empty labels or noise tokens). Each
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
layer for these baselines is given in the paper's description (SPEC section 2); pass a
middle layer to target the representations that predict the brain best.

Both cut each story's TR-grid rows to its response rows exactly as the responses are cut
(``data_utils.TRIM_START_TRS`` grid TRs at the start, ``TRIM_END_TRS`` at the end: respdict - 20
rows), checked against ``data_utils.response_rows`` before any model is loaded. The stories are
``--stories`` or every story with responses of some subject in ``derivative/preprocessed_data``
(the test story too: the trainer ignores it, the evaluator's semantic preference needs it).

Output ``--out``: an HDF5 file, written atomically and never replaced without ``--overwrite``,
with one float32 dataset ``<story>`` of shape (response rows, features) per story and the
attributes ``kind``, ``model``, ``layer``, ``fingerprint`` (SHA-256 of the weights and config,
``speech_models.fingerprint``), ``settings`` (JSON: every setting the numbers depend on) and
``run`` (JSON: command, time, host, package versions). ``data_utils.load_target_features``
reads it (the trainer's ``--target_features``, the evaluator's ``--semantic_features``).
"""

import argparse
import logging
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer
from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                    MODEL_FOR_MASKED_LM_MAPPING_NAMES)

import data_utils
import eval_utils
import low_level_features
import run_utils
import speech_models
from data_utils import DatasetError
from run_utils import UsageError
from speech_models import ModelError

logger = logging.getLogger(__name__)

KINDS = ("speech", "text")
TRIM = (data_utils.TRIM_START_TRS, data_utils.TRIM_END_TRS)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Write a --target_features file of brain_trainer_story.py for the "
                    "BigSLM-tuned (speech) or LM-tuned (text) baseline.",
        formatter_class=run_utils.HelpFormatter)
    commands = parser.add_subparsers(dest="kind", required=True)
    speech = commands.add_parser(
        "speech", formatter_class=run_utils.HelpFormatter,
        help="a speech encoder's layer features on the TR grid (BigSLM-tuned)",
        description="A speech encoder's hidden state of --layer on each story's TR grid, "
                    "extracted as brain_evaluate.py extracts its layer features (sliding "
                    "windows, last frame, Lanczos to the TR centres), cut to the response rows.")
    text = commands.add_parser(
        "text", formatter_class=run_utils.HelpFormatter,
        help="a causal text LM's word states on the TR grid (LM-tuned)",
        description="A causal text LM's hidden state of --layer for each word of each story's "
                    "word tier, with exactly --context_words preceding words as context, at the "
                    "word's midpoint, Lanczos-resampled to the TR centres, cut to the response "
                    "rows.")
    for command in (speech, text):
        command.add_argument("--model_name", required=True,
                             help="checkpoint folder or hub id already in the HF cache "
                                  "(nothing is downloaded)")
        command.add_argument("--data_dir", required=True,
                             help="ds003020 root: the folder holding stimuli/ and derivative/")
        command.add_argument("--out", required=True,
                             help="the HDF5 file to write (e.g. outputs/targets/MODEL.hf5)")
        command.add_argument("--layer", type=int, default=None,
                             help="hidden-state index (0: the embeddings, k: the output of "
                                  "block k); default: the model's last")
        command.add_argument("--stories", nargs="+", default=None,
                             help="stories to write; default: every story with responses of "
                                  "some subject (the trainer needs its training and validation "
                                  "stories, the evaluator's semantic preference also the test "
                                  "story)")
        command.add_argument("--tr_source", choices=data_utils.TR_SOURCES, default="respdict",
                             help="TR timing (see data_utils.tr_times); use the trainer's")
        command.add_argument("--tr_path", default=None,
                             help="folder of .report files or the .jbl file (--tr_source)")
        command.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        command.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                             help="auto: bf16 on a GPU that supports it, else fp32")
        command.add_argument("--overwrite", action="store_true",
                             help="replace an existing --out file (once the new one is complete)")
        command.add_argument("--log_level", default="INFO", type=str.upper,
                             choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="logging level")
    speech.add_argument("--context_s", type=float, default=16.0,
                        help="window context, seconds (brain_evaluate.py's)")
    speech.add_argument("--chunk_s", type=float, default=0.1,
                        help="window step, seconds (brain_evaluate.py's)")
    speech.add_argument("--batch_size", type=int, default=16, help="windows per forward pass")
    speech.add_argument("--cache_dir", default=None,
                        help="window-feature cache, brain_evaluate.py's format (default: "
                             "feature_cache/ beside --out)")
    text.add_argument("--context_words", type=int, default=100,
                      help="preceding words in each word's context (fewer at a story's start)")
    text.add_argument("--batch_size", type=int, default=32,
                      help="word contexts per forward pass")
    args = parser.parse_args(argv)
    command = speech if args.kind == "speech" else text
    run_utils.check_at_least(command, args, 1, "batch_size")
    run_utils.check_at_least(command, args, 0, "layer")
    if args.kind == "speech":
        for flag in ("context_s", "chunk_s"):
            if not getattr(args, flag) > 0:
                command.error(f"--{flag} must be positive")
        if args.cache_dir is None:
            args.cache_dir = str(Path(args.out).parent / "feature_cache")
    else:
        run_utils.check_at_least(command, args, 0, "context_words")
    return args


def run(args):
    """Write the file, in this process and the others of its torchrun process group (if any)."""
    with speech_models.process_group(args.device) as processes:
        return make_target_features(args, processes)


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


def make_target_features(args, processes):
    """The whole run: check the output and the stories, compute, and (rank 0) write ``--out``.
    Returns the path written (None on the other ranks)."""
    out = Path(args.out)
    check_output(out, args.overwrite)
    stories = choose_stories(args.data_dir, args.stories)
    for story in stories:  # every story's TR grid and files, before any model is loaded
        response_grid(args.data_dir, story, args.tr_source, args.tr_path)
    dtype = speech_models.autocast_dtype(args.precision, processes.device)
    make = speech_targets if args.kind == "speech" else text_targets
    features, settings = make(args, stories, processes.device, dtype)
    if not processes.is_main:
        return None
    settings = {"kind": args.kind, "model": args.model_name, "stories": stories,
                "tr_source": args.tr_source, "tr_path": args.tr_path,
                "trim_trs": list(TRIM), **settings}
    write_target_features(out, features, settings, args.overwrite)
    logger.info("wrote %s: %d stories, %d features (%s, layer %d)", out, len(features),
                next(iter(features.values())).shape[1], args.kind, settings["layer"])
    return out


def check_output(path, overwrite):
    """Stop before any work when ``path`` exists and may not be replaced, or is a folder."""
    if path.is_dir():
        raise run_utils.OutputExistsError(f"--out {path} is a folder; give the path of the "
                                          "HDF5 file to write (e.g. targets/MODEL.hf5)")
    if path.exists() and not overwrite:
        raise run_utils.OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def choose_stories(data_dir, requested):
    """``requested``, or every story with responses of some subject (sorted)."""
    if requested:
        return list(dict.fromkeys(requested))
    stories = sorted({story for subject in data_utils.list_subjects(data_dir)
                      for story in data_utils.list_stories(data_dir, subject)})
    if not stories:
        raise UsageError(f"{data_utils.derivative_dir(data_dir) / 'preprocessed_data'}: no "
                         "responses of any subject; name the stories with --stories")
    return stories


def response_grid(data_dir, story, tr_source="respdict", tr_path=None):
    """The TR centres of a story ((grid TRs,) float64 s), checked to leave exactly its response
    rows (``data_utils.response_rows``) once ``TRIM`` TRs are cut at the start and the end."""
    centres = data_utils.tr_times(data_dir, story, tr_source, tr_path)
    rows = data_utils.response_rows(data_dir, story)
    if len(centres) - sum(TRIM) != rows:
        raise DatasetError(f"story {story!r}: the {tr_source} TR timing has {len(centres)} TRs, "
                           f"which leave {len(centres) - sum(TRIM)} rows once {TRIM[0]} and "
                           f"{TRIM[1]} are cut, but respdict.json gives {rows} response rows; "
                           "use --tr_source respdict or TR files of this release")
    return centres


# ----------------------------------------------------------------------------- speech (BigSLM)

def speech_targets(args, stories, device, dtype):
    """A speech encoder's ``--layer`` on each story's response rows: (story -> (rows, hidden)
    float32, settings). The WAVs are checked to cover their stories before the model loads."""
    for story in stories:
        duration = data_utils.audio_duration(data_utils.stimulus_path(args.data_dir, story))
        problem = data_utils.stimulus_problem(args.data_dir, story, duration, None,
                                              args.tr_source, args.tr_path)
        if problem:
            raise DatasetError(problem)
    encoder = speech_models.load_encoder(args.model_name, device)
    layer = check_layer(args.layer, encoder.depth, args.model_name)
    extraction = speech_models.Extraction(args.data_dir, args.cache_dir, args.context_s,
                                           args.chunk_s, args.batch_size, False, dtype,
                                           args.tr_source, args.tr_path)
    grid = speech_models.model_tr_features(encoder, [layer], stories, extraction, device)[layer]
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

def text_targets(args, stories, device, dtype):
    """A causal text LM's ``--layer`` word states on each story's response rows: (story ->
    (rows, hidden) float32, settings). Every word tier is read before the model loads; under
    torchrun the stories are dealt out to the processes by their word counts."""
    words = {story: story_words(args.data_dir, story) for story in stories}
    model, tokenizer = load_text_model(args.model_name, device, dtype)
    layer = check_layer(args.layer, model.config.num_hidden_layers, args.model_name)
    mine = [stories[i] for i in speech_models.process_items([len(words[s]) for s in stories])]
    part = {}
    for story in tqdm(mine, desc="stories", unit="story",
                      disable=not speech_models.is_main_process()):
        states = word_states(model, tokenizer, [word for _, _, word in words[story]], layer,
                             args.context_words, args.batch_size, device, story)
        times = np.array([(start + end) / 2 for start, end, _ in words[story]])
        grid = low_level_features.to_tr_grid(states, times, response_grid(
            args.data_dir, story, args.tr_source, args.tr_path))
        part[story] = eval_utils.trim_rows(grid, TRIM)
    features = {}
    for done in speech_models.gather_from_processes(part):
        features.update(done)
    return {story: features[story] for story in stories}, {
        "layer": layer, "fingerprint": speech_models.fingerprint(model),
        "context_words": args.context_words, "word_time": "midpoint",
        "weights_dtype": str(dtype or torch.float32),
        "tokenizer": {"class": type(tokenizer).__name__, "size": len(tokenizer)}}


def story_words(data_dir, story):
    """The word tier of a story (``data_utils.load_words``); a story without words is a
    DatasetError naming its TextGrid."""
    words = data_utils.load_words(data_dir, story)
    if not words:
        raise DatasetError(f"{data_utils.textgrid_path(data_dir, story)}: its word tier holds no "
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
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        with speech_models.quiet_transformers():
            model = AutoModel.from_pretrained(name_or_path, config=config,
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
    if (model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
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
        for first in tqdm(range(0, len(order), batch_size), desc=story, unit="batch",
                          leave=False, disable=not speech_models.is_main_process()):
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
    with run_utils.atomic_output(path, overwrite) as tmp, h5py.File(tmp, "w") as handle:
        for story, values in features.items():
            handle.create_dataset(story, data=np.asarray(values, np.float32))
        for name in ("kind", "model", "layer", "fingerprint"):
            handle.attrs[name] = settings[name]
        handle.attrs["settings"] = run_utils.json_text(settings)
        handle.attrs["run"] = run_utils.json_text(run_utils.run_metadata())


if __name__ == "__main__":
    sys.exit(main())
