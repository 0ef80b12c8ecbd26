"""make demo end to end: the report, the summary, and the tuned model better on the planted
semantic voxels. The slowest test (about 3 minutes on 2 CPU cores): it runs the whole demo."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval_utils

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_demo_tunes_the_model_towards_the_planted_semantic_voxels(tmp_path):
    out = tmp_path / "demo"
    # -o setup: run with this interpreter instead of setting up .venv
    result = subprocess.run(["make", "-o", "setup", "demo", f"DEMO_DIR={out}",
                             f"BIN={Path(sys.executable).parent}"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Loading weights" not in result.stderr  # transformers' bars stay below ours
    assert "\r" not in result.stderr  # off a terminal, progress is logged lines, not redraws
    summary = json.loads((out / "summary.json").read_text())
    pretrained, tuned = summary["pretrained"], summary["tuned"]
    # The claim is made on final/, the checkpoint that early stopping keeps.
    assert summary["models"] == {"pretrained": "pretrained", "tuned": "final"}
    assert tuned["semantic_cc_norm"] > pretrained["semantic_cc_norm"] + 0.03, summary
    assert summary["semantic_cc_norm_gain"] == pytest.approx(
        tuned["semantic_cc_norm"] - pretrained["semantic_cc_norm"])
    for role in (pretrained, tuned):
        assert "phonemes_f1_macro_best_layer" in role
        assert "semantic_drop_percent_without_powspec" in role
    report = (out / "report.md").read_text()
    assert "The tuned model is better" in report
    # scored as the authors score, with intervals and p-values
    departures = {d["setting"] for d in summary["protocol"]["departures"]}
    assert "--tr_source" in departures and "--context_s" in departures  # the demo's short windows
    assert not {"--test_target", "--normalise_by", "--alpha_score"} & departures
    low, high = summary["comparison"]["ci"]
    assert low <= summary["comparison"]["difference"] <= high
    assert summary["comparison"]["verdict"] == eval_utils.interval_verdict(low, high)
    assert 0 <= tuned["significant_fraction"] <= 1 and len(tuned["cc_norm_ci"]) == 2
    plots = sorted(path for path in out.rglob("*.png") if "narratives" not in str(path))
    assert {plot.name for plot in plots} == {
        "alignment.png", "comparison.png", "reliance.png", "semantic_preference.png",
        "data_efficiency.png", "phonemes.png", "alpha_grid.png", "partition.png",
        "training_curves.png"}
    for plot in plots:
        assert f"]({plot.relative_to(out)})" in report
    # beyond the paper: variance partitioning and the stories the tuned model needs
    assert "| final | phonemes | 2 |" in report.split("## Variance partitioning")[1]
    assert "| model | 2 stories | 3 stories | 5 stories | all 10 |" in report
    assert "| final | " in report.split("Stories each model needs")[1]
    # the paper's penalty grid covers the demo's voxels: no warning of a narrow grid
    assert "No model and layer has more than 5% of its voxels at an end" in report
    assert "too narrow" not in result.stderr
    assert (out / "runs" / "tiny-wav2vec2_UTS01" / "run_config.json").exists()
    # the tuned model's card, with the alignment the report added
    card = (out / "runs" / "tiny-wav2vec2_UTS01" / "final" / "README.md").read_text()
    assert "library_name: transformers" in card and "## Brain alignment" in card
    # act 2: the same models on the synthetic Narratives, scored against its listeners' ceiling
    act2 = json.loads((out / "narratives_report" / "summary.json").read_text())
    assert act2["models"] == {"pretrained": "pretrained", "tuned": "final"}
    low, high = act2["comparison"]["ci"]
    assert low <= act2["comparison"]["difference"] <= high
    text = (out / "narratives_report" / "report.md").read_text()
    assert "`--dataset`: narratives" in text and "intersubject ceiling" in text
    assert "| late_language | voxel_mean |" in text
    assert (out / "subject_NCs" / "narratives_lucy.json").exists()
    for plot in (out / "narratives_report").rglob("*.png"):
        assert f"]({plot.relative_to(out / 'narratives_report')})" in text
