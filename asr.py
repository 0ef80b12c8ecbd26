"""CTC speech recognition on TIMIT, per model and layer: the library of ``eval_asr.py``
(docs/method.md#downstream-tasks: ASR, scored 1 - WER).

Targets: ``characters`` (default), the words of the ``.WRD`` file (TIMIT's lowercase spelling,
apostrophes kept, no punctuation) with a space between two words and at both ends, scored by
the word error rate (reported as 1 - WER) and the character error rate of the words joined by
single spaces (spaces at the ends of a hypothesis, or repeated, do not count); or ``phones``,
the 39 Lee & Hon classes of the ``.PHN`` file in order (the folding of ``eval_phonemes.py``;
``q`` dropped, a class repeated at once said once), scored by the phone error rate (1 - PER).
The spaces at the ends give the silence before and after the words a token, as ``sil`` (from
``h#``) does for the phones: otherwise a CTC head may spell the first or last letter into that
silence. An error rate is the edit distance (substitutions, insertions, deletions) summed over
the test utterances, divided by the reference length summed over them; an empty transcript
scores 1 - WER = 0, and more insertions than reference words make it negative. The output
tokens are the CTC blank (index 0) and the tokens of the training transcripts.

Model, for each model and layer: one linear layer from the layer's hidden state at every frame
to the tokens, trained with ``torch.nn.CTCLoss`` and decoded greedily (the most likely token of
each frame, repeats collapsed, blanks dropped).

- frozen, the probing setting (``head_transcripts``): the frame features of each layer are
  extracted once, one utterance per forward pass, and cached per model, layer and list of
  audio files (``frame_features``); standardised with the training frames' mean and std;
  Adam, lr 1e-3 (the probes' rate).
- fine-tuned, the paper's setting (``finetuned_transcripts``): the encoder up to the layer
  trains with the head, from a fresh copy of the checkpoint for each layer; the CNN feature
  encoder (Whisper: conv1, conv2, positions) stays frozen as in brain-tuning; Adam with
  brain-tuning's two learning rates (docs/method.md#brain-tuning): 5e-5 for the encoder, 1e-4
  for the head, constant; dropout and SpecAugment as the checkpoint's config sets them.

Both run ``Training.num_epochs`` passes over the training utterances in a random order
(``Training.seed``), ``Training.batch_size`` utterances per Adam step (fine-tuned, each
utterance is encoded alone, without padding, as the frozen features are). Under torchrun the
processes share out the utterances to encode and each batch, their gradients summed before
every step (``train_ctc``).
"""

import copy
import dataclasses
import logging
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

import audio_io
import downstream_data
import layer_features
import plots
import probing
import processes
import run_utils
import speech_models
from run_utils import DatasetError

# loaded on first use, so that --help and argument errors appear at once
brain_model = run_utils.LazyModule("brain_model")
torch = run_utils.LazyModule("torch")

logger = logging.getLogger(__name__)

TARGETS = ("characters", "phones")
BLANK = "<blank>"  # token 0 of every vocabulary: the CTC blank
# target -> (key of the headline score in the rows, its name, the other scores)
SCORES = {"characters": ("one_minus_wer", "1 - WER", ("wer", "cer")),
          "phones": ("one_minus_per", "1 - PER", ("per",))}
PROBE_LR = 1e-3  # the linear probes' Adam rate (docs/method.md#downstream-tasks)
# brain-tuning's Adam rates (docs/method.md#brain-tuning)
FINETUNE_HEAD_LR, FINETUNE_BACKBONE_LR = 1e-4, 5e-5
FRAME_MEMORY_GB = 8.0  # default --frame_memory_gb


def task_name(target, finetune):
    """``asr``, with ``_phones`` and ``_finetune`` for those settings: the ``task`` of
    results.json, the default folder name's suffix and the plot's name."""
    return "asr" + ("_phones" if target == "phones" else "") + ("_finetune" if finetune else "")


class Training(NamedTuple):
    """How a CTC head (and when fine-tuned the encoder) is trained."""

    num_epochs: int = 20
    batch_size: int = 16
    lr: float = PROBE_LR
    backbone_lr: float = FINETUNE_BACKBONE_LR
    seed: int = 0


def asr_examples(data_path, split, target, include_sa=False, max_examples=None, seed=0):
    """TIMIT utterances of ``split`` ("train" or "test") with their transcripts, from the TIMIT
    root ``data_path`` or a ``downstream_data.HubDataset``: dicts with ``audio`` (the file or
    dataset row), ``tokens`` (list of str, see ``transcript_tokens``) and ``speaker``; the SA
    sentences left out unless ``include_sa``, a random subset of ``max_examples`` when given
    (as the other probes draw it)."""
    if isinstance(data_path, downstream_data.HubDataset):
        examples = hub_asr_examples(data_path, split, target, include_sa)
    else:
        examples = [{"audio": utterance["wav"], "tokens": transcript_tokens(utterance, target),
                     "speaker": utterance["speaker"]}
                    for utterance in downstream_data.timit_utterances(data_path, split.upper())
                    if include_sa or utterance["sentence_type"] != "SA"]
        where = downstream_data.timit_split_dir(data_path, split.upper())
        if not examples:
            raise DatasetError(f"{where}: only SA sentences; pass --include_sa to use them")
    return probing.subset_examples(examples, max_examples, seed)


def hub_asr_examples(source, split, target, include_sa=False):
    """``asr_examples`` from a hub copy of TIMIT laid out as ``timit_asr``: the transcript
    from ``word_detail`` (or ``phonetic_detail`` for phones; a text column also serves for
    characters), the sentence type from ``sentence_type`` (or the file name)."""
    layout = source.layout("asr_phones" if target == "phones" else "asr")
    if layout.splits[0] == layout.splits[1]:
        raise DatasetError(f"{source.path}: --hf_split_train and --hf_split_test are both "
                           f"{layout.splits[0]!r}; speech recognition needs a held-out split")
    table, where, audios = downstream_data.hub_split(
        layout, layout.splits[split == "test"], source.audio_column)
    transcripts = downstream_data.hub_column(table, layout.label_column, where)
    if include_sa:
        kinds = [None] * len(audios)
    elif "sentence_type" in table.features:
        kinds = downstream_data.hub_column(table, "sentence_type", where)
    else:
        kinds = [Path(audio.stored_path()).stem[:2] for audio in audios]
    speakers = (downstream_data.hub_column(table, "speaker_id", where)
                if "speaker_id" in table.features else [None] * len(audios))
    examples = []
    for audio, transcript, kind, speaker in zip(audios, transcripts, kinds, speakers):
        if kind is not None and kind.upper() == "SA":
            continue
        if target == "phones":
            tokens = downstream_data.hub_phones(transcript, audio)
            if not tokens:
                raise DatasetError(f"{audio}: no phones; the transcript is empty")
        else:
            tokens = list(f" {' '.join(downstream_data.hub_words(transcript, audio))} ")
        examples.append({"audio": audio, "tokens": tokens, "speaker": speaker})
    if not examples:
        raise DatasetError(f"{where}: no utterances" + ("" if include_sa else
                                                       " but SA sentences; pass --include_sa"))
    return examples


def transcript_tokens(utterance, target):
    """An utterance's transcript as tokens: the characters of its ``.WRD`` words with a space
    between two words and at both ends, or (``target`` "phones") its 39 folded phones (list of
    str)."""
    if target == "phones":
        path = utterance["phn"]
        phones = downstream_data.timit_phone_sequence(downstream_data.read_timit_labels(path),
                                                      path)
        if not phones:
            raise DatasetError(f"{path}: no phones; the transcript is empty, get the file again")
        return phones
    if utterance["wrd"] is None:
        raise DatasetError(f"{utterance['wav']}: no .WRD file beside it (the words that "
                           "--target characters recognises); get it, or use --target phones")
    return list(f" {' '.join(downstream_data.timit_words(utterance['wrd']))} ")


def token_vocabulary(train, test=()):
    """The CTC output tokens: ``BLANK`` (index 0), then the tokens of the training transcripts,
    sorted (tuple of str). Test tokens that no training transcript has can never be output: a
    warning names them."""
    seen = {token for example in train for token in example["tokens"]}
    unseen = sorted({token for example in test for token in example["tokens"]} - seen)
    if unseen:
        logger.warning("TIMIT: %d test token(s) occur in no training transcript (%s); they count "
                       "as errors", len(unseen), " ".join(map(repr, unseen)))
    return (BLANK, *sorted(seen))


def token_ids(examples, vocabulary):
    """The examples' transcripts as token indices into ``vocabulary`` (list of int lists)."""
    index = {token: i for i, token in enumerate(vocabulary)}
    return [[index[token] for token in example["tokens"]] for example in examples]


def evaluate_model(label, checkpoint, train, test, vocabulary, target, layers, finetune,
                   cache_dir, training, device, dtype, frame_memory=FRAME_MEMORY_GB * 2**30):
    """Result rows (one per layer: ``layers``, or by default all, the last with ``finetune``)
    of one model: the scores of ``asr_scores`` and the sizes. Frozen, the layers' frame
    features are extracted ``layers_per_pass`` at a time (``frame_memory``: bytes)."""
    encoder = speech_models.load_encoder(checkpoint, device)
    layers = run_utils.choose_layers(layers, encoder.depth,
                                     default=[encoder.depth] if finetune else None)
    labels = token_ids(train, vocabulary)
    per_pass = 1 if finetune else layers_per_pass(encoder, [*train, *test], frame_memory)
    pending = {"train": {}, "test": {}}  # layers extracted in an earlier layer's pass
    rows = []
    for index, layer in enumerate(layers):
        if finetune:
            decoded = finetuned_transcripts(encoder, layer, train, test, labels, len(vocabulary),
                                            training, device, dtype)
        else:
            group = layers[index:index + per_pass]
            x_train, frames_train = frame_features(cache_dir, encoder, train, layer, device,
                                                   dtype, group, pending["train"])
            x_test, frames_test = frame_features(cache_dir, encoder, test, layer, device, dtype,
                                                 group, pending["test"])
            decoded = head_transcripts(x_train, frames_train, labels, x_test, frames_test,
                                       len(vocabulary), training, device)
        hypotheses = [[vocabulary[i] for i in ids] for ids in decoded]
        scores = asr_scores([example["tokens"] for example in test], hypotheses, target)
        rows.append({"model": label, "layer": layer, **scores, "n_train": len(train),
                     "n_test": len(test)})
        logger.info("%s layer %d: %s", label, layer,
                    ", ".join(f"{key} {value:.3f}" for key, value in scores.items()))
    return rows


def layers_per_pass(encoder, examples, memory):
    """How many layers' frame features of ``examples`` fit in ``memory`` bytes (at least 1):
    float32, 50 frames per second of audio (both families' 20 ms frames)."""
    seconds = sum(audio_io.audio_duration(example["audio"]) for example in examples)
    per_layer = 50 * seconds * speech_models.hidden_size(encoder.backbone) * 4
    return max(1, int(memory // max(per_layer, 1)))


def frame_features(cache_dir, encoder, examples, layer, device, dtype, group=None,
                   pending=None):
    """Hidden states of ``layer`` at every frame of the examples, cached per model, layer and
    list of audio files.

    group : the layers to extract in the same forward passes when ``layer`` must be extracted
        (default: ``layer`` alone; those cached already are left out); the others wait in
        ``pending`` (dict layer -> (features, frames)) for their own calls, which take them
        from there instead of extracting again.

    Returns
    -------
    (frames of all examples, hidden) float32, the examples' frames one after the other, and
    (n_examples,) int64, the frames of each.
    """
    pending = {} if pending is None else pending
    path, text = _frame_cache(cache_dir, encoder, examples, layer, dtype)

    def extract(missing):  # under torchrun each process encodes a share of the utterances
        if layer not in pending:
            others = [k for k in group or () if k != layer and k not in pending and not
                      run_utils.cached_names(_frame_cache(cache_dir, encoder, examples, k,
                                                          dtype)[0], [k])]
            pending.update(extract_layers(encoder, examples, sorted({layer, *others}), device,
                                          dtype))
        features, frames = pending.pop(layer)
        return {layer: features}, {"frames": frames}

    arrays, extras = run_utils.cached_arrays(path, [layer], extract, text)
    pending.pop(layer, None)  # cached before: the copy of a shared pass is not needed
    return arrays[layer], extras["frames"]


def _frame_cache(cache_dir, encoder, examples, layer, dtype):
    """The cache file of a layer's frame features and the settings it is keyed by."""
    settings = {**audio_io.audio_identity(e["audio"] for e in examples), "autocast": str(dtype),
                "preprocessor": encoder.preprocessor.digest(), "layer": layer}
    return run_utils.cache_path(cache_dir, f"timit_frames_layer{layer}", settings,
                                model_key=encoder.fingerprint)


def extract_layers(encoder, examples, layers, device, dtype):
    """The frame features of ``layers`` for the examples, one forward pass per utterance up to
    the highest: dict layer -> ((frames of all examples, hidden) float32, (n_examples,)
    frames of each). Under torchrun each process encodes a share of the utterances."""
    share = examples[processes.process_share(len(examples))]
    waveforms = probing.utterance_waveforms(share, encoder.preprocessor.sampling_rate,
                                            encoder.family)
    encoder.backbone.eval()
    hidden = []
    names = " ".join(map(str, layers))
    with torch.inference_mode():
        for waveform in run_utils.progress(
                waveforms, desc=f"layer{'s' * (len(layers) > 1)} {names} frames", unit="utt",
                total=len(share), disable=not processes.is_main_process()):
            states = utterance_states(encoder, waveform, layers, device, dtype)
            hidden.append({k: state.float().cpu().numpy() for k, state in states.items()})
    hidden = [h for part in processes.gather_from_processes(hidden) for h in part]
    frames = np.array([len(h[layers[0]]) for h in hidden])
    return {k: (np.concatenate([h[k] for h in hidden]), frames) for k in layers}


def utterance_states(encoder, waveform, layers, device, dtype=None):
    """The hidden states of ``layers`` at each frame of one utterance, one forward pass: dict
    layer -> (frames, hidden) tensor (Whisper: the frames of real audio)."""
    inputs = torch.from_numpy(encoder.preprocessor(waveform[None])).to(device)
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        states = layer_features.layer_hidden_states(encoder.backbone, encoder.family, inputs,
                                                   layers)
    frames = (encoder.preprocessor.whisper_frames(len(waveform))
              if encoder.family == "whisper" else None)
    return {layer: state[0, :frames] for layer, state in states.items()}


def utterance_hidden(encoder, waveform, layer, device, dtype=None, cut=False):
    """The hidden state of ``layer`` at each frame of one utterance: (frames, hidden) tensor
    (Whisper: the frames of real audio, not of the padding to 30 s).

    waveform : (samples,) float32 at the encoder's sampling rate
    cut : the output of the encoder cut after ``layer`` (with its final layer norm, where it
        has one), which layers dropped in training (layerdrop) leave in place, instead of
        the hidden state ``layer`` of ``layer_hidden_states``
    """
    if not cut:
        return utterance_states(encoder, waveform, [layer], device, dtype)[layer]
    inputs = torch.from_numpy(encoder.preprocessor(waveform[None])).to(device)
    whisper = encoder.family == "whisper"
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        with layer_features.first_layers(encoder.backbone, layer):
            stack = encoder.backbone.encoder if whisper else encoder.backbone
            hidden = stack(inputs).last_hidden_state[0]
    return hidden[:encoder.preprocessor.whisper_frames(len(waveform)) if whisper else None]


def head_transcripts(x_train, frames_train, labels, x_test, frames_test, n_tokens,
                     training=Training(), device="cpu"):
    """Train a linear CTC head on frozen frame features and decode the test utterances.

    Parameters
    ----------
    x_train, x_test : (frames, hidden) float32, the utterances' frames one after the other;
        standardised with the training frames' mean and std (constant columns only centred)
    frames_train, frames_test : (utterances,) frames of each utterance
    labels : per training utterance, its token indices (1 .. n_tokens - 1; 0 is the blank)
    training : epochs, batch size, ``lr`` and seed (the global RNG is left untouched)

    Returns
    -------
    Per test utterance, the greedily decoded token indices (list of int lists).
    """
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0

    def utterances(x, frames):
        standard = torch.from_numpy(((x - mean) / std).astype(np.float32)).to(device)
        return torch.split(standard, [int(n) for n in frames])

    train, test = utterances(x_train, frames_train), utterances(x_test, frames_test)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        head = torch.nn.Linear(x_train.shape[1], n_tokens).to(device)

    def batch_log_probs(batch, step):
        padded = torch.nn.utils.rnn.pad_sequence([train[i] for i in batch])  # (T, batch, hidden)
        return head(padded).log_softmax(dim=-1), torch.tensor([len(train[i]) for i in batch])

    train_ctc(batch_log_probs, labels, torch.optim.Adam(head.parameters(), lr=training.lr),
              training)
    with torch.no_grad():
        return [greedy_decode(head(x)) for x in test]


def finetuned_transcripts(encoder, layer, train, test, labels, n_tokens, training=Training(),
                          device="cpu", dtype=None):
    """Fine-tune a copy of ``encoder`` up to ``layer`` with a new linear CTC head and decode the
    test utterances.

    The CNN feature encoder (Whisper: conv1, conv2, positions, decoder) stays frozen, as in
    brain-tuning (``brain_model.BrainTuningModel.freeze``); Adam with ``training.backbone_lr``
    for the encoder and ``training.lr`` for the head. The RNGs of initialisation, order,
    dropout, SpecAugment and layerdrop are seeded with ``training.seed`` (the draws of each
    utterance's forward pass with the seed, the step and the utterance, so that any number of
    torchrun processes draws the same; the global states are put back afterwards). ``encoder``
    itself is not changed.

    train, test : examples (dicts with ``audio``); labels : per training example, its token
    indices (1 .. n_tokens - 1). Returns per test example the decoded token indices.
    """
    device = torch.device(device)
    rate = encoder.preprocessor.sampling_rate
    main = processes.is_main_process()
    waveforms = list(run_utils.progress(probing.utterance_waveforms(train, rate, encoder.family),
                                        desc="reading audio", unit="utt", total=len(train),
                                        disable=not main))
    with processes.seeded(training.seed):
        model = brain_model.BrainTuningModel(copy.deepcopy(encoder.backbone), encoder.family,
                                               n_tokens).to(device)
        model.freeze()
        tuned = dataclasses.replace(encoder, backbone=model.backbone)
        optimizer = torch.optim.Adam([
            {"params": [p for p in model.backbone.parameters() if p.requires_grad],
             "lr": training.backbone_lr},
            {"params": model.head.parameters(), "lr": training.lr}])

        def batch_log_probs(batch, step):
            logits = []
            for i in batch:  # draws seeded per step and utterance: the same in any process
                processes.seed_everything(int(np.random.SeedSequence(
                    [training.seed, step, i]).generate_state(1)[0]))
                logits.append(model.head(utterance_hidden(tuned, waveforms[i], layer, device,
                                                          dtype, cut=True).float()))
            return (torch.nn.utils.rnn.pad_sequence(logits).log_softmax(dim=-1),
                    torch.tensor([len(x) for x in logits]))

        model.train()
        train_ctc(batch_log_probs, labels, optimizer, training)
    model.eval()
    with torch.inference_mode():
        return [greedy_decode(model.head(utterance_hidden(tuned, waveform, layer, device, dtype,
                                                          cut=True).float()))
                for waveform in run_utils.progress(
                    probing.utterance_waveforms(test, rate, encoder.family), desc="decoding",
                    unit="utt", total=len(test), disable=not main)]


def train_ctc(batch_log_probs, labels, optimizer, training):
    """``training.num_epochs`` passes over the training utterances in a random order (seeded
    with ``training.seed``), an ``optimizer`` step of the mean CTC loss (blank 0, each
    utterance's loss over its transcript's length, as ``torch.nn.CTCLoss`` averages) per
    ``training.batch_size`` utterances. Under torchrun each process computes the loss of a
    share of each batch and the gradients are summed over the processes before the step, so
    every process takes the step one process would.

    batch_log_probs(indices, step) -> ((frames, batch, tokens) log-probabilities, padded at the
    end, and (batch,) frames of each utterance); ``step`` counts the optimizer steps from 0.
    An utterance with fewer frames than its transcript needs (a frame per token, and a blank
    between repeated ones) adds no loss; a warning counts them. Returns the mean loss of each
    epoch (list of float).
    """
    ctc = torch.nn.CTCLoss(blank=0, reduction="none", zero_infinity=True)
    generator = torch.Generator().manual_seed(training.seed)
    targets = [torch.tensor(ids, dtype=torch.long) for ids in labels]
    needed = [len(ids) + sum(a == b for a, b in zip(ids, ids[1:])) for ids in labels]
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    device = parameters[0].device
    losses, too_short = [], torch.zeros(len(labels), device=device)
    bar = run_utils.progress(range(training.num_epochs), desc="CTC epochs", unit="epoch",
                             disable=not processes.is_main_process())
    step = 0
    for _ in bar:
        order = torch.randperm(len(labels), generator=generator).tolist()
        total = torch.zeros(1, dtype=torch.float64, device=device)
        for start in range(0, len(order), training.batch_size):
            batch = order[start:start + training.batch_size]
            mine = batch[processes.process_share(len(batch))]
            optimizer.zero_grad()
            if mine:
                log_probs, frames = batch_log_probs(mine, step)
                too_short[[i for i, n in zip(mine, frames.tolist()) if n < needed[i]]] = 1
                lengths = torch.tensor([len(targets[i]) for i in mine])
                per_utterance = ctc(log_probs, torch.cat([targets[i] for i in mine])
                                    .to(log_probs.device), frames, lengths)
                loss = (per_utterance / lengths.to(per_utterance.device)).sum() / len(batch)
                loss.backward()
                total += loss.detach().double() * len(batch)
            processes.sum_gradients(parameters)
            optimizer.step()
            step += 1
        processes.sum_across_processes([total])
        losses.append(total.item() / len(order))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    processes.sum_across_processes([too_short])
    if too_short.any():
        logger.warning("%d of %d training utterances have fewer frames than their transcript "
                       "needs; CTC learns nothing from them", int((too_short > 0).sum()),
                       len(labels))
    logger.info("CTC loss: %.3f after the first epoch, %.3f after the last", losses[0],
                losses[-1])
    return losses


def greedy_decode(logits, blank=0):
    """Greedy CTC decoding of one utterance: the most likely token of each frame, repeats
    collapsed, blanks dropped.

    logits : (frames, tokens) scores or log-probabilities (tensor or array)
    Returns the token indices (list of int).
    """
    best = torch.as_tensor(logits).argmax(dim=-1).tolist()
    return [token for k, token in enumerate(best)
            if token != blank and (k == 0 or token != best[k - 1])]


def edit_distance(reference, hypothesis):
    """Levenshtein distance between two token sequences: the fewest substitutions, insertions
    and deletions that turn ``reference`` into ``hypothesis`` (int)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def error_rate(references, hypotheses):
    """Edit distances summed over utterances / reference tokens summed over them (float)."""
    errors = sum(edit_distance(ref, hyp) for ref, hyp in zip(references, hypotheses, strict=True))
    return errors / sum(len(ref) for ref in references)


def asr_scores(references, hypotheses, target):
    """Scores of transcripts (lists of tokens): for "phones" ``per`` and ``one_minus_per``;
    for "characters" ``wer`` (over the words, split at spaces), ``one_minus_wer`` and ``cer``
    (over the characters of the words joined by single spaces: leading, trailing and repeated
    spaces of a hypothesis do not count)."""
    if target == "phones":
        per = error_rate(references, hypotheses)
        return {"one_minus_per": 1.0 - per, "per": per}
    truth = ["".join(tokens).split() for tokens in references]
    said = ["".join(tokens).split() for tokens in hypotheses]
    wer = error_rate(truth, said)
    cer = error_rate([" ".join(words) for words in truth], [" ".join(words) for words in said])
    return {"one_minus_wer": 1.0 - wer, "wer": wer, "cer": cer}


def write_results(out_dir, rows, facts):
    """results.json (``facts`` and the rows), results.csv and <task>.png (the headline score
    per layer, one line per model)."""
    run_utils.write_json(out_dir / "results.json", {**facts, "results": rows})
    run_utils.write_csv(out_dir / "results.csv", rows)
    series = {}
    for row in rows:
        series.setdefault(row["model"], {})[row["layer"]] = row[facts["score"]]
    plots.plot_per_layer(out_dir / f"{facts['task']}.png", series,
                         f"{facts['score_name']} (test)",
                         f"CTC speech recognition: {facts['target']}, "
                         f"{'fine-tuned encoder' if facts['finetune'] else 'frozen encoder'} "
                         f"(TIMIT, {rows[0]['n_test']} test utterances)")


if __name__ == "__main__":
    sys.exit("asr.py is a library module with no command line; run eval_asr.py (--help lists its "
             "flags)")
