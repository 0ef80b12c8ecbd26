"""asr.py and eval_asr.py: the edit distance, greedy CTC decoding, the scores, and the CLI on
the synthetic TIMIT (characters, phones, --finetune, bad input, --config)."""

import csv
import functools
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoModel, WhisperFeatureExtractor

import asr
import brain_model
import downstream_data
import eval_asr
import layer_features
import speech_models
import synthetic_downstream

TRAINING = ["--num_epochs", "100", "--batch_size", "4", "--lr", "1e-2"]


def _save_whisper(out):
    """A small random-weight Whisper encoder of 5 s inputs (d_model 128) without absolute
    positions: a linear CTC head on a random encoder's features would fit where in the
    utterance a token comes rather than how it sounds (a trained encoder has learned better),
    and the 5 s inputs cost a sixth of the 30 s ones."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModel.from_config(speech_models.tiny_config(
            "whisper", d_model=128, encoder_attention_heads=4, encoder_ffn_dim=256,
            max_source_positions=250))
    with torch.no_grad():
        model.encoder.embed_positions.weight.zero_()
    with speech_models.quiet_transformers():
        model.save_pretrained(out)
    WhisperFeatureExtractor(chunk_length=5).save_pretrained(out)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    synthetic_downstream.generate("timit", root / "timit", seed=0)
    _save_whisper(root / "whisper")
    shutil.copytree(root / "whisper", root / "run" / "final")  # the same weights: cached
    speech_models.save_tiny_model(root / "wav2vec2", "wav2vec2", seed=0)
    return root


def _run(setup, *extra, model="whisper"):
    return eval_asr.main(["--data_path", str(setup / "timit"), "--model_name", str(setup / model),
                          "--save_dir", str(setup / "out"), "--cache_dir", str(setup / "cache"),
                          *extra])


def _shuffled_score(setup, target, layer=0):
    """The test score of the head trained as the CLI trains it, on the cached features but
    with the training transcripts shuffled among the utterances: chance."""
    encoder = speech_models.load_encoder(setup / "whisper")
    train, test = (asr.asr_examples(setup / "timit", split, target)
                   for split in ("train", "test"))
    vocabulary = asr.token_vocabulary(train)
    labels = asr.token_ids(train, vocabulary)
    random.Random(0).shuffle(labels)
    x_train, frames_train = asr.frame_features(setup / "cache", encoder, train, layer, "cpu",
                                                    None)
    x_test, frames_test = asr.frame_features(setup / "cache", encoder, test, layer, "cpu",
                                                  None)
    decoded = asr.head_transcripts(x_train, frames_train, labels, x_test, frames_test,
                                        len(vocabulary), asr.Training(100, 4, 1e-2))
    return asr.asr_scores([e["tokens"] for e in test],
                               [[vocabulary[i] for i in ids] for ids in decoded], target)


# ----------------------------------------------------------------------------- scoring

@functools.lru_cache(maxsize=None)
def _levenshtein(a, b):
    """The recursive definition of the edit distance (tuples a, b)."""
    if not a or not b:
        return len(a) + len(b)
    return min(_levenshtein(a[1:], b) + 1, _levenshtein(a, b[1:]) + 1,
               _levenshtein(a[1:], b[1:]) + (a[0] != b[0]))


def test_edit_distance_is_the_levenshtein_distance():
    rng = random.Random(0)
    for _ in range(300):
        a, b = ([rng.choice("abc") for _ in range(rng.randint(0, 7))] for _ in range(2))
        assert asr.edit_distance(a, b) == _levenshtein(tuple(a), tuple(b))
        assert asr.edit_distance(a, b) == asr.edit_distance(b, a)
    assert asr.edit_distance("kitten", "sitting") == 3
    assert asr.edit_distance(list("abcd"), []) == asr.edit_distance([], "abcd") == 4
    assert asr.edit_distance(["the", "cat"], ["the", "cat"]) == 0
    assert asr.edit_distance(["aa", "b"], ["a", "ab"]) == 2  # tokens, not characters


def test_scores_count_words_characters_and_phones():
    # words: "the cat sat" -> "the bat": one substitution, one deletion; characters:
    # c -> b and " sat" deleted (5 of 11); the extra spaces of the hypothesis do not count
    reference, hypothesis = list(" the cat sat "), list("  the   bat ")
    scores = asr.asr_scores([reference], [hypothesis], "characters")
    assert scores == pytest.approx({"one_minus_wer": 1 / 3, "wer": 2 / 3, "cer": 5 / 11})
    # summed over utterances before dividing; an empty hypothesis scores 0, insertions below
    scores = asr.asr_scores([list(" a b "), list(" c ")], [[], list(" c d e ")],
                                 "characters")
    assert scores["wer"] == pytest.approx((2 + 2) / 3) and scores["one_minus_wer"] < 0
    assert asr.asr_scores([list(" a ")], [[]], "characters")["one_minus_wer"] == 0
    phones = asr.asr_scores([["sil", "ah", "b", "sil"]], [["sil", "b", "sil", "sil"]],
                                 "phones")
    assert phones == pytest.approx({"one_minus_per": 0.5, "per": 0.5})


def test_greedy_decoding_collapses_repeats_and_drops_blanks():
    best = [0, 1, 1, 0, 1, 2, 2, 2, 0, 0, 3, 1]  # the most likely token of each frame
    logits = np.full((len(best), 4), -1.0, np.float32)
    logits[np.arange(len(best)), best] = 2.0
    assert asr.greedy_decode(logits) == [1, 1, 2, 3, 1]
    assert asr.greedy_decode(torch.from_numpy(logits).log_softmax(dim=-1)) == [1, 1, 2, 3, 1]
    assert asr.greedy_decode(np.zeros((3, 4))) == []  # ties go to the blank, index 0
    assert asr.greedy_decode(logits, blank=1) == [0, 0, 2, 0, 3]


def test_synthetic_timit_spells_each_phone_with_a_letter(setup):
    for utterance in downstream_data.timit_utterances(setup / "timit", "TRAIN")[:8]:
        phones = [label for _, _, label in downstream_data.read_timit_labels(utterance["phn"])]
        assert phones[0] == phones[-1] == "h#"
        words = " ".join(downstream_data.timit_words(utterance["wrd"]))
        spoken = "".join(" " if phone == "pau" else synthetic_downstream.SPELLING[phone.upper()]
                         for phone in phones[1:-1])
        assert spoken == words
        assert utterance["wav"].with_suffix(".TXT").read_text().split(None, 2)[2] == (
            words.capitalize() + ".\n")
    train = asr.asr_examples(setup / "timit", "train", "characters")
    assert len(train) == 32 and not any(e["audio"].stem.startswith("SA") for e in train)
    assert len(asr.asr_examples(setup / "timit", "train", "phones", include_sa=True)) == 48


# ----------------------------------------------------------------------------- the script

@pytest.fixture(scope="module")
def characters_run(setup):
    """The run on characters (pretrained and tuned, layer 0) and its log text, shared: the
    phones test reuses the frame features it cached."""
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        assert _run(setup, "--model_path", str(setup / "run"), "--layers", "0", *TRAINING) == 0
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return setup / "out" / "whisper_asr", "\n".join(messages)


def test_characters_are_recognised_well_above_chance(setup, characters_run):
    out, log = characters_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"] == "asr" and saved["target"] == "characters"
    assert saved["score"] == "one_minus_wer" and saved["tokens"][:2] == [asr.BLANK, " "]
    assert saved["models"] == {"pretrained": str(setup / "whisper"),
                               "final": str(setup / "run" / "final")}
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["layer"]) for r in rows] == [("pretrained", "0"), ("final", "0")]
    assert set(rows[0]) == {"model", "layer", "one_minus_wer", "wer", "cer", "n_train", "n_test"}
    assert {(r["n_train"], r["n_test"]) for r in rows} == {("32", "16")}  # the SA left out
    assert (out / "asr.png").stat().st_size > 1000
    config = json.loads((out / "run_config.json").read_text())
    assert config["arguments"]["lr"] == 1e-2 and config["finetune"] is False
    chance = _shuffled_score(setup, "characters")
    for row in saved["results"]:
        assert row["one_minus_wer"] == pytest.approx(1 - row["wer"])
        assert 1 - row["cer"] > max(0.6, 1 - chance["cer"] + 0.3), (row, chance)
        assert row["one_minus_wer"] > max(0.3, chance["one_minus_wer"] + 0.3), (row, chance)
    assert "one_minus_wer:" in log and "cer:" in log


def test_phones_are_recognised_from_the_cached_features(setup, characters_run, monkeypatch):
    assert (setup / "cache").is_dir()  # written by the run on characters, same files and layer

    def no_extraction(*args, **kwargs):
        raise AssertionError("frame features were extracted again")

    monkeypatch.setattr(asr, "utterance_hidden", no_extraction)
    monkeypatch.setattr(asr, "utterance_states", no_extraction)
    assert _run(setup, "--target", "phones", "--layers", "0", *TRAINING) == 0
    saved = json.loads((setup / "out" / "whisper_asr_phones" / "results.json").read_text())
    assert saved["task"] == "asr_phones" and saved["score"] == "one_minus_per"
    assert set(saved["tokens"]) <= {asr.BLANK, *downstream_data.TIMIT_39}
    (row,) = saved["results"]
    assert set(row) == {"model", "layer", "one_minus_per", "per", "n_train", "n_test"}
    monkeypatch.undo()
    chance = _shuffled_score(setup, "phones")
    assert row["one_minus_per"] > max(0.6, chance["one_minus_per"] + 0.3), (row, chance)


def test_finetune_trains_the_last_layer_by_default(setup):
    assert _run(setup, "--finetune", "--num_epochs", "1", "--batch_size", "4",
                "--max_examples", "8", model="wav2vec2") == 0
    out = setup / "out" / "wav2vec2_asr_finetune"
    saved = json.loads((out / "results.json").read_text())
    assert saved["finetune"] is True and saved["task"] == "asr_finetune"
    (row,) = saved["results"]
    assert row["layer"] == 2 and row["n_train"] == 8 and row["n_test"] == 8
    arguments = json.loads((out / "run_config.json").read_text())["arguments"]
    assert arguments["lr"] == 1e-4 and arguments["backbone_lr"] == 5e-5
    assert (out / "asr_finetune.png").is_file()


def test_finetuning_trains_a_copy_of_the_encoder_but_its_cnn(setup, monkeypatch):
    encoder = speech_models.load_encoder(setup / "wav2vec2")
    before = speech_models.fingerprint(encoder.backbone)
    models, optimizers = [], []
    original_model, original_train = brain_model.BrainTuningModel, asr.train_ctc

    def model(*args):
        models.append(original_model(*args))
        return models[-1]

    def train(batch_log_probs, labels, optimizer, training):
        optimizers.append(optimizer)
        return original_train(batch_log_probs, labels, optimizer, training)

    monkeypatch.setattr(brain_model, "BrainTuningModel", model)
    monkeypatch.setattr(asr, "train_ctc", train)
    train_set = asr.asr_examples(setup / "timit", "train", "phones", max_examples=4)
    vocabulary = asr.token_vocabulary(train_set)
    decoded = asr.finetuned_transcripts(
        encoder, 1, train_set, train_set[:2], asr.token_ids(train_set, vocabulary),
        len(vocabulary), asr.Training(2, 2, 1e-3, 2e-3))
    assert len(decoded) == 2 and all(0 < i < len(vocabulary) for ids in decoded for i in ids)
    assert speech_models.fingerprint(encoder.backbone) == before  # a copy was tuned
    (tuned,), (optimizer,) = models, optimizers
    backbone, head = optimizer.param_groups
    assert backbone["lr"] == 2e-3 and head["lr"] == 1e-3
    assert {id(p) for p in head["params"]} == {id(p) for p in tuned.head.parameters()}
    original = dict(encoder.backbone.named_parameters())
    changed = {name for name, value in tuned.backbone.named_parameters()
               if not torch.equal(value, original[name])}
    assert changed and not any(name.startswith("feature_extractor.") for name in changed)
    assert any(name.startswith("encoder.layers.0.") for name in changed)
    assert not any(name.startswith("encoder.layers.1.") for name in changed)  # cut after 1


def test_ctc_loss_is_the_mean_over_utterances_of_the_loss_per_transcript_token():
    """One step per epoch over every utterance: the first epoch's loss is that of the initial
    head, which torch's CTCLoss (reduction "mean") gives as well."""
    torch.manual_seed(0)
    frames = [9, 7, 12]
    labels = [[1, 2, 2], [3], [1, 3, 2, 1]]
    inputs = [torch.randn(n, 5) for n in frames]
    head = torch.nn.Linear(5, 4)
    with torch.no_grad():
        padded = torch.nn.utils.rnn.pad_sequence(inputs)
        expected = torch.nn.CTCLoss(blank=0, zero_infinity=True)(
            head(padded).log_softmax(-1), torch.tensor(sum(labels, [])), torch.tensor(frames),
            torch.tensor([len(ids) for ids in labels])).item()

    def batch_log_probs(batch, step):
        return (head(torch.nn.utils.rnn.pad_sequence([inputs[i] for i in batch]))
                .log_softmax(-1), torch.tensor([frames[i] for i in batch]))

    losses = asr.train_ctc(batch_log_probs, labels,
                                torch.optim.Adam(head.parameters(), lr=1e-2),
                                asr.Training(2, 3, 1e-2))
    assert losses[0] == pytest.approx(expected, rel=1e-6)
    assert losses[1] < losses[0]


def test_layers_that_fit_in_memory_share_one_pass_and_equal_one_at_a_time(setup, tmp_path,
                                                                           monkeypatch):
    """Frozen: with room for every layer, each utterance is encoded once for all of them; the
    features (and the cache files) are those of one layer at a time."""
    encoder = speech_models.load_encoder(setup / "wav2vec2")
    train = asr.asr_examples(setup / "timit", "train", "phones", max_examples=6)
    seconds = sum(sf.info(str(e["audio"])).frames / 16000 for e in train)
    per_layer = 50 * seconds * 32 * 4  # 50 frames per second, hidden 32, float32
    assert asr.layers_per_pass(encoder, train, 2.5 * per_layer) == 2
    assert asr.layers_per_pass(encoder, train, 1) == 1
    calls, original = [], layer_features.layer_hidden_states

    def counting(backbone, family, inputs, layers):
        calls.append(list(layers))
        return original(backbone, family, inputs, layers)

    monkeypatch.setattr(layer_features, "layer_hidden_states", counting)
    layers = [0, 1, 2]
    pending = {}
    together = [asr.frame_features(tmp_path / "together", encoder, train, layer, "cpu",
                                        None, layers[index:], pending)
                for index, layer in enumerate(layers)]
    assert calls == [layers] * len(train) and pending == {}
    calls.clear()
    alone = [asr.frame_features(tmp_path / "alone", encoder, train, layer, "cpu", None)
             for layer in layers]
    assert calls == [[layer] for layer in layers for _ in train]
    for (x, frames), (y, frames_alone) in zip(together, alone):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(frames, frames_alone)
    calls.clear()
    again = asr.frame_features(tmp_path / "together", encoder, train, 1, "cpu", None,
                                    layers, pending)
    assert calls == [] and pending == {}  # read from the cache
    np.testing.assert_array_equal(again[0], alone[1][0])
    asr.frame_features(tmp_path / "some", encoder, train, 2, "cpu", None)
    calls.clear()
    for index, layer in enumerate(layers):
        asr.frame_features(tmp_path / "some", encoder, train, layer, "cpu", None,
                                layers[index:], pending)
    assert calls == [[0, 1]] * len(train) and pending == {}  # layer 2 was cached: left out


def test_finetuning_is_repeatable_for_a_seed(setup, monkeypatch):
    """Dropout, SpecAugment masks and layerdrop (numpy's RNG in transformers) are seeded:
    the same seed gives the same losses, and the global random states are put back."""
    encoder = speech_models.load_encoder(setup / "wav2vec2")
    assert encoder.backbone.config.layerdrop > 0 and encoder.backbone.config.mask_time_prob > 0
    train_set = asr.asr_examples(setup / "timit", "train", "phones", max_examples=4)
    vocabulary = asr.token_vocabulary(train_set)
    losses, original = [], asr.train_ctc

    def recording(*args):
        losses.append(original(*args))
        return losses[-1]

    monkeypatch.setattr(asr, "train_ctc", recording)
    np.random.seed(7)
    numpy_next, torch_next = np.random.get_state()[1][:5].copy(), torch.get_rng_state()
    for seed in (0, 0, 1):
        asr.finetuned_transcripts(encoder, 2, train_set, train_set[:1],
                                       asr.token_ids(train_set, vocabulary),
                                       len(vocabulary), asr.Training(2, 2, 1e-3, 1e-3, seed))
    assert losses[0] == losses[1] != losses[2]
    np.testing.assert_array_equal(np.random.get_state()[1][:5], numpy_next)
    assert torch.equal(torch.get_rng_state(), torch_next)


def test_torchrun_on_two_cpu_processes_equals_one_process(setup, tmp_path):
    """torchrun with two processes (gloo on CPU) shares out the utterances to encode and each
    training batch, summing the gradients: rank 0 writes one process's results, frozen and
    --finetune (whose dropout, SpecAugment and layerdrop draws are the same in any
    process)."""
    flags = ["--target", "phones", "--layers", "1", "--num_epochs", "30", "--batch_size", "4",
             "--lr", "1e-2", "--max_examples", "12"]
    finetune = ["--finetune", "--num_epochs", "2", "--backbone_lr", "1e-3"]
    assert _run(setup, *flags, "--exp_name", "single", "--cache_dir", str(tmp_path / "c1"),
                model="wav2vec2") == 0
    assert _run(setup, *flags, *finetune, "--exp_name", "single_tuned", model="wav2vec2") == 0
    repo = Path(eval_asr.__file__).resolve().parent
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", str(repo / "eval_asr.py"), "--data_path", str(setup / "timit"), "--model_name",
            str(setup / "wav2vec2"), "--save_dir", str(tmp_path), "--cache_dir",
            str(tmp_path / "c2")]
    for extra in (["--exp_name", "two"], ["--exp_name", "tuned", *finetune]):
        result = subprocess.run([*base, *flags, *extra], cwd=repo, capture_output=True,
                                text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    for two, one in (("two", "single"), ("tuned", "single_tuned")):
        ours, single = (json.loads((folder / "results.json").read_text())
                        for folder in (tmp_path / two, setup / "out" / one))
        assert [(row["model"], row["layer"]) for row in ours["results"]] == [("pretrained", 1)]
        for mine, theirs in zip(ours["results"], single["results"]):
            assert sorted(mine) == sorted(theirs) and mine["model"] == theirs["model"]
            assert {key: value for key, value in mine.items() if key != "model"} == \
                pytest.approx({key: value for key, value in theirs.items() if key != "model"},
                              rel=1e-6, abs=1e-6)
    with h5py.File(next((tmp_path / "c2").rglob("*.hf5"))) as mine, \
            h5py.File(next((tmp_path / "c1").rglob("*.hf5"))) as theirs:
        np.testing.assert_allclose(mine["layer_1"][()], theirs["layer_1"][()], rtol=1e-5,
                                   atol=1e-6)
    assert json.loads((tmp_path / "tuned" / "results.json").read_text())["finetune"]


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("damage,message", [
    ("no_wrd", "SX13.WAV: no .WRD file beside it"), ("empty_wrd", "SX13.WRD: no words"),
    ("empty_phn", "SX13.PHN: no phones")])
def test_missing_or_empty_transcripts_are_one_line_naming_the_file(setup, tmp_path, caplog,
                                                                   damage, message):
    data = tmp_path / "timit"
    shutil.copytree(setup / "timit", data)
    wav = next(data.glob("TRAIN/*/*/SX13.WAV"))
    if damage == "no_wrd":
        wav.with_suffix(".WRD").unlink()
    else:
        wav.with_suffix(".WRD" if damage == "empty_wrd" else ".PHN").write_text("")
    target = "phones" if damage == "empty_phn" else "characters"
    assert eval_asr.main(["--data_path", str(data), "--model_name", str(setup / "wav2vec2"),
                          "--save_dir", str(tmp_path / "out"), "--target", target]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "out" / "wav2vec2_asr").exists()


@pytest.mark.parametrize("flags", [
    ["--lr", "0"], ["--backbone_lr", "nan"], ["--num_epochs", "0"], ["--batch_size", "0"],
    ["--layers", "0", "-1"], ["--max_examples", "0"], ["--target", "words"]])
def test_bad_flags_are_parser_errors(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as stop:
        eval_asr.main(["--data_path", str(tmp_path), "--model_name", "m", "--save_dir",
                       str(tmp_path / "out"), *flags])
    assert stop.value.code == 2 and flags[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_gives_the_optimiser_defaults(capsys):
    with pytest.raises(SystemExit):
        eval_asr.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: 1e-3, the probes'; with --finetune 1e-4" in text
    assert "--backbone_lr" in text and "(default: 5e-05)" in text
    assert "default: all; with --finetune the last" in text
    args = eval_asr.parse_args(["--data_path", "d", "--model_name", "m/", "--finetune",
                                "--target", "phones"])
    assert args.exp_name == "m_asr_phones_finetune" and args.lr == 1e-4
    assert args.cache_dir == str(Path("outputs/downstream") / "feature_cache")


def test_config_file_section_asr_gives_the_settings(tmp_path, capsys):
    """eval_asr.py reads the section "asr" of a --config file (the probes read "probe"); the
    command line overrides it."""
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"probe": {"num_epochs": 7},
                                  "asr": {"num_epochs": 3, "finetune": True,
                                          "target": "phones"}}))
    base = ["--data_path", "d", "--model_name", "m", "--config", str(config)]
    settings = eval_asr.parse_args(base)
    assert settings.num_epochs == 3 and settings.finetune and settings.lr == 1e-4
    assert settings.exp_name == "m_asr_phones_finetune"
    assert eval_asr.parse_args([*base, "--num_epochs", "5"]).num_epochs == 5
    config.write_text(json.dumps({"asr": {"frame_memory": 2}}))
    with pytest.raises(SystemExit) as stop:
        eval_asr.parse_args(base)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and str(config) in error and "'frame_memory'" in error
