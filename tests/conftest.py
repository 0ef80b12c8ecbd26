"""Shared fixtures: a small synthetic ds003020 copy, generated once per test session, and one
whose anatomy is pycortex's sample subject S1."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import run_utils
import synthetic_data

# 311 TRs give the 291 test rows of the real wheretheressmoke.
SMALL_DATASET = dict(seed=3, subjects=(1, 2), n_train_stories=4, train_trs=44, test_trs=311,
                     n_voxels=120, n_words=24)


@pytest.fixture(scope="session", autouse=True)
def ceilings_outside_the_repository(tmp_path_factory):
    """A run without --nc_path writes the ceiling it computes into subject_NCs/: in tests that
    folder is a temporary one, so a test never leaves a ceiling that a user's run would read."""
    import noise_ceilings

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(noise_ceilings, "NC_DIR", tmp_path_factory.mktemp("subject_NCs"))
        yield


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """Read-only synthetic dataset (do not modify; copy it with ``dataset_copy``)."""
    out = tmp_path_factory.mktemp("synthetic") / "ds003020"
    synthetic_data.generate(out, **SMALL_DATASET)
    return out


@pytest.fixture(scope="session")
def s1_dataset(tmp_path_factory):
    """(dataset root, cache folder): a synthetic UTS01 with as many voxels as the thick mask of
    pycortex's sample subject S1 (80,615), whose ``derivative/pycortex-db/UTS01`` is S1 laid out
    as ds003020's (its transform ``fullhead`` named ``UTS01_auto``). The cache keeps pycortex's
    slow steps (mask, nearest vertices, flat-map pixels) across the tests. Read-only."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycortex prints "Inkscape not found"
        import cortex  # make setup installs pycortex
    sample = Path(cortex.options.config.get("basic", "filestore")) / "S1"
    root = tmp_path_factory.mktemp("s1") / "ds003020"
    synthetic_data.generate(root, seed=5, subjects=(1,), n_train_stories=2, train_trs=40,
                            test_trs=90, n_voxels=S1_THICK_VOXELS, n_words=10)
    subject = root / "derivative" / "pycortex-db" / "UTS01"
    shutil.copytree(sample, subject, ignore=shutil.ignore_patterns("cache", "views"))
    (subject / "transforms" / "fullhead").rename(subject / "transforms" / "UTS01_auto")
    (root / "derivative" / "subject_xfms.json").write_text(json.dumps({"UTS01": "UTS01_auto"}))
    return root, root.parent / "cache"


S1_THICK_VOXELS = 80615  # voxels of S1's fullhead mask_thick


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``): tiny
    models' operations are too small to share out, and on a busy 2-core machine two threads
    wait on each other (10x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
