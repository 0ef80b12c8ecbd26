"""Tests of ``python data_utils.py check``: the dataset doctor, on damaged synthetic copies."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import data_utils
import synthetic_data

REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^(UTS\d\d): (\d+) stories, (\d+) rows \([^)]*\), (\d+) voxels, "
                     r"(\w+) repeats of wheretheressmoke$", re.MULTILINE)
SHARED_STORY = "souls"  # responses for both subjects
UTS01_ONLY_STORY = "life"  # the last synthetic subject lacks it
TEST_STORY = data_utils.TEST_STORY


# ----------------------------------------------------------------------------- helpers

def run_check(capsys, data_dir, *extra):
    """Run ``check`` in-process; returns (exit code, stdout + stderr)."""
    code = data_utils.main(["check", "--data_dir", str(data_dir), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_check_subprocess(data_dir, *extra):
    """Run ``python data_utils.py check`` as a separate process."""
    return subprocess.run([sys.executable, "data_utils.py", "check", "--data_dir", str(data_dir),
                           *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def problems(output):
    """The ``problem:`` lines of the output."""
    return [line for line in output.splitlines() if line.startswith("problem:")]


def notes(output):
    """The ``note:`` lines of the output."""
    return [line for line in output.splitlines() if line.startswith("note:")]


def summaries(output):
    """Subject -> (stories, rows, voxels, repeats) from the summary lines."""
    return {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(5))
            for m in SUMMARY.finditer(output)}


def hf5_path(root, subject, story):
    return Path(root) / "derivative" / "preprocessed_data" / subject / f"{story}.hf5"


def textgrid_file(root, story):
    return Path(root) / "derivative" / "TextGrids" / f"{story}.TextGrid"


def respdict_file(root):
    return Path(root) / "derivative" / "respdict.json"


def replace_dataset(path, name, value):
    """Replace (or create) dataset ``name`` of an HDF5 file with ``value``."""
    with h5py.File(path, "a") as handle:
        if name in handle:
            del handle[name]
        handle.create_dataset(name, data=value)


def read_dataset(path, name="data"):
    with h5py.File(path, "r") as handle:
        return handle[name][()]


def assert_no_traceback(output):
    assert "Traceback" not in output


# ----------------------------------------------------------------------------- clean dataset

def test_clean_dataset_summary_matches_files_and_truth(synthetic_dir, capsys):
    """Clean data: exit 0; stories, rows, voxels and repeats per subject match files and truth."""
    code, output = run_check(capsys, synthetic_dir)
    assert code == 0, output
    assert problems(output) == []
    respdict = json.loads(respdict_file(synthetic_dir).read_text())
    truth = data_utils.load_truth(synthetic_dir)
    found = summaries(output)
    assert sorted(found) == ["UTS01", "UTS02"]
    for subject, (n_stories, rows, voxels, repeats) in found.items():
        stories = [p.stem for p in (Path(synthetic_dir) / "derivative" / "preprocessed_data"
                                    / subject).glob("*.hf5")]
        assert n_stories == len(stories)
        assert rows == sum(respdict[s] - data_utils.RESPONSE_ROWS_OFFSET for s in stories)
        assert voxels == truth["subjects"][subject]["n_voxels"]
        assert repeats == str(truth["subjects"][subject]["n_repeats"])
    assert found["UTS01"][0] == found["UTS02"][0] + 1  # UTS02 lacks 'life'


def test_clean_dataset_subprocess(synthetic_dir):
    """The command line run on clean data exits 0 and prints both subjects."""
    result = run_check_subprocess(synthetic_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(summaries(result.stdout)) == ["UTS01", "UTS02"]
    assert_no_traceback(result.stderr)


def test_derivatives_plural_layout(dataset_copy, synthetic_dir, capsys):
    """``derivatives/`` in place of ``derivative/`` works and gives the same summary."""
    (dataset_copy / "derivative").rename(dataset_copy / "derivatives")
    code, output = run_check(capsys, dataset_copy)
    assert code == 0, output
    _, clean_output = run_check(capsys, synthetic_dir)
    assert summaries(output) == summaries(clean_output)
    assert len(summaries(output)) == 2


# ----------------------------------------------------------------------------- story files

def test_missing_wav_of_shared_story_reported_once(dataset_copy, capsys):
    """A missing WAV: exit 1, the message names the WAV, once although both subjects use it."""
    wav = dataset_copy / "stimuli" / f"{SHARED_STORY}.wav"
    wav.unlink()
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1, output
    assert str(wav) in found[0] and SHARED_STORY in found[0]
    assert sum(f"{SHARED_STORY}.wav" in line for line in output.splitlines()) == 1


def test_missing_wav_of_single_subject_story(dataset_copy, capsys):
    """A missing WAV of a story only UTS01 heard is found too."""
    wav = dataset_copy / "stimuli" / f"{UTS01_ONLY_STORY}.wav"
    wav.unlink()
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    assert [str(wav) in line for line in problems(output)] == [True]


def test_missing_textgrid_reported_once(dataset_copy, capsys):
    """A missing TextGrid: exit 1, the message names the TextGrid, reported once."""
    path = textgrid_file(dataset_copy, SHARED_STORY)
    path.unlink()
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1, output
    assert str(path) in found[0]
    assert "missing" in found[0]


def test_missing_respdict_entry_reported_once(dataset_copy, capsys):
    """A story without respdict entry: exit 1, the message names respdict.json and the story."""
    path = respdict_file(dataset_copy)
    respdict = json.loads(path.read_text())
    del respdict[SHARED_STORY]
    path.write_text(json.dumps(respdict))
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1, output
    assert "respdict.json" in found[0] and repr(SHARED_STORY) in found[0]


@pytest.mark.parametrize("story", [SHARED_STORY, "legacy", UTS01_ONLY_STORY, TEST_STORY])
def test_truncated_textgrid(dataset_copy, capsys, story):
    """A TextGrid cut to half its bytes (long, short, chronological format): exit 1, named."""
    path = textgrid_file(dataset_copy, story)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1, output
    assert str(path) in found[0]
    assert_no_traceback(output)


def test_chronological_textgrid_truncated_at_record_boundary(dataset_copy, capsys):
    """A chronological TextGrid cut cleanly after a record (half its words gone) is damaged."""
    path = textgrid_file(dataset_copy, UTS01_ONLY_STORY)
    text = path.read_text()
    cut = text.rfind("\n\n", 0, len(text) // 2)
    path.write_text(text[:cut] + "\n")
    with pytest.raises(data_utils.DatasetError, match="truncated"):
        data_utils.load_words(dataset_copy, UTS01_ONLY_STORY)
    code, output = run_check(capsys, dataset_copy)
    assert code == 1, output
    assert any(str(path) in line for line in problems(output))


def test_truncated_utf16_textgrid(dataset_copy, capsys):
    """A UTF-16 TextGrid (readable when whole) cut to an odd byte count: exit 1, named."""
    path = textgrid_file(dataset_copy, SHARED_STORY)
    raw = path.read_text(encoding="utf-8-sig").encode("utf-16")
    path.write_bytes(raw)
    code, output = run_check(capsys, dataset_copy)
    assert code == 0, output
    path.write_bytes(raw[:(len(raw) // 2) | 1])
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    assert any(str(path) in line for line in problems(output))


def test_textgrid_with_one_tier(dataset_copy, capsys):
    """A TextGrid holding only one tier: exit 1, named."""
    path = textgrid_file(dataset_copy, SHARED_STORY)
    synthetic_data.write_textgrid(path, {"word": [(0.0, 1.0, "x")]}, 1.0)
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    assert [str(path) in line for line in problems(output)] == [True]


# ----------------------------------------------------------------------------- responses

def test_rows_differ_from_respdict(dataset_copy, capsys):
    """An .hf5 with fewer rows than respdict - 20: exit 1, names the file and both numbers."""
    path = hf5_path(dataset_copy, "UTS01", SHARED_STORY)
    data = read_dataset(path)
    expected = json.loads(respdict_file(dataset_copy).read_text())[SHARED_STORY] - 20
    assert data.shape[0] == expected
    replace_dataset(path, "data", data[:-3])
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1, output
    assert str(path) in found[0]
    assert re.search(rf"\b{expected - 3}\b", found[0]) and re.search(rf"\b{expected}\b", found[0])
    assert sorted(summaries(output)) == ["UTS01", "UTS02"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_hdf5(dataset_copy, capsys, damage):
    """A truncated, garbage or empty .hf5: exit 1, names it, says to download it again."""
    path = hf5_path(dataset_copy, "UTS02", SHARED_STORY)
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[:len(raw) // 2],
                      "garbage": bytes(np.random.default_rng(0).integers(0, 256, len(raw),
                                                                         dtype=np.uint8)),
                      "empty": b""}[damage])
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1, output
    assert str(path) in found[0]
    assert "download it again" in found[0]
    assert_no_traceback(output)


def test_truncated_hdf5_subprocess(dataset_copy):
    """The command line on a truncated .hf5: exit 1, the file named, no traceback."""
    path = hf5_path(dataset_copy, "UTS01", TEST_STORY)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    result = run_check_subprocess(dataset_copy)
    assert result.returncode == 1
    assert str(path) in result.stdout
    assert "download it again" in result.stdout
    assert_no_traceback(result.stdout + result.stderr)


def test_voxel_count_differs_between_stories(dataset_copy, capsys):
    """One story with a voxel fewer than the subject's others: exit 1, names that file."""
    path = hf5_path(dataset_copy, "UTS02", SHARED_STORY)
    data = read_dataset(path)
    replace_dataset(path, "data", data[:, :-1])
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1, output
    assert str(path) in found[0]
    assert str(data.shape[1] - 1) in found[0] and str(data.shape[1]) in found[0]


def test_data_not_a_dataset(dataset_copy, capsys):
    """'data' stored as an HDF5 group instead of a dataset: exit 1 naming the file, no crash."""
    path = hf5_path(dataset_copy, "UTS01", SHARED_STORY)
    with h5py.File(path, "a") as handle:
        del handle["data"]
        handle.create_group("data")
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    assert any(str(path) in line for line in problems(output))


# ----------------------------------------------------------------------------- test story repeats

def test_missing_individual_repeats_is_a_note(dataset_copy, capsys):
    """Test story without 'individual_repeats': exit 0 with a note about noise ceilings."""
    path = hf5_path(dataset_copy, "UTS01", TEST_STORY)
    with h5py.File(path, "a") as handle:
        del handle["individual_repeats"]
    code, output = run_check(capsys, dataset_copy)
    assert code == 0, output
    assert problems(output) == []
    found = notes(output)
    assert len(found) == 1
    assert str(path) in found[0] and "noise ceiling" in found[0]
    n_repeats = data_utils.load_truth(dataset_copy)["subjects"]["UTS02"]["n_repeats"]
    assert summaries(output)["UTS01"][3] == "none"
    assert summaries(output)["UTS02"][3] == str(n_repeats)


@pytest.mark.parametrize("change", ["fewer rows", "fewer voxels", "2-D", "4-D"])
def test_individual_repeats_wrong_shape(dataset_copy, capsys, change):
    """'individual_repeats' whose shape does not match (repeats, rows, voxels) of 'data': exit 1."""
    path = hf5_path(dataset_copy, "UTS01", TEST_STORY)
    rows, voxels = read_dataset(path).shape
    shape = {"fewer rows": (10, rows - 1, voxels), "fewer voxels": (10, rows, voxels - 1),
             "2-D": (rows, voxels), "4-D": (10, rows, voxels, 1)}[change]
    replace_dataset(path, "individual_repeats", np.zeros(shape))
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1, output
    assert str(path) in found[0] and "individual_repeats" in found[0]


def test_individual_repeats_scalar(dataset_copy, capsys):
    """A scalar 'individual_repeats' is a wrong shape: exit 1, no crash."""
    path = hf5_path(dataset_copy, "UTS01", TEST_STORY)
    replace_dataset(path, "individual_repeats", np.float64(3.0))
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    assert any(str(path) in line and "individual_repeats" in line for line in problems(output))


def test_individual_repeats_not_a_dataset(dataset_copy, capsys):
    """'individual_repeats' stored as a group counts as missing: a note naming the file."""
    path = hf5_path(dataset_copy, "UTS01", TEST_STORY)
    with h5py.File(path, "a") as handle:
        del handle["individual_repeats"]
        handle.create_group("individual_repeats")
    code, output = run_check(capsys, dataset_copy)
    assert code == 0
    assert any(str(path) in line and "individual_repeats" in line for line in notes(output))


# ----------------------------------------------------------------------------- data_dir, respdict

def test_data_dir_does_not_exist(tmp_path, capsys):
    """A --data_dir that does not exist: exit 1 naming it."""
    missing = tmp_path / "nowhere"
    code, output = run_check(capsys, missing)
    assert code == 1
    found = problems(output)
    assert len(found) == 1
    assert str(missing) in found[0] and "no such directory" in found[0]
    assert_no_traceback(output)


def test_data_dir_does_not_exist_subprocess(tmp_path):
    """The command line with a missing --data_dir: exit 1, no traceback."""
    missing = tmp_path / "nowhere"
    result = run_check_subprocess(missing)
    assert result.returncode == 1
    assert str(missing) in result.stdout
    assert_no_traceback(result.stdout + result.stderr)


@pytest.mark.parametrize("where", ["empty folder", "dataset without derivative", "derivative itself"])
def test_data_dir_without_derivative(synthetic_dir, tmp_path, request, capsys, where):
    """A folder without derivative/ (or the derivative folder given as root): exit 1, clear."""
    if where == "empty folder":
        data_dir = tmp_path / "empty"
        data_dir.mkdir()
    elif where == "dataset without derivative":
        data_dir = request.getfixturevalue("dataset_copy")
        shutil.rmtree(data_dir / "derivative")
    else:
        data_dir = synthetic_dir / "derivative"
    code, output = run_check(capsys, data_dir)
    assert code == 1
    found = problems(output)
    assert len(found) == 1
    assert str(data_dir) in found[0] and "derivative/" in found[0]
    assert_no_traceback(output)


def test_respdict_missing(dataset_copy, capsys):
    """No respdict.json: exit 1, the message names it as missing."""
    path = respdict_file(dataset_copy)
    path.unlink()
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    assert any(str(path) in line and "missing" in line for line in problems(output))
    assert_no_traceback(output)


@pytest.mark.parametrize("content", [b"", b"{not json", b"[48, 36]", b'{"souls": "48"}',
                                     b'{"souls": 48.5}', b"\xff\xfe\x00\x01garbage"])
def test_respdict_invalid(dataset_copy, capsys, content):
    """An invalid respdict.json: exit 1, the message names it."""
    path = respdict_file(dataset_copy)
    path.write_bytes(content)
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    assert str(path) in problems(output)[0]
    assert_no_traceback(output)


# ----------------------------------------------------------------------------- --subjects

def test_subject_not_in_dataset(dataset_copy, capsys):
    """--subjects 3 without UTS03: exit 1, the message lists the subjects found."""
    code, output = run_check(capsys, dataset_copy, "--subjects", "3")
    assert code == 1
    found = problems(output)
    assert len(found) == 1
    assert "UTS03" in found[0] and "UTS01, UTS02" in found[0]


@pytest.mark.parametrize("spelling", ["UTS01", "1", "01", "uts01"])
def test_subject_spellings_accepted(synthetic_dir, capsys, spelling):
    """--subjects accepts 'UTS01', '1', '01' and 'uts01' and checks only that subject."""
    code, output = run_check(capsys, synthetic_dir, "--subjects", spelling)
    assert code == 0, output
    assert sorted(summaries(output)) == ["UTS01"]


def test_several_subjects(synthetic_dir, capsys):
    """--subjects 1 UTS02 checks both."""
    code, output = run_check(capsys, synthetic_dir, "--subjects", "1", "UTS02")
    assert code == 0, output
    assert sorted(summaries(output)) == ["UTS01", "UTS02"]


def test_subject_not_understood(synthetic_dir, capsys):
    """--subjects banana: exit 1 with a clear message."""
    code, output = run_check(capsys, synthetic_dir, "--subjects", "banana")
    assert code == 1
    found = problems(output)
    assert len(found) == 1 and "'banana'" in found[0] and "not understood" in found[0]
    assert_no_traceback(output)


def test_subject_not_understood_subprocess(synthetic_dir):
    """The command line with --subjects banana: exit 1, no traceback."""
    result = run_check_subprocess(synthetic_dir, "--subjects", "banana")
    assert result.returncode == 1
    assert "banana" in result.stdout
    assert_no_traceback(result.stdout + result.stderr)
