"""Subject noise-ceiling files: compute, save and load ``subject_NCs/UTS0N.npy``.

    python noise_ceilings.py --data_dir /path/to/ds003020 --subject 3

writes each voxel's noise ceiling cc_max (Schoppe et al. 2016; ``eval_utils.noise_ceiling``)
from the individual repeats of the test story as a float64 ``.npy`` file (one value per voxel,
0 where the signal power is not positive), with a ``.json`` file beside it that records how it
was made. The trainer and the evaluator read these files, and compute a missing one.
"""

import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

import arguments
import data_utils
import eval_utils
import run_utils
from arguments import flag
from run_utils import DatasetError

logger = logging.getLogger(__name__)

NC_DIR = Path(__file__).resolve().parent / "subject_NCs"


def default_nc_path(subject):
    """``subject_NCs/UTS0N.npy`` in this repository."""
    return NC_DIR / f"{data_utils.subject_id(subject)}.npy"


def ceiling_file(subject, nc_path=None, dataset=None, story=None):
    """The noise-ceiling file of a run: ``nc_path`` when given, else ``default_nc_path``; on
    a dataset in a shared space (Narratives), whose ceiling is a story's and not a
    subject's, ``subject_NCs/<dataset>_<space>_<story>.npy``."""
    if nc_path is not None:
        return Path(nc_path)
    if dataset is not None and dataset.shared_space:
        group = "_group" if dataset.is_group(subject) else ""
        return NC_DIR / f"{dataset.name}_{dataset.space}_{story}{group}.npy"
    return default_nc_path(subject)


def compute_subject_noise_ceiling(dataset, subject, story=data_utils.TEST_STORY,
                                  data_norm=True, voxel_batch=20000):
    """Noise ceiling of every voxel of a subject of ``dataset`` (a ``data_utils.Dataset``)
    from the test story's repeats.

    Reads the repeats ``voxel_batch`` voxels at a time. Returns ((n_voxels,) float64, n_repeats).
    Repeats with another voxel count than the story's ``data`` are a DatasetError, raised
    before anything is computed.
    """
    shape = dataset.repeats_shape(subject, story)
    n_voxels = shape[2]
    cc_max = np.empty(n_voxels, np.float64)
    batches = range(0, n_voxels, voxel_batch)
    for first in run_utils.progress(batches, unit="batch", disable=len(batches) < 2,
                                    desc=f"noise ceiling {data_utils.subject_id(subject)}"):
        voxels = np.arange(first, min(first + voxel_batch, n_voxels))
        repeats = dataset.repeats(subject, story, voxels)
        cc_max[voxels] = eval_utils.noise_ceiling(repeats, data_norm)
    return cc_max, shape[0]


def save_noise_ceiling(path, cc_max, metadata, overwrite=False):
    """Write a noise-ceiling file (float64 .npy) and its provenance JSON (``metadata`` and the
    file's own hash, which ties the record to it), both atomically."""
    path = Path(path)
    with run_utils.atomic_output(path, overwrite) as tmp:
        np.save(tmp, np.asarray(cc_max, dtype=np.float64))
    run_utils.write_json(path.with_suffix(".json"),
                         {**metadata, "ceiling_sha256": run_utils.content_hash(path)},
                         overwrite=True)


def load_noise_ceiling(path, n_voxels=None):
    """Read a noise-ceiling file: (n_voxels,) float64, checked against the data's voxel count.

    NaN (or infinite) values are read as 0, with a warning naming the file and their count.
    """
    path = Path(path)
    try:
        cc_max = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable noise-ceiling file ({err}); make it "
                           "again with `python noise_ceilings.py`") from None
    if cc_max.ndim != 1 or not np.issubdtype(cc_max.dtype, np.number):
        raise DatasetError(f"{path}: expected one number per voxel, got shape {cc_max.shape} "
                           f"and dtype {cc_max.dtype}; make it again with "
                           "`python noise_ceilings.py`")
    if n_voxels is not None and cc_max.shape[0] != n_voxels:
        raise DatasetError(
            f"{path}: {cc_max.shape[0]} voxels but the subject's responses have {n_voxels}; the "
            "file belongs to another subject or dataset: pass the right --nc_path or delete it "
            "to recompute it from the test-story repeats")
    cc_max = cc_max.astype(np.float64)
    missing = ~np.isfinite(cc_max)
    if missing.any():
        logger.warning("%s: %d of %d noise ceilings are NaN or infinite; reading them as 0 (those "
                       "voxels are below any ceiling threshold)", path, missing.sum(), cc_max.size)
        cc_max[missing] = 0.0
    outside = (cc_max < 0) | (cc_max > 1)
    if outside.any():  # a ceiling is a correlation: it would flip or shrink cc_norm
        raise DatasetError(
            f"{path}: {outside.sum()} of {cc_max.size} noise ceilings lie outside [0, 1] "
            f"(min {cc_max.min():.3g}, max {cc_max.max():.3g}); a ceiling is a correlation: "
            "make the file again with `python noise_ceilings.py` or pass the right --nc_path")
    return cc_max


def check_made_from(path, inputs):
    """Refuse a ceiling file that its record (``<path>.json``, written beside it) says was
    computed from other responses than ``inputs`` (the files the run's ceiling comes from:
    ``dataset.ceiling_inputs``), in one line naming the first that differs; a file without
    such a record (e.g. the authors' published ceilings) is used with a warning that its
    source cannot be checked."""
    record_path = Path(path).with_suffix(".json")
    try:
        record = json.loads(record_path.read_text())
        made_from = record.get("responses")
        if record.get("ceiling_sha256") != run_utils.content_hash(path):
            made_from = None  # the record of another file: the ceiling was replaced after it
    except (OSError, ValueError, AttributeError):
        made_from = None
    if not isinstance(made_from, dict):
        logger.warning("%s has no record of the responses it was computed from (%s); its voxel "
                       "count matches this run's, its source cannot be checked", path,
                       record_path)
        return
    ours = run_utils.file_identity(inputs)
    if made_from.get("sha256") != ours["sha256"]:
        theirs = list(zip(made_from.get("files") or ["?"], made_from.get("sha256") or ["?"]))
        index = next((i for i, (mine, made) in enumerate(zip(ours["sha256"], theirs))
                      if mine != made[1]), min(len(theirs), len(ours["files"])) - 1)
        made = theirs[index]
        counts = (f" (file {index + 1} of {len(ours['files'])})" if len(ours["files"]) > 1
                  else "")
        raise DatasetError(
            f"{path} was computed from {made[0]} (sha256 {str(made[1])[:12]}), not from this "
            f"run's {ours['files'][index]} ({ours['sha256'][index][:12]}){counts}: pass the "
            "ceiling of these responses with --nc_path, or make it again with `python "
            "noise_ceilings.py --overwrite`")


def ceiling_voxels(nc, nc_thr, path):
    """Voxels whose noise ceiling is above ``nc_thr``: (n_voxels,) bool.

    An empty selection is a DatasetError naming ``path`` (the ceiling file) and the largest
    ceiling, so that no run goes on with no voxels.
    """
    selected = np.asarray(nc) > nc_thr
    if not selected.any():
        largest = float(np.max(nc)) if np.size(nc) else float("nan")
        raise DatasetError(
            f"{path}: no voxel has a noise ceiling above {nc_thr} (max {largest:.3g}); lower "
            "--nc_thr, or delete the file to recompute it from the test-story repeats with "
            "`python noise_ceilings.py`")
    return selected


def get_noise_ceiling(dataset, subject, nc_path=None, story=data_utils.TEST_STORY,
                      n_voxels=None):
    """A subject's noise ceiling from ``nc_path`` (default ``ceiling_file``'s).

    ``n_voxels`` is the voxel count of the responses the run uses (default: that of the
    story's ``data``); a ceiling of another size, loaded or about to be computed, is a
    DatasetError naming the file and both counts. When the file is missing it is computed
    and saved there, with a log line saying so: from the story's repeats, or on a dataset in
    a shared space (Narratives) from the story's listeners (``intersubject_ceiling``); the
    voxel counts are checked before anything is computed or saved. Returns (n_voxels,)
    float64."""
    path = ceiling_file(subject, nc_path, dataset, story)
    inputs = dataset.ceiling_inputs(subject, story)
    if n_voxels is None:
        n_voxels = dataset.n_columns(subject, story)
    if path.exists():
        cc_max = load_noise_ceiling(path, n_voxels)
        check_made_from(path, inputs)
        return cc_max
    if dataset.shared_space:
        logger.info("%s not found: computing it from the listeners of %s", path, story)
        return save_intersubject_ceiling(dataset, subject, story, path, n_voxels)
    n_repeat_voxels = dataset.repeats_shape(subject, story)[2]
    if n_repeat_voxels != n_voxels:
        raise DatasetError(
            f"{inputs[0]}: the repeats give a noise ceiling of {n_repeat_voxels} voxels but "
            f"the run's responses have {n_voxels}; nothing was written to {path}: use the "
            "responses of the same subject and release")
    logger.info("%s not found: computing the noise ceiling of %s from the repeats of %s and "
                "saving it there", path, data_utils.subject_id(subject), story)
    cc_max, n_repeats = compute_subject_noise_ceiling(dataset, subject, story)
    save_noise_ceiling(path, cc_max,
                       _nc_metadata(dataset, subject, story, n_repeats, True, cc_max))
    return cc_max


def save_intersubject_ceiling(dataset, subject, story, path, n_voxels=None, arguments=None,
                              overwrite=False):
    """Compute a story's intersubject ceiling (of one subject's responses, or of the group's
    mean: ``dataset.is_group``) on a dataset in a shared space and save it at ``path`` with
    its record (the listeners and their files). A ceiling of other than ``n_voxels`` columns
    is a DatasetError, before anything is written. Returns (columns,) float64."""
    isc, cc_max, listeners = dataset.intersubject_ceiling(story)
    group = dataset.is_group(subject)
    if group:  # the target is the listeners' mean
        cc_max = eval_utils.group_mean_ceiling(cc_max, len(listeners))
    inputs = dataset.ceiling_inputs(subject, story)
    if n_voxels is not None and cc_max.size != n_voxels:
        raise DatasetError(f"{inputs[0]}: the listeners' responses have {cc_max.size} columns "
                           f"but the run's have {n_voxels}; nothing was written to {path}")
    what = ("per-vertex ceiling of the mean of the story's listeners, sqrt(n a / (n a + 1 - a))"
            if group else "per-vertex intersubject ceiling sqrt(a) of one subject's response")
    save_noise_ceiling(path, cc_max, {
        **_nc_metadata(dataset, subject, story, 0, True, cc_max, arguments, inputs),
        "what": f"{what} (docs/method.md#scoring)",
        "subject": dataset.subject_id(subject) if group else None, "listeners": listeners,
        "mean_isc": float(isc.mean())}, overwrite=overwrite)
    logger.info("%s: intersubject ceiling of %s from %d listeners, %d of %d columns above %s; "
                "wrote %s", story, "their mean" if group else "one listener", len(listeners),
                (cc_max > eval_utils.NC_THRESHOLD).sum(), cc_max.size, eval_utils.NC_THRESHOLD,
                path)
    return cc_max


def _nc_metadata(dataset, subject, story, n_repeats, data_norm, cc_max, arguments=None,
                 inputs=None):
    return {
        "what": "per-voxel noise ceiling cc_max (Schoppe et al. 2016), 0 where SP <= 0",
        "subject": dataset.subject_id(subject),
        "data_dir": str(dataset.root.resolve()),
        "story": story,
        "responses": run_utils.file_identity(inputs or dataset.ceiling_inputs(subject, story)),
        "n_repeats": int(n_repeats),
        "n_voxels": int(cc_max.shape[0]),
        "data_norm": data_norm,
        "voxels_above": {str(t): int((cc_max > t).sum())
                         for t in (0.2, eval_utils.NC_THRESHOLD, 0.6)},
        "mean_cc_max": float(cc_max.mean()),
        "arguments": arguments,
        "run": run_utils.run_metadata(),
    }


@dataclasses.dataclass(kw_only=True)
class Settings(data_utils.DatasetFlags):
    """Compute a subject's per-voxel noise ceiling cc_max (Schoppe et al. 2016) from the
    individual repeats of the test story (on Narratives: a story's intersubject ceiling) and
    save it as a float64 .npy file (one value per voxel, 0 where the signal power is not
    positive), with a .json file beside it that records how it was made
    (docs/method.md#scoring)."""

    subject: str = flag(help="subject: 1, '1' or UTS01 (Narratives: sub-001, or 'group')")
    story: str = flag(data_utils.TEST_STORY, help="story with an 'individual_repeats' dataset "
                                                  "(Narratives: the story whose listeners give "
                                                  "the ceiling)")
    out: str | None = flag(None, help="output .npy path (default: subject_NCs/UTS0N.npy in "
                                      "this repository; Narratives: subject_NCs/"
                                      "narratives_<space>_<story>[_group].npy)")
    no_data_norm: bool = flag(False, help="use each repeat's measured variance instead of "
                                          "assuming unit variance (the published files assume "
                                          "unit variance)")
    voxel_batch: int = flag(20000, help="voxels read and processed at a time; lower it to save "
                                        "memory")
    overwrite: bool = flag(False, help="replace an existing output file")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 1, "voxel_batch")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=Settings.__doc__,
                           docs="docs/dataset.md")


def run(args):
    dataset = args.open_dataset()
    out = ceiling_file(args.subject, args.out, dataset, args.story)
    if out.exists() and not args.overwrite:
        raise run_utils.OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    if dataset.shared_space:
        if args.no_data_norm:
            raise run_utils.UsageError("--no_data_norm belongs to a ceiling from repeats, not "
                                       "to an intersubject one")
        save_intersubject_ceiling(dataset, args.subject, args.story, out,
                                  arguments=arguments.as_dict(args), overwrite=args.overwrite)
        return out
    data_norm = not args.no_data_norm
    cc_max, n_repeats = compute_subject_noise_ceiling(dataset, args.subject, args.story,
                                                      data_norm, args.voxel_batch)
    save_noise_ceiling(out, cc_max, _nc_metadata(dataset, args.subject, args.story,
                                                 n_repeats, data_norm, cc_max,
                                                 arguments.as_dict(args)),
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
