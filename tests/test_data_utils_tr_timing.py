"""Tests of the TR timing of data_utils: the simulated respdict grid, ``.report`` files, the
research pickles (``trfiles_huge.jbl``/``grids_huge.jbl``) and the audio windows of rows."""

import contextlib
import math
import os
import sys
import types

import joblib
import numpy as np
import pytest

import data_utils


@pytest.fixture(autouse=True)
def _fresh_pickle_cache():
    """Each test loads pickles from disk, not from a previous test's cache."""
    data_utils._load_research_pickle_cached.cache_clear()
    yield
    data_utils._load_research_pickle_cached.cache_clear()


# ----------------------------------------------------------------------------- respdict grid

def test_tr_times_respdict_closed_form(synthetic_dir):
    """Default source: respdict - 5 TRs centred at 2k - 9 s, float64, exactly."""
    respdict = data_utils.load_respdict(synthetic_dir)
    assert respdict
    for story, n_acquired in respdict.items():
        times = data_utils.tr_times(synthetic_dir, story)
        n = n_acquired - 5
        assert times.dtype == np.float64
        assert times.shape == (n,)
        assert np.array_equal(times, np.array([2.0 * k - 9.0 for k in range(n)]))


def test_respdict_trfile_starts(synthetic_dir):
    """The simulated grid starts TR k at 2k - 10 s with a 2 s mean spacing."""
    trfile = data_utils.load_trfile(synthetic_dir, "stagefright")
    n = data_utils.load_respdict(synthetic_dir)["stagefright"] - 5
    assert trfile.avgtr == 2.0
    assert np.array_equal(trfile.tr_starts(), np.array([2.0 * k - 10.0 for k in range(n)]))


def test_tr_window_bounds_respdict(synthetic_dir):
    """Respdict grid: row i ends at the end of grid TR i + 10, i.e. (2i + 12) s."""
    rows = data_utils.load_respdict(synthetic_dir)["stagefright"] - 20
    starts, stops = data_utils.tr_window_bounds(synthetic_dir, "stagefright", sampling_rate=100)
    assert np.array_equal(stops, np.array([(2 * i + 12) * 100 for i in range(rows)]))
    assert np.array_equal(stops - starts, np.full(rows, 1000))


# ----------------------------------------------------------------------------- .report files

REPORT = """\
0.0000 init-trigger
2.0046 trigger
4.0090 trigger
5.3000 sound-start
6.0135 trigger
8.0181 trigger
9.1000 volume-change 0.8
10.0226 trigger
12.0270 trigger
14.0316 trigger
14.9000 sound-stop
"""
REPORT_TRIGGERS = [0.0, 2.0046, 4.0090, 6.0135, 8.0181, 10.0226, 12.0270, 14.0316]


def _report(tmp_path, text, name="story.report"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_from_report_fields(tmp_path):
    """Triggers, sound start/stop and other labels are read from '<time> <label>' lines."""
    trfile = data_utils.TRFile.from_report(_report(tmp_path, REPORT))
    assert trfile.trtimes == REPORT_TRIGGERS
    assert trfile.soundstarttime == 5.3
    assert trfile.soundstoptime == 14.9
    assert trfile.otherlabels == [(9.1, "volume-change 0.8")]
    assert trfile.expectedtr == 2.0045


def test_from_report_timing(tmp_path):
    """Starts are trigger - sound start, avgtr the mean spacing, centres start + avgtr / 2."""
    trfile = data_utils.TRFile.from_report(_report(tmp_path, REPORT))
    starts = np.array(REPORT_TRIGGERS) - 5.3
    avgtr = (14.0316 - 0.0) / 7
    assert trfile.avgtr == pytest.approx(avgtr, abs=1e-12)
    assert trfile.tr_starts().dtype == np.float64
    np.testing.assert_allclose(trfile.tr_starts(), starts, rtol=0, atol=1e-12)
    np.testing.assert_allclose(trfile.tr_centres(), starts + avgtr / 2, rtol=0, atol=1e-12)


def test_from_report_bom_and_blank_lines(tmp_path):
    """A byte-order mark and blank lines do not change what is read."""
    path = tmp_path / "bom.report"
    path.write_bytes(b"\xef\xbb\xbf" + REPORT.replace("\n", "\n\n").encode())
    trfile = data_utils.TRFile.from_report(path)
    assert trfile.trtimes == REPORT_TRIGGERS
    assert trfile.soundstarttime == 5.3


def test_from_report_reinserts_missed_trigger(tmp_path):
    """A gap of about two TRs gets the missed trigger back at previous + expectedtr."""
    path = _report(tmp_path, REPORT.replace("6.0135 trigger\n", ""))
    trfile = data_utils.TRFile.from_report(path)
    expected = [0.0, 2.0046, 4.0090, 4.0090 + 2.0045, 8.0181, 10.0226, 12.0270, 14.0316]
    np.testing.assert_allclose(trfile.trtimes, expected, rtol=0, atol=1e-12)
    trfile = data_utils.TRFile.from_report(path, expectedtr=2.0)
    assert trfile.trtimes[3] == pytest.approx(6.009, abs=1e-12)
    assert len(trfile.trtimes) == 8


def test_from_report_reinserts_two_missed_triggers(tmp_path):
    """Two separate missed triggers in a longer run are both re-inserted in place."""
    times = [round(0.3 + 2.0045 * k + 0.0004 * ((3 * k) % 5 - 2), 4) for k in range(40)]
    kept = [t for k, t in enumerate(times) if k not in (10, 25)]
    lines = ["12.5000 sound-start"] + [f"{t:.4f} trigger" for t in kept]
    trfile = data_utils.TRFile.from_report(_report(tmp_path, "\n".join(lines) + "\n"))
    expected = list(kept)
    expected.insert(24, kept[23] + 2.0045)
    expected.insert(10, kept[9] + 2.0045)
    assert len(trfile.trtimes) == 40
    np.testing.assert_allclose(trfile.trtimes, expected, rtol=0, atol=1e-12)


def test_from_report_short_run_with_two_missed_triggers(tmp_path):
    """Missed triggers are found against the median spacing, so a short run with two double
    gaps (which inflate the mean) is still repaired."""
    kept = [0.0, 2.0045, 6.0135, 8.0180, 12.0270, 14.0315]
    lines = ["0.5 sound-start"] + [f"{t:.4f} trigger" for t in kept]
    trfile = data_utils.TRFile.from_report(_report(tmp_path, "\n".join(lines) + "\n"))
    np.testing.assert_allclose(trfile.trtimes, 2.0045 * np.arange(8), atol=1e-9)


def test_from_report_consecutive_missed_triggers(tmp_path):
    """A gap of three TRs gets both missing triggers back."""
    kept = [2.0045 * k for k in range(12) if k not in (5, 6)]
    lines = ["0.5 sound-start"] + [f"{t:.4f} trigger" for t in kept]
    trfile = data_utils.TRFile.from_report(_report(tmp_path, "\n".join(lines) + "\n"))
    np.testing.assert_allclose(trfile.trtimes, 2.0045 * np.arange(12), atol=2e-4)


def test_from_report_malformed_line(tmp_path):
    """A line whose first field is not a time names the file and its line number."""
    path = _report(tmp_path, "0.0000 init-trigger\n\n2.0046 trigger\nabc trigger\n5.3 sound-start\n")
    with pytest.raises(data_utils.DatasetError) as excinfo:
        data_utils.TRFile.from_report(path)
    assert f"{path}:4" in str(excinfo.value)


@pytest.mark.parametrize("text", [
    REPORT.replace("5.3000 sound-start\n", ""),
    "0.0000 init-trigger\n1.0 sound-start\n",
    "",
], ids=["no-sound-start", "one-trigger", "empty"])
def test_from_report_incomplete(tmp_path, text):
    """Without a sound-start line or two triggers the report is refused, naming the file."""
    path = _report(tmp_path, text)
    with pytest.raises(data_utils.DatasetError) as excinfo:
        data_utils.TRFile.from_report(path)
    assert str(path) in str(excinfo.value)


def test_load_trfile_report_dir_or_file(tmp_path, synthetic_dir):
    """tr_path may be a folder holding <story>.report or the report file itself."""
    path = _report(tmp_path, REPORT, "stagefright.report")
    for tr_path in (tmp_path, path):
        trfile = data_utils.load_trfile(synthetic_dir, "stagefright", "report", tr_path=tr_path)
        assert trfile.trtimes == REPORT_TRIGGERS
        assert trfile.soundstarttime == 5.3
    times = data_utils.tr_times(synthetic_dir, "stagefright", "report", tr_path=tmp_path)
    np.testing.assert_allclose(times, np.array(REPORT_TRIGGERS) - 5.3 + (14.0316 / 7) / 2,
                               rtol=0, atol=1e-12)


def test_load_trfile_report_missing_story(tmp_path, synthetic_dir):
    """A report folder without the story's file raises DatasetError naming the file."""
    _report(tmp_path, REPORT, "stagefright.report")
    with pytest.raises(data_utils.DatasetError, match="souls.report"):
        data_utils.load_trfile(synthetic_dir, "souls", "report", tr_path=tmp_path)


def test_load_trfile_report_default_folder(dataset_copy):
    """Without tr_path, reports are read from derivative/TRfiles/."""
    folder = dataset_copy / "derivative" / "TRfiles"
    folder.mkdir()
    _report(folder, REPORT, "stagefright.report")
    trfile = data_utils.load_trfile(dataset_copy, "stagefright", "report")
    assert trfile.trtimes == REPORT_TRIGGERS


# ----------------------------------------------------------------------------- research pickles

@contextlib.contextmanager
def _huth_modules(monkeypatch):
    """Fake ``ridge_utils.textgrid`` / ``ridge_utils.stimulus_utils`` modules, removed on exit."""
    package = types.ModuleType("ridge_utils")
    textgrid = types.ModuleType("ridge_utils.textgrid")
    stimulus_utils = types.ModuleType("ridge_utils.stimulus_utils")
    namespace = {}
    for module, name in ((textgrid, "TextGrid"), (textgrid, "Tier"), (stimulus_utils, "TRFile")):
        cls = type(name, (), {"__module__": module.__name__})
        setattr(module, name, cls)
        namespace[name] = cls
    package.textgrid, package.stimulus_utils = textgrid, stimulus_utils
    with monkeypatch.context() as patch:
        for module in (package, textgrid, stimulus_utils):
            patch.setitem(sys.modules, module.__name__, module)
        yield types.SimpleNamespace(**namespace)
    assert "ridge_utils.textgrid" not in sys.modules
    assert "ridge_utils.stimulus_utils" not in sys.modules


def _research_tier(classes, nameid, classid, transcript):
    tier = classes.Tier()
    tier.nameid, tier.classid = nameid, classid
    tier.xmin, tier.xmax = "0", "2.3"
    tier.simple_transcript = transcript
    return tier


def _research_grid(classes, offset=0.0):
    grid = classes.TextGrid()
    grid.xmin, grid.xmax, grid.size = 0.0, 2.3, 3
    grid.tiers = [
        _research_tier(classes, "phone", "IntervalTier",
                       [("0.0", "0.5", ""), ("0.5", "1.25", "S"), ("1.25", str(2.3 + offset), "EY1")]),
        _research_tier(classes, "word", "IntervalTier",
                       [("0.0", "0.5", "sp"), ("0.5", str(2.3 + offset), "hello")]),
        _research_tier(classes, "bell", "TextTier", [("0.9", "ding")]),
    ]
    return grid


RESEARCH_GRID = {"phone": [(0.0, 0.5, ""), (0.5, 1.25, "S"), (1.25, 2.3, "EY1")],
                 "word": [(0.0, 0.5, "sp"), (0.5, 2.3, "hello")],
                 "bell": [(0.9, 0.9, "ding")]}

TRIGGERS = [0.0, 2.0046, 4.009, 6.0135, 8.0181, 10.0226]


def _research_trfile(classes, shift=0.0):
    trfile = classes.TRFile()
    trfile.trtimes = [np.float64(t + shift) if k % 2 else t + shift for k, t in enumerate(TRIGGERS)]
    trfile.soundstarttime = np.float64(3.25)
    trfile.soundstoptime = 11.5
    trfile.otherlabels = [(7.0, "volume")]
    trfile.expectedtr = 2.0045
    return trfile


COMPRESSIONS = [0, 3, ("zlib", 3), ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)]


@pytest.mark.parametrize("compress", COMPRESSIONS, ids=str)
def test_research_pickles_round_trip(tmp_path, monkeypatch, synthetic_dir, compress):
    """Pickled research TextGrids and TRFiles load without their modules, in any joblib format."""
    with _huth_modules(monkeypatch) as classes:
        grids = {"souls": _research_grid(classes), "life": _research_grid(classes, 1.0)}
        trfiles = {"souls": [_research_trfile(classes)], "life": [_research_trfile(classes, 1.0)]}
        joblib.dump(grids, tmp_path / "grids_huge.jbl", compress=compress)
        joblib.dump(trfiles, tmp_path / "trfiles_huge.jbl", compress=compress)

    assert data_utils.load_research_grid(tmp_path / "grids_huge.jbl", "souls") == RESEARCH_GRID
    assert data_utils.load_research_grid(tmp_path / "grids_huge.jbl", "life")["word"][1] == (
        0.5, 3.3, "hello")

    loaded = data_utils.load_research_pickle(tmp_path / "trfiles_huge.jbl")
    assert set(loaded) == {"souls", "life"}
    trfile = data_utils.load_trfile(synthetic_dir, "souls", "trfiles",
                                    tr_path=tmp_path / "trfiles_huge.jbl")
    assert isinstance(trfile, data_utils.TRFile)
    assert [float(t) for t in trfile.trtimes] == TRIGGERS
    assert trfile.soundstarttime == 3.25
    assert trfile.soundstoptime == 11.5
    assert trfile.otherlabels == [(7.0, "volume")]
    assert trfile.expectedtr == 2.0045

    starts = np.array(TRIGGERS) - 3.25
    avgtr = (TRIGGERS[-1] - TRIGGERS[0]) / (len(TRIGGERS) - 1)
    times = data_utils.tr_times(synthetic_dir, "souls", tr_source="trfiles",
                                tr_path=tmp_path / "trfiles_huge.jbl")
    assert times.dtype == np.float64
    np.testing.assert_allclose(times, starts + avgtr / 2, rtol=0, atol=1e-12)
    life = data_utils.tr_times(synthetic_dir, "life", tr_source="trfiles",
                               tr_path=tmp_path / "trfiles_huge.jbl")
    np.testing.assert_allclose(life, starts + 1.0 + avgtr / 2, rtol=0, atol=1e-12)


def test_trfiles_pickle_single_object_and_default_path(dataset_copy, monkeypatch):
    """A story may map to a bare TRFile; derivative/trfiles_huge.jbl is the default tr_path."""
    with _huth_modules(monkeypatch) as classes:
        joblib.dump({"souls": _research_trfile(classes)},
                    dataset_copy / "derivative" / "trfiles_huge.jbl", compress=3)
    trfile = data_utils.load_trfile(dataset_copy, "souls", "trfiles")
    assert [float(t) for t in trfile.trtimes] == TRIGGERS
    assert trfile.soundstarttime == 3.25


def test_research_grid_repeated_tier_names(tmp_path, monkeypatch):
    """Like load_textgrid, a repeated tier name keeps both tiers: "word" and "word#2"."""
    with _huth_modules(monkeypatch) as classes:
        grid = classes.TextGrid()
        grid.tiers = [_research_tier(classes, "word", "IntervalTier", [("0", "1", "first")]),
                      _research_tier(classes, "word", "IntervalTier", [("0", "1", "second")])]
        joblib.dump({"souls": grid}, tmp_path / "grids.jbl")
    assert data_utils.load_research_grid(tmp_path / "grids.jbl", "souls") == {
        "word": [(0.0, 1.0, "first")], "word#2": [(0.0, 1.0, "second")]}


def test_story_missing_from_pickles(tmp_path, monkeypatch, synthetic_dir):
    """Asking a pickle for a story it lacks raises DatasetError naming the story."""
    with _huth_modules(monkeypatch) as classes:
        joblib.dump({"souls": _research_grid(classes)}, tmp_path / "grids.jbl")
        joblib.dump({"souls": [_research_trfile(classes)]}, tmp_path / "trfiles.jbl")
    with pytest.raises(data_utils.DatasetError, match="stagefright"):
        data_utils.load_research_grid(tmp_path / "grids.jbl", "stagefright")
    with pytest.raises(data_utils.DatasetError, match="stagefright"):
        data_utils.load_trfile(synthetic_dir, "stagefright", "trfiles", tr_path=tmp_path / "trfiles.jbl")


@pytest.mark.parametrize("data", [b"", b"\x80\x04\x95", b"not a pickle at all", b"\x78\x9cgarbage"],
                         ids=["empty", "truncated", "text", "bad-zlib"])
def test_unreadable_research_pickle(tmp_path, data):
    """Damaged or foreign files raise DatasetError naming the file."""
    path = tmp_path / "trfiles_huge.jbl"
    path.write_bytes(data)
    with pytest.raises(data_utils.DatasetError) as excinfo:
        data_utils.load_research_pickle(path)
    assert str(path) in str(excinfo.value)


def test_missing_research_pickle(tmp_path):
    """A pickle path that does not exist raises DatasetError naming it."""
    with pytest.raises(data_utils.DatasetError, match="absent.jbl"):
        data_utils.load_research_pickle(tmp_path / "absent.jbl")


# ----------------------------------------------------------------------------- malicious pickles

def _touch(path):
    open(path, "w").close()


def _evil_module(marker):
    """A fake module ``evil`` whose Payload creates ``marker`` when it is unpickled."""
    module = types.ModuleType("evil")

    class Payload:
        def __reduce__(self):
            return (module.touch, (str(marker),))

    class Stateful:
        def __setstate__(self, state):
            _touch(marker)

    for cls in (Payload, Stateful):
        cls.__module__, cls.__qualname__ = "evil", cls.__name__
        setattr(module, cls.__name__, cls)

    def touch(path):
        _touch(path)

    touch.__module__, touch.__qualname__ = "evil", "touch"
    module.touch = touch
    return module


class _Reduce:
    """Pickles as ``function(*args)``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def _assert_refused_not_run(path, marker):
    """Loading must raise DatasetError and must not have run the payload."""
    try:
        data_utils.load_research_pickle(path)
        raised = False
    except data_utils.DatasetError:
        raised = True
    assert not marker.exists(), "unpickling ran code from the pickle"
    assert raised, "a pickle with a foreign callable was loaded"


@pytest.mark.parametrize("kind", ["reduce", "setstate", "nested"])
def test_foreign_class_refused(tmp_path, monkeypatch, kind):
    """An importable class of another module is refused, not constructed."""
    marker = tmp_path / "ran"
    module = _evil_module(marker)
    monkeypatch.setitem(sys.modules, "evil", module)
    if kind == "reduce":
        payload = {"souls": module.Payload()}
    elif kind == "setstate":
        stateful = module.Stateful()
        stateful.x = 1
        payload = {"souls": stateful}
    else:
        with _huth_modules(monkeypatch) as classes:
            payload = {"souls": [_research_trfile(classes), module.Payload()]}
            joblib.dump(payload, tmp_path / "trfiles_huge.jbl")
    if kind != "nested":
        joblib.dump(payload, tmp_path / "trfiles_huge.jbl", compress=3)
    assert not marker.exists()
    _assert_refused_not_run(tmp_path / "trfiles_huge.jbl", marker)


def test_os_system_refused(tmp_path):
    """A pickle that would call os.system is refused and the command is not run."""
    marker = tmp_path / "ran"
    joblib.dump({"souls": _Reduce(os.system, f"touch '{marker}'")}, tmp_path / "trfiles_huge.jbl")
    _assert_refused_not_run(tmp_path / "trfiles_huge.jbl", marker)


@pytest.mark.parametrize("function", [exec, eval], ids=["exec", "eval"])
def test_builtin_code_execution_refused(tmp_path, function):
    """A pickle that would call builtins.exec/eval on a string is refused and not run."""
    marker = tmp_path / "ran"
    joblib.dump({"souls": _Reduce(function, f"open({str(marker)!r}, 'w').close()")},
                tmp_path / "trfiles_huge.jbl")
    _assert_refused_not_run(tmp_path / "trfiles_huge.jbl", marker)


def test_dotted_name_through_numpy_refused(tmp_path):
    """A protocol-4 global 'numpy' + 'lib._npyio_impl.os.system' must not reach os.system."""
    marker = tmp_path / "ran"

    def short_string(text):
        return b"\x8c" + bytes([len(text)]) + text.encode()

    raw = (b"\x80\x04" + short_string("numpy") + short_string("lib._npyio_impl.os.system")
           + b"\x93" + short_string(f"touch '{marker}'") + b"\x85R.")
    path = tmp_path / "trfiles_huge.jbl"
    path.write_bytes(raw)
    _assert_refused_not_run(path, marker)


# ----------------------------------------------------------------------------- source errors

@pytest.mark.parametrize("call", [
    lambda d: data_utils.load_trfile(d, "souls", "scanner"),
    lambda d: data_utils.tr_times(d, "souls", tr_source="Respdict"),
    lambda d: data_utils.tr_window_bounds(d, "souls", tr_source="reports"),
], ids=["load_trfile", "tr_times", "tr_window_bounds"])
def test_invalid_tr_source(synthetic_dir, call):
    """An unknown tr_source raises DatasetError listing the valid ones."""
    with pytest.raises(data_utils.DatasetError, match="respdict"):
        call(synthetic_dir)


@pytest.mark.parametrize("source", ["trfiles", "report"])
def test_source_without_tr_path(synthetic_dir, source):
    """Measured sources without tr_path and without a default file ask for tr_path."""
    with pytest.raises(data_utils.DatasetError, match="tr_path"):
        data_utils.tr_times(synthetic_dir, "souls", tr_source=source)


def test_respdict_story_missing(synthetic_dir):
    """A story absent from respdict.json raises DatasetError naming it."""
    with pytest.raises(data_utils.DatasetError, match="nosuchstory"):
        data_utils.tr_times(synthetic_dir, "nosuchstory")


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
def test_tr_window_bounds_report(dataset_copy, sampling_rate, n_delays):
    """Row i ends at round((start of TR i + 10 + avgtr) * sr); all windows are (d + 1) * 2 s."""
    rows = data_utils.load_respdict(dataset_copy)[STORY] - 20
    folder, times = _write_story_report(dataset_copy, rows + 13)
    avgtr = (times[-1] - times[0]) / (len(times) - 1)
    expected_stops = [math.floor((times[i + 10] - SOUND_START + avgtr) * sampling_rate + 0.5)
                      for i in range(rows)]
    length = (n_delays + 1) * 2 * sampling_rate

    starts, stops = data_utils.tr_window_bounds(dataset_copy, STORY, sampling_rate, n_delays,
                                                tr_source="report", tr_path=folder)
    assert stops.dtype == np.int64 and starts.dtype == np.int64
    assert stops.tolist() == expected_stops
    assert (stops - starts).tolist() == [length] * rows


def test_tr_window_bounds_report_exact_trigger_count(dataset_copy):
    """rows + 10 triggers are just enough; one fewer raises DatasetError."""
    rows = data_utils.load_respdict(dataset_copy)[STORY] - 20
    folder, _ = _write_story_report(dataset_copy, rows + 10)
    starts, _ = data_utils.tr_window_bounds(dataset_copy, STORY, tr_source="report", tr_path=folder)
    assert len(starts) == rows
    _write_story_report(dataset_copy, rows + 9)
    with pytest.raises(data_utils.DatasetError, match=STORY):
        data_utils.tr_window_bounds(dataset_copy, STORY, tr_source="report", tr_path=folder)


def test_story_span_report(dataset_copy):
    """With report timing the rows end is the end of TR rows + 9 and the grid end that of the
    last trigger's TR, both from story onset (sound-start)."""
    rows = data_utils.load_respdict(dataset_copy)[STORY] - 20
    folder, times = _write_story_report(dataset_copy, rows + 13)
    avgtr = (times[-1] - times[0]) / (len(times) - 1)
    rows_end, grid_end = data_utils.story_span(dataset_copy, STORY, "report", folder)
    assert rows_end == pytest.approx(times[rows + 9] - SOUND_START + avgtr)
    assert grid_end == pytest.approx(times[-1] - SOUND_START + avgtr)
    assert data_utils.stimulus_problem(dataset_copy, STORY, rows_end - 1.9, None, "report",
                                       folder) is None
    problem = data_utils.stimulus_problem(dataset_copy, STORY, rows_end - 2.1, None, "report",
                                          folder)
    assert f"until {rows_end:.2f} s (report TR timing)" in problem
