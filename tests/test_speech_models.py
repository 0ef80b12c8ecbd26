"""speech_models.py make-tiny: the demo-size checkpoint and why the demo needs it."""

import json

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

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
        assert speech_models.main(["make-tiny", "--family", "wav2vec2", "--size", size,
                                   "--out", str(out)]) == 0
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
