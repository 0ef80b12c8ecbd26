"""Evaluation maths: noise ceilings, normalised correlations and voxelwise encoding models.

With N repeats ``y_r`` of a response (each of unit variance), ``y`` their mean and variances
over time with ddof=1 (SPEC section 4)::

    SP = (N var(y) - 1) / (N - 1)                   signal power
    cc_max = 1 / sqrt(1 + (1/N) (1/SP - 1))         noise ceiling, 0 where SP <= 0
    cc_norm = pearson(y, prediction) / cc_max

``noise_ceilings.py`` computes, saves and loads a subject's ceiling file
(``subject_NCs/UTS0S.npy``).

Encoding models (SPEC section 4): features are Lanczos-downsampled to the TR centres
(``lanczos_interp``), trimmed per story to the response rows, z-scored and given FIR delays of
1..4 TRs per story (``delayed_story_features``), then fitted by ridge regression with one
alpha per voxel chosen by cross-validation on chunks held out inside stories
(``bootstrap_chunk_splits``, ``fit_ridge_cv``).

Ridge alpha convention: ``fit_ridge_cv`` uses ordinary ridge, minimising
``||X W - Y||^2 + alpha ||W||^2``. The Huth-lab grid ``logspace(1, 4, 15)`` is in singular-value
units (weights ``V diag(s / (s^2 + a^2)) U^T Y``), i.e. ``alpha = a^2``: pass
``np.logspace(1, 4, 15) ** 2`` to reproduce it.
"""

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

import data_utils

logger = logging.getLogger(__name__)

NC_THRESHOLD = 0.4  # default: summaries and training use voxels whose noise ceiling exceeds it
# Ridge penalties (ordinary ridge, see above): the Huth-lab grid of the encoding models, and a
# lower-reaching one for regressing confounds out of features (so that the removal is not
# limited by shrinkage).
ENCODING_ALPHAS = np.logspace(1, 4, 15) ** 2
CONFOUND_ALPHAS = np.logspace(0, 4, 17) ** 2


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


# ----------------------------------------------------------------------------- features

def lanczos_interp(data, old_times, new_times, window=3, cutoff_mult=1.0):
    """Resample ``data`` from ``old_times`` to ``new_times`` with a Lanczos kernel.

    The cutoff frequency is ``cutoff_mult / mean(diff(new_times))``; the kernel is
    ``L(dt) = sinc(f dt) sinc(f dt / window)``, 0 beyond ``|f dt| > window``, and the output
    is ``sum_j L(new_i - old_j) data_j`` (not normalised), as in the Huth-lab code.

    Parameters
    ----------
    data : (n_old, n_features) array
    old_times, new_times : (n_old,), (n_new,) seconds

    Returns
    -------
    (n_new, n_features) in data's float dtype.
    """
    data = np.asarray(data)
    old_times, new_times = np.asarray(old_times, np.float64), np.asarray(new_times, np.float64)
    if data.ndim != 2 or len(data) != len(old_times):
        raise ValueError(f"data must be (n_old, n_features) with n_old = len(old_times) = "
                         f"{len(old_times)}, got {data.shape}")
    if len(new_times) < 2:
        raise ValueError("need at least two new times to define the cutoff frequency")
    cutoff = cutoff_mult / np.mean(np.diff(new_times))
    scaled = cutoff * (new_times[:, None] - old_times[None, :])
    kernel = np.sinc(scaled) * np.sinc(scaled / window)
    kernel[np.abs(scaled) > window] = 0.0
    dtype = _float_dtype(data)
    return kernel.astype(dtype) @ data.astype(dtype, copy=False)


def make_delayed(x, delays):
    """FIR delays: for each delay ``d`` a copy of ``x`` shifted down by ``d`` rows (zeros first;
    negative ``d`` shifts up), side by side in the order of ``delays``.

    (n, n_features) -> (n, n_features * len(delays)), dtype kept.
    """
    x = np.asarray(x)
    n = len(x)
    blocks = []
    for delay in delays:
        shifted = np.zeros_like(x)
        if delay >= 0:
            shifted[delay:] = x[:n - delay] if delay < n else 0
        else:
            shifted[:delay] = x[-delay:]
        blocks.append(shifted)
    return np.hstack(blocks)


def zscore(x, axis=0, reference=None):
    """Subtract the mean and divide by the population std along ``axis``, both taken from
    ``reference`` (default: ``x`` itself; e.g. a subset of its rows); constant columns are only
    demeaned. dtype kept."""
    x = np.asarray(x)
    reference = x if reference is None else np.asarray(reference)
    mean = reference.mean(axis=axis, keepdims=True)
    std = reference.std(axis=axis, keepdims=True)
    return ((x - mean) / np.where(std > 0, std, 1)).astype(_float_dtype(x), copy=False)


def trim_rows(x, trim=(data_utils.TRIM_START_TRS, data_utils.TRIM_END_TRS)):
    """The rows of a story's TR-grid array that match its response rows: ``trim`` = (TRs cut
    at the start, TRs cut at the end)."""
    start, end = trim
    return x[start:len(x) - end]


def delayed_story_features(story_features, delays=(1, 2, 3, 4),
                           trim=(data_utils.TRIM_START_TRS, data_utils.TRIM_END_TRS)):
    """Encoding-model design matrix from per-story features on the TR grid.

    Each story's (grid TRs, features) matrix is trimmed (``trim`` TRs at start and end, so rows
    match the response rows), z-scored and delayed on its own, so that no delay reaches across
    a story boundary; the stories are then stacked in the given order.

    Parameters
    ----------
    story_features : list of (n_grid_trs, n_features) arrays

    Returns
    -------
    (sum of trimmed rows, n_features * len(delays)) in the features' dtype.
    """
    return np.vstack([make_delayed(zscore(trim_rows(f, trim)), delays) for f in story_features])


def bootstrap_chunk_splits(story_lengths, n_boots=3, chunk_len=20, held_out_fraction=0.25,
                           seed=0):
    """Random held-out chunks for choosing ridge alphas, never crossing a story boundary.

    The rows of each story (stacked in order) are cut into consecutive chunks of
    ``chunk_len`` (a story's last chunk may be shorter); each bootstrap holds out a random
    ``held_out_fraction`` of all chunks.

    Returns
    -------
    list of ``n_boots`` (train_idx, val_idx) pairs of sorted int64 row indices.
    """
    chunks, offset = [], 0
    for length in story_lengths:
        chunks += [np.arange(offset + s, offset + min(s + chunk_len, length))
                   for s in range(0, length, chunk_len)]
        offset += length
    n_held = max(1, int(round(held_out_fraction * len(chunks))))
    if n_held >= len(chunks):
        raise ValueError(f"{len(chunks)} chunks of {chunk_len} rows are too few to hold out "
                         f"{held_out_fraction:.0%} and train on the rest")
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(n_boots):
        held = np.zeros(offset, bool)
        for index in rng.choice(len(chunks), n_held, replace=False):
            held[chunks[index]] = True
        splits.append((np.flatnonzero(~held), np.flatnonzero(held)))
    return splits


# ----------------------------------------------------------------------------- ridge

def _as_tensor(array, device):
    return torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array,
                           device=device)


def _eig_gram(x):
    """Eigenvalues (clipped at 0) and eigenvectors of x^T x, solved in float64."""
    gram = (x.T @ x).double()
    values, vectors = torch.linalg.eigh(gram)
    return values.clamp_min(0).to(x.dtype), vectors.to(x.dtype)


def _centred_correlation(prediction, y_centred, y_norm):
    """Column correlations of prediction with already centred targets of norm ``y_norm``."""
    centred = prediction - prediction.mean(0, keepdim=True)
    denominator = centred.norm(dim=0) * y_norm
    numerator = (centred * y_centred).sum(0)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30),
                       torch.zeros_like(numerator))


def fit_ridge_cv(X, Y, alphas, splits, backend="numpy", device=None, memory_budget=2 * 2**30,
                 progress=False):
    """Ridge regression with one alpha per voxel chosen by cross-validated correlation.

    Minimises ``||X W - Y||^2 + alpha ||W||^2`` (ordinary ridge; see the module docstring for
    the singular-value convention of the Huth-lab grid). For each split, the Gram matrix of
    the training rows is eigendecomposed once and the targets are projected once; every alpha
    then costs one (held-out rows x features x voxels) product. Each voxel gets the alpha with
    the best mean held-out Pearson correlation over the splits (the first one on ties), and
    the weights are refitted on all rows, voxels grouped by their alpha. No intercept: X and Y
    should be centred (z-scored), as the encoding pipeline makes them.

    Parameters
    ----------
    X : (n_samples, n_features) array
    Y : (n_samples, n_voxels) array
    alphas : (n_alphas,) ridge penalties
    splits : list of (train_idx, val_idx), e.g. from ``bootstrap_chunk_splits``
    backend : "numpy" (arrays in and out, computed with torch on the CPU) or "torch"
        (tensors in and out, on ``device``: CPU or CUDA)
    memory_budget : bytes of working memory; voxels are processed in batches that fit

    Returns
    -------
    weights : (n_features, n_voxels), best_alphas : (n_voxels,), cv_scores : (n_alphas, n_voxels)
        in the input float dtype (float32 stays float32).
    """
    if backend not in ("numpy", "torch"):
        raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    if not len(splits):
        raise ValueError("fit_ridge_cv needs at least one (train_idx, val_idx) split")
    if device is None:
        device = X.device if torch.is_tensor(X) else torch.device("cpu")
    X, Y = _as_tensor(X, device), _as_tensor(Y, device)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"X and Y must be (samples, features) and (samples, voxels) with the "
                         f"same samples, got {tuple(X.shape)} and {tuple(Y.shape)}")
    dtype = X.dtype if X.dtype in (torch.float32, torch.float64) else torch.float32
    X, Y = X.to(dtype), Y.to(dtype)
    alphas_t = torch.as_tensor(np.asarray(alphas, dtype=np.float64), device=device).to(dtype)
    n_samples, n_features = X.shape
    n_voxels = Y.shape[1]

    folds = []
    for train_idx, val_idx in splits:
        val = torch.as_tensor(np.asarray(val_idx), device=device)
        values, vectors = _eig_gram(X[torch.as_tensor(np.asarray(train_idx), device=device)])
        folds.append((val, values, vectors, X[val] @ vectors, X[val]))
    all_values, all_vectors = _eig_gram(X)

    itemsize = X.element_size()
    per_voxel = itemsize * (3 * n_samples + 4 * n_features + 2 * len(alphas_t))
    batch = int(max(1, min(n_voxels, memory_budget // per_voxel)))
    weights = torch.empty((n_features, n_voxels), dtype=dtype, device=device)
    cv_scores = torch.zeros((len(alphas_t), n_voxels), dtype=dtype, device=device)
    best = torch.empty(n_voxels, dtype=torch.long, device=device)
    for first in tqdm(range(0, n_voxels, batch), desc="ridge", unit="voxel batch",
                      disable=not progress):
        columns = slice(first, min(first + batch, n_voxels))
        y = Y[:, columns]
        xty = X.T @ y
        for val, values, vectors, x_val_rotated, x_val in folds:
            y_val = y[val]
            projected = vectors.T @ (xty - x_val.T @ y_val)
            y_centred = y_val - y_val.mean(0, keepdim=True)
            y_norm = y_centred.norm(dim=0)
            for index, alpha in enumerate(alphas_t):
                prediction = (x_val_rotated / (values + alpha)) @ projected
                cv_scores[index, columns] += _centred_correlation(prediction, y_centred, y_norm)
        scores = cv_scores[:, columns]
        scores /= len(folds)
        best[columns] = scores.argmax(0)
        projected = all_vectors.T @ xty
        for index in torch.unique(best[columns]).tolist():
            chosen = torch.nonzero(best[columns] == index).flatten()
            weights[:, first + chosen] = all_vectors @ (projected[:, chosen]
                                                        / (all_values + alphas_t[index])[:, None])
    best_alphas = alphas_t[best]
    if backend == "numpy":
        return weights.cpu().numpy(), best_alphas.cpu().numpy(), cv_scores.cpu().numpy()
    return weights, best_alphas, cv_scores


# ----------------------------------------------------------------------------- feature spaces

def _trimmed(story_features, stories, trim):
    """Trimmed rows of each story, z-scored per story, stacked."""
    return np.vstack([zscore(trim_rows(story_features[s], trim)) for s in stories])


def regress_out(features, confounds, train_stories, alphas, splits, device=None,
                trim=(data_utils.TRIM_START_TRS, data_utils.TRIM_END_TRS)):
    """Remove from each story's features what a ridge model predicts from the confounds.

    Each story's features and confounds are z-scored on their own with the statistics of its
    trimmed rows (as ``delayed_story_features`` does); the ridge (one alpha per feature
    column, chosen on ``splits`` of the stacked trimmed training rows) is fitted on the
    trimmed rows of ``train_stories`` and applied to every story and row.

    Parameters
    ----------
    features, confounds : dict story -> (n_grid_trs, n_features), (n_grid_trs, n_confounds)
    splits : (train_idx, val_idx) pairs over the stacked trimmed training rows

    Returns
    -------
    dict story -> (n_grid_trs, n_features) residuals, in the features' dtype.
    """
    weights, _, _ = fit_ridge_cv(_trimmed(confounds, train_stories, trim),
                                 _trimmed(features, train_stories, trim), alphas, splits,
                                 device=device)
    def standardised(x):
        return zscore(x, reference=trim_rows(x, trim))

    return {story: (standardised(values) - standardised(confounds[story])
                    @ weights.astype(values.dtype)).astype(values.dtype, copy=False)
            for story, values in features.items()}


def prediction_score(features, targets, train_stories, test_story, alphas, splits, device=None,
                     trim=(data_utils.TRIM_START_TRS, data_utils.TRIM_END_TRS)):
    """How well one feature space predicts another on a held-out story.

    A ridge model (alphas chosen per target column on ``splits``) maps the z-scored, trimmed
    features of the training stories to the targets; the score is the Pearson correlation of
    its prediction with each target column of ``test_story``.

    Parameters
    ----------
    features, targets : dict story -> (n_grid_trs, n_features), (n_grid_trs, n_targets)

    Returns
    -------
    (n_targets,) correlations; NaN for a target that is constant over the training rows or
    over the test story (nothing to predict, or no correlation defined).
    """
    train_targets = _trimmed(targets, train_stories, trim)
    weights, _, _ = fit_ridge_cv(_trimmed(features, train_stories, trim), train_targets, alphas,
                                 splits, device=device)
    x_test = _trimmed(features, [test_story], trim)
    test_targets = trim_rows(targets[test_story], trim)
    varies = (np.ptp(train_targets, axis=0) > 0) & (np.ptp(test_targets, axis=0) > 0)
    scores = column_correlation(x_test @ weights.astype(x_test.dtype), test_targets)
    return np.where(varies, scores, np.nan).astype(scores.dtype, copy=False)


# ----------------------------------------------------------------------------- summaries

def percent_drop(before, after):
    """100 (before - after) / before, or None where ``before`` is not a positive number (a drop
    relative to a zero or negative score has no meaning, and its sign would flip)."""
    if not np.isfinite(before) or before <= 0 or not np.isfinite(after):
        return None
    return float(100.0 * (before - after) / before)
