"""reproduce.py and make reproduce: the commands of the paper's protocol, stage after stage,
and the quick mode on the built-in synthetic data (each stage's script is tested in its own
file; the demo, test_demo.py, runs the same scripts end to end)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import noise_ceilings

ROOT = Path(__file__).resolve().parent.parent


def _reproduce_commands(*flags):
    """The commands ``reproduce.py`` (what ``make reproduce`` runs) would run, on one line."""
    done = subprocess.run([sys.executable, "reproduce.py", "--dry_run", "--model_name", "/m",
                           "--data_dir", "/d", *flags], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


def test_make_reproduce_takes_hub_datasets_and_runs_asr():
    models = "--config configs/iclr2025_wav2vec2-base.json --model_name /m"
    text = _reproduce_commands("--timit", "/t", "--speech_commands", "hf:google/speech_commands",
                               "--slurp", "hf:/s", "--stage_args", "slurp=--hf_split_test devel",
                               "--stage_args", "intent=--label_column intent", "--stage_args",
                               "timit=--include_x", "--stage_args", "asr=--label_column text")
    assert f"eval_words.py --hf_dataset google/speech_commands {models}" in text
    assert ("eval_intent.py --hf_dataset /s --hf_split_test devel --label_column intent "
            f"{models}") in text
    assert f"eval_phonemes.py --data_path /t --include_x {models}" in text
    assert f"eval_sentence_type.py --data_path /t --include_x {models}" in text
    assert "eval_asr.py --data_path /t --include_x --label_column text --finetune" in text
    assert "--exp_name m_UTS01_asr_finetune" in text and "downstream/m_UTS01_asr_finetune" in text
    frozen = _reproduce_commands("--timit", "hf:timit_asr", "--asr", "frozen")
    assert f"eval_asr.py --hf_dataset timit_asr {models}" in frozen
    assert "downstream/m_UTS01_asr" in frozen
    assert "--finetune" not in frozen and "asr_finetune" not in frozen
    assert "eval_asr.py" not in _reproduce_commands("--timit", "/t", "--asr", "none")
    assert "eval_asr.py" not in _reproduce_commands()


def test_a_given_noise_ceiling_file_is_made_when_missing_and_used_by_every_stage(tmp_path):
    ceiling = tmp_path / "ceilings" / "UTS01.npy"
    text = _reproduce_commands("--nc_path", str(ceiling))
    assert f"noise_ceilings.py --data_dir /d --subject 1 --out {ceiling}" in text
    for script in ("brain_trainer_story.py", "brain_evaluate.py"):
        assert f"{script} --config configs/iclr2025_wav2vec2-base.json --subject 1 --data_dir " \
               f"/d --nc_path {ceiling}" in text
    noise_ceilings.save_noise_ceiling(ceiling, [0.5, 0.6], {})
    assert "noise_ceilings.py" not in _reproduce_commands("--nc_path", str(ceiling))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_reproduce_quick_runs_every_stage_on_the_synthetic_data(tmp_path):
    """QUICK=1: the demo's synthetic dataset, tiny model and settings, plus a synthetic TIMIT
    for the probes and CTC recognition, through reproduce.py; its own ceiling file."""
    out = tmp_path / "quick"
    done = subprocess.run(["make", "-n", "-o", "setup", "reproduce", "QUICK=1", f"OUT={out}",
                           "BIN=bin"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.replace("\\\n", " ").split())
    assert "bin/python synthetic_data.py --seed 0 --overwrite" in text
    assert f"--out {out}/data" in text and "make_tiny.py --family wav2vec2 --size demo" in text
    assert f"synthetic_downstream.py --layout timit --out {out}/timit" in text
    assert (f"bin/python reproduce.py --config configs/demo.json --data_dir {out}/data "
            f"--model_name {out}/tiny-wav2vec2 --subject 1 --nc_path "
            f"{out}/subject_NCs/UTS01.npy --timit {out}/timit --out {out}") in text
    # the demo makes the same dataset and model
    demo = subprocess.run(["make", "-n", "-o", "setup", "demo", f"DEMO_DIR={out}", "BIN=bin"],
                          cwd=ROOT, capture_output=True, text=True).stdout
    for line in done.stdout.splitlines()[:2]:
        assert line.split(" --out ")[0] in demo


def test_stage_args_of_the_probe_section_reach_every_probe_and_only_them():
    commands = _reproduce_commands("--timit", "/t", "--stage_args", "probe=--max_examples 5")
    lines = [line for line in commands.split("/python ") if "--max_examples 5" in line]
    assert sorted(line.split()[0].rsplit("/", 1)[1] for line in lines) == [
        "eval_phonemes.py", "eval_sentence_type.py"]
