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

import dataclasses
import inspect
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import arguments  # noqa: E402
import eval_utils  # noqa: E402
import run_utils  # noqa: E402
from arguments import flag  # noqa: E402
from machine import best_seconds, cpu_name, gemm_rate, peak_rss_mib  # noqa: E402

PERMUTATIONS, BOOTSTRAP = "permutation p-values", "bootstrap r (weighted)"


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The benchmark's flags."""

    voxels: int = flag(95556, help="columns (UTS03: 95,556)")
    rows: int = flag(251, help="rows (the scored test rows of wheretheressmoke: 251)")
    n_permutations: int = flag(1000, help="block permutations")
    n_bootstrap: int = flag(1000, help="block-bootstrap resamples")
    block_len: int = flag(10, help="rows per block")
    peer_draws: int = flag(20, help="permutations and resamples the peers are timed on (then "
                                    "scaled)")
    check_voxels: int = flag(200, help="voxels on which the peer's p-values use every "
                                       "permutation")
    repeats: int = flag(2, help="timed runs of ours (best kept)")
    seed: int = flag(0, help="random seed")
    out: str = flag("outputs/bench_uncertainty.json", help="JSON results")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=__doc__.splitlines()[0])


def stage_report(seconds, flops, gemm, gemm_shape):
    """A stage's entry of the results: its time and FLOPs, the ``gemm_rate`` result it is
    compared with (GFLOP/s, best setting, rate per setting) and the peak RSS after it."""
    gflops, setting, rates = gemm
    return dict(seconds=seconds, flops=flops, gemm_gflops=gflops, gemm_setting=setting,
                gemm_rates=rates, gemm_shape=gemm_shape, peak_rss_mib=peak_rss_mib())


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


def random_problem(settings, rng):
    """(rows, voxels) float32 prediction and target = c prediction + noise, c = 0 for half the
    voxels and uniform in [0, 0.3] for the others (so that the p-values spread out)."""
    prediction = rng.standard_normal((settings.rows, settings.voxels), dtype=np.float32)
    strength = np.where(rng.random(settings.voxels) < 0.5, 0,
                        rng.uniform(0, 0.3, settings.voxels))
    target = rng.standard_normal((settings.rows, settings.voxels), dtype=np.float32)
    # in pieces: no full-size temporary in the peak RSS
    for first in range(0, settings.voxels, 4096):
        part = slice(first, first + 4096)
        target[:, part] += strength[part].astype(np.float32) * prediction[:, part]
    return prediction, target


def blas_libraries():
    """The BLAS libraries numpy runs on, their versions and threads."""
    return ", ".join(f"{lib['internal_api']} {lib.get('version')} ({lib['num_threads']} threads)"
                     for lib in threadpool_info() if lib["user_api"] == "blas")


def time_ours(settings, prediction, target, counts, starts, weights):
    """The stages' entries with our functions' best times, against the GEMM rate of their main
    products' shapes; and our p-values and weighted bootstrap r."""
    perm_blocks, boot_blocks = settings.rows // settings.block_len, len(starts) - 1
    perm_batch = inspect.signature(eval_utils.block_permutation_pvalues).parameters[
        "voxel_batch"].default
    boot_batch = inspect.signature(eval_utils.bootstrap_correlations).parameters[
        "voxel_batch"].default
    perm_flops = 2.0 * settings.n_permutations * perm_blocks ** 2 * settings.voxels
    boot_flops = 2.0 * 5 * settings.n_bootstrap * boot_blocks * settings.voxels
    perm_gemm = gemm_rate(settings.n_permutations, perm_blocks ** 2,
                          [min(perm_batch, settings.voxels)], np.float32, settings.seed)
    boot_gemm = gemm_rate(settings.n_bootstrap, boot_blocks,
                          sorted({min(128, settings.voxels), min(boot_batch, settings.voxels)}),
                          np.float64, settings.seed)
    stages = {}
    seconds, p_values = best_seconds(lambda: eval_utils.block_permutation_pvalues(
        prediction, target, settings.n_permutations, settings.block_len, settings.seed),
        settings.repeats)
    stages[PERMUTATIONS] = stage_report(
        seconds, perm_flops, perm_gemm, f"({settings.n_permutations}, {perm_blocks ** 2}) @ "
                                        f"({perm_blocks ** 2}, w) float32")
    seconds, summaries = best_seconds(lambda: eval_utils.bootstrap_correlations(
        prediction, target, counts, starts, weights=weights), settings.repeats)
    stages[BOOTSTRAP] = stage_report(
        seconds, boot_flops, boot_gemm, f"({settings.n_bootstrap}, {boot_blocks}) @ "
                                        f"({boot_blocks}, w) float64")
    return stages, p_values, summaries


def time_peers(settings, stages, data, permutations, p_values, summaries, rng):
    """Add to ``stages`` the peers' times (on the first ``--peer_draws`` draws, scaled) and how
    our results compare with theirs: the p-values on ``--check_voxels`` random voxels, every
    permutation, and the weighted bootstrap r on the peer's resamples. ``data``: (prediction,
    target, counts, starts, weights)."""
    prediction, target, counts, starts, weights = data
    draws = min(settings.peer_draws, settings.n_permutations)
    began = time.perf_counter()
    peer_exceed_counts(prediction, target, permutations[:draws], settings.block_len)
    elapsed = time.perf_counter() - began
    stages[PERMUTATIONS].update(peer_draws=draws, peer_measured_seconds=elapsed,
                                peer_seconds=elapsed * settings.n_permutations / draws)
    check = np.sort(rng.choice(settings.voxels, min(settings.check_voxels, settings.voxels),
                               replace=False))
    peer_p = (1.0 + peer_exceed_counts(prediction[:, check], target[:, check], permutations,
                                       settings.block_len)) / (1.0 + settings.n_permutations)
    peer_p = peer_p.astype(p_values.dtype)  # ours: the inputs' float32
    differences = np.abs(p_values[check] - peer_p)
    stages[PERMUTATIONS].update(
        check_voxels=len(check), identical_p_fraction=float(np.mean(differences == 0)),
        max_abs_p_difference=float(differences.max()))

    draws = min(settings.peer_draws, settings.n_bootstrap)
    began = time.perf_counter()
    peer_summaries = peer_bootstrap(prediction, target, counts[:draws], starts, weights)
    elapsed = time.perf_counter() - began
    stages[BOOTSTRAP].update(
        peer_draws=draws, peer_measured_seconds=elapsed,
        peer_seconds=elapsed * settings.n_bootstrap / draws,
        max_abs_r_difference=float(np.abs(summaries[:draws] - peer_summaries).max()))
    for stage in stages.values():
        stage.update(speedup=stage["peer_seconds"] / stage["seconds"],
                     gflops=stage["flops"] / stage["seconds"] / 1e9)
        stage["gemm_fraction"] = stage["gflops"] / stage["gemm_gflops"]


def print_stages(stages):
    """The table of the stages, their GEMM rates and how our results compare with the peers'."""
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
    perm = stages[PERMUTATIONS]
    print(f"p-values on {perm['check_voxels']} voxels, all permutations: "
          f"{perm['identical_p_fraction']:.1%} identical to the peer's, max |difference| "
          f"{perm['max_abs_p_difference']:.2g}")
    print(f"weighted bootstrap r on the peer's {stages[BOOTSTRAP]['peer_draws']} "
          f"resamples: max |difference| {stages[BOOTSTRAP]['max_abs_r_difference']:.1e}")


def main(argv=None):
    settings = parse_args(argv)
    rng = np.random.default_rng(settings.seed)
    prediction, target = random_problem(settings, rng)
    weights = region_weights(settings.voxels, rng)
    counts, starts = eval_utils.bootstrap_block_counts(settings.rows, settings.block_len,
                                                       settings.n_bootstrap, settings.seed)
    perm_blocks, boot_blocks = settings.rows // settings.block_len, len(starts) - 1
    permutations = eval_utils.permuted_blocks(perm_blocks, settings.n_permutations,
                                              settings.seed)
    blas = blas_libraries()
    load_before = os.getloadavg()
    print(f"data: {settings.rows} rows x {settings.voxels} voxels float32, blocks of "
          f"{settings.block_len} ({perm_blocks} permuted, {boot_blocks} resampled); "
          f"{settings.n_permutations} permutations, {settings.n_bootstrap} resamples, 3 weighted "
          "summaries")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus, numpy "
          f"{np.__version__}, BLAS {blas}; load average {load_before[0]:.2f} (other processes "
          f"slow every number)")
    baseline_rss = peak_rss_mib()
    stages, p_values, summaries = time_ours(settings, prediction, target, counts, starts,
                                            weights)
    time_peers(settings, stages, (prediction, target, counts, starts, weights), permutations,
               p_values, summaries, rng)
    peer_rss = peak_rss_mib()
    load_after = os.getloadavg()
    print_stages(stages)
    print(f"peak RSS: {baseline_rss:.0f} MiB before (data, imports), {peer_rss:.0f} MiB after "
          f"the peers; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    results = dict(args=arguments.as_dict(settings),
                   machine=dict(processor=cpu_name(), cpus=os.cpu_count(),
                                numpy=np.__version__, blas=blas),
                   load_average_before=load_before, load_average_after=load_after,
                   baseline_peak_rss_mib=baseline_rss, peer_peak_rss_mib=peer_rss,
                   stages=stages)
    run_utils.write_json(settings.out, results, overwrite=True)
    print(f"results: {settings.out}")


if __name__ == "__main__":
    main()
