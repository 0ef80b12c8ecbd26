"""speech_models.py and make_tiny.py: the demo-size checkpoint and why the demo needs it; checkpoints without
usable weights; transformers' progress bars."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from transformers.utils import logging as transformers_logging

import layer_features
import make_tiny
import probing
import speech_models
import synthetic_speech


def _phone_frames(backbone, preprocessor, lexicon, rng, n_tokens):
    """Frozen-CNN frames (``extract_features``) from the middle of synthetic phones: X, labels."""
    rate = 16000
    features, labels = [], []
    for phone, frequencies in lexicon["phones"].items():
        for _ in range(n_tokens):
            sound = 0.5 * 10 ** rng.uniform(-0.8, 0.0) * synthetic_speech.phone_sound(
                frequencies, 0.12, rate, rng)
            audio = np.concatenate([np.zeros(1600), sound, np.zeros(1600)])
            audio += rng.normal(0.0, 0.002, len(audio))
            inputs = torch.from_numpy(preprocessor(audio[None].astype(np.float32)))
            with torch.no_grad():
                frames = backbone(inputs).extract_features[0]
            middle = (1600 + len(sound) // 2) // 320
            features.append(frames[middle].numpy())
            labels.append(phone)
    return np.array(features), np.array(labels)


def test_demo_size_checkpoint_tells_the_synthetic_phones_apart(tmp_path):
    lexicon = synthetic_speech.make_lexicon(0, n_words=4, semantic_dim=2)
    accuracy = {}
    for size in ("tiny", "demo"):
        out = tmp_path / size
        assert make_tiny.main(["--family", "wav2vec2", "--size", size, "--out", str(out)]) == 0
        backbone, family = speech_models.load_backbone(out)
        backbone.eval()
        preprocessor = speech_models.AudioPreprocessor(
            speech_models.load_feature_extractor(out, family), family)
        rng = np.random.default_rng(0)
        x_train, y_train = _phone_frames(backbone, preprocessor, lexicon, rng, 6)
        x_test, y_test = _phone_frames(backbone, preprocessor, lexicon, rng, 3)
        accuracy[size] = LogisticRegression(max_iter=3000).fit(x_train, y_train).score(x_test,
                                                                                      y_test)
    config = json.loads((tmp_path / "demo" / "config.json").read_text())
    assert config["conv_dim"] == [128] and config["feat_extract_norm"] == "layer"
    assert config["hidden_size"] == 64
    # 22 phones: chance is 1/22; the default tiny CNN gets about 0.75, the demo one above 0.9
    assert accuracy["demo"] > max(0.85, accuracy["tiny"] + 0.1), accuracy


def test_demo_size_whisper_is_wider(tmp_path):
    for size in ("tiny", "demo"):
        speech_models.save_tiny_model(tmp_path / size, "whisper", size=size)
    widths = [json.loads((tmp_path / s / "config.json").read_text())["d_model"]
              for s in ("tiny", "demo")]
    assert widths == [32, 64]


# ----------------------------------------------------------------------------- bad checkpoints

def _weights(folder):
    return folder / "model.safetensors"


def _as_truncated_bin(folder):
    """Weights as a PyTorch .bin file cut in half (an interrupted copy)."""
    state = load_file(str(_weights(folder)))
    _weights(folder).unlink()
    torch.save(state, folder / "pytorch_model.bin")
    raw = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(raw[:len(raw) // 2])


DAMAGES = {
    "no_weights": lambda folder: _weights(folder).unlink(),
    "zero_bytes": lambda folder: _weights(folder).write_bytes(b""),
    "truncated": lambda folder: _weights(folder).write_bytes(_weights(folder).read_bytes()[:-64]),
    "garbage": lambda folder: _weights(folder).write_bytes(b"not a tensor file " * 50),
    "truncated_bin": _as_truncated_bin,
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint") / "tiny"
    speech_models.save_tiny_model(folder, "wav2vec2")
    return folder


@pytest.mark.parametrize("case", list(DAMAGES))
def test_missing_or_damaged_weights_are_a_model_error(tiny_checkpoint, tmp_path, case):
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, folder)
    DAMAGES[case](folder)
    with pytest.raises(speech_models.ModelError) as error:
        speech_models.load_encoder(folder)
    message = str(error.value)
    assert message.startswith(f"{folder}: cannot load the model weights") and "\n" not in message
    assert "copy or save the checkpoint again" in message


def test_damaged_weights_stop_a_script_before_any_extraction(tiny_checkpoint, tmp_path,
                                                             monkeypatch, caplog):
    """The second model of a probe run has no weights: one line before any feature of the
    first model is extracted."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, folder)
    _weights(folder).unlink()

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted before every model was checked")

    monkeypatch.setattr(layer_features, "pooled_layer_features", no_extraction)
    code = probing.main("words", ["--data_path", str(tmp_path / "absent"), "--model_name",
                                  str(tiny_checkpoint), "--model_path", str(folder),
                                  "--save_dir", str(tmp_path / "out")])
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(folder) in errors[0] and "Traceback" not in caplog.text


def test_unreadable_feature_extractor_settings_are_a_model_error(tiny_checkpoint, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(speech_models.ModelError, match="preprocessor_config.json: unreadable"):
        speech_models.load_encoder(folder)
    (folder / "preprocessor_config.json").unlink()  # none saved: the family's default
    assert speech_models.load_encoder(folder).preprocessor.feature_extractor.do_normalize


def test_transformers_progress_bars_are_silenced_only_while_loading_and_saving(tmp_path,
                                                                               capfd):
    speech_models.save_tiny_model(tmp_path / "model", "wav2vec2")
    speech_models.load_encoder(tmp_path / "model")
    captured = capfd.readouterr()
    for bar in ("Writing model shards", "Loading weights"):
        assert bar not in captured.err + captured.out
    assert transformers_logging.set_tqdm_hook(None) is None  # nothing left installed
    list(transformers_logging.tqdm(range(3), desc="after the block"))
    assert "after the block" in capfd.readouterr().err


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_a_first_call_for_a_low_layer_leaves_every_layer_recorded(tmp_path, family):
    """transformers >= 5 hooks the layers a model holds at its first call for hidden states;
    a first call that runs only the first layers must not leave the others unrecorded."""
    speech_models.save_tiny_model(tmp_path / "m", family, seed=0)
    encoder = speech_models.load_encoder(tmp_path / "m")
    inputs = torch.from_numpy(encoder.preprocessor(
        np.random.default_rng(0).normal(0, 0.1, (1, 8000)).astype(np.float32)))
    with torch.no_grad():
        low = layer_features.layer_hidden_states(encoder.backbone, family, inputs, [0])
        high = layer_features.layer_hidden_states(encoder.backbone, family, inputs,
                                                  [1, encoder.depth])
        stack = encoder.backbone.encoder if family == "whisper" else encoder.backbone
        full = stack(inputs, output_hidden_states=True).hidden_states
    torch.testing.assert_close(low[0], full[0])
    for layer in (1, encoder.depth):
        torch.testing.assert_close(high[layer], full[layer])
