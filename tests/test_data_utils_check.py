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
import soundfile as sf

import audio_io
import damage
import data_utils
import hdf5_io
import synthetic_data
import textgrids
import tr_files
from data_utils import Dataset
from run_utils import DatasetError

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
    truth = Dataset(synthetic_dir).truth()
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
    with pytest.raises(DatasetError, match="truncated"):
        Dataset(dataset_copy).words(UTS01_ONLY_STORY)
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
    n_repeats = Dataset(dataset_copy).truth()["subjects"]["UTS02"]["n_repeats"]
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


# ----------------------------------------------------------------------------- stimulus length

def lengthen_wav(data_dir, story, seconds):
    """Append ``seconds`` of silence to a story's WAV (same rate, channels and subtype)."""
    path = Dataset(data_dir).stimulus_path(story)
    info = sf.info(str(path))
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    padding = np.zeros((int(round(seconds * rate)), audio.shape[1]), np.float32)
    sf.write(path, np.vstack([audio, padding]), rate, subtype=info.subtype)


def wav_seconds(data_dir, story):
    """Duration of a story's WAV from the samples actually decoded."""
    audio, rate = sf.read(Dataset(data_dir).stimulus_path(story))
    return len(audio) / rate


def respdict_entry(data_dir, story):
    return json.loads(respdict_file(data_dir).read_text())[story]


def test_synthetic_wavs_end_a_second_before_the_tr_grid(synthetic_dir):
    """The generator's WAVs last 2 * respdict - 21 s, 1 s before the simulated grid ends (2 *
    respdict - 20 s), as real ones do; the TextGrid ends there too, its words by the end of the
    last response row's TR (2 * respdict - 30 s)."""
    for story in Dataset(synthetic_dir).truth()["stories"]:
        respdict = respdict_entry(synthetic_dir, story)
        expected = 2.0 * respdict - 21
        assert wav_seconds(synthetic_dir, story) == pytest.approx(expected, abs=1e-3)
        assert Dataset(synthetic_dir).story_span(story) == pytest.approx(
            (2.0 * respdict - 30, 2.0 * respdict - 20))
        xmax, _, words = Dataset(synthetic_dir).textgrid(story)
        assert xmax == pytest.approx(expected)
        assert max(end for _, end, label in words if label) <= 2.0 * respdict - 30


def test_wav_cut_to_a_third_of_its_bytes(dataset_copy, capsys):
    """An interrupted download (header claims the full length): check, check_run_inputs and the
    audio loaders all refuse it, naming the WAV and both durations; the real length is used."""
    story = SHARED_STORY
    needed = 2.0 * respdict_entry(dataset_copy, story) - 20  # the grid's end
    damage.truncate_wav_bytes(dataset_copy, story, 1 / 3)
    path = Dataset(dataset_copy).stimulus_path(story)
    real = wav_seconds(dataset_copy, story)
    assert real < needed / 2
    assert audio_io.audio_duration(path) == pytest.approx(real)  # header gives the real length
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = [line for line in problems(output) if str(path) in line]
    assert len(found) == 1, output
    assert f"{real:.2f} s of audio" in found[0] and f"ends at {needed:.2f} s" in found[0]
    assert_no_traceback(output)
    for load in (lambda: Dataset(dataset_copy).check_run_inputs(1, [story]),
                 lambda: Dataset(dataset_copy).stimulus(story),
                 lambda: Dataset(dataset_copy).audio_windows(story)):
        with pytest.raises(DatasetError) as info:
            load()
        assert str(info.value).startswith(f"{path}: {real:.2f} s of audio")
        assert f"ends at {needed:.2f} s" in str(info.value)


def test_20_second_wav_for_a_longer_story(dataset_copy, capsys):
    story = TEST_STORY
    damage.shorten_wav(dataset_copy, story, 20)
    path = Dataset(dataset_copy).stimulus_path(story)
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    respdict = respdict_entry(dataset_copy, story)
    assert [line for line in problems(output) if str(path) in line] == [
        f"problem: {path}: 20.00 s of audio, but the story's TR grid (respdict.json: {respdict} "
        f"TRs) ends at {2.0 * respdict - 20:.2f} s, more than a TR later; the respdict entry is "
        "wrong (download respdict.json again) or the WAV is truncated (download it again)"]


def test_a_respdict_entry_five_trs_too_long(dataset_copy, capsys):
    """A TR grid running 5 TRs past the audio (and response files that agree with it): one
    problem naming the WAV and both durations, and the runs refuse the story."""
    story = SHARED_STORY
    respdict = respdict_entry(dataset_copy, story) + 5
    for subject in (1, 2):
        path = hf5_path(dataset_copy, f"UTS0{subject}", story)
        rows = read_dataset(path)
        replace_dataset(path, "data", np.vstack([rows, rows[-5:]]))
    damage.set_respdict(dataset_copy, story, respdict)
    audio = wav_seconds(dataset_copy, story)
    code, output = run_check(capsys, dataset_copy)
    wav = Dataset(dataset_copy).stimulus_path(story)
    found = [line for line in problems(output) if str(wav) in line]
    assert code == 1 and len(problems(output)) == 1 and len(found) == 1, output
    assert (f"{audio:.2f} s of audio, but the story's TR grid (respdict.json: {respdict} TRs) "
            f"ends at {2.0 * respdict - 20:.2f} s, more than a TR later" in found[0])
    with pytest.raises(DatasetError, match="more than a TR later"):
        Dataset(dataset_copy).check_run_inputs(1, [story])


def test_wav_longer_than_the_tr_grid(dataset_copy, capsys):
    """Audio running 3 s past the end of the TR grid (10 s past the last row) is refused."""
    story = SHARED_STORY
    lengthen_wav(dataset_copy, story, 13)
    path = Dataset(dataset_copy).stimulus_path(story)
    grid_end = 2.0 * respdict_entry(dataset_copy, story) - 20
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = [line for line in problems(output) if str(path) in line]
    assert len(found) == 1 and f"TR grid ends at {grid_end:.2f} s" in found[0]
    assert f"{wav_seconds(dataset_copy, story):.2f} s of audio" in found[0]


def test_wav_and_textgrid_lengths_differ(dataset_copy, capsys):
    """2.5 s more audio stays within a TR of the grid's end but no longer matches the
    TextGrid's xmax."""
    story = SHARED_STORY
    xmax = Dataset(dataset_copy).textgrid(story)[0]
    lengthen_wav(dataset_copy, story, 2.5)
    path = Dataset(dataset_copy).stimulus_path(story)
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = [line for line in problems(output) if str(path) in line]
    assert len(found) == 1
    assert f"{xmax + 2.5:.2f} s of audio" in found[0] and f"ends at {xmax:.2f} s" in found[0]
    assert str(textgrid_file(dataset_copy, story)) in found[0]
    with pytest.raises(DatasetError, match="TextGrid.*ends at"):
        Dataset(dataset_copy).stimulus(story)


def test_stimulus_length_tolerances(synthetic_dir):
    """One TR of tolerance each side of the grid's end, computed from respdict
    independently."""
    story = SHARED_STORY
    grid_end = 2.0 * respdict_entry(synthetic_dir, story) - 20

    def problem(duration, xmax=None):
        return Dataset(synthetic_dir).stimulus_problem(story, duration, xmax)

    assert problem(grid_end - 1.9) is None and "more than a TR later" in problem(grid_end - 2.1)
    assert problem(grid_end + 1.9) is None and "TR grid ends" in problem(grid_end + 2.1)
    assert problem(grid_end, grid_end + 1.9) is None
    assert "TextGrid" in problem(grid_end, grid_end + 2.1)
    assert "TextGrid" in problem(grid_end, grid_end - 2.1)


def test_check_uses_the_chosen_tr_timing(dataset_copy, capsys):
    """With --tr_source report the rows end is the report's: a WAV that the simulated grid
    accepts is too short for triggers that start 13 s later."""
    folder = dataset_copy / "TRfiles"
    folder.mkdir()
    for story in json.loads(respdict_file(dataset_copy).read_text()):
        n_trs = respdict_entry(dataset_copy, story) - data_utils.RESPDICT_PAD_TRS
        triggers = 23.0 + 2.0 * np.arange(n_trs)
        lines = [f"{t:.4f} trigger" for t in triggers] + ["20.0 sound-start"]
        (folder / f"{story}.report").write_text("\n".join(lines) + "\n")
    code, output = run_check(capsys, dataset_copy, "--tr_source", "report", "--tr_path",
                             str(folder))
    assert code == 1
    rows_end = 2.0 * respdict_entry(dataset_copy, SHARED_STORY) - 30 + 13
    assert any(f"until {rows_end:.2f} s (report TR timing)" in line and
               f"{SHARED_STORY}.wav" in line for line in problems(output)), output
    code, output = run_check(capsys, dataset_copy)
    assert code == 0, output


# ----------------------------------------------------------------------------- respdict entries

@pytest.mark.parametrize("value", [-5, 0, 20, 3.5, "300", True, None, [48]])
def test_bad_respdict_entry_is_named(dataset_copy, capsys, value):
    """Negative, too small (no response row), non-integer counts: one line naming the entry and
    the value, in check, check_run_inputs and every loader that needs it (no IndexError)."""
    damage.set_respdict(dataset_copy, SHARED_STORY, value)
    expected = f"respdict.json: entry '{SHARED_STORY}' is {json.dumps(value)}"
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = [line for line in problems(output) if expected in line]
    assert len(found) == 1, output
    assert_no_traceback(output)
    dataset = Dataset(dataset_copy)
    for load in (lambda: dataset.response_rows(SHARED_STORY),
                 lambda: dataset.tr_times(SHARED_STORY),
                 lambda: dataset.audio_windows(SHARED_STORY),
                 lambda: dataset.check_run_inputs(1, [SHARED_STORY])):
        with pytest.raises(DatasetError, match=re.escape(expected)):
            load()


def test_smallest_usable_respdict_entry(synthetic_dir):
    respdict = {"a": 21, "b": 20}
    dataset = Dataset(synthetic_dir)
    assert dataset.respdict_problem("a", respdict) is None
    assert "leaves 0 response rows" in dataset.respdict_problem("b", respdict)


# ----------------------------------------------------------------------------- TextGrid tiers

@pytest.mark.parametrize("names", [("", ""), ("word", "phone"), ("Words", "PHONES"),
                                   ("tier 1", "tier 2")])
def test_tiers_in_another_order_are_identified(dataset_copy, capsys, names):
    """Word tier first, unnamed, honestly named or oddly named: words and phones are unchanged."""
    story = SHARED_STORY
    dataset = Dataset(dataset_copy)
    words, phones = dataset.words(story), dataset.phones(story)
    damage.swap_tiers(dataset_copy, story, names)
    assert list(textgrids.load_textgrid(textgrid_file(dataset_copy, story)))[0] == names[0]
    assert dataset.words(story) == words
    assert dataset.phones(story) == phones
    code, output = run_check(capsys, dataset_copy)
    assert code == 0, output


def test_tier_names_that_contradict_the_content(dataset_copy, capsys):
    story = SHARED_STORY
    damage.swap_tiers(dataset_copy, story, ("phone", "word"))
    path = textgrid_file(dataset_copy, story)
    dataset = Dataset(dataset_copy)
    for load in (dataset.words, dataset.phones):
        with pytest.raises(DatasetError, match=re.escape(f"{path}: the tiers look swapped")):
            load(story)
    code, output = run_check(capsys, dataset_copy)
    assert code == 1
    found = problems(output)
    assert len(found) == 1 and f"{path}: the tiers look swapped" in found[0]
    with pytest.raises(DatasetError, match="look swapped"):
        Dataset(dataset_copy).check_run_inputs(1, [story])


# ----------------------------------------------------------------------------- check_run_inputs

def test_check_run_inputs_clean(synthetic_dir):
    for subject in ("UTS01", 2):
        dataset = Dataset(synthetic_dir)
        n_voxels = dataset.check_run_inputs(subject, dataset.stories(subject))
        assert type(n_voxels) is int
        assert n_voxels == read_dataset(hf5_path(synthetic_dir, data_utils.subject_id(subject),
                                                 SHARED_STORY)).shape[1]


def test_check_run_inputs_reads_no_audio_and_no_response_matrix(synthetic_dir, monkeypatch):
    """Metadata and headers only: decoding audio or reading responses would fail here."""
    def refuse(*args, **kwargs):
        raise AssertionError("check_run_inputs must not read audio or response data")

    for module, name in ((audio_io, "read_audio"), (hdf5_io, "read_columns"),
                         (hdf5_io, "read_matrix"), (Dataset, "responses"), (Dataset, "repeats"),
                         (Dataset, "stimulus"), (Dataset, "audio_windows")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(sf, "read", refuse)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", refuse)
    dataset = Dataset(synthetic_dir)
    assert dataset.check_run_inputs(1, dataset.stories(1)) > 0


def test_check_run_inputs_rows_off_by_one(dataset_copy):
    path = hf5_path(dataset_copy, "UTS01", SHARED_STORY)
    replace_dataset(path, "data", read_dataset(path)[:-1])
    rows = respdict_entry(dataset_copy, SHARED_STORY) - 20
    with pytest.raises(DatasetError) as info:
        Dataset(dataset_copy).check_run_inputs(1, [SHARED_STORY, TEST_STORY])
    assert str(info.value).startswith(f"{path}: {rows - 1} rows but respdict.json says")
    assert "more problems" not in str(info.value)


def test_check_run_inputs_voxel_counts_differ(dataset_copy):
    path = hf5_path(dataset_copy, "UTS01", SHARED_STORY)
    data = read_dataset(path)
    replace_dataset(path, "data", data[:, :-4])
    stories = Dataset(dataset_copy).stories(1)
    with pytest.raises(DatasetError, match=re.escape(
            f"{path}: {data.shape[1] - 4} voxels but the subject's other stories have "
            f"{data.shape[1]}")):
        Dataset(dataset_copy).check_run_inputs(1, stories)


def test_check_run_inputs_reports_the_first_problem_and_how_many_more(dataset_copy):
    textgrid_file(dataset_copy, SHARED_STORY).unlink()
    damage.shorten_wav(dataset_copy, TEST_STORY, 20)
    hf5_path(dataset_copy, "UTS01", UTS01_ONLY_STORY).unlink()
    with pytest.raises(DatasetError) as info:
        Dataset(dataset_copy).check_run_inputs(1, [SHARED_STORY, TEST_STORY, UTS01_ONLY_STORY])
    message = str(info.value)
    assert message.startswith(f"{textgrid_file(dataset_copy, SHARED_STORY)}: TextGrid of story")
    assert message.endswith(f"(and 2 more problems; run python data_utils.py check --data_dir "
                            f"{dataset_copy})")
    assert "\n" not in message


# ----------------------------------------------------------------------------- constant voxels

def test_constant_and_nan_test_story_voxels_are_noted(dataset_copy, capsys):
    """All-NaN and constant voxels of the test story: a note with their count, exit 0."""
    path = hf5_path(dataset_copy, "UTS01", TEST_STORY)
    data = read_dataset(path)
    data[:, 3] = np.nan
    data[:, 5] = 2.5
    data[:4, 7] = np.nan  # partly NaN: still varies
    replace_dataset(path, "data", data)
    code, output = run_check(capsys, dataset_copy)
    assert code == 0, output
    found = [line for line in notes(output) if str(path) in line]
    assert found == [f"note: {path}: 2 of {data.shape[1]} voxels have constant test-story "
                     "responses (1 of them all NaN); they carry no signal and are left out of "
                     "evaluation summaries"]
    np.testing.assert_array_equal(
        np.flatnonzero(data_utils.constant_voxels(Dataset(dataset_copy).responses(
            1, TEST_STORY))), [3, 5])


# ----------------------------------------------------------------------------- TR timing sources

def tr_lines(output):
    """Source -> the ``TR timing <source> ...`` line of the output."""
    return {line.split()[2]: line for line in output.splitlines()
            if line.startswith("TR timing ")}


def write_reports(folder, data_dir, stories):
    """``<story>.report`` files of 2.0045 s triggers, the sound starting at 10 s."""
    folder.mkdir(exist_ok=True)
    for story in stories:
        n_trs = respdict_entry(data_dir, story) - data_utils.RESPDICT_PAD_TRS
        lines = [f"{2.0045 * k:.4f} trigger" for k in range(n_trs)] + ["10.0 sound-start"]
        (folder / f"{story}.report").write_text("\n".join(lines) + "\n")


def write_trfiles(path, data_dir, stories):
    """A ``trfiles_huge.jbl``-like joblib pickle: story -> [TRFile]."""
    import joblib
    joblib.dump({story: [tr_files.TRFile(
        [2.0045 * k for k in range(respdict_entry(data_dir, story) - 5)], 10.0)]
        for story in stories}, path, compress=3)


def story_names(data_dir):
    return sorted(json.loads(respdict_file(data_dir).read_text()))


def test_tr_sources_without_tr_files(synthetic_dir, capsys):
    """No TR files: only the simulated respdict grid, covering every story; no note about it."""
    n = len(story_names(synthetic_dir))
    assert data_utils.tr_sources(Dataset(synthetic_dir)) == {"respdict": {
        "path": str(respdict_file(synthetic_dir)), "stories": n, "of": n, "error": None}}
    code, output = run_check(capsys, synthetic_dir)
    assert code == 0, output
    assert tr_lines(output) == {"respdict": (
        f"TR timing respdict ({respdict_file(synthetic_dir)}): simulated 2 s grid of respdict - "
        f"5 TRs, {n} of {n} stories; the toolkit's default (used by this check)")}
    assert not [line for line in notes(output) if "TR files" in line]


def test_tr_sources_report_files_for_some_stories(dataset_copy, capsys):
    """.report files for 2 stories in derivative/TRfiles: "report" with 2 of the stories, and a
    note that the authors used TR files, the default differs and how to switch."""
    stories = story_names(dataset_copy)
    folder = dataset_copy / "derivative" / "TRfiles"
    write_reports(folder, dataset_copy, stories[:2])
    (folder / "README.txt").write_text("not a report")
    found = data_utils.tr_sources(Dataset(dataset_copy))
    assert sorted(found) == ["report", "respdict"]
    assert found["report"] == {"path": str(folder), "stories": 2, "of": len(stories),
                               "error": None}
    # Counted against the stories asked for; unknown ones have no report.
    asked = [stories[0], stories[-1], "nosuchstory"]
    assert data_utils.tr_sources(Dataset(dataset_copy), asked)["report"]["stories"] == 1
    code, output = run_check(capsys, dataset_copy)
    assert code == 0, output
    lines = tr_lines(output)
    assert sorted(lines) == ["report", "respdict"]
    assert lines["report"] == f"TR timing report ({folder}): 2 of {len(stories)} stories"
    found_notes = [line for line in notes(output) if "TR files" in line]
    assert len(found_notes) == 1
    assert "authors" in found_notes[0] and "1.3 s" in found_notes[0]
    assert f"--tr_source report --tr_path {folder}" in found_notes[0]


def test_tr_sources_trfiles_pickle(dataset_copy, capsys, monkeypatch):
    """derivative/trfiles_huge.jbl for all stories but one: "trfiles" with its count; checking
    against it unpickles it once, and the story it lacks is a problem."""
    stories = story_names(dataset_copy)
    path = dataset_copy / "derivative" / "trfiles_huge.jbl"
    write_trfiles(path, dataset_copy, stories[1:])
    tr_files._load_research_pickle_cached.cache_clear()
    loads = []
    original = tr_files._ResearchUnpickler.load
    monkeypatch.setattr(tr_files._ResearchUnpickler, "load",
                        lambda self: loads.append(1) or original(self))
    found = data_utils.tr_sources(Dataset(dataset_copy))
    assert sorted(found) == ["respdict", "trfiles"]
    assert found["trfiles"] == {"path": str(path), "stories": len(stories) - 1,
                                "of": len(stories), "error": None}
    code, output = run_check(capsys, dataset_copy)
    assert code == 0, output
    line = f"TR timing trfiles ({path}): {len(stories) - 1} of {len(stories)} stories"
    assert tr_lines(output)["trfiles"] == line
    assert any(f"--tr_source trfiles --tr_path {path}" in note for note in notes(output))

    tr_files._load_research_pickle_cached.cache_clear()
    loads.clear()
    code, output = run_check(capsys, dataset_copy, "--tr_source", "trfiles")
    assert code == 1
    assert loads == [1]
    assert tr_lines(output)["trfiles"] == line + " (used by this check)"
    assert tr_lines(output)["respdict"].endswith("the toolkit's default")
    assert [p for p in problems(output) if "no TR file" in p] == [
        f"problem: {path}: no TR file for story {stories[0]!r}"]
    assert not [note for note in notes(output) if "TR files" in note]  # already switched
    tr_files._load_research_pickle_cached.cache_clear()


def test_tr_sources_tr_path_and_checked_stories(dataset_copy, tmp_path, capsys):
    """--tr_path names the file source wherever it lies; counts are of the checked subjects'
    stories; an unreadable pickle is listed as not usable, not a problem of a respdict check."""
    stories = story_names(dataset_copy)
    uts02 = Dataset(dataset_copy).stories(2)
    assert len(uts02) == len(stories) - 1
    pickle_path = tmp_path / "elsewhere.jbl"
    write_trfiles(pickle_path, dataset_copy, stories)
    reports = tmp_path / "reports"
    write_reports(reports, dataset_copy, stories)
    found = data_utils.tr_sources(Dataset(dataset_copy, tr_path=pickle_path), uts02)
    assert sorted(found) == ["respdict", "trfiles"]
    assert found["trfiles"]["stories"] == found["trfiles"]["of"] == len(uts02)
    found = data_utils.tr_sources(Dataset(dataset_copy, tr_path=reports))
    assert found["report"]["path"] == str(reports)
    found = data_utils.tr_sources(Dataset(dataset_copy, tr_path=reports / f"{stories[0]}.report"))
    assert found["report"]["stories"] == len(stories)  # one report file serves every story
    code, output = run_check(capsys, dataset_copy, "--subjects", "2", "--tr_path",
                             str(pickle_path))
    assert code == 0, output
    assert tr_lines(output)["trfiles"] == (
        f"TR timing trfiles ({pickle_path}): {len(uts02)} of {len(uts02)} stories")
    assert f"{len(uts02)} of {len(uts02)} stories" in tr_lines(output)["respdict"]

    pickle_path.write_bytes(b"not a pickle at all")
    tr_files._load_research_pickle_cached.cache_clear()
    found = data_utils.tr_sources(Dataset(dataset_copy, tr_path=pickle_path))["trfiles"]
    assert found["stories"] is None and str(pickle_path) in found["error"]
    code, output = run_check(capsys, dataset_copy, "--tr_path", str(pickle_path))
    assert code == 0, output
    assert tr_lines(output)["trfiles"].startswith(
        f"TR timing trfiles ({pickle_path}): not usable: not a readable research pickle")
    assert not [note for note in notes(output) if "TR files" in note]
    assert_no_traceback(output)


# ----------------------------------------------------------------------------- inputs that carry no signal

def _rewrite_wav(root, story, change, subtype=None):
    """Rewrite a story's WAV with ``change(samples)``, same rate (and subtype unless given)."""
    path = Dataset(root).stimulus_path(story)
    info = sf.info(str(path))
    audio, rate = sf.read(path, dtype="float64", always_2d=True)
    sf.write(path, change(audio), rate, subtype=subtype or info.subtype)
    return path


@pytest.mark.parametrize("case", ["nan", "silent_float", "silent_pcm"])
def test_audio_without_a_signal_is_reported_and_refused(dataset_copy, capsys, case):
    """NaN samples (a float WAV) or a WAV of zeros: check names it, and neither the run-input
    check nor the stimulus loader lets it through."""
    def nan(audio):
        audio = audio.copy()
        audio[1000:1010] = np.nan
        return audio

    change, subtype = {"nan": (nan, "FLOAT"), "silent_float": (np.zeros_like, "FLOAT"),
                       "silent_pcm": (np.zeros_like, None)}[case]
    path = _rewrite_wav(dataset_copy, SHARED_STORY, change, subtype)
    code, output = run_check(capsys, dataset_copy)
    found = [line for line in problems(output) if str(path) in line]
    assert code == 1 and len(found) == 1, output
    assert ("NaN or infinite" if case == "nan" else "the audio is silent") in found[0]
    assert_no_traceback(output)
    dataset = Dataset(dataset_copy)
    with pytest.raises(DatasetError, match="NaN or infinite" if case == "nan" else "silent"):
        dataset.check_run_inputs(1, [SHARED_STORY])
    with pytest.raises(DatasetError, match="NaN or infinite" if case == "nan" else "silent"):
        dataset.stimulus(SHARED_STORY)


def test_responses_stored_as_strings_are_named(dataset_copy, capsys):
    path = hf5_path(dataset_copy, "UTS01", SHARED_STORY)
    rows = read_dataset(path)
    replace_dataset(path, "data", rows.astype("S8"))
    code, output = run_check(capsys, dataset_copy)
    found = [line for line in problems(output) if str(path) in line]
    assert code == 1 and len(found) == 1 and "not numbers" in found[0], output
    with pytest.raises(DatasetError, match="holds .* values, not numbers"):
        Dataset(dataset_copy).responses(1, SHARED_STORY)


def test_a_folder_named_like_a_wav_is_named_as_such(dataset_copy, capsys):
    path = Dataset(dataset_copy).stimulus_path(SHARED_STORY)
    path.unlink()
    path.mkdir()
    code, output = run_check(capsys, dataset_copy)
    found = [line for line in problems(output) if str(path) in line]
    assert code == 1 and found and "a folder" in found[0] and "missing" not in found[0], output
    with pytest.raises(DatasetError, match="a folder"):
        Dataset(dataset_copy).stimulus(SHARED_STORY)


def test_a_test_story_of_at_most_40_rows_is_a_problem(dataset_copy, capsys):
    """The evaluator does not score the test story's first 40 rows: one of 30 rows is cut short
    (and only that is wrong with it)."""
    damage.shorten_story(dataset_copy, TEST_STORY, 30)
    code, output = run_check(capsys, dataset_copy)
    assert code == 1 and len(problems(output)) == 2, output
    assert all("30 response rows" in line for line in problems(output))


def test_a_textgrid_with_overlapping_words_is_named(dataset_copy, capsys):
    path = textgrid_file(dataset_copy, SHARED_STORY)
    xmax, grid = textgrids.read_textgrid(path)
    words = grid["word"]
    start, end, label = words[3]
    words[3] = (start, end + 0.5 * (words[4][1] - words[4][0]) + 0.01, label)  # into the next
    synthetic_data.write_textgrid(path, {"phone": grid["phone"], "word": words}, xmax)
    code, output = run_check(capsys, dataset_copy)
    found = [line for line in problems(output) if str(path) in line]
    assert code == 1 and len(found) == 1 and "overlaps" in found[0], output


def test_a_folder_in_place_of_respdict_is_one_line(dataset_copy, capsys):
    path = respdict_file(dataset_copy)
    path.unlink()
    path.mkdir()
    code, output = run_check(capsys, dataset_copy)
    assert code == 1 and any(f"{path}: cannot be read" in line for line in problems(output))
    assert_no_traceback(output)


def test_infinite_test_story_responses_are_a_problem(dataset_copy, capsys):
    path = hf5_path(dataset_copy, "UTS01", TEST_STORY)
    rows = read_dataset(path)
    rows[50, 3] = -np.inf
    replace_dataset(path, "data", rows)
    code, output = run_check(capsys, dataset_copy)
    found = [line for line in problems(output) if str(path) in line]
    assert code == 1 and len(found) == 1 and "1 infinite values" in found[0], output
    with pytest.raises(DatasetError, match="1 infinite values; the file is damaged"):
        Dataset(dataset_copy).responses(1, TEST_STORY)
