"""brain_trainer_story.py with tiny models of every family on a tiny synthetic dataset."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import (AutoModel, AutoProcessor, AutoTokenizer, BertConfig, BertModel,
                          GenerationConfig, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor,
                          Wav2Vec2ForCTC, Wav2Vec2Processor, WhisperFeatureExtractor,
                          WhisperForConditionalGeneration, WhisperTokenizer)

import brain_trainer_story as trainer
import brain_model
import checkpoints
import damage
import data_utils
import eval_utils
import make_tiny
import model_cards
import noise_ceilings
import run_utils
import speech_models
import synthetic_data
import training_data
import training_log
import training_steps

FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")
FAST = ["--batch_size", "8", "--base_lr", "1e-3", "--linear_layer_lr", "1e-2",
        "--warmup_epochs", "1", "--log_level", "WARNING"]


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """Tiny dataset: 2 training stories of 32-48 rows, noise ceilings precomputed."""
    root = tmp_path_factory.mktemp("train_data")
    data = root / "ds"
    synthetic_data.generate(data, seed=1, subjects=(1, 2), n_train_stories=2, train_trs=60,
                            test_trs=80, n_voxels=40, n_words=12)
    for subject in (1, 2):
        noise_ceilings.get_noise_ceiling(data_utils.Dataset(data), subject,
                                         root / f"UTS0{subject}.npy")
    return data


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """family -> folder of a tiny random-weight checkpoint saved with save_pretrained."""
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for family in FAMILIES:
        folders[family] = root / family
        assert make_tiny.main(["--family", family, "--out", str(folders[family])]) == 0
    return folders


def run(train_data, model, tmp_path, *extra, subject="1"):
    args = ["--model_name", str(model), "--subject", *subject.split(), "--data_dir", str(train_data),
            "--save_dir", str(tmp_path), "--exp_name", "run",
            "--nc_path", *[str(train_data.parent / f"{data_utils.subject_id(s)}.npy")
                           for s in subject.split()], *FAST, *extra]
    return trainer.main(args), tmp_path / "run"


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _snapshot(folder):
    """Relative path -> bytes of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _dead_pid():
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ----------------------------------------------------------------------------- schedules

def test_schedules_match_the_paper():
    factors = [training_steps.backbone_lr_factor(e, 30, 5) for e in range(31)]
    np.testing.assert_allclose(factors[:6], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(factors[5:], np.linspace(1, 0, 26))
    heads = [training_steps.head_lr_factor(e, 0.8, 0.1) for e in range(15)]
    np.testing.assert_allclose(heads, np.maximum(0.8 ** np.arange(15), 0.1))


# ----------------------------------------------------------------------------- every family

@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_tunes_saves_and_reloads(train_data, tiny_models, tmp_path, family):
    code, run_dir = run(train_data, tiny_models[family], tmp_path, "--num_epochs", "2")
    assert code == 0
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([
        run_utils.RUN_MARKER, "checkpoint-epoch1", "checkpoint-epoch2", "final", "last",
        "metrics.jsonl", "run_config.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # lock released
    metrics = _metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(metrics[0]) == {"epoch", "train_loss", "val_loss", "val_corr", "lr_backbone",
                               "lr_head", "seconds"}
    assert metrics[0]["lr_backbone"] == 0.0 and metrics[1]["lr_backbone"] == pytest.approx(1e-3)
    assert metrics[1]["lr_head"] == pytest.approx(1e-2 * 0.8)

    before = AutoModel.from_pretrained(tiny_models[family])
    after = AutoModel.from_pretrained(run_dir / "checkpoint-epoch2")  # epoch 1 has encoder lr 0
    assert type(after) is type(before) is type(AutoModel.from_pretrained(run_dir / "final"))
    old, new = before.state_dict(), after.state_dict()
    assert old.keys() == new.keys()
    frozen = (("encoder.conv1.", "encoder.conv2.", "encoder.embed_positions.", "decoder.")
              if family == "whisper" else ("feature_extractor.",))
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed, "nothing was trained"
    assert not any(k.startswith(frozen) for k in changed), "frozen weights changed"
    assert any(".layers." in k for k in changed)

    cc_max = np.load(train_data.parent / "UTS01.npy")
    voxels = json.loads((run_dir / "final" / "voxels.json").read_text())
    assert voxels == {"UTS01": np.flatnonzero(cc_max > 0.4).tolist()}
    head = load_file(str(run_dir / "final" / "brain_head.safetensors"))
    assert head["weight"].shape == (len(voxels["UTS01"]), after.config.hidden_size
                                    if family != "whisper" else after.config.d_model)
    config = json.loads((run_dir / "final" / "brain_tuning.json").read_text())
    assert config["family"] == speech_models.model_family(after.config)
    assert config["arguments"]["seed"] == 0 and config["epoch"] in (1, 2)
    assert (run_dir / "final" / "preprocessor_config.json").exists()


# ----------------------------------------------------------------------------- learning

def test_loss_falls(train_data, tiny_models, tmp_path):
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "4",
                        "--save_every", "0", "--patience", "0")
    assert code == 0
    losses = [m["train_loss"] for m in _metrics(run_dir)]
    assert losses[-1] < losses[0]
    assert not any(p.name.startswith("checkpoint") for p in run_dir.iterdir())


def _held_out_correlation(model_dir, data_dir, voxels, trained_head=True):
    """Correlation of a model's own predictions with the test story, never used in training."""
    model, preprocessor = brain_model.build_model(model_dir, len(voxels), 160000)
    if trained_head:
        model.head.load_state_dict(load_file(str(model_dir / "brain_head.safetensors")))
    model.eval()
    windows = data_utils.Dataset(data_dir).audio_windows(data_utils.TEST_STORY)
    with torch.inference_mode():
        prediction = torch.cat([model(torch.from_numpy(preprocessor(windows[i:i + 32])))
                                for i in range(0, len(windows), 32)]).numpy()
    responses = data_utils.Dataset(data_dir).responses(1, data_utils.TEST_STORY, voxels)
    return eval_utils.column_correlation(prediction, responses)


def test_tuned_model_predicts_held_out_planted_voxels(tmp_path):
    """After tuning, the model's predictions of the held-out story follow the planted acoustic
    voxels; the untuned model (same encoder, fresh head) does not. A tiny random-weight
    encoder does not learn the semantic voxels in a CPU-sized run, so they are not tested."""
    data = tmp_path / "ds"
    synthetic_data.generate(data, seed=2, subjects=(1,), n_train_stories=8, train_trs=80,
                            test_trs=100, n_voxels=60, n_words=16, semantic_fraction=0.3,
                            acoustic_fraction=0.5)
    model_dir = tmp_path / "model"
    speech_models.save_tiny_model(model_dir, "wav2vec2")
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(model_dir)  # keep loudness
    code = trainer.main(["--model_name", str(model_dir), "--subject", "1", "--data_dir", str(data),
                         "--save_dir", str(tmp_path), "--exp_name", "run",
                         "--nc_path", str(tmp_path / "UTS01.npy"), "--num_epochs", "8",
                         "--patience", "0", "--batch_size", "8", "--base_lr", "1e-3",
                         "--linear_layer_lr", "3e-2", "--warmup_epochs", "1", "--save_every", "0",
                         "--log_level", "WARNING"])
    assert code == 0
    final = tmp_path / "run" / "final"
    voxels = np.array(json.loads((final / "voxels.json").read_text())["UTS01"])
    types = np.array(data_utils.Dataset(data).truth()["subjects"]["UTS01"]["voxel_type"])[voxels]
    acoustic = types == "acoustic"
    assert acoustic.sum() >= 10
    torch.manual_seed(0)
    untuned = _held_out_correlation(model_dir, data, voxels, trained_head=False)
    tuned = _held_out_correlation(final, data, voxels)
    assert tuned[acoustic].mean() > 0.08
    assert tuned[acoustic].mean() > untuned[acoustic].mean() + 0.05


def _strict_json(text):
    """JSON as the standard has it: NaN and Infinity are errors."""
    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")
    return json.loads(text, parse_constant=refuse)


def test_final_is_the_best_validation_epoch(train_data, tiny_models, tmp_path):
    code, run_dir = run(train_data, tiny_models["hubert"], tmp_path, "--num_epochs", "3",
                        "--patience", "0", "--report_to", "tensorboard")
    assert code == 0
    for name in ("run_config.json", "final/brain_tuning.json", "final/voxels.json",
                 "checkpoint-epoch1/brain_tuning.json"):
        _strict_json((run_dir / name).read_text())
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)
    metrics = _metrics(run_dir)
    best = min(metrics, key=lambda m: m["val_loss"])["epoch"]
    final = AutoModel.from_pretrained(run_dir / "final").state_dict()
    chosen = AutoModel.from_pretrained(run_dir / f"checkpoint-epoch{best}").state_dict()
    assert all(torch.equal(final[k], chosen[k]) for k in final)
    assert json.loads((run_dir / "final" / "brain_tuning.json").read_text())["epoch"] == best
    # each checkpoint's model card: the HF format, what was tuned on what, its epochs' losses
    card = ModelCard.load(run_dir / "final" / model_cards.CARD_FILE)
    assert card.data.library_name == "transformers" and "brain-tuning" in card.data.tags
    assert card.data.datasets == [model_cards.DATASET]
    assert card.data.base_model is None and "(a local folder)" in card.text
    assert f"epoch {best}, the loss rule of `--select_by`" in card.text
    for line in metrics:
        assert (f"| {line['epoch']} | {line['train_loss']:.4f} | {line['val_loss']:.4f} | "
                f"{line['val_corr']:.4f} |") in card.text
    first = (run_dir / "checkpoint-epoch1" / model_cards.CARD_FILE).read_text()
    assert "| 1 | " in first and "| 2 | " not in first
    config = json.loads((run_dir / "final" / "brain_tuning.json").read_text())
    config["arguments"]["model_name"] = "facebook/hubert-base-ls960"  # a hub id: base_model
    assert ModelCard(model_cards.tuning_card(config, metrics)).data.base_model == (
        "facebook/hubert-base-ls960")
    # report.py --model_card's section: added once, replaced when written again
    path = model_cards.card_file(run_dir / "final")
    model_cards.add_alignment(path, ["an earlier report"])
    model_cards.add_alignment(path, ["| measure | pretrained |"])
    text = path.read_text()
    assert text.count(model_cards.ALIGNMENT_HEADING) == 1 and "an earlier report" not in text
    assert "| measure | pretrained |" in text and "## Losses per epoch" in text
    assert ModelCard.load(path).data.library_name == "transformers"
    # --report_to tensorboard: the loss and learning rates per step, the scores per epoch
    events = EventAccumulator(str(run_dir / training_log.EVENTS_FOLDER))
    events.Reload()
    assert [e.value for e in events.Scalars("eval/loss")] == pytest.approx(
        [line["val_loss"] for line in metrics])
    assert [e.step for e in events.Scalars("eval/correlation")] == [1, 2, 3]
    steps = events.Scalars("train/loss")
    per_epoch = len(steps) // len(metrics)
    assert per_epoch > 1 and [e.step for e in steps] == list(range(len(steps)))
    rates = events.Scalars("train/learning_rate")
    for index, line in enumerate(metrics):
        epoch = [e.value for e in steps[index * per_epoch:(index + 1) * per_epoch]]
        assert min(epoch) <= line["train_loss"] <= max(epoch)  # a mean of its steps' losses
        assert rates[index * per_epoch].value == pytest.approx(line["lr_backbone"])


def test_report_to_tensorboard_without_the_package_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(training_log.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit):
        trainer.parse_args(["--model_name", "m", "--subject", "1", "--data_dir", "d",
                            "--report_to", "tensorboard"])
    assert "--report_to tensorboard needs the tensorboard package" in capsys.readouterr().err


def test_early_stopping(train_data, tiny_models, tmp_path, monkeypatch):
    """With patience 1, training stops once the validation loss fails to improve."""
    losses = iter([1.0, 0.9, 0.95, 0.8, 0.7, 0.6])
    monkeypatch.setattr(training_steps, "validate", lambda *a, **k: (next(losses), 0.0))
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "6",
                        "--patience", "1", "--save_every", "0")
    assert code == 0
    assert [m["val_loss"] for m in _metrics(run_dir)] == [1.0, 0.9, 0.95]


def _weights(folder):
    """The encoder's and the head's weights of a tuned model folder."""
    head = load_file(str(folder / "brain_head.safetensors"))
    return {**AutoModel.from_pretrained(folder).state_dict(),
            **{f"head.{k}": v for k, v in head.items()}}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("select_by, epochs_run, chosen, other", [("loss", 4, 2, 3),
                                                                   ("corr", 5, 3, 5)])
def test_select_by_keeps_the_best_epoch_of_its_criterion(train_data, tiny_models, tmp_path,
                                                         monkeypatch, caplog, select_by,
                                                         epochs_run, chosen, other):
    """Planted validation (loss, correlation) per epoch: --select_by loss keeps the epoch of
    lowest loss, corr that of highest correlation, and --patience 2 waits on that score; final/
    holds that epoch's weights, its record, the training state and the closing log line name
    the criterion, and a warning names the epoch the other criterion would keep."""
    scores = iter([(1.0, 0.1), (0.8, 0.2), (0.9, 0.3), (0.95, 0.25), (0.7, 0.28)])
    monkeypatch.setattr(training_steps, "validate", lambda *a, **k: next(scores))
    caplog.set_level(logging.INFO, logger="brain_trainer_story")
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "5",
                        "--patience", "2", "--select_by", select_by)
    assert code == 0
    metrics = _metrics(run_dir)
    assert [(m["val_loss"], m["val_corr"]) for m in metrics] == [
        (1.0, 0.1), (0.8, 0.2), (0.9, 0.3), (0.95, 0.25), (0.7, 0.28)][:epochs_run]
    record = json.loads((run_dir / "final" / "brain_tuning.json").read_text())
    assert record["arguments"]["select_by"] == select_by
    assert {k: record[k] for k in ("selected_by", "epoch", "best_val_loss", "best_val_corr")} \
        == {"selected_by": select_by, "epoch": chosen,
            "best_val_loss": metrics[chosen - 1]["val_loss"],
            "best_val_corr": metrics[chosen - 1]["val_corr"]}
    best = torch.load(run_dir / checkpoints.STATE_FILE, weights_only=False)["best"]
    assert (best["selected_by"], best["epoch"]) == (select_by, chosen)
    final = _weights(run_dir / "final")
    assert _equal(final, _weights(run_dir / f"checkpoint-epoch{chosen}"))
    assert not _equal(final, _weights(run_dir / f"checkpoint-epoch{other}"))
    assert f"epoch {chosen} has the {training_steps.SELECT_BY[select_by]} (--select_by " \
        f"{select_by})" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"final/ is epoch {chosen} (--select_by {select_by})" in w
               and f"would keep epoch {other}" in w for w in warnings), warnings


def test_resume_keeps_the_runs_select_by(train_data, tiny_models, tmp_path, monkeypatch,
                                         caplog):
    """--resume with another --select_by is refused, nothing written; a run saved before
    --select_by existed (no such flag recorded, its best epoch kept with its loss alone)
    resumes choosing by the loss, with the correlation of its best epoch from its metrics."""
    model = tiny_models["wav2vec2"]
    scores = iter([(1.0, 0.3), (1.1, 0.2)])
    monkeypatch.setattr(training_steps, "validate", lambda *a, **k: next(scores))
    original = checkpoints.save_training_state

    def killed_after_epoch_one(run_dir, state):
        original(run_dir, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_training_state", killed_after_epoch_one)
    with pytest.raises(KeyboardInterrupt):
        run(train_data, model, tmp_path, "--num_epochs", "2")
    monkeypatch.setattr(checkpoints, "save_training_state", original)
    run_dir = tmp_path / "run"
    before = _snapshot(run_dir)
    code, _ = run(train_data, model, tmp_path, "--num_epochs", "2", "--select_by", "corr",
                  "--resume")
    assert code == 1 and "select_by: 'loss' -> 'corr'" in _one_error(caplog)
    assert _snapshot(run_dir) == before

    config = json.loads((run_dir / "run_config.json").read_text())
    del config["arguments"]["select_by"]
    run_utils.write_json(run_dir / "run_config.json", config, overwrite=True)
    state = torch.load(run_dir / checkpoints.STATE_FILE, weights_only=False)
    state["best"] = {k: state["best"][k] for k in ("val_loss", "epoch", "state")}
    torch.save(state, run_dir / checkpoints.STATE_FILE)
    code, _ = run(train_data, model, tmp_path, "--num_epochs", "2", "--resume")
    assert code == 0
    record = json.loads((run_dir / "final" / "brain_tuning.json").read_text())
    assert {k: record[k] for k in ("selected_by", "epoch", "best_val_loss", "best_val_corr")} \
        == {"selected_by": "loss", "epoch": 1, "best_val_loss": 1.0, "best_val_corr": 0.3}
    assert _equal(_weights(run_dir / "final"), _weights(run_dir / "checkpoint-epoch1"))


# ----------------------------------------------------------------------------- model folders

WHISPER_VOCAB = {"!": 0, "<|startoftranscript|>": 1, "<|endoftext|>": 2,
                 **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz\u0120")}}


def _tiny_whisper_base(folder, scratch):
    """A tiny base saved as the hub's Whisper checkpoints are: WhisperForConditionalGeneration,
    its feature extractor, a byte-level BPE tokenizer (``WHISPER_VOCAB``, with the special
    tokens generation starts and ends with) and a generation config."""
    torch.manual_seed(0)
    WhisperForConditionalGeneration(speech_models.tiny_config("whisper")).save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)
    scratch.mkdir()
    (scratch / "vocab.json").write_text(json.dumps(WHISPER_VOCAB))
    (scratch / "merges.txt").write_text("#version: 0.2\n")
    WhisperTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"),
                     additional_special_tokens=["<|startoftranscript|>"]).save_pretrained(folder)
    GenerationConfig(decoder_start_token_id=1, eos_token_id=2, pad_token_id=0,
                     max_length=6).save_pretrained(folder)


def test_a_tuned_whisper_transcribes_as_its_base(train_data, tmp_path):
    """final/ loads with WhisperForConditionalGeneration: the tuned encoder, the base's decoder
    and output projection, tokenizer, processor and generation config; it generates and the
    tokenizer decodes. speech_models.load_encoder still loads the tuned encoder from it."""
    base = tmp_path / "base"
    _tiny_whisper_base(base, tmp_path / "scratch")
    code, run_dir = run(train_data, base, tmp_path, "--num_epochs", "1", "--warmup_epochs", "0")
    assert code == 0
    final = run_dir / "final"
    tuned = {k.removeprefix("backbone.encoder."): v for k, v in torch.load(
        run_dir / checkpoints.STATE_FILE, weights_only=False)["model"].items()
        if k.startswith("backbone.encoder.")}  # the one epoch's weights
    original = WhisperForConditionalGeneration.from_pretrained(base)
    model = WhisperForConditionalGeneration.from_pretrained(final)
    assert _equal(model.model.encoder.state_dict(), tuned)
    assert not _equal(model.model.encoder.state_dict(), original.model.encoder.state_dict())
    assert _equal(model.model.decoder.state_dict(), original.model.decoder.state_dict())
    assert torch.equal(model.proj_out.weight, original.proj_out.weight)
    assert model.generation_config.max_length == 6  # the base's, not a default

    assert AutoTokenizer.from_pretrained(final).get_vocab() == WHISPER_VOCAB
    processor = AutoProcessor.from_pretrained(final)
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        tokens = model.generate(features)
    assert tokens.shape[0] == 1 and 1 < tokens.shape[1] <= 6
    text = {i: token for token, i in WHISPER_VOCAB.items()}
    assert processor.batch_decode(tokens) == [
        "".join(text[i] for i in tokens[0].tolist()).replace("\u0120", " ")]

    encoder = speech_models.load_encoder(final)
    assert encoder.family == "whisper"
    assert _equal(encoder.backbone.encoder.state_dict(), tuned)


def test_a_ctc_base_keeps_its_vocabulary(train_data, tmp_path):
    """A wav2vec2 CTC base's processor (tokenizer vocabulary and feature extractor) is saved in
    final/, and the tuned encoder still loads from it."""
    base, vocab = tmp_path / "base", {"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4}
    torch.manual_seed(0)
    Wav2Vec2ForCTC(speech_models.tiny_config("wav2vec2", vocab_size=len(vocab))).save_pretrained(
        base)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    Wav2Vec2Processor(Wav2Vec2FeatureExtractor(do_normalize=True),
                      Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))).save_pretrained(base)
    code, run_dir = run(train_data, base, tmp_path, "--num_epochs", "1", "--warmup_epochs", "0")
    assert code == 0
    processor = AutoProcessor.from_pretrained(run_dir / "final")
    assert isinstance(processor, Wav2Vec2Processor)
    assert processor.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()
    assert processor.decode([3, 4, 2, 3]) == "ab a"
    tuned = {k.removeprefix("backbone."): v for k, v in torch.load(
        run_dir / checkpoints.STATE_FILE, weights_only=False)["model"].items()
        if k.startswith("backbone.")}
    encoder = speech_models.load_encoder(run_dir / "final")
    assert _equal(encoder.backbone.state_dict(), tuned)
    assert not _equal(tuned, AutoModel.from_pretrained(base).state_dict())


def test_base_files_only_where_the_base_has_them(tiny_models, tmp_path, caplog):
    """A base without tokenizer or generation config: nothing to save, an info line; a
    damaged tokenizer file: one-line ModelError naming it."""
    caplog.set_level(logging.INFO, logger="speech_models")
    assert speech_models.load_base_files(tiny_models["whisper"]) == []
    assert "has no tokenizer" in caplog.text
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_models["whisper"], damaged)
    (damaged / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(speech_models.ModelError, match="tokenizer_config.json"):
        speech_models.load_base_files(damaged)


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("killed_in_swap", [False, True])
def test_resume_gives_the_same_weights(train_data, tiny_models, tmp_path, monkeypatch,
                                       killed_in_swap):
    """Also after a kill between the renames of the end-of-epoch swap of last/ (the old one
    set aside, the new one half written): --resume puts the old one back."""
    model = tiny_models["wav2vec2"]
    code, straight = run(train_data, model, tmp_path / "a", "--num_epochs", "3", "--save_every", "0")
    assert code == 0

    calls = {"n": 0}
    original = checkpoints.save_training_state

    def killed_after_epoch_two(run_dir, state):
        original(run_dir, state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_training_state", killed_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run(train_data, model, tmp_path / "b", "--num_epochs", "3", "--save_every", "0")
    monkeypatch.setattr(checkpoints, "save_training_state", original)
    killed = tmp_path / "b" / "run"
    assert len(_metrics(killed)) == 2
    if killed_in_swap:
        dead = _dead_pid()
        (killed / "last").rename(killed / f".last.old{dead}")
        (killed / f".last.tmp{dead}").mkdir()
        (killed / f".last.tmp{dead}" / "training_state.pt").write_bytes(b"half written")
    code, resumed = run(train_data, model, tmp_path / "b", "--num_epochs", "3", "--save_every", "0",
                        "--resume")
    assert code == 0
    assert not list(resumed.glob(".last.*"))
    a = AutoModel.from_pretrained(straight / "final").state_dict()
    b = AutoModel.from_pretrained(resumed / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(load_file(str(straight / "final" / "brain_head.safetensors"))["weight"],
                       load_file(str(resumed / "final" / "brain_head.safetensors"))["weight"])
    drop = ("seconds",)
    assert ([{k: v for k, v in m.items() if k not in drop} for m in _metrics(straight)]
            == [{k: v for k, v in m.items() if k not in drop} for m in _metrics(resumed)])


def test_existing_run_is_never_overwritten(train_data, tiny_models, tmp_path, caplog):
    model = tiny_models["wav2vec2"]
    assert run(train_data, model, tmp_path, "--num_epochs", "1")[0] == 0
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert run(train_data, model, tmp_path, "--num_epochs", "1")[0] == 1
    assert "--resume" in caplog.text and "--overwrite" in caplog.text
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    assert run(train_data, model, tmp_path, "--num_epochs", "1", "--seed", "4", "--resume")[0] == 1
    assert "seed" in caplog.text
    assert run(train_data, model, tmp_path, "--num_epochs", "1", "--seed", "4", "--overwrite")[0] == 0
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["arguments"]["seed"] == 4


def test_resume_refuses_inputs_other_than_the_runs(train_data, tiny_models, tmp_path, caplog):
    """The run records every file it read with its content hash, the model's fingerprint and
    the code; --resume on changed responses is one line naming the file, nothing written."""
    data = tmp_path / "ds"
    shutil.copytree(train_data, data)
    model = tiny_models["wav2vec2"]
    args = ["--model_name", str(model), "--subject", "1", "--data_dir", str(data),
            "--save_dir", str(tmp_path), "--exp_name", "run",
            "--nc_path", str(train_data.parent / "UTS01.npy"), *FAST]
    assert trainer.main([*args, "--num_epochs", "1"]) == 0
    config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    inputs = config["inputs"]
    dataset = data_utils.Dataset(data)
    souls = dataset.response_path(1, "souls")
    assert str(souls.resolve()) in inputs["files"]
    assert str((train_data.parent / "UTS01.npy").resolve()) in inputs["files"]
    assert inputs["sha256"][inputs["files"].index(str(souls.resolve()))] == \
        run_utils.content_hash(souls)
    assert inputs["model_fingerprint"] and config["run"]["code"] == run_utils.code_version()
    final = json.loads((tmp_path / "run" / "final" / "brain_tuning.json").read_text())
    assert final["inputs"] == inputs  # the checkpoint carries the manifest too
    before = _snapshot(tmp_path / "run")
    rows = damage.read_hdf5(data, 1, "souls")
    damage.replace_hdf5(data, 1, "souls", "data", rows[::-1].copy())
    caplog.clear()
    assert trainer.main([*args, "--num_epochs", "1", "--resume"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "other inputs" in errors[0] and str(souls.resolve()) in errors[0]
    assert _snapshot(tmp_path / "run") == before


def test_overwrite_keeps_the_old_run_until_the_new_one_has_set_itself_up(
        train_data, tiny_models, tmp_path, caplog):
    """A misspelt story stops the new run before it replaces anything."""
    model = tiny_models["wav2vec2"]
    assert run(train_data, model, tmp_path, "--num_epochs", "1")[0] == 0
    before = _snapshot(tmp_path / "run")
    assert run_utils.RUN_MARKER in before and "final/config.json" in before
    code, _ = run(train_data, model, tmp_path, "--num_epochs", "1", "--overwrite",
                  "--train_stories", "souls", "nosuchstory")
    assert code == 1 and "'nosuchstory' has no responses" in caplog.text
    assert _snapshot(tmp_path / "run") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # lock released, no temporary


@pytest.mark.parametrize("name", [".", "..", "", "../x", "a/b", "absolute"])
def test_exp_name_must_be_a_plain_folder_name(tmp_path, capsys, name):
    """Parser error before anything is read or deleted, even with --overwrite."""
    save_dir = tmp_path / "runs"
    run_utils.mark_folder(save_dir / "other", "brain-tuning run")
    (save_dir / "other" / "metrics.jsonl").write_text("{}\n")
    before = _snapshot(tmp_path)
    name = str(save_dir / "other") if name == "absolute" else name
    with pytest.raises(SystemExit) as stop:
        trainer.main(["--model_name", str(tmp_path / "absent"), "--subject", "1", "--data_dir",
                      str(tmp_path / "absent"), "--save_dir", str(save_dir), "--exp_name", name,
                      "--overwrite"])
    assert stop.value.code == 2
    assert "--exp_name" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_a_folder_not_written_by_the_trainer_is_never_replaced(train_data, tiny_models, tmp_path,
                                                               caplog):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    code, _ = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "1",
                  "--overwrite")
    assert code == 1 and "not written by brain-tuning" in caplog.text
    assert _snapshot(tmp_path / "run") == {"notes.txt": b"mine"}


def test_a_run_folder_in_use_is_refused_and_a_stale_lock_taken_over(train_data, tiny_models,
                                                                     tmp_path, caplog,
                                                                     hold_lock):
    model = tiny_models["wav2vec2"]
    lock = run_utils.FolderLock(tmp_path / "run")
    holder = hold_lock(tmp_path / "run")
    for extra in ([], ["--resume"], ["--overwrite"]):
        caplog.clear()
        code, run_dir = run(train_data, model, tmp_path, "--num_epochs", "1", *extra)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert code == 1 and len(errors) == 1
        assert f"in use by another run (process {holder} on {socket.gethostname()}" \
            in errors[0]
        assert lock.path.exists() and not run_dir.exists()
    lock.path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                     "started": "", "command": "brain_trainer_story.py"}))
    code, run_dir = run(train_data, model, tmp_path, "--num_epochs", "1", "--save_every", "0")
    assert code == 0 and (run_dir / "final" / "config.json").exists()
    assert "taking over the lock" in caplog.text and not lock.path.exists()


@pytest.mark.parametrize("flags", [
    ["--batch_size", "0"], ["--micro_batch_size", "0"], ["--num_epochs", "0"],
    ["--batch_size", "4", "--micro_batch_size", "8"], ["--patience", "-1"],
    ["--base_lr", "-1e-3"], ["--head_lr_decay", "0"], ["--lora_dropout", "1"],
    ["--target", "random_fmri_all", "--target_features", "features.hf5"],
    ["--resume", "--overwrite"], ["--subject", "x"], ["--subject", "1", "UTS01"],
    ["--subject", "1", "2", "--nc_path", "UTS01.npy"], ["--warmup_epochs", "-1"],
    ["--save_every", "-1"], ["--num_workers", "-2"], ["--seed", "-1"], ["--lora_rank", "-4"],
    ["--base_lr", "nan"], ["--linear_layer_lr", "inf"], ["--nc_thr", "40"], ["--nc_thr", "-0.1"],
    ["--head_lr_floor", "2"], ["--lora_alpha", "0"], ["--log_level", "loud"]])
def test_bad_flags_are_parser_errors_before_any_loading(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as stop:
        trainer.main(["--model_name", str(tmp_path / "absent"), "--subject", "1", "--data_dir",
                      str(tmp_path / "absent"), "--save_dir", str(tmp_path / "runs"), *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert any(flag in err for flag in flags if flag.startswith("--"))
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- controls and targets

def test_swap_chunks_moves_whole_chunks_far_apart():
    rng = np.random.default_rng(0)
    responses = np.arange(400, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    swapped = training_data.swap_chunks(responses, rng)
    n_chunks = 400 // 15
    moved = 0
    for position in range(n_chunks):
        chunk = swapped[position * 15:(position + 1) * 15, 0]
        source = int(chunk[0]) // 15
        np.testing.assert_array_equal(chunk, responses[source * 15:(source + 1) * 15, 0])
        if source != position:
            moved += 1
            assert abs(source - position) >= 10
            assert int(swapped[source * 15, 0]) // 15 == position  # pairs trade places
    assert moved >= n_chunks - 2
    np.testing.assert_array_equal(swapped[n_chunks * 15:], responses[n_chunks * 15:])
    with pytest.raises(run_utils.DatasetError, match="two 15-row chunks"):
        training_data.swap_chunks(responses[:20], rng)


def test_borrow_responses_uses_other_training_stories():
    responses = {"a": np.full((30, 2), 1.0), "b": np.full((50, 2), 2.0), "c": np.full((40, 2), 3.0),
                 "val": np.full((20, 2), 4.0)}
    for seed in range(5):
        borrowed = training_data.borrow_responses(responses, ["a", "b", "c"], np.random.default_rng(seed))
        for story, values in borrowed.items():
            assert values.shape == responses[story].shape
            donor = values[0, 0]
            assert donor != responses[story][0, 0] and (values == donor).all()
            assert donor != 4.0  # validation responses are never lent
    with pytest.raises(run_utils.DatasetError, match="two training stories"):
        training_data.borrow_responses({"a": np.ones((3, 1)), "val": np.ones((3, 1))}, ["a"],
                                 np.random.default_rng(0))


@pytest.mark.parametrize("target", ["random_fmri_all", "random_fmri_local"])
def test_random_fmri_controls_train(train_data, tiny_models, tmp_path, monkeypatch, target):
    seen = {}
    original = training_data.TRWindowDataset.__init__

    def spy(self, audio, bounds, targets, output_offset=0):
        seen.update(targets)
        original(self, audio, bounds, targets, output_offset)

    monkeypatch.setattr(training_data.TRWindowDataset, "__init__", spy)
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "1",
                        "--target", target)
    assert code == 0 and (run_dir / "final" / "config.json").exists()
    voxels = json.loads((run_dir / "final" / "voxels.json").read_text())["UTS01"]
    for story, values in seen.items():
        real = data_utils.Dataset(train_data).responses(1, story, voxels)
        assert values.shape == real.shape and not np.array_equal(values, real)


def test_target_features_replace_fmri(train_data, tiny_models, tmp_path):
    path = tmp_path / "features.hf5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        dataset = data_utils.Dataset(train_data)
        for story in dataset.stories(1):
            handle[story] = rng.standard_normal((dataset.response_rows(story), 6))
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "1",
                        "--target_features", str(path))
    assert code == 0
    assert load_file(str(run_dir / "final" / "brain_head.safetensors"))["weight"].shape[0] == 6
    assert json.loads((run_dir / "final" / "voxels.json").read_text()) == {}
    with h5py.File(path, "a") as handle:
        del handle["souls"]
        handle["souls"] = np.zeros((3, 6))
    code, _ = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "1",
                  "--target_features", str(path), "--overwrite")
    assert code == 1


# ----------------------------------------------------------------------------- multi-subject, LoRA

@pytest.mark.parametrize("mode", ["shared_head", "per_subject"])
def test_multi_subject(train_data, tiny_models, tmp_path, mode):
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "1",
                        "--multi_subject", mode, subject="1 2")
    assert code == 0
    voxels = json.loads((run_dir / "final" / "voxels.json").read_text())
    assert set(voxels) == {"UTS01", "UTS02"}
    head = load_file(str(run_dir / "final" / "brain_head.safetensors"))["weight"]
    assert head.shape[0] == len(voxels["UTS01"]) + len(voxels["UTS02"])
    config = json.loads((run_dir / "run_config.json").read_text())
    assert config["subjects"] == ["UTS01", "UTS02"]


def test_lora_trains_adapters_only_and_saves_merged(train_data, tiny_models, tmp_path):
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "2",
                        "--lora_rank", "4", "--lora_alpha", "8")
    assert code == 0
    before = AutoModel.from_pretrained(tiny_models["wav2vec2"]).state_dict()
    after = AutoModel.from_pretrained(run_dir / "checkpoint-epoch2").state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[-2] in brain_model.LORA_TARGETS for k in changed)


# ----------------------------------------------------------------------------- bad input

def _not_an_audio_model(tmp_path):
    folder = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, vocab_size=50)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", ["story", "test_story", "subject", "model_path", "bert",
                                  "nc_wrong_count", "nc_threshold"])
def test_bad_input_is_one_clear_line(train_data, tiny_models, tmp_path, caplog, case):
    model, extra, subject = tiny_models["wav2vec2"], ["--num_epochs", "1"], "1"
    expected = {
        "story": "story 'nosuchstory' has no responses",
        "test_story": "never used for tuning",
        "subject": "subjects found",
        "model_path": "no such model directory",
        "bert": "not a supported audio encoder",
        "nc_wrong_count": "another subject",
        "nc_threshold": "lower --nc_thr",
    }[case]
    if case == "story":
        extra += ["--train_stories", "souls", "nosuchstory"]
    elif case == "test_story":
        extra += ["--train_stories", "souls", data_utils.TEST_STORY]
    elif case == "subject":
        subject = "5"
    elif case == "model_path":
        model = tmp_path / "absent"
    elif case == "bert":
        model = _not_an_audio_model(tmp_path)
    elif case == "nc_threshold":
        extra += ["--nc_thr", "0.99"]
    if case == "nc_wrong_count":
        code, _ = run(train_data, model, tmp_path, *extra, "--nc_path",
                      str(train_data.parent / "UTS02.npy"))
    elif case == "subject":
        code = trainer.main(["--model_name", str(model), "--subject", subject, "--data_dir",
                             str(train_data), "--save_dir", str(tmp_path), *FAST, *extra])
    else:
        code, _ = run(train_data, model, tmp_path, *extra)
    assert code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and expected in errors[0].getMessage()
    assert "Traceback" not in caplog.text


def _no_model_loading(monkeypatch):
    """Make loading a model or decoding a stimulus fail the test."""
    def fail(*args, **kwargs):
        raise AssertionError("a model or stimulus was loaded before the inputs were checked")
    monkeypatch.setattr(speech_models, "load_backbone", fail)
    monkeypatch.setattr(data_utils.Dataset, "stimulus", fail)


def _one_error(caplog):
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Traceback" not in caplog.text, errors
    return errors[0]


@pytest.mark.parametrize("case", ["rows_off_by_one", "short_wav", "respdict_negative"])
def test_damaged_dataset_stops_before_any_model_is_loaded(train_data, tiny_models, tmp_path,
                                                          monkeypatch, caplog, case):
    data = tmp_path / "ds"
    shutil.copytree(train_data, data)
    story = "souls"
    if case == "rows_off_by_one":
        rows = damage.read_hdf5(data, 1, story)
        damage.replace_hdf5(data, 1, story, "data", rows[:-1])
        named = data_utils.Dataset(data).response_path(1, story).name
    elif case == "short_wav":
        damage.shorten_wav(data, story, 5.0)
        named = data_utils.Dataset(data).stimulus_path(story).name
    else:
        damage.set_respdict(data, story, -3)
        named = story
    _no_model_loading(monkeypatch)
    code = trainer.main(["--model_name", str(tiny_models["wav2vec2"]), "--subject", "1",
                         "--data_dir", str(data), "--save_dir", str(tmp_path / "runs"),
                         "--nc_path", str(tmp_path / "UTS01.npy"), "--train_stories", story,
                         "--val_stories", "life", *FAST])
    assert code == 1
    assert named in _one_error(caplog)
    assert not (tmp_path / "UTS01.npy").exists() and not (tmp_path / "runs" / "run").exists()


def test_repeats_with_other_voxels_write_no_ceiling(train_data, tiny_models, tmp_path,
                                                    monkeypatch, caplog):
    """individual_repeats of 30 voxels against 40 in data: refused, no ceiling file saved."""
    data = tmp_path / "ds"
    shutil.copytree(train_data, data)
    repeats = damage.read_hdf5(data, 1, data_utils.TEST_STORY, "individual_repeats")
    damage.replace_hdf5(data, 1, data_utils.TEST_STORY, "individual_repeats", repeats[..., :30])
    _no_model_loading(monkeypatch)
    nc_path = tmp_path / "UTS01.npy"
    code = trainer.main(["--model_name", str(tiny_models["wav2vec2"]), "--subject", "1",
                         "--data_dir", str(data), "--save_dir", str(tmp_path / "runs"),
                         "--nc_path", str(nc_path), *FAST])
    assert code == 1
    message = _one_error(caplog)
    assert "30" in message and "40" in message
    assert not nc_path.exists()


def test_diverged_training_stops_and_saves_nothing_of_it(train_data, tiny_models, tmp_path,
                                                         caplog):
    """A head learning rate of 1e20 overflows the loss in the first epoch: one line, no final/,
    no checkpoint and no metrics with Infinity."""
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "2",
                        "--linear_layer_lr", "1e20")
    assert code == 1
    assert "training diverged" in _one_error(caplog)
    assert not (run_dir / "final").exists() and not (run_dir / "checkpoint-epoch1").exists()
    assert not (run_dir / "metrics.jsonl").exists()


def test_distributed_data_parallel_on_two_cpu_processes(train_data, tiny_models, tmp_path):
    """torchrun with two processes (gloo on CPU): rank 0 computes the missing noise ceiling and
    writes one complete run."""
    repo = Path(trainer.__file__).resolve().parent
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(repo / "brain_trainer_story.py"), "--model_name", str(tiny_models["wav2vec2"]),
               "--subject", "1", "--data_dir", str(train_data), "--save_dir", str(tmp_path),
               "--exp_name", "ddp", "--nc_path", str(tmp_path / "UTS01.npy"),
               "--num_epochs", "2", *FAST]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    assert [m["epoch"] for m in _metrics(run_dir)] == [1, 2]
    assert AutoModel.from_pretrained(run_dir / "final").config.model_type == "wav2vec2"
    assert "Traceback" not in result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "UTS01.npy"),
                                  np.load(train_data.parent / "UTS01.npy"))


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "data2vec-audio"])
def test_no_backward_through_the_frozen_cnn(tiny_models, family):
    """The frozen CNN's output needs no gradient, so backward stops at the transformer."""
    model, preprocessor = brain_model.build_model(tiny_models[family], 3, 16000)
    model.train()
    inputs = torch.from_numpy(preprocessor(np.random.default_rng(0).standard_normal(
        (2, 16000)).astype(np.float32)))
    features = model.backbone.feature_extractor(inputs)
    assert not features.requires_grad
    assert not any(p.requires_grad for p in model.backbone.feature_extractor.parameters())


def test_loader_workers_do_not_change_training(train_data, tiny_models, tmp_path):
    """Worker processes only load data: the run is the same as without them."""
    model = tiny_models["wav2vec2"]
    assert run(train_data, model, tmp_path / "w0", "--num_epochs", "1", "--num_workers", "0")[0] == 0
    assert run(train_data, model, tmp_path / "w2", "--num_epochs", "1", "--num_workers", "2")[0] == 0
    drop = ("seconds",)
    first, second = (_metrics(tmp_path / name / "run") for name in ("w0", "w2"))
    assert ([{k: v for k, v in m.items() if k not in drop} for m in first]
            == [{k: v for k, v in m.items() if k not in drop} for m in second])


def test_bf16_autocast_runs(train_data, tiny_models, tmp_path):
    """--precision bf16 (the GPU default) also runs on the CPU; outputs stay float32."""
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "1",
                        "--precision", "bf16")
    assert code == 0
    assert np.isfinite(_metrics(run_dir)[0]["val_loss"])
    head = load_file(str(run_dir / "final" / "brain_head.safetensors"))
    assert head["weight"].dtype == torch.float32


def test_per_subject_needs_stories_for_every_subject(train_data, tiny_models, tmp_path, caplog):
    """UTS02 lacks 'life': validating on it alone is refused before any training."""
    code, _ = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "1",
                  "--multi_subject", "per_subject", "--val_stories", "life", subject="1 2")
    assert code == 1
    assert "UTS02 has none of the validation stories" in caplog.text


def test_shards_are_even_across_ranks():
    """Every rank runs the same number of steps and passes, whatever the training-set size."""
    class Items:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    for size in (8000, 8001, 8065, 3):
        shapes = []
        for rank in (0, 1):
            loader = training_data.epoch_batches([Items(size)], epoch=0, seed=0, batch_size=128,
                                                 micro_batch_size=16, collate=None, rank=rank,
                                                 world_size=2)
            steps = loader.dataset.steps
            shapes.append([len(micro) for _, micro in steps])
        assert shapes[0] == shapes[1], size


class _Stories:
    """Samples of stories, as ``TRWindowDataset.items`` lists them: (story, row) in order."""

    def __init__(self, lengths):
        self.items = [(story, row) for story, n in lengths.items() for row in range(n)]

    def __len__(self):
        return len(self.items)


def _step_rows(loader):
    """The sample indices of each step of an ``epoch_batches`` loader, its micro-batches
    joined."""
    return [[i for micro in micro_batches for i in micro]
            for _, micro_batches in loader.dataset.steps]


def test_consecutive_batches_are_each_storys_rows_in_order():
    """--batch_order consecutive (the authors'): a story's rows in order, batch_size at a time
    (its last batch shorter, none across stories), the same every epoch and seed; shuffled stays
    the permutation of (seed, epoch)."""
    lengths = {"a": 37, "b": 16, "c": 5}
    dataset = _Stories(lengths)
    expected, offset = [], 0  # brute force: the authors' DataLoader(story, shuffle=False)
    for n in lengths.values():
        rows = list(range(offset, offset + n))
        while rows:
            expected.append(rows[:16])
            rows = rows[16:]
        offset += n
    assert [len(rows) for rows in expected] == [16, 16, 5, 16, 5]
    for epoch, seed in ((0, 0), (3, 7)):
        loader = training_data.epoch_batches([dataset], epoch, seed, 16, 4, None,
                                             order="consecutive")
        assert _step_rows(loader) == expected
        assert all(len(micro) <= 4 for _, micro_batches in loader.dataset.steps
                   for micro in micro_batches)
    # shuffled: every sample once per epoch, in the seeded permutation of the epoch
    for epoch in (0, 1):
        shuffled = _step_rows(training_data.epoch_batches([dataset], epoch, 5, 16, 16, None))
        permutation = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(
            5 * 1_000_003 + epoch * 101)).tolist()
        assert shuffled == [permutation[i:i + 16] for i in range(0, len(dataset), 16)]
    # two ranks: each step is shared out whole (padded as DistributedSampler pads), with the same
    # passes on every rank
    ranks = [training_data.epoch_batches([dataset], 0, 0, 16, 4, None, rank=rank, world_size=2,
                                         order="consecutive").dataset.steps for rank in (0, 1)]
    assert [[len(m) for m in micro] for _, micro in ranks[0]] == [
        [len(m) for m in micro] for _, micro in ranks[1]]
    for rows, (_, first), (_, second) in zip(expected, *ranks):
        joined = [i for micro in [*first, *second] for i in micro]
        assert joined[:len(rows)] == rows and set(joined) == set(rows)
    with pytest.raises(ValueError, match="unknown batch order"):
        training_data.epoch_batches([dataset], 0, 0, 16, 16, None, order="sorted")


def test_the_trainer_passes_its_batch_order(train_data, tiny_models, tmp_path, monkeypatch):
    orders = []
    batches = training_data.epoch_batches

    def recorded(*args, **kwargs):
        orders.append(args[9])
        return batches(*args, **kwargs)

    monkeypatch.setattr(training_data, "epoch_batches", recorded)
    code, run_dir = run(train_data, tiny_models["wav2vec2"], tmp_path, "--num_epochs", "1",
                        "--batch_order", "consecutive")
    assert code == 0 and orders == ["consecutive"]
    config = json.loads((run_dir / "run_config.json").read_text())
    assert config["arguments"]["batch_order"] == "consecutive"
    assert trainer.parse_args(["--model_name", "m", "--subject", "1", "--data_dir",
                               "d"]).batch_order == "shuffled"
