"""Response matrices in HDF5 files: read only the voxel columns asked for, as float32 with NaN
read as 0 (infinities refused), in blocks that bound the memory; shapes from metadata; unreadable files and failed
reads are a ``DatasetError`` naming the file.
"""

import contextlib

import h5py
import numpy as np

from run_utils import DatasetError

HDF5_BLOCK_BYTES = 64 * 2**20  # at most this much of a file is read at a time


@contextlib.contextmanager
def open_hdf5(path):
    """Open an HDF5 file for reading; unreadable files and failed reads become DatasetError."""
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: unreadable HDF5 ({err}); the file is incomplete or corrupt, "
                           "download it again") from None
    try:
        with handle:
            yield handle
    except OSError as err:
        raise DatasetError(f"{path}: reading failed ({err}); the file is incomplete or corrupt, "
                           "download it again") from None


def hdf5_dataset(handle, name, path, ndim=None):
    """The HDF5 dataset ``name`` (with ``ndim`` axes, if given), or a DatasetError."""
    if name not in handle or not isinstance(handle[name], h5py.Dataset):
        raise DatasetError(f"{path}: no dataset {name!r} (found: {', '.join(handle.keys()) or 'none'})")
    dataset = handle[name]
    if ndim is not None and dataset.ndim != ndim:
        raise DatasetError(f"{path}: dataset {name!r} has shape {dataset.shape}, expected {ndim} axes")
    if dataset.dtype.kind not in "iuf":  # bool is a mask, not a response
        raise DatasetError(f"{path}: dataset {name!r} holds {dataset.dtype} values, not numbers; "
                           "the file is damaged or not a response file: download it again")
    return dataset


def voxel_columns(voxels, n_voxels, path):
    """Validate a voxel selection (indices or boolean mask) against a file's voxel count."""
    if voxels is None:
        return None
    voxels = np.asarray(voxels)
    if voxels.dtype == bool:
        if voxels.shape != (n_voxels,):
            raise DatasetError(f"{path}: boolean voxel mask has shape {voxels.shape} but the file "
                               f"has {n_voxels} voxels; the mask was made for another subject")
        return np.flatnonzero(voxels)
    if voxels.ndim != 1 or not (voxels.size == 0 or np.issubdtype(voxels.dtype, np.integer)):
        raise DatasetError("voxels must be a 1-D array of integer indices or a boolean mask, "
                           f"got dtype {voxels.dtype} and shape {voxels.shape}")
    voxels = voxels.astype(np.intp)
    if voxels.size and (voxels.min() < 0 or voxels.max() >= n_voxels):
        raise DatasetError(f"{path}: voxel indices {voxels.min()}..{voxels.max()} are outside the "
                           f"file's {n_voxels} voxels; the selection was made for another subject")
    return voxels


def read_columns(dataset, columns=None, block_bytes=HDF5_BLOCK_BYTES):
    """``dataset[..., columns]`` as float32 with non-finite values set to 0.

    Reads blocks of rows that span only ``columns.min() .. columns.max()`` and hold at most
    ``block_bytes``, so memory stays at the float32 output plus one block: the full float64
    matrix is never loaded when a subset of voxels is asked for.

    Parameters
    ----------
    dataset : h5py.Dataset (or array-like with ``shape``, ``dtype`` and slicing), >= 2 axes
    columns : (n_selected,) int array or None (all columns)
    """
    shape = dataset.shape
    n_rows, n_columns = shape[-2], shape[-1]
    if columns is None:
        first, stop, take = 0, n_columns, None
    elif len(columns) == 0:
        return np.zeros(shape[:-1] + (0,), np.float32)
    else:
        first, stop = int(columns.min()), int(columns.max()) + 1
        take = columns - first
    out = np.empty(shape[:-1] + (n_columns if take is None else len(take),), np.float32)
    rows_per_block = max(1, block_bytes // (dataset.dtype.itemsize * (stop - first)))
    for lead in np.ndindex(*shape[:-2]):
        for row in range(0, n_rows, rows_per_block):
            rows = slice(row, min(row + rows_per_block, n_rows))
            block = np.asarray(dataset[lead + (rows, slice(first, stop))])
            out[lead + (rows,)] = block if take is None else block[:, take]
    out[np.isnan(out)] = 0.0
    return out


def _refuse_infinities(values, path, name):
    """NaN marks a missing value (read as 0, as the authors' loaders do); an infinity cannot come
    from z-scored responses, and reading it as any number would be silently wrong."""
    count = int(np.isinf(values).sum())
    if count:
        raise DatasetError(f"{path}: dataset {name!r} holds {count} infinite values; the file is "
                           "damaged: download it again")


def read_matrix(path, name, ndim, voxels=None):
    """The columns ``voxels`` (None: all; indices or a boolean mask, checked against the file)
    of the ``ndim``-axis dataset ``name`` of an HDF5 file, as ``read_columns`` reads them."""
    with open_hdf5(path) as handle:
        dataset = hdf5_dataset(handle, name, path, ndim=ndim)
        values = read_columns(dataset, voxel_columns(voxels, dataset.shape[-1], path))
    _refuse_infinities(values, path, name)
    return values


def hdf5_shape(path, name="data"):
    """Shape of a dataset in an HDF5 file, read from metadata only."""
    with open_hdf5(path) as handle:
        return hdf5_dataset(handle, name, path).shape


def constant_voxel_counts(path):
    """(constant voxels, all-NaN voxels) of a response file's ``data``, NaN read as 0 as the
    loaders do; read in row blocks of at most ``HDF5_BLOCK_BYTES``."""
    with open_hdf5(path) as handle:
        dataset = hdf5_dataset(handle, "data", path, ndim=2)
        n_rows, n_voxels = dataset.shape
        missing = np.zeros(n_voxels, np.int64)
        low, high = np.full(n_voxels, np.inf), np.full(n_voxels, -np.inf)
        rows_per_block = max(1, HDF5_BLOCK_BYTES // (dataset.dtype.itemsize * max(1, n_voxels)))
        for row in range(0, n_rows, rows_per_block):
            block = np.asarray(dataset[row:row + rows_per_block], dtype=np.float64)
            _refuse_infinities(block, path, "data")
            finite = np.isfinite(block)
            missing += (~finite).sum(axis=0)
            block[~finite] = 0.0
            low, high = np.minimum(low, block.min(axis=0)), np.maximum(high, block.max(axis=0))
    return int((low == high).sum()), int((missing == n_rows).sum())

