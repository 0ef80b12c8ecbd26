"""run_utils.py: atomic writes, output folders that never lose a run, locks, model choice,
caches and the scripts' entry point."""

import argparse
import csv
import errno
import hashlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest

import run_utils


def _dead_pid():
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _tree(folder):
    """{relative path: bytes} of every file below ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _project_folder(folder, files):
    run_utils.mark_folder(folder, "test")
    for name, text in files.items():
        (folder / name).write_text(text)
    return _tree(folder)


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_output_never_leaves_partial_files(tmp_path):
    target = tmp_path / "result.npy"
    with pytest.raises(RuntimeError):
        with run_utils.atomic_output(target) as tmp:
            np.save(tmp, np.ones(3))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with run_utils.atomic_output(target) as tmp:
        np.save(tmp, np.ones(3))
    np.testing.assert_array_equal(np.load(target), np.ones(3))
    with pytest.raises(FileExistsError, match="--overwrite"):
        with run_utils.atomic_output(target):
            pass
    with run_utils.atomic_output(target, overwrite=True) as tmp:
        np.save(tmp, np.zeros(2))
    np.testing.assert_array_equal(np.load(target), np.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npy"]


def test_atomic_output_replaces_directories(tmp_path):
    target = tmp_path / "dataset"
    for content in ("first", "second"):
        with run_utils.atomic_output(target, overwrite=True) as tmp:
            tmp.mkdir()
            (tmp / "file.txt").write_text(content)
    assert (target / "file.txt").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_folder_swap_keeps_the_old_folder_until_the_new_one_is_in(tmp_path, monkeypatch):
    """A kill between the two renames leaves the old folder set aside; recover() restores it."""
    target = tmp_path / "last"
    target.mkdir()
    (target / "state.pt").write_text("epoch 1")
    renames = []
    real_replace = os.replace

    def replace_then_die(source, destination):
        renames.append((source, destination))
        if len(renames) == 2:  # old aside done, new not yet in
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(run_utils.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        with run_utils.atomic_output(target, overwrite=True) as tmp:
            tmp.mkdir()
            (tmp / "state.pt").write_text("epoch 2")
    monkeypatch.undo()
    assert not target.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".last.old")]
    assert len(aside) == 1 and (aside[0] / "state.pt").read_text() == "epoch 1"
    # the set-aside folder belongs to this (live) process here; as after a real kill, its
    # owner is gone when recover() runs
    aside[0].rename(tmp_path / f".last.old{_dead_pid()}")
    assert run_utils.recover(target)
    assert (target / "state.pt").read_text() == "epoch 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_recover_removes_temporaries_of_dead_processes_only(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    dead = tmp_path / f".results.tmp{_dead_pid()}"
    dead.mkdir()
    live_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".results.tmp{live_process.pid}"
        live.mkdir()
        old = tmp_path / f".results.old{_dead_pid()}"
        old.mkdir()
        assert not run_utils.recover(target)  # target exists: nothing to restore
        assert not dead.exists() and not old.exists() and live.exists()
    finally:
        live_process.kill()
        live_process.wait()


def test_write_json_and_csv(tmp_path):
    rows = [{"model": "a", "layer": 1, "value": 0.5}, {"model": "b", "layer": 1, "value": None}]
    run_utils.write_csv(tmp_path / "rows.csv", rows)
    with open(tmp_path / "rows.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == [
            {"model": "a", "layer": "1", "value": "0.5"}, {"model": "b", "layer": "1", "value": ""}]
    run_utils.write_json(tmp_path / "rows.json", {"rows": rows})
    assert json.loads((tmp_path / "rows.json").read_text()) == {"rows": rows}
    with pytest.raises(run_utils.OutputExistsError):
        run_utils.write_json(tmp_path / "rows.json", {})


def test_write_json_never_writes_nan_or_infinity(tmp_path):
    payload = {"loss": float("inf"), "r": np.float32("nan"), "rows": [1.5, -np.inf],
               "array": np.array([0.25, np.nan]), "count": np.int64(3), "ok": 0.5}
    run_utils.write_json(tmp_path / "x.json", payload)
    text = (tmp_path / "x.json").read_text()
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert strict == {"loss": None, "r": None, "rows": [1.5, None], "array": [0.25, None],
                      "count": 3, "ok": 0.5}


def test_run_config_stores_the_arguments_once():
    config = run_utils.run_config({"seed": 3}, subject="UTS01")
    assert config["arguments"] == {"seed": 3} and config["subject"] == "UTS01"
    assert "arguments" not in config["run"] and "command" in config["run"]


# ----------------------------------------------------------------------------- output folders

def test_output_folder_keeps_the_previous_run_when_the_new_one_fails(tmp_path):
    out = tmp_path / "results"
    before = _project_folder(out, {"results.json": "old", "voxels_layer3.npz": "old"})
    with pytest.raises(RuntimeError):
        with run_utils.output_folder(out, overwrite=True) as staging:
            (staging / "results.json").write_text("half")
            raise RuntimeError("the run failed")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_output_folder_replaces_the_whole_previous_run(tmp_path):
    out = tmp_path / "results"
    _project_folder(out, {"results.json": "old", "voxels_layer3.npz": "old"})
    with run_utils.output_folder(out, overwrite=True) as staging:
        (staging / "results.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [run_utils.RUN_MARKER, "results.json"]
    assert (out / "results.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # lock released


def test_output_folder_needs_overwrite_and_our_marker(tmp_path):
    out = tmp_path / "results"
    before = _project_folder(out, {"results.json": "old"})
    with pytest.raises(run_utils.OutputExistsError, match="--overwrite"):
        with run_utils.output_folder(out):
            pytest.fail("must not start")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_text("precious")
    with pytest.raises(run_utils.OutputExistsError, match="not written by brain-tuning"):
        with run_utils.output_folder(foreign, overwrite=True):
            pytest.fail("must not start")
    assert (foreign / "holiday.jpg").read_text() == "precious" and _tree(out) == before
    with run_utils.output_folder(tmp_path / "empty_or_new") as staging:
        (staging / "x").write_text("1")
    assert (tmp_path / "empty_or_new" / "x").exists()


def test_a_second_run_of_the_same_folder_stops_naming_the_holder(tmp_path, hold_lock):
    out = tmp_path / "results"
    pid = hold_lock(out)
    with pytest.raises(run_utils.OutputExistsError,
                       match=rf"in use by another run \(process {pid} "):
        with run_utils.output_folder(out, overwrite=True):
            pytest.fail("must not start")
    with pytest.raises(run_utils.OutputExistsError, match=rf"process {pid} "):
        run_utils.RunFolder(out).check(overwrite=True)
    assert not out.exists()


def test_the_lock_is_reentrant_within_a_run(tmp_path):
    out = tmp_path / "results"
    with run_utils.FolderLock(out) as lock:  # held for the run's life
        with run_utils.output_folder(out) as staging:  # the outputs, at the end
            (staging / "x").write_text("1")
        assert lock.path.exists()  # still held by the run
    assert not lock.path.exists() and (out / "x").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    out = tmp_path / "results"
    lock = run_utils.FolderLock(out)
    lock.path.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    with caplog.at_level(logging.WARNING), run_utils.output_folder(out) as staging:
        (staging / "x").write_text("1")
    assert "no longer runs" in caplog.text and not lock.path.exists()


@pytest.mark.parametrize("content", ['["not", "an", "object"]', '{"pid": "12"}', "7", ""])
def test_a_lock_file_holding_something_else_is_taken_over(tmp_path, caplog, content):
    """A lock file that does not say who holds it (another tool's, or damaged) is one warning
    and taken over, not a crash."""
    out = tmp_path / "results"
    lock = run_utils.FolderLock(out)
    lock.path.write_text(content)
    with caplog.at_level(logging.WARNING), run_utils.output_folder(out) as staging:
        (staging / "x").write_text("1")
    assert "taking over the lock" in caplog.text and (out / "x").exists()


def test_run_folder_replaces_an_old_run_only_when_started(tmp_path):
    folder = tmp_path / "run"
    before = _project_folder(folder, {"run_config.json": "old"})
    run = run_utils.RunFolder(folder).check(overwrite=True)
    assert _tree(folder) == before  # set-up happens here; a failure keeps the old run
    run.start()
    assert sorted(p.name for p in folder.iterdir()) == [run_utils.RUN_MARKER]
    run.release()
    with pytest.raises(run_utils.OutputExistsError, match="--resume"):
        run_utils.RunFolder(folder).check(overwrite=False)


def test_run_folder_resume_restores_a_stranded_state(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    aside = folder / f".last.old{_dead_pid()}"
    aside.mkdir()
    (aside / "training_state.pt").write_text("epoch 3")
    (folder / f".last.tmp{_dead_pid()}").mkdir()
    run = run_utils.RunFolder(folder)
    state = run.resume_from("last/training_state.pt")
    assert state.read_text() == "epoch 3"
    assert sorted(p.name for p in folder.iterdir()) == ["last"]
    run.release()


# ----------------------------------------------------------------------------- scripts

def test_main_turns_user_errors_into_one_line_and_status_1(caplog):
    def parse(argv):
        import argparse
        return argparse.Namespace(value=argv[0])

    def fails(args):
        raise run_utils.UsageError(f"bad value {args.value}; use another")

    with caplog.at_level(logging.ERROR):
        assert run_utils.main(parse, fails, ["x"]) == 1
    assert [r.getMessage() for r in caplog.records] == ["bad value x; use another"]
    assert run_utils.main(parse, lambda args: None, ["x"]) == 0
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: it keeps its traceback
        run_utils.main(parse, lambda args: 1 / 0, ["x"])


def test_main_turns_write_failures_into_one_line_and_keeps_earlier_files(tmp_path, caplog,
                                                                        monkeypatch):
    out = tmp_path / "results"
    out.mkdir()
    run_utils.write_json(out / "results.json", {"before": 1})
    out.chmod(0o500)  # read-only --save_dir
    if os.geteuid() == 0:  # root writes anyway: fail the write as the kernel would for others
        def refuse(self, *args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

        monkeypatch.setattr(run_utils.Path, "write_text", refuse)
    try:
        with caplog.at_level(logging.ERROR):
            status = run_utils.main(
                lambda argv: None,
                lambda args: run_utils.write_json(out / "results.json", {"after": 2},
                                                  overwrite=True))
    finally:
        out.chmod(0o700)
    assert status == 1
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"{out / 'results.json'}: Permission denied;")
    assert "choose another --save_dir" in message
    assert json.loads((out / "results.json").read_text()) == {"before": 1}


def test_write_failure_message_for_a_full_disk():
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/last/model.safetensors")
    message = run_utils.write_failure_message(err)
    assert message.startswith("/data/run/last/model.safetensors: No space left on device;")
    assert "free some space" in message


def test_a_writer_failing_on_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    def torch_like_writer(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")

    target = tmp_path / "training_state.pt"
    with pytest.raises(RuntimeError, match="enforce fail"):  # space left: a real error
        with run_utils.atomic_output(target) as tmp:
            torch_like_writer(tmp)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_utils.shutil, "disk_usage",
                        lambda path: usage._replace(free=4096))
    with pytest.raises(OSError) as caught:
        with run_utils.atomic_output(target) as tmp:
            torch_like_writer(tmp)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(run_utils.UsageError):  # our own errors pass unchanged
        with run_utils.atomic_output(target):
            raise run_utils.UsageError("bad flag")


def test_main_keeps_the_traceback_of_other_os_errors():
    def missing(args):
        open("/nonexistent/file/for/sure")

    with pytest.raises(FileNotFoundError):
        run_utils.main(lambda argv: None, missing)


# ----------------------------------------------------------------------------- model choice

def _checkpoint(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_models_to_evaluate(tmp_path):
    run = tmp_path / "runs" / "tuned"
    _checkpoint(run / "final")
    _checkpoint(run / "checkpoint-epoch2")
    other = _checkpoint(tmp_path / "other" / "final")
    models = run_utils.models_to_evaluate("base", [str(run), str(other)], str(run), ["2", "final"])
    assert models == [("pretrained", "base"), ("tuned/final", str(run / "final")),
                      ("other/final", str(other)), ("epoch 2", str(run / "checkpoint-epoch2")),
                      ("tuned/final#2", str(run / "final"))]
    # A checkpoint has the same label whichever flag names it (plots and tables agree).
    for flags in ({"model_paths": [str(run / "checkpoint-epoch2"), str(run)]},
                  {"logs_dir": str(run), "epochs": ["2", "final"]}):
        assert [label for label, _ in run_utils.models_to_evaluate("base", **flags)] == [
            "pretrained", "epoch 2", "final"]
    assert run_utils.resolve_checkpoint(run) == run / "final"
    with pytest.raises(run_utils.UsageError, match="checkpoint-epoch7: not found; the run has "
                                                   "checkpoint-epoch2, final"):
        run_utils.models_to_evaluate("base", logs_dir=str(run), epochs=["7"])
    with pytest.raises(run_utils.UsageError, match="nothing to evaluate"):
        run_utils.models_to_evaluate("base", skip_pretrained=True)
    labels = [label for label, _ in run_utils.models_to_evaluate("a", [str(run), str(run)])]
    assert labels == ["pretrained", "tuned/final", "tuned/final#2"]


def test_choose_layers():
    assert run_utils.choose_layers(None, 4) == [0, 1, 2, 3, 4]
    assert run_utils.choose_layers(None, 4, default=(2, 5, 7)) == [2]
    assert run_utils.choose_layers([3, 1, 3], 4) == [1, 3]
    with pytest.raises(run_utils.UsageError, match="--layers 9: the model has hidden states 0..4"):
        run_utils.choose_layers([1, 9], 4)


# ----------------------------------------------------------------------------- caches

def test_cache_path_depends_on_every_setting(tmp_path):
    first, text = run_utils.cache_path(tmp_path, "souls", {"a": 1, "b": [1, 2]}, model_key="f" * 64)
    same, _ = run_utils.cache_path(tmp_path, "souls", {"b": [1, 2], "a": 1}, model_key="f" * 64)
    other, _ = run_utils.cache_path(tmp_path, "souls", {"a": 2, "b": [1, 2]}, model_key="f" * 64)
    assert first == same != other
    assert first.parent == tmp_path / ("f" * run_utils.KEY_CHARS) and json.loads(text)["a"] == 1


def test_cached_arrays_compute_each_name_once_and_keep_earlier_ones(tmp_path):
    path = tmp_path / "cache.hf5"
    calls = []

    def compute(missing):
        calls.append(list(missing))
        return {name: np.full(3, name, np.float32) for name in missing}, {"times": np.arange(3)}

    values, extras = run_utils.cached_arrays(path, [1, 2], compute, "settings")
    np.testing.assert_array_equal(values[2], [2, 2, 2])
    values, extras = run_utils.cached_arrays(path, [2, 3], compute, "settings")
    values, extras = run_utils.cached_arrays(path, [1, 2, 3], compute, "settings")
    assert calls == [[1, 2], [3]]
    np.testing.assert_array_equal(values[1], [1, 1, 1])
    np.testing.assert_array_equal(extras["times"], np.arange(3))


@pytest.mark.parametrize("damage", ["zero bytes", "truncated"])
def test_cached_arrays_rebuild_an_unreadable_cache_file(tmp_path, caplog, damage):
    path = tmp_path / "cache.hf5"
    calls = []

    def compute(missing):
        calls.append(list(missing))
        return {name: np.full(3, name, np.float32) for name in missing}, {"times": np.arange(3)}

    run_utils.cached_arrays(path, [1, 2], compute, "settings")
    raw = path.read_bytes()
    path.write_bytes(b"" if damage == "zero bytes" else raw[:len(raw) // 3])
    with caplog.at_level(logging.WARNING):
        values, extras = run_utils.cached_arrays(path, [1, 2], compute, "settings")
    assert calls == [[1, 2], [1, 2]]
    assert any("unreadable" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)
    np.testing.assert_array_equal(values[2], [2, 2, 2])
    run_utils.cached_arrays(path, [1, 2], compute, "settings")  # the rebuilt file is read
    assert len(calls) == 2


@pytest.mark.parametrize("script, argv", [
    ("brain_evaluate", ["--help"]), ("brain_trainer_story", ["--help"]),
    ("data_utils", ["check", "--help"]), ("noise_ceilings", ["--help"]), ("report", ["--help"]),
    ("make_tiny", ["--help"]), ("synthetic_data", ["--help"]),
    ("target_features", ["speech", "--help"]), ("target_features", ["text", "--help"]),
    ("eval_asr", ["--help"]), ("reproduce", ["--help"]),
    ("synthetic_downstream", ["--help"]), ("eval_phonemes", ["--help"]),
    ("brain_regions", ["regions", "--help"]), ("brain_regions", ["map", "--help"])])
def test_every_command_line_prints_its_help(script, argv, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as stop:
        module.parse_args(argv) if hasattr(module, "parse_args") else module.main(argv)
    assert stop.value.code == 0
    assert "--" in capsys.readouterr().out


def test_a_file_replaced_with_its_size_and_time_kept_gets_another_identity(tmp_path):
    """``cp -p`` or ``rsync -a`` of another file of the same size keeps size and modification
    time: the content hash (whole, or sampled for a large file) still tells them apart."""
    for size in (1000, run_utils.HASH_WHOLE_BYTES + 5 * 2**20):
        path, other = tmp_path / "data.bin", tmp_path / "other.bin"
        rng = np.random.default_rng(size)
        path.write_bytes(rng.bytes(size))
        other.write_bytes(rng.bytes(size))
        before = run_utils.file_identity([path])
        stat = path.stat()
        shutil.copyfile(other, path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
        after = run_utils.file_identity([path])
        assert after["files"] == before["files"] and after["sha256"] != before["sha256"]
        assert after["sha256"] == [run_utils.content_hash(other)]
        if size < run_utils.HASH_WHOLE_BYTES:  # a small file: its size and all of it
            assert after["sha256"][0] == hashlib.sha256(
                str(size).encode() + path.read_bytes()).hexdigest()


def test_a_cache_is_not_written_onto_a_full_disk(tmp_path, monkeypatch):
    """h5py can crash the process (not raise) when the disk fills under it: the room is
    checked first, and a full disk is an OSError naming the cache file."""
    path = tmp_path / "cache.hf5"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_utils.shutil, "disk_usage",
                        lambda folder: usage._replace(free=1000))
    with pytest.raises(OSError) as full:
        run_utils.cached_arrays(path, [1], lambda missing: ({1: np.zeros(10**5)}, {}), "s")
    assert full.value.errno == errno.ENOSPC and full.value.filename == str(path)
    assert not path.exists() and not list(tmp_path.iterdir())
    assert "No space left" in run_utils.write_failure_message(full.value)


def test_a_file_in_the_way_of_an_output_folder_is_one_line(tmp_path, caplog):
    """--save_dir naming a file, or a folder where a lock file goes: one line, no traceback."""
    blocker = tmp_path / "results_file"
    blocker.write_text("not a folder")

    def write(args):
        run_utils.write_json(Path(args.value) / "run" / "results.json", {})

    parse = argparse.ArgumentParser()
    parse.add_argument("value")
    assert run_utils.main(parse.parse_args, write, [str(blocker)]) == 1
    assert "a file stands where a folder is wanted" in caplog.text
    assert "Traceback" not in caplog.text and blocker.read_text() == "not a folder"


def test_progress_off_a_terminal_logs_a_line_per_interval_and_one_at_the_end(monkeypatch,
                                                                             caplog):
    """In a log (stderr not a terminal) a bar logs its line every LOG_PROGRESS_S seconds and
    once at the end, never a carriage-return redraw; on a terminal it is tqdm's bar."""
    now = [0.0]  # a clock that advances 10 s per item
    monkeypatch.setattr("tqdm.std.time", lambda: now[0])
    with caplog.at_level(logging.INFO, logger="run_utils"):
        bar, items = run_utils.progress(range(12), desc="windows", unit="batch"), []
        for item in bar:
            items.append(item)
            now[0] += 10
            bar.set_postfix(loss=0.5)  # a refresh at every item, as the trainer's loss
    assert items == list(range(12))
    lines = [record.getMessage() for record in caplog.records]
    assert lines[-1].startswith("windows: 100%") and "12/12" in lines[-1]
    assert lines[-1].endswith(", loss=0.5]")
    # a line per 30 s of the 120 s, not one per item nor per refresh
    assert 3 <= len(lines) <= 120 // run_utils.LOG_PROGRESS_S + 1, lines
    assert not any("\r" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="run_utils"):
        list(run_utils.progress(range(3), desc="quiet", disable=True))
    assert not caplog.records
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = run_utils.progress(range(2), desc="terminal")
    assert not isinstance(bar, run_utils.LogProgress)
    bar.close()
