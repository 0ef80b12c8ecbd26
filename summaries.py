"""Summaries of per-voxel scores: which voxels the means average over, the regions and groups
of a ``--regions`` file, and every summary ("all", each region and group, in both aggregations)
as a sparse weighted sum over the voxels, with its block-bootstrap interval and the fraction of
significant voxels (docs/method.md#regions, docs/method.md#uncertainty).
"""

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy

import brain_regions
import data_utils
import eval_utils
import noise_ceilings
from run_utils import DatasetError, UsageError

logger = logging.getLogger(__name__)

FOLLOWUP_CEILING = 0.05  # the follow-up paper's summaries count voxels of a lower test-row
#                          ceiling as 0
CONFIDENCE = 0.95  # of the bootstrap intervals
REGION_FIGURE_MAX = 12  # regions.png and the report show at most this many groups (or regions)


class Summaries(NamedTuple):
    """Every summary of per-voxel values is a weighted sum over the voxels: ``values @
    weights`` for means (of cc_norm or r), ``indicator @ members`` for fractions of voxels."""
    keys: list  # (region, aggregation) per column
    weights: "scipy.sparse.csr_array"  # (voxels, summaries) float64
    members: "scipy.sparse.csr_array"  # (voxels, summaries) float64
    n_voxels: list  # voxels each summary averages over; 0: no summary (None)


def summary_voxels(nc, nc_thr, nc_path, test_target, test_path):
    """The voxels the voxel means average over: noise ceiling above ``nc_thr`` and a test
    target (``test_target``, (rows, n_voxels); NaN read as 0, so an all-NaN voxel is constant)
    that varies over the scored rows. A selection without voxels is a DatasetError.

    Returns the (n_voxels,) bool mask and the facts for results.json: ``nc_thr``,
    ``subject_voxels``, ``scored_voxels`` and ``excluded_voxels`` (above the threshold but
    constant)."""
    above = noise_ceilings.ceiling_voxels(nc, nc_thr, nc_path)
    constant = above & data_utils.constant_voxels(test_target)
    voxels = above & ~constant
    if constant.any():
        logger.warning("%d of the %d voxels with NC > %s have constant (or NaN) responses in the "
                       "scored rows of %s: left out of every voxel mean", constant.sum(),
                       above.sum(), nc_thr, test_path)
    if not voxels.any():
        raise DatasetError(f"{test_path}: every voxel with NC > {nc_thr} has constant (or NaN) "
                           "responses in the scored rows; nothing can be scored: check the "
                           "file or --nc_path")
    logger.info("voxel means average over %d of %d voxels (NC > %s)", voxels.sum(), nc.size,
                nc_thr)
    return voxels, {"nc_thr": nc_thr, "subject_voxels": int(nc.size),
                    "scored_voxels": int(voxels.sum()), "excluded_voxels": int(constant.sum())}


def load_rois(path, n_voxels):
    """Regions and region groups of a ``--regions`` file, checked: a JSON object mapping a region
    name to its voxel indices, or a group name to the names of its regions (in the file).

    Returns (regions: name -> list of ints, groups: name -> list of region names); both {}
    without a file."""
    if path is None:
        return {}, {}
    if not Path(path).is_file():
        raise UsageError(f"--regions {path}: no such file (or name a source: "
                         f"{', '.join(brain_regions.SOURCES)})")
    try:
        rois = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err}); a --regions file maps region "
                           "names to lists of voxel indices") from None
    if not isinstance(rois, dict) or not all(isinstance(v, list) for v in rois.values()):
        raise DatasetError(f"{path}: expected a JSON object mapping region names to lists of "
                           "voxel indices (or group names to lists of region names)")
    if "all" in rois:
        raise DatasetError(f"{path}: the region name 'all' is taken by the summary over every "
                           "voxel; rename that region")
    groups = {name: members for name, members in rois.items()
              if members and all(isinstance(m, str) for m in members)}
    regions = {name: voxels for name, voxels in rois.items() if name not in groups}
    for name, voxels in regions.items():
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in voxels):
            raise DatasetError(f"{path}: region {name!r} must list integer voxel indices (or, "
                               "for a group, region names)")
        if len(voxels) and (min(voxels) < 0 or max(voxels) >= n_voxels):
            raise DatasetError(f"{path}: region {name!r} has voxel indices outside "
                               f"0..{n_voxels - 1}")
    for name, members in groups.items():
        unknown = [m for m in members if m not in regions]
        if unknown:
            raise DatasetError(f"{path}: group {name!r} names {', '.join(map(repr, unknown))}, "
                               "which are not regions of the file")
    return regions, groups


def summary_weights(voxels, test_ceiling, regions, groups, roi_path=None, nc_thr=None,
                    within=""):
    """The ``Summaries`` of "all" and each region and group, in both aggregations:

    - "voxel_mean" (ours): the mean over the region's ``voxels`` (NC > --nc_thr, varying test
      target); a group's over the union of its regions' voxels.
    - "parcel_mean" (the follow-up paper's): per-voxel values counted as 0 where the test-row
      ceiling ``test_ceiling`` <= ``FOLLOWUP_CEILING``, averaged over all of the region's
      voxels; a group's is the mean of its regions' means (regions without voxels left out).

    A summary without voxels is logged (``within``: what the voxels are, for the message)
    and undefined (n_voxels 0). ``weights`` and ``members`` are sparse: each column is built
    from its (rows, values), never densely."""
    n = voxels.size
    kept = (test_ceiling > FOLLOWUP_CEILING).astype(np.float64)
    everything = {"all": np.arange(n), **{name: np.unique(np.asarray(indices, np.intp))
                                          for name, indices in regions.items()}}
    nothing = (np.zeros(0, np.intp), np.zeros(0))

    def uniform(indices):  # a sparse column: (sorted rows, values)
        return indices, np.full(len(indices), 1.0 / max(len(indices), 1))

    def mean_of(columns):  # summed in order, then divided: as np.mean of the dense columns
        rows, position = np.unique(np.concatenate([c[0] for c in columns]), return_inverse=True)
        sums = np.bincount(position, np.concatenate([c[1] for c in columns]), rows.size)
        return rows, sums / len(columns)

    keys, weights, members, counts = [], [], [], []

    def add(key, value_weights, member_weights, count):
        keys.append(key)
        weights.append(value_weights)
        members.append(member_weights)
        counts.append(int(count))

    parcels, empty = {}, []
    for name in [*everything, *groups]:
        indices = (np.unique(np.concatenate([everything[m] for m in groups[name]]))
                   if name in groups else everything[name])
        cell = indices[voxels[indices]]
        add((name, "voxel_mean"), uniform(cell), uniform(cell), cell.size)
        if name in groups:
            defined = [parcels[m] for m in groups[name] if parcels[m][2]]
            if defined:
                add((name, "parcel_mean"), mean_of([d[0] for d in defined]),
                    mean_of([d[1] for d in defined]), sum(d[2] for d in defined))
            else:
                add((name, "parcel_mean"), nothing, nothing, 0)
        else:
            rows, values = uniform(indices)
            parcels[name] = ((rows, values * kept[rows]), (rows, values), indices.size)
            add((name, "parcel_mean"), *parcels[name])
        if name != "all" and not cell.size:
            empty.append(name)
    if empty:
        logger.warning("--regions %s: %d regions or groups have no voxel with NC > %s and "
                       "varying test responses%s; their voxel means are left empty (null in "
                       "results.json): %s", roi_path, len(empty), nc_thr, within,
                       ", ".join(empty))

    def matrix(columns):  # (n, len(columns)) csr_array of sparse columns, zeros dropped
        data = np.concatenate([values for _, values in columns])
        rows = np.concatenate([rows for rows, _ in columns])
        numbers = np.repeat(np.arange(len(columns)), [len(rows) for rows, _ in columns])
        nonzero = data != 0
        return scipy.sparse.csr_array((data[nonzero], (rows[nonzero], numbers[nonzero])),
                                      shape=(n, len(columns)), dtype=np.float64)

    return Summaries(keys, matrix(weights), matrix(members), counts)


def divide_rows(matrix, denominator):
    """The csr_array ``matrix`` (rows, columns) with each row divided by ``denominator`` (rows,),
    rows where it is not positive (or NaN) zeroed: the sparse ``np.divide(matrix, denominator[:,
    None], where=denominator[:, None] > 0)`` with zeros elsewhere."""
    matrix = scipy.sparse.csr_array(matrix, dtype=np.float64)
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    per_entry = np.asarray(denominator, np.float64)[rows]
    data = np.divide(matrix.data, per_entry, out=np.zeros_like(matrix.data),
                     where=per_entry > 0)
    nonzero = data != 0
    return scipy.sparse.csr_array((data[nonzero], (rows[nonzero], matrix.indices[nonzero])),
                                  shape=matrix.shape)


def with_summary(scores, task):
    """``scores`` with the per-voxel BH-adjusted ``q_value`` (when there are p-values) and
    their ``summary``: per (region, aggregation) key of ``task.summaries``, mean ``r`` and
    ``cc_norm``, ``n_voxels``, the ``ci`` of the mean cc_norm ((low, high), from the
    bootstrap) and the ``significant_fraction`` of voxels (q < --fdr_q); None where not
    defined or not computed; and the ``alpha_grid`` (``eval_utils.alpha_grid_summary``)."""
    summaries = task.summaries
    scores = dict(scores)
    summary = {"r": summarise(scores["r"], summaries),
               "cc_norm": summarise(scores["cc_norm"], summaries),
               "n_voxels": dict(zip(summaries.keys, summaries.n_voxels))}
    none = dict.fromkeys(summaries.keys)
    summary["ci"], summary["significant_fraction"] = none, none
    summary["alpha_grid"] = eval_utils.alpha_grid_summary(task.alphas, scores["alpha_edges"],
                                                          scores["alpha_score_sum"])
    if "p_value" in scores:
        scores["q_value"] = scipy.stats.false_discovery_control(
            scores["p_value"].astype(np.float64)).astype(scores["p_value"].dtype)
        significant = (scores["q_value"] < task.uncertainty.fdr_q).astype(np.float64)
        summary["significant_fraction"] = _defined(significant @ summaries.members, summaries)
    if "bootstrap" in scores:
        low, high = eval_utils.percentile_interval(scores["bootstrap"], CONFIDENCE)
        summary["ci"] = {key: None if n == 0 else (float(lo), float(hi))
                         for key, n, lo, hi in zip(summaries.keys, summaries.n_voxels, low, high)}
    scores["summary"] = summary
    return scores


PARTITION_PARTS = ("unique_layer", "shared", "unique_low_level")  # of the joint variance
# the variance explained of encoding.partition_scores: by each model, then its parts
PARTITION_MEASURES = ("joint", "layer_alone", "low_level_alone", *PARTITION_PARTS)


def with_partition_summary(scores, task):
    """``scores`` of ``encoding.partition_scores`` with their ``summary``: per measure of
    ``PARTITION_MEASURES``, its (region, aggregation) means over ``task.summaries``, their
    ``n_voxels``, and the ``ci`` of each of the three parts ((low, high) per key, None without
    the bootstrap)."""
    summaries = task.summaries
    summary = {name: summarise(scores[name], summaries) for name in PARTITION_MEASURES}
    summary["n_voxels"] = dict(zip(summaries.keys, summaries.n_voxels))
    summary["ci"] = {name: dict.fromkeys(summaries.keys) for name in PARTITION_PARTS}
    if "bootstrap" in scores:
        low, high = eval_utils.percentile_interval(scores["bootstrap"], CONFIDENCE)
        for index, name in enumerate(PARTITION_PARTS):
            summary["ci"][name] = {
                key: None if n == 0 else (float(lo), float(hi)) for key, n, lo, hi in zip(
                    summaries.keys, summaries.n_voxels, low[index], high[index])}
    return {**scores, "summary": summary}


def summarise(values, summaries):
    """Summaries (``Summaries``) of per-voxel values (n_voxels,): (region, aggregation) ->
    float, or None for a summary without voxels."""
    return _defined(np.asarray(values, np.float64) @ summaries.weights, summaries)


def _defined(numbers, summaries):
    return {key: float(value) if n else None
            for key, n, value in zip(summaries.keys, summaries.n_voxels, numbers)}


def figure_regions(regions, groups):
    """The regions of regions.png and of the report's region tables: the whole-brain (not
    per-hemisphere) groups, else the whole-brain regions, in file order, at most
    ``REGION_FIGURE_MAX``; [] without regions."""
    hemispheres = tuple(f"_{hemi}" for hemi in brain_regions.HEMISPHERES)
    whole = [name for name in (groups or regions) if not name.endswith(hemispheres)]
    if len(whole) > REGION_FIGURE_MAX:
        logger.info("regions.png and the report show the first %d of %d %s",
                    REGION_FIGURE_MAX, len(whole), "groups" if groups else "regions")
    return whole[:REGION_FIGURE_MAX]
