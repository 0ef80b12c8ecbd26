"""Evaluation maths: noise ceilings, normalised correlations and voxelwise encoding models.

With N repeats ``y_r`` of a response (each of unit variance), ``y`` their mean and variances
over time with ddof=1 (docs/method.md#scoring)::

    SP = (N var(y) - 1) / (N - 1)                   signal power
    cc_max = 1 / sqrt(1 + (1/N) (1/SP - 1))         noise ceiling, 0 where SP <= 0
    cc_norm = pearson(y, prediction) / cc_max

``noise_ceilings.py`` computes, saves and loads a subject's ceiling file
(``subject_NCs/UTS0S.npy``).

Encoding models (docs/method.md#encoding-model): features are Lanczos-downsampled to the TR centres
(``lanczos_interp``), trimmed per story to the response rows, z-scored and given FIR delays of
1..4 TRs per story (``delayed_story_features``), then fitted by ridge regression with one
alpha per voxel chosen by cross-validation on chunks held out inside stories
(``bootstrap_chunk_splits``, ``fit_ridge_cv``).

Ridge alpha convention: ``fit_ridge_cv`` uses ordinary ridge, minimising
``||X W - Y||^2 + alpha ||W||^2``. The Huth-lab grid ``logspace(1, 4, 15)`` is in singular-value
units (weights ``V diag(s / (s^2 + a^2)) U^T Y``), i.e. ``alpha = a^2``: pass
``np.logspace(1, 4, 15) ** 2`` to reproduce it.
"""

import dataclasses
import logging
from typing import NamedTuple

import numpy as np
import scipy
from threadpoolctl import threadpool_limits

import data_utils
import run_utils

# loaded on first use, so that --help and argument errors appear at once
torch = run_utils.LazyModule("torch")

logger = logging.getLogger(__name__)

NC_THRESHOLD = 0.4  # default: summaries and training use voxels whose noise ceiling exceeds it
# Ridge penalties (ordinary ridge, see above): the Huth-lab grid of the encoding models, and a
# lower-reaching one for regressing confounds out of features (so that the removal is not
# limited by shrinkage).
ENCODING_ALPHAS = np.logspace(1, 4, 15) ** 2
CONFOUND_ALPHAS = np.logspace(0, 4, 17) ** 2
TIE_TOLERANCE = 1e-6  # permuted correlations this close to the observed one count as ties
RIDGE_SOLVERS = ("auto", "primal", "dual")  # fit_ridge_cv: auto = the smaller eigenproblem
RIDGE_SCORES = ("r2", "corr")  # how fit_ridge_cv scores held-out predictions (r2: the authors')


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


def intersubject_ceiling(responses):
    """Per-voxel noise ceilings of a story heard once by several subjects, from the shared
    response (docs/method.md#scoring).

    Each subject's z-scored response is taken as a shared signal of variance ``a`` plus its own
    noise. The leave-one-subject-out intersubject correlation of subject i, ``r_i =
    corr(y_i, mean of the others)``, is averaged over subjects through Fisher's z; with N
    subjects it equals ``a / sqrt(a + (1 - a) / (N - 1))`` (the others' mean still holds
    ``1 / (N - 1)`` of the noise), which the standard correction solves for ``a``: the
    ceiling of a prediction of one subject's response is ``sqrt(a)``, the correlation of the
    shared signal with it.

    Parameters
    ----------
    responses : (n_subjects, n_time, n_voxels) array, each subject's responses to the story,
        or a sequence of (n_time, n_voxels) arrays (read twice, one at a time: a lazy
        sequence keeps a large dataset out of memory)

    Returns
    -------
    isc : (n_voxels,) float64, the Fisher-z mean leave-one-out intersubject correlation
    ceiling : (n_voxels,) float64, ``sqrt(a)``; 0 where the mean correlation is not positive
    """
    n = len(responses)
    shape = np.shape(responses[0]) if n else ()
    if n < 3 or len(shape) != 2 or shape[0] < 3:
        raise ValueError(f"responses must be (subjects, time, voxels) with at least 3 subjects "
                         f"and 3 time points, got {n} of shape {shape}")
    total = np.zeros(shape)
    for subject in range(n):
        total += responses[subject]
    z = np.zeros(shape[1])
    for subject in range(n):
        y = np.asarray(responses[subject], np.float64)
        z += np.arctanh(np.clip(column_correlation(y, (total - y) / (n - 1)),
                                -0.999999, 0.999999))
    isc = np.tanh(z / n)
    r2, shrink = np.square(np.maximum(isc, 0.0)), (n - 2) / (n - 1)
    shared = (r2 * shrink + np.sqrt(np.square(r2 * shrink) + 4 * r2 / (n - 1))) / 2
    return isc, np.where(isc > 0, np.sqrt(np.minimum(shared, 1.0)), 0.0)


def group_mean_ceiling(ceiling, n_subjects):
    """The ceiling of a prediction of the mean of ``n_subjects`` subjects' responses, from the
    ceiling of one subject's (``intersubject_ceiling``, ``sqrt(a)``): the mean keeps the shared
    variance ``a`` and ``1 / n`` of the noise, so it is ``sqrt(n a / (n a + 1 - a))`` (the
    repeats formula of ``noise_ceiling`` with the subjects as repeats). (n_voxels,) float64."""
    shared = np.square(np.asarray(ceiling, np.float64))
    return np.sqrt(n_subjects * shared / (n_subjects * shared + 1.0 - shared))


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


DELAY_MODES = ("per_story", "stacked")  # --delays; the first is the default


def delayed_story_features(story_features, delays=(1, 2, 3, 4),
                           trim=(data_utils.TRIM_START_TRS, data_utils.TRIM_END_TRS),
                           mode="per_story"):
    """Encoding-model design matrix from per-story features on the TR grid.

    Each story's (grid TRs, features) matrix is trimmed (``trim`` TRs at start and end, so rows
    match the response rows), z-scored and delayed on its own, so that no delay reaches across
    a story boundary; the stories are then stacked in the given order. ``mode`` "stacked" is
    the authors' order instead (docs/method.md#where-our-defaults-differ-from-the-authors-code):
    the trimmed, z-scored stories are stacked first and delayed together, so a story's first
    rows hold the previous story's last ones (zeros only at the start of the first story).

    Parameters
    ----------
    story_features : list of (n_grid_trs, n_features) arrays

    Returns
    -------
    (sum of trimmed rows, n_features * len(delays)) in the features' dtype.
    """
    if mode == "stacked":
        return make_delayed(np.vstack([zscore(trim_rows(f, trim)) for f in story_features]),
                            delays)
    if mode != "per_story":
        raise ValueError(f"unknown delay mode {mode!r}; expected one of {DELAY_MODES}")
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


CV_CHUNKS = ("within_stories", "stacked")  # --cv_chunks; the first is the default


def stacked_chunk_splits(n_rows, n_boots=3, chunk_len=20, held_out_fraction=0.25, seed=0):
    """The authors' held-out chunks (Huth-lab ``bootstrap_ridge`` as their code calls it;
    docs/method.md#where-our-defaults-differ-from-the-authors-code): the ``n_rows`` stacked
    rows of all stories cut into whole chunks of ``chunk_len`` (a chunk may straddle a story
    boundary; the last ``n_rows % chunk_len`` rows are never held out), and each bootstrap
    holds out ``int(held_out_fraction * n_rows / chunk_len)`` of them at random (theirs are
    drawn by Python's unseeded ``random.shuffle``, ours by ``seed``).

    Returns
    -------
    list of ``n_boots`` (train_idx, val_idx) pairs of sorted int64 row indices.
    """
    n_chunks = n_rows // chunk_len
    n_held = int(held_out_fraction * n_rows / chunk_len)
    if n_held < 1 or n_held >= n_chunks:
        raise ValueError(f"{n_rows} rows make {n_chunks} whole chunks of {chunk_len} rows, too "
                         f"few to hold out {held_out_fraction:.0%} and train on the rest")
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(n_boots):
        held = np.zeros(n_rows, bool)
        for index in rng.permutation(n_chunks)[:n_held]:
            held[index * chunk_len:(index + 1) * chunk_len] = True
        splits.append((np.flatnonzero(~held), np.flatnonzero(held)))
    return splits


# ----------------------------------------------------------------------------- ridge

def _as_tensor(array, device):
    return torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array,
                           device=device)


def _eig_gram(x):
    """Eigenvalues (clipped at 0) and eigenvectors of x^T x, solved in float64."""
    return _eigh(x.T @ x)


def _eigh(gram):
    """Eigenvalues (clipped at 0) and eigenvectors of a Gram matrix, solved in float64 and
    returned in its dtype."""
    values, vectors = torch.linalg.eigh(gram.double())
    return values.clamp_min(0).to(gram.dtype), vectors.to(gram.dtype)


def _centred_correlation(prediction, y_centred, y_norm):
    """Column correlations of prediction with already centred targets of norm ``y_norm``."""
    centred = prediction - prediction.mean(0, keepdim=True)
    denominator = centred.norm(dim=0) * y_norm
    numerator = (centred * y_centred).sum(0)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30),
                       torch.zeros_like(numerator))


def _signed_root_r2(residual, assumed_variance):
    """sign(R2) sqrt(|R2|), R2 = 1 - var(residual) / assumed_variance, NaN -> 0."""
    r2 = 1 - residual.var(0, correction=0) / assumed_variance
    return torch.nan_to_num(r2.sign() * r2.abs().sqrt(), nan=0.0)


def fit_ridge_cv(X, Y, alphas, splits, backend="numpy", device=None, memory_budget=2 * 2**30,
                 progress=False, score="corr", solver="auto"):
    """Ridge regression with one alpha per voxel chosen by cross-validation.

    Minimises ``||X W - Y||^2 + alpha ||W||^2`` (ordinary ridge; see the module docstring for
    the singular-value convention of the Huth-lab grid). For each split, the Gram matrix of
    the training rows is eigendecomposed once and the targets are projected once; every alpha
    then costs one (held-out rows x rank x voxels) product. ``solver``: "primal" decomposes
    the features x features Gram matrix ``X^T X``, "dual" the rows x rows kernel ``X X^T``
    (the same predictions: ``W = X^T (X X^T + alpha)^-1 Y``), "auto" whichever is smaller.
    Each voxel gets the alpha with the best mean held-out ``score`` over the splits (the first
    one on ties), and the weights are refitted on all rows, voxels grouped by their alpha. No
    intercept: X and Y should be centred (z-scored), as the encoding pipeline makes them.

    ``score`` (both cost the same, one pass over each held-out prediction):

    - ``"corr"``: the Pearson correlation of prediction and held-out responses;
    - ``"r2"``: the Huth-lab ``bootstrap_ridge(use_corr=False)`` score of the authors,
      ``sign(R2) sqrt(|R2|)`` with ``R2 = 1 - var(y - pred) / ((1 + var(y)) / 2)``, variances
      over the held-out rows (ddof 0): the "assumed variance" of z-scored responses, the
      held-out responses taken as they are. NaN reads as 0.

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
    _check_ridge_options(backend, splits, score, solver)
    if device is None:
        device = X.device if torch.is_tensor(X) else torch.device("cpu")
    X, Y, alphas_t = _ridge_tensors(X, Y, alphas, device)
    dual = _is_dual(solver, X.shape)
    fit = _RidgeFit.empty(X.shape[1], Y.shape[1], (len(alphas_t),), X.dtype, device)
    _fit_design(X, Y, alphas_t, _ridge_folds(X, splits, dual, device),
                _eig_gram(X.T if dual else X), dual, score, fit.cv_scores, fit,
                _voxel_batch(X, Y.shape[1], len(alphas_t), memory_budget), progress)
    best_alphas = alphas_t[fit.best_alpha]
    if backend == "numpy":
        return fit.weights.cpu().numpy(), best_alphas.cpu().numpy(), fit.cv_scores.cpu().numpy()
    return fit.weights, best_alphas, fit.cv_scores


def fit_banded_ridge_cv(X1, X2, Y, alphas, ratios, splits, backend="numpy", device=None,
                        memory_budget=2 * 2**30, progress=False, score="corr", solver="auto"):
    """Banded ridge of two feature bands, with a pair of penalties per voxel chosen by
    cross-validation (docs/method.md#variance-partitioning).

    Minimises ``||X1 W1 + X2 W2 - Y||^2 + alpha ||W1||^2 + alpha ratio ||W2||^2``: for each
    ``ratio`` this is ``fit_ridge_cv`` of the design ``[X1, X2 / sqrt(ratio)]``. Each voxel
    gets the (ratio, alpha) pair of the best mean held-out ``score`` (the first on ties, ratios
    before alphas), and its weights refitted on all rows. The Gram matrices (primal) or each
    band's kernels (dual) of every split are computed once and rescaled per ratio, so a ratio
    costs one eigendecomposition per split and of all rows, and the held-out products: about
    one ``fit_ridge_cv``. ``solver``, ``score``, ``backend`` and ``memory_budget`` as there.

    Parameters
    ----------
    X1 : (n_samples, n_features_1) array, X2 : (n_samples, n_features_2) array
    Y : (n_samples, n_voxels) array
    alphas : (n_alphas,) penalties of the first band
    ratios : (n_ratios,) the second band's penalty over the first's
    splits : list of (train_idx, val_idx)

    Returns
    -------
    weights : (n_features_1 + n_features_2, n_voxels), the bands' weights stacked;
    best_alphas, best_ratios : (n_voxels,) each; cv_scores : (n_ratios, n_alphas, n_voxels).
    """
    _check_ridge_options(backend, splits, score, solver)
    if device is None:
        device = X1.device if torch.is_tensor(X1) else torch.device("cpu")
    X2, _, ratios_t = _ridge_tensors(X2, Y, ratios, device)
    X, Y, alphas_t = _ridge_tensors(_as_tensor(X1, device).to(X2.dtype), Y, alphas, device)
    X = torch.cat([X, X2.to(X.dtype)], 1)
    band = torch.arange(X.shape[1], device=device) >= X.shape[1] - X2.shape[1]
    dual = _is_dual(solver, X.shape)
    fit = _RidgeFit.empty(X.shape[1], Y.shape[1], (len(ratios_t), len(alphas_t)), X.dtype,
                          device)
    # each split's products, once: Gram matrices (primal) or per-band kernels (dual)
    rows = [(torch.as_tensor(np.asarray(train), device=device),
             torch.as_tensor(np.asarray(val), device=device)) for train, val in splits]
    every = torch.arange(len(X), device=device)
    if dual:
        bands = [X[:, ~band], X[:, band]]
        products = [[(x[train] @ x[train].T, x[val] @ x[train].T) for x in bands]
                    for train, val in [*rows, (every, every[:0])]]
    else:
        products = [X[train].T @ X[train] for train, _ in [*rows, (every, every[:0])]]
    batch = _voxel_batch(X, Y.shape[1], len(alphas_t), memory_budget)
    for index in run_utils.progress(range(len(ratios_t)), desc="banded ridge", unit="ratio",
                                    disable=not progress):
        ratio = ratios_t[index]
        scale = torch.where(band, ratio.rsqrt(), torch.ones_like(ratio))
        weight = scale.square()[[0, -1]]  # of the first band's kernel and the second's
        if dual:
            grams = [(weight[0] * k1 + weight[1] * k2, weight[0] * c1 + weight[1] * c2)
                     for (k1, c1), (k2, c2) in products]
        else:
            grams = [(gram * torch.outer(scale, scale), None) for gram in products]
        design = X * scale
        folds = _ridge_folds(design, splits, dual, device, grams[:-1])
        improved = _fit_design(design, Y, alphas_t, folds, _eigh(grams[-1][0]), dual, score,
                               fit.cv_scores[index], fit, batch, False, scale)
        fit.best_ratio[improved] = index
    best_alphas, best_ratios = alphas_t[fit.best_alpha], ratios_t[fit.best_ratio]
    if backend == "numpy":
        return (fit.weights.cpu().numpy(), best_alphas.cpu().numpy(),
                best_ratios.cpu().numpy(), fit.cv_scores.cpu().numpy())
    return fit.weights, best_alphas, best_ratios, fit.cv_scores


def _is_dual(solver, shape):
    """Whether ``solver`` solves the rows x rows kernel problem for a design of ``shape``."""
    return solver == "dual" or (solver == "auto" and shape[0] < shape[1])


@dataclasses.dataclass
class _RidgeFit:
    """What a ridge search keeps per voxel: the weights refitted with its best penalties, every
    mean held-out score, the best so far, its alpha index and (banded ridge) ratio index."""
    weights: "torch.Tensor"  # (features, voxels)
    cv_scores: "torch.Tensor"  # (*grid, voxels)
    best_score: "torch.Tensor"  # (voxels,)
    best_alpha: "torch.Tensor"  # (voxels,) long
    best_ratio: "torch.Tensor"  # (voxels,) long

    @classmethod
    def empty(cls, n_features, n_voxels, grid, dtype, device):
        def indices():
            return torch.zeros(n_voxels, dtype=torch.long, device=device)

        return cls(torch.zeros((n_features, n_voxels), dtype=dtype, device=device),
                   torch.zeros((*grid, n_voxels), dtype=dtype, device=device),
                   torch.full((n_voxels,), -torch.inf, dtype=dtype, device=device), indices(),
                   indices())


def _fit_design(X, Y, alphas_t, folds, eigen, dual, score, cv_scores, fit, batch, progress,
                scale=None):
    """Score one design ``X`` on ``folds`` for every alpha into ``cv_scores`` ((alphas,
    voxels), mean over the folds), and refit on all rows (``eigen``: the eigenvalues and
    vectors of its Gram or kernel matrix) the voxels whose best score beats ``fit``'s so far,
    updating ``fit``. ``scale``: per feature, what the refitted weights are multiplied by (a
    rescaled band). Returns the indices of those voxels."""
    values, vectors = eigen
    back = X.T @ vectors if dual else vectors  # W = back @ (projected / (values + a))
    n_voxels = Y.shape[1]
    improved = []
    for first in run_utils.progress(range(0, n_voxels, batch), desc="ridge", unit="voxel batch",
                                    disable=not progress):
        columns = slice(first, min(first + batch, n_voxels))
        y = Y[:, columns]
        xty = None if dual else X.T @ y
        scores = cv_scores[:, columns]  # a view: the batch's scores are written in place
        _add_fold_scores(scores, y, xty, folds, alphas_t, dual, score)
        scores /= len(folds)
        best = scores.argmax(0)
        top = scores.gather(0, best[None])[0]
        better = torch.nonzero(top > fit.best_score[columns]).flatten()
        if not len(better):
            continue
        at = first + better
        fit.best_score[at], fit.best_alpha[at] = top[better], best[better]
        projected = vectors.T @ (y if dual else xty)[:, better]
        _refit(fit.weights, at, best[better], back, projected, values, alphas_t, scale)
        improved.append(at)
    return torch.cat(improved) if improved else torch.zeros(0, dtype=torch.long, device=Y.device)


def _check_ridge_options(backend, splits, score, solver):
    """A ValueError for an unknown backend, score or solver, or no split."""
    if backend not in ("numpy", "torch"):
        raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    if not len(splits):
        raise ValueError("fit_ridge_cv needs at least one (train_idx, val_idx) split")
    if score not in RIDGE_SCORES:
        raise ValueError(f"score must be one of {', '.join(RIDGE_SCORES)}, got {score!r}")
    if solver not in RIDGE_SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(RIDGE_SOLVERS)}, got {solver!r}")


def _ridge_tensors(X, Y, alphas, device):
    """X, Y and the alphas as tensors on ``device`` in X's float dtype (float32 for any
    other); a ValueError unless X and Y are 2-D with the same rows."""
    X, Y = _as_tensor(X, device), _as_tensor(Y, device)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"X and Y must be (samples, features) and (samples, voxels) with the "
                         f"same samples, got {tuple(X.shape)} and {tuple(Y.shape)}")
    dtype = X.dtype if X.dtype in (torch.float32, torch.float64) else torch.float32
    alphas = np.asarray(alphas, dtype=np.float64)
    if not alphas.size or not ((alphas > 0) & np.isfinite(alphas)).all():
        raise ValueError(f"ridge penalties must be positive finite numbers, got {alphas}")
    alphas_t = torch.as_tensor(alphas, device=device).to(dtype)
    return X.to(dtype), Y.to(dtype), alphas_t


class _RidgeFold(NamedTuple):
    """A split's training and held-out rows, the eigenvalues and vectors of its Gram (primal)
    or kernel (dual) matrix, and the held-out design rotated onto those vectors: predictions
    are rotated @ (projected / (values + alpha)), projected = V^T X_train^T y_train (primal)
    or U^T y_train (dual)."""
    train: "torch.Tensor"
    val: "torch.Tensor"
    values: "torch.Tensor"
    vectors: "torch.Tensor"
    rotated: "torch.Tensor"
    x_val: "torch.Tensor"


def _ridge_folds(X, splits, dual, device, products=None):
    """The ``_RidgeFold`` of each split; ``products``: per split, its Gram (primal) or kernel
    (dual) matrix of the training rows and, dual, the held-out x training kernel, when the
    caller has them (None: computed from ``X``)."""
    folds = []
    for index, (train_idx, val_idx) in enumerate(splits):
        train = torch.as_tensor(np.asarray(train_idx), device=device)
        val = torch.as_tensor(np.asarray(val_idx), device=device)
        x_val = X[val]
        if products is None:
            (values, vectors), cross = _eig_gram(X[train].T if dual else X[train]), None
        else:
            (values, vectors), cross = _eigh(products[index][0]), products[index][1]
        if dual and cross is None:
            cross = x_val @ X[train].T
        rotated = (cross if dual else x_val) @ vectors
        folds.append(_RidgeFold(train, val, values, vectors, rotated, x_val))
    return folds


def _voxel_batch(X, n_voxels, n_alphas, memory_budget):
    """Voxels per batch that fit in ``memory_budget`` bytes (at least one)."""
    n_samples, n_features = X.shape
    per_voxel = X.element_size() * (3 * n_samples + 4 * n_features + 2 * n_alphas)
    return int(max(1, min(n_voxels, memory_budget // per_voxel)))


def _add_fold_scores(scores, y, xty, folds, alphas_t, dual, score):
    """Add each fold's held-out ``score`` of every alpha to ``scores`` ((alphas, voxels) of
    the batch ``y``; ``xty`` = X^T y, primal only)."""
    for fold in folds:
        y_val = y[fold.val]
        projected = fold.vectors.T @ (y[fold.train] if dual else xty - fold.x_val.T @ y_val)
        y_centred = y_val - y_val.mean(0, keepdim=True)
        y_norm = y_centred.norm(dim=0)
        assumed_variance = (1 + y_centred.square().mean(0)) / 2
        for index, alpha in enumerate(alphas_t):
            prediction = (fold.rotated / (fold.values + alpha)) @ projected
            if score == "corr":
                fold_score = _centred_correlation(prediction, y_centred, y_norm)
            else:
                fold_score = _signed_root_r2(y_val - prediction, assumed_variance)
            scores[index] += fold_score


def _refit(weights, voxels, best, back, projected, values, alphas_t, scale=None):
    """The weights of ``voxels`` (indices) refitted on all rows with their ``best`` alpha
    indices, a product per alpha chosen (each feature's multiplied by ``scale``)."""
    for index in torch.unique(best).tolist():
        chosen = torch.nonzero(best == index).flatten()
        refitted = back @ (projected[:, chosen] / (values + alphas_t[index])[:, None])
        weights[:, voxels[chosen]] = refitted if scale is None else refitted * scale[:, None]


# ----------------------------------------------------------------------------- feature spaces

def _trimmed(story_features, stories, trim):
    """Trimmed rows of each story, z-scored per story, stacked."""
    return np.vstack([zscore(trim_rows(story_features[s], trim)) for s in stories])


def regress_out(features, confounds, train_stories, alphas, splits, device=None,
                trim=(data_utils.TRIM_START_TRS, data_utils.TRIM_END_TRS), score="corr"):
    """Remove from each story's features what a ridge model predicts from the confounds.

    Each story's features and confounds are z-scored on their own with the statistics of its
    trimmed rows (as ``delayed_story_features`` does); the ridge (one alpha per feature
    column, chosen on ``splits`` of the stacked trimmed training rows) is fitted on the
    trimmed rows of ``train_stories`` and applied to every story and row.

    Parameters
    ----------
    features, confounds : dict story -> (n_grid_trs, n_features), (n_grid_trs, n_confounds)
    splits : (train_idx, val_idx) pairs over the stacked trimmed training rows
    score : how alphas are chosen (``fit_ridge_cv``)

    Returns
    -------
    dict story -> (n_grid_trs, n_features) residuals, in the features' dtype.
    """
    weights, _, _ = fit_ridge_cv(_trimmed(confounds, train_stories, trim),
                                 _trimmed(features, train_stories, trim), alphas, splits,
                                 device=device, score=score)
    def standardised(x):
        return zscore(x, reference=trim_rows(x, trim))

    return {story: (standardised(values) - standardised(confounds[story])
                    @ weights.astype(values.dtype)).astype(values.dtype, copy=False)
            for story, values in features.items()}


def prediction_score(features, targets, train_stories, test_story, alphas, splits, device=None,
                     trim=(data_utils.TRIM_START_TRS, data_utils.TRIM_END_TRS), score="corr"):
    """How well one feature space predicts another on a held-out story.

    A ridge model (alphas chosen per target column on ``splits``) maps the z-scored, trimmed
    features of the training stories to the targets; the score is the Pearson correlation of
    its prediction with each target column of ``test_story``.

    Parameters
    ----------
    features, targets : dict story -> (n_grid_trs, n_features), (n_grid_trs, n_targets)
    score : how alphas are chosen (``fit_ridge_cv``)

    Returns
    -------
    (n_targets,) correlations; NaN for a target that is constant over the training rows or
    over the test story (nothing to predict, or no correlation defined); and the test
    ``prediction`` and ``target``, (n_test_rows, n_targets) each, for resampling.
    """
    train_targets = _trimmed(targets, train_stories, trim)
    weights, _, _ = fit_ridge_cv(_trimmed(features, train_stories, trim), train_targets, alphas,
                                 splits, device=device, score=score)
    x_test = _trimmed(features, [test_story], trim)
    test_targets = trim_rows(targets[test_story], trim)
    varies = (np.ptp(train_targets, axis=0) > 0) & (np.ptp(test_targets, axis=0) > 0)
    prediction = x_test @ weights.astype(x_test.dtype)
    scores = column_correlation(prediction, test_targets)
    return (np.where(varies, scores, np.nan).astype(scores.dtype, copy=False), prediction,
            test_targets)


# ----------------------------------------------------------------------------- training data

def leading_rows(story_lengths, fraction):
    """Rows of each story in a ``fraction`` of the stacked training rows: whole stories first,
    in order, then the leading rows of the next story (the data-efficiency subsets).

    Returns
    -------
    list of ints, one per story: its first that many rows are used (0: not used). They sum to
    ``round(fraction * sum(story_lengths))``, at least 1.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"a training fraction must be in (0, 1], got {fraction}")
    left = max(1, int(round(fraction * sum(story_lengths))))
    used = []
    for length in story_lengths:
        used.append(min(length, left))
        left -= used[-1]
    return used


# ----------------------------------------------------------------------------- uncertainty

def block_permutation_pvalues(prediction, target, n_permutations=1000, block_len=10, seed=0,
                              voxel_batch=4096):
    """One-sided p-values of the correlation of each column of ``prediction`` with ``target``,
    against the null of no relation, by permuting blocks of rows of ``target``.

    The rows are cut into consecutive blocks of ``block_len`` (so the autocorrelation within a
    block is kept); each permutation reorders the whole blocks, the ``n_rows % block_len``
    rows after the last whole block staying in place. With the block cross-products
    ``C[k, l] = sum_j zp[k block_len + j] zt[l block_len + j]`` of the standardised columns,
    the permuted correlations of a batch of voxels are one product of the (permutations,
    blocks^2) indicator matrix with C. The same permutations (from ``seed``) serve every
    column and every call. p = (1 + #{permuted r >= r}) / (1 + n_permutations), a permuted r
    within ``TIE_TOLERANCE`` of r counting as equal; a constant column has r = 0 and p = 1.

    Parameters
    ----------
    prediction, target : (n_rows, n_voxels) arrays
    n_permutations : int >= 1

    Returns
    -------
    (n_voxels,) p-values in the inputs' float dtype.
    """
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape or prediction.ndim != 2:
        raise ValueError(f"prediction and target must be (rows, voxels) arrays of one shape, "
                         f"got {prediction.shape} and {target.shape}")
    n_rows, n_voxels = prediction.shape
    n_blocks = n_rows // block_len
    if n_blocks < 2:
        raise ValueError(f"{n_rows} rows make {n_blocks} blocks of {block_len}: too few to "
                         "permute")
    permutations = permuted_blocks(n_blocks, n_permutations, seed)
    indicator = np.zeros((n_permutations, n_blocks * n_blocks), np.float32)
    indicator[np.arange(n_permutations)[:, None],
              np.arange(n_blocks) * n_blocks + permutations] = 1.0
    whole = n_blocks * block_len
    exceed = np.zeros(n_voxels, np.int64)
    for first in range(0, n_voxels, voxel_batch):
        columns = slice(first, min(first + voxel_batch, n_voxels))
        zp = zscore(prediction[:, columns].astype(np.float64)).astype(np.float32)
        zt = zscore(target[:, columns].astype(np.float64)).astype(np.float32)
        in_place = (zp[whole:] * zt[whole:]).sum(axis=0)
        blocks_p = zp[:whole].reshape(n_blocks, block_len, -1)
        blocks_t = zt[:whole].reshape(n_blocks, block_len, -1)
        cross = np.einsum("kjv,ljv->klv", blocks_p, blocks_t, optimize=True)
        observed = np.einsum("kkv->v", cross) + in_place
        null = indicator @ cross.reshape(n_blocks * n_blocks, -1)
        null += in_place
        # a permuted r within TIE_TOLERANCE of r is a tie (float32 rounds the identity order
        # differently in the two products)
        exceed[columns] = (null >= observed - TIE_TOLERANCE * n_rows).sum(axis=0)
    p_values = (1.0 + exceed) / (1.0 + n_permutations)
    return p_values.astype(_float_dtype(prediction, target))


def permuted_blocks(n_blocks, n_permutations, seed=0):
    """(n_permutations, n_blocks) int64: row ``i`` is the ``i``-th random order of the blocks
    (from ``seed``), the one ``block_permutation_pvalues`` pairs prediction block ``k`` with
    target block ``permutations[i, k]`` by."""
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n_blocks), (n_permutations, 1)), axis=1)


def bootstrap_block_counts(n_rows, block_len=10, n_bootstrap=1000, seed=0):
    """Block bootstrap over time: how often each block is drawn in each resample.

    The rows are cut into consecutive blocks of ``block_len`` (the last one shorter when
    ``block_len`` does not divide ``n_rows``); each resample draws as many blocks as there
    are, with replacement, from ``seed``.

    Returns
    -------
    counts : (n_bootstrap, n_blocks) int64, and block_starts : (n_blocks + 1,) row offsets.
    """
    starts = np.append(np.arange(0, n_rows, block_len), n_rows)
    n_blocks = len(starts) - 1
    if n_blocks < 2:
        raise ValueError(f"{n_rows} rows make {n_blocks} block of {block_len}: too few to "
                         "resample")
    draws = np.random.default_rng(seed).integers(0, n_blocks, (n_bootstrap, n_blocks))
    counts = np.zeros((n_bootstrap, n_blocks), np.int64)
    np.add.at(counts, (np.arange(n_bootstrap)[:, None], draws), 1)
    return counts, starts


def bootstrap_correlations(prediction, target, counts, block_starts, weights=None,
                           voxel_batch=8192, signed_square=False):
    """Pearson correlation of each column of ``prediction`` with ``target`` on each block-
    bootstrap resample (``bootstrap_block_counts``), from per-block sums: five (resamples,
    blocks) x (blocks, voxels) products, no copy of the resampled rows. ``signed_square``:
    r |r| in place of r (the variance a prediction explains).

    Parameters
    ----------
    prediction, target : (n_rows, n_voxels) arrays
    counts, block_starts : from ``bootstrap_block_counts(n_rows, ...)``
    weights : None, or (n_voxels, n_summaries) array or scipy sparse array: then the result
        is ``r @ weights`` (e.g. means over regions), accumulated over voxel batches without
        holding every resample's r

    Returns
    -------
    (n_bootstrap, n_voxels) float64 (r, 0 where a column is constant in a resample), or
    (n_bootstrap, n_summaries) float64 with ``weights``.
    """
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape or prediction.ndim != 2:
        raise ValueError(f"prediction and target must be (rows, voxels) arrays of one shape, "
                         f"got {prediction.shape} and {target.shape}")
    if block_starts[-1] != len(prediction):
        raise ValueError(f"the blocks cover {block_starts[-1]} rows, the arrays have "
                         f"{len(prediction)}")
    n_voxels = prediction.shape[1]
    if scipy.sparse.issparse(weights):  # rows sliced below: csr, float64
        weights = scipy.sparse.csr_array(weights, dtype=np.float64)
    if weights is not None and np.shape(weights)[0] != n_voxels:
        raise ValueError(f"weights have {np.shape(weights)[0]} rows for {n_voxels} voxels")
    n_rows = len(prediction)
    counts = np.asarray(counts, np.float64)
    n = counts @ np.diff(block_starts).astype(np.float64)
    shares = counts / n[:, None]  # (resamples, blocks) @ per-block sums = the resample's means
    n_resamples = len(counts)
    out = np.zeros((n_resamples, n_voxels if weights is None else np.shape(weights)[1]))
    chunk = 128  # voxels per resample-stage step: its (resamples, chunk) arrays stay in cache
    # allocated once, not per batch (fresh pages cost a fault each)
    batch = min(voxel_batch, n_voxels)
    batch_values = np.empty((n_rows, 5, batch))
    batch_sums = np.empty((len(block_starts) - 1, 5, batch))
    buffers = np.empty((6, n_resamples, chunk))
    # The products have only n_blocks terms: BLAS threads gain little on them and, on a machine
    # busy with other work, take several times the single-threaded time (2 cores: ~10x).
    with threadpool_limits(1, user_api="blas"):
        for first in range(0, n_voxels, voxel_batch):
            width = min(voxel_batch, n_voxels - first)
            columns = slice(first, first + width)
            # per-row p, t, p p, t t, p t, centred on the full-data means (so that the sums of
            # squares do not cancel), then their sums over each block
            values = batch_values[:, :, :width]
            p, t = values[:, 0], values[:, 1]
            p[:] = prediction[:, columns]
            t[:] = target[:, columns]
            p -= p.mean(axis=0)
            t -= t.mean(axis=0)
            np.multiply(p, p, out=values[:, 2])
            np.multiply(t, t, out=values[:, 3])
            np.multiply(p, t, out=values[:, 4])
            sums = batch_sums[:, :, :width]
            for block, (begin, end) in enumerate(zip(block_starts[:-1], block_starts[1:])):
                values[begin:end].sum(axis=0, out=sums[block])
            sums = sums.transpose(1, 0, 2)
            for sub in range(0, width, chunk):
                step = min(chunk, width - sub)
                means = buffers if step == chunk else np.empty((6, n_resamples, step))
                np.matmul(shares, sums[:, :, sub:sub + step], out=means[:5])
                mp, mt, mpp, mtt, mpt, scratch = means
                mpt -= np.multiply(mp, mt, out=scratch)  # covariance
                mpp -= np.multiply(mp, mp, out=scratch)  # variances
                mtt -= np.multiply(mt, mt, out=scratch)
                mpp *= mtt
                degenerate = ~(mpp > 0)  # a column constant in the resample (or NaN): r = 0
                mpp[degenerate] = 1.0
                r = np.divide(mpt, np.sqrt(mpp, out=mpp), out=mpt)
                r[degenerate] = 0.0
                if signed_square:
                    r *= np.abs(r, out=scratch)
                voxels = slice(first + sub, first + sub + step)
                if weights is None:
                    out[:, voxels] = r
                elif scipy.sparse.issparse(weights):  # sparse @ dense: a dense ndarray
                    out += np.asarray(weights[voxels].T @ r.T, np.float64).T
                else:
                    out += r @ np.asarray(weights[voxels], np.float64)
    return out


def percentile_interval(samples, confidence=0.95):
    """The central ``confidence`` interval of ``samples`` along axis 0: (low, high) arrays."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    return low, high


# ----------------------------------------------------------------------------- penalty grid

EDGE_WARNING_FRACTION = 0.05  # more voxels than this at an end of the grid: it may be too narrow
# A voxel sits at an end when its score there beats the next alpha's by more than this share of
# its score's range over the grid: the curve still rises at the end. (Both scores level off
# far out at either end, where the best of a plateau is a matter of rounding.)
EDGE_RISE = 1e-2


def alpha_grid_counts(cv_scores, alphas, voxels=None):
    """Where a ridge's per-voxel choices sit on its penalty grid.

    Parameters
    ----------
    cv_scores : (n_alphas, n_voxels) array, ``fit_ridge_cv``'s mean held-out scores
    alphas : (n_alphas,) the penalties, in any order
    voxels : (n_voxels,) bool, the voxels to count (e.g. those above the noise-ceiling
        threshold); None: all

    Returns
    -------
    edges : (3,) int64, the voxels at the grid's smallest alpha, at its largest, and the voxels
        counted: those of ``voxels`` whose score is not the same at every alpha (constant
        responses choose nothing). A voxel is at an end when its best score is there and
        beats the neighbouring alpha's by more than ``EDGE_RISE`` of its range.
    score_sum : (n_alphas,) float64, the sum of the counted voxels' scores (order of ``alphas``)
    Sums, so that the parts of several processes add up.
    """
    cv_scores = np.asarray(cv_scores, np.float64)
    scores = cv_scores[np.argsort(alphas, kind="stable")]
    spread = scores.max(0) - scores.min(0)
    counted = spread > 0
    if voxels is not None:
        counted &= np.asarray(voxels, bool)
    scores, spread = scores[:, counted], spread[counted]
    best = scores.argmax(0)
    if len(scores) < 2:
        lowest = highest = np.zeros_like(best, bool)
    else:
        lowest = (best == 0) & (scores[0] - scores[1] > EDGE_RISE * spread)
        highest = (best == len(scores) - 1) & (scores[-1] - scores[-2] > EDGE_RISE * spread)
    edges = np.array([lowest.sum(), highest.sum(), counted.sum()], np.int64)
    return edges, cv_scores[:, counted].sum(1)


def alpha_grid_summary(alphas, edges, score_sum, widen_decades=3.0):
    """The fractions of voxels at each end of the grid, the mean CV score per alpha, and a wider
    grid where more than ``EDGE_WARNING_FRACTION`` sit at an end (None otherwise).

    ``edges`` and ``score_sum`` are ``alpha_grid_counts``'s (summed over processes). The wider
    grid keeps the grid's median log spacing and reaches ``widen_decades`` beyond each crowded
    end. Returns a dict: ``lowest_fraction``, ``highest_fraction``, ``n_voxels``,
    ``mean_cv_score`` ((n_alphas,) in the order of ``alphas``, None without a counted voxel),
    ``wider_alphas`` (sorted, or None).
    """
    alphas = np.asarray(alphas, np.float64)
    n_lowest, n_highest, n = (int(count) for count in edges)
    low, high = (n_lowest / n, n_highest / n) if n else (0.0, 0.0)
    wider = None
    if max(low, high) > EDGE_WARNING_FRACTION and len(alphas) > 1:
        logs = np.log10(np.sort(alphas))
        step = float(np.median(np.diff(logs))) or 1.0
        extra = step * np.arange(1, int(np.ceil(widen_decades / step)) + 1)
        logs = np.concatenate([
            logs[0] - extra[::-1] if low > EDGE_WARNING_FRACTION else [], logs,
            logs[-1] + extra if high > EDGE_WARNING_FRACTION else []])
        wider = (10.0 ** logs).tolist()
    return {"lowest_fraction": low, "highest_fraction": high, "n_voxels": n,
            "mean_cv_score": (np.asarray(score_sum, np.float64) / n).tolist() if n else None,
            "wider_alphas": wider}


# ----------------------------------------------------------------------------- summaries

def percent_drop(before, after):
    """100 (before - after) / before, or None where ``before`` is not a positive number (a drop
    relative to a zero or negative score has no meaning, and its sign would flip)."""
    if not np.isfinite(before) or before <= 0 or not np.isfinite(after):
        return None
    return float(100.0 * (before - after) / before)


def percent_drop_samples(before, after):
    """``percent_drop`` of each resample: (n_resamples, ...) arrays of the scores before and
    after removal, NaN wherever a resample's ``before`` is not positive."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    positive = before > 0
    return np.where(positive, 100.0 * (before - after) / np.where(positive, before, 1.0), np.nan)


def amount_needed(amounts, curve, target):
    """The least training data at which a score curve first reaches ``target``: linear
    interpolation between the two amounts measured around its first crossing.

    Parameters
    ----------
    amounts : (n,) increasing amounts of training data (e.g. stories)
    curve : (..., n) the score at each amount
    target : (...) the score to reach

    Returns
    -------
    (...) float64: the amount; ``amounts[0]`` where the curve starts at or above the target
    (an upper bound), NaN where it never reaches it (or is NaN where it would).
    """
    amounts = np.asarray(amounts, np.float64)
    curve = np.asarray(curve, np.float64)
    target = np.asarray(target, np.float64)[..., None]
    reached = curve >= target
    first = reached.argmax(-1)[..., None]
    before = np.maximum(first - 1, 0)
    y0, y1 = (np.take_along_axis(curve, at, -1)[..., 0] for at in (before, first))
    x0, x1 = amounts[before[..., 0]], amounts[first[..., 0]]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = x0 + (target[..., 0] - y0) / (y1 - y0) * (x1 - x0)
    needed = np.where(first[..., 0] == 0, amounts[0], between)
    return np.where(reached.any(-1), needed, np.nan)


def interval_verdict(low, high):
    """What an interval of a difference (B - A) says: "higher" (it lies above 0), "lower" (below
    0), "no detectable difference" (it holds 0), or None without a finite interval."""
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return None
    if low > 0:
        return "higher"
    return "lower" if high < 0 else "no detectable difference"
