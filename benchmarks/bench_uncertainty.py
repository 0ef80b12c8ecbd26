"""Benchmark: eval_utils' block-permutation p-values and block-bootstrap correlations against
direct loops over the same permutations and resamples.

    python benchmarks/bench_uncertainty.py                      # UTS03's 95,556 voxels, 251 rows
    python benchmarks/bench_uncertainty.py --voxels 20000 --peer_draws 10 --out /tmp/u.json

On random float32 (rows, voxels) prediction and target (target = c prediction + noise, c = 0
for half the voxels, uniform in [0, 0.3] for the others, so that the p-values spread out):

- ``block_permutation_pvalues`` (all voxels, ``--n_permutations``) against the direct peer: for
  each permutation of ``permuted_blocks``, the target's rows gathered in the permuted order and
  the column correlations computed with numpy (columns standardised once). The peer is timed on
  the first ``--peer_draws`` permutations and scaled linearly to ``--n_permutations``; its
  p-values over all permutations on ``--check_voxels`` voxels are compared with ours.
- ``bootstrap_correlations`` with weights (3 region means, like a run's summaries) for
  ``--n_bootstrap`` resamples against the direct peer: each resample's rows materialised
  (``np.repeat`` of the blocks) and np.corrcoef-style column correlations in float64, timed on
  the first ``--peer_draws`` resamples and scaled; their r are compared with ours.

For each: the FLOPs of the main matrix products (permutations: n_permutations x blocks^2 x
voxels x 2; bootstrap: 5 x n_bootstrap x blocks x voxels x 2), the achieved GFLOP/s, the
machine's rate for matmuls of those shapes and dtype (float32 and float64; the best of one and
the default number of BLAS threads, and for the bootstrap of the full voxel batch and
cache-sized 128-voxel products) and their ratio, and the process's peak RSS after each. Other
processes slow every number here: the load average is printed before and after. Results are
written as JSON (``--out``).
"""

import argparse
import inspect
import math
import os
import platform
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import eval_utils  # noqa: E402
import run_utils  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=run_utils.HelpFormatter)
    parser.add_argument("--voxels", type=int, default=95556, help="columns (UTS03: 95,556)")
    parser.add_argument("--rows", type=int, default=251,
                        help="rows (the scored test rows of wheretheressmoke: 251)")
    parser.add_argument("--n_permutations", type=int, default=1000)
    parser.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--block_len", type=int, default=10)
    parser.add_argument("--peer_draws", type=int, default=20,
                        help="permutations and resamples the peers are timed on (then scaled)")
    parser.add_argument("--check_voxels", type=int, default=200,
                        help="voxels on which the peer's p-values use every permutation")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of ours (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench_uncertainty.json", help="JSON results")
    return parser.parse_args(argv)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def best_seconds(run, repeats):
    """(best wall seconds over ``repeats`` runs, the last result)."""
    best, result = math.inf, None
    for _ in range(repeats):
        began = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - began)
    return best, result


def stage_report(seconds, flops, gemm, gemm_shape):
    """A stage's entry of the results: its time and FLOPs, the ``gemm_rate`` result it is
    compared with (GFLOP/s, best setting, rate per setting) and the peak RSS after it."""
    gflops, setting, rates = gemm
    return dict(seconds=seconds, flops=flops, gemm_gflops=gflops, gemm_setting=setting,
                gemm_rates=rates, gemm_shape=gemm_shape, peak_rss_mib=peak_rss_mib())


def gemm_rate(m, k, widths, dtype, seed, min_seconds=0.3):
    """The machine's best GFLOP/s for (m, k) @ (k, width) products in ``dtype``, over ``widths``
    and over one and the default number of BLAS threads; the setting that gave it; and the
    rate of every setting."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    rates = {}
    for width in widths:
        b = rng.standard_normal((k, width)).astype(dtype)
        out = np.empty((m, width), dtype)
        for threads in (1, None):
            with threadpool_limits(threads, user_api="blas") if threads else nullcontext():
                np.matmul(a, b, out=out)  # warm-up
                for _ in range(2):
                    count, began = 0, time.perf_counter()
                    while time.perf_counter() - began < min_seconds:
                        np.matmul(a, b, out=out)
                        count += 1
                    rate = 2.0 * m * k * width * count / (time.perf_counter() - began) / 1e9
                    setting = f"width {width}, " + (
                        "1 BLAS thread" if threads else "default BLAS threads")
                    rates[setting] = max(rate, rates.get(setting, 0.0))
    best = max(rates, key=rates.get)
    return rates[best], best, rates


def standardised(x):
    """Columns centred and scaled to unit population std in float64 (constant columns: 0),
    returned as float32."""
    x = x.astype(np.float64)
    x -= x.mean(axis=0)
    std = np.sqrt((x ** 2).mean(axis=0))
    return np.divide(x, std, out=np.zeros_like(x), where=std > 0).astype(np.float32)


def peer_exceed_counts(prediction, target, permutations, block_len, voxel_batch=8192):
    """#{permuted r >= r} per voxel, directly: for each permutation the target's rows in the
    permuted block order (the tail rows in place), then the column correlations."""
    n_rows, n_voxels = prediction.shape
    n_blocks = permutations.shape[1]
    offsets = np.arange(block_len)
    tail = np.arange(n_blocks * block_len, n_rows)
    orders = [np.concatenate([(permutation[:, None] * block_len + offsets).ravel(), tail])
              for permutation in permutations]
    exceed = np.zeros(n_voxels, np.int64)
    for first in range(0, n_voxels, voxel_batch):
        columns = slice(first, min(first + voxel_batch, n_voxels))
        zp, zt = standardised(prediction[:, columns]), standardised(target[:, columns])
        observed = np.einsum("ij,ij->j", zp, zt)
        for order in orders:
            exceed[columns] += np.einsum("ij,ij->j", zp, zt[order]) >= observed
    return exceed


def peer_bootstrap(prediction, target, counts, block_starts, weights, voxel_batch=8192):
    """(resamples, summaries): each resample's rows materialised, then np.corrcoef-style
    column correlations in float64, then ``r @ weights``."""
    n_voxels = prediction.shape[1]
    blocks = [np.arange(begin, end) for begin, end in zip(block_starts[:-1], block_starts[1:])]
    out = np.zeros((len(counts), weights.shape[1]))
    for i, draw in enumerate(counts):
        rows = np.concatenate([blocks[b] for b in np.repeat(np.arange(len(blocks)), draw)])
        for first in range(0, n_voxels, voxel_batch):
            columns = slice(first, min(first + voxel_batch, n_voxels))
            p = prediction[rows, columns].astype(np.float64)
            t = target[rows, columns].astype(np.float64)
            p -= p.mean(axis=0)
            t -= t.mean(axis=0)
            r = (p * t).sum(axis=0) / np.sqrt((p * p).sum(axis=0) * (t * t).sum(axis=0))
            out[i] += r @ weights[columns]
    return out


def region_weights(n_voxels, rng):
    """(voxels, 3) float64: the mean over all voxels, over a random quarter and over a random
    2% (at least one voxel), like a run's region summaries."""
    weights = np.zeros((n_voxels, 3))
    for column, fraction in enumerate((1.0, 0.25, 0.02)):
        chosen = rng.choice(n_voxels, max(1, int(fraction * n_voxels)), replace=False)
        weights[chosen, column] = 1.0 / len(chosen)
    return weights


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    prediction = rng.standard_normal((args.rows, args.voxels), dtype=np.float32)
    strength = np.where(rng.random(args.voxels) < 0.5, 0, rng.uniform(0, 0.3, args.voxels))
    target = rng.standard_normal((args.rows, args.voxels), dtype=np.float32)
    for first in range(0, args.voxels, 4096):  # in pieces: no full-size temporary in the peak RSS
        part = slice(first, first + 4096)
        target[:, part] += strength[part].astype(np.float32) * prediction[:, part]
    weights = region_weights(args.voxels, rng)
    counts, starts = eval_utils.bootstrap_block_counts(args.rows, args.block_len,
                                                       args.n_bootstrap, args.seed)
    perm_blocks, boot_blocks = args.rows // args.block_len, len(starts) - 1
    permutations = eval_utils.permuted_blocks(perm_blocks, args.n_permutations, args.seed)
    perm_batch = inspect.signature(eval_utils.block_permutation_pvalues).parameters[
        "voxel_batch"].default
    boot_batch = inspect.signature(eval_utils.bootstrap_correlations).parameters[
        "voxel_batch"].default
    blas = ", ".join(f"{lib['internal_api']} {lib.get('version')} ({lib['num_threads']} threads)"
                     for lib in threadpool_info() if lib["user_api"] == "blas")
    load_before = os.getloadavg()
    print(f"data: {args.rows} rows x {args.voxels} voxels float32, blocks of {args.block_len} "
          f"({perm_blocks} permuted, {boot_blocks} resampled); {args.n_permutations} "
          f"permutations, {args.n_bootstrap} resamples, 3 weighted summaries")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus, numpy "
          f"{np.__version__}, BLAS {blas}; load average {load_before[0]:.2f} (other processes "
          f"slow every number)")
    baseline_rss = peak_rss_mib()

    perm_flops = 2.0 * args.n_permutations * perm_blocks ** 2 * args.voxels
    boot_flops = 2.0 * 5 * args.n_bootstrap * boot_blocks * args.voxels
    perm_gemm = gemm_rate(args.n_permutations, perm_blocks ** 2,
                          [min(perm_batch, args.voxels)], np.float32, args.seed)
    boot_gemm = gemm_rate(args.n_bootstrap, boot_blocks,
                          sorted({min(128, args.voxels), min(boot_batch, args.voxels)}),
                          np.float64, args.seed)

    stages = {}
    seconds, p_values = best_seconds(lambda: eval_utils.block_permutation_pvalues(
        prediction, target, args.n_permutations, args.block_len, args.seed), args.repeats)
    stages["permutation p-values"] = stage_report(
        seconds, perm_flops, perm_gemm,
        f"({args.n_permutations}, {perm_blocks ** 2}) @ ({perm_blocks ** 2}, w) float32")
    seconds, summaries = best_seconds(lambda: eval_utils.bootstrap_correlations(
        prediction, target, counts, starts, weights=weights), args.repeats)
    stages["bootstrap r (weighted)"] = stage_report(
        seconds, boot_flops, boot_gemm,
        f"({args.n_bootstrap}, {boot_blocks}) @ ({boot_blocks}, w) float64")

    draws = min(args.peer_draws, args.n_permutations)
    began = time.perf_counter()
    peer_exceed_counts(prediction, target, permutations[:draws], args.block_len)
    elapsed = time.perf_counter() - began
    stages["permutation p-values"].update(peer_draws=draws, peer_measured_seconds=elapsed,
                                          peer_seconds=elapsed * args.n_permutations / draws)
    check = np.sort(rng.choice(args.voxels, min(args.check_voxels, args.voxels), replace=False))
    peer_p = (1.0 + peer_exceed_counts(prediction[:, check], target[:, check], permutations,
                                       args.block_len)) / (1.0 + args.n_permutations)
    peer_p = peer_p.astype(p_values.dtype)  # ours: the inputs' float32
    differences = np.abs(p_values[check] - peer_p)
    stages["permutation p-values"].update(
        check_voxels=len(check), identical_p_fraction=float(np.mean(differences == 0)),
        max_abs_p_difference=float(differences.max()))

    draws = min(args.peer_draws, args.n_bootstrap)
    began = time.perf_counter()
    peer_summaries = peer_bootstrap(prediction, target, counts[:draws], starts, weights)
    elapsed = time.perf_counter() - began
    stages["bootstrap r (weighted)"].update(
        peer_draws=draws, peer_measured_seconds=elapsed,
        peer_seconds=elapsed * args.n_bootstrap / draws,
        max_abs_r_difference=float(np.abs(summaries[:draws] - peer_summaries).max()))
    peer_rss = peak_rss_mib()
    load_after = os.getloadavg()

    for stage in stages.values():
        stage.update(speedup=stage["peer_seconds"] / stage["seconds"],
                     gflops=stage["flops"] / stage["seconds"] / 1e9)
        stage["gemm_fraction"] = stage["gflops"] / stage["gemm_gflops"]
    print(f"\n{'stage':<24}{'seconds':>9}{'peer s':>10}{'speed-up':>10}{'GFLOP/s':>9}"
          f"{'of GEMM':>9}{'peak RSS MiB':>14}")
    for name, stage in stages.items():
        print(f"{name:<24}{stage['seconds']:>9.2f}{stage['peer_seconds']:>10.1f}"
              f"{stage['speedup']:>9.0f}x{stage['gflops']:>9.1f}{stage['gemm_fraction']:>9.2f}"
              f"{stage['peak_rss_mib']:>14.0f}")
    print()
    for name, stage in stages.items():
        print(f"{name}: {stage['flops'] / 1e9:.1f} GFLOP in the main products; machine GEMM "
              f"rate {stage['gemm_gflops']:.1f} GFLOP/s for {stage['gemm_shape']} "
              f"(best: {stage['gemm_setting']}; " + ", ".join(
                  f"{setting}: {rate:.1f}" for setting, rate in stage["gemm_rates"].items())
              + f"); peer timed on {stage['peer_draws']} draws "
              f"({stage['peer_measured_seconds']:.2f} s), scaled linearly")
    perm = stages["permutation p-values"]
    print(f"p-values on {perm['check_voxels']} voxels, all permutations: "
          f"{perm['identical_p_fraction']:.1%} identical to the peer's, max |difference| "
          f"{perm['max_abs_p_difference']:.2g}")
    print(f"weighted bootstrap r on the peer's {stages['bootstrap r (weighted)']['peer_draws']} "
          f"resamples: max |difference| "
          f"{stages['bootstrap r (weighted)']['max_abs_r_difference']:.1e}")
    print(f"peak RSS: {baseline_rss:.0f} MiB before (data, imports), {peer_rss:.0f} MiB after "
          f"the peers; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")

    results = dict(args=vars(args), machine=dict(processor=cpu_name(),
                                                 cpus=os.cpu_count(), numpy=np.__version__,
                                                 blas=blas),
                   load_average_before=load_before, load_average_after=load_after,
                   baseline_peak_rss_mib=baseline_rss, peer_peak_rss_mib=peer_rss,
                   stages=stages)
    run_utils.write_json(args.out, results, overwrite=True)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
