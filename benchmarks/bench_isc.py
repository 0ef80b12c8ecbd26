"""Benchmark: the intersubject ceiling of a story (eval_utils.intersubject_ceiling, as
narratives.NarrativesDataset reads it: one listener at a time) against the leave-one-out ISC
as the Narratives authors compute it (brainiak's ``isc``: all listeners stacked in memory, the
others' mean recomputed for each listener).

    python benchmarks/bench_isc.py                      # 20 listeners x 300 TRs x 20,000 vertices
    python benchmarks/bench_isc.py --n_subjects 46 --n_vertices 81924   # a real story's size

Listeners share a signal of vertex-specific variance plus noise of their own (float32), made
in memory before the timing (a dataset reads them from files: ours twice, one at a time, the
authors' once, all together). Both give the Fisher-z mean leave-one-out correlation per
vertex; ours also corrects it into the ceiling. Printed: seconds, peak memory each allocates
beyond the listeners' own arrays (tracemalloc), the largest difference of
the two ISCs, and the bytes each streams per second against the machine's numpy copy rate (no
matrix product is involved, so a GEMM rate would not say how close to the machine either is).
"""

import dataclasses
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import arguments  # noqa: E402
import eval_utils  # noqa: E402
from arguments import flag  # noqa: E402
from machine import cpu_name  # noqa: E402


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The benchmark's flags."""

    n_subjects: int = flag(20, help="listeners of the story")
    n_trs: int = flag(300, help="response rows of the story")
    n_vertices: int = flag(20000, help="vertices (fsaverage6: 81,924)")
    seed: int = flag(0, help="random seed")


def make_listeners(n, n_trs, n_vertices, seed):
    """(each listener's (n_trs, n_vertices) float32 responses, the shared variance)."""
    rng = np.random.default_rng(seed)
    shared = rng.uniform(0.0, 0.6, n_vertices).astype(np.float32)
    signal = rng.standard_normal((n_trs, n_vertices), dtype=np.float32)
    return [np.sqrt(shared) * signal + np.sqrt(1 - shared)
            * rng.standard_normal(signal.shape, dtype=np.float32) for _ in range(n)], shared


def leave_one_out_isc(stacked):
    """The authors' ISC (brainiak.isc with pairwise=False, summary "mean"), from the formula:
    for each subject, Pearson r with the mean of the others, then the Fisher-z mean.
    ``stacked``: (subjects, time, vertices)."""
    z = []
    for subject in range(len(stacked)):
        others = np.delete(stacked, subject, axis=0).mean(axis=0)
        z.append(np.arctanh(np.clip(eval_utils.column_correlation(stacked[subject], others),
                                    -0.999999, 0.999999)))
    return np.tanh(np.mean(z, axis=0))


def copy_rate(n_bytes):
    """The machine's numpy copy rate, GB/s read + written, on an array of ``n_bytes``."""
    source = np.ones(n_bytes // 4, np.float32)
    target = np.empty_like(source)
    best = np.inf
    for _ in range(3):
        began = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - began)
    return 2 * source.nbytes / best / 1e9


def measured(function):
    """(result, seconds, peak MiB allocated while it ran)."""
    tracemalloc.start()
    began = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return result, seconds, peak


def main(argv=None):
    args = arguments.parse(Settings, argv, description=__doc__.splitlines()[0])
    listeners, shared = make_listeners(args.n_subjects, args.n_trs, args.n_vertices, args.seed)
    one = args.n_trs * args.n_vertices * 4  # bytes of one listener's float32 responses
    print(f"problem: {args.n_subjects} listeners x {args.n_trs} TRs x {args.n_vertices} "
          f"vertices ({one * args.n_subjects / 2 ** 20:.0f} MiB of float32 responses)")
    rate = copy_rate(one)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus; numpy copy {rate:.1f} GB/s")
    (isc, ceiling), ours_s, ours_mib = measured(lambda: eval_utils.intersubject_ceiling(
        listeners))

    def authors():
        return leave_one_out_isc(np.stack(listeners))

    theirs, theirs_s, theirs_mib = measured(authors)
    # bytes each streams: ours reads every listener twice (sum, then correlation); theirs
    # averages n - 1 listeners for each of n
    streamed = {"ours": 2 * args.n_subjects * one,
                "authors'": args.n_subjects * (args.n_subjects - 1) * one}
    print(f"{'ISC':<34}{'seconds':>9}{'/ ours':>9}{'peak MiB':>10}{'GB/s':>8}{'of copy':>9}")
    for name, seconds, mib in (("ours (one listener at a time)", ours_s, ours_mib),
                               ("authors' (brainiak-style, stacked)", theirs_s, theirs_mib)):
        key = "ours" if name.startswith("ours") else "authors'"
        speed = streamed[key] / seconds / 1e9
        print(f"{name:<34}{seconds:>9.2f}{seconds / ours_s:>8.2f}x{mib:>10.0f}{speed:>8.1f}"
              f"{speed / rate:>9.0%}")
    print(f"largest |ISC difference|: {np.max(np.abs(isc - theirs)):.2e}; mean ceiling "
          f"{ceiling.mean():.3f} (planted {np.sqrt(shared).mean():.3f})")


if __name__ == "__main__":
    sys.exit(main())
