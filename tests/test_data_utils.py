"""Responses, stimuli and TR-aligned audio windows read by data_utils."""

import json
import os

import h5py
import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf

import data_utils
from data_utils import DatasetError


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


def test_list_stories_is_sorted_and_per_subject(synthetic_dir):
    truth = data_utils.load_truth(synthetic_dir)
    for name, info in truth["subjects"].items():
        assert data_utils.list_stories(synthetic_dir, name) == sorted(info["stories"])
    assert "life" in data_utils.list_stories(synthetic_dir, 1)
    assert "life" not in data_utils.list_stories(synthetic_dir, "UTS02")


def test_wrong_subject_lists_the_subjects_found(synthetic_dir):
    with pytest.raises(DatasetError, match="UTS03.*subjects found: UTS01, UTS02"):
        data_utils.list_stories(synthetic_dir, 3)


def test_missing_story_names_file_and_alternatives(synthetic_dir):
    with pytest.raises(DatasetError) as info:
        data_utils.load_fmri(synthetic_dir, 2, "life")
    message = str(info.value)
    assert "life.hf5" in message and "UTS02" in message and "souls" in message


def test_derivatives_plural_layout(dataset_copy):
    os.rename(dataset_copy / "derivative", dataset_copy / "derivatives")
    assert data_utils.load_fmri(dataset_copy, 1, "souls").shape[0] == data_utils.response_rows(
        dataset_copy, "souls")
    assert len(data_utils.tr_times(dataset_copy, "souls")) > 0


def test_data_dir_without_derivative(tmp_path):
    with pytest.raises(DatasetError, match="derivative"):
        data_utils.list_stories(tmp_path, 1)
    with pytest.raises(DatasetError, match="no such directory"):
        data_utils.list_stories(tmp_path / "absent", 1)


# ----------------------------------------------------------------------------- fMRI

def test_load_fmri_matches_file_as_float32_with_nan_zeroed(synthetic_dir):
    truth = data_utils.load_truth(synthetic_dir)["subjects"]["UTS01"]
    (nan_story, nan_voxels), = truth["nan_voxels"].items()
    raw = _raw(synthetic_dir, "UTS01", nan_story)
    assert raw.dtype == np.float64 and np.isnan(raw[:, nan_voxels]).all()
    data = data_utils.load_fmri(synthetic_dir, 1, nan_story)
    assert data.dtype == np.float32 and data.shape == raw.shape
    np.testing.assert_array_equal(data, np.nan_to_num(raw).astype(np.float32))
    assert data.shape[0] == data_utils.response_rows(synthetic_dir, nan_story)


@pytest.mark.parametrize("voxels", [[7, 3, 50, 3], np.arange(10, 20), [119], []])
def test_load_fmri_voxel_subset_keeps_order(synthetic_dir, voxels):
    raw = _raw(synthetic_dir, "UTS01", "souls")
    subset = data_utils.load_fmri(synthetic_dir, 1, "souls", voxels)
    np.testing.assert_array_equal(subset, raw[:, voxels].astype(np.float32))


def test_load_fmri_boolean_mask(synthetic_dir):
    raw = _raw(synthetic_dir, "UTS01", "souls")
    mask = np.zeros(raw.shape[1], bool)
    mask[[4, 9, 80]] = True
    np.testing.assert_array_equal(data_utils.load_fmri(synthetic_dir, 1, "souls", mask),
                                  raw[:, mask].astype(np.float32))
    with pytest.raises(DatasetError, match="another subject"):
        data_utils.load_fmri(synthetic_dir, 1, "souls", np.ones(raw.shape[1] + 1, bool))


@pytest.mark.parametrize("voxels", [[0, 120], [-1], [[1, 2]], [0.5]])
def test_load_fmri_rejects_bad_voxel_selection(synthetic_dir, voxels):
    with pytest.raises(DatasetError):
        data_utils.load_fmri(synthetic_dir, 1, "souls", voxels)


class RecordingDataset:
    """Array wrapper that records the shape of every read."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        block = self.array[key]
        self.reads.append(block.shape)
        return block


def test_read_columns_reads_bounded_blocks_of_the_requested_span():
    rng = np.random.default_rng(0)
    array = rng.standard_normal((3, 50, 1000))
    dataset = RecordingDataset(array)
    columns = np.array([400, 120, 130, 399])
    block_bytes = 8 * 281 * 7  # 7 rows of the 281-column span
    out = data_utils.read_columns(dataset, columns, block_bytes=block_bytes)
    np.testing.assert_array_equal(out, array[..., columns].astype(np.float32))
    assert out.dtype == np.float32
    assert all(shape[-1] == 400 - 120 + 1 and np.prod(shape) * 8 <= block_bytes
               for shape in dataset.reads)
    assert sum(np.prod(shape) for shape in dataset.reads) == 3 * 50 * 281


def test_read_columns_zeroes_nan_and_inf():
    array = np.array([[1.0, np.nan], [np.inf, -np.inf]])
    np.testing.assert_array_equal(data_utils.read_columns(array), [[1, 0], [0, 0]])


def test_truncated_hdf5_gives_clear_error(dataset_copy):
    path = _hf5(dataset_copy, "UTS01", "souls")
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(DatasetError, match="souls.hf5.*download it again"):
        data_utils.load_fmri(dataset_copy, 1, "souls")


def test_garbage_hdf5_gives_clear_error(dataset_copy):
    _hf5(dataset_copy, "UTS01", "souls").write_bytes(b"not an HDF5 file" * 100)
    with pytest.raises(DatasetError, match="unreadable HDF5"):
        data_utils.load_fmri(dataset_copy, 1, "souls", [1, 2])


def test_hdf5_without_data_dataset(dataset_copy):
    with h5py.File(_hf5(dataset_copy, "UTS01", "souls"), "w") as handle:
        handle.create_dataset("resp", data=np.zeros((3, 4)))
    with pytest.raises(DatasetError, match="no dataset 'data'.*resp"):
        data_utils.load_fmri(dataset_copy, 1, "souls")


def test_load_repeats(synthetic_dir):
    raw = _raw(synthetic_dir, "UTS02", data_utils.TEST_STORY, "individual_repeats")
    repeats = data_utils.load_repeats(synthetic_dir, "UTS02")
    assert repeats.dtype == np.float32 and repeats.shape == raw.shape
    np.testing.assert_array_equal(repeats, raw.astype(np.float32))
    np.testing.assert_array_equal(data_utils.load_repeats(synthetic_dir, 2, voxels=[9, 2]),
                                  raw[:, :, [9, 2]].astype(np.float32))
    with pytest.raises(DatasetError, match="individual_repeats"):
        data_utils.load_repeats(synthetic_dir, 1, "souls")


# ----------------------------------------------------------------------------- stimuli

def _write_wav(data_dir, story, audio, rate, subtype="PCM_16"):
    sf.write(data_dir / "stimuli" / f"{story}.wav", audio, rate, subtype=subtype)


def test_stereo_44k_is_downmixed_and_resampled(dataset_copy):
    rate, seconds = 44100, 2.0
    t = np.arange(int(rate * seconds)) / rate
    left, right = 0.6 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 440 * t)
    _write_wav(dataset_copy, "souls", np.stack([left, right], axis=1), rate, "FLOAT")
    audio = data_utils.read_audio(dataset_copy / "stimuli" / "souls.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == int(seconds * 16000)
    reference = scipy.signal.resample_poly((left + right) / 2, 160, 441)
    # the numbers of librosa.resample's default (soxr_hq), without its start-up cost
    np.testing.assert_allclose(audio, librosa.resample(
        ((left + right) / 2).astype(np.float32), orig_sr=rate, target_sr=16000), atol=1e-6)
    middle = slice(1000, -1000)
    np.testing.assert_allclose(audio[middle], reference[middle], atol=2e-3)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.fft.rfftfreq(len(audio), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=1)


@pytest.mark.parametrize("rate,channels", [(16000, 1), (22050, 1), (48000, 2), (8000, 6)])
def test_any_rate_and_channel_count(dataset_copy, rate, channels):
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (rate, channels))
    _write_wav(dataset_copy, "souls", audio, rate, "FLOAT")
    loaded = data_utils.read_audio(dataset_copy / "stimuli" / "souls.wav", sampling_rate=16000)
    assert loaded.dtype == np.float32 and loaded.shape == (16000,)
    if rate == 16000:
        np.testing.assert_allclose(loaded, audio.mean(axis=1), atol=1e-6)


def test_synthetic_stimuli_formats_decode_to_the_same_mono(synthetic_dir):
    truth = data_utils.load_truth(synthetic_dir)
    formats = {(s["sampling_rate"], s["channels"]) for s in truth["stories"].values()}
    assert {(44100, 2), (16000, 1)} <= formats
    for story, info in truth["stories"].items():
        header = sf.info(str(synthetic_dir / "stimuli" / f"{story}.wav"))
        assert (header.samplerate, header.channels) == (info["sampling_rate"], info["channels"])
        audio = data_utils.load_stimulus(synthetic_dir, story)
        assert len(audio) == pytest.approx(info["duration_s"] * 16000, abs=2)


def test_unreadable_or_missing_wav(dataset_copy):
    (dataset_copy / "stimuli" / "souls.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(DatasetError, match="souls.wav: unreadable audio"):
        data_utils.load_stimulus(dataset_copy, "souls")
    (dataset_copy / "stimuli" / "souls.wav").unlink()
    with pytest.raises(DatasetError, match="souls.wav.*missing"):
        data_utils.load_stimulus(dataset_copy, "souls")


# ----------------------------------------------------------------------------- TR windows

def test_windows_pair_with_response_rows_on_the_simulated_grid(dataset_copy):
    """Row i holds the 10 s ending at the end of grid TR i+10, i.e. 2i+2 .. 2i+12 s."""
    rate = 16000
    n_rows = data_utils.response_rows(dataset_copy, "souls")
    duration = 2.0 * (n_rows + 20 - 15)
    ramp = np.arange(int(duration * rate), dtype=np.float64) / (duration * rate)
    _write_wav(dataset_copy, "souls", ramp, rate, "DOUBLE")
    windows = data_utils.tr_audio_windows(dataset_copy, "souls")
    assert windows.dtype == np.float32 and windows.shape == (n_rows, 10 * rate)
    for i in [0, 1, n_rows // 2, n_rows - 1]:
        first, last = (2 * i + 2) * rate, (2 * i + 12) * rate
        expected = np.zeros(10 * rate, np.float32)
        available = ramp[first:last].astype(np.float32)
        expected[:len(available)] = available
        np.testing.assert_array_equal(windows[i], expected)


def test_windows_zero_pad_before_onset_and_after_end(dataset_copy):
    """Audio ending 1.5 s before the last row's TR (within the tolerance) is zero-padded."""
    rate = 16000
    n_rows = data_utils.response_rows(dataset_copy, "souls")
    rows_end = 2.0 * (n_rows + 20) - 30
    audio = np.ones(int((rows_end - 1.5) * rate))
    _write_wav(dataset_copy, "souls", audio, rate, "FLOAT")
    windows = data_utils.tr_audio_windows(dataset_copy, "souls", n_delays=7)  # 16 s windows
    assert windows.shape == (n_rows, 16 * rate)
    # row 0 spans -4..12 s: 4 s of padding, then audio
    np.testing.assert_array_equal(windows[0, :4 * rate], 0)
    np.testing.assert_array_equal(windows[0, 4 * rate:], 1)
    # the last row ends at rows_end: 14.5 s of audio, then 1.5 s of padding
    np.testing.assert_array_equal(windows[-1, :int(14.5 * rate)], 1)
    np.testing.assert_array_equal(windows[-1, int(14.5 * rate):], 0)


def test_windows_use_exact_sample_arithmetic_for_fractional_trs(dataset_copy):
    """With measured trigger times (TR 2.0045 s) window ends are not whole seconds."""
    story, rate = "souls", 16000
    n_rows = data_utils.response_rows(dataset_copy, story)
    report = dataset_copy / f"{story}.report"
    triggers = 3.0 + 2.0045 * np.arange(n_rows + 20)
    lines = [f"{t:.4f} trigger" for t in triggers] + ["13.25 sound-start"]
    report.write_text("\n".join(lines) + "\n")
    starts, stops = data_utils.tr_window_bounds(dataset_copy, story, rate, tr_source="report",
                                                tr_path=report)
    tr_start = triggers[10:10 + n_rows] - 13.25
    np.testing.assert_array_equal(stops, np.round((tr_start + 2.0045) * rate).astype(np.int64))
    np.testing.assert_array_equal(stops - starts, 10 * rate)
    assert len(set((stops % rate).tolist())) > 1  # not truncated to whole seconds


def test_windows_match_planted_words(synthetic_dir):
    """A word's phone frequencies are in the window of every row whose 10 s span covers it."""
    truth = data_utils.load_truth(synthetic_dir)
    story, rate = "souls", 16000
    windows = data_utils.tr_audio_windows(synthetic_dir, story)
    starts, _ = data_utils.tr_window_bounds(synthetic_dir, story)
    for start, end, word in data_utils.load_words(synthetic_dir, story)[5:40:7]:
        row = int(np.searchsorted(starts, int(end * rate), side="right")) - 1
        offset = int(round(start * rate)) - starts[row]
        if row < 0 or offset < 0 or offset + (end - start) * rate > windows.shape[1]:
            continue
        segment = windows[row, offset:offset + int((end - start) * rate)]
        np.testing.assert_allclose(segment, data_utils.load_stimulus(synthetic_dir, story)[
            int(round(start * rate)):int(round(start * rate)) + len(segment)])
        spectrum = np.abs(np.fft.rfft(segment, n=16 * len(segment)))
        freqs = np.fft.rfftfreq(16 * len(segment), 1 / rate)
        first_phone = truth["words"][word]["phones"][0].rstrip("012")
        f1, f2 = truth["phones"][first_phone]
        assert spectrum[np.abs(freqs - f1) < 40].max() > 5 * np.median(spectrum)


def test_slice_windows_against_loop():
    audio = np.arange(20, dtype=np.float32)
    starts = np.array([-3, 0, 15, 18])
    out = data_utils.slice_windows(audio, starts, 5)
    for row, start in zip(out, starts):
        expected = [audio[s] if 0 <= s < len(audio) else 0 for s in range(start, start + 5)]
        np.testing.assert_array_equal(row, expected)
    assert out.dtype == np.float32


def test_rows_need_enough_trs(dataset_copy):
    respdict_path = dataset_copy / "derivative" / "respdict.json"
    respdict = json.loads(respdict_path.read_text())
    del respdict["souls"]
    respdict_path.write_text(json.dumps(respdict))
    with pytest.raises(DatasetError, match="respdict.json: no entry for story 'souls'"):
        data_utils.tr_audio_windows(dataset_copy, "souls")


def test_load_stimulus_without_textgrid_checks_the_tr_grid_only(dataset_copy):
    """The TextGrid is optional for audio: without one the WAV is still checked against the TR
    grid (too short is refused), and a WAV that covers the story loads."""
    (dataset_copy / "derivative" / "TextGrids" / "souls.TextGrid").unlink()
    rate = 16000
    rows_end = 2.0 * (data_utils.response_rows(dataset_copy, "souls") + 20) - 30
    _write_wav(dataset_copy, "souls", np.full(int((rows_end + 4) * rate), 0.25), rate, "FLOAT")
    assert len(data_utils.load_stimulus(dataset_copy, "souls")) == int((rows_end + 4) * rate)
    _write_wav(dataset_copy, "souls", np.full(int((rows_end - 3) * rate), 0.25), rate, "FLOAT")
    with pytest.raises(DatasetError, match=f"{rows_end - 3:.2f} s of audio.*until "
                                           f"{rows_end:.2f} s"):
        data_utils.tr_audio_windows(dataset_copy, "souls")


def test_load_stimulus_checks_against_the_runs_tr_timing(dataset_copy):
    """tr_source/tr_path reach the length check: triggers 6 s later make the WAV too short."""
    n_trs = json.loads((dataset_copy / "derivative" / "respdict.json").read_text())["souls"] - 5
    report = dataset_copy / "souls.report"
    report.write_text("\n".join([f"{16.0 + 2.0 * k:.4f} trigger" for k in range(n_trs)]
                                + ["20.0 sound-start"]) + "\n")
    assert len(data_utils.load_stimulus(dataset_copy, "souls")) > 0
    with pytest.raises(DatasetError, match="report TR timing"):
        data_utils.load_stimulus(dataset_copy, "souls", tr_source="report", tr_path=report)
    with pytest.raises(DatasetError, match="report TR timing"):
        data_utils.tr_audio_windows(dataset_copy, "souls", tr_source="report", tr_path=report)
