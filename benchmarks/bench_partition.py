"""Benchmark: the banded ridge of variance partitioning (eval_utils.fit_banded_ridge_cv) against
our plain ridge of the same rows and himalaya's BandedRidgeCV.

    python benchmarks/bench_partition.py                  # 3,000 x (768 + 156) -> 5,000 voxels
    python benchmarks/bench_partition.py --n_voxels 20000 --n_ratios 9

Two bands (a layer's features and a low-level set's, random), voxels reading either or both
with voxel-specific noise. Every solver chooses per voxel on the same chunk splits by mean
held-out correlation: ours over --n_alphas penalties x --n_ratios ratios of the second band's
penalty to the first's; himalaya over as many (band weights, alpha) candidates (its random
search given the same ratios as band weights on the simplex, and the same alphas; the grids
differ in how alpha is shared, so the choices are compared through the held-out story). The
plain ridge rows give the cost per ratio: the claim is about one plain fit of both bands. The
last story is held out: each model's mean correlation on it tells whether they fit alike.
Printed: seconds, ratios, GFLOP/s of the counted products and their share of the machine's
numpy float32 GEMM rate. himalaya must be installed (requirements-dev.txt).
"""

import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import arguments  # noqa: E402
import eval_utils  # noqa: E402
from arguments import flag  # noqa: E402
from machine import cpu_name, gemm_rate  # noqa: E402


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The benchmark's flags."""

    n_samples: int = flag(3000, help="training rows (a further story is held out)")
    layer_features: int = flag(768, help="features of the first band (a layer's)")
    low_level_features: int = flag(156, help="features of the second band (phonemes x 4 delays)")
    n_voxels: int = flag(5000, help="voxels")
    n_alphas: int = flag(10, help="penalties, log-spaced from 1 to 1e5")
    n_ratios: int = flag(7, help="penalty ratios of the second band, log-spaced from 1e-3 to 1e3")
    story_length: int = flag(300, help="rows per story for the chunk splits")
    seed: int = flag(0, help="random seed")


def make_problem(n_samples, p1, p2, n_voxels, seed):
    """Two bands of random features and voxels mixing them with voxel-specific noise. float32."""
    rng = np.random.default_rng(seed)
    X1 = rng.standard_normal((n_samples, p1), dtype=np.float32)
    X2 = rng.standard_normal((n_samples, p2), dtype=np.float32)
    mix = rng.uniform(0, 1, n_voxels).astype(np.float32)
    Y = (X1 @ rng.standard_normal((p1, n_voxels), dtype=np.float32) * (0.05 * mix)
         + X2 @ rng.standard_normal((p2, n_voxels), dtype=np.float32) * (0.1 * (1 - mix))
         + rng.standard_normal((n_samples, n_voxels), dtype=np.float32)
         * np.linspace(0.5, 10, n_voxels, dtype=np.float32))
    return X1, X2, eval_utils.zscore(Y)


def himalaya_banded(X1, X2, Y, alphas, ratios, splits):
    """himalaya's BandedRidgeCV: band weights gamma = (ratio, 1) / (1 + ratio), so that the
    second band's penalty over the first's is the ratio."""
    from himalaya.backend import set_backend
    from himalaya.ridge import BandedRidgeCV
    from himalaya.scoring import correlation_score

    set_backend("numpy", on_error="raise")
    gammas = np.stack([ratios, np.ones_like(ratios)], 1) / (1 + ratios)[:, None]
    model = BandedRidgeCV(groups=np.repeat([0, 1], [X1.shape[1], X2.shape[1]]), cv=splits,
                          solver_params=dict(n_iter=gammas, alphas=alphas, progress_bar=False,
                                             score_func=correlation_score))
    model.fit(np.hstack([X1, X2]), Y)
    return model.coef_


def counted_flops(n, p, v, splits, n_alphas):
    """The matrix products of one fit_ridge_cv of an (n, p) design and v voxels, primal: X^T Y,
    per split the held-out X^T y, the projection and a prediction per alpha, and the refit."""
    flops = 2 * n * p * v
    for _, val in splits:
        flops += 2 * len(val) * p * v + 2 * p * p * v + n_alphas * 2 * len(val) * p * v
    return flops + 4 * p * p * v


def main(argv=None):
    args = arguments.parse(Settings, argv, description=__doc__.splitlines()[0])

    import torch

    n_total = args.n_samples + args.story_length
    X1, X2, Y = make_problem(n_total, args.layer_features, args.low_level_features,
                             args.n_voxels, args.seed)
    train, test = slice(0, args.n_samples), slice(args.n_samples, None)
    alphas = np.logspace(0, 5, args.n_alphas)
    ratios = np.logspace(-3, 3, args.n_ratios)
    lengths = [args.story_length] * (args.n_samples // args.story_length)
    lengths[-1] += args.n_samples - sum(lengths)
    splits = eval_utils.bootstrap_chunk_splits(lengths, n_boots=3, chunk_len=20, seed=args.seed)
    both = np.hstack([X1, X2])
    print(f"problem: X1 {X1[train].shape}, X2 {X2[train].shape}, Y {Y[train].shape}, "
          f"{len(alphas)} alphas x {len(ratios)} ratios, {len(splits)} splits, "
          f"{args.story_length} held-out rows")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus, torch threads "
          f"{torch.get_num_threads()}")

    peers = [
        ("ours, banded ridge", len(ratios), lambda: eval_utils.fit_banded_ridge_cv(
            X1[train], X2[train], Y[train], alphas, ratios, splits)[0]),
        ("ours, plain ridge of both", 1, lambda: eval_utils.fit_ridge_cv(
            both[train], Y[train], alphas, splits)[0]),
        ("ours, plain ridge of X1", None, lambda: np.vstack([eval_utils.fit_ridge_cv(
            X1[train], Y[train], alphas, splits)[0], np.zeros((X2.shape[1], Y.shape[1]))])),
        ("himalaya BandedRidgeCV", len(ratios), lambda: himalaya_banded(
            X1[train], X2[train], Y[train], alphas, ratios, splits))]
    p = both.shape[1]
    gemm, setting, _ = gemm_rate(args.n_samples, p, [args.n_voxels], np.float32, args.seed)
    print(f"numpy float32 GEMM ({args.n_samples} x {p}) @ ({p} x {args.n_voxels}): "
          f"{gemm:.1f} GFLOP/s ({setting})")
    timings = {}
    print(f"{'solver':<28}{'seconds':>9}{'/ banded':>10}{'GFLOP/s':>9}{'of GEMM':>9}"
          f"{'test r':>8}")
    for name, fits, solve in peers:
        began = time.perf_counter()
        weights = np.asarray(solve())
        seconds = timings[name] = time.perf_counter() - began
        test_r = eval_utils.column_correlation(both[test] @ weights, Y[test]).mean()
        if fits is None:
            rate = share = ""
        else:
            flops = fits * counted_flops(args.n_samples, p, args.n_voxels, splits, len(alphas))
            rate, share = f"{flops / seconds / 1e9:.1f}", f"{flops / seconds / 1e9 / gemm:.0%}"
        print(f"{name:<28}{seconds:>9.2f}{seconds / timings['ours, banded ridge']:>9.2f}x"
              f"{rate:>9}{share:>9}{test_r:>8.4f}")
    per_ratio = timings["ours, banded ridge"] / len(ratios)
    plain = timings["ours, plain ridge of both"]
    print(f"ours: {per_ratio:.2f} s per ratio, {per_ratio / plain:.2f} plain fits of both "
          f"bands; himalaya / ours: "
          f"{timings['himalaya BandedRidgeCV'] / timings['ours, banded ridge']:.2f}x")


if __name__ == "__main__":
    main()
