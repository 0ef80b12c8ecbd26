"""report.py: summary numbers from hand-made result folders, the Markdown, refusals."""

import dataclasses
import json
import re
import types

import h5py
import numpy as np
import pytest
import scipy.stats

import encoding
import eval_utils
import noise_ceilings
import report
import report_markdown
import results_schema
import run_utils
import summaries

N_VOXELS = 12
TRUTH = {"semantic_voxels": [0, 1, 2, 3, 4], "acoustic_voxels": [5, 6, 7],
         "noise_voxels": [8, 9, 10, 11]}
AUTHORS_PROTOCOL = {"test_target": "repeats_mean", "normalise_by": "test_repeats",
                    "alpha_score": "r2", "tr_source": "trfiles", "tr_path": "trfiles_huge.jbl",
                    "followup_ceiling": 0.05, "n_permutations": 1000, "n_bootstrap": 1000,
                    "block_len": 10, "fdr_q": 0.05, "confidence": 0.95,
                    "train_fraction": [0.1, 0.4, 1.0]}
OUR_PROTOCOL = {**AUTHORS_PROTOCOL, "test_target": "data", "normalise_by": "nc_file",
                "alpha_score": "corr", "tr_source": "respdict", "tr_path": None}
# a run without permutations or bootstrap: no intervals, no significant fractions
PLAIN_PROTOCOL = {**AUTHORS_PROTOCOL, "tr_source": "respdict", "tr_path": None,
                  "n_permutations": 0, "n_bootstrap": 0, "train_fraction": [1.0]}
PARCEL_CC_NORM, PARCEL_DROP = 9.0, 777.0  # values of the rows no headline number may use


GRID = [10.0, 100.0, 1000.0]  # the penalty grid of the written results


def _alignment(folder, nc_path, rng, scored, models=("pretrained", "epoch 3"), preference=None,
               drop=12.5, n_voxels=None, subject="UTS01", new_style=False, fractions=(),
               cc_norm=None, comparisons=None, protocol=None, departures=(), grids=None):
    """A brain_evaluate.py-like results folder (its results.json laid out by
    ``results_schema``) with per-voxel cc_norm drawn at random.

    ``scored``: (N_VOXELS,) bool, the voxels the run's summaries average over;
    ``preference``: model -> semantic preference (0.25 for all by default); ``n_voxels``: the
    count written into each row (the scored voxels' by default); ``cc_norm``: (model, layer)
    -> the mean written for it in place of the voxels' mean.

    Each row is a voxel mean of a fit on all training rows (1000) without interval or
    significant fraction (a run without permutations or bootstrap). ``new_style``: each row
    also has an interval (cc_norm -+ 0.03) and significant_fraction (0.5), and "parcel_mean"
    rows with PARCEL_CC_NORM and PARCEL_DROP come first; ``fractions``: train fractions below 1
    with a voxel-mean row each (cc_norm -fraction, no interval), also first; ``comparisons``
    (none by default), ``protocol`` (PLAIN_PROTOCOL by default) and ``departures`` are written
    as given."""
    folder.mkdir(parents=True)
    np.save(folder / run_utils.SUMMARY_VOXELS_NAME, np.flatnonzero(scored))
    n_voxels = int(scored.sum()) if n_voxels is None else n_voxels
    rows, first, values = [], [], {}
    for model in models:
        for layer in (1, 2):
            for analysis in ("none", "powspec"):
                voxels = rng.uniform(-0.2, 0.8, N_VOXELS)
                values[(model, layer, analysis)] = voxels
                np.savez(folder / run_utils.voxel_results_name(model, layer, analysis),
                         r=voxels, cc_norm=voxels, alpha=np.ones(N_VOXELS))
                mean = float(voxels.mean())
                if analysis == "none" and cc_norm:
                    mean = cc_norm[(model, layer)]
                row = {"model": model, "layer": layer, "low_level": analysis, "region": "all",
                       "aggregation": "voxel_mean", "train_fraction": 1.0, "train_stories": None,
                       "train_rows": 1000,
                       "cc_norm": mean, "r": 0.0,
                       "drop_percent": None if analysis == "none" else drop,
                       "drop_ci_low": None, "drop_ci_high": None, "n_voxels": n_voxels, "cc_norm_ci_low": None, "cc_norm_ci_high": None,
                       "significant_fraction": None}
                if new_style:
                    new = {"cc_norm_ci_low": mean - 0.03, "cc_norm_ci_high": mean + 0.03,
                           "significant_fraction": 0.5}
                    first.append({**row, **new, "aggregation": "parcel_mean",
                                  "cc_norm": PARCEL_CC_NORM, "drop_percent": PARCEL_DROP})
                    row = {**row, **new}
                if analysis == "none":
                    first += [{**row, "train_fraction": fraction, "cc_norm": -fraction,
                               "train_rows": int(1000 * fraction), "cc_norm_ci_low": None,
                               "cc_norm_ci_high": None, "significant_fraction": None}
                              for fraction in fractions]
                rows.append(row)
    rows = first + rows
    preference = preference or {}
    preference_rows = [{"model": m, "layer": k, "semantic_r": 0.5, "semantic_columns": 16,
                        "phonetic_r": 0.25, "phonetic_columns": 44,
                        "preference": preference.get(m, 0.25), "ci_low": None, "ci_high": None}
                       for m in models for k in (1, 2)]
    facts = {"subject": subject, "train_stories": ["a", "b"], "test_story": "wheretheressmoke",
             "models": {m: "m0" if m == "pretrained" else f"run/{m.replace(' ', '-')}"
                        for m in models},
             "nc_thr": 0.4, "subject_voxels": N_VOXELS, "scored_voxels": int(scored.sum()),
             "excluded_voxels": 0, "fitted_voxels": {"selection": "all", "n": N_VOXELS},
             "regions": {"given": None, "file": None, "groups": [], "shown": []},
             "protocol": PLAIN_PROTOCOL if protocol is None else protocol,
             "departures": list(departures)}
    (folder / "run_config.json").write_text(json.dumps({
        "arguments": {"nc_path": str(nc_path), "nc_thr": 0.4, "test_story": "wheretheressmoke"},
        **facts, "run": {}}))
    alpha_rows = [{"model": m, "layer": k, "low_level": "none", "train_fraction": 1.0,
                   "train_stories": None, "n_voxels": int(scored.sum()), "lowest_fraction": 0.0,
                   "highest_fraction": 0.0, "alphas": GRID, "mean_cv_score": [0.1, 0.2, 0.15],
                   "wider_alphas": None, **(grids or {}).get((m, k), {})}
                  for m in models for k in (1, 2)]
    (folder / "results.json").write_text(json.dumps(results_schema.results_document(
        facts, rows, comparisons or [], preference_rows, alpha_rows, [], {}, [])))
    return values


def _write_truth(data):
    """The synthetic_truth.json of a synthetic dataset of 12 voxels (planted voxel types)."""
    (data / "derivative").mkdir(parents=True)
    (data / "synthetic_truth.json").write_text(json.dumps({"subjects": {"UTS01": TRUTH}}))


def _setup(tmp_path, nc=None, constant=(), seed=0, **alignment):
    """Noise ceiling, synthetic truth and alignment folder whose summaries averaged over the
    voxels with NC > 0.4 but ``constant`` (those the evaluator excluded: constant test
    responses); returns (nc, per-voxel values)."""
    rng = np.random.default_rng(seed)
    nc = rng.uniform(0, 1, N_VOXELS) if nc is None else np.asarray(nc, dtype=float)
    noise_ceilings.save_noise_ceiling(tmp_path / "UTS01.npy", nc, {})
    scored = (nc > 0.4) & ~np.isin(np.arange(N_VOXELS), constant)
    values = _alignment(tmp_path / "alignment", tmp_path / "UTS01.npy", rng, scored, **alignment)
    _write_truth(tmp_path / "data")
    return nc, values


def _report(tmp_path, *extra, data=True):
    argv = ["--out", str(tmp_path / "report"), "--alignment", str(tmp_path / "alignment"),
            "--overwrite", *extra]
    return report.main(argv + (["--data_dir", str(tmp_path / "data")] if data else []))


def _outputs(tmp_path):
    return (json.loads((tmp_path / "report" / "summary.json").read_text()),
            (tmp_path / "report" / "report.md").read_text())


def test_summary_and_report_from_result_folders(tmp_path):
    nc, values = _setup(tmp_path)
    probe = tmp_path / "probe"
    probe.mkdir()
    # the probe labels the tuned model differently: it is matched by its checkpoint folder
    (probe / "results.json").write_text(json.dumps({
        "task": "phonemes", "dataset": "TIMIT", "chance_f1_macro": 0.125,
        "models": {"pretrained": "m0", "checkpoint-epoch3": "run/epoch-3"},
        "results": [
            {"model": "pretrained", "layer": 0, "f1_micro": 0.5, "f1_macro": 0.4, "accuracy": 0.1},
            {"model": "pretrained", "layer": 1, "f1_micro": 0.6, "f1_macro": 0.45,
             "accuracy": 0.1},
            {"model": "checkpoint-epoch3", "layer": 1, "f1_micro": 0.7, "f1_macro": 0.55,
             "accuracy": 0.2}]}))
    out = tmp_path / "report"
    assert report.main(["--out", str(out), "--alignment", str(tmp_path / "alignment"),
                        "--downstream", str(probe), "--data_dir", str(tmp_path / "data")]) == 0
    summary, text = _outputs(tmp_path)
    selected = {kind: np.array(voxels)[nc[voxels] > 0.4] for kind, voxels in
                (("semantic", TRUTH["semantic_voxels"]), ("noise", TRUTH["noise_voxels"]))}
    for role, model in (("pretrained", "pretrained"), ("tuned", "epoch 3")):
        expected = values[(model, 2, "none")][selected["semantic"]].mean()
        assert summary[role]["semantic_cc_norm"] == pytest.approx(expected)
        assert summary[role]["noise_cc_norm"] == pytest.approx(
            values[(model, 2, "none")][selected["noise"]].mean())
        after = values[(model, 2, "powspec")][selected["semantic"]].mean()
        assert summary[role]["semantic_drop_percent_without_powspec"] == pytest.approx(
            100 * (expected - after) / expected)
        assert summary[role]["semantic_preference"] == 0.25
    assert summary["layer"] == 2
    assert summary["models"] == {"pretrained": "pretrained", "tuned": "epoch 3"}
    assert summary["checkpoints"] == {"pretrained": "m0", "tuned": "run/epoch-3"}
    assert summary["planted_voxels"]["semantic"] == selected["semantic"].size
    assert summary["pretrained"]["phonemes_f1_macro_best_layer"] == 0.45
    assert summary["tuned"]["phonemes_f1_macro_best_layer"] == 0.55
    assert summary["semantic_cc_norm_gain"] == pytest.approx(
        summary["tuned"]["semantic_cc_norm"] - summary["pretrained"]["semantic_cc_norm"])
    for heading in ("## epoch 3 against pretrained", "## Brain alignment", "### Planted voxels",
                    "## Reliance on low-level", "## Semantic preference",
                    "## Downstream probe: phonemes", "## What the planted signal predicts"):
        assert heading in text
    assert "| epoch 3 | 2 |" in text
    # one label per model: the probe's table shows the alignment run's label, and says so
    assert "checkpoint-epoch3 |" not in text and "| epoch 3 | n/a | 0.550 |" in text
    assert "This probe's results label epoch 3 as `checkpoint-epoch3`." in text
    assert "Chance (guessing labels at their training frequencies): 0.125." in text
    # existing reports are kept
    assert report.main(["--out", str(out), "--alignment", str(tmp_path / "alignment")]) == 1


def test_every_planted_column_uses_the_voxel_rule_and_shows_its_count(tmp_path):
    """Noise voxels with a ceiling near 0 (cc_norm blown up) and a semantic voxel whose test
    responses are constant are left out of every column, and each cell says how many remain."""
    nc = np.full(N_VOXELS, 0.9)
    nc[[8, 9, 10]] = 0.01  # noise voxels below the threshold
    _, values = _setup(tmp_path, nc=nc, constant=[4])
    blown_up = dict(np.load(tmp_path / "alignment" /
                            run_utils.voxel_results_name("pretrained", 2)))
    blown_up["cc_norm"][[8, 9, 10]] = 6.9
    np.savez(tmp_path / "alignment" / run_utils.voxel_results_name("pretrained", 2), **blown_up)
    assert _report(tmp_path) == 0
    summary, text = _outputs(tmp_path)
    assert summary["planted_voxels"] == {"semantic": 4, "acoustic": 3, "noise": 1}
    assert summary["pretrained"]["noise_cc_norm"] == pytest.approx(blown_up["cc_norm"][11])
    assert summary["pretrained"]["semantic_cc_norm"] == pytest.approx(
        blown_up["cc_norm"][[0, 1, 2, 3]].mean())
    assert summary["tuned"]["acoustic_cc_norm"] == pytest.approx(
        values[("epoch 3", 2, "none")][[5, 6, 7]].mean())
    semantic, acoustic, noise = (values[("epoch 3", 1, "none")][v].mean()
                                 for v in ([0, 1, 2, 3], [5, 6, 7], [11]))
    assert (f"| epoch 3 | 1 | {semantic:.3f} (n=4) | {acoustic:.3f} (n=3) | {noise:.3f} (n=1) |"
            in text)
    assert "(n=4) |" in text.split("By planted voxel type")[1]


@pytest.mark.parametrize("passing", [[8, 9, 10, 11], [8, 9, 11], [11]])
def test_the_noise_voxels_that_pass_by_chance_are_explained_with_a_t_interval(tmp_path,
                                                                              passing):
    """Planted noise voxels that clear the ceiling threshold do so by chance; the report says
    so and gives their tuned-minus-pretrained change with a t interval over those voxels
    (independent noise), computed here from the formula; with one voxel there is none."""
    nc = np.full(N_VOXELS, 0.9)
    nc[np.setdiff1d(TRUTH["noise_voxels"], passing)] = 0.01
    _, values = _setup(tmp_path, nc=nc)
    assert _report(tmp_path) == 0
    summary, text = _outputs(tmp_path)
    if len(passing) < 2:
        assert summary["noise_voxels"] is None and "planted noise voxels pass" not in text
        return
    differences = values[("epoch 3", 2, "none")][passing] - values[("pretrained", 2, "none")][
        passing]
    n = len(passing)
    half = scipy.stats.t.ppf(0.975, n - 1) * differences.std(ddof=1) / np.sqrt(n)
    noise = summary["noise_voxels"]
    assert noise["planted"] == 4 and noise["passing"] == n
    assert noise["difference"] == pytest.approx(differences.mean())
    assert noise["ci"] == pytest.approx([differences.mean() - half, differences.mean() + half])
    assert noise["verdict"] == eval_utils.interval_verdict(*noise["ci"])
    explanation = _section(text, "## What the planted signal predicts")
    assert (f"{n} of the 4 planted noise voxels pass the voxel rule, though they respond to "
            "nothing") in explanation
    assert (f"tuned minus pretrained over these voxels is {differences.mean():+.3f}, 95% "
            f"interval [{noise['ci'][0]:.3f}, {noise['ci'][1]:.3f}]") in explanation
    assert f": {noise['verdict']}." in explanation


def test_no_planted_voxel_of_a_type_passing_the_rule_reads_n_a(tmp_path):
    nc = np.full(N_VOXELS, 0.9)
    nc[TRUTH["noise_voxels"]] = 0.0
    _setup(tmp_path, nc=nc)
    assert _report(tmp_path) == 0
    summary, text = _outputs(tmp_path)
    assert summary["pretrained"]["noise_cc_norm"] is None  # NaN is written as null
    assert "| n/a (n=0) |" in text


def test_alignment_tables_show_the_rows_voxel_counts(tmp_path):
    nc = np.full(N_VOXELS, 0.9)
    nc[:3] = 0.1
    _, values = _setup(tmp_path, nc=nc, constant=[11], n_voxels=8)
    assert _report(tmp_path) == 0
    summary, text = _outputs(tmp_path)
    mean = float(values[("epoch 3", 2, "none")].mean())
    assert f"| {mean:.3f} (n=8) |" in text
    assert "| 12.5% (n=8) |" in text
    assert summary["tuned"]["n_voxels"] == 8
    # a run without permutations or bootstrap: no intervals, comparisons, significant
    # fractions nor data-efficiency rows
    assert "cc_norm_ci" not in summary["tuned"] and "significant_fraction" not in summary["tuned"]
    assert not {"comparison", "across_subjects"} & summary.keys()
    assert summary["protocol"]["n_bootstrap"] == summary["protocol"]["n_permutations"] == 0
    for absent in ("- intervals:", "- significance:", "minus pretrained, with",
                   "## Data efficiency", "## Across subjects", "In brackets",
                   "Fraction of those voxels"):
        assert absent not in text


@pytest.mark.parametrize("damage", ["missing", "out of range"])
def test_a_missing_or_damaged_voxel_selection_is_refused(tmp_path, caplog, damage):
    _setup(tmp_path, nc=np.full(N_VOXELS, 0.9))
    path = tmp_path / "alignment" / run_utils.SUMMARY_VOXELS_NAME
    if damage == "missing":
        path.unlink()
    else:
        np.save(path, np.array([0, N_VOXELS]))
    assert _report(tmp_path) == 1
    assert str(path) in caplog.text and "run brain_evaluate.py again" in caplog.text
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "report" / "report.md").exists()


def _headline_comparisons(preference, drop, cc_norm=(0.1, 0.05, 0.15)):
    """Comparison rows at the compared layer (2): (difference, low, high) of the semantic
    preference, of the drop without powspec and of mean cc_norm."""
    return [_comparison(2, *preference, measure="semantic_preference"),
            _comparison(2, *drop, low_level="powspec", measure="drop_percent"),
            _comparison(2, *cc_norm)]


def test_results_against_the_expected_direction_beyond_the_noise_are_stated(tmp_path):
    """The demo's case: the tuned model's semantic preference is lower than the pretrained's,
    and its interval says so."""
    _setup(tmp_path, preference={"pretrained": -0.172, "epoch 3": -0.192},
           comparisons=_headline_comparisons((-0.02, -0.03, -0.01), (5.0, 1.0, 9.0)))
    assert _report(tmp_path, data=False) == 0
    summary, text = _outputs(tmp_path)
    check = summary["expected_direction"]["semantic_preference"]
    assert check == {"expected": "higher", "pretrained": -0.172, "tuned": -0.192,
                     "difference": pytest.approx(-0.02), "ci": [-0.03, -0.01],
                     "verdict": "lower", "as_expected": False}
    assert summary["expected_direction"]["drop_percent_without_powspec"]["as_expected"] is False
    assert summary["expected_direction"]["cc_norm"]["as_expected"] is True
    assert ("**Against the paper's expected direction, beyond the noise:** " in text
            and "semantic preference is -0.192 for epoch 3 and -0.172 for pretrained, where "
                "brain-tuning should make it higher" in text)
    assert ("| semantic preference | -0.172 | -0.192 | -0.020 [-0.030, -0.010] | higher | "
            "**lower: against the expected direction** |" in text)


@pytest.mark.parametrize("preference", [(-0.02, -0.05, 0.01), None])
def test_a_difference_within_the_noise_gets_no_verdict_of_direction(tmp_path, preference):
    """Point estimates against the paper, with an interval that holds 0 (or none): "no
    detectable difference" (or "no interval"), never the bold verdict."""
    comparisons = ([] if preference is None else
                   _headline_comparisons(preference, (5.0, -1.0, 9.0), (-0.01, -0.04, 0.02)))
    _setup(tmp_path, preference={"pretrained": -0.172, "epoch 3": -0.192},
           comparisons=comparisons)
    assert _report(tmp_path, data=False) == 0
    summary, text = _outputs(tmp_path)
    verdict = "no detectable difference" if preference else None
    for key in ("cc_norm", "semantic_preference", "drop_percent_without_powspec"):
        check = summary["expected_direction"][key]
        assert check["verdict"] == verdict and check["as_expected"] is None, key
    assert "**Against" not in text and "against the expected direction**" not in text
    assert "No comparison goes against the paper's expected direction beyond the noise." in text
    if preference:
        assert "3 show no detectable difference" in text
        assert summary["comparison"] == {"difference": -0.01, "ci": [-0.04, 0.02],
                                         "verdict": "no detectable difference"}
    else:
        assert "| no interval |" in text and "comparison" not in summary


def test_results_in_the_expected_direction_are_stated(tmp_path):
    _setup(tmp_path, preference={"pretrained": 0.1, "epoch 3": 0.2}, drop=None,
           comparisons=_headline_comparisons((0.1, 0.05, 0.15), (None, None, None),
                                             (0.2, 0.1, 0.3)))
    results = json.loads((tmp_path / "alignment" / "results.json").read_text())
    for row in results["results"]:  # tuned better everywhere
        row["cc_norm"] = 0.3 if row["model"] == "epoch 3" else 0.1
    (tmp_path / "alignment" / "results.json").write_text(json.dumps(results))
    assert _report(tmp_path, data=False) == 0
    summary, text = _outputs(tmp_path)
    directions = summary["expected_direction"]
    assert directions["cc_norm"]["as_expected"] and directions["semantic_preference"]["as_expected"]
    assert directions["drop_percent_without_powspec"]["as_expected"] is None
    assert "2 of 3 go the paper's way with an interval that excludes 0" in text
    assert "Against the paper's" not in text
    assert "| undefined | undefined | n/a | lower | undefined |" in text


def test_drops_above_100_percent_and_undefined_drops_are_explained(tmp_path):
    _setup(tmp_path, drop=203.9)
    assert _report(tmp_path, data=False) == 0
    _, text = _outputs(tmp_path)
    assert "203.9%" in text and report_markdown.DROP_ABOVE_100 in text
    assert report_markdown.DROP_UNDEFINED not in text
    (tmp_path / "second").mkdir()
    _setup(tmp_path / "second", drop=None)
    assert report.main(["--out", str(tmp_path / "none"), "--alignment",
                        str(tmp_path / "second" / "alignment")]) == 0
    text = (tmp_path / "none" / "report.md").read_text()
    assert report_markdown.DROP_UNDEFINED in text and report_markdown.DROP_ABOVE_100 not in text


@pytest.mark.parametrize("tuned", ["final", "random control"])
def test_the_tuned_model_is_the_one_named(tmp_path, tuned):
    """A random-weight control listed first is never taken for the tuned model."""
    _, values = _setup(tmp_path, models=("pretrained", "random control", "final"))
    assert _report(tmp_path, "--tuned", tuned) == 0
    summary, text = _outputs(tmp_path)
    assert summary["models"] == {"pretrained": "pretrained", "tuned": tuned}
    assert summary["checkpoints"]["tuned"] == f"run/{tuned.replace(' ', '-')}"
    assert summary["tuned"]["cc_norm"] == pytest.approx(values[(tuned, 2, "none")].mean())
    assert f"## {tuned} against pretrained" in text


def test_several_tuned_models_need_tuned(tmp_path, caplog):
    _setup(tmp_path, models=("pretrained", "random control", "final"))
    assert _report(tmp_path) == 1
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1
    assert "several tuned models ('random control', 'final'); pass --tuned" in lines[0]
    assert not (tmp_path / "report" / "summary.json").exists()
    caplog.clear()
    assert _report(tmp_path, "--tuned", "epoch 9") == 1
    assert ("--tuned 'epoch 9': not a tuned model of" in caplog.text
            and "its tuned models are 'random control', 'final'" in caplog.text)
    caplog.clear()
    assert _report(tmp_path, "--tuned", "pretrained") == 1
    assert "--tuned 'pretrained': not a tuned model" in caplog.text



def _tuned_checkpoint(folder, target_features=None, target="fmri"):
    """A model folder with the brain_tuning.json the trainer writes (its arguments)."""
    folder.mkdir(parents=True)
    (folder / "brain_tuning.json").write_text(json.dumps({"arguments": {
        "target": target, "target_features": target_features and str(target_features)}}))
    return str(folder)


def test_baselines_are_tabled_beside_the_brain_tuned_model_it_is_chosen_by_default(tmp_path):
    """With fMRI-, BigSLM- and LM-tuned models (and a random-fMRI control) in one run and no
    --tuned, the fMRI-tuned one is the compared model, and every tuned model's difference
    from pretrained is tabled with what it was tuned towards (read from the checkpoint and the
    target file's attributes)."""
    models = ("pretrained", "final", "bigslm", "lm", "control")
    differences = {"final": 0.05, "bigslm": 0.02, "lm": -0.01, "control": 0.0}
    _setup(tmp_path, models=models, new_style=True, comparisons=[
        _comparison(layer, differences[m] * layer, -0.1, 0.2, model=m)
        for m in differences for layer in (1, 2)])
    targets = {}
    for kind, model in (("speech", "/models/whisper-medium"), ("text", "/models/gpt2")):
        targets[kind] = tmp_path / f"{kind}.hf5"
        with h5py.File(targets[kind], "w") as handle:
            handle.attrs["kind"], handle.attrs["model"] = kind, model
    path = tmp_path / "alignment" / "results.json"
    results = json.loads(path.read_text())
    results["models"].update(
        final=_tuned_checkpoint(tmp_path / "runs" / "fmri"),
        bigslm=_tuned_checkpoint(tmp_path / "runs" / "bigslm", targets["speech"]),
        lm=_tuned_checkpoint(tmp_path / "runs" / "lm", targets["text"]),
        control=_tuned_checkpoint(tmp_path / "runs" / "control", target="random_fmri_all"))
    path.write_text(json.dumps(results))
    assert _report(tmp_path) == 0
    summary, text = _outputs(tmp_path)
    assert summary["models"] == {"pretrained": "pretrained", "tuned": "final"}
    table = _table_lines(_section(text, "## Brain-tuned and baseline models"))
    assert table[0] == "| model | tuned towards | layer 1 | layer 2 |"
    assert table[1:] == [
        "| final | fMRI | 0.050 [-0.100, 0.200] | 0.100 [-0.100, 0.200] |",
        "| bigslm | speech features of whisper-medium (BigSLM-tuned) | 0.020 [-0.100, 0.200] "
        "| 0.040 [-0.100, 0.200] |",
        "| lm | text features of gpt2 (LM-tuned) | -0.010 [-0.100, 0.200] "
        "| -0.020 [-0.100, 0.200] |",
        "| control | random_fmri_all | 0.000 [-0.100, 0.200] | 0.000 [-0.100, 0.200] |"]
    assert _report(tmp_path, "--tuned", "lm") == 0  # --tuned still chooses
    assert _outputs(tmp_path)[0]["models"]["tuned"] == "lm"


def test_only_the_pretrained_model_is_refused(tmp_path, caplog):
    _setup(tmp_path, models=("pretrained",))
    assert _report(tmp_path) == 1
    assert "holds 'pretrained'; the report compares 'pretrained' with a tuned model" in caplog.text


def test_a_probe_label_meaning_another_model_is_refused(tmp_path, caplog):
    _setup(tmp_path)
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "results.json").write_text(json.dumps({
        "task": "phonemes", "dataset": "TIMIT", "chance_f1_macro": 0.125,
        "models": {"epoch 3": "other_run/epoch-3"},
        "results": [{"model": "epoch 3", "layer": 1, "f1_macro": 0.5}]}))
    assert _report(tmp_path, "--downstream", str(probe), data=False) == 1
    assert "'epoch 3' is other_run/epoch-3 there but run/epoch-3 in the alignment run" in (
        caplog.text)


def test_missing_results_are_named(tmp_path, caplog):
    assert report.main(["--out", str(tmp_path / "r"), "--alignment", str(tmp_path / "none")]) == 1
    assert "results.json: missing" in caplog.text
    _setup(tmp_path)
    folder = tmp_path / "alignment"
    (folder / "run_config.json").unlink()
    assert report.main(["--out", str(tmp_path / "r"), "--alignment", str(folder)]) == 1
    assert "run_config.json: missing" in caplog.text
    (folder / "run_config.json").write_text("{")
    assert report.main(["--out", str(tmp_path / "r"), "--alignment", str(folder)]) == 1
    assert "run_config.json: not valid JSON" in caplog.text
    (folder / "run_config.json").write_text("{}")
    assert report.main(["--out", str(tmp_path / "r"), "--alignment", str(folder)]) == 1
    assert 'run_config.json: no "arguments" object' in caplog.text


def _errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("version", [None, 0, results_schema.SCHEMA_VERSION + 1, "1"])
def test_results_of_another_schema_version_are_refused_in_one_line(tmp_path, caplog, version):
    """A results.json written before the schema was versioned, or in another version, is
    refused in one line that says to evaluate again; no traceback, no report."""
    _setup(tmp_path)
    path = tmp_path / "alignment" / "results.json"
    results = json.loads(path.read_text())
    if version is None:
        del results["schema_version"]
    else:
        results["schema_version"] = version
    path.write_text(json.dumps(results))
    assert _report(tmp_path) == 1
    [line] = _errors(caplog)
    assert line.startswith(f"{path}: ") and "\n" not in line
    assert "evaluate again with brain_evaluate.py" in line
    assert ("no schema_version" if version is None
            else f"results schema version {version!r}, but this toolkit reads version "
                 f"{results_schema.SCHEMA_VERSION}") in line
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "report" / "report.md").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda r: r["results"][3].pop("n_voxels"), "results[3] lacks 'n_voxels'"),
    (lambda r: r.pop("protocol"), "the file lacks 'protocol'"),
    (lambda r: r["protocol"].pop("confidence"), "protocol lacks 'confidence'"),
    (lambda r: r["results"][0].update(layer="2"), "results[0].layer must be an integer, not "
                                                  '"2"'),
    (lambda r: r["semantic_preference"][1].update(preference=None),
     "semantic_preference[1].preference must be a number, not null"),
    (lambda r: r.update(train_stories="a"), "train_stories must be a list, not \"a\""),
    (lambda r: r["models"].update(final=3), "models.final must be a str, not 3"),
    (lambda r: r["comparisons"].append({}), "comparisons[0] lacks 'model'"),
    (lambda r: r["regions"].update(extra=1), "regions has unknown field(s) 'extra'")])
def test_a_results_file_with_a_missing_or_mistyped_field_is_refused_naming_it(
        tmp_path, caplog, damage, message):
    _setup(tmp_path)
    path = tmp_path / "alignment" / "results.json"
    results = json.loads(path.read_text())
    damage(results)
    path.write_text(json.dumps(results))
    assert _report(tmp_path) == 1
    [line] = _errors(caplog)
    assert line.startswith(f"{path}: {message}")
    assert line.endswith("evaluate again with brain_evaluate.py")
    assert "Traceback" not in caplog.text
    with pytest.raises(run_utils.DatasetError, match=re.escape(message)):
        results_schema.read_results_folder(tmp_path / "alignment")


def test_planted_voxels_outside_the_responses_are_refused(tmp_path, caplog):
    _setup(tmp_path)
    truth = {"subjects": {"UTS01": {**TRUTH, "noise_voxels": [8, 9, 10, 40]}}}
    (tmp_path / "data" / "synthetic_truth.json").write_text(json.dumps(truth))
    assert _report(tmp_path) == 1
    assert "synthetic_truth.json: noise voxel 40 is beyond the 12 voxels" in caplog.text


def test_voxel_files_are_found_by_their_shared_name(tmp_path, monkeypatch):
    """report.py reads the per-voxel files under run_utils.voxel_results_name, the name
    brain_evaluate.py writes them under."""
    monkeypatch.setattr(run_utils, "voxel_results_name",
                        lambda model, layer, analysis="none": f"{model}-{layer}-{analysis}.npz")
    _, values = _setup(tmp_path, nc=np.ones(N_VOXELS), seed=1)
    assert (tmp_path / "alignment" / "epoch 3-2-powspec.npz").is_file()
    assert _report(tmp_path) == 0
    summary, _ = _outputs(tmp_path)
    assert summary["tuned"]["semantic_cc_norm"] == pytest.approx(
        values[("epoch 3", 2, "none")][:5].mean())


@pytest.mark.parametrize("tuned, expected", [
    (0.3, "is 0.300 against 0.200 for the pretrained model (+0.100). The tuned model is better "
          "(+50%), as expected."),
    (0.1, "is 0.100 against 0.200 for the pretrained model (-0.100). The tuned model is NOT "
          "better here"),
    (float("nan"), "is n/a against 0.200 for the pretrained model. No comparison is possible: "
                   "no planted semantic voxel passes the voxel rule (noise ceiling above 0.4)")])
def test_synthetic_explanation_states_the_gain(tuned, expected):
    summary = {"layer": 2, "nc_thr": 0.4, "models": {"tuned": "final"},
               "planted_voxels": {"semantic": 5},
               "pretrained": {"semantic_cc_norm": 0.2}, "tuned": {"semantic_cc_norm": tuned},
               "semantic_cc_norm_gain": tuned - 0.2,
               "semantic_cc_norm_gain_percent": 100 * (tuned - 0.2) / 0.2}
    text = report_markdown._synthetic_explanation(summary, {"family_size": 1})
    assert ("At layer 2, the tuned model's (final) mean cc_norm over the 5 planted semantic "
            "voxels that pass the voxel rule " + expected) in text


def _section(text, heading):
    """The text of a report section, from its heading to the next heading."""
    return text.split(heading, 1)[1].split("\n#")[0]


def _table_lines(text):
    return [line for line in text.splitlines() if line.startswith("| ")]


def _comparison(layer, difference, low, high, aggregation="voxel_mean", model="epoch 3",
                low_level="none", measure="cc_norm"):
    region = None if measure == "semantic_preference" else "all"
    return {"model": model, "baseline": "pretrained", "layer": layer, "measure": measure,
            "low_level": low_level, "region": region,
            "aggregation": None if region is None else aggregation, "model_value": 0.3,
            "baseline_value": 0.2, "difference": difference, "ci_low": low, "ci_high": high,
            "verdict": eval_utils.interval_verdict(low, high)}


def test_parcel_means_and_smaller_fits_change_no_headline_number_nor_table(tmp_path):
    """The same run written the old way and the new way (parcel-mean rows and fits on 10% and
    40% of the training rows listed before the voxel means) gives the same headline numbers
    and the same alignment and reliance tables."""
    outputs = {}
    for style, extra in (("old", {}), ("new", {"new_style": True, "fractions": (0.1, 0.4)})):
        (tmp_path / style).mkdir()
        _setup(tmp_path / style, n_voxels=8, **extra)
        assert _report(tmp_path / style) == 0
        outputs[style] = _outputs(tmp_path / style)
    (old, old_text), (new, new_text) = outputs["old"], outputs["new"]
    for role in ("pretrained", "tuned"):
        assert {k: v for k, v in new[role].items()
                if k not in ("cc_norm_ci", "significant_fraction")} == old[role]
    for key in ("layer", "models", "planted_voxels", "expected_direction"):
        assert new[key] == old[key]
    for heading in ("## Brain alignment", "## Reliance on low-level features"):
        # the new cells also hold intervals, and a table of significant fractions follows
        new_section = re.sub(r" \[[^]]*\]", "", _section(new_text, heading).split(
            "Fraction of those voxels")[0])
        assert _table_lines(new_section) == _table_lines(_section(old_text, heading))
    assert f"{PARCEL_CC_NORM:.3f}" not in new_text and f"{PARCEL_DROP:.1f}" not in new_text
    outside = new_text.replace(_section(new_text, "## Data efficiency"), "")
    assert "-0.100" not in outside and "-0.400" not in outside


def test_intervals_and_significance_are_shown_in_cells_and_summary(tmp_path):
    _setup(tmp_path, n_voxels=8, new_style=True)
    assert _report(tmp_path) == 0
    summary, text = _outputs(tmp_path)
    rows = json.loads((tmp_path / "alignment" / "results.json").read_text())["results"]
    row = next(r for r in rows if (r["model"], r["layer"], r["low_level"], r["aggregation"])
               == ("epoch 3", 2, "none", "voxel_mean"))
    mean, low, high = row["cc_norm"], row["cc_norm_ci_low"], row["cc_norm_ci_high"]
    assert f"| {mean:.3f} [{low:.3f}, {high:.3f}] (n=8) |" in _section(text, "## Brain alignment")
    assert "In brackets: the 95% block-bootstrap interval" in text
    assert summary["tuned"]["cc_norm_ci"] == [low, high]
    assert summary["tuned"]["significant_fraction"] == 0.5
    assert "| epoch 3 | 50% (n=8) | 50% (n=8) |" in text


@pytest.mark.parametrize("low, high, words", [(-0.15, -0.02, "lower"),
                                              (-0.15, 0.02, "no detectable difference")])
def test_the_tuned_minus_pretrained_intervals_are_tabled(tmp_path, low, high, words):
    comparisons = [_comparison(1, 0.1, 0.05, 0.15), _comparison(2, -0.1, low, high),
                   _comparison(2, 0.01, -0.02, 0.04, "parcel_mean"),
                   _comparison(2, 0.5, 0.4, 0.6, model="other"),
                   _comparison(2, 0.7, 0.6, 0.8, low_level="powspec")]
    _setup(tmp_path, new_style=True, comparisons=comparisons, protocol=AUTHORS_PROTOCOL)
    (tmp_path / "alignment" / "comparison.png").write_bytes(b"png")
    assert _report(tmp_path, data=False) == 0
    summary, text = _outputs(tmp_path)
    section = _section(text, "## epoch 3 minus pretrained, with 95% intervals")
    assert ("| all | voxel_mean | 1 | 0.200 | 0.300 | 0.100 [0.050, 0.150] | higher |"
            in section)
    assert (f"| all | voxel_mean | 2 | 0.200 | 0.300 | -0.100 [{low:.3f}, {high:.3f}] | {words} |"
            in section)
    assert ("| all | parcel_mean | 2 | 0.200 | 0.300 | 0.010 [-0.020, 0.040] | no detectable "
            "difference |" in section)
    assert "0.500" not in section and "0.700" not in section
    assert "![difference per layer](../alignment/comparison.png)" in section
    assert summary["comparison"] == {"difference": -0.1, "ci": [low, high], "verdict": words}


@pytest.mark.parametrize("departures", [
    [], [{"setting": "--chunk_s", "value": "1.0", "paper": "0.1"},
         {"setting": "--precision", "value": "auto (bfloat16 autocast)", "paper": "fp32"}]])
def test_the_protocol_header_names_every_departure_from_the_paper(tmp_path, departures):
    _setup(tmp_path, protocol=OUR_PROTOCOL, departures=departures)
    assert _report(tmp_path, data=False) == 0
    summary, text = _outputs(tmp_path)
    header = text.split("## ")[0]
    assert ("**Protocol:** the paper's in every setting recorded." in header) == (not departures)
    if departures:
        assert f"**Protocol: departs from the paper's in {len(departures)} settings**" in header
        for departure in departures:
            assert (f"- `{departure['setting']}`: {departure['value']} (the paper's: "
                    f"{departure['paper']})" in header)
    for words in ("- test target: the `data` rows", "- normaliser: cc_max from the noise-ceiling",
                  "- alpha score: held-out correlation", "- TR source: a simulated 2 s grid"):
        assert words in header
    assert summary["protocol"]["test_target"] == "data"
    assert summary["protocol"]["departures"] == departures


def test_the_data_efficiency_table(tmp_path):
    _setup(tmp_path, new_style=True, fractions=(0.1, 0.4))
    (tmp_path / "alignment" / "data_efficiency.png").write_bytes(b"png")
    assert _report(tmp_path, data=False) == 0
    summary, text = _outputs(tmp_path)
    section = _section(text, "## Data efficiency")
    assert "| model | 10% of training rows | 40% of training rows | 100% of training rows |" in (
        section)
    assert (f"| epoch 3 | -0.100 (100 rows) | -0.400 (400 rows) | "
            f"{summary['tuned']['cc_norm']:.3f} (1000 rows) |" in section)
    assert "![data efficiency](../alignment/data_efficiency.png)" in section


def _subjects(tmp_path, pretrained, gains, models=("pretrained", "epoch 3"), subjects=None):
    """One alignment folder per subject (UTS01, UTS02, ...): pretrained mean cc_norm
    ``pretrained[i]``, the tuned one plus ``gains[layer][i]``; returns the folders."""
    rng = np.random.default_rng(0)
    subjects = subjects or [f"UTS0{i + 1}" for i in range(len(pretrained))]
    folders = []
    for i, subject in enumerate(subjects):
        scores = {("pretrained", k): pretrained[i] for k in (1, 2)}
        scores.update({(models[1], k): pretrained[i] + gains[k][i] for k in (1, 2)})
        folder = tmp_path / f"run{i}"
        _alignment(folder, tmp_path / "UTS01.npy", rng, np.ones(N_VOXELS, bool), models=models,
                   subject=subject, cc_norm=scores)
        folders.append(str(folder))
    return folders


def _across(tmp_path, folders):
    return report.main(["--out", str(tmp_path / "report"), "--alignment", *folders,
                        "--overwrite"])


@pytest.mark.parametrize("n", [3, 6])
def test_across_subjects_the_gains_are_tested_with_wilcoxon(tmp_path, n):
    pretrained = [0.2 + 0.01 * i for i in range(n)]
    gains = {1: [0.03, -0.01, 0.02, -0.04, 0.05, 0.06][:n], 2: [0.01 * (i + 1) for i in range(n)]}
    folders = _subjects(tmp_path, pretrained, gains)
    assert _across(tmp_path, folders) == 0
    summary, text = _outputs(tmp_path)
    assert text.count("Subject UTS01;") == 1
    section = _section(text, "## Across subjects")
    for layer in (1, 2):
        read = {}  # the means as the results files hold them
        for folder in folders:
            for row in json.loads((tmp_path / folder / "results.json").read_text())["results"]:
                if row["layer"] == layer and row["low_level"] == "none":
                    read.setdefault(row["model"], []).append(row["cc_norm"])
        expected = scipy.stats.wilcoxon(read["epoch 3"], read["pretrained"])
        scores = summary["across_subjects"][str(layer)]
        assert scores["subjects"] == [f"UTS0{i + 1}" for i in range(n)]
        assert scores["pretrained"] == read["pretrained"] and scores["tuned"] == read["epoch 3"]
        assert scores["gain"] == pytest.approx(gains[layer])
        assert scores["wilcoxon_statistic"] == pytest.approx(expected.statistic)
        assert scores["p_value"] == pytest.approx(expected.pvalue)
        assert scores["min_possible_p"] == pytest.approx(2 / 2 ** n)
        # the test decides: higher where p < 0.05 (all 6 gains of layer 2 positive), else none
        verdict = ("higher" if expected.pvalue < 0.05 and np.median(gains[layer]) > 0
                   else "no detectable difference")
        assert scores["verdict"] == verdict
        words = "higher, as expected" if verdict == "higher" else verdict
        assert (f"| {layer} | {n} | {expected.statistic:g} | {expected.pvalue:.4g} | {words} |"
                in section)
        assert (f"| {layer} | UTS02 | {read['pretrained'][1]:.3f} | {read['epoch 3'][1]:.3f} | "
                f"{gains[layer][1]:+.3f} |" in section)
    assert summary["across_subjects"]["2"]["p_value"] == pytest.approx(2 / 2 ** n)
    assert summary["across_subjects"]["2"]["verdict"] == (
        "higher" if n == 6 else "no detectable difference")
    assert (f"With {n} subjects the exact two-sided p cannot go below {2 / 2 ** n:.4g} "
            f"(2/2^{n}" in section)
    assert ("with fewer than 6 subjects it cannot go below 0.05" in section) == (n < 6)


def test_across_subjects_all_zero_gains_give_no_p(tmp_path):
    folders = _subjects(tmp_path, [0.2, 0.3, 0.25], {1: [0.0] * 3, 2: [0.0] * 3})
    assert _across(tmp_path, folders) == 0
    summary, text = _outputs(tmp_path)
    scores = summary["across_subjects"]["2"]
    assert scores["wilcoxon_statistic"] is None and scores["p_value"] is None
    assert scores["min_possible_p"] == 0.25
    assert scores["verdict"] is None
    assert "| 2 | 3 | n/a | n/a | no test |" in text
    assert "At layer 2 the test cannot run: every gain is zero." in text


@pytest.mark.parametrize("fault", ["same subject", "other tuned model", "no layer 2"])
def test_across_subjects_mismatched_runs_are_refused(tmp_path, caplog, fault):
    gains = {1: [0.1, 0.2, 0.3], 2: [0.1, 0.2, 0.3]}
    folders = _subjects(tmp_path, [0.2, 0.3, 0.25], gains,
                        subjects=["UTS01", "UTS02", "UTS01"] if fault == "same subject" else None)
    if fault == "other tuned model":
        folders[2] = _subjects(tmp_path / "other", [0.2], gains, models=("pretrained", "final"),
                               subjects=["UTS03"])[0]
    if fault == "no layer 2":
        path = tmp_path / folders[2] / "results.json"
        results = json.loads(path.read_text())
        results["results"] = [row for row in results["results"] if row["layer"] == 1]
        path.write_text(json.dumps(results))
    assert _across(tmp_path, folders) == 1
    message = {"same subject": f"{folders[2]}: subject UTS01 again (also in {folders[0]})",
               "other tuned model": f"{folders[2]}/results.json: its tuned model is 'final' but "
                                    f"{folders[0]} compares 'epoch 3'",
               "no layer 2": f"{folders[2]}/results.json: no layer 2 results of both "
                             "'pretrained' and 'epoch 3'"}[fault]
    assert message in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "report" / "report.md").exists()


def test_a_run_on_a_voxel_selection_is_reported_over_its_fitted_voxels(tmp_path):
    """brain_evaluate.py --voxels: per-voxel files with NaN where not fitted, summary voxels
    among the fitted ones, results.json fitted_voxels; the report names the selection."""
    _, values = _setup(tmp_path, nc=np.full(N_VOXELS, 0.9))
    folder = tmp_path / "alignment"
    fitted = np.arange(8)  # the semantic and acoustic voxels, no noise voxel
    np.save(folder / run_utils.SUMMARY_VOXELS_NAME, fitted)
    for path in folder.glob("voxels_*.npz"):
        arrays = dict(np.load(path))
        for name in arrays:
            arrays[name][8:] = np.nan
        np.savez(path, **arrays)
    results = json.loads((folder / "results.json").read_text())
    results["fitted_voxels"] = {"selection": "front", "n": 8}
    (folder / "results.json").write_text(json.dumps(results))
    assert _report(tmp_path) == 0
    summary, text = _outputs(tmp_path)
    assert ("Only the voxels of `front` (a region or group of the run's --regions) were fitted "
            f"(`--voxels front`: 8 of {N_VOXELS} voxels); every mean" in
            text.split("## Brain alignment")[1])
    assert summary["planted_voxels"] == {"semantic": 5, "acoustic": 3, "noise": 0}
    assert summary["tuned"]["semantic_cc_norm"] == pytest.approx(
        values[("epoch 3", 2, "none")][:5].mean())
    assert summary["tuned"]["noise_cc_norm"] is None
    assert "nan" not in text.lower().replace("constant or nan", "")  # n/a, not a NaN value
    read = results_schema.read_results(folder / "results.json")
    assert report_markdown.fitted_voxels_note(dataclasses.replace(
        read, fitted_voxels=results_schema.FittedVoxels("nc>0.4", 3))) == (
        "Only the voxels whose noise ceiling is above 0.4 were fitted (`--voxels nc>0.4`: 3 "
        f"of {N_VOXELS} voxels); every mean and fraction below is over those voxels.")
    every = results_schema.FittedVoxels("all", N_VOXELS)
    assert report_markdown.fitted_voxels_note(dataclasses.replace(read, fitted_voxels=every)) is (
        None)


def test_an_asr_run_is_reported_by_its_own_score(tmp_path):
    """eval_asr.py results: the section and summary use the score its results.json names."""
    _setup(tmp_path)
    asr = tmp_path / "asr"
    asr.mkdir()
    sizes = {"n_train": 10, "n_test": 5}
    (asr / "results.json").write_text(json.dumps({
        "task": "asr", "dataset": "TIMIT", "target": "characters", "finetune": False,
        "score": "one_minus_wer", "score_name": "1 - WER",
        "description": "CTC speech recognition of the characters, a linear CTC head on each "
                       "layer of the frozen encoder",
        "models": {"pretrained": "m0", "epoch 3": "run/epoch-3"},
        "results": [
            {"model": "pretrained", "layer": 1, "one_minus_wer": 0.25, "wer": 0.75, **sizes},
            {"model": "pretrained", "layer": 2, "one_minus_wer": 0.5, "wer": 0.5, **sizes},
            {"model": "epoch 3", "layer": 2, "one_minus_wer": 0.625, "wer": 0.375, **sizes}]}))
    assert _report(tmp_path, "--downstream", str(asr)) == 0
    summary, text = _outputs(tmp_path)
    assert summary["pretrained"]["asr_one_minus_wer_best_layer"] == 0.5
    assert summary["tuned"]["asr_one_minus_wer_best_layer"] == 0.625
    section = text.split("## Downstream probe: asr (TIMIT)")[1]
    assert section.lstrip().startswith("1 - WER on the test split per layer: CTC speech "
                                       "recognition of the characters")
    assert "| pretrained | 0.250 | 0.500 |" in section and "| epoch 3 | n/a | 0.625 |" in section
    assert "Chance" not in section


def test_probe_sections_say_where_the_data_was_read(tmp_path):
    """A probe run's results.json names its folder or HuggingFace dataset; older ones do not."""
    _setup(tmp_path)
    sources = {"words": {"hf_dataset": "google/speech_commands", "hf_config": "v0.02",
                         "splits": ["train", "test"], "audio_column": "audio",
                         "label_column": "label"},
               "emotion": {"hf_dataset": "/data/crema", "hf_config": None,
                           "splits": ["train", "train"], "audio_column": "audio",
                           "label_column": "label"},
               "intent": {"data_path": "/data/slurp"}, "phonemes": None}
    folders = []
    for task, source in sources.items():
        folder = tmp_path / task
        folder.mkdir()
        results = {"task": task, "dataset": "D", "chance_f1_macro": 0.1,
                   "models": {"pretrained": "m0"},
                   "results": [{"model": "pretrained", "layer": 1, "f1_micro": 0.5,
                                "f1_macro": 0.4, "accuracy": 0.5}]}
        if source is not None:
            results["source"] = source
        (folder / "results.json").write_text(json.dumps(results))
        folders.append(str(folder))
    assert _report(tmp_path, "--downstream", *folders) == 0
    text = _outputs(tmp_path)[1]
    sections = {task: text.split(f"## Downstream probe: {task} (D)")[1].split("## ")[0]
                for task in sources}
    assert ("Data: the HuggingFace dataset `google/speech_commands`, config `v0.02`, splits "
            "`train` and `test`, audio `audio`, labels `label`.") in sections["words"]
    assert ("Data: the HuggingFace dataset `/data/crema`, its `train` split's speakers split "
            "for training and test, audio `audio`, labels `label`.") in sections["emotion"]
    assert "Data: `/data/slurp`, in the distribution layout." in sections["intent"]
    assert "Data:" not in sections["phonemes"]


RESULT_COLUMNS = ["model", "layer", "low_level", "region", "aggregation", "train_fraction",
                  "train_stories", "train_rows", "cc_norm", "r", "drop_percent", "drop_ci_low", "drop_ci_high",
                  "n_voxels", "cc_norm_ci_low", "cc_norm_ci_high", "significant_fraction"]
COMPARISON_COLUMNS = ["model", "baseline", "layer", "measure", "low_level", "region",
                      "aggregation", "model_value", "baseline_value", "difference", "ci_low",
                      "ci_high", "verdict"]
PREFERENCE_COLUMNS = ["model", "layer", "semantic_r", "semantic_columns", "phonetic_r",
                      "phonetic_columns", "preference", "ci_low", "ci_high"]
ALPHA_GRID_COLUMNS = ["model", "layer", "low_level", "train_fraction", "train_stories",
                      "n_voxels",
                      "lowest_fraction", "highest_fraction", "alphas", "mean_cv_score",
                      "wider_alphas"]
PARTITION_COLUMNS = ["model", "layer", "low_level", "region", "aggregation", "n_voxels",
                     "joint", "layer_alone", "low_level_alone", "unique_layer",
                     "unique_layer_ci_low", "unique_layer_ci_high", "shared", "shared_ci_low",
                     "shared_ci_high", "unique_low_level", "unique_low_level_ci_low",
                     "unique_low_level_ci_high"]


def _written_scores(rng, keys, n_voxels, empty=()):
    """An encoding model's scores as alignment_analyses makes them (per-voxel arrays, the
    bootstrap resamples of each summary and the summaries; ``empty``: keys without voxels)."""
    cc_norm = rng.uniform(-0.1, 0.5, n_voxels)
    means = {key: None if key in empty else float(rng.uniform(0.05, 0.3)) for key in keys}
    return {"r": cc_norm, "cc_norm": cc_norm, "alpha": np.ones(n_voxels),
            "p_value": rng.uniform(0, 1, n_voxels),
            "prediction": np.zeros((20, n_voxels), np.float32),
            "bootstrap": rng.normal(0.2, 0.05, (50, len(keys))),
            "summary": {"cc_norm": means, "r": dict(means),
                        "n_voxels": {key: 0 if key in empty else n_voxels for key in keys},
                        "ci": {key: None if key in empty else (means[key] - 0.05,
                                                               means[key] + 0.05)
                               for key in keys},
                        "significant_fraction": {key: None if key in empty else 0.25
                                                 for key in keys},
                        "alpha_grid": {"lowest_fraction": 0.0, "highest_fraction": 0.5,
                                       "n_voxels": n_voxels, "mean_cv_score": [0.1, 0.2, 0.3],
                                       "wider_alphas": GRID + [1e4, 1e5]}}}


def _written_partition(rng, keys, n_voxels, empty=()):
    """A variance partitioning as alignment_analyses makes it: per-voxel measures (the parts
    from the three models' variances), the joint model's penalties and the summaries."""
    measures = {name: rng.uniform(0, 0.3, n_voxels) for name in ("joint", "layer_alone",
                                                                 "low_level_alone")}
    measures.update(encoding._parts(**measures))
    summary = {name: {key: None if key in empty else float(values.mean()) for key in keys}
               for name, values in measures.items()}
    summary["n_voxels"] = {key: 0 if key in empty else n_voxels for key in keys}
    summary["ci"] = {name: {key: None if key in empty else (summary[name][key] - 0.01,
                                                            summary[name][key] + 0.02)
                            for key in keys} for name in summaries.PARTITION_PARTS}
    return {**measures, "alpha": np.ones(n_voxels), "ratio": np.full(n_voxels, 10.0),
            "summary": summary}


def test_the_report_names_crowded_grids_and_one_grid_wide_enough_for_all(tmp_path):
    _setup(tmp_path, grids={
        ("pretrained", 1): {"lowest_fraction": 0.25, "wider_alphas": [1.0, *GRID]},
        ("epoch 3", 2): {"highest_fraction": 0.4, "wider_alphas": [*GRID, 1e4]}})
    assert _report(tmp_path) == 0
    text = _outputs(tmp_path)[1]
    assert "| pretrained | 1 | 25% | 0% |" in text and "| epoch 3 | 2 | 0% | 40% |" in text
    assert "2 of 4 have more than 5% at an end" in text
    assert "`--alphas 1 10 100 1000 1e+04`" in text  # both crowded ends widened
    _setup(tmp_path / "quiet")
    assert report.main(["--out", str(tmp_path / "quiet" / "report"), "--alignment",
                        str(tmp_path / "quiet" / "alignment")]) == 0
    assert "No model and layer has more than 5%" in _outputs(tmp_path / "quiet")[1]


def test_the_writers_results_round_trip_through_the_schema(tmp_path):
    """alignment_outputs.write_results lays results.json out by the schema, in its version;
    read back it is the same content, the CSV columns are today's, and report.py reads the
    folder."""
    import alignment_outputs

    rng = np.random.default_rng(0)
    keys = [("all", "voxel_mean"), ("all", "parcel_mean"), ("front", "voxel_mean"),
            ("front", "parcel_mean")]
    task = types.SimpleNamespace(
        responses=types.SimpleNamespace(train=range(100), test=range(20)),
        fitted_indices=lambda: np.arange(N_VOXELS), subsets={
            "0.5 of the rows": types.SimpleNamespace(rows=range(50), fraction=0.5, stories=None),
            "2 stories": types.SimpleNamespace(rows=range(60), fraction=0.6, stories=["a", "c"])},
        summaries=types.SimpleNamespace(keys=keys), stories=["a", "b", "c"],
        full=lambda values: values, voxels=np.ones(N_VOXELS, bool), alphas=GRID, test_trim=40)
    all_results = {label: {layer: {
        "encoding": {analysis: _written_scores(rng, keys, N_VOXELS, empty=[keys[2]])
                     for analysis in ("none", "powspec")},
        "efficiency": {name: _written_scores(rng, keys, N_VOXELS)
                       for name in ("0.5 of the rows", "2 stories")},
        "partition": {"phonemes": _written_partition(rng, keys, N_VOXELS, empty=[keys[2]])},
        "semantic_preference": {"semantic_r": 0.125, "semantic_columns": 16, "phonetic_r": 0.25,
                                "phonetic_columns": 44, "preference": -0.125,
                                "bootstrap": rng.normal(-0.125, 0.05, 50)}} for layer in (1, 2)}
        for label in ("pretrained", "final")}
    facts = {"subject": "UTS01", "train_stories": ["a", "b", "c"],
             "test_story": "wheretheressmoke",
             "models": {"pretrained": "m0", "final": "run/final"}, "nc_thr": 0.4,
             "subject_voxels": N_VOXELS, "scored_voxels": N_VOXELS, "excluded_voxels": 0,
             "fitted_voxels": {"selection": "all", "n": N_VOXELS},
             "regions": {"given": "regions.json", "file": None, "groups": [],
                         "shown": ["front"]},
             "protocol": {**AUTHORS_PROTOCOL, "train_fraction": [0.5, 1.0]},
             "departures": [{"setting": "--chunk_s", "value": "1.0", "paper": "0.1"}]}
    out = tmp_path / "alignment"
    out.mkdir()
    rows, comparisons, preference_rows, partition_rows = alignment_outputs.write_results(
        out, all_results, facts, task)
    written = json.loads((out / "results.json").read_text())
    assert written["schema_version"] == results_schema.SCHEMA_VERSION
    assert list(written) == ["schema_version", *facts, "results", "comparisons",
                             "semantic_preference", "alpha_grid", "partition", "story_sets",
                             "stories_needed"]
    assert [(g["model"], g["layer"], g["low_level"], g["train_fraction"], g["alphas"])
            for g in written["alpha_grid"]] == [
        (m, k, a, f, GRID) for m in ("pretrained", "final") for k in (1, 2)
        for a, f in (("none", 1.0), ("powspec", 1.0), ("none", 0.5), ("none", 0.6))]
    read = results_schema.read_results(out / "results.json")
    assert results_schema.to_json(read) == written
    assert [results_schema.to_json(row) for row in read.results] == run_utils.json_safe(rows)
    assert [results_schema.to_json(row) for row in read.comparisons] == run_utils.json_safe(
        comparisons)
    assert [results_schema.to_json(row) for row in read.semantic_preference] == (
        run_utils.json_safe(preference_rows))
    assert any(row.cc_norm is None for row in read.results)  # the region without voxels
    assert read.protocol.train_fraction == (0.5, 1.0) and read.regions.shown == ("front",)
    for name, columns in (("results.csv", RESULT_COLUMNS),
                          ("comparisons.csv", COMPARISON_COLUMNS),
                          ("semantic_preference.csv", PREFERENCE_COLUMNS),
                          ("alpha_grid.csv", ALPHA_GRID_COLUMNS),
                          ("partition.csv", PARTITION_COLUMNS)):
        assert (out / name).read_text().splitlines()[0].split(",") == columns
    assert [field.name for field in dataclasses.fields(results_schema.ResultRow)] == (
        RESULT_COLUMNS)
    assert [results_schema.to_json(row) for row in read.partition] == run_utils.json_safe(
        partition_rows)
    # every row's measures are the summaries of its per-voxel values, its parts those of
    # the three models' variances
    for row in read.partition:
        scores = all_results[row.model][row.layer]["partition"][row.low_level]
        key = (row.region, row.aggregation)
        assert row.unique_layer == scores["summary"]["unique_layer"][key]
        if row.joint is not None:
            assert row.shared == pytest.approx(row.layer_alone + row.low_level_alone - row.joint)
            assert (row.shared_ci_low, row.shared_ci_high) == scores["summary"]["ci"][
                "shared"][key]
        saved = np.load(out / run_utils.voxel_results_name(row.model, row.layer,
                                                           "partition phonemes"))
        np.testing.assert_array_equal(saved["unique_low_level"], scores["unique_low_level"])
    assert any(row.joint is None for row in read.partition)  # the region without voxels
    # the stories needed: final's curve (2 stories, all 3) read at pretrained's full-data mean,
    # on the summaries and on each resample of both
    assert read.story_sets == {"2": ("a", "c")}
    assert {row.train_stories for row in read.results if row.train_fraction == 0.6} == {2}
    for row in read.stories_needed:
        ours, theirs = all_results["final"][row.layer], all_results["pretrained"][row.layer]
        curve = [ours["efficiency"]["2 stories"], ours["encoding"]["none"]]
        column = keys.index((row.region, row.aggregation))
        target = theirs["encoding"]["none"]["summary"]["cc_norm"][keys[column]]
        if target is None:
            assert row.stories_needed is None
            continue
        values = [s["summary"]["cc_norm"][keys[column]] for s in curve]
        expected = eval_utils.amount_needed([2, 3], values, target)
        assert row.stories_needed == (None if np.isnan(expected) else pytest.approx(expected))
        samples = [eval_utils.amount_needed([2, 3], [s["bootstrap"][b, column] for s in curve],
                                            theirs["encoding"]["none"]["bootstrap"][b, column])
                   for b in range(50)]
        ordered = np.sort(np.nan_to_num(samples, nan=np.inf))
        if row.stories_needed is not None:  # the 2.5% and 97.5% order statistics of the 50
            low, high = ordered[int(np.ceil(0.025 * 50)) - 1], ordered[int(np.ceil(0.975 * 50)) - 1]
            assert row.ci_low == (None if np.isinf(low) else pytest.approx(low))
            assert row.ci_high == (None if np.isinf(high) else pytest.approx(high))
    assert {row.stories_needed is None for row in read.stories_needed} == {True, False}
    # the folder as the evaluator leaves it (with its run_config.json) makes a report
    (out / "run_config.json").write_text(json.dumps({"arguments": {"data_dir": "d"}}))
    assert results_schema.read_results_folder(out).arguments == {"data_dir": "d"}
    assert report.main(["--out", str(tmp_path / "report"), "--alignment", str(out)]) == 0
    summary, text = _outputs(tmp_path)
    assert summary["tuned"]["cc_norm"] == next(
        row["cc_norm"] for row in rows if (row["model"], row["layer"], row["region"],
                                           row["aggregation"], row["low_level"],
                                           row["train_fraction"]) ==
        ("final", 2, "all", "voxel_mean", "none", 1.0))
    assert "## Brain regions" in text and "## Data efficiency" in text
    assert "4 of 4 have more than 5% at an end" in text and "--alphas 10 100 1000 1e+04 1e+05" in text
    assert "![mean CV score per penalty](../alignment/alpha_grid.png)" in text
    final = next(row for row in read.partition if (row.model, row.layer, row.region,
                                                   row.aggregation) == ("final", 2, "all",
                                                                        "voxel_mean"))
    assert (f"| final | phonemes | 2 | {final.joint:.3f} | {final.unique_layer:.3f} "
            f"[{final.unique_layer_ci_low:.3f}, {final.unique_layer_ci_high:.3f}] |") in text
    assert "![variance partitioning per layer](../alignment/partition.png)" in text
    assert "- `--chunk_s`: 1.0 (the paper's: 0.1)" in text
    # every comparison's interval, from the same resamples of both models, brute force
    confidence = 100 * (1 - read.protocol.confidence) / 2
    for row in read.comparisons:
        ours, theirs = [all_results[label][row.layer] for label in ("final", "pretrained")]
        if row.measure == "semantic_preference":
            samples = (ours["semantic_preference"]["bootstrap"]
                       - theirs["semantic_preference"]["bootstrap"])
        else:
            column = keys.index((row.region, row.aggregation))
            resampled = [[result["encoding"][name]["bootstrap"][:, column]
                          for name in ("none", row.low_level)] for result in (ours, theirs)]
            if row.measure == "drop_percent":
                samples = np.subtract(*[100 * (before - after) / before
                                        for before, after in resampled])
            else:
                samples = resampled[0][1] - resampled[1][1]
        undefined = row.measure == "drop_percent" and min(
            before.min() for (before, _) in resampled) <= 0  # a drop relative to <= 0
        if row.difference is None or undefined:
            assert row.ci_low is None and row.verdict is None
            continue
        low, high = np.percentile(samples, [confidence, 100 - confidence])
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high))
        assert row.verdict == ("higher" if low > 0 else "lower" if high < 0
                               else "no detectable difference")
    assert {row.measure for row in read.comparisons if row.ci_low is not None} == {
        "cc_norm", "drop_percent", "semantic_preference"}


def test_a_writer_that_leaves_the_schema_fails_loudly(tmp_path):
    """A row or fact the schema does not describe is the writer's bug: SchemaError, before
    anything is written."""
    _setup(tmp_path)
    written = json.loads((tmp_path / "alignment" / "results.json").read_text())
    facts = {key: value for key, value in written.items() if key not in (
        "schema_version", "results", "comparisons", "semantic_preference", "alpha_grid",
        "partition", "story_sets", "stories_needed")}
    rows, preference = written["results"], written["semantic_preference"]
    grids, parts = written["alpha_grid"], (written["partition"], {}, [])
    assert results_schema.results_document(facts, rows, [], preference, grids, *parts) == written
    with pytest.raises(results_schema.SchemaError, match=r"results\[0\] has unknown field"):
        results_schema.results_document(facts, [{**rows[0], "extra": 1}], [], preference, grids, *parts)
    with pytest.raises(results_schema.SchemaError, match=r"alpha_grid\[0\]"):
        results_schema.results_document(facts, rows, [], preference,
                                        [{**grids[0], "alphas": "10 100"}], *parts)
    with pytest.raises(results_schema.SchemaError, match="the file lacks 'protocol'"):
        results_schema.results_document({key: value for key, value in facts.items()
                                         if key != "protocol"}, rows, [], preference, grids, *parts)
    # the protocol is open: a flag declared part of it later is recorded as it is
    document = results_schema.results_document(
        {**facts, "protocol": {**facts["protocol"], "new_flag": 1}}, rows, [], preference, grids, *parts)
    assert document["protocol"] == {**facts["protocol"], "new_flag": 1}
    with pytest.raises(results_schema.SchemaError, match="protocol lacks 'test_target'"):
        results_schema.results_document(
            {**facts, "protocol": {key: value for key, value in facts["protocol"].items()
                                   if key != "test_target"}}, rows, [], preference, grids, *parts)
