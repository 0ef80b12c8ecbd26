"""Evaluation maths: noise ceilings and normalised correlations (Schoppe et al. 2016).

With N repeats ``y_r`` of a response (each of unit variance), ``y`` their mean and variances
over time with ddof=1 (SPEC section 4)::

    SP = (N var(y) - 1) / (N - 1)                   signal power
    cc_max = 1 / sqrt(1 + (1/N) (1/SP - 1))         noise ceiling, 0 where SP <= 0
    cc_norm = pearson(y, prediction) / cc_max

``python eval_utils.py noise-ceiling --data_dir D --subject S`` writes a subject's ceiling to
``subject_NCs/UTS0S.npy``.
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import data_utils

logger = logging.getLogger(__name__)

NC_DIR = Path(__file__).resolve().parent / "subject_NCs"


def _float_dtype(*arrays):
    return np.result_type(*(np.asarray(a).dtype for a in arrays), np.float32)


def column_correlation(x, y):
    """Pearson correlation of matching columns.

    Parameters
    ----------
    x, y : (n_samples, n_columns) arrays

    Returns
    -------
    (n_columns,) in the inputs' float dtype (computed in float64); 0 where a column is constant.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"column_correlation needs two (samples, columns) arrays of one shape, "
                         f"got {x.shape} and {y.shape}")
    xc = x - x.mean(axis=0, dtype=np.float64)
    yc = y - y.mean(axis=0, dtype=np.float64)
    denominator = np.sqrt((xc ** 2).sum(axis=0) * (yc ** 2).sum(axis=0))
    numerator = (xc * yc).sum(axis=0)
    corr = np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator > 0)
    return corr.astype(_float_dtype(x, y))


def _signal_power(repeats, data_norm):
    """Mean response (float64), its variance, the signal power and the total power per voxel."""
    repeats = np.asarray(repeats)
    if repeats.ndim != 3:
        raise ValueError(f"repeats must be (repeats, time, voxels), got shape {repeats.shape}")
    n_repeats = repeats.shape[0]
    if n_repeats < 2 or repeats.shape[1] < 2:
        raise ValueError(f"need at least 2 repeats of at least 2 time points, got {repeats.shape}")
    mean = repeats.mean(axis=0, dtype=np.float64)
    var_mean = mean.var(axis=0, ddof=1)
    if data_norm:
        total_power = np.ones_like(var_mean)
    else:
        total_power = np.mean([r.var(axis=0, ddof=1, dtype=np.float64) for r in repeats], axis=0)
    signal_power = (n_repeats * var_mean - total_power) / (n_repeats - 1)
    return mean, var_mean, signal_power, total_power


def _cc_max(signal_power, total_power, n_repeats):
    positive = signal_power > 0
    ratio = np.divide(total_power, signal_power, out=np.ones_like(signal_power), where=positive)
    return np.where(positive, 1.0 / np.sqrt(1.0 + (ratio - 1.0) / n_repeats), 0.0)


def noise_ceiling(repeats, data_norm=True):
    """Per-voxel noise ceiling cc_max (Schoppe et al. 2016) from repeated responses.

    Parameters
    ----------
    repeats : (n_repeats, n_time, n_voxels) array
    data_norm : bool
        True (default, as the published ``subject_NCs`` files): each repeat has unit variance,
        as ds003020's z-scored responses do. False: use the measured variance of each repeat.

    Returns
    -------
    (n_voxels,) in the input's float dtype; 0 where the signal power is not positive.
    """
    _, _, signal_power, total_power = _signal_power(repeats, data_norm)
    cc_max = _cc_max(signal_power, total_power, np.shape(repeats)[0])
    return cc_max.astype(_float_dtype(repeats))


def spe_and_cc_norm(repeats, prediction, data_norm=True, max_flooring=None):
    """Signal power explained and normalised correlation of a prediction (Schoppe et al. 2016).

    Parameters
    ----------
    repeats : (n_repeats, n_time, n_voxels) array
    prediction : (n_time, n_voxels) array
    data_norm : see ``noise_ceiling``
    max_flooring : float or None
        If given, cc_norm divides by ``max(cc_max, max_flooring)`` so that voxels with a tiny
        ceiling do not blow up.

    Returns
    -------
    spe, cc_norm, cc_max, corr : (n_voxels,) each, in the inputs' float dtype. spe and cc_norm
        are 0 where the signal power (or the divisor) is not positive; corr is the raw Pearson
        correlation of the mean response with the prediction (0 for constant columns).
    """
    prediction = np.asarray(prediction)
    mean, var_mean, signal_power, total_power = _signal_power(repeats, data_norm)
    if prediction.shape != mean.shape:
        raise ValueError(f"prediction has shape {prediction.shape} but the repeats give "
                         f"(time, voxels) = {mean.shape}")
    cc_max = _cc_max(signal_power, total_power, np.shape(repeats)[0])
    residual_var = (mean - prediction).var(axis=0, ddof=1)
    spe = np.divide(var_mean - residual_var, signal_power, out=np.zeros_like(var_mean),
                    where=signal_power > 0)
    corr = column_correlation(mean, prediction.astype(np.float64))
    divisor = cc_max if max_flooring is None else np.maximum(cc_max, max_flooring)
    cc_norm = np.divide(corr, divisor, out=np.zeros_like(corr), where=divisor > 0)
    dtype = _float_dtype(repeats, prediction)
    return tuple(a.astype(dtype) for a in (spe, cc_norm, cc_max, corr))


# ----------------------------------------------------------------------------- NC files

def default_nc_path(subject):
    """``subject_NCs/UTS0N.npy`` in this repository."""
    return NC_DIR / f"{data_utils.subject_id(subject)}.npy"


def compute_subject_noise_ceiling(data_dir, subject, story=data_utils.TEST_STORY,
                                  data_norm=True, voxel_batch=20000):
    """Noise ceiling of every voxel of a subject from the test story's repeats.

    Reads the repeats ``voxel_batch`` voxels at a time. Returns ((n_voxels,) float64, n_repeats).
    """
    path = data_utils.response_path(data_dir, subject, story)
    shape = data_utils.hdf5_shape(path, "individual_repeats")
    if len(shape) != 3:
        raise data_utils.DatasetError(f"{path}: 'individual_repeats' has shape {shape}, expected "
                                      "(repeats, rows, voxels)")
    n_voxels = shape[2]
    cc_max = np.empty(n_voxels, np.float64)
    batches = range(0, n_voxels, voxel_batch)
    for first in tqdm(batches, desc=f"noise ceiling {data_utils.subject_id(subject)}",
                      unit="batch", disable=len(batches) < 2):
        voxels = np.arange(first, min(first + voxel_batch, n_voxels))
        repeats = data_utils.load_repeats(data_dir, subject, story, voxels)
        cc_max[voxels] = noise_ceiling(repeats, data_norm)
    return cc_max, shape[0]


def save_noise_ceiling(path, cc_max, metadata, overwrite=False):
    """Write a noise-ceiling file (float64 .npy) and its provenance JSON, both atomically."""
    path = Path(path)
    with data_utils.atomic_output(path, overwrite) as tmp:
        np.save(tmp, np.asarray(cc_max, dtype=np.float64))
    data_utils.write_json(path.with_suffix(".json"), metadata, overwrite=True)


def load_noise_ceiling(path, n_voxels=None):
    """Read a noise-ceiling file: (n_voxels,) float64, checked against the data's voxel count."""
    path = Path(path)
    try:
        cc_max = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise data_utils.DatasetError(f"{path}: unreadable noise-ceiling file ({err}); make it "
                                      "again with `python eval_utils.py noise-ceiling`") from None
    if cc_max.ndim != 1:
        raise data_utils.DatasetError(f"{path}: expected one value per voxel, got shape "
                                      f"{cc_max.shape}")
    if n_voxels is not None and cc_max.shape[0] != n_voxels:
        raise data_utils.DatasetError(
            f"{path}: {cc_max.shape[0]} voxels but the subject's responses have {n_voxels}; the "
            "file belongs to another subject or dataset: pass the right --nc_path or delete it "
            "to recompute it from the test-story repeats")
    return cc_max.astype(np.float64, copy=False)


def get_noise_ceiling(data_dir, subject, nc_path=None, story=data_utils.TEST_STORY):
    """A subject's noise ceiling from ``nc_path`` (default ``subject_NCs/UTS0N.npy``).

    When the file is missing it is computed from the test story's repeats and saved there,
    with a log line saying so. Returns (n_voxels,) float64.
    """
    path = Path(nc_path) if nc_path is not None else default_nc_path(subject)
    n_voxels = data_utils.hdf5_shape(data_utils.response_path(data_dir, subject, story))[1]
    if path.exists():
        return load_noise_ceiling(path, n_voxels)
    logger.info("%s not found: computing the noise ceiling of %s from the repeats of %s and "
                "saving it there", path, data_utils.subject_id(subject), story)
    cc_max, n_repeats = compute_subject_noise_ceiling(data_dir, subject, story)
    save_noise_ceiling(path, cc_max, _nc_metadata(data_dir, subject, story, n_repeats, True, cc_max))
    return cc_max


def _nc_metadata(data_dir, subject, story, n_repeats, data_norm, cc_max, args=None):
    return {
        "what": "per-voxel noise ceiling cc_max (Schoppe et al. 2016), 0 where SP <= 0",
        "subject": data_utils.subject_id(subject),
        "data_dir": str(Path(data_dir).resolve()),
        "story": story,
        "n_repeats": int(n_repeats),
        "n_voxels": int(cc_max.shape[0]),
        "data_norm": data_norm,
        "voxels_above": {str(t): int((cc_max > t).sum()) for t in (0.2, 0.4, 0.6)},
        "mean_cc_max": float(cc_max.mean()),
        "run": data_utils.run_metadata(args),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="Evaluation utilities for brain-tuning.")
    commands = parser.add_subparsers(dest="command", required=True)
    nc = commands.add_parser(
        "noise-ceiling", help="compute a subject's per-voxel noise ceiling",
        description="Compute each voxel's noise ceiling cc_max (Schoppe et al. 2016) from the "
                    "individual repeats of the test story and save it as a float64 .npy file "
                    "(one value per voxel, 0 where the signal power is not positive), with a "
                    ".json file beside it that records how it was made.")
    nc.add_argument("--data_dir", required=True,
                    help="ds003020 root: the folder holding stimuli/ and derivative/")
    nc.add_argument("--subject", required=True, help="subject: 1, '1' or UTS01")
    nc.add_argument("--story", default=data_utils.TEST_STORY,
                    help="story with an 'individual_repeats' dataset (default: %(default)s)")
    nc.add_argument("--out", default=None,
                    help="output .npy path (default: subject_NCs/UTS0N.npy in this repository)")
    nc.add_argument("--no_data_norm", action="store_true",
                    help="use each repeat's measured variance instead of assuming unit variance "
                         "(the published files assume unit variance)")
    nc.add_argument("--voxel_batch", type=int, default=20000,
                    help="voxels read and processed at a time; lower it to save memory "
                         "(default: %(default)s)")
    nc.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out) if args.out else default_nc_path(args.subject)
    try:
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        data_norm = not args.no_data_norm
        cc_max, n_repeats = compute_subject_noise_ceiling(args.data_dir, args.subject, args.story,
                                                          data_norm, args.voxel_batch)
        save_noise_ceiling(out, cc_max, _nc_metadata(args.data_dir, args.subject, args.story,
                                                     n_repeats, data_norm, cc_max, args),
                           overwrite=args.overwrite)
    except (data_utils.DatasetError, FileExistsError) as err:
        logger.error("%s", err)
        return 1
    logger.info("%s: %d repeats, %d voxels, %d with cc_max > 0.4 (mean cc_max %.3f); wrote %s",
                data_utils.subject_id(args.subject), n_repeats, cc_max.size,
                (cc_max > 0.4).sum(), cc_max.mean(), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
