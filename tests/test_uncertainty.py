"""Uncertainty maths in eval_utils: block-permutation p-values, block-bootstrap correlations
and percentile intervals, each checked against a direct computation from its definition."""

import numpy as np
import pytest
from scipy import sparse, stats
from scipy.signal import lfilter
from threadpoolctl import threadpool_limits

import eval_utils


# ----------------------------------------------------------------------------- permutations

def _permuted_order(permutation, n_rows, block_len):
    """Row order of the permuted target: block k of the output is block permutation[k] of the
    input, the n_rows % block_len tail rows stay in place."""
    n_blocks = n_rows // block_len
    return np.concatenate([np.arange(b * block_len, (b + 1) * block_len) for b in permutation]
                          + [np.arange(n_blocks * block_len, n_rows)])


def _pearson_columns(x, y):
    """np.corrcoef of each column of x with the same column of y; 0 for a constant column
    (where np.corrcoef has no answer)."""
    n = x.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.diag(np.corrcoef(x.T, y.T)[:n, n:])
    return np.nan_to_num(r, nan=0.0)


def _brute_force_pvalues(prediction, target, n_permutations, block_len, seed):
    """p = (1 + #{permuted r >= observed r}) / (1 + n_permutations), one permutation at a time:
    the target's rows reordered, then np.corrcoef, in float64."""
    n_rows, n_voxels = prediction.shape
    permutations = eval_utils.permuted_blocks(n_rows // block_len, n_permutations, seed)
    observed = _pearson_columns(prediction, target)
    exceed = np.zeros(n_voxels, int)
    for permutation in permutations:
        shuffled = target[_permuted_order(permutation, n_rows, block_len)]
        exceed += _pearson_columns(prediction, shuffled) >= observed
    return (1 + exceed) / (1 + n_permutations), permutations


def _signal_and_noise(n_rows=73, n_voxels=40, n_signal=12, seed=1):
    rng = np.random.default_rng(seed)
    prediction = rng.standard_normal((n_rows, n_voxels))
    target = rng.standard_normal((n_rows, n_voxels))
    n_signal = min(n_signal, n_voxels)
    target[:, :n_signal] += np.linspace(1.5, 0.2, n_signal) * prediction[:, :n_signal]
    return prediction, target


def test_permuted_blocks_are_seeded_permutations():
    permutations = eval_utils.permuted_blocks(7, 50, seed=3)
    assert permutations.shape == (50, 7) and permutations.dtype == np.int64
    np.testing.assert_array_equal(np.sort(permutations, axis=1), np.tile(np.arange(7), (50, 1)))
    np.testing.assert_array_equal(permutations, eval_utils.permuted_blocks(7, 50, seed=3))
    assert not np.array_equal(permutations, eval_utils.permuted_blocks(7, 50, seed=4))
    assert len({tuple(p) for p in permutations.tolist()}) > 40  # random, not one order


@pytest.mark.parametrize("seed", [0, 1])
def test_permutation_pvalues_match_a_direct_loop(seed):
    prediction, target = _signal_and_noise()
    expected, permutations = _brute_force_pvalues(prediction, target, 199, 10, seed)
    # no identity order among these draws: the next test has that case
    assert not (permutations == np.arange(7)).all(axis=1).any()
    got = eval_utils.block_permutation_pvalues(prediction, target, n_permutations=199,
                                               block_len=10, seed=seed)
    assert got.shape == (40,) and got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    # the strong signals reach the smallest p there is, the noise voxels spread out
    assert (got[:6] == 1 / 200).all()
    assert np.median(got[12:]) > 0.2
    # voxel batches do not change the answer
    np.testing.assert_array_equal(
        eval_utils.block_permutation_pvalues(prediction, target, 199, 10, seed, voxel_batch=7),
        got)
    # float32 in, float32 out, same p
    got32 = eval_utils.block_permutation_pvalues(prediction.astype(np.float32),
                                                 target.astype(np.float32), 199, 10, seed)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, expected, rtol=1e-6)


def test_permutation_pvalues_count_identity_draws_as_ties():
    # an identity order gives the observed r again: a tie, whatever float32 rounding does
    rng = np.random.default_rng(0)
    prediction = rng.standard_normal((43, 100))  # 4 blocks of 10 and 3 tail rows
    target = 0.3 * prediction + rng.standard_normal((43, 100))
    expected, permutations = _brute_force_pvalues(prediction, target, 99, 10, seed=0)
    assert (permutations == np.arange(4)).all(axis=1).sum() == 5  # identity drawn 5 times
    got = eval_utils.block_permutation_pvalues(prediction, target, 99, 10, seed=0)
    np.testing.assert_array_equal(got, expected)


def test_permutation_pvalues_are_uniform_under_the_null():
    rng = np.random.default_rng(5)
    prediction = rng.standard_normal((200, 3000))
    target = rng.standard_normal((200, 3000))
    p = eval_utils.block_permutation_pvalues(prediction, target, n_permutations=199,
                                             block_len=10, seed=2)
    k = np.rint(p * 200).astype(int)  # p = k / 200, k in 1..200
    np.testing.assert_allclose(p, k / 200)
    assert k.min() >= 1 and k.max() <= 200
    # ten bins of twenty p-values each: probability 0.1 each under the discrete uniform
    observed = np.bincount((k - 1) // 20, minlength=10)
    assert stats.chisquare(observed).pvalue > 1e-3
    # and P(p <= 0.05) = P(k <= 10) = 0.05 exactly (sd of the fraction: 0.004)
    assert 0.035 < np.mean(p <= 0.05) < 0.065
    # Kolmogorov-Smirnov distance to the discrete uniform CDF k / 200, within the DKW bound
    # sqrt(log(2 / 0.001) / (2 * 3000)) = 0.036 that holds with probability 0.999
    empirical_cdf = np.cumsum(np.bincount(k, minlength=201)[1:]) / len(k)
    assert np.abs(empirical_cdf - np.arange(1, 201) / 200).max() < 0.036


def test_permutation_pvalues_of_constant_columns_are_one():
    prediction, target = _signal_and_noise(n_voxels=5)
    prediction[:, 1] = 3.0
    target[:, 2] = -1.0
    prediction[:, 3] = target[:, 3] = 0.0
    p = eval_utils.block_permutation_pvalues(prediction, target, 99, 10, seed=0)
    np.testing.assert_array_equal(p[1:4], 1.0)
    assert p[0] < 0.05


def test_permutation_pvalues_are_seeded():
    prediction, target = _signal_and_noise(seed=7)
    first = eval_utils.block_permutation_pvalues(prediction, target, 99, 10, seed=11)
    np.testing.assert_array_equal(
        first, eval_utils.block_permutation_pvalues(prediction, target, 99, 10, seed=11))
    other = eval_utils.block_permutation_pvalues(prediction, target, 99, 10, seed=12)
    assert (first != other).sum() >= 5


def test_permutation_pvalues_bad_input():
    with pytest.raises(ValueError):
        eval_utils.block_permutation_pvalues(np.ones((30, 2)), np.ones((30, 3)))
    with pytest.raises(ValueError, match="too few"):
        eval_utils.block_permutation_pvalues(np.ones((19, 2)), np.ones((19, 2)), block_len=10)


# ----------------------------------------------------------------------------- block bootstrap

def _resampled_rows(count_row, block_starts):
    """The rows of one resample: block b's rows repeated count_row[b] times."""
    return np.concatenate([np.tile(np.arange(block_starts[b], block_starts[b + 1]), c)
                           for b, c in enumerate(count_row)])


def test_bootstrap_counts_draw_every_block_and_cover_all_rows():
    counts, starts = eval_utils.bootstrap_block_counts(73, block_len=10, n_bootstrap=4000,
                                                       seed=2)
    np.testing.assert_array_equal(starts, [0, 10, 20, 30, 40, 50, 60, 70, 73])
    assert counts.shape == (4000, 8) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts.sum(axis=1), 8)
    assert counts.min() >= 0
    # each block is drawn Binomial(8, 1/8) times: mean 1, variance 7/8
    np.testing.assert_allclose(counts.mean(axis=0), 1.0, atol=0.06)
    np.testing.assert_allclose(counts.var(axis=0), 7 / 8, atol=0.08)
    again, _ = eval_utils.bootstrap_block_counts(73, 10, 4000, seed=2)
    np.testing.assert_array_equal(counts, again)
    other, _ = eval_utils.bootstrap_block_counts(73, 10, 4000, seed=3)
    assert not np.array_equal(counts, other)
    even_counts, even_starts = eval_utils.bootstrap_block_counts(80, 10, 5, seed=0)
    np.testing.assert_array_equal(even_starts, np.arange(0, 81, 10))
    assert even_counts.shape == (5, 8)
    _, short_starts = eval_utils.bootstrap_block_counts(15, 10, 3)  # blocks of 10 and 5
    np.testing.assert_array_equal(short_starts, [0, 10, 15])
    with pytest.raises(ValueError):
        eval_utils.bootstrap_block_counts(10, block_len=10)  # one block: nothing to resample


def test_bootstrap_correlations_match_the_resampled_rows():
    rng = np.random.default_rng(3)
    n_rows, n_voxels = 73, 25
    prediction = rng.standard_normal((n_rows, n_voxels)) + 5.0  # offsets: no cancellation
    target = 0.5 * prediction + rng.standard_normal((n_rows, n_voxels)) - 2.0
    counts, starts = eval_utils.bootstrap_block_counts(n_rows, 10, 200, seed=1)
    r = eval_utils.bootstrap_correlations(prediction, target, counts, starts)
    assert r.shape == (200, n_voxels) and r.dtype == np.float64
    for i in (0, 1, 17, 99, 199):
        rows = _resampled_rows(counts[i], starts)
        assert len(rows) == counts[i] @ np.diff(starts)
        expected = [np.corrcoef(prediction[rows, v], target[rows, v])[0, 1]
                    for v in range(n_voxels)]
        np.testing.assert_allclose(r[i], expected, rtol=0, atol=1e-10)
    # float32 input gives the same (computed in float64 from the float32 values)
    r32 = eval_utils.bootstrap_correlations(prediction.astype(np.float32),
                                            target.astype(np.float32), counts, starts)
    rows = _resampled_rows(counts[5], starts)
    p32, t32 = prediction.astype(np.float32).astype(np.float64), target.astype(
        np.float32).astype(np.float64)
    np.testing.assert_allclose(
        r32[5], [np.corrcoef(p32[rows, v], t32[rows, v])[0, 1] for v in range(n_voxels)],
        atol=1e-10)
    # voxel batches do not change the answer
    np.testing.assert_allclose(
        eval_utils.bootstrap_correlations(prediction, target, counts, starts, voxel_batch=4), r,
        rtol=0, atol=1e-13)
    # the explained variance r |r| of each resample, weighted sums of it too
    weights = np.random.default_rng(6).uniform(size=(n_voxels, 2))
    np.testing.assert_allclose(
        eval_utils.bootstrap_correlations(prediction, target, counts, starts, weights,
                                          voxel_batch=7, signed_square=True),
        (r * np.abs(r)) @ weights, rtol=1e-12)


def _related_columns(rng, n_rows, n_voxels):
    """A random prediction (rows, voxels) and a target related to it by a random gain per
    voxel (0-1) plus unit noise."""
    prediction = rng.standard_normal((n_rows, n_voxels))
    target = prediction * rng.uniform(0, 1, n_voxels) + rng.standard_normal((n_rows, n_voxels))
    return prediction, target


def test_bootstrap_correlations_with_weights_are_the_weighted_sums():
    n_voxels = 30
    prediction, target = _related_columns(np.random.default_rng(4), 64, n_voxels)
    counts, starts = eval_utils.bootstrap_block_counts(64, 8, 150, seed=5)
    # region means: voxels 0-9, 5-19 (overlapping), 25-29; voxels 20-24 in no region
    regions = [np.arange(0, 10), np.arange(5, 20), np.arange(25, 30)]
    weights = np.zeros((n_voxels, len(regions)))
    for j, voxels in enumerate(regions):
        weights[voxels, j] = 1.0 / len(voxels)
    unweighted = eval_utils.bootstrap_correlations(prediction, target, counts, starts)
    for batch in (8192, 7):
        got = eval_utils.bootstrap_correlations(prediction, target, counts, starts,
                                                weights=weights, voxel_batch=batch)
        assert got.shape == (150, 3)
        np.testing.assert_allclose(got, unweighted @ weights, rtol=0, atol=1e-12)
        for j, voxels in enumerate(regions):
            np.testing.assert_allclose(got[:, j], unweighted[:, voxels].mean(axis=1), atol=1e-12)
    with pytest.raises(ValueError):
        eval_utils.bootstrap_correlations(prediction, target, counts, starts,
                                          weights=weights[:-1])


def test_bootstrap_correlations_with_sparse_weights_equal_the_dense_ones():
    rng = np.random.default_rng(8)
    n_voxels = 300
    prediction, target = _related_columns(rng, 80, n_voxels)
    counts, starts = eval_utils.bootstrap_block_counts(80, 8, 60, seed=2)
    weights = rng.uniform(size=(n_voxels, 7)) * (rng.uniform(size=(n_voxels, 7)) < 0.1)
    weights[:, 3] = 0.0  # a summary without voxels
    dense = eval_utils.bootstrap_correlations(prediction, target, counts, starts,
                                              weights=weights, voxel_batch=100)
    for matrix in (sparse.csr_array(weights), sparse.coo_array(weights.astype(np.float32))):
        got = eval_utils.bootstrap_correlations(prediction, target, counts, starts,
                                                weights=matrix, voxel_batch=100)
        assert type(got) is np.ndarray and got.dtype == np.float64 and got.shape == (60, 7)
        np.testing.assert_allclose(got, dense, rtol=1e-12 if matrix.dtype == np.float64
                                   else 1e-6, atol=1e-15)


def test_bootstrap_correlations_of_columns_constant_in_a_resample_are_zero():
    rng = np.random.default_rng(6)
    prediction = rng.standard_normal((73, 3))
    target = rng.standard_normal((73, 3))
    prediction[:, 0] = 0.0
    prediction[:10, 0] = 0.3  # varies only through block 0
    prediction[:, 1] = 2.0  # constant everywhere
    counts, starts = eval_utils.bootstrap_block_counts(73, 10, 300, seed=0)
    r = eval_utils.bootstrap_correlations(prediction, target, counts, starts)
    without_block_0 = counts[:, 0] == 0
    assert without_block_0.sum() > 20
    # r = 0 where the column is constant; the per-block sums leave rounding of ~1e-9 at most
    np.testing.assert_allclose(r[without_block_0, 0], 0.0, atol=1e-6)
    np.testing.assert_array_equal(r[:, 1], 0.0)
    rows = _resampled_rows(counts[np.flatnonzero(~without_block_0)[0]], starts)
    np.testing.assert_allclose(r[np.flatnonzero(~without_block_0)[0], 0],
                               np.corrcoef(prediction[rows, 0], target[rows, 0])[0, 1],
                               atol=1e-10)


def test_bootstrap_correlations_bad_input():
    counts, starts = eval_utils.bootstrap_block_counts(40, 10, 5)
    with pytest.raises(ValueError):
        eval_utils.bootstrap_correlations(np.ones((41, 2)), np.ones((41, 2)), counts, starts)
    with pytest.raises(ValueError):
        eval_utils.bootstrap_correlations(np.ones((40, 2)), np.ones((40, 3)), counts, starts)


# ----------------------------------------------------------------------------- intervals

def test_percentile_interval_is_numpy_percentile():
    samples = np.random.default_rng(7).standard_normal((1001, 4)) * [1, 2, 3, 4]
    for confidence in (0.95, 0.9, 0.5):
        low, high = eval_utils.percentile_interval(samples, confidence)
        tail = 100 * (1 - confidence) / 2
        np.testing.assert_array_equal(low, np.percentile(samples, tail, axis=0))
        np.testing.assert_array_equal(high, np.percentile(samples, 100 - tail, axis=0))
    low, high = eval_utils.percentile_interval(samples[:, 0])
    assert np.ndim(low) == 0
    assert low == np.percentile(samples[:, 0], 2.5) and high == np.percentile(samples[:, 0], 97.5)
    # a 95% interval holds about 95% of the samples
    assert 0.94 < np.mean((samples[:, 0] >= low) & (samples[:, 0] <= high)) < 0.96


def _ar1(rng, shape, phi):
    """Stationary AR(1) along axis 0 with unit variance."""
    e = rng.standard_normal(shape)
    e[0] /= np.sqrt(1 - phi ** 2)
    return lfilter([1.0], [1.0, -phi], e, axis=0) * np.sqrt(1 - phi ** 2)


def test_bootstrap_interval_of_a_difference_covers_the_planted_truth():
    """400 datasets of 251 rows and 50 voxels: target = s + e0, prediction a = c_a s + e1,
    prediction b = c_b s + e2, signal and noise stationary AR(1) with phi = 0.8 (unit variance,
    autocorrelation 0.8^10 = 0.11 at 10 TRs). The true correlations are
    c / sqrt(2 (c^2 + 1)); the 95% percentile interval of the difference of the mean
    correlations over voxels (one set of block-bootstrap counts for both predictions, blocks of
    10) covers the true difference in about 95% of the datasets.

    (Blocks of 10 TRs lose some of the dependence, so the intervals come out ~17% narrower
    than 2 x 1.96 sd of the estimates and cover ~0.89 (0.87-0.91 over seeds); with an
    e-folding time of 10 TRs, phi = 0.905, the coverage drops to ~0.83.)"""
    rng = np.random.default_rng(0)
    n_rows, n_voxels, phi = 251, 50, 0.8
    c_a = rng.uniform(0.5, 1.5, n_voxels)
    c_b = 0.6 * c_a
    true = np.mean(c_a / np.sqrt(2 * (c_a ** 2 + 1)) - c_b / np.sqrt(2 * (c_b ** 2 + 1)))
    mean_over_voxels = np.full((n_voxels, 1), 1.0 / n_voxels)
    covered, estimates, widths = [], [], []
    with threadpool_limits(1):  # tiny products: threads only cost here
        for dataset in range(400):
            signal = _ar1(rng, (n_rows, n_voxels), phi)
            target = signal + _ar1(rng, (n_rows, n_voxels), phi)
            pred_a = c_a * signal + _ar1(rng, (n_rows, n_voxels), phi)
            pred_b = c_b * signal + _ar1(rng, (n_rows, n_voxels), phi)
            counts, starts = eval_utils.bootstrap_block_counts(n_rows, 10, 500, seed=dataset)
            difference = (
                eval_utils.bootstrap_correlations(pred_a, target, counts, starts,
                                                  weights=mean_over_voxels)
                - eval_utils.bootstrap_correlations(pred_b, target, counts, starts,
                                                    weights=mean_over_voxels))[:, 0]
            low, high = eval_utils.percentile_interval(difference)
            covered.append(low <= true <= high)
            widths.append(high - low)
            estimates.append(np.mean(eval_utils.column_correlation(pred_a, target)
                                     - eval_utils.column_correlation(pred_b, target)))
    coverage = np.mean(covered)
    assert 0.85 <= coverage <= 0.99, coverage
    # the point estimate is (nearly) unbiased and the intervals are not trivially wide
    assert abs(np.mean(estimates) - true) < 0.01
    ideal_width = 2 * 1.96 * np.std(estimates)
    assert 0.6 * ideal_width < np.median(widths) < 1.5 * ideal_width
