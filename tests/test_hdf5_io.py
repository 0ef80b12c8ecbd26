"""Response matrices read by hdf5_io: the requested columns in bounded blocks, NaN read as 0, infinities and non-numbers refused."""

import re

import h5py
import numpy as np
import pytest

import hdf5_io
from run_utils import DatasetError


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
    out = hdf5_io.read_columns(dataset, columns, block_bytes=block_bytes)
    np.testing.assert_array_equal(out, array[..., columns].astype(np.float32))
    assert out.dtype == np.float32
    assert all(shape[-1] == 400 - 120 + 1 and np.prod(shape) * 8 <= block_bytes
               for shape in dataset.reads)
    assert sum(np.prod(shape) for shape in dataset.reads) == 3 * 50 * 281


def test_read_columns_zeroes_nan():
    array = np.array([[1.0, np.nan], [np.nan, -2.0]])
    np.testing.assert_array_equal(hdf5_io.read_columns(array), [[1, 0], [0, -2]])


@pytest.mark.parametrize("name", ["data", "individual_repeats"])
def test_infinite_responses_refuse_the_file(tmp_path, name):
    path = tmp_path / "story.hf5"
    values = np.ones((2, 4, 3)) if name == "individual_repeats" else np.ones((4, 3))
    values[..., 1, 2] = np.inf
    with h5py.File(path, "w") as handle:
        handle[name] = values
    count = int(np.isinf(values).sum())
    with pytest.raises(DatasetError, match=f"{re.escape(str(path))}: dataset '{name}' holds "
                                           f"{count} infinite values"):
        hdf5_io.read_matrix(path, name, values.ndim)


def test_boolean_responses_are_not_numbers(tmp_path):
    path = tmp_path / "story.hf5"
    with h5py.File(path, "w") as handle:
        handle["data"] = np.ones((4, 3), bool)
    with pytest.raises(DatasetError, match="holds bool values, not numbers"):
        hdf5_io.read_matrix(path, "data", 2)
