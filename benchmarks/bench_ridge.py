"""Benchmark: eval_utils.fit_ridge_cv against himalaya's RidgeCV and scikit-learn's Ridge.

    python benchmarks/bench_ridge.py                    # 3,000 x 768 -> 10,000 voxels, 10 alphas
    python benchmarks/bench_ridge.py --skip_sklearn     # without the slow scikit-learn peer

All three solve the same problem on the same chunk splits with per-voxel alphas chosen by
mean held-out correlation, then refit on all rows. Prints seconds, the speed ratios and how
often the chosen alphas agree. himalaya must be installed (requirements-dev.txt).
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


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The benchmark's flags."""

    n_samples: int = flag(3000, help="rows")
    n_features: int = flag(768, help="features")
    n_voxels: int = flag(10000, help="voxels")
    n_alphas: int = flag(10, help="ridge penalties, log-spaced from 1 to 1e5")
    story_length: int = flag(300, help="rows per story for the chunk splits")
    seed: int = flag(0, help="random seed")
    skip_sklearn: bool = flag(False, help="leave out scikit-learn")


def make_problem(n_samples, n_features, n_voxels, seed):
    """Random features and voxels with voxel-specific noise, so that voxels need different
    alphas. float32."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features), dtype=np.float32)
    weights = rng.standard_normal((n_features, n_voxels), dtype=np.float32) * 0.05
    noise = rng.standard_normal((n_samples, n_voxels), dtype=np.float32)
    Y = X @ weights + noise * np.linspace(0.5, 20, n_voxels, dtype=np.float32)
    return X, eval_utils.zscore(Y)


def himalaya_ridge(X, Y, alphas, splits):
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import correlation_score

    set_backend("numpy", on_error="raise")
    model = RidgeCV(alphas=alphas, cv=splits, fit_intercept=False,
                    solver_params=dict(score_func=correlation_score, local_alpha=True))
    model.fit(X, Y)
    return model.coef_, model.best_alphas_


def sklearn_ridge(X, Y, alphas, splits):
    """Per-voxel alphas with scikit-learn: one multi-target Ridge per alpha and split."""
    from sklearn.linear_model import Ridge

    scores = np.zeros((len(alphas), Y.shape[1]))
    for train, val in splits:
        for index, alpha in enumerate(alphas):
            model = Ridge(alpha=alpha, fit_intercept=False).fit(X[train], Y[train])
            scores[index] += eval_utils.column_correlation(model.predict(X[val]), Y[val])
    best = scores.argmax(0)
    weights = np.zeros((X.shape[1], Y.shape[1]), np.float32)
    for index in np.unique(best):
        chosen = best == index
        # one voxel: scikit-learn gives its coef_ as (features,)
        weights[:, chosen] = np.atleast_2d(Ridge(alpha=alphas[index], fit_intercept=False).fit(
            X, Y[:, chosen]).coef_).T
    return weights, alphas[best]


def main(argv=None):
    args = arguments.parse(Settings, argv, description=__doc__.splitlines()[0])

    import torch

    X, Y = make_problem(args.n_samples, args.n_features, args.n_voxels, args.seed)
    alphas = np.logspace(0, 5, args.n_alphas)
    lengths = [args.story_length] * (args.n_samples // args.story_length)
    lengths[-1] += args.n_samples - sum(lengths)
    splits = eval_utils.bootstrap_chunk_splits(lengths, n_boots=3, chunk_len=20, seed=args.seed)
    print(f"problem: X {X.shape}, Y {Y.shape}, {len(alphas)} alphas, {len(splits)} splits; "
          f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}")

    results = {}
    peers = [("ours (fit_ridge_cv)", lambda: eval_utils.fit_ridge_cv(X, Y, alphas, splits)[:2]),
             ("himalaya RidgeCV", lambda: himalaya_ridge(X, Y, alphas, splits))]
    if not args.skip_sklearn:
        peers.append(("scikit-learn Ridge", lambda: sklearn_ridge(X, Y, alphas, splits)))
    for name, solve in peers:
        began = time.perf_counter()
        weights, best = solve()
        results[name] = (time.perf_counter() - began, np.asarray(weights), np.asarray(best))

    ours_time, ours_weights, ours_alphas = results["ours (fit_ridge_cv)"]
    print(f"{'solver':<22}{'seconds':>10}{'ours faster by':>16}{'same alphas':>14}"
          f"{'max |dW|':>12}")
    for name, (seconds, weights, best) in results.items():
        agreement = np.mean(np.isclose(best, ours_alphas, rtol=1e-4))
        print(f"{name:<22}{seconds:>10.2f}{seconds / ours_time:>15.1f}x{agreement:>14.4f}"
              f"{np.abs(weights - ours_weights).max():>12.2e}")


if __name__ == "__main__":
    main()
