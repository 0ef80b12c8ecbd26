"""The dataset handle ``data_utils.Dataset``: subjects, stories and paths, responses, stimuli
and the TR-aligned audio windows of response rows."""

import json
import os

import h5py
import numpy as np
import pytest
import soundfile as sf

import data_utils
import synthetic_data
from data_utils import Dataset
from run_utils import DatasetError


def _hf5(data_dir, subject, story):
    return data_dir / "derivative" / "preprocessed_data" / subject / f"{story}.hf5"


def _raw(data_dir, subject, story, name="data"):
    with h5py.File(_hf5(data_dir, subject, story), "r") as handle:
        return handle[name][()]


# ----------------------------------------------------------------------------- subjects, paths

@pytest.mark.parametrize("given", [1, "1", "01", "UTS01", "uts01", " UTS1 ", np.int64(1)])
def test_subject_id_accepts_every_spelling(given):
    assert data_utils.subject_id(given) == "UTS01"


@pytest.mark.parametrize("given", ["banana", "0", "UTS", "", "UTS123", "1.5", -1])
def test_subject_id_rejects_nonsense(given):
    with pytest.raises(DatasetError, match="not understood"):
        data_utils.subject_id(given)


def test_stories_are_sorted_and_per_subject(synthetic_dir):
    dataset = Dataset(synthetic_dir)
    truth = dataset.truth()
    for name, info in truth["subjects"].items():
        assert dataset.stories(name) == sorted(info["stories"])
    assert "life" in dataset.stories(1)
    assert "life" not in dataset.stories("UTS02")


def test_wrong_subject_lists_the_subjects_found(synthetic_dir):
    with pytest.raises(DatasetError, match="UTS03.*subjects found: UTS01, UTS02"):
        Dataset(synthetic_dir).stories(3)


def test_missing_story_names_file_and_alternatives(synthetic_dir):
    with pytest.raises(DatasetError) as info:
        Dataset(synthetic_dir).responses(2, "life")
    message = str(info.value)
    assert "life.hf5" in message and "UTS02" in message and "souls" in message


def test_derivatives_plural_layout(dataset_copy):
    os.rename(dataset_copy / "derivative", dataset_copy / "derivatives")
    dataset = Dataset(dataset_copy)
    assert dataset.derivative == dataset_copy / "derivatives"
    assert dataset.responses(1, "souls").shape[0] == dataset.response_rows("souls")
    assert len(dataset.tr_times("souls")) > 0


def test_data_dir_without_derivative(tmp_path):
    """A root without derivative/ or that does not exist is refused when it is opened."""
    with pytest.raises(DatasetError, match="derivative"):
        Dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such directory"):
        Dataset(tmp_path / "absent")


# ----------------------------------------------------------------------------- fMRI

def test_responses_matches_file_as_float32_with_nan_zeroed(synthetic_dir):
    dataset = Dataset(synthetic_dir)
    truth = dataset.truth()["subjects"]["UTS01"]
    (nan_story, nan_voxels), = truth["nan_voxels"].items()
    raw = _raw(synthetic_dir, "UTS01", nan_story)
    assert raw.dtype == np.float64 and np.isnan(raw[:, nan_voxels]).all()
    data = dataset.responses(1, nan_story)
    assert data.dtype == np.float32 and data.shape == raw.shape
    np.testing.assert_array_equal(data, np.nan_to_num(raw).astype(np.float32))
    assert data.shape[0] == dataset.response_rows(nan_story)


@pytest.mark.parametrize("voxels", [[7, 3, 50, 3], np.arange(10, 20), [119], []])
def test_responses_voxel_subset_keeps_order(synthetic_dir, voxels):
    raw = _raw(synthetic_dir, "UTS01", "souls")
    subset = Dataset(synthetic_dir).responses(1, "souls", voxels)
    np.testing.assert_array_equal(subset, raw[:, voxels].astype(np.float32))


def test_responses_boolean_mask(synthetic_dir):
    raw = _raw(synthetic_dir, "UTS01", "souls")
    mask = np.zeros(raw.shape[1], bool)
    mask[[4, 9, 80]] = True
    np.testing.assert_array_equal(Dataset(synthetic_dir).responses(1, "souls", mask),
                                  raw[:, mask].astype(np.float32))
    with pytest.raises(DatasetError, match="another subject"):
        Dataset(synthetic_dir).responses(1, "souls", np.ones(raw.shape[1] + 1, bool))


@pytest.mark.parametrize("voxels", [[0, 120], [-1], [[1, 2]], [0.5]])
def test_responses_rejects_bad_voxel_selection(synthetic_dir, voxels):
    with pytest.raises(DatasetError):
        Dataset(synthetic_dir).responses(1, "souls", voxels)


def test_truncated_hdf5_gives_clear_error(dataset_copy):
    path = _hf5(dataset_copy, "UTS01", "souls")
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(DatasetError, match="souls.hf5.*download it again"):
        Dataset(dataset_copy).responses(1, "souls")


def test_garbage_hdf5_gives_clear_error(dataset_copy):
    _hf5(dataset_copy, "UTS01", "souls").write_bytes(b"not an HDF5 file" * 100)
    with pytest.raises(DatasetError, match="unreadable HDF5"):
        Dataset(dataset_copy).responses(1, "souls", [1, 2])


def test_hdf5_without_data_dataset(dataset_copy):
    with h5py.File(_hf5(dataset_copy, "UTS01", "souls"), "w") as handle:
        handle.create_dataset("resp", data=np.zeros((3, 4)))
    with pytest.raises(DatasetError, match="no dataset 'data'.*resp"):
        Dataset(dataset_copy).responses(1, "souls")


def test_repeats(synthetic_dir):
    raw = _raw(synthetic_dir, "UTS02", data_utils.TEST_STORY, "individual_repeats")
    dataset = Dataset(synthetic_dir)
    repeats = dataset.repeats("UTS02")
    assert repeats.dtype == np.float32 and repeats.shape == raw.shape
    np.testing.assert_array_equal(repeats, raw.astype(np.float32))
    np.testing.assert_array_equal(dataset.repeats(2, voxels=[9, 2]),
                                  raw[:, :, [9, 2]].astype(np.float32))
    with pytest.raises(DatasetError, match="individual_repeats"):
        dataset.repeats(1, "souls")


@pytest.mark.parametrize("change", [None, "fewer voxels", "2-D", "missing"])
def test_repeats_shape_from_metadata(dataset_copy, change):
    """(repeats, rows, voxels) of the test story's repeats without reading them; a shape that
    gives no noise ceiling is refused, naming the file."""
    dataset = Dataset(dataset_copy)
    path = _hf5(dataset_copy, "UTS01", data_utils.TEST_STORY)
    raw = _raw(dataset_copy, "UTS01", data_utils.TEST_STORY, "individual_repeats")
    n_voxels = raw.shape[2]
    if change is None:
        assert dataset.repeats_shape(1) == raw.shape
        assert dataset.repeats_shape("UTS01", data_utils.TEST_STORY) == raw.shape
        return
    with h5py.File(path, "a") as handle:
        del handle["individual_repeats"]
        if change == "fewer voxels":
            handle.create_dataset("individual_repeats", data=raw[:, :, :100])
        elif change == "2-D":
            handle.create_dataset("individual_repeats", data=raw[0])
    expected = {"fewer voxels": f"{path}: 'individual_repeats' has 100 voxels but 'data' has "
                                f"{n_voxels}; no noise ceiling can be computed",
                "2-D": f"{path}: 'individual_repeats' has shape {raw.shape[1:]}, expected "
                       "(repeats, rows, voxels)",
                "missing": f"{path}: no dataset 'individual_repeats'"}[change]
    with pytest.raises(DatasetError) as info:
        dataset.repeats_shape(1)
    assert str(info.value).startswith(expected)


# ----------------------------------------------------------------------------- stimuli

def _write_wav(data_dir, story, audio, rate, subtype="PCM_16"):
    sf.write(data_dir / "stimuli" / f"{story}.wav", audio, rate, subtype=subtype)


def test_synthetic_stimuli_formats_decode_to_the_same_mono(synthetic_dir):
    dataset = Dataset(synthetic_dir)
    truth = dataset.truth()
    formats = {(s["sampling_rate"], s["channels"]) for s in truth["stories"].values()}
    assert {(44100, 2), (16000, 1)} <= formats
    for story, info in truth["stories"].items():
        header = sf.info(str(synthetic_dir / "stimuli" / f"{story}.wav"))
        assert (header.samplerate, header.channels) == (info["sampling_rate"], info["channels"])
        audio = dataset.stimulus(story)
        assert len(audio) == pytest.approx(info["duration_s"] * 16000, abs=2)


def test_unreadable_or_missing_wav(dataset_copy):
    dataset = Dataset(dataset_copy)
    (dataset_copy / "stimuli" / "souls.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(DatasetError, match="souls.wav: unreadable audio"):
        dataset.stimulus("souls")
    (dataset_copy / "stimuli" / "souls.wav").unlink()
    with pytest.raises(DatasetError, match="souls.wav.*missing"):
        dataset.stimulus("souls")


# ----------------------------------------------------------------------------- TR windows

def test_windows_pair_with_response_rows_on_the_simulated_grid(dataset_copy):
    """Row i holds the 10 s ending at the end of grid TR i+10, i.e. 2i+2 .. 2i+12 s."""
    rate = 16000
    dataset = Dataset(dataset_copy)
    n_rows = dataset.response_rows("souls")
    duration = synthetic_data.audio_seconds(n_rows + 20)
    ramp = np.arange(int(duration * rate), dtype=np.float64) / (duration * rate)
    _write_wav(dataset_copy, "souls", ramp, rate, "DOUBLE")
    windows = dataset.audio_windows("souls")
    assert windows.dtype == np.float32 and windows.shape == (n_rows, 10 * rate)
    for i in [0, 1, n_rows // 2, n_rows - 1]:
        first, last = (2 * i + 2) * rate, (2 * i + 12) * rate
        expected = np.zeros(10 * rate, np.float32)
        available = ramp[first:last].astype(np.float32)
        expected[:len(available)] = available
        np.testing.assert_array_equal(windows[i], expected)


def test_windows_zero_pad_before_onset_and_after_end(dataset_copy):
    """Windows are zero-padded before the audio's onset (row 0's 16 s window starts 4 s before
    it on the simulated grid) and after its end, on a grid that runs past it: triggers 10.5 s
    later than the simulated grid's, so the last row's TR ends 1.5 s after the audio (within the
    tolerance)."""
    rate = 16000
    dataset = Dataset(dataset_copy)
    n_rows = dataset.response_rows("souls")
    seconds = synthetic_data.audio_seconds(n_rows + 20)
    _write_wav(dataset_copy, "souls", np.ones(int(seconds * rate)), rate, "FLOAT")
    windows = dataset.audio_windows("souls", n_delays=7)  # 16 s windows
    assert windows.shape == (n_rows, 16 * rate)
    # row 0 spans -4..12 s: 4 s of padding, then audio
    np.testing.assert_array_equal(windows[0, :4 * rate], 0)
    np.testing.assert_array_equal(windows[0, 4 * rate:], 1)
    report = dataset_copy / "souls.report"
    report.write_text("\n".join([f"{20.5 + 2.0 * k:.4f} trigger" for k in range(n_rows + 15)]
                                + ["20.0 sound-start"]) + "\n")
    late = Dataset(dataset_copy, "report", report).audio_windows("souls", n_delays=7)
    # the last row ends 1.5 s after the audio: 14.5 s of audio, then 1.5 s of padding
    np.testing.assert_array_equal(late[-1, :int(14.5 * rate)], 1)
    np.testing.assert_array_equal(late[-1, int(14.5 * rate):], 0)


def test_windows_use_exact_sample_arithmetic_for_fractional_trs(dataset_copy):
    """With measured trigger times (TR 2.0045 s) window ends are not whole seconds."""
    story, rate = "souls", 16000
    n_rows = Dataset(dataset_copy).response_rows(story)
    report = dataset_copy / f"{story}.report"
    triggers = 3.0 + 2.0045 * np.arange(n_rows + 20)
    lines = [f"{t:.4f} trigger" for t in triggers] + ["13.25 sound-start"]
    report.write_text("\n".join(lines) + "\n")
    starts, stops = Dataset(dataset_copy, "report", report).window_bounds(story, rate)
    tr_start = triggers[10:10 + n_rows] - 13.25
    np.testing.assert_array_equal(stops, np.round((tr_start + 2.0045) * rate).astype(np.int64))
    np.testing.assert_array_equal(stops - starts, 10 * rate)
    assert len(set((stops % rate).tolist())) > 1  # not truncated to whole seconds


def test_windows_match_planted_words(synthetic_dir):
    """A word's phone frequencies are in the window of every row whose 10 s span covers it."""
    dataset = Dataset(synthetic_dir)
    truth = dataset.truth()
    story, rate = "souls", 16000
    windows = dataset.audio_windows(story)
    starts, _ = dataset.window_bounds(story)
    for start, end, word in dataset.words(story)[5:40:7]:
        row = int(np.searchsorted(starts, int(end * rate), side="right")) - 1
        offset = int(round(start * rate)) - starts[row]
        if row < 0 or offset < 0 or offset + (end - start) * rate > windows.shape[1]:
            continue
        segment = windows[row, offset:offset + int((end - start) * rate)]
        np.testing.assert_allclose(segment, dataset.stimulus(story)[
            int(round(start * rate)):int(round(start * rate)) + len(segment)])
        spectrum = np.abs(np.fft.rfft(segment, n=16 * len(segment)))
        freqs = np.fft.rfftfreq(16 * len(segment), 1 / rate)
        first_phone = truth["words"][word]["phones"][0].rstrip("012")
        f1, f2 = truth["phones"][first_phone]
        assert spectrum[np.abs(freqs - f1) < 40].max() > 5 * np.median(spectrum)


def test_rows_need_enough_trs(dataset_copy):
    respdict_path = dataset_copy / "derivative" / "respdict.json"
    respdict = json.loads(respdict_path.read_text())
    del respdict["souls"]
    respdict_path.write_text(json.dumps(respdict))
    with pytest.raises(DatasetError, match="respdict.json: no entry for story 'souls'"):
        Dataset(dataset_copy).audio_windows("souls")


def test_stimulus_without_textgrid_checks_the_tr_grid_only(dataset_copy):
    """The TextGrid is optional for audio: without one the WAV is still checked against the TR
    grid (too short is refused), and a WAV that covers the story loads."""
    (dataset_copy / "derivative" / "TextGrids" / "souls.TextGrid").unlink()
    rate = 16000
    dataset = Dataset(dataset_copy)
    grid_end = 2.0 * (dataset.response_rows("souls") + 20) - 20
    _write_wav(dataset_copy, "souls", np.full(int((grid_end + 1) * rate), 0.25), rate, "FLOAT")
    assert len(dataset.stimulus("souls")) == int((grid_end + 1) * rate)
    _write_wav(dataset_copy, "souls", np.full(int((grid_end - 3) * rate), 0.25), rate, "FLOAT")
    with pytest.raises(DatasetError, match=f"{grid_end - 3:.2f} s of audio.*ends at "
                                           f"{grid_end:.2f} s"):
        dataset.audio_windows("souls")


def test_stimulus_checks_against_the_datasets_tr_timing(dataset_copy):
    """The dataset's tr_source/tr_path reach the length check: triggers 13 s later make the
    WAV too short."""
    n_trs = json.loads((dataset_copy / "derivative" / "respdict.json").read_text())["souls"] - 5
    report = dataset_copy / "souls.report"
    report.write_text("\n".join([f"{23.0 + 2.0 * k:.4f} trigger" for k in range(n_trs)]
                                + ["20.0 sound-start"]) + "\n")
    assert len(Dataset(dataset_copy).stimulus("souls")) > 0
    measured = Dataset(dataset_copy, "report", report)
    with pytest.raises(DatasetError, match="report TR timing"):
        measured.stimulus("souls")
    with pytest.raises(DatasetError, match="report TR timing"):
        measured.audio_windows("souls")


# ----------------------------------------------------------------------------- the handle

@pytest.mark.parametrize("tr_source", ["scanner", "Respdict", "reports", "", None])
def test_bad_tr_source_is_refused_in_one_line(synthetic_dir, tr_source):
    """An unknown tr_source is refused when the dataset is opened, before its root is looked
    at, in one line that lists the valid ones."""
    for root in (synthetic_dir, synthetic_dir / "absent"):
        with pytest.raises(DatasetError) as info:
            Dataset(root, tr_source)
        message = str(info.value)
        assert message == (f"tr_source must be one of respdict, report, trfiles, got "
                           f"{tr_source!r}")
        assert "\n" not in message


def test_settings_record_root_and_tr_timing(synthetic_dir, tmp_path):
    assert Dataset(synthetic_dir).settings() == {
        "dataset": "ds003020", "data_dir": str(synthetic_dir), "tr_source": "respdict",
        "tr_path": None}
    assert Dataset(str(synthetic_dir), "report", tmp_path / "reports").settings() == {
        "dataset": "ds003020", "data_dir": str(synthetic_dir), "tr_source": "report",
        "tr_path": str(tmp_path / "reports")}
    settings = Dataset(synthetic_dir, "trfiles", str(tmp_path / "t.jbl")).settings()
    assert settings["tr_path"] == str(tmp_path / "t.jbl")
    json.dumps(settings)  # recorded in run files as it is


def test_dataset_attributes(synthetic_dir):
    dataset = Dataset(str(synthetic_dir))
    assert dataset.root == synthetic_dir and dataset.derivative == synthetic_dir / "derivative"
    assert (dataset.tr_source, dataset.tr_path) == ("respdict", None)
    assert dataset.subjects() == ["UTS01", "UTS02"]
    assert dataset.subject_dir(1) == synthetic_dir / "derivative" / "preprocessed_data" / "UTS01"
    assert dataset.response_path("1", "souls") == _hf5(synthetic_dir, "UTS01", "souls")
    assert dataset.stimulus_path("souls") == synthetic_dir / "stimuli" / "souls.wav"
    assert dataset.textgrid_path("souls") == (synthetic_dir / "derivative" / "TextGrids"
                                              / "souls.TextGrid")
    assert "respdict" in repr(dataset) and str(synthetic_dir) in repr(dataset)


def test_input_files_are_every_file_a_run_reads(synthetic_dir):
    """respdict.json, then per story its response file, WAV and TextGrid (for
    ``run_utils.file_identity``); a missing one is refused, named."""
    dataset = Dataset(synthetic_dir)
    stories = ["souls", data_utils.TEST_STORY]
    files = dataset.input_files(2, stories)
    derivative = synthetic_dir / "derivative"
    assert files == [derivative / "respdict.json",
                     *(_hf5(synthetic_dir, "UTS02", story) for story in stories),
                     *(synthetic_dir / "stimuli" / f"{story}.wav" for story in stories),
                     *(derivative / "TextGrids" / f"{story}.TextGrid" for story in stories)]
    assert all(path.is_file() for path in files)
    assert dataset.input_files(1, []) == [derivative / "respdict.json"]
    with pytest.raises(DatasetError, match="life.hf5"):
        dataset.input_files(2, ["souls", "life"])  # UTS02 did not hear 'life'


def test_input_files_name_a_missing_wav_or_textgrid(dataset_copy):
    dataset = Dataset(dataset_copy)
    (dataset_copy / "stimuli" / "souls.wav").unlink()
    with pytest.raises(DatasetError, match="souls.wav.*missing"):
        dataset.input_files(1, ["souls"])
    (dataset_copy / "derivative" / "TextGrids" / "legacy.TextGrid").unlink()
    with pytest.raises(DatasetError, match="legacy.TextGrid.*missing"):
        dataset.input_files(1, ["legacy"])


def test_dataset_flags_open_the_dataset(synthetic_dir, tmp_path):
    """``DatasetFlags`` (--data_dir, --tr_source, --tr_path) open one Dataset with them."""
    flags = data_utils.DatasetFlags(data_dir=str(synthetic_dir), tr_source="report",
                                    tr_path=str(tmp_path))
    dataset = flags.open_dataset()
    assert isinstance(dataset, Dataset)
    assert dataset.settings() == {"dataset": "ds003020", "data_dir": str(synthetic_dir),
                                  "tr_source": "report", "tr_path": str(tmp_path)}
    with pytest.raises(DatasetError, match="no such directory"):
        data_utils.DatasetFlags(data_dir=str(tmp_path / "absent")).open_dataset()
