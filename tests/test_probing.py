"""Downstream probes: the probing core, the five eval_*.py scripts on synthetic datasets in the
real layouts, the cache and the errors."""

import csv
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.dummy import DummyClassifier

import downstream_data
import layer_features
import plots
import probing
import run_utils
import speech_models
import synthetic_downstream
from run_utils import DatasetError

DATASETS = {"phonemes": "timit", "sentence_type": "timit", "words": "speech_commands",
            "emotion": "crema_d", "intent": "slurp"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probing")
    for layout in synthetic_downstream.LAYOUTS:
        synthetic_downstream.generate(layout, root / layout, seed=1)
    speech_models.save_tiny_model(root / "model0", "wav2vec2", seed=0)
    speech_models.save_tiny_model(root / "run" / "final", "wav2vec2", seed=1)
    return root


def _run(setup, task, *extra, save="out"):
    module = importlib.import_module(f"eval_{task}")
    return module.main(["--data_path", str(setup / DATASETS[task]), "--model_name",
                        str(setup / "model0"), "--save_dir", str(setup / save),
                        "--num_epochs", "300", *extra])


# ----------------------------------------------------------------------------- probing core

def test_scores_match_hand_counts():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    # per class (tp, fp, fn): 0 (1, 1, 1), 1 (2, 1, 0), 2 (1, 0, 1)
    f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1)]
    scores = probing.probe_scores(y_true, y_pred, multi_label=False)
    assert scores["f1_macro"] == pytest.approx(np.mean(f1))
    assert scores["f1_micro"] == pytest.approx(4 / 6) == scores["accuracy"]
    # multi-label: class 2 absent from the truth is left out of the macro mean but its false
    # positive counts in the micro F1
    y_true = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    y_pred = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0]])
    scores = probing.probe_scores(y_true, y_pred, multi_label=True)
    assert scores["f1_macro"] == pytest.approx(np.mean([1.0, 2 * 1 / (2 + 0 + 1)]))
    assert scores["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert scores["exact_match"] == pytest.approx(1 / 3) and "accuracy" not in scores


def test_chance_is_the_macro_f1_of_guessing_by_training_frequencies():
    # hand count: train frequencies q = (1/2, 1/4, 1/4), test p = (1/4, 3/4, 0); class 2 is
    # absent from the test set and left out, as in the macro F1
    y_train, y_test = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    expected = np.mean([2 * 0.25 * 0.5 / 0.75, 2 * 0.75 * 0.25 / 1.0])
    assert probing.chance_f1_macro(y_train, y_test, 3, False) == pytest.approx(expected)
    # against guessing done by sklearn's stratified dummy classifier, scored as the probes are
    rng = np.random.default_rng(0)
    frequencies = np.array([0.5, 0.3, 0.15, 0.05])
    y_train, y_test = (rng.choice(4, size=n, p=frequencies) for n in (4000, 4000))
    guessed = [probing.probe_scores(y_test, DummyClassifier(strategy="stratified",
                                                            random_state=seed)
                                    .fit(np.zeros((len(y_train), 1)), y_train)
                                    .predict(np.zeros((len(y_test), 1))), False)["f1_macro"]
               for seed in range(20)]
    assert probing.chance_f1_macro(y_train, y_test, 4, False) == pytest.approx(
        np.mean(guessed), abs=0.01)
    # multi-label: each class said yes with its training prevalence
    prevalence = np.array([0.9, 0.5, 0.2, 0.0])
    y_train, y_test = ((rng.random((n, 4)) < prevalence).astype(np.float32) for n in (4000, 4000))
    guessed = [probing.probe_scores(y_test, rng.random(y_test.shape) < y_train.mean(axis=0),
                                    True)["f1_macro"] for _ in range(20)]
    assert probing.chance_f1_macro(y_train, y_test, 4, True) == pytest.approx(
        np.mean(guessed), abs=0.01)


def test_probe_separates_clusters_and_keeps_the_global_rng():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (4, 20))
    labels = rng.integers(0, 4, 400)
    x = (centres[labels] + rng.normal(0, 1, (400, 20)) + 50).astype(np.float32)  # offset: scaling
    state = torch.get_rng_state()
    first = probing.probe_predictions(x[:300], labels[:300], x[300:], 4, False, 200, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert (first == labels[300:]).mean() > 0.95
    again = probing.probe_predictions(x[:300], labels[:300], x[300:], 4, False, 200, seed=3)
    np.testing.assert_array_equal(first, again)
    # multi-label: class k present when feature k is positive
    y = (x[:, :5] > 50).astype(np.float32)
    predicted = probing.probe_predictions(x[:300], y[:300], x[300:], 5, True, 300, seed=0)
    assert predicted.dtype == bool and predicted.shape == (100, 5)
    assert probing.probe_scores(y[300:], predicted, True)["f1_micro"] > 0.9
    # 50 steps of lr 1e-3 move the weights by about 0.05 at most: the paper's setting
    assert probing.probe_scores(labels[300:], probing.probe_predictions(
        x[:300], labels[:300], x[300:], 4, False, 1, seed=3), False)["accuracy"] < 0.9


def test_pooled_features_are_the_mean_of_the_full_models_hidden_states(tmp_path):
    speech_models.save_tiny_model(tmp_path / "w", "wav2vec2")
    speech_models.save_tiny_model(tmp_path / "h", "whisper")
    rng = np.random.default_rng(0)
    waveforms = [rng.normal(0, 0.1, n).astype(np.float32) for n in (8000, 8000, 8000, 12000, 8000)]
    for family, folder in (("wav2vec2", "w"), ("whisper", "h")):
        backbone, family = speech_models.load_backbone(tmp_path / folder)
        preprocessor = speech_models.AudioPreprocessor(
            speech_models.load_feature_extractor(tmp_path / folder, family), family)
        pooled = layer_features.pooled_layer_features(backbone, preprocessor, iter(waveforms),
                                                     [0, 2], batch_size=2)
        encoder = backbone.encoder if family == "whisper" else backbone
        for index, waveform in enumerate(waveforms):
            with torch.no_grad():
                hidden = encoder(torch.from_numpy(preprocessor(waveform[None])),
                                 output_hidden_states=True).hidden_states
            frames = preprocessor.whisper_frames(len(waveform)) if family == "whisper" else None
            for layer in (0, 2):
                expected = hidden[layer][0, :frames].mean(dim=0).numpy()
                np.testing.assert_allclose(pooled[layer][index], expected, rtol=1e-4, atol=1e-5)
        assert pooled[2].dtype == np.float32 and pooled[2].shape[0] == len(waveforms)


# ----------------------------------------------------------------------------- readers

def test_readers_follow_the_layouts(setup):
    timit_train = downstream_data.task_examples("phonemes", setup / "timit", "train")
    for example in timit_train[:6]:
        lines = example["audio"].with_suffix(".PHN").read_text().split("\n")
        expected = {downstream_data.TIMIT_61_TO_39[line.split()[2]] for line in lines if line}
        assert set(example["label"]) == expected
    kinds = [e["label"] for e in downstream_data.task_examples("sentence_type", setup / "timit",
                                                               "test")]
    assert kinds.count("SA") == kinds.count("SX") == kinds.count("SI") > 0

    root = setup / "speech_commands"
    listed = set((root / "testing_list.txt").read_text().split())
    listed |= set((root / "validation_list.txt").read_text().split())
    every = {f"{p.parent.name}/{p.name}" for p in root.glob("[!_]*/*.wav")}
    test = downstream_data.speech_commands_examples(root, "test")
    train = downstream_data.speech_commands_examples(root, "train")
    assert {f"{e['audio'].parent.name}/{e['audio'].name}" for e in test} == set(
        (root / "testing_list.txt").read_text().split())
    assert {f"{e['audio'].parent.name}/{e['audio'].name}" for e in train} == every - listed
    assert all(e["label"] == e["audio"].parent.name for e in train)

    crema_train = downstream_data.crema_d_examples(setup / "crema_d", "train", 0.2, seed=4)
    crema_test = downstream_data.crema_d_examples(setup / "crema_d", "test", 0.2, seed=4)
    assert not {e["speaker"] for e in crema_train} & {e["speaker"] for e in crema_test}
    assert len({e["speaker"] for e in crema_test}) == 2  # 20% of 10 actors
    assert {e["label"] for e in crema_test} == set(downstream_data.CREMA_D_EMOTIONS)
    assert all(e["audio"].stem.split("_")[2] == e["label"] for e in crema_train)

    lines = (setup / "slurp" / "test.jsonl").read_text().splitlines()
    slurp = downstream_data.slurp_examples(setup / "slurp", "test")
    assert len(slurp) == sum(len(json.loads(line)["recordings"]) for line in lines)
    assert slurp[1]["label"] == json.loads(lines[0])["action"]


# ----------------------------------------------------------------------------- scripts

@pytest.mark.parametrize("task", list(DATASETS))
def test_each_task_beats_chance_on_the_planted_signal(setup, task, capsys, caplog,
                                                      monkeypatch):
    plotted = {}
    original_plot = plots.plot_per_layer

    def plot(path, series, ylabel, title, chance=None):
        plotted.update(series=series, chance=chance)
        original_plot(path, series, ylabel, title, chance=chance)

    monkeypatch.setattr(plots, "plot_per_layer", plot)
    assert _run(setup, task, "--model_path", str(setup / "run")) == 0
    out = setup / "out" / f"model0_{task}"
    saved = json.loads((out / "results.json").read_text())
    # no arguments; where the data was read
    assert set(saved) == {"task", "dataset", "source", "classes", "models", "chance_f1_macro",
                          "results"}
    assert saved["source"] == {"data_path": str((setup / DATASETS[task]).resolve())}
    results = saved["results"]
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == [r["model"] for r in results] == ["pretrained"] * 3 + [
        "final"] * 3
    # multi-label: the exact match of the whole label set, named so and never printed
    third = "exact_match" if task == "phonemes" else "accuracy"
    assert set(rows[0]) == {"model", "layer", "f1_micro", "f1_macro", third, "n_train",
                            "n_test"}
    assert (out / f"{task}.png").stat().st_size > 1000
    config = json.loads((out / "run_config.json").read_text())
    assert config["arguments"]["num_epochs"] == 300 and "torch" in config["run"]["packages"]
    train = downstream_data.task_examples(task, setup / DATASETS[task], "train")
    test = downstream_data.task_examples(task, setup / DATASETS[task], "test")
    assert {int(r["n_train"]) for r in rows} == {len(train)}
    assert {int(r["n_test"]) for r in rows} == {len(test)}
    best = max(float(r["f1_micro"]) for r in rows)
    if task == "phonemes":
        # chance: the best constant answer, each class predicted when most training
        # utterances have it
        classes = downstream_data.TIMIT_39
        prior = probing.targets(train, classes, True).mean(axis=0) > 0.5
        y_test = probing.targets(test, classes, True)
        chance = probing.probe_scores(y_test, np.tile(prior, (len(test), 1)), True)["f1_micro"]
    else:
        labels = [e["label"] for e in test]
        chance = max(labels.count(label) for label in set(labels)) / len(labels)
    assert best > chance + 0.1, (best, chance)
    printed = capsys.readouterr().out
    assert "f1_macro:" in printed and "final" in printed
    if task == "phonemes":
        assert "accuracy" not in printed + caplog.text and "exact" not in printed + caplog.text
    # the chance line: guessing by the training label frequencies, recorded and drawn
    classes = saved["classes"]
    multi = downstream_data.TASKS[task].multi_label
    expected = probing.chance_f1_macro(probing.targets(train, classes, multi),
                                       probing.targets(test, classes, multi), len(classes), multi)
    assert saved["chance_f1_macro"] == pytest.approx(expected) == plotted["chance"]
    assert 0 < expected < max(float(r["f1_macro"]) for r in rows)
    assert set(plotted["series"]) == {"pretrained", "final"}


def test_features_are_cached_per_model_and_split(setup, monkeypatch):
    assert _run(setup, "words", "--layers", "1", save="cached") == 0

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    original = layer_features.pooled_layer_features
    monkeypatch.setattr(layer_features, "pooled_layer_features", no_extraction)
    assert _run(setup, "words", "--layers", "1", "--overwrite", save="cached") == 0
    asked = []

    def only_missing(backbone, preprocessor, waveforms, layers, *args, **kwargs):
        asked.append(list(layers))
        return original(backbone, preprocessor, waveforms, layers, *args, **kwargs)

    monkeypatch.setattr(layer_features, "pooled_layer_features", only_missing)
    assert _run(setup, "words", "--layers", "1", "2", "--overwrite", save="cached") == 0
    assert asked == [[2], [2]]  # train and test splits, the new layer only


def test_torchrun_on_two_cpu_processes_equals_one_process(setup, tmp_path):
    """torchrun with two processes (gloo on CPU) shares out the utterances to encode; rank 0
    writes the same results as one process."""
    flags = ["--layers", "1", "2", "--model_path", str(setup / "run")]
    assert _run(setup, "words", *flags, save="single") == 0
    repo = Path(probing.__file__).resolve().parent
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(repo / "eval_words.py"), "--data_path", str(setup / "speech_commands"),
               "--model_name", str(setup / "model0"), "--save_dir", str(tmp_path),
               "--num_epochs", "300", *flags]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    ours, single = (json.loads(next((folder).glob("*/results.json")).read_text())
                    for folder in (tmp_path, setup / "single"))
    assert [row["model"] for row in ours["results"]] == ["pretrained"] * 2 + ["final"] * 2
    assert [row["model"] for row in single["results"]] == ["pretrained"] * 2 + ["final"] * 2
    for mine, theirs in zip(ours["results"], single["results"]):
        assert sorted(mine) == sorted(theirs)
        for key, value in theirs.items():
            assert mine[key] == (value if isinstance(value, str) else
                                 pytest.approx(value, rel=1e-6, abs=1e-6)), key
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "feature_cache").rglob("*.hf5"))
    assert len(files) == 4  # 2 models x 2 splits, the same files as one process writes
    for name in files:
        with h5py.File(tmp_path / name) as mine, h5py.File(setup / "single" / name) as theirs:
            assert sorted(mine) == sorted(theirs) == ["layer_1", "layer_2"]
            for key in theirs:
                np.testing.assert_allclose(mine[key][()], theirs[key][()], rtol=1e-5, atol=1e-6)


def test_existing_results_are_kept_and_run_folders_resolve(setup, caplog):
    assert _run(setup, "emotion", "--layers", "0", save="keep") == 0
    assert _run(setup, "emotion", "--layers", "0", save="keep") == 1
    assert "exists; pass --overwrite" in caplog.text
    args = probing.parse_args("emotion", ["--data_path", "x", "--model_name", "m",
                                          "--model_path", str(setup / "run")])
    models = run_utils.models_to_evaluate(args.model_name, args.model_path, args.logs_dir,
                                          args.epochs, args.skip_pretrained)
    assert models[1] == ("final", str(setup / "run" / "final"))


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_failed_rerun_keeps_the_previous_results(setup, tmp_path, monkeypatch):
    save = tmp_path / "save"
    args = ["--model_name", str(setup / "model0"), "--save_dir", str(save), "--layers", "0",
            "--num_epochs", "5", "--max_examples", "40"]
    good = ["--data_path", str(setup / "speech_commands"), *args]
    assert probing.main("words", good) == 0
    out = save / "model0_words"
    before = _snapshot(out)
    assert run_utils.RUN_MARKER in before and "results.json" in before
    assert probing.main("words", ["--data_path", str(tmp_path / "nothing"), *args,
                                  "--overwrite"]) == 1
    assert _snapshot(out) == before

    def broken_plot(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "plot_per_layer", broken_plot)
    with pytest.raises(RuntimeError, match="disk full"):
        probing.main("words", [*good, "--overwrite"])
    assert _snapshot(out) == before
    assert sorted(p.name for p in save.iterdir()) == ["feature_cache", "model0_words"]
    monkeypatch.undo()
    assert probing.main("words", [*good, "--overwrite", "--num_epochs", "6"]) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["arguments"]["num_epochs"] == 6


def test_existing_folders_are_refused_before_any_work(setup, tmp_path, monkeypatch, caplog):
    save = tmp_path / "save"
    out = save / "model0_words"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")

    def no_reading(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(downstream_data, "task_examples", no_reading)
    args = ["--data_path", str(setup / "speech_commands"), "--model_name",
            str(setup / "model0"), "--save_dir", str(save)]
    assert probing.main("words", args) == 1
    assert "model0_words exists; pass --overwrite" in caplog.text
    caplog.clear()
    assert probing.main("words", [*args, "--overwrite"]) == 1  # no marker: not ours to replace
    assert "was not written by brain-tuning" in caplog.text
    assert _snapshot(out) == {"notes.txt": b"mine"}
    assert sorted(p.name for p in save.iterdir()) == ["model0_words"]  # no feature cache


@pytest.mark.parametrize("name", [".", "..", "a/b", ""])
def test_exp_name_must_be_a_plain_folder_name(name, capsys):
    with pytest.raises(SystemExit):
        probing.parse_args("words", ["--data_path", "x", "--model_name", "m", "--exp_name", name])
    assert "give a plain folder name" in capsys.readouterr().err


def test_generator_replaces_only_its_own_datasets(tmp_path, caplog):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("precious")
    assert synthetic_downstream.main(["--layout", "timit", "--out", str(theirs),
                                      "--overwrite"]) == 1
    assert "was not written by brain-tuning" in caplog.text
    assert _snapshot(theirs) == {"thesis.tex": b"precious"}
    ours = tmp_path / "ours"
    assert synthetic_downstream.main(["--layout", "timit", "--out", str(ours)]) == 0
    (ours / "stray.txt").write_text("old run")
    assert synthetic_downstream.main(["--layout", "timit", "--out", str(ours)]) == 1
    assert synthetic_downstream.main(["--layout", "timit", "--out", str(ours), "--seed", "2",
                                      "--overwrite"]) == 0
    assert not (ours / "stray.txt").exists() and (ours / run_utils.RUN_MARKER).is_file()
    assert len(downstream_data.timit_utterances(ours, "TEST")) == 24


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        probing.parse_args("intent", ["--help"])
    text = capsys.readouterr().out
    assert "--audio_dir" in text and "SLURP" in text and "(default: 0)" in text
    assert "--test_fraction" not in text


def test_config_file_section_probe_gives_the_settings_and_flags_override_it(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"description": "mine", "train": {"num_epochs": 3},
                                  "probe": {"num_epochs": 7, "lr": 0.01, "layers": [0, 2]}}))
    base = ["--data_path", "x", "--model_name", "m", "--config", str(config)]
    settings = probing.parse_args("words", base)
    assert (settings.num_epochs, settings.lr, settings.layers) == (7, 0.01, [0, 2])
    settings = probing.parse_args("words", [*base, "--num_epochs", "9", "--layers", "1"])
    assert (settings.num_epochs, settings.lr, settings.layers) == (9, 0.01, [1])
    config.write_text(json.dumps({"num_epochs": 4, "test_fraction": 0.5}))  # a flat file
    settings = probing.parse_args("emotion", base)
    assert settings.num_epochs == 4 and settings.test_fraction == 0.5
    assert settings.exp_name == "m_emotion"


def test_config_setting_that_is_no_flag_is_refused_in_one_line(tmp_path, capsys):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"probe": {"num_epoch": 7}}))
    with pytest.raises(SystemExit) as stop:
        probing.main("words", ["--data_path", "x", "--model_name", "m", "--save_dir",
                               str(tmp_path / "out"), "--config", str(config)])
    error = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and f": error: --config {config}: 'num_epoch'" in error[-1]
    assert "did you mean 'num_epochs'" in error[-1]
    assert not (tmp_path / "out").exists()
    # the probes share the section: a flag of another task's is that task's, skipped by this
    config.write_text(json.dumps({"probe": {"test_fraction": 0.5, "num_epochs": 7}}))
    words = probing.parse_args("words", ["--data_path", "x", "--model_name", "m", "--config",
                                         str(config)])
    assert words.num_epochs == 7 and words.test_fraction is None  # not a flag of words
    emotion = probing.parse_args("emotion", ["--data_path", "x", "--model_name", "m",
                                             "--config", str(config)])
    assert emotion.num_epochs == 7 and emotion.test_fraction == 0.5


# ----------------------------------------------------------------------------- bad input

def test_unknown_layouts_and_labels_are_named(setup, tmp_path, caplog):
    cases = []
    missing = tmp_path / "nothing"
    cases.append(("phonemes", missing, "no such directory"))
    commands = tmp_path / "commands"
    (commands / "yes").mkdir(parents=True)
    cases.append(("words", commands, "not a Speech Commands v2 folder"))
    crema = tmp_path / "crema"
    shutil.copytree(setup / "crema_d", crema)
    shutil.copy(next((crema / "AudioWAV").glob("*.wav")),
                crema / "AudioWAV" / "1001_IEO_BOR_XX.wav")
    cases.append(("emotion", crema, "1001_IEO_BOR_XX.wav: emotion 'BOR'"))
    timit = tmp_path / "timit"
    shutil.copytree(setup / "timit", timit)
    phn = next(timit.rglob("*.PHN"))
    phn.write_text(phn.read_text().replace(" h#", " xx", 1))
    cases.append(("phonemes", timit, f"{phn.name}: 'xx' is not one of the 61 TIMIT phones"))
    words = tmp_path / "words"
    shutil.copytree(setup / "speech_commands", words)
    (words / "banana").mkdir()
    cases.append(("words", words, "folders banana are not Speech Commands v2 words"))
    for task, path, message in cases:
        caplog.clear()
        assert probing.main(task, ["--data_path", str(path), "--model_name",
                                   str(setup / "model0"), "--save_dir", str(tmp_path / "o")]) == 1
        assert message in caplog.text, (task, caplog.text)


def test_unreadable_and_too_short_audio_are_named(setup, tmp_path, caplog):
    root = tmp_path / "commands"
    shutil.copytree(setup / "speech_commands", root)
    victim = downstream_data.speech_commands_examples(root, "train")[5]["audio"]
    victim.write_bytes(b"RIFF....WAVEfmt garbage")
    assert probing.main("words", ["--data_path", str(root), "--model_name",
                                  str(setup / "model0"), "--save_dir", str(tmp_path / "o")]) == 1
    assert f"{victim}: unreadable audio" in caplog.text
    sf.write(victim, np.zeros(100), 16000)
    caplog.clear()
    assert probing.main("words", ["--data_path", str(root), "--model_name",
                                  str(setup / "model0"), "--save_dir", str(tmp_path / "o")]) == 1
    assert f"{victim}: 100 samples, shorter than 25 ms" in caplog.text


def test_slurp_recording_missing_is_named(setup, tmp_path):
    root = tmp_path / "slurp"
    shutil.copytree(setup / "slurp", root)
    first = json.loads((root / "train.jsonl").read_text().splitlines()[0])
    (root / "slurp_real" / first["recordings"][0]["file"]).unlink()
    with pytest.raises(DatasetError, match=r"train.jsonl:1: recording .* is not in"):
        downstream_data.slurp_examples(root, "train")
    (root / "train.jsonl").write_text('{"action": "set"}\n')
    with pytest.raises(DatasetError, match=r"train.jsonl:1: expected a JSON object"):
        downstream_data.slurp_examples(root, "train")


def test_intent_actions_only_in_the_test_split_stay_classes(setup, tmp_path, caplog):
    slurp = tmp_path / "slurp"
    shutil.copytree(setup / "slurp", slurp)
    lines = (slurp / "test.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["action"] = "dance"
    (slurp / "test.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    assert probing.main("intent", ["--data_path", str(slurp), "--model_name",
                                   str(setup / "model0"), "--save_dir", str(tmp_path / "o"),
                                   "--layers", "0", "--num_epochs", "5"]) == 0
    assert "1 test label(s) have no training example (dance)" in caplog.text
    config = json.loads((tmp_path / "o" / "model0_intent" / "run_config.json").read_text())
    train = downstream_data.task_examples("intent", slurp, "train")
    assert config["classes"] == sorted({e["label"] for e in train} | {"dance"})


def test_max_examples_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        probing.parse_args("words", ["--data_path", "x", "--model_name", "m",
                                     "--max_examples", "0"])
    assert "--max_examples must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [
    ["--batch_size", "0"], ["--num_epochs", "0"], ["--lr", "0"], ["--lr", "nan"],
    ["--seed", "-1"], ["--layers", "0", "-1"], ["--test_fraction", "0"],
    ["--test_fraction", "1.5"]])
def test_bad_counts_and_fractions_are_parser_errors(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as stop:
        probing.main("emotion", ["--data_path", str(tmp_path), "--model_name", "m",
                                 "--save_dir", str(tmp_path / "out"), *flags])
    assert stop.value.code == 2 and flags[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["probing", "asr", "downstream_data", "low_level_features"])
def test_library_modules_say_they_have_no_command_line(module):
    done = subprocess.run([sys.executable, f"{module}.py", "--help"], capture_output=True,
                          text=True, cwd=Path(probing.__file__).parent)
    assert done.returncode != 0 and not done.stdout
    assert f"{module}.py is a library module with no command line" in done.stderr
    assert "Traceback" not in done.stderr


def test_crema_d_single_letter_levels_and_empty_recordings(setup, tmp_path, caplog):
    crema = tmp_path / "crema"
    shutil.copytree(setup / "crema_d", crema)
    audio = crema / "AudioWAV"
    shutil.copy(next(audio.glob("*.wav")), audio / "1040_ITH_SAD_X.wav")
    sf.write(audio / "1076_MTI_SAD_XX.wav", np.zeros(0, np.float32), 16000)
    examples = [e for split in ("train", "test")
                for e in downstream_data.crema_d_examples(crema, split)]
    names = {e["audio"].name for e in examples}
    assert "1040_ITH_SAD_X.wav" in names and "1076_MTI_SAD_XX.wav" not in names
    assert "1076_MTI_SAD_XX.wav: holds no audio; left out" in caplog.text
    assert len(examples) == len(list(audio.glob("*.wav"))) - 1
