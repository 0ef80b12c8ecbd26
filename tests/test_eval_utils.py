"""Encoding-model maths in eval_utils: Lanczos resampling, delays, z-scoring, splits, ridge."""

import math
import types

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

import alignment_analyses
import eval_utils


# ----------------------------------------------------------------------------- Lanczos

def _lanczos_reference(data, old_times, new_times, window=3, cutoff_mult=1.0):
    """The kernel sum written out with math.sin, one output value at a time."""
    cutoff = cutoff_mult / ((new_times[-1] - new_times[0]) / (len(new_times) - 1))
    out = np.zeros((len(new_times), data.shape[1]))
    for i, t_new in enumerate(new_times):
        for j, t_old in enumerate(old_times):
            x = cutoff * (t_new - t_old)
            if x == 0:
                weight = 1.0
            elif abs(x) > window:
                weight = 0.0
            else:
                weight = window * math.sin(math.pi * x) * math.sin(math.pi * x / window) / (
                    math.pi ** 2 * x ** 2)
            out[i] += weight * data[j]
    return out


def test_lanczos_matches_the_closed_form():
    rng = np.random.default_rng(0)
    old_times = np.sort(rng.uniform(0, 60, 200))
    new_times = np.arange(30) * 2.0 + 1.0
    data = rng.standard_normal((200, 3))
    np.testing.assert_allclose(eval_utils.lanczos_interp(data, old_times, new_times),
                               _lanczos_reference(data, old_times, new_times), atol=1e-10)
    np.testing.assert_allclose(
        eval_utils.lanczos_interp(data, old_times, new_times, window=2, cutoff_mult=0.5),
        _lanczos_reference(data, old_times, new_times, window=2, cutoff_mult=0.5), atol=1e-10)


def test_lanczos_passes_slow_signals_and_keeps_dtype():
    """A slow sine sampled every 0.1 s comes out at the TRs scaled by the 20 samples per TR."""
    old_times = np.arange(0, 600, 0.1)
    new_times = np.arange(20, 580, 2.0)
    slow = np.sin(2 * np.pi * old_times / 60.0)[:, None].astype(np.float32)
    out = eval_utils.lanczos_interp(slow, old_times, new_times)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0] / 20.0, np.sin(2 * np.pi * new_times / 60.0), atol=0.01)
    fast = np.sin(2 * np.pi * old_times / 1.0)[:, None]  # 1 Hz, far above the 0.25 Hz Nyquist
    assert np.abs(eval_utils.lanczos_interp(fast, old_times, new_times)).max() < 0.05 * 20


# ----------------------------------------------------------------------------- delays, z-scores

def test_make_delayed_shifts_with_zero_padding():
    x = np.arange(12, dtype=np.float32).reshape(6, 2) + 1
    out = eval_utils.make_delayed(x, [1, 2, -1, 0])
    assert out.shape == (6, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0:2], np.vstack([np.zeros((1, 2)), x[:-1]]))
    np.testing.assert_array_equal(out[:, 2:4], np.vstack([np.zeros((2, 2)), x[:-2]]))
    np.testing.assert_array_equal(out[:, 4:6], np.vstack([x[1:], np.zeros((1, 2))]))
    np.testing.assert_array_equal(out[:, 6:8], x)
    np.testing.assert_array_equal(eval_utils.make_delayed(x, [10]), 0)


def test_zscore_population_std_and_constant_columns():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]], dtype=np.float32)
    out = eval_utils.zscore(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], (x[:, 0] - 3) / np.sqrt(8 / 3), rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], 0)


def test_story_features_are_trimmed_scored_and_delayed_per_story():
    rng = np.random.default_rng(1)
    stories = [rng.standard_normal((40, 2)) * 5 + 3, rng.standard_normal((55, 2))]
    design = eval_utils.delayed_story_features(stories, delays=(1, 2, 3, 4))
    assert design.shape == (25 + 40, 8)
    second = eval_utils.zscore(stories[1][10:-5])
    # the first rows of the second story are zero in the delayed copies: nothing leaks from
    # the end of the first story
    np.testing.assert_array_equal(design[25, 0:2], 0)
    np.testing.assert_array_equal(design[25:29, 6:8], 0)
    np.testing.assert_allclose(design[26, 0:2], second[0])
    np.testing.assert_allclose(design[:25, 2:4], eval_utils.make_delayed(
        eval_utils.zscore(stories[0][10:-5]), [2]))


def test_stacked_delays_reach_into_the_previous_story():
    """--delays stacked (the authors'): the trimmed, z-scored stories stacked, then delayed;
    written out row by row."""
    rng = np.random.default_rng(2)
    stories = [rng.standard_normal((40, 2)) * 5 + 3, rng.standard_normal((55, 2)),
               rng.standard_normal((21, 2))]
    delays = (1, 2, 3, 4)
    design = eval_utils.delayed_story_features(stories, delays=delays, mode="stacked")
    stacked = np.vstack([eval_utils.zscore(story[10:-5]) for story in stories])
    expected = np.zeros((len(stacked), 2 * len(delays)))
    for row in range(len(stacked)):
        for k, delay in enumerate(delays):
            if row - delay >= 0:
                expected[row, 2 * k:2 * k + 2] = stacked[row - delay]
    np.testing.assert_array_equal(design, expected)
    assert design.shape == (25 + 40 + 6, 8)
    # the second story's first row holds the first story's last row one TR later (ours: 0)
    np.testing.assert_array_equal(design[25, 0:2], stacked[24])
    per_story = eval_utils.delayed_story_features(stories, delays=delays)
    np.testing.assert_array_equal(per_story[25, 0:2], 0)
    np.testing.assert_array_equal(per_story[:25], design[:25])  # the first story is the same
    # from its 5th row on (past the longest delay) a story's rows agree
    np.testing.assert_array_equal(per_story[29:65], design[29:65])
    assert not np.array_equal(per_story[65:69], design[65:69])
    with pytest.raises(ValueError, match="unknown delay mode"):
        eval_utils.delayed_story_features(stories, mode="across")


# ----------------------------------------------------------------------------- splits

def test_splits_hold_out_whole_chunks_inside_stories():
    lengths = [53, 100, 47]
    splits = eval_utils.bootstrap_chunk_splits(lengths, n_boots=5, chunk_len=20, seed=3)
    boundaries = np.cumsum([0] + lengths)
    assert len(splits) == 5
    for train, val in splits:
        assert np.intersect1d(train, val).size == 0
        np.testing.assert_array_equal(np.union1d(train, val), np.arange(sum(lengths)))
        assert 0.15 < len(val) / sum(lengths) < 0.35
        # each chunk (20 rows from a chunk start inside a story, or the story's last rows) is
        # held out whole or not at all
        held = np.isin(np.arange(sum(lengths)), val)
        for first, length in zip(boundaries[:-1], lengths):
            for start in range(0, length, 20):
                chunk = held[first + start:first + min(start + 20, length)]
                assert chunk.all() or not chunk.any()
    assert not all(np.array_equal(splits[0][1], s[1]) for s in splits[1:])
    again = eval_utils.bootstrap_chunk_splits(lengths, n_boots=5, chunk_len=20, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    with pytest.raises(ValueError):
        eval_utils.bootstrap_chunk_splits([20], chunk_len=20)


def test_chunks_never_straddle_stories():
    lengths = [25, 25]
    for _, val in eval_utils.bootstrap_chunk_splits(lengths, n_boots=20, chunk_len=20,
                                                    held_out_fraction=0.25, seed=0):
        assert set(val.tolist()) in ({*range(0, 20)}, {*range(20, 25)}, {*range(25, 45)},
                                     {*range(45, 50)})


def _authors_held_out(n_rows, chunk_len, n_boots, seed):
    """The held-out rows of the Huth-lab bootstrap_ridge as the authors call it, written as it
    is (whole chunks of the stacked rows by zip(*[iter(rows)] * chunklen), shuffled, the first
    int(0.25 * rows / chunklen) held out), its random.shuffle replaced by a seeded permutation."""
    import itertools

    rng = np.random.default_rng(seed)
    indchunks = list(zip(*[iter(range(n_rows))] * chunk_len))
    nchunks = int(n_rows * 0.25 / chunk_len)
    held = []
    for _ in range(n_boots):
        order = rng.permutation(len(indchunks))
        shuffled = [indchunks[i] for i in order]
        heldinds = list(itertools.chain(*shuffled[:nchunks]))
        notheldinds = list(set(range(n_rows)) - set(heldinds))
        held.append((sorted(notheldinds), sorted(heldinds)))
    return held


def test_stacked_chunks_are_the_authors():
    """--cv_chunks stacked: whole chunks of the stacked rows, straddling story boundaries, the
    trailing partial chunk never held out, int(25% of rows / chunk_len) of them per bootstrap;
    against a brute-force construction of the authors' index sets."""
    import encoding

    lengths = [53, 100, 47, 31]  # 231 rows: 11 whole chunks of 20, 2 held out
    for seed in (0, 5):
        splits = eval_utils.stacked_chunk_splits(sum(lengths), n_boots=3, chunk_len=20,
                                                 seed=seed)
        expected = _authors_held_out(sum(lengths), 20, 3, seed)
        assert len(splits) == 3
        for (train, val), (their_train, their_val) in zip(splits, expected):
            assert train.dtype == val.dtype == np.int64
            assert train.tolist() == their_train and val.tolist() == their_val
            assert len(val) == 2 * 20 and val.max() < 220
        same = encoding.cv_splits(lengths, 3, 20, seed, chunks="stacked")
        assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, same))
    # the chunk 40..59 straddles the first story's end (row 53): held out whole, sometimes
    held = [set(val.tolist()) for seed in range(40)
            for _, val in eval_utils.stacked_chunk_splits(sum(lengths), 1, 20, seed=seed)]
    assert any(set(range(40, 60)) <= rows for rows in held)
    # ours on the same stories: 3 + 5 + 3 + 2 = 13 chunks inside stories, round(3.25) = 3 held
    starts = np.cumsum([0, *lengths[:-1]])
    chunks = [frozenset(range(first + s, first + min(s + 20, n)))
              for first, n in zip(starts, lengths) for s in range(0, n, 20)]
    assert len(chunks) == 13
    for _, val in encoding.cv_splits(lengths, 3, 20, 0):
        assert sum(chunk <= set(val.tolist()) for chunk in chunks) == 3
    with pytest.raises(ValueError, match="too few"):
        eval_utils.stacked_chunk_splits(79, chunk_len=20)  # int(0.25 * 79 / 20) = 0
    with pytest.raises(encoding.UsageError, match="--chunk_len 20"):
        encoding.cv_splits([40, 39], 3, 20, chunks="stacked")


# ----------------------------------------------------------------------------- ridge

def _problem(n=400, p=30, v=50, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    weights = rng.standard_normal((p, v)) * (rng.uniform(size=v) > 0.2)
    noise = rng.standard_normal((n, v)) * np.linspace(0.3, 30, v)
    return X.astype(dtype), (X @ weights + noise).astype(dtype)


def test_ridge_refit_matches_the_closed_form():
    X, Y = _problem()
    alphas = np.logspace(-2, 4, 7)
    splits = eval_utils.bootstrap_chunk_splits([200, 200], n_boots=3, chunk_len=20)
    weights, best, scores = eval_utils.fit_ridge_cv(X, Y, alphas, splits)
    assert weights.shape == (30, 50) and best.shape == (50,) and scores.shape == (7, 50)
    assert len(set(best.tolist())) > 1  # the noise levels call for different alphas
    for voxel in range(50):
        expected = np.linalg.solve(X.T @ X + best[voxel] * np.eye(30), X.T @ Y[:, voxel])
        np.testing.assert_allclose(weights[:, voxel], expected, rtol=1e-8, atol=1e-10)


def test_ridge_cv_scores_match_a_direct_computation():
    X, Y = _problem(v=6)
    alphas = np.array([0.1, 10.0, 1000.0])
    splits = eval_utils.bootstrap_chunk_splits([400], n_boots=2, chunk_len=25)
    _, best, scores = eval_utils.fit_ridge_cv(X, Y, alphas, splits)
    expected = np.zeros((3, 6))
    for train, val in splits:
        for a, alpha in enumerate(alphas):
            w = np.linalg.solve(X[train].T @ X[train] + alpha * np.eye(30), X[train].T @ Y[train])
            expected[a] += eval_utils.column_correlation(X[val] @ w, Y[val]) / len(splits)
    np.testing.assert_allclose(scores, expected, atol=1e-10)
    np.testing.assert_array_equal(best, alphas[expected.argmax(0)])


def test_ridge_agrees_with_himalaya():
    pytest.importorskip("himalaya")
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import correlation_score

    set_backend("numpy", on_error="warn")
    X, Y = _problem(n=600, p=40, v=80, seed=2, dtype=np.float64)
    alphas = np.logspace(-1, 5, 10)
    splits = eval_utils.bootstrap_chunk_splits([300, 300], n_boots=3, chunk_len=20, seed=1)
    weights, best, _ = eval_utils.fit_ridge_cv(X, Y, alphas, splits)
    reference = RidgeCV(alphas=alphas, cv=splits, fit_intercept=False,
                        solver_params=dict(score_func=correlation_score, local_alpha=True))
    reference.fit(X, Y)
    # float64: in float32 a voxel whose two best penalties score within rounding of each other
    # picks either, depending on the BLAS thread count
    np.testing.assert_allclose(best, reference.best_alphas_, rtol=1e-10)
    np.testing.assert_allclose(weights, reference.coef_, rtol=1e-7, atol=1e-10)
    assert len(np.unique(reference.best_alphas_)) > 1  # a comparison of per-voxel choices


def _banded_problem(n=600, p1=30, p2=8, v=60, seed=4):
    """Two bands of features; voxels read either or both with varying noise, so that they
    need different penalty pairs. float64."""
    rng = np.random.default_rng(seed)
    X1, X2 = rng.standard_normal((n, p1)), rng.standard_normal((n, p2))
    mix = rng.uniform(0, 1, v)
    Y = (X1 @ rng.standard_normal((p1, v)) * mix + X2 @ rng.standard_normal((p2, v)) * (1 - mix)
         + rng.standard_normal((n, v)) * np.linspace(1, 30, v))
    return X1, X2, eval_utils.zscore(Y)


BANDED_SPLITS = eval_utils.bootstrap_chunk_splits([300, 300], n_boots=3, chunk_len=20, seed=1)


@pytest.mark.parametrize("solver", ["primal", "dual"])
def test_banded_ridge_is_a_search_over_rescaled_designs(solver):
    """Each ratio scored as fit_ridge_cv scores the design [X1, X2 / sqrt(ratio)], each voxel
    the best (ratio, alpha) pair of them all, refitted: in either solver."""
    X1, X2, Y = _banded_problem()
    alphas, ratios = np.logspace(0, 4, 5), np.logspace(-2, 2, 5)
    weights, best_alphas, best_ratios, scores = eval_utils.fit_banded_ridge_cv(
        X1, X2, Y, alphas, ratios, BANDED_SPLITS, solver=solver, score="r2")
    assert scores.shape == (5, 5, Y.shape[1]) and weights.shape == (38, Y.shape[1])
    for index, ratio in enumerate(ratios):
        _, _, expected = eval_utils.fit_ridge_cv(np.hstack([X1, X2 / np.sqrt(ratio)]), Y, alphas,
                                                 BANDED_SPLITS, score="r2")
        np.testing.assert_allclose(scores[index], expected, atol=1e-9)
    flat = scores.reshape(-1, Y.shape[1]).argmax(0)
    np.testing.assert_array_equal(best_ratios, ratios[flat // len(alphas)])
    np.testing.assert_array_equal(best_alphas, alphas[flat % len(alphas)])
    assert len(np.unique(best_ratios)) > 2  # per-voxel choices, not one pair for all
    for v in range(Y.shape[1]):  # closed form of the chosen penalties
        penalty = np.r_[np.full(30, best_alphas[v]), np.full(8, best_alphas[v] * best_ratios[v])]
        X = np.hstack([X1, X2])
        np.testing.assert_allclose(weights[:, v], np.linalg.solve(X.T @ X + np.diag(penalty),
                                                                  X.T @ Y[:, v]), atol=1e-9)


def test_banded_ridge_predicts_as_himalaya_with_the_same_penalties():
    """himalaya's WeightedKernelRidge with each voxel's chosen penalties as kernel weights
    (K = K1 / alpha + K2 / (alpha ratio), penalty 1; its conjugate gradient run to
    convergence) predicts what our weights predict."""
    pytest.importorskip("himalaya")
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import WeightedKernelRidge

    set_backend("numpy", on_error="warn")
    X1, X2, Y = _banded_problem(n=700)
    train, test = slice(0, 600), slice(600, None)
    weights, alphas, ratios, _ = eval_utils.fit_banded_ridge_cv(
        X1[train], X2[train], Y[train], np.logspace(0, 4, 5), np.logspace(-2, 2, 5),
        BANDED_SPLITS)
    kernels = [X1[train] @ X1[train].T, X2[train] @ X2[train].T]
    reference = WeightedKernelRidge(alpha=1.0, kernels="precomputed",
                                    deltas=-np.log(np.vstack([alphas, alphas * ratios])),
                                    solver_params=dict(max_iter=1000, tol=1e-12))
    reference.fit(np.stack(kernels), Y[train])
    expected = reference.predict(np.stack([X1[test] @ X1[train].T, X2[test] @ X2[train].T]))
    np.testing.assert_allclose(np.hstack([X1[test], X2[test]]) @ weights, expected, atol=1e-8)


def test_ridge_dtype_batches_and_torch_backend_agree():
    X, Y = _problem(v=40, dtype=np.float32)
    alphas = np.logspace(-1, 4, 6)
    splits = eval_utils.bootstrap_chunk_splits([400], n_boots=3, chunk_len=20)
    weights, best, scores = eval_utils.fit_ridge_cv(X, Y, alphas, splits)
    assert weights.dtype == best.dtype == scores.dtype == np.float32
    small = eval_utils.fit_ridge_cv(X, Y, alphas, splits, memory_budget=20_000)
    for a, b in zip((weights, best, scores), small):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    on_torch = eval_utils.fit_ridge_cv(torch.from_numpy(X), torch.from_numpy(Y), alphas, splits,
                                       backend="torch")
    assert all(torch.is_tensor(t) for t in on_torch)
    for a, b in zip((weights, best, scores), on_torch):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)
    double = eval_utils.fit_ridge_cv(X.astype(np.float64), Y.astype(np.float64), alphas, splits)
    assert double[0].dtype == np.float64


def _brute_force_cv_scores(X, Y, alphas, splits):
    """(n_alphas, n_voxels) mean held-out correlation over the splits, one sklearn fit each."""
    scores = np.zeros((len(alphas), Y.shape[1]))
    for a, alpha in enumerate(alphas):
        for train, held_out in splits:
            prediction = Ridge(alpha=alpha, fit_intercept=False).fit(
                X[train], Y[train]).predict(X[held_out])
            scores[a] += [np.corrcoef(prediction[:, v], Y[held_out, v])[0, 1]
                          for v in range(Y.shape[1])]
    return scores / len(splits)


def test_alpha_grid_counts_agree_with_a_brute_force_search():
    X, Y = _problem(n=300, v=40, seed=3)
    Y[:, 5] = 1.0  # constant: chooses nothing, not counted
    alphas = np.array([100.0, 1.0, 10.0])  # in any order
    splits = eval_utils.bootstrap_chunk_splits([150, 150], n_boots=3, chunk_len=20)
    _, _, cv_scores = eval_utils.fit_ridge_cv(X, Y, alphas, splits, score="corr")
    brute = np.nan_to_num(_brute_force_cv_scores(X, Y, alphas, splits))
    np.testing.assert_allclose(cv_scores, brute, atol=1e-8)
    scored = np.arange(40) % 4 != 0  # e.g. the voxels above the ceiling threshold
    edges, score_sum = eval_utils.alpha_grid_counts(cv_scores, alphas, scored)
    counted = scored & (np.ptp(brute, axis=0) > 0)
    ends = {"lowest": 0, "highest": 0}
    for voxel in np.flatnonzero(counted):  # (1, 10, 100): the curve still rising at the end?
        curve = dict(zip(alphas, brute[:, voxel]))
        rise = eval_utils.EDGE_RISE * np.ptp(brute[:, voxel])
        best = max(curve, key=curve.get)
        ends["lowest"] += best == 1.0 and curve[1.0] - curve[10.0] > rise
        ends["highest"] += best == 100.0 and curve[100.0] - curve[10.0] > rise
    assert counted.sum() == 29 and min(ends.values()) > 0
    assert edges.tolist() == [ends["lowest"], ends["highest"], counted.sum()]
    np.testing.assert_allclose(score_sum, brute[:, counted].sum(1), atol=1e-8)
    # the parts of two processes add up to the whole
    halves = [eval_utils.alpha_grid_counts(cv_scores[:, part], alphas, scored[part])
              for part in (slice(0, 17), slice(17, 40))]
    np.testing.assert_array_equal(halves[0][0] + halves[1][0], edges)
    np.testing.assert_allclose(halves[0][1] + halves[1][1], score_sum)


def test_a_wider_grid_covers_the_voxels_a_narrow_one_crowds_at_its_end():
    """Noisy voxels call for penalties above a narrow grid: they crowd at its highest alpha, the
    summary proposes a grid three decades wider at that end (the same log step), and refitted
    on it under a third as many sit at an end."""
    X, Y = _problem(n=300, v=40, seed=3)
    splits = eval_utils.bootstrap_chunk_splits([150, 150], n_boots=3, chunk_len=20)
    narrow = np.logspace(-1, 1, 5)
    _, _, cv_scores = eval_utils.fit_ridge_cv(X, Y, narrow, splits, score="r2")
    grid = eval_utils.alpha_grid_summary(narrow, *eval_utils.alpha_grid_counts(cv_scores, narrow))
    assert grid["highest_fraction"] > 0.5 and grid["n_voxels"] == 40
    assert grid["lowest_fraction"] <= eval_utils.EDGE_WARNING_FRACTION
    np.testing.assert_allclose(grid["mean_cv_score"], cv_scores.mean(1))
    np.testing.assert_allclose(grid["wider_alphas"], np.logspace(-1, 4, 11))  # only upwards
    wider = np.array(grid["wider_alphas"])
    _, _, cv_wider = eval_utils.fit_ridge_cv(X, Y, wider, splits, score="r2")
    again = eval_utils.alpha_grid_summary(wider, *eval_utils.alpha_grid_counts(cv_wider, wider))
    assert again["highest_fraction"] + again["lowest_fraction"] < grid["highest_fraction"] / 3
    quiet = eval_utils.alpha_grid_summary(narrow, np.array([1, 2, 100]), np.zeros(5))
    assert quiet["wider_alphas"] is None and quiet["highest_fraction"] == 0.02


def test_ridge_constant_voxels_do_not_break():
    X, Y = _problem(v=5)
    Y[:, 2] = 0.0
    weights, best, scores = eval_utils.fit_ridge_cv(X, Y, [1.0, 10.0], [(np.arange(300),
                                                                          np.arange(300, 400))])
    assert np.isfinite(weights).all() and np.isfinite(scores).all()
    np.testing.assert_array_equal(weights[:, 2], 0)
    np.testing.assert_array_equal(scores[:, 2], 0)


def test_ridge_bad_shapes():
    with pytest.raises(ValueError):
        eval_utils.fit_ridge_cv(np.ones((10, 3)), np.ones((9, 2)), [1.0], [])
    with pytest.raises(ValueError):
        eval_utils.fit_ridge_cv(np.ones((10, 3)), np.ones((10, 2)), [1.0], [], backend="jax")
    with pytest.raises(ValueError, match="at least one"):
        eval_utils.fit_ridge_cv(np.ones((10, 3)), np.ones((10, 2)), [1.0], [])


@pytest.mark.parametrize("alphas", [[0.0], [-10.0, 0.0], [1.0, np.nan], [np.inf], []])
def test_ridge_refuses_penalties_that_are_not_positive(alphas):
    """A penalty of 0 or below gives no ridge (every voxel then scored exactly 0): refused."""
    splits = [(np.arange(6), np.arange(6, 10))]
    with pytest.raises(ValueError, match="ridge penalties must be positive"):
        eval_utils.fit_ridge_cv(np.ones((10, 3)), np.ones((10, 2)), alphas, splits)


def test_regress_out_matches_sklearn_ridge_and_removes_the_confounds():
    rng = np.random.default_rng(5)
    stories = ["a", "b", "c", "d"]
    confounds = {s: rng.standard_normal((90, 5)).astype(np.float32) for s in stories}
    mixing = rng.standard_normal((5, 8))
    own = {s: rng.standard_normal((90, 8)) for s in stories}
    features = {s: (confounds[s] @ mixing + own[s]).astype(np.float32) for s in stories}
    train = stories[:3]
    splits = eval_utils.bootstrap_chunk_splits([75] * 3, n_boots=2)
    residuals = eval_utils.regress_out(features, confounds, train, [10.0], splits)
    assert residuals["d"].dtype == np.float32 and residuals["d"].shape == (90, 8)
    # independent: scikit-learn ridge on the same z-scored, trimmed, stacked training rows
    # (each story standardised with the mean and std of its trimmed rows, as the encoding model
    # standardises them)
    rows = slice(10, 85)

    def standardised(x):
        x = x.astype(np.float64)
        return (x - x[rows].mean(axis=0)) / x[rows].std(axis=0)

    x = np.vstack([standardised(confounds[s])[rows] for s in train])
    y = np.vstack([standardised(features[s])[rows] for s in train])
    reference = Ridge(alpha=10.0, fit_intercept=False).fit(x, y)
    expected = standardised(features["d"]) - standardised(confounds["d"]) @ reference.coef_.T
    np.testing.assert_allclose(residuals["d"], expected, atol=1e-4)
    # the rows the encoding model uses come out z-scored, so no confound-driven offset remains
    np.testing.assert_allclose(residuals["d"][rows].mean(axis=0), 0, atol=1e-5)
    # what is left is the part the confounds cannot explain, on the held-out story too
    left = eval_utils.column_correlation(residuals["d"], own["d"])
    assert left.min() > 0.9
    before = np.abs(np.corrcoef(features["d"].T, confounds["d"].T)[:8, 8:]).mean()
    after = np.abs(np.corrcoef(residuals["d"].T, confounds["d"].T)[:8, 8:]).mean()
    assert before > 0.3 and after < 0.15


def test_prediction_score_is_high_for_a_linear_target_and_null_for_an_unrelated_one():
    rng = np.random.default_rng(6)
    stories = ["a", "b", "c", "d"]
    features = {s: rng.standard_normal((90, 6)).astype(np.float32) for s in stories}
    mixing = rng.standard_normal((6, 3))
    linear = {s: features[s] @ mixing + 0.1 * rng.standard_normal((90, 3)) for s in stories}
    unrelated = {s: rng.standard_normal((90, 3)) for s in stories}
    splits = eval_utils.bootstrap_chunk_splits([75] * 3, n_boots=2)
    alphas = np.logspace(-1, 3, 5)
    high, high_prediction, target = eval_utils.prediction_score(features, linear, stories[:3],
                                                                "d", alphas, splits)
    low = eval_utils.prediction_score(features, unrelated, stories[:3], "d", alphas, splits)[0]
    assert high.shape == (3,) and high.min() > 0.95
    # the prediction and target returned are those the scores correlate
    np.testing.assert_array_equal(target, linear["d"][10:85])
    np.testing.assert_allclose(high, eval_utils.column_correlation(high_prediction, target),
                               atol=1e-6)
    assert np.abs(low).max() < 0.35
    # one alpha: the same correlations as scikit-learn's ridge prediction
    rows = slice(10, 85)
    x = np.vstack([eval_utils.zscore(features[s][rows].astype(np.float64)) for s in stories[:3]])
    y = np.vstack([eval_utils.zscore(linear[s][rows]) for s in stories[:3]])
    prediction = Ridge(alpha=5.0, fit_intercept=False).fit(x, y).predict(
        eval_utils.zscore(features["d"][rows].astype(np.float64)))
    np.testing.assert_allclose(
        eval_utils.prediction_score(features, linear, stories[:3], "d", [5.0], splits)[0],
        eval_utils.column_correlation(prediction, linear["d"][rows]), atol=1e-4)


def test_prediction_score_is_undefined_for_targets_without_variation():
    rng = np.random.default_rng(7)
    stories = ["a", "b", "c", "d"]
    features = {s: rng.standard_normal((90, 4)).astype(np.float32) for s in stories}
    mixing = rng.standard_normal(4)
    targets = {s: np.column_stack([features[s] @ mixing,
                                   np.zeros(90) if s == "d" else rng.standard_normal(90),
                                   np.ones(90)]) for s in stories}
    splits = eval_utils.bootstrap_chunk_splits([75] * 3, n_boots=2)
    scores = eval_utils.prediction_score(features, targets, stories[:3], "d", [1.0], splits)[0]
    assert scores[0] > 0.9 and np.isnan(scores[1:]).all()
    preference = alignment_analyses.semantic_preference(features, targets, targets, stories[:3],
                                                        "d", [1.0], splits)
    assert preference["semantic_columns"] == preference["phonetic_columns"] == 1
    assert preference["semantic_r"] == pytest.approx(scores[0])


def test_percent_drop_is_left_out_for_baselines_that_are_not_positive():
    assert eval_utils.percent_drop(0.2, 0.15) == pytest.approx(25.0)
    assert eval_utils.percent_drop(0.2, 0.3) == pytest.approx(-50.0)
    for before, after in [(-0.1, -0.2), (0.0, 0.1), (np.nan, 0.1), (0.2, np.nan)]:
        assert eval_utils.percent_drop(before, after) is None


# ----------------------------------------------------------------------------- ridge: R2 score

def _random_chunk_splits(n_rows, chunk_len, n_held, n_splits, seed):
    """Held-out chunks drawn directly (no eval_utils helper): n_splits (train, val) pairs."""
    rng = np.random.default_rng(seed)
    chunks = np.array_split(np.arange(n_rows), n_rows // chunk_len)
    splits = []
    for _ in range(n_splits):
        held = np.sort(np.concatenate([chunks[i] for i in rng.choice(len(chunks), n_held,
                                                                      replace=False)]))
        splits.append((np.setdiff1d(np.arange(n_rows), held), held))
    return splits


def _brute_force_ridge_cv(X, Y, alphas, splits, score):
    """fit_ridge_cv written out from the formulas, in float64: for every split and alpha an
    explicit ridge solve, the held-out score voxel by voxel, the mean over splits, the first
    argmax per voxel, a refit on all rows."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    n_features, n_voxels = X.shape[1], Y.shape[1]
    scores = np.zeros((len(alphas), n_voxels))
    for train, val in splits:
        for a, alpha in enumerate(alphas):
            w = np.linalg.solve(X[train].T @ X[train] + alpha * np.eye(n_features),
                                X[train].T @ Y[train])
            prediction = X[val] @ w
            for v in range(n_voxels):
                y_val, p_val = Y[val, v], prediction[:, v]
                if score == "r2":
                    # Huth-lab bootstrap_ridge(use_corr=False): variances over the held-out
                    # rows with ddof 0, assumed variance (1 + var(y)) / 2
                    r2 = 1 - np.var(y_val - p_val) / ((1 + np.var(y_val)) / 2)
                    value = np.sign(r2) * np.sqrt(np.abs(r2))
                else:
                    value = np.corrcoef(p_val, y_val)[0, 1] if np.std(p_val) > 0 else 0.0
                scores[a, v] += (0.0 if np.isnan(value) else value) / len(splits)
    best = scores.argmax(axis=0)
    weights = np.column_stack([
        np.linalg.solve(X.T @ X + alphas[best[v]] * np.eye(n_features), X.T @ Y[:, v])
        for v in range(n_voxels)])
    return weights, np.asarray(alphas)[best], scores


def _r2_problem(dtype=np.float64, seed=11):
    """120 rows, 15 features, 30 voxels from well predicted to pure noise; responses roughly
    z-scored (the R2 score's assumed variance presumes unit-variance responses)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((120, 15))
    weights = rng.standard_normal((15, 30)) * np.linspace(0.5, 0.0, 30) / np.sqrt(15)
    Y = X @ weights + rng.standard_normal((120, 30)) * np.linspace(0.3, 1.0, 30)
    Y = (Y - Y.mean(0)) / Y.std(0)
    X = (X - X.mean(0)) / X.std(0)
    return X.astype(dtype), Y.astype(dtype)


R2_ALPHAS = np.logspace(0, 4, 9)
R2_SPLITS = _random_chunk_splits(120, 10, 3, 3, seed=4)


def test_r2_alpha_choice_matches_a_brute_force_loop_float64():
    X, Y = _r2_problem()
    weights, best, scores = eval_utils.fit_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, score="r2")
    ref_weights, ref_best, ref_scores = _brute_force_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, "r2")
    assert weights.dtype == best.dtype == scores.dtype == np.float64
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(best, ref_best)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-8, atol=1e-10)
    # the problem is meaningful: negative R2 (sign kept) occurs, and the two scores choose
    # differently for some voxels
    assert (ref_scores < 0).any() and (ref_scores > 0).any()
    _, corr_best, _ = _brute_force_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, "corr")
    assert (corr_best != ref_best).sum() >= 3
    assert len(np.unique(ref_best)) > 2


def test_r2_alpha_choice_matches_a_brute_force_loop_float32():
    X, Y = _r2_problem(dtype=np.float32)
    weights, best, scores = eval_utils.fit_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, score="r2")
    assert weights.dtype == best.dtype == scores.dtype == np.float32
    _, ref_best, ref_scores = _brute_force_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, "r2")
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=2e-5)
    # the same alpha wherever float32 rounding cannot swap the order of the best two
    ordered = np.sort(ref_scores, axis=0)
    clear = ordered[-1] - ordered[-2] > 1e-4
    assert clear.sum() >= 25
    np.testing.assert_allclose(best[clear], ref_best[clear], rtol=1e-6)
    # elsewhere, an alpha whose brute-force score is within rounding of the best
    chosen = np.searchsorted(R2_ALPHAS.astype(np.float32), best)
    assert (ref_scores[chosen, np.arange(30)] >= ref_scores.max(0) - 1e-4).all()
    # weights: the float64 ridge refit with each voxel's chosen alpha
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    refit = np.column_stack([np.linalg.solve(X64.T @ X64 + float(best[v]) * np.eye(15),
                                             X64.T @ Y64[:, v]) for v in range(30)])
    np.testing.assert_allclose(weights, refit, rtol=1e-4, atol=1e-5)


def test_r2_score_batches_and_torch_backend_agree():
    X, Y = _r2_problem()
    whole = eval_utils.fit_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, score="r2")
    batched = eval_utils.fit_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, score="r2",
                                      memory_budget=30_000)
    on_torch = eval_utils.fit_ridge_cv(torch.from_numpy(X), torch.from_numpy(Y), R2_ALPHAS,
                                       R2_SPLITS, score="r2", backend="torch")
    for a, b, c in zip(whole, batched, on_torch):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a, c.numpy(), rtol=1e-10, atol=1e-12)


def test_corr_alpha_choice_still_matches_a_brute_force_pearson_loop():
    X, Y = _r2_problem(seed=12)
    ref_weights, ref_best, ref_scores = _brute_force_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, "corr")
    for kwargs in ({}, {"score": "corr"}):  # the function's default is the correlation
        weights, best, scores = eval_utils.fit_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, **kwargs)
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(best, ref_best)
        np.testing.assert_allclose(weights, ref_weights, rtol=1e-8, atol=1e-10)


def test_ridge_rejects_an_unknown_score():
    X, Y = _r2_problem()
    for bad in ("R2", "pearson", "", None):
        with pytest.raises(ValueError, match="score"):
            eval_utils.fit_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, score=bad)


def test_r2_score_of_a_constant_voxel_follows_the_formula():
    """Y = 0 gives zero weights, residual 0 and R2 = 1 - 0 / ((1 + 0) / 2) = 1 at every alpha
    (what the Huth-lab formula says; such voxels are dropped by the ceiling selection)."""
    X, Y = _r2_problem()
    Y[:, 4] = 0.0
    weights, _, scores = eval_utils.fit_ridge_cv(X, Y, R2_ALPHAS, R2_SPLITS, score="r2")
    np.testing.assert_array_equal(weights[:, 4], 0)
    np.testing.assert_allclose(scores[:, 4], 1.0)


def _stacked(story_values, stories, rows=slice(10, 85)):
    """Trimmed rows of each story z-scored on their own (population std), stacked, float64."""
    out = []
    for s in stories:
        x = np.asarray(story_values[s], np.float64)[rows]
        out.append((x - x.mean(0)) / x.std(0))
    return np.vstack(out)


def test_prediction_score_and_regress_out_choose_alphas_by_the_given_score():
    rng = np.random.default_rng(8)
    stories = ["a", "b", "c", "d"]
    features = {s: rng.standard_normal((90, 6)) for s in stories}
    mixing = rng.standard_normal((6, 12)) * np.linspace(0.6, 0.02, 12)
    targets = {s: features[s] @ mixing + rng.standard_normal((90, 12)) for s in stories}
    splits = _random_chunk_splits(225, 15, 4, 3, seed=2)
    alphas = np.logspace(0, 4, 9)
    x, y = _stacked(features, stories[:3]), _stacked(targets, stories[:3])
    x_test = _stacked(features, ["d"])
    y_test = np.asarray(targets["d"], np.float64)[10:85]
    chosen = {}
    for score in ("r2", "corr"):
        weights, chosen[score], _ = _brute_force_ridge_cv(x, y, alphas, splits, score)
        prediction = x_test @ weights
        expected = [np.corrcoef(prediction[:, v], y_test[:, v])[0, 1] for v in range(12)]
        got = eval_utils.prediction_score(features, targets, stories[:3], "d", alphas, splits,
                                          score=score)[0]
        np.testing.assert_allclose(got, expected, atol=1e-8)
        residuals = eval_utils.regress_out(targets, features, stories[:3], alphas, splits,
                                           score=score)
        x_all = (features["d"] - features["d"][10:85].mean(0)) / features["d"][10:85].std(0)
        y_all = (targets["d"] - targets["d"][10:85].mean(0)) / targets["d"][10:85].std(0)
        np.testing.assert_allclose(residuals["d"], y_all - x_all @ weights, atol=1e-8)
    assert (chosen["r2"] != chosen["corr"]).any()  # the score reaches the alpha choice


# ----------------------------------------------------------------------------- training subsets

def _leading_rows_reference(story_lengths, fraction):
    """Stack the stories' rows, keep the first round(fraction * total) (at least 1), count per
    story."""
    story_of_row = np.repeat(np.arange(len(story_lengths)), story_lengths)
    kept = story_of_row[:max(1, int(round(fraction * sum(story_lengths))))]
    return np.bincount(kept, minlength=len(story_lengths)).tolist()


def test_leading_rows_takes_whole_stories_then_leading_rows():
    lengths = [30, 50, 20, 41]
    assert eval_utils.leading_rows(lengths, 0.5) == [30, 40, 0, 0]
    assert eval_utils.leading_rows(lengths, 1.0) == lengths
    assert eval_utils.leading_rows(lengths, 80 / 141) == [30, 50, 0, 0]
    assert eval_utils.leading_rows(lengths, 1e-6) == [1, 0, 0, 0]  # at least one row
    for fraction in (0.01, 0.1, 0.25, 0.333, 0.5, 0.6, 0.75, 0.9, 0.99, 1.0):
        used = eval_utils.leading_rows(lengths, fraction)
        assert used == _leading_rows_reference(lengths, fraction)
        assert sum(used) == round(fraction * sum(lengths))
        # whole stories first: every story before the last used one is complete
        last = max(i for i, u in enumerate(used) if u)
        assert used[:last] == lengths[:last] and all(u == 0 for u in used[last + 1:])


@pytest.mark.parametrize("fraction", [0, -0.1, 1.0001, 2, np.nan])
def test_leading_rows_rejects_fractions_outside_zero_one(fraction):
    with pytest.raises(ValueError):
        eval_utils.leading_rows([30, 50], fraction)


@pytest.mark.parametrize("score", eval_utils.RIDGE_SCORES)
@pytest.mark.parametrize("n_rows, n_features", [(60, 150), (150, 60)])
def test_ridge_primal_and_dual_solvers_agree(n_rows, n_features, score, monkeypatch):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n_rows, n_features))
    y = x @ rng.standard_normal((n_features, 25)) * 0.1 + rng.standard_normal((n_rows, 25))
    splits = eval_utils.bootstrap_chunk_splits([n_rows // 2, n_rows - n_rows // 2], n_boots=3,
                                               chunk_len=10, seed=1)
    alphas = np.logspace(-1, 4, 9)
    fits = {solver: eval_utils.fit_ridge_cv(x, y, alphas, splits, score=score, solver=solver)
            for solver in ("primal", "dual")}
    for primal, dual in zip(fits["primal"], fits["dual"]):
        np.testing.assert_allclose(dual, primal, rtol=1e-7, atol=1e-9)
    # the closed form at each voxel's alpha
    weights, best, _ = fits["dual"]
    for voxel in (0, 7):
        expected = np.linalg.solve(x.T @ x + best[voxel] * np.eye(n_features), x.T @ y[:, voxel])
        np.testing.assert_allclose(weights[:, voxel], expected, rtol=1e-6, atol=1e-9)
    # auto decomposes the smaller matrix: the kernel when there are fewer rows than features
    sizes = []
    eig_gram = eval_utils._eig_gram
    monkeypatch.setattr(eval_utils, "_eig_gram", lambda m: sizes.append(m.shape[1]) or eig_gram(m))
    eval_utils.fit_ridge_cv(x, y, alphas, splits, score=score)
    assert max(sizes) == min(n_rows, n_features)


def test_percent_drop_samples_match_percent_drop_and_are_nan_below_zero():
    before = np.array([[0.4, -0.1], [0.2, 0.0]])
    after = np.array([[0.1, 0.3], [0.3, 0.2]])
    samples = eval_utils.percent_drop_samples(before, after)
    assert samples[0, 0] == pytest.approx(eval_utils.percent_drop(0.4, 0.1))
    assert samples[1, 0] == pytest.approx(eval_utils.percent_drop(0.2, 0.3))
    assert np.isnan(samples[:, 1]).all()  # before <= 0: undefined, as percent_drop's None


@pytest.mark.parametrize("low, high, verdict", [
    (0.01, 0.2, "higher"), (-0.2, -0.01, "lower"), (-0.1, 0.1, "no detectable difference"),
    (0.0, 0.0, "no detectable difference"), (None, None, None), (np.nan, 0.1, None)])
def test_interval_verdict(low, high, verdict):
    assert eval_utils.interval_verdict(low, high) == verdict


def test_semantic_preference_resamples_equal_brute_force_resampling():
    """The preference on each block-bootstrap resample of the test story's rows: the mean
    correlation over the used columns of the resampled rows, semantic minus phonetic."""
    rng = np.random.default_rng(11)
    stories = ["a", "b", "c", "d"]
    features = {s: rng.standard_normal((90, 5)).astype(np.float32) for s in stories}
    semantic = {s: features[s] @ rng.standard_normal((5, 3)) + rng.standard_normal((90, 3))
                for s in stories}
    phonetic = {s: rng.standard_normal((90, 4)) for s in stories}
    phonetic["d"][:, 1] = 0.0  # a column that does not vary in the test story: left out
    splits = eval_utils.bootstrap_chunk_splits([75] * 3, n_boots=2)
    uncertainty = types.SimpleNamespace(bootstrap_counts=np.zeros((40, 1)), block_len=10,
                                        seed=4)
    scores = alignment_analyses.semantic_preference(features, semantic, phonetic, stories[:3],
                                                    "d", [1.0], splits, uncertainty=uncertainty)
    counts, starts = eval_utils.bootstrap_block_counts(75, 10, 40, seed=4)
    expected = []
    for draw in counts:
        rows = np.concatenate([np.repeat(np.arange(starts[b], starts[b + 1])[None], n, 0).ravel()
                               for b, n in enumerate(draw) if n])
        means = []
        for targets in (semantic, phonetic):
            _, prediction, target = eval_utils.prediction_score(features, targets, stories[:3],
                                                                "d", [1.0], splits)
            used = np.ptp(target, axis=0) > 0
            means.append(np.mean([np.corrcoef(prediction[rows, v], target[rows, v])[0, 1]
                                  for v in np.flatnonzero(used)]))
        expected.append(means[0] - means[1])
    np.testing.assert_allclose(scores["bootstrap"], expected, atol=1e-6)
    assert scores["phonetic_columns"] == 3
    assert abs(np.mean(scores["bootstrap"]) - scores["preference"]) < 0.1
