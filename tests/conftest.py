"""Shared fixtures: a small synthetic ds003020 copy, generated once per test session."""

import shutil

import pytest

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
