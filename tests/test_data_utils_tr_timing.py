"""The TR timing a ``data_utils.Dataset`` answers with: the simulated respdict grid, ``.report``
files or the research pickle ``trfiles_huge.jbl`` (its ``tr_source``), for the TR times, the
audio windows of response rows, the story span and the stimulus checks alike."""

import json
import math

import joblib
import numpy as np
import pytest

import data_utils
import tr_files
from data_utils import Dataset
from run_utils import DatasetError
from tr_samples import (REPORT, REPORT_TRIGGERS, TRIGGERS, huth_modules, research_trfile,
                        write_report)


@pytest.fixture(autouse=True)
def _fresh_pickle_cache():
    """Each test loads pickles from disk, not from a previous test's cache."""
    tr_files._load_research_pickle_cached.cache_clear()
    yield
    tr_files._load_research_pickle_cached.cache_clear()


# ----------------------------------------------------------------------------- respdict grid

def test_tr_times_respdict_closed_form(synthetic_dir):
    """Default source: respdict - 5 TRs centred at 2k - 9 s, float64, exactly."""
    dataset = Dataset(synthetic_dir)
    respdict = dataset.respdict()
    assert respdict
    for story, n_acquired in respdict.items():
        times = dataset.tr_times(story)
        n = n_acquired - 5
        assert times.dtype == np.float64
        assert times.shape == (n,)
        assert np.array_equal(times, np.array([2.0 * k - 9.0 for k in range(n)]))


def test_respdict_trfile_starts(synthetic_dir):
    """The simulated grid starts TR k at 2k - 10 s with a 2 s mean spacing."""
    dataset = Dataset(synthetic_dir)
    trfile = dataset.trfile("stagefright")
    n = dataset.respdict()["stagefright"] - 5
    assert trfile.avgtr == 2.0
    assert np.array_equal(trfile.tr_starts(), np.array([2.0 * k - 10.0 for k in range(n)]))


def test_window_bounds_respdict(synthetic_dir):
    """Respdict grid: row i ends at the end of grid TR i + 10, i.e. (2i + 12) s."""
    dataset = Dataset(synthetic_dir)
    rows = dataset.respdict()["stagefright"] - 20
    starts, stops = dataset.window_bounds("stagefright", sampling_rate=100)
    assert np.array_equal(stops, np.array([(2 * i + 12) * 100 for i in range(rows)]))
    assert np.array_equal(stops - starts, np.full(rows, 1000))


# ----------------------------------------------------------------------------- .report files

def test_trfile_report_dir_or_file(tmp_path, synthetic_dir):
    """tr_path may be a folder holding <story>.report or the report file itself."""
    path = write_report(tmp_path, REPORT, "stagefright.report")
    for tr_path in (tmp_path, path):
        trfile = Dataset(synthetic_dir, "report", tr_path).trfile("stagefright")
        assert trfile.trtimes == REPORT_TRIGGERS
        assert trfile.soundstarttime == 5.3
    times = Dataset(synthetic_dir, "report", tmp_path).tr_times("stagefright")
    np.testing.assert_allclose(times, np.array(REPORT_TRIGGERS) - 5.3 + (14.0316 / 7) / 2,
                               rtol=0, atol=1e-12)


def test_trfile_report_missing_story(tmp_path, synthetic_dir):
    """A report folder without the story's file raises DatasetError naming the file."""
    write_report(tmp_path, REPORT, "stagefright.report")
    with pytest.raises(DatasetError, match="souls.report"):
        Dataset(synthetic_dir, "report", tmp_path).trfile("souls")


def test_trfile_report_default_folder(dataset_copy):
    """Without tr_path, reports are read from derivative/TRfiles/."""
    folder = dataset_copy / "derivative" / "TRfiles"
    folder.mkdir()
    write_report(folder, REPORT, "stagefright.report")
    dataset = Dataset(dataset_copy, "report")
    assert dataset.tr_file_path("report") == folder
    trfile = dataset.trfile("stagefright")
    assert trfile.trtimes == REPORT_TRIGGERS


# ----------------------------------------------------------------------------- trfiles_huge.jbl

def test_trfiles_source_reads_the_pickle(tmp_path, monkeypatch, synthetic_dir):
    """The "trfiles" source reads a story's TRFile (the first of its list) from the pickle."""
    with huth_modules(monkeypatch) as classes:
        trfiles = {"souls": [research_trfile(classes)], "life": [research_trfile(classes, 1.0)]}
        joblib.dump(trfiles, tmp_path / "trfiles_huge.jbl", compress=3)

    dataset = Dataset(synthetic_dir, "trfiles", tmp_path / "trfiles_huge.jbl")
    trfile = dataset.trfile("souls")  # its fields: tests/test_tr_files.py
    assert isinstance(trfile, tr_files.TRFile)
    assert [float(t) for t in trfile.trtimes] == TRIGGERS

    starts = np.array(TRIGGERS) - 3.25
    avgtr = (TRIGGERS[-1] - TRIGGERS[0]) / (len(TRIGGERS) - 1)
    times = dataset.tr_times("souls")
    assert times.dtype == np.float64
    np.testing.assert_allclose(times, starts + avgtr / 2, rtol=0, atol=1e-12)
    life = dataset.tr_times("life")
    np.testing.assert_allclose(life, starts + 1.0 + avgtr / 2, rtol=0, atol=1e-12)


def test_trfiles_pickle_single_object_and_default_path(dataset_copy, monkeypatch):
    """A story may map to a bare TRFile; derivative/trfiles_huge.jbl is the default tr_path."""
    with huth_modules(monkeypatch) as classes:
        joblib.dump({"souls": research_trfile(classes)},
                    dataset_copy / "derivative" / "trfiles_huge.jbl", compress=3)
    trfile = Dataset(dataset_copy, "trfiles").trfile("souls")
    assert [float(t) for t in trfile.trtimes] == TRIGGERS
    assert trfile.soundstarttime == 3.25


def test_story_missing_from_trfiles_pickle(tmp_path, monkeypatch, synthetic_dir):
    """Asking the pickle for a story it lacks raises DatasetError naming the story."""
    with huth_modules(monkeypatch) as classes:
        joblib.dump({"souls": [research_trfile(classes)]}, tmp_path / "trfiles.jbl")
    with pytest.raises(DatasetError, match="stagefright"):
        Dataset(synthetic_dir, "trfiles", tmp_path / "trfiles.jbl").trfile("stagefright")


# ----------------------------------------------------------------------------- source errors

@pytest.mark.parametrize("source", ["scanner", "Respdict", "reports"])
def test_invalid_tr_source(synthetic_dir, source):
    """An unknown tr_source raises DatasetError listing the valid ones."""
    with pytest.raises(DatasetError, match="respdict"):
        Dataset(synthetic_dir, source)


@pytest.mark.parametrize("source", ["trfiles", "report"])
def test_source_without_tr_path(synthetic_dir, source):
    """Measured sources without tr_path and without a default file ask for tr_path."""
    with pytest.raises(DatasetError, match="tr_path"):
        Dataset(synthetic_dir, source).tr_times("souls")


def test_respdict_story_missing(synthetic_dir):
    """A story absent from respdict.json raises DatasetError naming it."""
    with pytest.raises(DatasetError, match="nosuchstory"):
        Dataset(synthetic_dir).tr_times("nosuchstory")


# ----------------------------------------------------------------------------- audio windows

STORY = "stagefright"
SOUND_START = 10.4


def _trigger_times(n):
    """Measured-looking trigger times (4 decimals) of about 2.0045 s spacing."""
    return [float(f"{0.25 + 2.0045 * k + 0.0003 * ((7 * k) % 5 - 2):.4f}") for k in range(n)]


def _write_story_report(data_dir, n_triggers):
    folder = data_dir / "TRfiles"
    folder.mkdir(exist_ok=True)
    times = _trigger_times(n_triggers)
    lines = [f"{times[0]:.4f} init-trigger"]
    lines += [f"{t:.4f} trigger" for t in times[1:6]]
    lines.append(f"{SOUND_START:.4f} sound-start")
    lines += [f"{t:.4f} trigger" for t in times[6:]]
    lines.append(f"{times[-1] + 1.0:.4f} sound-stop")
    (folder / f"{STORY}.report").write_text("\n".join(lines) + "\n")
    return folder, times


@pytest.mark.parametrize("sampling_rate,n_delays", [(16000, 4), (22050, 2)])
def test_window_bounds_report(dataset_copy, sampling_rate, n_delays):
    """Row i ends at round((start of TR i + 10 + avgtr) * sr); all windows are (d + 1) * 2 s."""
    rows = Dataset(dataset_copy).respdict()[STORY] - 20
    folder, times = _write_story_report(dataset_copy, rows + 13)
    avgtr = (times[-1] - times[0]) / (len(times) - 1)
    expected_stops = [math.floor((times[i + 10] - SOUND_START + avgtr) * sampling_rate + 0.5)
                      for i in range(rows)]
    length = (n_delays + 1) * 2 * sampling_rate

    starts, stops = Dataset(dataset_copy, "report", folder).window_bounds(STORY, sampling_rate,
                                                                          n_delays)
    assert stops.dtype == np.int64 and starts.dtype == np.int64
    assert stops.tolist() == expected_stops
    assert (stops - starts).tolist() == [length] * rows


def test_window_bounds_report_exact_trigger_count(dataset_copy):
    """rows + 10 triggers are just enough; one fewer raises DatasetError."""
    rows = Dataset(dataset_copy).respdict()[STORY] - 20
    folder, _ = _write_story_report(dataset_copy, rows + 10)
    dataset = Dataset(dataset_copy, "report", folder)
    starts, _ = dataset.window_bounds(STORY)
    assert len(starts) == rows
    _write_story_report(dataset_copy, rows + 9)
    with pytest.raises(DatasetError, match=STORY):
        dataset.window_bounds(STORY)


def test_story_span_report(dataset_copy):
    """With report timing the rows end is the end of TR rows + 9 and the grid end that of the
    last trigger's TR, both from story onset (sound-start)."""
    rows = Dataset(dataset_copy).respdict()[STORY] - 20
    folder, times = _write_story_report(dataset_copy, rows + 13)
    avgtr = (times[-1] - times[0]) / (len(times) - 1)
    dataset = Dataset(dataset_copy, "report", folder)
    rows_end, grid_end = dataset.story_span(STORY)
    assert rows_end == pytest.approx(times[rows + 9] - SOUND_START + avgtr)
    assert grid_end == pytest.approx(times[-1] - SOUND_START + avgtr)
    assert dataset.stimulus_problem(STORY, rows_end - 1.9, None) is None
    problem = dataset.stimulus_problem(STORY, rows_end - 2.1, None)
    assert f"until {rows_end:.2f} s (report TR timing)" in problem


# ----------------------------------------------------------------------------- one TR source

LATE_START = 20.0  # the sound starts 20 s after the first trigger: TR k starts at 2.0045k + 3 s


def _late_trfile(n_trs):
    """A measured-looking TR file whose TRs start ~13 s later than the simulated grid's (which
    starts at -10 s), more than the synthetic WAVs' closing 9 s of silence covers."""
    return tr_files.TRFile(23.0 + 2.0045 * np.arange(n_trs), LATE_START)


def _late_timing(data_dir, source):
    """``source`` ("report" or "trfiles") TR files of every story with ``_late_trfile``
    timing, outside the dataset; returns their tr_path."""
    respdict = json.loads((data_dir / "derivative" / "respdict.json").read_text())
    late = {story: _late_trfile(n - data_utils.RESPDICT_PAD_TRS)
            for story, n in respdict.items()}
    if source == "trfiles":
        path = data_dir.parent / "late.jbl"
        joblib.dump({story: [trfile] for story, trfile in late.items()}, path, compress=3)
        return path
    folder = data_dir.parent / "late-reports"
    folder.mkdir()
    for story, trfile in late.items():
        lines = [f"{t:.4f} trigger" for t in trfile.trtimes] + [f"{LATE_START} sound-start"]
        (folder / f"{story}.report").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("source", ["report", "trfiles"])
def test_one_dataset_answers_for_its_tr_source(dataset_copy, source):
    """``Dataset(root, source, path)`` gives that source's timing to every question alike: TR
    times, row windows, story span, the stimulus checks (the WAVs, made for the simulated
    grid, are ~4 s short of these TRs' response rows) and ``check_dataset``; the simulated dataset of the
    same root is untouched."""
    tr_path = _late_timing(dataset_copy, source)
    measured, simulated = Dataset(dataset_copy, source, tr_path), Dataset(dataset_copy)
    assert measured.settings()["tr_source"] == source
    assert measured.settings()["tr_path"] == str(tr_path)
    rows = simulated.response_rows(STORY)
    late = _late_trfile(simulated.respdict()[STORY] - data_utils.RESPDICT_PAD_TRS)
    starts = late.tr_starts()

    np.testing.assert_allclose(measured.trfile(STORY).tr_starts(), starts, rtol=0, atol=1e-9)
    np.testing.assert_allclose(measured.tr_times(STORY), late.tr_centres(), rtol=0, atol=1e-9)
    assert not np.allclose(measured.tr_times(STORY), simulated.tr_times(STORY), atol=1)
    first, stops = measured.window_bounds(STORY)
    np.testing.assert_array_equal(
        stops, np.round((starts[10:10 + rows] + late.avgtr) * 16000).astype(np.int64))
    np.testing.assert_array_equal(stops - first, 10 * 16000)
    rows_end, grid_end = measured.story_span(STORY)
    assert rows_end == pytest.approx(starts[rows + 9] + late.avgtr)
    assert grid_end == pytest.approx(starts[-1] + late.avgtr)
    assert rows_end > simulated.story_span(STORY)[0] + 5

    duration = measured.stimulus_duration(STORY)
    assert simulated.stimulus_problem(STORY, duration) is None
    expected = f"until {rows_end:.2f} s ({source} TR timing)"
    assert expected in measured.stimulus_problem(STORY, duration)
    for question in (lambda dataset: dataset.stimulus(STORY),
                     lambda dataset: dataset.audio_windows(STORY),
                     lambda dataset: dataset.check_run_inputs(1, [STORY])):
        with pytest.raises(DatasetError) as info:
            question(measured)
        assert expected in str(info.value)
        question(simulated)

    _, problems, _ = data_utils.check_dataset(measured, [1])
    wavs = [p for p in problems if f"s ({source} TR timing); the WAV is truncated" in p]
    assert len(wavs) == len(problems) == len(simulated.stories(1))
    assert any(f"{STORY}.wav" in p and expected in p for p in wavs)
    assert data_utils.check_dataset(simulated, [1])[1] == []
    assert data_utils.tr_sources(measured)[source]["path"] == str(tr_path)
