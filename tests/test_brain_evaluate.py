"""brain_evaluate.py: features, caching, encoding scores on the planted signal, the CLI."""

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse
import soundfile as sf
import torch

import alignment_analyses
import alignment_outputs
import brain_evaluate
import brain_trainer_story
import brain_regions
import damage
import data_utils
import encoding
import eval_utils
import finished_results
import layer_features
import low_level_features
import noise_ceilings
import processes
import report
import results_schema
import run_utils
import speech_models
import summaries
import synthetic_data

# Shorter windows than the paper's (16 s context, 0.1 s steps) keep the CPU tests quick.
QUICK = ["--context_s", "3", "--chunk_s", "0.5", "--n_boots", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "ds"
    synthetic_data.generate(data, seed=4, subjects=(1,), n_train_stories=2, train_trs=40,
                            test_trs=100, n_voxels=30, n_words=10)
    noise_ceilings.get_noise_ceiling(data_utils.Dataset(data), 1, root / "UTS01.npy")
    for seed in (0, 1):
        speech_models.save_tiny_model(root / f"model{seed}", "wav2vec2", seed=seed)
    return root, data


def _run(setup, *extra, save="out"):
    root, data = setup
    return brain_evaluate.main([
        "--model_name", str(root / "model0"), "--model_path", str(root / "model1"),
        "--subject", "1", "--data_dir", str(data), "--nc_path", str(root / "UTS01.npy"),
        "--save_dir", str(root / save), "--exp_name", "run", *QUICK, *extra])


def test_the_intersubject_ceiling_needs_subjects_that_share_voxels(setup, caplog):
    """ds003020's voxels are each subject's own: --normalise_by intersubject is refused."""
    assert _run(setup, "--normalise_by", "intersubject", "--test_target", "data",
                save="intersubject") == 1
    assert "share their voxels (--dataset narratives)" in caplog.text


def _authors_scores(repeats, prediction):
    """The authors' ``spe_and_cc_norm`` written from the formula (docs/method.md#scoring): r
    with the mean over repeats, cc_max from those rows (unit-variance repeats), cc_norm = r /
    cc_max."""
    n = len(repeats)
    mean = repeats.astype(np.float64).mean(axis=0)
    signal_power = (n * mean.var(axis=0, ddof=1) - 1) / (n - 1)
    cc_max = np.zeros(mean.shape[1])
    positive = signal_power > 0
    cc_max[positive] = 1 / np.sqrt(1 + (1 / n) * (1 / signal_power[positive] - 1))
    r = np.array([np.corrcoef(mean[:, v], prediction[:, v])[0, 1] for v in range(mean.shape[1])])
    return r, np.where(cc_max > 0, r / np.where(cc_max > 0, cc_max, 1), 0), cc_max


def test_cli_end_to_end(setup, capsys):
    root, data = setup
    nc = np.load(root / "UTS01.npy")
    roi = {"first": list(range(10)), "rest": list(range(10, 30)), "both": ["first", "rest"]}
    (root / "roi.json").write_text(json.dumps(roi))
    assert _run(setup, "--layers", "1", "2", "--roi_file", str(root / "roi.json"),
                "--nc_thr", "0.2") == 0
    out = root / "out" / "run"
    printed = capsys.readouterr().out
    assert "pretrained" in printed and "model1" in printed and "L2" in printed
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["model"], r["layer"], r["region"], r["aggregation"]) for r in rows} == {
        (m, l, g, a) for m in ("pretrained", "model1") for l in ("1", "2")
        for g in ("all", "first", "rest", "both") for a in ("voxel_mean", "parcel_mean")}
    results = json.loads((out / "results.json").read_text())
    assert len(results["results"]) == len(rows) and results["subject"] == "UTS01"
    assert results["protocol"]["test_target"] == "repeats_mean"
    assert results["protocol"]["normalise_by"] == "test_repeats"
    assert results["protocol"]["alpha_score"] == "r2"
    assert results["protocol"]["tr_source"] == "respdict"
    repeats = damage.read_hdf5(data, 1, data_utils.TEST_STORY, "individual_repeats")
    regions = {"all": np.arange(30), "first": np.arange(10), "rest": np.arange(10, 30)}
    for row in rows:
        voxels = np.load(out / f"voxels_{row['model']}_layer{row['layer']}.npz")
        predictions = np.load(out / f"predictions_{row['model']}_layer{row['layer']}.npz")
        assert predictions["prediction"].dtype == np.float32
        np.testing.assert_array_equal(predictions["rows"], np.arange(40, 80))
        r, cc_norm, cc_max = _authors_scores(repeats[:, predictions["rows"]],
                                             predictions["prediction"])
        assert voxels["alpha"].shape == voxels["p_value"].shape == (30,)
        np.testing.assert_allclose(voxels["cc_norm"], cc_norm, atol=1e-5)
        np.testing.assert_allclose(voxels["r"], r, atol=1e-5)
        if row["aggregation"] == "voxel_mean":
            region = (np.arange(30) if row["region"] in ("all", "both")
                      else regions[row["region"]])
            expected = cc_norm[region[nc[region] > 0.2]].mean()
        else:
            followup = np.where(cc_max > 0.05, cc_norm, 0)
            means = [followup[regions[name]].mean() for name in
                     (["first", "rest"] if row["region"] == "both" else [row["region"]])]
            expected = np.mean(means)
        assert float(row["cc_norm"]) == pytest.approx(expected, abs=1e-5)
        assert float(row["cc_norm_ci_low"]) <= float(row["cc_norm"]) <= float(
            row["cc_norm_ci_high"])
    for name in ("alignment.png", "comparison.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {(c["model"], c["layer"]) for c in results["comparisons"]} == {
        ("model1", 1), ("model1", 2)}
    # the arguments are stored once, in run_config.json; results.json holds the run's facts
    config = json.loads((out / "run_config.json").read_text())
    assert config["arguments"]["layers"] == [1, 2] and config["arguments"]["nc_thr"] == 0.2
    assert config["arguments"]["test_target"] == "repeats_mean"
    assert "arguments" not in config["run"] and config["models"] == results["models"]
    assert "arguments" not in results and "run" not in results
    assert results["train_stories"] == config["train_stories"]
    # the manifest: every input with its content hash, the models' fingerprints, the code
    inputs = config["inputs"]
    dataset = data_utils.Dataset(data)
    read = [root / "UTS01.npy", *dataset.input_files(1, [*results["train_stories"],
                                                          results["test_story"]]), root / "roi.json"]
    assert inputs["files"] == [str(path.resolve()) for path in read]
    assert inputs["sha256"] == [run_utils.content_hash(path) for path in read]
    assert inputs["model_fingerprints"] == {
        "pretrained": speech_models.load_encoder(root / "model0").fingerprint,
        "model1": speech_models.load_encoder(root / "model1").fingerprint}
    assert config["run"]["code"] == run_utils.code_version() and config["run"]["command"]


def test_features_are_cached_and_reused(setup, monkeypatch):
    assert _run(setup, save="cached") == 0
    first = json.loads((setup[0] / "cached" / "run" / "results.json").read_text())["results"]

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(layer_features, "sliding_window_features", no_extraction)
    assert _run(setup, "--overwrite", save="cached") == 0
    again = json.loads((setup[0] / "cached" / "run" / "results.json").read_text())["results"]
    assert again == first


def _run_shared(setup, *extra, save):
    """``_run`` with a feature cache shared by the tests below (features extracted once)."""
    return _run(setup, "--cache_dir", str(setup[0] / "shared_cache"), *extra, save=save)


def _snapshot(folder):
    return {path.relative_to(folder): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _no_model_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(speech_models, "load_encoder", fail)


def test_a_narrow_penalty_grid_is_warned_of_with_a_wider_one(setup, caplog):
    """--alphas 0.01 0.1 1 is far below what these voxels need: most choose its highest alpha.
    Each (model, layer) says so in one warning line with a wider grid, results.json and
    alpha_grid.csv record it, and the counts agree with the per-voxel alphas saved."""
    root = setup[0]
    with caplog.at_level(logging.WARNING):
        assert _run(setup, "--layers", "2", "--nc_thr", "0.2", "--alphas", "0.01", "0.1", "1",
                    save="narrow") == 0
    out = root / "narrow" / "run"
    grids = json.loads((out / "results.json").read_text())["alpha_grid"]
    assert [(g["model"], g["layer"], g["low_level"]) for g in grids] == [
        ("pretrained", 2, "none"), ("model1", 2, "none")]
    scored = np.load(out / run_utils.SUMMARY_VOXELS_NAME)
    warnings = [r.getMessage() for r in caplog.records if "too narrow" in r.getMessage()]
    assert len(warnings) == 2
    for grid, warning in zip(grids, warnings):
        assert grid["alphas"] == [0.01, 0.1, 1.0] and grid["n_voxels"] == len(scored)
        assert grid["highest_fraction"] > 0.5
        at_highest = np.load(out / run_utils.voxel_results_name(grid["model"], 2))["alpha"]
        assert grid["highest_fraction"] * len(scored) <= (at_highest[scored] == 1.0).sum()
        assert grid["wider_alphas"][-1] == pytest.approx(1000)  # three decades up
        assert set(np.round(np.log10(grid["wider_alphas"]), 9)) >= {-2, -1, 0, 1, 2, 3}
        assert warning.startswith(f"{grid['model']} layer 2: of the {len(scored)} voxels")
        assert warning.count("\n") == 0 and "--alphas " + " ".join(
            f"{a:.4g}" for a in grid["wider_alphas"]) in warning
    assert (out / "alpha_grid.png").exists()
    rows = list(csv.DictReader(open(out / "alpha_grid.csv")))
    assert [float(row["highest_fraction"]) for row in rows] == [
        g["highest_fraction"] for g in grids]


def test_existing_results_are_refused_before_any_work(setup, caplog, monkeypatch):
    root, _ = setup
    assert _run_shared(setup, "--layers", "2", save="kept") == 0
    before = _snapshot(root / "kept" / "run")
    _no_model_loading(monkeypatch)
    assert _run(setup, "--layers", "2", "--cache_dir", str(root / "kept_cache"), save="kept") == 1
    assert "--overwrite" in caplog.text
    assert not (root / "kept_cache").exists()
    assert _snapshot(root / "kept" / "run") == before


def test_a_folder_not_written_by_the_project_is_not_replaced(setup, caplog, monkeypatch):
    root, _ = setup
    foreign = root / "foreign" / "run"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    _no_model_loading(monkeypatch)
    assert _run(setup, "--overwrite", save="foreign") == 1
    assert "not written by brain-tuning" in caplog.text
    assert _snapshot(foreign) == {Path("notes.txt"): b"mine"}


def test_a_results_folder_in_use_by_another_run_is_refused(setup, caplog, monkeypatch,
                                                           hold_lock):
    root, _ = setup
    holder = hold_lock(root / "busy" / "run")
    _no_model_loading(monkeypatch)
    assert _run(setup, "--overwrite", save="busy") == 1
    assert f"in use by another run (process {holder} " in caplog.text
    assert not (root / "busy" / "run").exists()


def test_a_failed_or_interrupted_rerun_leaves_the_previous_results(setup, monkeypatch):
    root, _ = setup
    out = root / "failed"
    assert _run_shared(setup, "--layers", "2", save=out.name) == 0
    before = _snapshot(out / "run")
    for failure in (["--train_stories", "soulz"], ["--test_story", "nosuch"], ["--layers", "5"]):
        assert _run_shared(setup, "--layers", "2", "--overwrite", *failure, save=out.name) == 1
        assert _snapshot(out / "run") == before, failure

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(alignment_outputs.plots, "plot_per_layer", interrupt)  # while writing
    with pytest.raises(KeyboardInterrupt):
        _run_shared(setup, "--layers", "2", "--overwrite", save=out.name)
    assert _snapshot(out / "run") == before
    # no leftovers but the finished results, which --resume completes without a ridge fit
    assert sorted(p.name for p in out.iterdir()) == [".run.partial", "run"]
    monkeypatch.undo()
    fits = _count_calls(monkeypatch, alignment_analyses, "layer_scores")
    assert _run_shared(setup, "--layers", "2", "--overwrite", "--resume", save=out.name) == 0
    assert len(fits) == 0
    assert sorted(p.name for p in out.iterdir()) == ["run"]


def test_a_rerun_with_fewer_layers_leaves_no_files_of_the_earlier_run(setup):
    root, _ = setup
    out = root / "fewer" / "run"
    assert _run_shared(setup, "--layers", "1", "2", save="fewer") == 0
    assert len(list(out.glob("voxels_*_layer1.npz"))) == 2
    assert _run_shared(setup, "--layers", "2", "--overwrite", save="fewer") == 0
    assert sorted(p.name for p in out.glob("*.npz")) == [
        "predictions_model1_layer2.npz", "predictions_pretrained_layer2.npz",
        "voxels_model1_layer2.npz", "voxels_pretrained_layer2.npz"]
    assert {row["layer"] for row in json.loads((out / "results.json").read_text())["results"]} \
        == {2}


@pytest.mark.parametrize("flags, message", [
    (["--exp_name", "."], "--exp_name"), (["--exp_name", "a/b"], "--exp_name"),
    (["--n_boots", "0"], "--n_boots"), (["--chunk_len", "0"], "--chunk_len"),
    (["--batch_size", "0"], "--batch_size"), (["--context_s", "0"], "--context_s"),
    (["--chunk_s", "-1"], "--chunk_s"), (["--skip_pretrained"], "nothing to evaluate"),
    (["--fdr_q", "1"], "--fdr_q"), (["--train_fraction", "0"], "--train_fraction"),
    (["--n_permutations", "-1"], "--n_permutations"), (["--block_len", "0"], "--block_len"),
    (["--n_bootstrap", "nan"], "--n_bootstrap"), (["--alphas", "0"], "--alphas: ridge penalties"),
    (["--alphas", "-10", "0"], "got -10.0 0.0"), (["--low_level_alphas", "1", "nan"],
                                                   "--low_level_alphas"),
    (["--nc_thr", "1.5"], "--nc_thr must be in [0, 1)"), (["--nc_thr", "-0.1"], "--nc_thr"),
    (["--train_story_counts", "3", "0"], "--train_story_counts must be at least 1"),
    (["--partition_ratios", "0"], "--partition_ratios: ridge penalties"),
    (["--low_level_method", "drop"], "--low_level_method: invalid choice")])
def test_bad_flags_are_parser_errors(setup, flags, message, capsys):
    root, data = setup
    with pytest.raises(SystemExit):
        brain_evaluate.parse_args(["--model_name", str(root / "model0"), "--subject", "1",
                                   "--data_dir", str(data), *flags])
    assert message in capsys.readouterr().err


def test_default_layers_clip_to_depth_and_explicit_ones_do_not(setup, caplog):
    assert run_utils.choose_layers(None, 2, alignment_analyses.DEFAULT_LAYERS) == [2]
    assert run_utils.choose_layers(None, 12, alignment_analyses.DEFAULT_LAYERS) == [
        2, 5, 7, 8, 10, 11, 12]
    assert _run(setup, "--layers", "5", save="deep") == 1
    assert "0..2" in caplog.text


@pytest.mark.parametrize("flags, message", [
    (["--layers", "5"], "--layers 5: the model has hidden states 0..2 only"),
    (["--model_path", "/nonexistent/model"], "/nonexistent/model: no such model directory")])
def test_a_model_flag_that_cannot_work_stops_before_any_extraction(setup, tmp_path, caplog,
                                                                   monkeypatch, flags, message):
    extracted = []
    monkeypatch.setattr(alignment_analyses, "evaluate_model",
                        lambda *args, **kwargs: extracted.append(args))
    root, data = setup
    assert brain_evaluate.main([
        "--model_name", str(root / "model0"), "--subject", "1", "--data_dir", str(data),
        "--nc_path", str(root / "UTS01.npy"), "--save_dir", str(tmp_path), *QUICK,
        *flags]) == 1
    assert message in _one_error_line(caplog) and not extracted


def test_noise_ceiling_of_wrong_length_is_refused(setup, caplog):
    root, _ = setup
    np.save(root / "short.npy", np.ones(7))
    assert _run(setup, "--nc_path", str(root / "short.npy"), save="badnc") == 1
    assert "another subject" in caplog.text


def test_test_story_without_repeats(setup, tmp_path, caplog):
    root, data = setup
    assert brain_evaluate.main([
        "--model_name", str(root / "model0"), "--subject", "1", "--data_dir", str(data),
        "--nc_path", str(tmp_path / "missing.npy"), "--test_story", "stagefright",
        "--save_dir", str(tmp_path), *QUICK]) == 1
    assert "individual_repeats" in caplog.text


@pytest.mark.parametrize("family, passes", [("wav2vec2", 9), ("whisper", 2)])
def test_batched_features_equal_the_naive_path(tmp_path, family, passes, monkeypatch):
    speech_models.save_tiny_model(tmp_path, family)
    backbone, family = speech_models.load_backbone(tmp_path)
    preprocessor = speech_models.AudioPreprocessor(
        speech_models.load_feature_extractor(tmp_path, family), family)
    audio = np.random.default_rng(0).standard_normal(16000 * 5).astype(np.float32)
    calls = []
    forward = layer_features.layer_hidden_states
    monkeypatch.setattr(layer_features, "layer_hidden_states",
                        lambda *args: calls.append(len(args[2])) or forward(*args))
    fast, times = layer_features.sliding_window_features(backbone, preprocessor, audio, [0, 2],
                                                        context_s=2.0, chunk_s=0.25)
    # 20 windows: 8 shorter ones at the start, then 12 of 2.25 s; wav2vec2 batches windows of
    # one length, Whisper (every input padded to 30 s) all of them
    assert len(calls) == passes and sum(calls) == 20
    monkeypatch.setattr(layer_features, "layer_hidden_states", forward)
    slow, _ = layer_features.sliding_window_features(backbone, preprocessor, audio, [0, 2],
                                                    context_s=2.0, chunk_s=0.25, naive=True)
    np.testing.assert_allclose(times, np.arange(1, 21) * 0.25)
    for layer in (0, 2):
        assert fast[layer].shape == (20, 32) and fast[layer].dtype == np.float32
        np.testing.assert_allclose(fast[layer], slow[layer], atol=1e-5)
    # the last window is the final 2.25 s; its last frame equals the full model's
    window = torch.from_numpy(preprocessor(audio[None, -36000:]))
    with torch.inference_mode():
        encoder = backbone.encoder if family == "whisper" else backbone
        hidden = encoder(window, output_hidden_states=True).hidden_states
    frame = preprocessor.whisper_frames(36000) - 1 if family == "whisper" else -1
    np.testing.assert_allclose(fast[2][-1], hidden[2][0, frame].numpy(), atol=1e-5)


def test_the_authors_cv_chunks_and_delays_reach_the_ridge_and_are_recorded(setup, monkeypatch):
    """--cv_chunks stacked and --delays stacked: the alphas are chosen on the authors' chunks
    of the stacked rows and the training design is delayed after stacking; both recorded in
    results.json's protocol, neither listed as a departure from the paper (they are the
    authors' code's choices, not the paper's)."""
    root, _ = setup
    modes, stacked_rows = [], []
    delayed, stacked = eval_utils.delayed_story_features, eval_utils.stacked_chunk_splits
    monkeypatch.setattr(eval_utils, "delayed_story_features", lambda *args, **kwargs: (
        modes.append(kwargs.get("mode", "per_story")) or delayed(*args, **kwargs)))
    monkeypatch.setattr(eval_utils, "stacked_chunk_splits", lambda *args, **kwargs: (
        stacked_rows.append(args[0]) or stacked(*args, **kwargs)))
    assert _run(setup, "--cv_chunks", "stacked", "--delays", "stacked", "--chunk_len", "5",
                "--layers", "1", "--n_permutations", "0", "--n_bootstrap", "0",
                save="authors_cv") == 0
    dataset = data_utils.Dataset(setup[1])
    stories = encoding.training_stories(dataset, "UTS01", None, data_utils.TEST_STORY)
    assert stacked_rows == [sum(dataset.response_rows(s) for s in stories)]
    assert modes.count("stacked") == 2  # the training design of each model's layer
    results = json.loads((root / "authors_cv" / "run" / "results.json").read_text())
    assert results["protocol"]["cv_chunks"] == "stacked"
    assert results["protocol"]["delays"] == "stacked"
    assert results["protocol"]["whisper_frame"] == "ours"
    assert not {"--cv_chunks", "--delays", "--whisper_frame"} & {
        departure["setting"] for departure in results["departures"]}
    defaults = brain_evaluate.parse_args(["--model_name", "m", "--subject", "1", "--data_dir",
                                          "d"])
    assert (defaults.cv_chunks, defaults.delays) == ("within_stories", "per_story")


def _authors_whisper_frame(backbone, extractor, n_samples):
    """The frame of a Whisper window as the authors' extract_speech_features finds it: the
    feature extractor's attention mask through ones-kernels of the encoder's conv1 and conv2,
    the last nonzero output."""
    mask = extractor([np.zeros(n_samples, np.float32)], sampling_rate=16000, return_tensors="np",
                     return_attention_mask=True).attention_mask
    out = torch.from_numpy(mask[:1].astype(np.float32))[None]
    for conv in (backbone.encoder.conv1, backbone.encoder.conv2):
        out = torch.nn.functional.conv1d(out, torch.ones((1, 1, *conv.kernel_size)),
                                         stride=conv.stride, padding=conv.padding)
    return int(out[0, 0].nonzero().max())


def test_the_authors_whisper_frame_is_the_one_after_ours(tmp_path, monkeypatch):
    """--whisper_frame authors: the frame the authors' code takes (m/2 for m mel frames), one
    after ours (m/2 - 1) for windows of whole hops, each the hidden state of a full forward pass
    at that frame; the cache keeps the two apart."""
    speech_models.save_tiny_model(tmp_path / "whisper", "whisper")
    backbone, family = speech_models.load_backbone(tmp_path / "whisper")
    extractor = speech_models.load_feature_extractor(tmp_path / "whisper", family)
    preprocessor = speech_models.AudioPreprocessor(extractor, family)
    hop = extractor.hop_length
    for n in (1, 159, 160, 161, 1600, 1601, 1759, 1760, 4000, 36000, 257600, 479999, 480000):
        authors = layer_features.whisper_window_frame(preprocessor, n, "authors")
        ours = layer_features.whisper_window_frame(preprocessor, n, "ours")
        assert authors == _authors_whisper_frame(backbone, extractor, n), n
        assert ours == preprocessor.whisper_frames(n) - 1
        if n % hop == 0 and n < 480000:
            assert authors == ours + 1, n
    assert layer_features.whisper_window_frame(preprocessor, 480000, "authors") == 1499
    with pytest.raises(ValueError, match="unknown Whisper frame rule"):
        layer_features.whisper_window_frame(preprocessor, 1600, "theirs")

    audio = np.random.default_rng(1).standard_normal(16000 * 3).astype(np.float32)
    features = {rule: layer_features.sliding_window_features(
        backbone, preprocessor, audio, [1, 2], context_s=1.0, chunk_s=0.25, whisper_frame=rule)[0]
        for rule in ("ours", "authors")}
    ends = layer_features.window_ends(len(audio), 4000)
    starts = np.maximum(0, ends - 20000)
    with torch.inference_mode():
        for index, (start, end) in enumerate(zip(starts, ends)):  # brute force, one by one
            window = torch.from_numpy(preprocessor(audio[None, start:end]))
            hidden = backbone.encoder(window, output_hidden_states=True).hidden_states
            frame = preprocessor.whisper_frames(end - start) - 1
            for layer in (1, 2):
                np.testing.assert_allclose(features["ours"][layer][index],
                                           hidden[layer][0, frame].numpy(), atol=1e-5)
                np.testing.assert_allclose(features["authors"][layer][index],
                                           hidden[layer][0, frame + 1].numpy(), atol=1e-5)
    assert not np.allclose(features["ours"][2], features["authors"][2])

    # the flag reaches the extraction, and the cache keys the authors' frame apart from ours
    settings = brain_evaluate.parse_args(["--model_name", "m", "--subject", "1", "--data_dir",
                                          "d", "--whisper_frame", "authors"])
    assert settings.extraction(None).whisper_frame == "authors"
    assert alignment_outputs.protocol(settings)["whisper_frame"] == "authors"
    assert brain_evaluate.parse_args(["--model_name", "m", "--subject", "1", "--data_dir",
                                      "d"]).whisper_frame == "ours"
    data = tmp_path / "ds"
    synthetic_data.generate(data, seed=0, subjects=(1,), n_train_stories=1, train_trs=30,
                            test_trs=60, n_voxels=8, n_words=6)
    encoder = speech_models.load_encoder(tmp_path / "whisper")
    dataset = data_utils.Dataset(data)
    story = dataset.stories("UTS01")[0]
    rules = []
    monkeypatch.setattr(layer_features, "sliding_window_features",
                        lambda *args, whisper_frame, **kwargs: rules.append(whisper_frame) or (
                            {1: np.zeros((2, 64), np.float32)}, np.array([1.0, 2.0])))
    for rule in ("ours", "authors", "ours", "authors"):
        extraction = layer_features.Extraction(2.0, 1.0, 16, False, None, rule)
        layer_features.cached_story_features(encoder, dataset, story, [1], extraction,
                                             tmp_path / "cache")
    assert rules == ["ours", "authors"]  # each extracted once, then read from the cache
    assert len(list((tmp_path / "cache").rglob("*.hf5"))) == 2


# ----------------------------------------------------------------------------- planted signal

def _planted_window_features(data_dir, story, truth, rng=None):
    """0.1 s features: each word's planted embedding at its midpoint (or random numbers)."""
    duration = truth["stories"][story]["duration_s"]
    times = np.arange(1, int(duration * 10) + 1) / 10.0
    features = np.zeros((len(times), truth["semantic_dim"]), np.float32)
    if rng is not None:
        return rng.standard_normal(features.shape).astype(np.float32), times
    for start, end, word in data_utils.Dataset(data_dir).words(story):
        step = min(int((start + end) / 2 * 10), len(times) - 1)
        features[step] += truth["words"][word]["embedding"]
    return features, times


def _task(stories, test_story, train, test, nc, splits, alphas, alpha_score="corr",
          subsets=None, regions=None, groups=None):
    """An EncodingTask of given responses: cc_norm = r / nc, every voxel summarised (also per
    region and group), no permutations or bootstrap."""
    voxels = np.ones(len(nc), bool)
    return encoding.EncodingTask(
        stories, test_story, encoding.Responses(train, test, nc, nc), voxels,
        summaries.summary_weights(voxels, nc, regions or {}, groups or {}), splits,
        subsets or {}, alphas,
        alpha_score, 0.0, encoding.Uncertainty(0, 10, 0, None, None, None, 0.05))


def test_planted_semantic_voxels_are_found_only_with_the_planted_features(tmp_path):
    synthetic_dir = tmp_path / "ds"
    synthetic_data.generate(synthetic_dir, seed=5, subjects=(1,), n_train_stories=6,
                            train_trs=100, test_trs=311, n_voxels=60, n_words=24)
    dataset = data_utils.Dataset(synthetic_dir)
    truth = dataset.truth()
    subject = truth["subjects"]["UTS01"]
    stories = [s for s, info in truth["stories"].items() if info["split"] == "train"]
    test = data_utils.TEST_STORY
    nc = eval_utils.noise_ceiling(dataset.repeats(1)).astype(np.float64)
    train_responses = np.vstack([dataset.responses(1, s) for s in stories])
    test_responses = dataset.responses(1, test)[data_utils.TEST_RESPONSE_TRIM:]
    splits = eval_utils.bootstrap_chunk_splits(
        [dataset.response_rows(s) for s in stories], n_boots=3, chunk_len=10)
    semantic = np.array(subject["semantic_voxels"])
    semantic = semantic[nc[semantic] > 0.4]
    noise = np.array(subject["noise_voxels"])
    scores = {}
    for name, rng in (("planted", None), ("random", np.random.default_rng(0))):
        tr_level = {}
        for story in [*stories, test]:
            features, times = _planted_window_features(synthetic_dir, story, truth, rng)
            tr_level[story] = eval_utils.lanczos_interp(features, times,
                                                        dataset.tr_times(story))
        task = _task(stories, test, train_responses, test_responses, nc, splits,
                     np.logspace(0, 5, 11))
        scores[name] = encoding.layer_scores(tr_level, task, what=name)["cc_norm"]
    assert scores["planted"][semantic].mean() > 0.4  # ridge on 480 noisy rows: not 1
    assert abs(scores["random"][semantic].mean()) < 0.15
    assert abs(scores["planted"][noise].mean()) < 0.15

    # data efficiency: the planted features predict better the more training rows they have
    tr_level = {}
    for story in [*stories, test]:
        features, times = _planted_window_features(synthetic_dir, story, truth)
        tr_level[story] = eval_utils.lanczos_interp(features, times, dataset.tr_times(story))
    lengths = [dataset.response_rows(s) for s in stories]
    fractions = (0.1, 0.25, 0.5)
    subsets = {encoding.subset_label(fraction=f): encoding.training_subset(lengths, f, 3, 10)
               for f in fractions}
    task = _task(stories, test, train_responses, test_responses, nc, splits,
                 np.logspace(0, 5, 11), subsets=subsets)
    curve = [encoding.layer_scores(tr_level, task, what="planted",
                                   subset=encoding.subset_label(fraction=f))[
        "cc_norm"][semantic].mean() for f in fractions]
    curve.append(scores["planted"][semantic].mean())
    assert all(a < b for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] - curve[0] > 0.2, curve


def test_variance_partitioning_recovers_planted_unique_and_shared_parts():
    """Layer features [S, A] and a low-level set [S, B] of independent streams; voxels read
    A only, B only, S only or all three equally (plus noise): the parts of the explainable
    variance are, by construction, (1, 0, 0), (0, 0, 1), (0, 1, 0) and thirds. The intervals
    come from the same resamples as a brute-force recomputation on resampled rows."""
    rng = np.random.default_rng(8)
    stories, test = ["a", "b", "c", "d"], "t"
    n_trs = {story: 415 for story in stories} | {test: 415}
    streams = {story: {name: rng.standard_normal((n, 3)).astype(np.float32)
                       for name in "SAB"} for story, n in n_trs.items()}
    layer = {story: np.hstack([x["S"], x["A"]]) for story, x in streams.items()}
    low = {story: np.hstack([x["S"], x["B"]]) for story, x in streams.items()}
    designs = {name: encoding.design_matrices({s: x[name] for s, x in streams.items()}, stories,
                                              test) for name in "SAB"}
    mixes = {"A": (0, 1, 0), "B": (0, 0, 1), "S": (1, 0, 0), "all": (1, 1, 1)}
    reads = [mix for mix in mixes.values() for _ in range(6)]
    weights = rng.standard_normal((12, len(reads)))
    weights *= np.sqrt(12) / np.linalg.norm(weights, axis=0)  # unit variance per stream read

    def responses(part):  # signal of unit variance per stream read, and noise of variance 1
        signal = sum(designs[name][part] @ weights * np.array([m[i] for m in reads])
                     / np.sqrt(12 * np.array([sum(m) for m in reads]))
                     for i, name in enumerate("SAB"))
        return signal + rng.standard_normal(signal.shape)

    train, target = responses(0), responses(1)
    ceiling = np.sqrt(1 / 2)  # explainable share of the variance: signal 1, noise 1
    splits = eval_utils.bootstrap_chunk_splits([n - 15 for n in n_trs.values()][:4], 3, 20)
    task = _task(stories, test, train.astype(np.float32), target.astype(np.float32),
                 np.full(len(reads), ceiling), splits, np.logspace(0, 4, 9))
    counts, starts = eval_utils.bootstrap_block_counts(len(target), 10, 200, seed=2)
    task = task._replace(uncertainty=task.uncertainty._replace(bootstrap_counts=counts,
                                                               block_starts=starts))
    own = encoding.layer_scores(layer, task._replace(uncertainty=task.uncertainty._replace(
        bootstrap_counts=None)))
    scores = encoding.partition_scores(layer, low, task, own["prediction"],
                                       encoding.low_level_prediction(low, task),
                                       alignment_analyses.PARTITION_RATIOS)
    parts = np.stack([scores[name] for name in summaries.PARTITION_PARTS], 1)
    for index, mix in enumerate(mixes.values()):
        expected = np.array([mix[1], mix[0], mix[2]]) / sum(mix)  # layer, shared, low-level
        np.testing.assert_allclose(parts[6 * index:6 * index + 6].mean(0), expected, atol=0.08)
    np.testing.assert_allclose(parts.sum(1), scores["joint"])  # the parts add up
    # the joint model gives A-only voxels a heavy low-level penalty, B-only ones a light one
    assert np.median(scores["ratio"][:6]) > np.median(scores["ratio"][6:12])
    # the layer's own part (unique + shared) of a resample, recomputed from its rows
    column = task.summaries.keys.index(("all", "voxel_mean"))
    for i in (0, 7, 199):
        rows = np.concatenate([np.tile(np.arange(starts[b], starts[b + 1]), c)
                               for b, c in enumerate(counts[i])])
        r = eval_utils.column_correlation(own["prediction"][rows], target[rows])
        np.testing.assert_allclose(scores["bootstrap"][i, :2, column].sum(),
                                   (r * np.abs(r)).mean() / ceiling ** 2, atol=1e-5)


def test_story_subsets_are_whole_nested_and_seeded():
    stories = [f"s{i}" for i in range(8)]
    lengths = [30 + i for i in range(8)]
    subsets = {k: encoding.story_subset(stories, lengths, k, 2, 10, seed=3) for k in (2, 3, 5)}
    assert set(subsets[2].stories) < set(subsets[3].stories) < set(subsets[5].stories)
    again = encoding.story_subset(stories, lengths, 3, 2, 10, seed=3)
    assert again.stories == subsets[3].stories  # the same sets for every model of a run
    assert encoding.story_subset(stories, lengths, 5, 2, 10, seed=4).stories != (
        subsets[5].stories)
    offsets = np.cumsum([0, *lengths])
    for subset in subsets.values():  # every row of each chosen story, none of the others
        expected = np.concatenate([np.arange(offsets[i], offsets[i + 1])
                                   for i, story in enumerate(stories) if story in subset.stories])
        np.testing.assert_array_equal(subset.rows, expected)
        assert subset.fraction == len(expected) / sum(lengths)
        assert all(set(train) | set(held) <= set(range(len(expected)))
                   for train, held in subset.splits)
    with pytest.raises(run_utils.UsageError, match="--train_story_counts 8: the run has 8"):
        encoding.story_subset(stories, lengths, 8)


def test_stories_needed_is_the_first_crossing_of_the_curve():
    """eval_utils.amount_needed against a loop over random curves and targets."""
    rng = np.random.default_rng(0)
    amounts = np.array([2, 3, 5, 10, 24])
    curves, targets = rng.uniform(0, 1, (500, 5)), rng.uniform(0, 1, 500)
    got = eval_utils.amount_needed(amounts, curves, targets)
    for curve, target, value in zip(curves, targets, got):
        for i, score in enumerate(curve):
            if score >= target:
                expected = amounts[0] if i == 0 else np.interp(
                    target, [curve[i - 1], score], amounts[i - 1:i + 1])
                break
        else:
            expected = np.nan
        np.testing.assert_allclose(value, expected)
    assert np.isnan(got).any() and (got == 2).any() and ((got > 2) & (got < 24)).any()


@pytest.mark.slow
def test_a_model_tuned_on_two_subjects_is_read_on_a_held_out_third(tmp_path):
    """The follow-up paper's new-participant protocol on the synthetic data: tune on subjects 1
    and 2, evaluate both models on subject 3 with --train_story_counts; the stories needed
    are read off the results' own curves."""
    data = tmp_path / "ds"
    synthetic_data.generate(data, seed=6, subjects=(1, 2, 3), n_train_stories=5, train_trs=40,
                            test_trs=100, n_voxels=30, n_words=10)
    ceilings = []
    for subject in (1, 2, 3):
        ceilings.append(tmp_path / f"UTS0{subject}.npy")
        noise_ceilings.get_noise_ceiling(data_utils.Dataset(data), subject, ceilings[-1])
    speech_models.save_tiny_model(tmp_path / "base", "wav2vec2")
    assert brain_trainer_story.main([
        "--model_name", str(tmp_path / "base"), "--subject", "1", "2", "--data_dir", str(data),
        "--nc_path", *map(str, ceilings[:2]), "--nc_thr", "0.2", "--num_epochs", "1",
        "--batch_size", "8", "--warmup_epochs", "0", "--save_dir", str(tmp_path / "runs"),
        "--exp_name", "tuned"]) == 0
    assert brain_evaluate.main([
        "--model_name", str(tmp_path / "base"), "--logs_dir", str(tmp_path / "runs" / "tuned"),
        "--subject", "3", "--data_dir", str(data), "--nc_path", str(ceilings[2]),
        "--nc_thr", "0.2", "--save_dir", str(tmp_path / "out"), "--exp_name", "run",
        "--layers", "1", "--train_story_counts", "1", "2", "3", "--n_permutations", "0",
        "--n_bootstrap", "50", "--chunk_len", "10", *QUICK]) == 0
    out = tmp_path / "out" / "run"
    results = json.loads((out / "results.json").read_text())
    config = json.loads((tmp_path / "runs" / "tuned" / "run_config.json").read_text())
    assert config["subjects"] == ["UTS01", "UTS02"] and results["subject"] == "UTS03"
    sets = results["story_sets"]
    assert set(sets["1"]) < set(sets["2"]) < set(sets["3"]) < set(results["train_stories"])
    rows = [r for r in results["results"] if r["region"] == "all"
            and r["aggregation"] == "voxel_mean" and r["low_level"] == "none"]
    assert {(r["model"], r["train_stories"]) for r in rows} == {
        (m, k) for m in ("pretrained", "final") for k in (1, 2, 3, None)}
    needed = next(r for r in results["stories_needed"] if r["region"] == "all"
                  and r["aggregation"] == "voxel_mean")
    curve = [next(r["cc_norm"] for r in rows if r["model"] == "final"
                  and r["train_stories"] == k) for k in (1, 2, 3, None)]
    target = next(r["cc_norm"] for r in rows if r["model"] == "pretrained"
                  and r["train_stories"] is None)
    total = len(results["train_stories"])
    expected = eval_utils.amount_needed([1, 2, 3, total], curve, target)
    assert needed["total_stories"] == total and needed["baseline_cc_norm"] == target
    if np.isnan(expected):
        assert needed["stories_needed"] is None
    else:
        assert needed["stories_needed"] == pytest.approx(float(expected))
        assert needed["less_data"] == pytest.approx(total / float(expected))
    assert (out / "stories_needed.csv").is_file() and (out / "data_efficiency.png").is_file()
    assert report.main(["--out", str(tmp_path / "report"), "--alignment", str(out),
                        "--model_card"]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"| model | 1 story | 2 stories | 3 stories | all {total} |" in text
    assert "Stories each model needs for the pretrained model's mean cc_norm" in text
    # the run's curves in the report, its alignment on the tuned model's card
    assert "![training curves](training_curves.png)" in text
    assert (tmp_path / "report" / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    card = (tmp_path / "runs" / "tuned" / "final" / "README.md").read_text()
    table = text.split("## final against pretrained")[1].split("| measure |")[1].split("\n\n")[0]
    assert "## Brain alignment" in card and "Evaluated with `brain_evaluate.py` on UTS03" in card
    assert table in card  # the report's comparison table, as it is


def _models(args):
    return run_utils.models_to_evaluate(args.model_name, args.model_path, args.logs_dir,
                                        args.epochs, args.skip_pretrained)


def test_logs_dir_epochs_select_checkpoints(setup, tmp_path):
    root, data = setup
    run_dir = tmp_path / "run"
    for name in ("checkpoint-epoch1", "checkpoint-epoch3", "final"):
        speech_models.save_tiny_model(run_dir / name, "wav2vec2")
    args = brain_evaluate.parse_args([
        "--model_name", str(root / "model0"), "--subject", "1", "--data_dir", str(data),
        "--logs_dir", str(run_dir), "--epochs", "1", "3", "final"])
    assert _models(args) == [
        ("pretrained", str(root / "model0")), ("epoch 1", str(run_dir / "checkpoint-epoch1")),
        ("epoch 3", str(run_dir / "checkpoint-epoch3")), ("final", str(run_dir / "final"))]
    args.epochs = ["2"]
    with pytest.raises(run_utils.UsageError, match="checkpoint-epoch2.*checkpoint-epoch1"):
        _models(args)


def _damaged_copy(setup, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(setup[1], copy)
    return copy


def _original_ceiling(setup, tmp_path):
    """The original responses' ceiling without its record, for a damaged copy of them: kept
    on purpose, so the run warns instead of refusing it."""
    path = tmp_path / "original_ceiling.npy"
    np.save(path, np.load(setup[0] / "UTS01.npy"))
    return str(path)


def _run_on(setup, data, out, *extra):
    """``_run`` on another dataset, results and cache in ``out``."""
    root, _ = setup
    return brain_evaluate.main([
        "--model_name", str(root / "model0"), "--model_path", str(root / "model1"),
        "--subject", "1", "--data_dir", str(data), "--save_dir", str(out), "--exp_name", "run",
        "--nc_path", str(root / "UTS01.npy"), *QUICK, *extra])


def _one_error_line(caplog):
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage(), caplog.text
    assert "Traceback" not in caplog.text
    return errors[0].getMessage()


def _assert_nothing_written(save_dir):
    """No feature cache, results or partial folder (the lock file is gone with the run)."""
    assert list(Path(save_dir).rglob("*")) == []


def _drop_last_response_row(data):
    damage.replace_hdf5(data, 1, "souls", "data", damage.read_hdf5(data, 1, "souls")[:-1])


def _respdict_two_more(data):
    damage.set_respdict(data, "souls", data_utils.Dataset(data).respdict()["souls"] + 2)


@pytest.mark.parametrize("defect", [_drop_last_response_row, _respdict_two_more])
def test_response_rows_off_respdict_stop_the_run_before_any_model_is_loaded(
        setup, tmp_path, caplog, monkeypatch, defect):
    data = _damaged_copy(setup, tmp_path)
    defect(data)
    _no_model_loading(monkeypatch)
    assert _run_on(setup, data, tmp_path / "out") == 1
    assert "souls" in _one_error_line(caplog)
    _assert_nothing_written(tmp_path / "out")


def test_repeats_with_fewer_voxels_than_the_responses_save_no_ceiling(setup, tmp_path, caplog,
                                                                      monkeypatch):
    data = _damaged_copy(setup, tmp_path)
    test = data_utils.TEST_STORY
    repeats = damage.read_hdf5(data, 1, test, "individual_repeats")
    damage.replace_hdf5(data, 1, test, "individual_repeats", repeats[:, :, :25])
    _no_model_loading(monkeypatch)
    assert _run_on(setup, data, tmp_path / "out", "--nc_path", str(tmp_path / "nc.npy")) == 1
    _one_error_line(caplog)
    assert not (tmp_path / "nc.npy").exists()
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("zero_ceiling, flags", [(True, []), (False, ["--nc_thr", "0.99"])])
def test_an_empty_voxel_selection_is_refused(setup, tmp_path, caplog, monkeypatch,
                                             zero_ceiling, flags):
    root, data = setup
    nc_path = root / "UTS01.npy"
    if zero_ceiling:
        nc_path = tmp_path / "zeros.npy"
        np.save(nc_path, np.zeros(30))
    _no_model_loading(monkeypatch)
    assert _run_on(setup, data, tmp_path / "out", "--nc_path", str(nc_path), *flags) == 1
    _one_error_line(caplog)
    _assert_nothing_written(tmp_path / "out")


def test_as_many_story_counts_as_training_stories_are_refused_before_any_model(
        setup, tmp_path, caplog, monkeypatch):
    root, data = setup
    _no_model_loading(monkeypatch)
    assert _run_on(setup, data, tmp_path / "out", "--train_story_counts", "2") == 1
    assert "--train_story_counts 2: the run has 2 training stories" in _one_error_line(caplog)
    _assert_nothing_written(tmp_path / "out")


def _refuse_constant(name):
    raise AssertionError(f"{name} in results.json")


def test_constant_test_voxels_and_empty_regions_are_left_out_of_summaries(setup, tmp_path,
                                                                         caplog, monkeypatch):
    root, _ = setup
    data = _damaged_copy(setup, tmp_path)
    nc = np.load(root / "UTS01.npy")
    above = np.flatnonzero(nc > 0.2)
    below = np.flatnonzero(nc <= 0.2)
    all_nan, flat_when_scored = above[:2]
    test = damage.read_hdf5(data, 1, data_utils.TEST_STORY)
    test[:, all_nan] = np.nan  # reads as a constant 0
    test[data_utils.TEST_RESPONSE_TRIM:, flat_when_scored] = 5.0  # varies in unscored rows
    damage.replace_hdf5(data, 1, data_utils.TEST_STORY, "data", test)
    rois = {"low": below[:3].tolist(), "damaged": [int(all_nan), int(flat_when_scored)],
            "mixed": above[:4].tolist()}
    (tmp_path / "roi.json").write_text(json.dumps(rois))
    titles = {}
    monkeypatch.setattr(alignment_outputs.plots, "plot_per_layer",
                        lambda path, series, ylabel, title, **_: titles.update(
                            {Path(path).name: (title, set(series))}))
    assert _run_on(setup, data, tmp_path / "out", "--layers", "2", "--nc_thr", "0.2",
                   "--nc_path", _original_ceiling(setup, tmp_path),
                   "--roi_file", str(tmp_path / "roi.json"), "--low_level", "powspec",
                   "--test_target", "data") == 0
    out = tmp_path / "out" / "run"
    results = json.loads((out / "results.json").read_text(), parse_constant=_refuse_constant)
    scored = np.setdiff1d(above, [all_nan, flat_when_scored])
    assert results["excluded_voxels"] == 2 and results["scored_voxels"] == scored.size
    np.testing.assert_array_equal(np.load(out / run_utils.SUMMARY_VOXELS_NAME), scored)
    assert "2 of the" in caplog.text
    assert "2 regions or groups have no voxel" in caplog.text and ": low, damaged" in caplog.text
    expected = {"all": scored, "low": [], "damaged": [], "mixed": above[2:4]}
    csv_rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(csv_rows) == len(results["results"]) == 2 * 2 * 4 * 2
    for row, csv_row in zip(results["results"], csv_rows):
        if row["aggregation"] != "voxel_mean":
            continue
        voxels = expected[row["region"]]
        assert row["n_voxels"] == len(voxels) == int(csv_row["n_voxels"])
        if not len(voxels):
            assert row["cc_norm"] is row["r"] is row["drop_percent"] is None
            assert csv_row["cc_norm"] == csv_row["r"] == csv_row["drop_percent"] == ""
            continue
        npz = np.load(out / run_utils.voxel_results_name(row["model"], 2, row["low_level"]))
        assert row["cc_norm"] == pytest.approx(float(npz["cc_norm"][voxels].mean()), rel=1e-6)
        assert row["r"] == pytest.approx(float(npz["r"][voxels].mean()), rel=1e-6)
    where = f"UTS01, {data_utils.TEST_STORY}, {scored.size} voxels with NC > 0.2"
    assert titles["alignment.png"] == (f"Brain alignment, {where}", {"pretrained", "model1"})
    title, keys = titles["reliance.png"]
    assert where in title
    assert keys == {("pretrained", "without powspec"), ("model1", "without powspec")}


def test_models_with_the_same_folder_name_keep_separate_results(setup, tmp_path):
    root, data = setup
    args = brain_evaluate.parse_args([
        "--model_name", str(root / "model0"), "--subject", "1", "--data_dir", str(data),
        "--model_path", str(tmp_path / "seed0" / "checkpoint-epoch5"),
        "--model_path", str(tmp_path / "seed1" / "checkpoint-epoch5")])
    labels = [label for label, _ in _models(args)]
    assert labels == ["pretrained", "seed0/epoch 5", "seed1/epoch 5"]


def test_summaries_average_each_cell_and_leave_empty_ones_undefined():
    voxels = np.array([True, True, False, True, False, True])
    ceiling = np.array([0.9, 0.04, 0.5, 0.3, 0.06, 0.05])
    weights = summaries.summary_weights(
        voxels, ceiling, {"empty": [2, 4], "two": [1, 2, 3], "none": []},
        {"group": ["empty", "two", "none"]}, "roi.json", 0.4)
    values = np.array([1.0, 2.0, 9.0, 4.0, 7.0, 3.0])
    summary = summaries.summarise(values, weights)
    followup = np.where(ceiling > 0.05, values, 0)  # [1, 0, 9, 4, 7, 0]
    assert summary == {
        ("all", "voxel_mean"): pytest.approx(10 / 4),
        ("all", "parcel_mean"): pytest.approx(followup.mean()),
        ("empty", "voxel_mean"): None, ("empty", "parcel_mean"): pytest.approx(16 / 2),
        ("two", "voxel_mean"): 3.0, ("two", "parcel_mean"): pytest.approx(13 / 3),
        ("none", "voxel_mean"): None, ("none", "parcel_mean"): None,
        # a group: voxel mean over the union of its regions' voxels, parcel mean = the mean of
        # its regions' means (a region without voxels left out)
        ("group", "voxel_mean"): 3.0, ("group", "parcel_mean"): pytest.approx((8 + 13 / 3) / 2)}
    members = dict(zip(weights.keys, (np.array([0, 1, 1, 0, 1, 1.0]) @ weights.members)))
    assert members[("two", "parcel_mean")] == pytest.approx(2 / 3)
    assert members[("group", "parcel_mean")] == pytest.approx((1 + 2 / 3) / 2)
    assert members[("all", "voxel_mean")] == pytest.approx(2 / 4)


def test_summary_weights_are_sparse_and_match_a_brute_force_computation():
    rng = np.random.default_rng(3)
    n = 40
    voxels = rng.uniform(size=n) > 0.3
    ceiling = rng.choice([0.0, 0.02, summaries.FOLLOWUP_CEILING, 0.2, 0.8], n)
    regions = {"a": [0, 1, 2, 3, 5, 5, 8], "b": list(range(6, 20)), "c": [30, 31, 39],
               "d": []}
    groups = {"g": ["a", "b", "d"]}
    weights = summaries.summary_weights(voxels, ceiling, regions, groups)
    assert scipy.sparse.issparse(weights.weights) and scipy.sparse.issparse(weights.members)
    assert weights.weights.shape == weights.members.shape == (n, len(weights.keys))
    values = rng.standard_normal(n)
    zeroed = np.where(ceiling > summaries.FOLLOWUP_CEILING, values, 0.0)
    everything = {"all": np.arange(n),
                  **{k: np.unique(np.asarray(v, int)) for k, v in regions.items()}}
    expected = {}
    for name, indices in everything.items():
        scored = indices[voxels[indices]]
        expected[name, "voxel_mean"] = values[scored].mean() if scored.size else None
        expected[name, "parcel_mean"] = zeroed[indices].mean() if indices.size else None
    union = np.unique(np.concatenate([everything[m] for m in groups["g"]]))
    expected["g", "voxel_mean"] = values[union[voxels[union]]].mean()
    expected["g", "parcel_mean"] = np.mean([expected[m, "parcel_mean"] for m in ("a", "b")])
    got = summaries.summarise(values, weights)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (None if value is None else pytest.approx(value, rel=1e-12)), key
    dense = weights.weights.toarray()
    np.testing.assert_allclose(values @ dense, values @ weights.weights, rtol=1e-12)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"), ('["a"]', "JSON object"),
    ('{"all": [1]}', "'all'"), ('{"a": [1.5]}', "integer"), ('{"a": [30]}', "0..29"),
    ('{"a": [1], "g": ["a", "b"]}', "'b'"), ('{"a": [1], "g": ["a", 2]}', "integer")])
def test_bad_roi_files_are_refused(tmp_path, text, message):
    (tmp_path / "roi.json").write_text(text)
    with pytest.raises(data_utils.DatasetError, match=message):
        summaries.load_rois(tmp_path / "roi.json", 30)


# ----------------------------------------------------------------------------- resume

def _count_calls(monkeypatch, module, name):
    """Replace ``module.name`` by a wrapper recording its calls; returns the list of calls."""
    calls, original = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _interrupt_after_saving(monkeypatch, n_results):
    """Make the run stop (as a kill would) right after its ``n_results``-th finished result."""
    original, saved = finished_results.FinishedResults.save, []

    def save(self, key, result):
        original(self, key, result)
        saved.append(key)
        if len(saved) == n_results:
            raise KeyboardInterrupt

    monkeypatch.setattr(finished_results.FinishedResults, "save", save)


RESUMED = ["--layers", "1", "2", "--semantic_preference", "--word_vectors", "synthetic"]


@pytest.fixture(scope="module")
def uninterrupted(setup):
    """results.json and per-voxel results of an uninterrupted run of ``RESUMED``."""
    assert _run_shared(setup, *RESUMED, save="uninterrupted") == 0
    out = setup[0] / "uninterrupted" / "run"
    return (json.loads((out / "results.json").read_text()),
            {path.name: dict(np.load(path)) for path in out.glob("*.npz")})


def _interrupted(setup, monkeypatch, save, n_results=1):
    with monkeypatch.context() as patch:
        _interrupt_after_saving(patch, n_results)
        with pytest.raises(KeyboardInterrupt):
            _run_shared(setup, *RESUMED, save=save)
    partial = setup[0] / save / ".run.partial"
    assert len(list(partial.glob("*.npz"))) == n_results
    assert not (setup[0] / save / "run").exists()
    return partial


def _assert_same_results(setup, save, uninterrupted):
    out = setup[0] / save / "run"
    results, voxels = uninterrupted
    again = json.loads((out / "results.json").read_text())
    assert again["results"] == results["results"]
    assert again["semantic_preference"] == results["semantic_preference"]
    assert sorted(p.name for p in out.glob("*.npz")) == sorted(voxels)
    for name, arrays in voxels.items():
        for key, values in np.load(out / name).items():
            np.testing.assert_array_equal(values, arrays[key])
    assert not (setup[0] / save / ".run.partial").exists()


def test_semantic_features_from_a_file_equal_the_word_vectors_they_hold(setup, uninterrupted,
                                                                       tmp_path, capsys):
    """--semantic_features FILE (a target_features.py file) holding the synthetic word vectors'
    TR features, trimmed to the response rows, gives the semantic preference of
    --word_vectors synthetic."""
    root, data = setup
    dataset = data_utils.Dataset(data)
    vectors = low_level_features.load_word_vectors("synthetic", dataset)
    path = tmp_path / "semantic.hf5"
    with h5py.File(path, "w") as handle:
        for story in dataset.stories(1):
            handle[story] = eval_utils.trim_rows(
                low_level_features.word_vector_features(dataset, story, vectors))
    flags = [flag for flag in RESUMED if flag not in ("--word_vectors", "synthetic")]
    assert _run_shared(setup, *flags, "--semantic_features", str(path), save="semantic") == 0
    ours = json.loads((root / "semantic" / "run" / "results.json").read_text())
    theirs = uninterrupted[0]
    assert ours["semantic_preference"] and len(ours["semantic_preference"]) == len(
        theirs["semantic_preference"])
    _assert_close(ours["semantic_preference"], theirs["semantic_preference"])
    with pytest.raises(SystemExit):  # one source of semantic features, not both
        brain_evaluate.parse_args(["--model_name", "m", "--subject", "1", "--data_dir",
                                   str(data), "--semantic_preference", "--word_vectors",
                                   "synthetic", "--semantic_features", str(path)])
    assert "one of --word_vectors FILE (or 'synthetic') and --semantic_features" in \
        capsys.readouterr().err


def test_an_interrupted_run_resumes_without_fitting_its_finished_results_again(
        setup, uninterrupted, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    # killed after pretrained layer 1's encoding result and its semantic preference
    partial = _interrupted(setup, monkeypatch, "resumed", n_results=2)
    kept = _snapshot(partial)
    assert _run_shared(setup, *RESUMED, save="resumed") == 1  # neither --resume nor --overwrite
    assert "--resume" in _one_error_line(caplog) and _snapshot(partial) == kept
    caplog.clear()
    assert _run_shared(setup, *RESUMED, "--resume", "--alphas", "1", "10",
                       save="resumed") == 1
    assert "--alphas" in _one_error_line(caplog) and _snapshot(partial) == kept
    caplog.clear()
    # the finished results hold bootstrap means over the summary voxels: no other --nc_thr
    assert _run_shared(setup, *RESUMED, "--resume", "--nc_thr", "0.3", save="resumed") == 1
    assert "--nc_thr" in _one_error_line(caplog) and _snapshot(partial) == kept
    fits = _count_calls(monkeypatch, alignment_analyses, "layer_scores")
    preferences = _count_calls(monkeypatch, alignment_analyses, "semantic_preference")
    assert _run_shared(setup, *RESUMED, "--resume", save="resumed") == 0
    assert len(fits) == len(preferences) == 3  # of 4 each
    assert "reusing 2 finished results" in caplog.text
    _assert_same_results(setup, "resumed", uninterrupted)


def test_overwrite_discards_finished_results_and_unreadable_ones_are_computed_again(
        setup, uninterrupted, monkeypatch, caplog):
    _interrupted(setup, monkeypatch, "discarded")
    fits = _count_calls(monkeypatch, alignment_analyses, "layer_scores")
    assert _run_shared(setup, *RESUMED, "--overwrite", save="discarded") == 0
    assert len(fits) == 4 and "discarded the finished results" in caplog.text
    _assert_same_results(setup, "discarded", uninterrupted)

    (finished,) = _interrupted(setup, monkeypatch, "damaged").glob("*.npz")
    finished.write_bytes(finished.read_bytes()[:100])  # damaged (a bad disk, a copy cut short)
    fits.clear()
    assert _run_shared(setup, *RESUMED, "--resume", save="damaged") == 0
    assert len(fits) == 4 and "unreadable" in caplog.text
    _assert_same_results(setup, "damaged", uninterrupted)


def _extraction(dtype=None):
    return layer_features.Extraction(context_s=3.0, chunk_s=0.5, batch_size=16, naive=False,
                                     dtype=dtype)


def test_cache_key_depends_on_precision(setup, tmp_path):
    root, data = setup
    encoder = speech_models.load_encoder(root / "model0")
    for dtype in (None, torch.bfloat16, None):
        layer_features.cached_story_features(encoder, data_utils.Dataset(data), "souls", [1],
                                             _extraction(dtype), tmp_path)
    assert len(list(tmp_path.rglob("*.hf5"))) == 2
    (folder,) = {path.parent for path in tmp_path.rglob("*.hf5")}
    assert folder.name == encoder.fingerprint[:run_utils.KEY_CHARS]


def test_replaced_stimulus_is_extracted_again_and_other_layers_stay_cached(setup, tmp_path):
    root, data = setup
    copy = tmp_path / "ds"
    shutil.copytree(data, copy)
    encoder = speech_models.load_encoder(root / "model0")
    dataset, extraction = data_utils.Dataset(copy), _extraction()

    def features(layers):
        return layer_features.cached_story_features(encoder, dataset, "souls", layers,
                                                    extraction, tmp_path / "cache")[0]

    before = features([1])
    features([2])
    (cache_file,) = (tmp_path / "cache").rglob("*.hf5")
    with h5py.File(cache_file, "r") as handle:
        assert {"layer_1", "layer_2", "times"} <= set(handle)
    wav = dataset.stimulus_path("souls")
    audio, rate = sf.read(wav, dtype="float32")
    sf.write(wav, np.ascontiguousarray(audio[::-1]), rate)
    after = features([1])
    assert len(list((tmp_path / "cache").rglob("*.hf5"))) == 2
    fresh = layer_features.sliding_window_features(
        encoder.backbone, encoder.preprocessor, dataset.stimulus("souls"), [1],
        extraction.context_s, extraction.chunk_s)[0]
    np.testing.assert_allclose(after[1], fresh[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[1], before[1])


def test_a_stimulus_replaced_with_its_size_and_time_kept_is_extracted_again(setup, tmp_path):
    """``cp -p``/``rsync -a`` of another WAV of the same size over a story's WAV keeps its size
    and modification time; the cache is keyed by content, so the features are extracted again."""
    root, data = setup
    copy = tmp_path / "ds"
    shutil.copytree(data, copy)
    encoder = speech_models.load_encoder(root / "model0")
    dataset, extraction = data_utils.Dataset(copy), _extraction()
    wav = dataset.stimulus_path("souls")
    before = layer_features.cached_story_features(encoder, dataset, "souls", [1], extraction,
                                                  tmp_path / "cache")[0][1]
    audio, rate = sf.read(wav, dtype="int16")
    stat = wav.stat()
    replacement = tmp_path / "replacement.wav"
    sf.write(replacement, np.ascontiguousarray(audio[::-1]), rate, subtype=sf.info(str(wav)).subtype)
    shutil.copyfile(replacement, wav)
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (wav.stat().st_size, wav.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    after = layer_features.cached_story_features(encoder, data_utils.Dataset(copy), "souls", [1],
                                                 extraction, tmp_path / "cache")[0][1]
    assert len(list((tmp_path / "cache").rglob("*.hf5"))) == 2
    assert not np.allclose(after, before)


def test_a_test_story_of_at_most_40_rows_stops_before_any_model_is_loaded(
        setup, tmp_path, caplog, monkeypatch):
    data = _damaged_copy(setup, tmp_path)
    damage.shorten_story(data, data_utils.TEST_STORY, 30)
    _no_model_loading(monkeypatch)
    assert _run_on(setup, data, tmp_path / "out", "--nc_path", str(tmp_path / "nc.npy")) == 1
    assert "the test story has 30 response rows" in _one_error_line(caplog)


def test_fingerprint_of_models_with_scalar_buffers():
    """wav2vec2-conformer has 0-d BatchNorm counters; fingerprints still work and differ."""
    from transformers import AutoModel, Wav2Vec2ConformerConfig

    config = Wav2Vec2ConformerConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, conv_dim=(16,), conv_stride=(5,),
                                     conv_kernel=(10,), num_conv_pos_embeddings=8,
                                     num_conv_pos_embedding_groups=2, conv_depthwise_kernel_size=3)
    torch.manual_seed(0)
    first = speech_models.fingerprint(AutoModel.from_config(config))
    torch.manual_seed(1)
    assert speech_models.fingerprint(AutoModel.from_config(config)) != first


# ----------------------------------------------------------------------------- reliance, preference

def test_low_level_reliance_and_semantic_preference_cli(setup, capsys):
    root, data = setup
    assert _run(setup, "--layers", "2", "--low_level", "powspec", "phonemes+articulation",
                "--semantic_preference", "--word_vectors", "synthetic", "--nc_thr", "0.2",
                save="reliance") == 0
    out = root / "reliance" / "run"
    rows = [r for r in csv.DictReader(open(out / "results.csv"))
            if r["aggregation"] == "voxel_mean"]
    assert {(r["model"], r["low_level"]) for r in rows} == {
        (m, a) for m in ("pretrained", "model1")
        for a in ("none", "powspec", "phonemes+articulation")}
    nc = np.load(root / "UTS01.npy")
    for row in rows:
        suffix = "" if row["low_level"] == "none" else f"_without_{row['low_level']}"
        cc_norm = np.load(out / f"voxels_{row['model']}_layer2{suffix}.npz")["cc_norm"]
        assert float(row["cc_norm"]) == pytest.approx(float(cc_norm[nc > 0.2].mean()), rel=1e-5)
        before = next(float(r["cc_norm"]) for r in rows
                      if r["model"] == row["model"] and r["low_level"] == "none")
        if row["low_level"] == "none":
            assert row["drop_percent"] == ""
        else:
            assert float(row["drop_percent"]) == pytest.approx(
                100 * (before - float(row["cc_norm"])) / before, rel=1e-5)
    preference = list(csv.DictReader(open(out / "semantic_preference.csv")))
    assert [p["model"] for p in preference] == ["pretrained", "model1"]
    for p in preference:
        assert float(p["preference"]) == pytest.approx(
            float(p["semantic_r"]) - float(p["phonetic_r"]), abs=1e-6)
    results = json.loads((out / "results.json").read_text())
    assert len(results["semantic_preference"]) == 2
    for name in ("alignment.png", "reliance.png", "semantic_preference.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "without powspec:" in printed and "preference:" in printed
    assert list((root / "reliance" / "feature_cache" / "stimulus").glob("*_powspec_*.hf5"))
    # report.py reads this folder: per-voxel files, run_config.json's arguments
    assert report.main(["--out", str(root / "reliance"), "--alignment", str(out),
                        "--data_dir", str(data)]) == 0
    summary = json.loads((root / "reliance" / "summary.json").read_text())
    assert summary["models"] == {"pretrained": "pretrained", "tuned": "model1"}
    assert {"semantic_cc_norm", "semantic_drop_percent_without_powspec",
            "semantic_preference"} <= set(summary["tuned"])


def test_bad_low_level_requests_are_refused(setup, capsys):
    root, data = setup
    with pytest.raises(SystemExit):
        _run(setup, "--low_level", "powspec+loudness")
    assert "loudness" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(setup, "--semantic_preference")
    assert "--word_vectors" in capsys.readouterr().err


def _planted_tr_features(data_dir, stories, truth):
    """TR-grid features of an ideal model: the planted word embeddings (semantic) and the RMS
    energy of 0.1 s windows (acoustic), side by side."""
    tr_level = {}
    dataset = data_utils.Dataset(data_dir)
    for story in stories:
        embedding, times = _planted_window_features(data_dir, story, truth)
        audio = dataset.stimulus(story)
        ends = (times * 16000).astype(int)
        energy = np.array([np.sqrt(np.mean(audio[max(0, end - 1600):end] ** 2)) for end in ends])
        window = np.hstack([embedding, energy[:, None].astype(np.float32)])
        tr_level[story] = eval_utils.lanczos_interp(window, times, dataset.tr_times(story))
    return tr_level


def test_region_groups_recover_effects_planted_in_their_parcels(tmp_path):
    # HCP-MMP1 parcels of 10 voxels each (halves in each hemisphere), effects planted by
    # parcel: late-language parcels hear the words' meaning, A1 the sound's energy, V1 nothing
    planted = {"PGi": "semantic", "STSda": "semantic", "44": "semantic", "A1": "acoustic",
               "V1": "noise"}
    regions, types = {}, []
    for index, (parcel, kind) in enumerate(planted.items()):
        voxels = list(range(10 * index, 10 * index + 10))
        regions.update({parcel: voxels, f"{parcel}_lh": voxels[:5], f"{parcel}_rh": voxels[5:]})
        types += [kind] * 10
    groups = brain_regions.named_groups(regions)
    assert groups["late_language"] == ["44", "PGi", "STSda"]
    data = tmp_path / "ds"
    synthetic_data.generate(data, seed=6, subjects=(1,), n_train_stories=6, train_trs=100,
                            test_trs=311, n_voxels=50, n_words=24, cc_max_range=(0.7, 0.95),
                            voxel_types={"UTS01": types})
    dataset = data_utils.Dataset(data)
    truth = dataset.truth()
    stories = [s for s, info in truth["stories"].items() if info["split"] == "train"]
    test = data_utils.TEST_STORY
    nc = eval_utils.noise_ceiling(dataset.repeats(1)).astype(np.float64)
    splits = eval_utils.bootstrap_chunk_splits(
        [dataset.response_rows(s) for s in stories], n_boots=3, chunk_len=10)
    task = _task(stories, test, np.vstack([dataset.responses(1, s) for s in stories]),
                 dataset.responses(1, test)[data_utils.TEST_RESPONSE_TRIM:], nc,
                 splits, np.logspace(0, 5, 11), regions=regions, groups=groups)
    features = _planted_tr_features(data, [*stories, test], truth)
    meaning = {story: values[:, :truth["semantic_dim"]] for story, values in features.items()}
    found = {}
    for name, tr_level in (("meaning and energy", features), ("meaning only", meaning)):
        scores = summaries.with_summary(
            encoding.layer_scores(tr_level, task, what=name), task)
        summary = scores["summary"]["cc_norm"]
        for group, members in groups.items():  # a group's parcel mean: its parcels' means
            expected = np.mean([np.mean(np.where(nc[regions[m]] > 0.05,
                                                 scores["cc_norm"][regions[m]], 0))
                                for m in members])
            assert summary[group, "parcel_mean"] == pytest.approx(expected, abs=1e-6)
        found[name] = summary
    both, meaning_only = found["meaning and energy"], found["meaning only"]
    for hemi in ("", "_lh", "_rh"):
        assert both[f"late_language{hemi}", "parcel_mean"] > 0.4
        assert both[f"primary_auditory{hemi}", "parcel_mean"] > 0.4
        assert abs(both[f"early_visual{hemi}", "parcel_mean"]) < 0.15
        assert meaning_only[f"late_language{hemi}", "parcel_mean"] > 0.4
        assert abs(meaning_only[f"primary_auditory{hemi}", "parcel_mean"]) < 0.15


def test_removing_the_power_spectrum_removes_acoustic_not_semantic_alignment(tmp_path):
    data = tmp_path / "ds"
    synthetic_data.generate(data, seed=5, subjects=(1,), n_train_stories=6, train_trs=100,
                            test_trs=311, n_voxels=60, n_words=24, family_size=3)
    dataset = data_utils.Dataset(data)
    truth = dataset.truth()
    subject = truth["subjects"]["UTS01"]
    stories = [s for s, info in truth["stories"].items() if info["split"] == "train"]
    test = data_utils.TEST_STORY
    nc = eval_utils.noise_ceiling(dataset.repeats(1)).astype(np.float64)
    splits = eval_utils.bootstrap_chunk_splits(
        [dataset.response_rows(s) for s in stories], n_boots=3, chunk_len=10)
    alphas = np.logspace(0, 5, 11)
    task = _task(stories, test, np.vstack([dataset.responses(1, s) for s in stories]),
                 dataset.responses(1, test)[data_utils.TEST_RESPONSE_TRIM:], nc,
                 splits, alphas)
    features = _planted_tr_features(data, [*stories, test], truth)
    powspec = {s: low_level_features.story_features(dataset, s, "powspec")["powspec"]
               for s in features}
    before = encoding.layer_scores(features, task, what="planted")["cc_norm"]
    after = encoding.layer_scores(
        eval_utils.regress_out(features, powspec, stories, alphas, splits), task,
        what="planted")["cc_norm"]
    drop = {}
    for kind in ("semantic", "acoustic"):
        voxels = np.array(subject[f"{kind}_voxels"])
        voxels = voxels[nc[voxels] > 0.4]
        assert before[voxels].mean() > 0.3
        drop[kind] = (before[voxels].mean() - after[voxels].mean()) / before[voxels].mean()
    assert drop["acoustic"] > 0.6 and drop["semantic"] < 0.15, drop

    # semantic preference: the planted embedding features prefer the semantic target, the
    # acoustic energy and the power spectrum the phonetic one
    vectors = low_level_features.load_word_vectors("synthetic", dataset)
    semantic = {s: low_level_features.word_vector_features(dataset, s, vectors) for s in features}
    phonetic = {s: np.hstack(list(low_level_features.story_features(
        dataset, s, ["phonemes", "articulation"]).values())) for s in features}
    scores = {name: alignment_analyses.semantic_preference(
        {s: values[:, columns] for s, values in source.items()}, semantic, phonetic, stories,
        test, alphas, splits)["preference"]
        for name, source, columns in (("embedding", features, slice(0, -1)),
                                      ("energy", features, slice(-1, None)),
                                      ("powspec", powspec, slice(None)))}
    assert scores["embedding"] > 0.5 and scores["embedding"] > scores["energy"] + 0.5
    assert scores["embedding"] > scores["powspec"] + 0.5


# ------------------------------------------------------------------------ protocol, uncertainty

def _column_r(a, b):
    """Pearson r of matching columns, from the formula."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def _bh_adjusted(p):
    """Benjamini-Hochberg adjusted p-values, from their definition."""
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def test_test_target_and_normaliser_flags_when_data_is_not_the_mean_of_the_repeats(
        setup, tmp_path):
    root, _ = setup
    data = _damaged_copy(setup, tmp_path)
    repeats = damage.read_hdf5(data, 1, data_utils.TEST_STORY, "individual_repeats")
    # 'data' is one repeat only, not the mean of the repeats
    damage.replace_hdf5(data, 1, data_utils.TEST_STORY, "data", repeats[3])
    nc = np.load(root / "UTS01.npy")
    outcomes = {}
    for target, normaliser in (("repeats_mean", "test_repeats"), ("data", "nc_file")):
        out = tmp_path / f"{target}_{normaliser}"
        assert _run_on(setup, data, out, "--layers", "2", "--test_target", target,
                       "--nc_path", _original_ceiling(setup, tmp_path),
                       "--normalise_by", normaliser, "--n_permutations", "0",
                       "--n_bootstrap", "0", "--cache_dir", str(tmp_path / "cache")) == 0
        folder = out / "run"
        voxels = np.load(folder / "voxels_model1_layer2.npz")
        prediction = np.load(folder / "predictions_model1_layer2.npz")["prediction"]
        scored = repeats[:, 40:].mean(0) if target == "repeats_mean" else repeats[3, 40:]
        np.testing.assert_allclose(voxels["r"], _column_r(prediction, scored), atol=1e-5)
        if normaliser == "nc_file":
            np.testing.assert_allclose(
                voxels["cc_norm"], np.where(nc > 0, voxels["r"] / np.where(nc > 0, nc, 1), 0),
                rtol=1e-5)
        else:
            _, cc_norm, _ = _authors_scores(repeats[:, 40:], prediction)
            np.testing.assert_allclose(voxels["cc_norm"], cc_norm, atol=1e-5)
        assert "p_value" not in voxels
        results = json.loads((folder / "results.json").read_text())
        assert results["protocol"]["test_target"] == target
        assert results["protocol"]["normalise_by"] == normaliser
        assert all(row["cc_norm_ci_low"] is None and row["significant_fraction"] is None
                   for row in results["results"])
        assert all(c["ci_low"] is None and c["difference"] is not None
                   for c in results["comparisons"])
        outcomes[target] = voxels["r"]
    # the same fitted model, scored against two different targets
    assert np.abs(outcomes["repeats_mean"] - outcomes["data"]).max() > 0.05


def test_alpha_score_flag_chooses_alphas_by_r2_or_correlation(setup):
    root, _ = setup
    alphas = {}
    for score in ("r2", "corr"):
        assert _run_shared(setup, "--layers", "2", "--alpha_score", score, "--n_permutations",
                           "0", "--n_bootstrap", "0", save=f"alpha_{score}") == 0
        folder = root / f"alpha_{score}" / "run"
        alphas[score] = np.load(folder / "voxels_pretrained_layer2.npz")["alpha"]
        config = json.loads((folder / "run_config.json").read_text())
        assert config["arguments"]["alpha_score"] == score
    assert (alphas["r2"] != alphas["corr"]).any()


def test_p_values_intervals_and_data_efficiency_of_a_run(setup):
    root, data = setup
    (root / "regions.json").write_text(json.dumps({"first": list(range(15))}))
    assert _run_shared(setup, "--layers", "2", "--n_permutations", "99", "--n_bootstrap", "200",
                       "--block_len", "8", "--train_fraction", "0.5", "--roi_file",
                       str(root / "regions.json"), "--nc_thr", "0.2", "--seed", "3",
                       save="uncertainty") == 0
    folder = root / "uncertainty" / "run"
    results = json.loads((folder / "results.json").read_text())
    nc = np.load(root / "UTS01.npy")
    repeats = damage.read_hdf5(data, 1, data_utils.TEST_STORY, "individual_repeats")[:, 40:]
    target = repeats.mean(0)
    _, _, cc_max = _authors_scores(repeats, target)
    cells = {"all": np.flatnonzero(nc > 0.2), "first": np.flatnonzero(nc[:15] > 0.2)}
    # the bootstrap, recomputed from the saved predictions: the same block resamples (seed 3)
    # of both models' rows
    counts, starts = eval_utils.bootstrap_block_counts(len(target), 8, 200, 3)
    resampled = [np.concatenate([np.arange(starts[k], starts[k + 1])
                                 for k in range(len(starts) - 1) for _ in range(c[k])])
                 for c in counts]
    means = {}
    for model in ("pretrained", "model1"):
        prediction = np.load(folder / f"predictions_{model}_layer2.npz")["prediction"]
        r = np.array([_column_r(prediction[rows], target[rows]) for rows in resampled])
        cc_norm = np.where(cc_max > 0, r / np.where(cc_max > 0, cc_max, 1), 0)
        means[model] = {name: cc_norm[:, voxels].mean(1) for name, voxels in cells.items()}
        voxels = np.load(folder / f"voxels_{model}_layer2.npz")
        np.testing.assert_allclose(voxels["q_value"], _bh_adjusted(voxels["p_value"]),
                                   rtol=1e-6)
        for row in results["results"]:
            if (row["model"], row["aggregation"], row["train_fraction"]) != (
                    model, "voxel_mean", 1.0):
                continue
            low, high = np.percentile(means[model][row["region"]], [2.5, 97.5])
            assert (row["cc_norm_ci_low"], row["cc_norm_ci_high"]) == (
                pytest.approx(low, abs=1e-5), pytest.approx(high, abs=1e-5))
            significant = voxels["q_value"][cells[row["region"]]] < 0.05
            assert row["significant_fraction"] == pytest.approx(significant.mean())
    for comparison in results["comparisons"]:
        if comparison["aggregation"] != "voxel_mean" or comparison["measure"] != "cc_norm":
            continue
        difference = (means["model1"][comparison["region"]]
                      - means["pretrained"][comparison["region"]])
        low, high = np.percentile(difference, [2.5, 97.5])
        assert (comparison["ci_low"], comparison["ci_high"]) == (
            pytest.approx(low, abs=1e-5), pytest.approx(high, abs=1e-5))
        assert comparison["difference"] == pytest.approx(
            comparison["model_value"] - comparison["baseline_value"])
    # data efficiency: half of the training rows, whole stories first, the same for both models
    total = sum(data_utils.Dataset(data).response_rows(s) for s in results["train_stories"])
    half = [row for row in results["results"] if row["train_fraction"] == 0.5]
    assert {row["model"] for row in half} == {"pretrained", "model1"}
    assert {row["train_rows"] for row in half} == {round(total / 2)}
    # with block-bootstrap intervals (of the same resamples), without p-values
    assert all(row["cc_norm_ci_low"] < row["cc_norm_ci_high"] for row in half
               if row["n_voxels"])
    assert all(row["significant_fraction"] is None for row in half)
    for name in ("comparison.png", "data_efficiency.png", "comparisons.csv"):
        assert (folder / name).is_file()


def test_blocks_longer_than_the_test_story_are_refused_before_any_model_is_loaded(
        setup, caplog, monkeypatch):
    _no_model_loading(monkeypatch)
    assert _run(setup, "--block_len", "30", save="long_blocks") == 1
    assert "--block_len 30" in _one_error_line(caplog)


def test_extraction_logs_its_windows_and_an_estimate_of_the_time_left(setup, monkeypatch,
                                                                       caplog):
    root, data = setup
    dataset = data_utils.Dataset(data)
    audio = dataset.stimulus(data_utils.TEST_STORY)
    assert layer_features.story_windows(dataset, data_utils.TEST_STORY, 0.5) == len(
        layer_features.window_ends(len(audio), 8000))
    now = [0.0]
    monkeypatch.setattr(layer_features.time, "perf_counter", lambda: now[0])
    clock = layer_features.ExtractionClock(1000)
    with caplog.at_level(logging.INFO):
        clock.batch_done(16)  # start-up: not timed
        for _ in range(3):
            now[0] += 8.0  # 16 windows per 8 s: 2 windows/s
            clock.batch_done(16)
        assert "windows/s" not in caplog.text  # 24 s timed
        clock.story_done(64)
        clock.batch_done(16)
        now[0] += 8.0
        clock.batch_done(16)  # 32 s timed, 64 + 32 of 1000 windows done: 904 left at 2/s
    assert "extracting 2.0 windows/s: about 8 min left for this model's 1000 windows" in \
        caplog.text



def test_torchrun_on_two_cpu_processes_equals_one_process(setup, uninterrupted, tmp_path):
    """torchrun with two processes (gloo on CPU) deals out the stories' extraction (its own
    empty feature cache) and splits the ridge's voxels; rank 0 writes the same numbers as one
    process."""
    root, data = setup
    repo = Path(brain_evaluate.__file__).resolve().parent
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(repo / "brain_evaluate.py"), "--model_name", str(root / "model0"),
               "--model_path", str(root / "model1"), "--subject", "1", "--data_dir", str(data),
               "--nc_path", str(root / "UTS01.npy"), "--save_dir", str(tmp_path),
               "--exp_name", "run", "--cache_dir", str(tmp_path / "cache"), *QUICK, *RESUMED]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    extracted = re.findall(r"sliding windows of up to \S+ s over (\d+) stories", result.stderr)
    assert extracted and all(0 < int(n) < 3 for n in extracted)  # rank 0: a share of the 3
    assert f"{N_SETUP_VOXELS // 2} of the {N_SETUP_VOXELS} fitted voxels in this one" in \
        result.stderr
    results, voxels = uninterrupted
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    _assert_close(again["results"], results["results"])
    _assert_close(again["semantic_preference"], results["semantic_preference"])
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("*.npz")) == sorted(voxels)
    for name, arrays in voxels.items():
        for key, values in np.load(out / name).items():
            np.testing.assert_allclose(values, arrays[key], rtol=1e-6, atol=1e-6,
                                       err_msg=f"{name} {key}")
    assert json.loads((out / "run_config.json").read_text())["processes"] == 2


def test_more_processes_than_voxels_are_refused(setup, monkeypatch, caplog):
    """Each torchrun process fits a share of the voxels: 40 processes for 30 voxels leave the
    last ten without any, one line of error (the process group faked: rank 39 of 40)."""
    for name, value in (("is_initialized", True), ("get_rank", 39), ("get_world_size", 40)):
        monkeypatch.setattr(torch.distributed, name, lambda value=value: value)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: None)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: None)
    _no_model_loading(monkeypatch)
    assert _run(setup, save="too_many") == 1
    assert "--voxels all: 30 voxels to fit, fewer than the torchrun processes" in \
        _one_error_line(caplog)


def _assert_close(ours, theirs):
    """Equal JSON values, numbers to 1e-6."""
    if isinstance(theirs, dict):
        assert sorted(ours) == sorted(theirs)
        for key in theirs:
            _assert_close(ours[key], theirs[key])
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs)
        for mine, other in zip(ours, theirs):
            _assert_close(mine, other)
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)
    else:
        assert ours == theirs


def test_process_shares_cover_the_voxels_and_stories_once(monkeypatch):
    """Under torchrun the voxels are cut as np.array_split does and the stories dealt out by
    their cost, each to exactly one process, the most loaded one no worse than greedy allows."""
    costs = [7, 3, 9, 1, 4, 4, 8]
    for world_size in (1, 2, 3, 5):
        shares, items = [], []
        for rank in range(world_size):
            monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
            monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
            monkeypatch.setattr(torch.distributed, "get_world_size", lambda w=world_size: w)
            shares.append(np.arange(23)[processes.process_share(23)])
            items.append(processes.process_items(costs))
        for ours, expected in zip(shares, np.array_split(np.arange(23), world_size)):
            np.testing.assert_array_equal(ours, expected)
        assert sorted(i for mine in items for i in mine) == list(range(len(costs)))
        loads = [sum(costs[i] for i in mine) for mine in items]
        assert max(loads) <= sum(costs) / world_size + max(costs)
        if world_size == 2:  # 9 | 8, 7 | 4 | 4 | 3 | 1 dealt out by hand
            assert items == [[2, 3, 4, 5], [0, 1, 6]] and loads == [18, 18]


# ----------------------------------------------------------------------------- --voxels

N_SETUP_VOXELS = 30  # of the module's synthetic subject


@pytest.fixture(scope="module")
def whole_brain(setup):
    """The results folder of an ``--voxels all`` run (layer 2, summaries over NC > 0.2)."""
    assert _run_shared(setup, "--layers", "2", "--nc_thr", "0.2", save="voxels_all") == 0
    return setup[0] / "voxels_all" / "run"


def _assert_fitted_as_in_the_whole_brain(out, whole, selected):
    """The per-voxel results of ``selected`` equal the whole-brain run's, NaN elsewhere; the
    predictions hold the selected columns; q-values are BH over the fitted voxels."""
    unselected = np.setdiff1d(np.arange(N_SETUP_VOXELS), selected)
    for model in ("pretrained", "model1"):
        ours = dict(np.load(out / run_utils.voxel_results_name(model, 2)))
        theirs = dict(np.load(whole / run_utils.voxel_results_name(model, 2)))
        assert set(ours) == set(theirs) == set(alignment_outputs.VOXEL_ARRAYS)
        for name, values in ours.items():
            assert values.shape == (N_SETUP_VOXELS,), name
            assert np.isnan(values[unselected]).all() and np.isfinite(values[selected]).all()
        for name in ("r", "cc_norm", "alpha", "p_value"):
            np.testing.assert_allclose(ours[name][selected], theirs[name][selected],
                                       rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(
            ours["q_value"][selected],
            scipy.stats.false_discovery_control(ours["p_value"][selected].astype(np.float64)),
            rtol=1e-6)
        predictions = np.load(out / run_utils.voxel_results_name(model, 2, kind="predictions"))
        everything = np.load(whole / run_utils.voxel_results_name(model, 2, kind="predictions"))
        assert predictions["voxels"].dtype == everything["voxels"].dtype == np.int64
        np.testing.assert_array_equal(predictions["voxels"], selected)
        np.testing.assert_array_equal(everything["voxels"], np.arange(N_SETUP_VOXELS))
        np.testing.assert_array_equal(predictions["rows"], everything["rows"])
        assert predictions["prediction"].dtype == np.float32
        assert predictions["prediction"].shape == (len(everything["rows"]), selected.size)
        np.testing.assert_allclose(predictions["prediction"],
                                   everything["prediction"][:, selected], rtol=1e-5, atol=1e-6)


def _fitted_facts(out):
    results = json.loads((out / "results.json").read_text())
    config = json.loads((out / "run_config.json").read_text())
    assert results["fitted_voxels"] == config["fitted_voxels"]
    return results


def test_voxels_above_a_noise_ceiling_are_fitted_as_in_a_whole_brain_run(setup, whole_brain):
    root, data = setup
    nc = np.load(root / "UTS01.npy")
    selected = np.flatnonzero(nc > 0.3)
    assert 0 < selected.size < N_SETUP_VOXELS and (nc[selected] <= 0.4).any()
    assert _run_shared(setup, "--layers", "2", "--voxels", "nc>0.3", save="voxels_nc") == 0
    out = root / "voxels_nc" / "run"
    _assert_fitted_as_in_the_whole_brain(out, whole_brain, selected)
    results = _fitted_facts(out)
    assert results["fitted_voxels"] == {"selection": "nc>0.3", "n": int(selected.size)}
    assert results["subject_voxels"] == N_SETUP_VOXELS
    # the summaries (default --nc_thr 0.4) are over the fitted voxels above it
    summary = np.load(out / run_utils.SUMMARY_VOXELS_NAME)
    np.testing.assert_array_equal(summary, selected[nc[selected] > 0.4])
    assert results["scored_voxels"] == summary.size
    for row in results["results"]:
        cc_norm = np.load(out / run_utils.voxel_results_name(row["model"], 2))["cc_norm"]
        if row["aggregation"] == "voxel_mean":
            assert row["n_voxels"] == summary.size
            assert row["cc_norm"] == pytest.approx(float(cc_norm[summary].mean()), abs=1e-6)
        else:
            assert row["n_voxels"] == selected.size
    # report.py reads the NaN of the unfitted voxels and names the selection
    assert report.main(["--out", str(root / "voxels_nc" / "report"), "--alignment", str(out),
                        "--data_dir", str(data)]) == 0
    text = (root / "voxels_nc" / "report" / "report.md").read_text()
    after = text.split("## Brain alignment")[1]
    assert after.lstrip().startswith(
        f"Only the voxels whose noise ceiling is above 0.3 were fitted (`--voxels nc>0.3`: "
        f"{selected.size} of {N_SETUP_VOXELS} voxels)")
    planted = json.loads((root / "voxels_nc" / "report" / "summary.json").read_text())
    truth = data_utils.Dataset(data).truth()["subjects"]["UTS01"]
    semantic = np.intersect1d(truth["semantic_voxels"], summary)
    cc_norm = np.load(out / run_utils.voxel_results_name("model1", 2))["cc_norm"]
    assert planted["tuned"]["semantic_cc_norm"] == pytest.approx(
        float(cc_norm[semantic].mean()), abs=1e-6)


@pytest.mark.parametrize("selection, selected", [("front", np.arange(20)),
                                                  ("mid", np.arange(10, 20))])
def test_voxels_of_a_region_or_group_are_fitted_and_summarised_alone(
        setup, whole_brain, tmp_path, selection, selected):
    root, data = setup
    regions = {"first": np.arange(10), "mid": np.arange(10, 20), "rest": np.arange(20, 30)}
    groups = {"front": ["first", "mid"], "back": ["mid", "rest"]}
    (tmp_path / "roi.json").write_text(json.dumps(
        {**{name: indices.tolist() for name, indices in regions.items()}, **groups}))
    assert _run_shared(setup, "--layers", "2", "--nc_thr", "0.2", "--voxels", selection,
                       "--regions", str(tmp_path / "roi.json"), save=f"voxels_{selection}") == 0
    out = root / f"voxels_{selection}" / "run"
    _assert_fitted_as_in_the_whole_brain(out, whole_brain, selected)
    results = _fitted_facts(out)
    assert results["fitted_voxels"] == {"selection": selection, "n": int(selected.size)}
    summary = np.load(out / run_utils.SUMMARY_VOXELS_NAME)
    np.testing.assert_array_equal(
        summary, np.intersect1d(np.load(whole_brain / run_utils.SUMMARY_VOXELS_NAME), selected))
    repeats = data_utils.Dataset(data).repeats(1)[:, data_utils.TEST_RESPONSE_TRIM:]
    ceiling = eval_utils.noise_ceiling(repeats.astype(np.float64))
    regions["all"] = np.arange(N_SETUP_VOXELS)
    for row in results["results"]:
        cc_norm = np.load(out / run_utils.voxel_results_name(row["model"], 2))["cc_norm"]
        members = groups.get(row["region"], [row["region"]])
        if row["aggregation"] == "voxel_mean":
            voxels = np.intersect1d(np.concatenate([regions[m] for m in members]), summary)
            assert row["n_voxels"] == voxels.size
            if not voxels.size:  # a region outside the selection
                assert not np.intersect1d(regions[row["region"]], selected).size
                assert row["cc_norm"] is None
                continue
            assert row["cc_norm"] == pytest.approx(float(cc_norm[voxels].mean()), abs=1e-6)
            continue
        # parcel means: each region's part of the selection, a group the mean of its regions'
        parts = [np.intersect1d(regions[m], selected) for m in members]
        parts = [part for part in parts if part.size]
        assert row["n_voxels"] == sum(part.size for part in parts)
        if not parts:
            assert row["cc_norm"] is None
            continue
        followup = np.where(ceiling > summaries.FOLLOWUP_CEILING, cc_norm, 0)
        assert row["cc_norm"] == pytest.approx(
            float(np.mean([followup[part].mean() for part in parts])), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("value, message", [
    ("nc>abc", "--voxels nc>abc: expected nc>T"), ("nc>", "expected nc>T"),
    ("nc>nan", "expected nc>T"), ("A1", "--voxels A1: a region or group name needs --regions")])
def test_malformed_voxel_selections_are_parser_errors(setup, value, message, capsys,
                                                     monkeypatch):
    _no_model_loading(monkeypatch)
    with pytest.raises(SystemExit) as exit_status:
        _run(setup, "--voxels", value, save="voxels_bad")
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err
    assert not (setup[0] / "voxels_bad").exists()


def test_unknown_regions_and_empty_voxel_selections_are_refused(setup, tmp_path, caplog,
                                                                monkeypatch):
    root, data = setup
    nc = np.load(root / "UTS01.npy")
    low = np.flatnonzero(nc <= 0.2)[:3].tolist()
    (tmp_path / "roi.json").write_text(json.dumps(
        {"first": list(range(10)), "low": low, "none": [], "both": ["first", "low"]}))
    regions = ["--regions", str(tmp_path / "roi.json")]
    _no_model_loading(monkeypatch)
    for flags, messages in [
            (["--voxels", "nosuch", *regions],
             ["--voxels nosuch: no region or group of that name in --regions",
              "its names: first, low, none, both"]),
            (["--voxels", "nc>0.9999"],
             ["--voxels nc>0.9999: no voxel has a noise ceiling above 0.9999"]),
            (["--voxels", "none", *regions], ["--voxels none: region 'none' of",
                                              "has no voxel"]),
            (["--voxels", "low", *regions],
             ["none of its 3 voxels has a noise ceiling above --nc_thr 0.2"])]:
        caplog.clear()
        assert _run_on(setup, data, tmp_path / "out", *flags, "--nc_thr", "0.2") == 1, flags
        line = _one_error_line(caplog)
        assert all(message in line for message in messages), line
        _assert_nothing_written(tmp_path / "out")


def test_a_resume_with_other_voxels_is_refused(setup, monkeypatch, caplog):
    partial = _interrupted(setup, monkeypatch, "voxels_resumed")
    kept = _snapshot(partial)
    assert _run_shared(setup, *RESUMED, "--resume", "--voxels", "nc>0.3",
                       save="voxels_resumed") == 1
    assert "--voxels" in _one_error_line(caplog) and _snapshot(partial) == kept


def test_features_that_are_not_finite_are_never_scored(setup):
    """NaN features (a model that overflowed) would give NaN predictions, which correlate as
    0: refused in one line instead."""
    root, data = setup
    dataset = data_utils.Dataset(data)
    stories = ["souls", "legacy"]
    test = data_utils.TEST_STORY
    nc = np.ones(30)
    task = _task(stories, test, np.vstack([dataset.responses(1, s) for s in stories]),
                 dataset.responses(1, test)[data_utils.TEST_RESPONSE_TRIM:], nc,
                 eval_utils.bootstrap_chunk_splits([dataset.response_rows(s) for s in stories],
                                                   n_boots=2, chunk_len=10), [1.0, 10.0])
    features = {s: np.ones((len(dataset.tr_times(s)), 4), np.float32) for s in [*stories, test]}
    features[test][60, 2] = np.nan
    with pytest.raises(run_utils.UserError, match="model1 layer 2: the features hold NaN"):
        encoding.layer_scores(features, task, what="model1 layer 2")


# ----------------------------------------------------------------------------- verdicts

def _planted_response_features(dataset, story, n_grid, lead=2):
    """The story's responses as TR-grid features, ``lead`` TRs early, so that the encoding
    model's delay of ``lead`` TRs finds each response row (grid row g holds response row
    g - TRIM_START_TRS)."""
    responses = dataset.responses(1, story)
    planted = np.zeros((n_grid, responses.shape[1]), np.float32)
    rows = np.arange(n_grid) - data_utils.TRIM_START_TRS + lead
    inside = (rows >= 0) & (rows < len(responses))
    planted[inside] = responses[rows[inside]]
    return planted


@pytest.mark.parametrize("planted", [False, True])
def test_the_verdict_follows_the_interval_equal_models_and_a_planted_gain(setup, tmp_path,
                                                                          monkeypatch, planted):
    """The same model evaluated twice differs by nothing: "no detectable difference"; a tuned
    model whose features carry the responses themselves (a planted gain) is "higher", with an
    interval above 0, and the report says so."""
    root, data = setup
    tuned = root / "model1" if planted else tmp_path / "same"
    if not planted:
        shutil.copytree(root / "model0", tuned)
    extract, calls = layer_features.model_tr_features, []

    def features(encoder, layers, dataset, stories, *args, **kwargs):
        found = extract(encoder, layers, dataset, stories, *args, **kwargs)
        calls.append(layers)
        if planted and len(calls) == 2:  # the tuned model, evaluated after the pretrained one
            found = {layer: {story: np.hstack([by_story[story], 5 * _planted_response_features(
                dataset, story, len(by_story[story]))]) for story in by_story}
                for layer, by_story in found.items()}
        return found

    monkeypatch.setattr(layer_features, "model_tr_features", features)
    assert brain_evaluate.main([
        "--model_name", str(root / "model0"), "--model_path", str(tuned),
        "--subject", "1", "--data_dir", str(data), "--nc_path", str(root / "UTS01.npy"),
        "--save_dir", str(tmp_path), "--exp_name", "run", "--layers", "2",
        "--n_permutations", "0", "--n_bootstrap", "200", *QUICK]) == 0
    results = results_schema.read_results(tmp_path / "run" / "results.json")
    row = next(r for r in results.comparisons if (r.measure, r.region, r.aggregation) ==
               ("cc_norm", "all", "voxel_mean"))
    if planted:
        assert row.ci_low > 0 and row.verdict == "higher"
    else:
        assert row.difference == row.ci_low == row.ci_high == 0
        assert row.verdict == "no detectable difference"
    assert report.main(["--out", str(tmp_path / "report"), "--alignment",
                        str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    check = summary["expected_direction"]["cc_norm"]
    assert check["verdict"] == row.verdict and check["as_expected"] is (True if planted else None)
    text = (tmp_path / "report" / "report.md").read_text()
    assert ("| higher, as expected |" if planted else "| no detectable difference |") in text


def test_departures_from_the_paper_are_named_with_the_papers_value(setup, tmp_path):
    root, data = setup
    base = ["--model_name", str(root / "model0"), "--subject", "1", "--data_dir", str(data)]
    paper_grid = [str(alpha) for alpha in eval_utils.ENCODING_ALPHAS]
    settings = brain_evaluate.parse_args([*base, "--layers", "2", "5", "7", "8", "10", "11", "12",
                                          "--alphas", *paper_grid])
    assert alignment_outputs.departures(settings, None, []) == [
        {"setting": "--tr_source", "value": "respdict",
         "paper": alignment_outputs.PAPER_EVALUATION["tr_source"][1]}]
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "brain_tuning.json").write_text(json.dumps(
        {"arguments": {"select_by": "corr", "num_epochs": 4, "base_lr": 5e-5, "target": "fmri",
                       "seed": 3}}))
    settings = brain_evaluate.parse_args([*base, "--chunk_s", "1.0", "--n_boots", "5"])
    found = alignment_outputs.departures(settings, torch.bfloat16, [
        ("pretrained", root / "model0"), ("final", tmp_path / "tuned")])
    assert {d["setting"]: (d["value"], d["paper"]) for d in found} == {
        "--tr_source": ("respdict", alignment_outputs.PAPER_EVALUATION["tr_source"][1]),
        "--chunk_s": ("1.0", "0.1"), "--n_boots": ("5", "3"),
        "--precision": ("auto (bfloat16 autocast)", "fp32"),
        "final: brain_trainer_story.py --select_by": (
            "corr", "loss (the epoch of lowest validation loss)"),
        "final: brain_trainer_story.py --num_epochs": ("4", "30")}


@pytest.mark.parametrize("config", sorted(Path(alignment_outputs.__file__).parent.glob(
    "configs/iclr2025_*.json")), ids=lambda path: path.stem)
def test_the_papers_configs_hold_the_values_departures_compare_with(config):
    """The paper's settings are written twice, as values in configs/iclr2025_*.json and as the
    reference of departures (alignment_outputs.PAPER_*): they must agree."""
    sections = json.loads(config.read_text())
    for name, value in sections["train"].items():
        if name in alignment_outputs.PAPER_TRAINING:
            assert any(alignment_outputs._same(value, paper)
                       for paper in alignment_outputs.PAPER_TRAINING[name][0]), name
    for name, value in sections["evaluate"].items():
        if name in alignment_outputs.PAPER_EVALUATION:
            assert any(alignment_outputs._same(value, paper)
                       for paper in alignment_outputs.PAPER_EVALUATION[name][0]), name
