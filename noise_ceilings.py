"""Subject noise-ceiling files: compute, save and load ``subject_NCs/UTS0N.npy``.

    python noise_ceilings.py --data_dir /path/to/ds003020 --subject 3

writes each voxel's noise ceiling cc_max (Schoppe et al. 2016; ``eval_utils.noise_ceiling``)
from the individual repeats of the test story as a float64 ``.npy`` file (one value per voxel,
0 where the signal power is not positive), with a ``.json`` file beside it that records how it
was made. The trainer and the evaluator read these files, and compute a missing one.
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import data_utils
import eval_utils
import run_utils
from data_utils import DatasetError

logger = logging.getLogger(__name__)

NC_DIR = Path(__file__).resolve().parent / "subject_NCs"


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
        raise DatasetError(f"{path}: 'individual_repeats' has shape {shape}, expected "
                           "(repeats, rows, voxels)")
    n_voxels = shape[2]
    cc_max = np.empty(n_voxels, np.float64)
    batches = range(0, n_voxels, voxel_batch)
    for first in tqdm(batches, desc=f"noise ceiling {data_utils.subject_id(subject)}",
                      unit="batch", disable=len(batches) < 2):
        voxels = np.arange(first, min(first + voxel_batch, n_voxels))
        repeats = data_utils.load_repeats(data_dir, subject, story, voxels)
        cc_max[voxels] = eval_utils.noise_ceiling(repeats, data_norm)
    return cc_max, shape[0]


def save_noise_ceiling(path, cc_max, metadata, overwrite=False):
    """Write a noise-ceiling file (float64 .npy) and its provenance JSON, both atomically."""
    path = Path(path)
    with run_utils.atomic_output(path, overwrite) as tmp:
        np.save(tmp, np.asarray(cc_max, dtype=np.float64))
    run_utils.write_json(path.with_suffix(".json"), metadata, overwrite=True)


def load_noise_ceiling(path, n_voxels=None):
    """Read a noise-ceiling file: (n_voxels,) float64, checked against the data's voxel count."""
    path = Path(path)
    try:
        cc_max = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable noise-ceiling file ({err}); make it "
                           "again with `python noise_ceilings.py`") from None
    if cc_max.ndim != 1:
        raise DatasetError(f"{path}: expected one value per voxel, got shape "
                           f"{cc_max.shape}")
    if n_voxels is not None and cc_max.shape[0] != n_voxels:
        raise DatasetError(
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
    save_noise_ceiling(path, cc_max,
                       _nc_metadata(data_dir, subject, story, n_repeats, True, cc_max))
    return cc_max


def _nc_metadata(data_dir, subject, story, n_repeats, data_norm, cc_max, arguments=None):
    return {
        "what": "per-voxel noise ceiling cc_max (Schoppe et al. 2016), 0 where SP <= 0",
        "subject": data_utils.subject_id(subject),
        "data_dir": str(Path(data_dir).resolve()),
        "story": story,
        "n_repeats": int(n_repeats),
        "n_voxels": int(cc_max.shape[0]),
        "data_norm": data_norm,
        "voxels_above": {str(t): int((cc_max > t).sum())
                         for t in (0.2, eval_utils.NC_THRESHOLD, 0.6)},
        "mean_cc_max": float(cc_max.mean()),
        "arguments": arguments,
        "run": run_utils.run_metadata(),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Compute a subject's per-voxel noise ceiling cc_max (Schoppe et al. 2016) "
                    "from the individual repeats of the test story and save it as a float64 .npy "
                    "file (one value per voxel, 0 where the signal power is not positive), with "
                    "a .json file beside it that records how it was made.",
        formatter_class=run_utils.HelpFormatter)
    parser.add_argument("--data_dir", required=True,
                        help="ds003020 root: the folder holding stimuli/ and derivative/")
    parser.add_argument("--subject", required=True, help="subject: 1, '1' or UTS01")
    parser.add_argument("--story", default=data_utils.TEST_STORY,
                        help="story with an 'individual_repeats' dataset")
    parser.add_argument("--out", default=None,
                        help="output .npy path (default: subject_NCs/UTS0N.npy in this repository)")
    parser.add_argument("--no_data_norm", action="store_true",
                        help="use each repeat's measured variance instead of assuming unit "
                             "variance (the published files assume unit variance)")
    parser.add_argument("--voxel_batch", type=int, default=20000,
                        help="voxels read and processed at a time; lower it to save memory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    if args.voxel_batch < 1:
        parser.error("--voxel_batch must be >= 1")
    return args


def run(args):
    out = Path(args.out) if args.out else default_nc_path(args.subject)
    if out.exists() and not args.overwrite:
        raise run_utils.OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    data_norm = not args.no_data_norm
    cc_max, n_repeats = compute_subject_noise_ceiling(args.data_dir, args.subject, args.story,
                                                      data_norm, args.voxel_batch)
    save_noise_ceiling(out, cc_max, _nc_metadata(args.data_dir, args.subject, args.story,
                                                 n_repeats, data_norm, cc_max, vars(args)),
                       overwrite=args.overwrite)
    logger.info("%s: %d repeats, %d voxels, %d with cc_max > %s (mean cc_max %.3f); wrote %s",
                data_utils.subject_id(args.subject), n_repeats, cc_max.size,
                (cc_max > eval_utils.NC_THRESHOLD).sum(), eval_utils.NC_THRESHOLD,
                cc_max.mean(), out)
    return out


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
