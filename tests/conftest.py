"""Shared fixtures: a small synthetic ds003020 copy, generated once per test session."""

import os
import shutil
import subprocess
import sys

import pytest

import run_utils
import synthetic_data

# 311 TRs give the 291 test rows of the real wheretheressmoke.
SMALL_DATASET = dict(seed=3, subjects=(1, 2), n_train_stories=4, train_trs=44, test_trs=311,
                     n_voxels=120, n_words=24)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """Read-only synthetic dataset (do not modify; copy it with ``dataset_copy``)."""
    out = tmp_path_factory.mktemp("synthetic") / "ds003020"
    synthetic_data.generate(out, **SMALL_DATASET)
    return out


@pytest.fixture()
def dataset_copy(synthetic_dir, tmp_path):
    """A private copy of the synthetic dataset that a test may damage."""
    copy = tmp_path / "ds003020"
    shutil.copytree(synthetic_dir, copy)
    return copy


@pytest.fixture()
def hold_lock():
    """``hold_lock(folder)`` makes another live process take ``folder``'s run lock (as a second
    run of that folder would) and returns its pid; the process ends with the test."""
    processes = []
    script = ("import sys, time, run_utils; run_utils.FolderLock(sys.argv[1]).acquire(); "
              "print('locked', flush=True); time.sleep(120)")

    def hold(folder):
        process = subprocess.Popen([sys.executable, "-c", script, str(folder)],
                                   stdout=subprocess.PIPE, text=True,
                                   cwd=os.path.dirname(run_utils.__file__))
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process.pid

    yield hold
    for process in processes:
        process.kill()
        process.wait()
