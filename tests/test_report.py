"""report.py: summary numbers from hand-made result folders, the Markdown, refusals."""

import json

import numpy as np
import pytest

import noise_ceilings
import report
import run_utils


def _alignment(folder, nc_path, rng):
    """A brain_evaluate.py-like results folder with per-voxel cc_norm drawn at random."""
    folder.mkdir(parents=True)
    rows, values = [], {}
    for model in ("pretrained", "epoch 3"):
        for layer in (1, 2):
            for analysis in ("none", "powspec"):
                cc_norm = rng.uniform(-0.2, 0.8, 12)
                values[(model, layer, analysis)] = cc_norm
                np.savez(folder / run_utils.voxel_results_name(model, layer, analysis),
                         r=cc_norm, cc_norm=cc_norm, alpha=np.ones(12))
                rows.append({"model": model, "layer": layer, "low_level": analysis,
                             "region": "all", "cc_norm": float(cc_norm.mean()), "r": 0.0,
                             "drop_percent": None if analysis == "none" else 12.5})
    preference = [{"model": m, "layer": k, "semantic_r": 0.5, "phonetic_r": 0.25,
                   "preference": 0.25} for m in ("pretrained", "epoch 3") for k in (1, 2)]
    facts = {"subject": "UTS01", "train_stories": ["a", "b"],
             "models": {"pretrained": "m0", "epoch 3": "run/checkpoint-epoch3"}}
    (folder / "run_config.json").write_text(json.dumps({
        "arguments": {"nc_path": str(nc_path), "nc_thr": 0.4, "test_story": "wheretheressmoke"},
        **facts, "run": {}}))
    (folder / "results.json").write_text(json.dumps({**facts, "results": rows,
                                                     "semantic_preference": preference}))
    return values


def _write_truth(data):
    """A synthetic_truth.json with the planted voxel types of 12 voxels."""
    truth = {"subjects": {"UTS01": {"semantic_voxels": [0, 1, 2, 3, 4],
                                    "acoustic_voxels": [5, 6, 7],
                                    "noise_voxels": [8, 9, 10, 11]}}}
    data.mkdir()
    (data / "synthetic_truth.json").write_text(json.dumps(truth))


def test_summary_and_report_from_result_folders(tmp_path):
    rng = np.random.default_rng(0)
    nc = rng.uniform(0, 1, 12)
    noise_ceilings.save_noise_ceiling(tmp_path / "UTS01.npy", nc, {})
    data = tmp_path / "data"
    _write_truth(data)
    values = _alignment(tmp_path / "alignment", tmp_path / "UTS01.npy", rng)
    probe = tmp_path / "probe"
    probe.mkdir()
    # the probe labels the tuned model differently: it is matched by its checkpoint folder
    (probe / "results.json").write_text(json.dumps({
        "task": "phonemes", "dataset": "TIMIT",
        "models": {"pretrained": "m0", "checkpoint-epoch3": "run/checkpoint-epoch3"},
        "results": [
            {"model": "pretrained", "layer": 0, "f1_micro": 0.5, "f1_macro": 0.4, "accuracy": 0.1},
            {"model": "pretrained", "layer": 1, "f1_micro": 0.6, "f1_macro": 0.45,
             "accuracy": 0.1},
            {"model": "checkpoint-epoch3", "layer": 1, "f1_micro": 0.7, "f1_macro": 0.55,
             "accuracy": 0.2}]}))
    out = tmp_path / "report"
    assert report.main(["--out", str(out), "--alignment", str(tmp_path / "alignment"),
                        "--downstream", str(probe), "--data_dir", str(data)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    semantic = np.array([0, 1, 2, 3, 4])
    semantic = semantic[nc[semantic] > 0.4]
    for role, model in (("pretrained", "pretrained"), ("tuned", "epoch 3")):
        expected = values[(model, 2, "none")][semantic].mean()
        assert summary[role]["semantic_cc_norm"] == pytest.approx(expected)
        assert summary[role]["noise_cc_norm"] == pytest.approx(
            values[(model, 2, "none")][8:].mean())
        after = values[(model, 2, "powspec")][semantic].mean()
        assert summary[role]["semantic_drop_percent_without_powspec"] == pytest.approx(
            100 * (expected - after) / expected)
        assert summary[role]["semantic_preference"] == 0.25
    assert summary["layer"] == 2
    assert summary["pretrained"]["phonemes_f1_macro_best_layer"] == 0.45
    assert summary["tuned"]["phonemes_f1_macro_best_layer"] == 0.55
    assert summary["semantic_cc_norm_gain"] == pytest.approx(
        summary["tuned"]["semantic_cc_norm"] - summary["pretrained"]["semantic_cc_norm"])
    text = (out / "report.md").read_text()
    for heading in ("## Brain alignment", "### Planted voxels", "## Reliance on low-level",
                    "## Semantic preference", "## Downstream probe: phonemes",
                    "## What the planted signal predicts"):
        assert heading in text
    assert "| epoch 3 | 2 |" in text
    # existing reports are kept
    assert report.main(["--out", str(out), "--alignment", str(tmp_path / "alignment")]) == 1


def test_missing_results_are_named(tmp_path, caplog):
    assert report.main(["--out", str(tmp_path / "r"), "--alignment", str(tmp_path / "none")]) == 1
    assert "results.json: missing" in caplog.text
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("{}")
    assert report.main(["--out", str(tmp_path / "r"), "--alignment", str(tmp_path / "old")]) == 1
    assert "run_config.json: missing" in caplog.text


def test_voxel_files_are_found_by_their_shared_name(tmp_path, monkeypatch):
    """report.py reads the per-voxel files under run_utils.voxel_results_name, the name
    brain_evaluate.py writes them under."""
    monkeypatch.setattr(run_utils, "voxel_results_name",
                        lambda model, layer, analysis="none": f"{model}-{layer}-{analysis}.npz")
    rng = np.random.default_rng(1)
    noise_ceilings.save_noise_ceiling(tmp_path / "UTS01.npy", np.ones(12), {})
    data = tmp_path / "data"
    _write_truth(data)
    values = _alignment(tmp_path / "alignment", tmp_path / "UTS01.npy", rng)
    assert (tmp_path / "alignment" / "epoch 3-2-powspec.npz").is_file()
    assert report.main(["--out", str(tmp_path / "report"), "--alignment",
                        str(tmp_path / "alignment"), "--data_dir", str(data)]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["tuned"]["semantic_cc_norm"] == pytest.approx(
        values[("epoch 3", 2, "none")][:5].mean())


@pytest.mark.parametrize("tuned, expected", [
    (0.3, "The tuned model is better (+50%), as expected."),
    (0.1, "The tuned model is NOT better here")])
def test_synthetic_explanation_states_the_gain(tuned, expected):
    summary = {"layer": 2, "pretrained": {"semantic_cc_norm": 0.2},
               "tuned": {"semantic_cc_norm": tuned},
               "semantic_cc_norm_gain": tuned - 0.2,
               "semantic_cc_norm_gain_percent": 100 * (tuned - 0.2) / 0.2}
    text = report._synthetic_explanation(summary, {"family_size": 1})
    assert expected in text
    assert f"is {tuned:.3f} against 0.200" in text
