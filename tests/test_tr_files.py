"""TR files (tr_files.py): ``TRFile`` and the ``.report`` files of scanner triggers, and the
research code's pickles (``trfiles_huge.jbl``/``grids_huge.jbl``) loaded by an unpickler that
refuses anything but their data."""

import os
import sys
import types

import joblib
import numpy as np
import pytest

import tr_files
from run_utils import DatasetError
from tr_samples import (REPORT, REPORT_TRIGGERS, RESEARCH_GRID, TRIGGERS, huth_modules,
                        research_grid, research_tier, research_trfile, write_report)


@pytest.fixture(autouse=True)
def _fresh_pickle_cache():
    """Each test loads pickles from disk, not from a previous test's cache."""
    tr_files._load_research_pickle_cached.cache_clear()
    yield
    tr_files._load_research_pickle_cached.cache_clear()


# ----------------------------------------------------------------------------- TRFile

def test_simulated_grid():
    """Trigger k at k * tr, the sound starting at sound_start: starts k * tr - sound_start."""
    trfile = tr_files.TRFile.simulated(6, 2.0, 10.0)
    assert trfile.trtimes == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert (trfile.soundstarttime, trfile.expectedtr, trfile.avgtr) == (10.0, 2.0, 2.0)
    np.testing.assert_array_equal(trfile.tr_starts(), 2.0 * np.arange(6) - 10.0)
    np.testing.assert_array_equal(trfile.tr_centres(), 2.0 * np.arange(6) - 9.0)
    other = tr_files.TRFile.simulated(3, 1.5, 0.0)
    np.testing.assert_array_equal(other.tr_centres(), [0.75, 2.25, 3.75])
    with pytest.raises(TypeError):
        tr_files.TRFile.simulated(6)  # the grid is the caller's: no default TR or onset


# ----------------------------------------------------------------------------- .report files

def test_from_report_fields(tmp_path):
    """Triggers, sound start/stop and other labels are read from '<time> <label>' lines."""
    trfile = tr_files.TRFile.from_report(write_report(tmp_path, REPORT))
    assert trfile.trtimes == REPORT_TRIGGERS
    assert trfile.soundstarttime == 5.3
    assert trfile.soundstoptime == 14.9
    assert trfile.otherlabels == [(9.1, "volume-change 0.8")]
    assert trfile.expectedtr == 2.0045


def test_from_report_timing(tmp_path):
    """Starts are trigger - sound start, avgtr the mean spacing, centres start + avgtr / 2."""
    trfile = tr_files.TRFile.from_report(write_report(tmp_path, REPORT))
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
    trfile = tr_files.TRFile.from_report(path)
    assert trfile.trtimes == REPORT_TRIGGERS
    assert trfile.soundstarttime == 5.3


def test_from_report_reinserts_missed_trigger(tmp_path):
    """A gap of about two TRs gets the missed trigger back at previous + expectedtr."""
    path = write_report(tmp_path, REPORT.replace("6.0135 trigger\n", ""))
    trfile = tr_files.TRFile.from_report(path)
    expected = [0.0, 2.0046, 4.0090, 4.0090 + 2.0045, 8.0181, 10.0226, 12.0270, 14.0316]
    np.testing.assert_allclose(trfile.trtimes, expected, rtol=0, atol=1e-12)
    trfile = tr_files.TRFile.from_report(path, expectedtr=2.0)
    assert trfile.trtimes[3] == pytest.approx(6.009, abs=1e-12)
    assert len(trfile.trtimes) == 8


def test_from_report_reinserts_two_missed_triggers(tmp_path):
    """Two separate missed triggers in a longer run are both re-inserted in place."""
    times = [round(0.3 + 2.0045 * k + 0.0004 * ((3 * k) % 5 - 2), 4) for k in range(40)]
    kept = [t for k, t in enumerate(times) if k not in (10, 25)]
    lines = ["12.5000 sound-start"] + [f"{t:.4f} trigger" for t in kept]
    trfile = tr_files.TRFile.from_report(write_report(tmp_path, "\n".join(lines) + "\n"))
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
    trfile = tr_files.TRFile.from_report(write_report(tmp_path, "\n".join(lines) + "\n"))
    np.testing.assert_allclose(trfile.trtimes, 2.0045 * np.arange(8), atol=1e-9)


def test_from_report_consecutive_missed_triggers(tmp_path):
    """A gap of three TRs gets both missing triggers back."""
    kept = [2.0045 * k for k in range(12) if k not in (5, 6)]
    lines = ["0.5 sound-start"] + [f"{t:.4f} trigger" for t in kept]
    trfile = tr_files.TRFile.from_report(write_report(tmp_path, "\n".join(lines) + "\n"))
    np.testing.assert_allclose(trfile.trtimes, 2.0045 * np.arange(12), atol=2e-4)


def test_from_report_malformed_line(tmp_path):
    """A line whose first field is not a time names the file and its line number."""
    path = write_report(tmp_path, "0.0000 init-trigger\n\n2.0046 trigger\nabc trigger\n"
                                  "5.3 sound-start\n")
    with pytest.raises(DatasetError) as excinfo:
        tr_files.TRFile.from_report(path)
    assert f"{path}:4" in str(excinfo.value)


@pytest.mark.parametrize("text", [
    REPORT.replace("5.3000 sound-start\n", ""),
    "0.0000 init-trigger\n1.0 sound-start\n",
    "",
], ids=["no-sound-start", "one-trigger", "empty"])
def test_from_report_incomplete(tmp_path, text):
    """Without a sound-start line or two triggers the report is refused, naming the file."""
    path = write_report(tmp_path, text)
    with pytest.raises(DatasetError) as excinfo:
        tr_files.TRFile.from_report(path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("triggers", ["0.0 trigger\n2.0 trigger\n1.9 trigger\n",
                                      "0.0 trigger\n2.0 trigger\n2.0 trigger\n"])
def test_trigger_times_that_do_not_increase_are_refused(tmp_path, triggers):
    """A report whose triggers go back in time would put every feature at the wrong TR."""
    path = write_report(tmp_path, triggers + "1.0 sound-start\n")
    with pytest.raises(DatasetError, match="trigger times do not increase") as excinfo:
        tr_files.TRFile.from_report(path)
    assert str(path) in str(excinfo.value)
    with pytest.raises(DatasetError, match="at least two finite trigger times"):
        tr_files.checked(tr_files.TRFile([0.0, np.nan], 0.0), "pickle [souls]")


# ----------------------------------------------------------------------------- research pickles

COMPRESSIONS = [0, 3, ("zlib", 3), ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)]


@pytest.mark.parametrize("compress", COMPRESSIONS, ids=str)
def test_research_pickles_round_trip(tmp_path, monkeypatch, compress):
    """Pickled research TextGrids and TRFiles load without their modules, in any joblib format."""
    with huth_modules(monkeypatch) as classes:
        grids = {"souls": research_grid(classes), "life": research_grid(classes, 1.0)}
        trfiles = {"souls": [research_trfile(classes)], "life": [research_trfile(classes, 1.0)]}
        joblib.dump(grids, tmp_path / "grids_huge.jbl", compress=compress)
        joblib.dump(trfiles, tmp_path / "trfiles_huge.jbl", compress=compress)

    assert tr_files.load_research_grid(tmp_path / "grids_huge.jbl", "souls") == RESEARCH_GRID
    assert tr_files.load_research_grid(tmp_path / "grids_huge.jbl", "life")["word"][1] == (
        0.5, 3.3, "hello")

    loaded = tr_files.load_research_pickle(tmp_path / "trfiles_huge.jbl")
    assert set(loaded) == {"souls", "life"}
    trfile = loaded["souls"][0]
    assert isinstance(trfile, tr_files.TRFile)
    assert [float(t) for t in trfile.trtimes] == TRIGGERS
    assert trfile.soundstarttime == 3.25
    assert trfile.soundstoptime == 11.5
    assert trfile.otherlabels == [(7.0, "volume")]
    assert trfile.expectedtr == 2.0045

    starts = np.array(TRIGGERS) - 3.25
    avgtr = (TRIGGERS[-1] - TRIGGERS[0]) / (len(TRIGGERS) - 1)
    times = trfile.tr_centres()
    assert times.dtype == np.float64
    np.testing.assert_allclose(times, starts + avgtr / 2, rtol=0, atol=1e-12)
    life = loaded["life"][0].tr_centres()
    np.testing.assert_allclose(life, starts + 1.0 + avgtr / 2, rtol=0, atol=1e-12)


def test_research_grid_repeated_tier_names(tmp_path, monkeypatch):
    """Like load_textgrid, a repeated tier name keeps both tiers: "word" and "word#2"."""
    with huth_modules(monkeypatch) as classes:
        grid = classes.TextGrid()
        grid.tiers = [research_tier(classes, "word", "IntervalTier", [("0", "1", "first")]),
                      research_tier(classes, "word", "IntervalTier", [("0", "1", "second")])]
        joblib.dump({"souls": grid}, tmp_path / "grids.jbl")
    assert tr_files.load_research_grid(tmp_path / "grids.jbl", "souls") == {
        "word": [(0.0, 1.0, "first")], "word#2": [(0.0, 1.0, "second")]}


def test_story_missing_from_grids_pickle(tmp_path, monkeypatch):
    """Asking a grids pickle for a story it lacks raises DatasetError naming the story."""
    with huth_modules(monkeypatch) as classes:
        joblib.dump({"souls": research_grid(classes)}, tmp_path / "grids.jbl")
    with pytest.raises(DatasetError, match="stagefright"):
        tr_files.load_research_grid(tmp_path / "grids.jbl", "stagefright")


@pytest.mark.parametrize("data", [b"", b"\x80\x04\x95", b"not a pickle at all", b"\x78\x9cgarbage"],
                         ids=["empty", "truncated", "text", "bad-zlib"])
def test_unreadable_research_pickle(tmp_path, data):
    """Damaged or foreign files raise DatasetError naming the file."""
    path = tmp_path / "trfiles_huge.jbl"
    path.write_bytes(data)
    with pytest.raises(DatasetError) as excinfo:
        tr_files.load_research_pickle(path)
    assert str(path) in str(excinfo.value)


def test_missing_research_pickle(tmp_path):
    """A pickle path that does not exist raises DatasetError naming it."""
    with pytest.raises(DatasetError, match="absent.jbl"):
        tr_files.load_research_pickle(tmp_path / "absent.jbl")


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
        tr_files.load_research_pickle(path)
        raised = False
    except DatasetError:
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
        with huth_modules(monkeypatch) as classes:
            payload = {"souls": [research_trfile(classes), module.Payload()]}
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
