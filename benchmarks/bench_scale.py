"""Benchmark: every stage of a user's run at the real dataset's size, with time and peak memory.

    python benchmarks/bench_scale.py                            # UTS03's real shapes (~13 GB disk)
    python benchmarks/bench_scale.py --voxels 4000 --stories 3  # a rehearsal in a few minutes

Writes (streamed, a story at a time) a synthetic dataset with the real shapes of one subject
(``ds003020_shapes.json`` beside this file, from the dataset's public file listing): its
whole-brain voxel count, the real row counts (respdict) of the paper's training stories it
has, ``stagefright`` and ``wheretheressmoke`` with 10 repeats, as float64 HDF5 like the real
files, 44.1 kHz stereo 16-bit WAVs of the stories' length and TextGrids. Then each stage a
user runs, each in its own process, timed, with that process's peak resident memory from the
OS (``os.wait4``):

- ``check``: ``data_utils.py check`` of the subject;
- ``noise_ceiling``: ``noise_ceilings.py`` (the ceiling from the test story's repeats);
- ``trainer_startup``: the trainer's stories, checks, voxel selection (ceiling > 0.4), targets
  and stimuli, and a base-size random-init wav2vec2 with one output per selected voxel;
- ``trainer_steps``: ``--train_steps`` optimiser steps of ``--micro_batch`` 10 s windows
  (forward, MSE, backward, AdamW) of that model;
- ``evaluator``: ``encoding.encoding_task`` (every response read, the test target and
  ceilings, the CV splits), one layer's ridge (``--hidden`` features x 4 delays) over all
  voxels on random TR features, the test scores with the permutations and the bootstrap, and
  the results written (``alignment_outputs.write_results``). The feature extraction is left
  out (a base model on 240,000 windows is a GPU job; ``bench_features.py`` measures it).

For the ridge the table also gives its FLOPs (every matrix product ``fit_ridge_cv`` makes,
counted from the shapes), the time those would take at the machine's GEMM rate measured on
an ``X.T @ Y`` of the same size, and the achieved fraction of that rate. Results go to a JSON
(``--out``); the dataset is removed at the end unless ``--keep``.
"""

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import arguments  # noqa: E402
import machine  # noqa: E402
import run_utils  # noqa: E402
from arguments import flag  # noqa: E402

SHAPES = Path(__file__).resolve().parent / "ds003020_shapes.json"
STAGES = ("check", "noise_ceiling", "trainer_startup", "trainer_steps", "evaluator")
MEMORY_GOAL_GIB = 16.0
WAV_RATE, WAV_CHANNELS = 44100, 2  # the real stimuli: 44.1 kHz, 16-bit, stereo


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The benchmark's flags."""

    subject: str = flag("UTS03", help="whose real shapes to use")
    voxels: int | None = flag(None, help="voxels (default: the subject's real count)")
    stories: int | None = flag(None, help="training stories (default: every paper training "
                                          "story it has)")
    work: str = flag("/tmp/bench_scale", help="folder of the dataset")
    stages: list[str] = flag(list(STAGES), choices=STAGES, help="stages to run, in order")
    train_steps: int = flag(2, help="timed optimiser steps")
    micro_batch: int = flag(4, help="10 s windows per step")
    hidden: int = flag(768, help="features per TR of the evaluated layer (x4 delays)")
    n_permutations: int = flag(1000, help="permutations of the evaluator's test scores")
    n_bootstrap: int = flag(1000, help="bootstrap resamples of the evaluator's test scores")
    out: str = flag("outputs/bench_scale.json", help="results JSON")
    keep: bool = flag(False, help="keep the dataset")
    stage: str | None = flag(None, help=argparse.SUPPRESS)  # the child process of one stage


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=__doc__.split("\n\n")[0])


def main(argv=None):
    args = parse_args(argv)
    if args.stage:
        return run_stage(args)
    import data_utils

    shapes = json.loads(SHAPES.read_text())
    subject = data_utils.subject_id(args.subject)
    n_voxels = args.voxels or shapes["voxels"][subject]
    stories = list(data_utils.TRAIN_STORIES[:args.stories or len(data_utils.TRAIN_STORIES)])
    work = Path(args.work)
    data = work / "ds003020"
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    began = time.perf_counter()
    written = write_dataset(data, subject, stories, n_voxels, shapes["respdict"])
    rows = sum(shapes["respdict"][s] - 20 for s in stories)
    print(f"# dataset: {subject}, {n_voxels} voxels, {len(stories)} training stories "
          f"({rows} rows), {written / 2**30:.1f} GiB written in "
          f"{time.perf_counter() - began:.0f} s to {data}")
    results = []
    for stage in args.stages:
        results.append(child_stage(stage, args, data, subject))
        report = results[-1]
        print(f"{stage:<16} {report['seconds']:>9.1f} s  {report['peak_rss_gib']:>6.2f} GiB  "
              + "  ".join(f"{k}={v}" for k, v in report.get("details", {}).items()), flush=True)
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"subject": subject, "voxels": n_voxels, "stories": stories,
                               "training_rows": rows, "machine": platform.node(),
                               "cpus": os.cpu_count(), "stages": results}, indent=1) + "\n")
    print(f"# results in {out}")
    if not args.keep:
        shutil.rmtree(work)
    return 0


# ----------------------------------------------------------------------------- the dataset

def write_dataset(root, subject, stories, n_voxels, respdict, seed=0):
    """The dataset, a story at a time (never a whole subject in memory); returns the bytes
    written. Responses are smooth random float64 with a planted part shared by the repeats,
    so that noise ceilings spread out."""
    import h5py
    import soundfile as sf

    import synthetic_data

    if root.exists():
        shutil.rmtree(root)
    (root / "stimuli").mkdir(parents=True)
    derivative = root / "derivative"
    (derivative / "TextGrids").mkdir(parents=True)
    folder = derivative / "preprocessed_data" / subject
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    plan = [*stories, "stagefright", "wheretheressmoke"]
    (derivative / "respdict.json").write_text(json.dumps({s: respdict[s] for s in plan}))
    # per voxel, how much of a presentation repeats: about half the voxels get a 10-repeat
    # ceiling above 0.4 (share > 0.02), as UTS03's 50,732 of 95,556
    signal_share = np.where(rng.random(n_voxels) < 0.47, rng.uniform(0.0, 0.02, n_voxels),
                            rng.uniform(0.02, 0.6, n_voxels))
    for story in plan:
        n_trs = respdict[story]
        rows = n_trs - 20
        duration = synthetic_data.audio_seconds(n_trs)
        with sf.SoundFile(root / "stimuli" / f"{story}.wav", "w", WAV_RATE, WAV_CHANNELS,
                          "PCM_16") as wav:
            for start in range(0, int(duration * WAV_RATE), 60 * WAV_RATE):
                n = min(60 * WAV_RATE, int(duration * WAV_RATE) - start)
                wav.write((rng.standard_normal((n, WAV_CHANNELS)) * 0.1).astype(np.float32))
        words = [(t, min(t + 0.4, duration), "word") for t in np.arange(0.0, duration - 0.5, 0.5)]
        phones = [(t, e, "AH") for t, e, _ in words]
        synthetic_data.write_textgrid(derivative / "TextGrids" / f"{story}.TextGrid",
                                      {"phone": phones, "word": words}, duration)
        with h5py.File(folder / f"{story}.hf5", "w") as handle:
            block = 16384
            data = handle.create_dataset("data", (rows, n_voxels), np.float64)
            repeats = (handle.create_dataset("individual_repeats", (10, rows, n_voxels),
                                             np.float64) if story == "wheretheressmoke" else None)
            for first in range(0, n_voxels, block):
                columns = slice(first, min(first + block, n_voxels))
                width = columns.stop - first
                shared = rng.standard_normal((rows, width)) * np.sqrt(signal_share[columns])
                if repeats is None:
                    data[:, columns] = shared + rng.standard_normal((rows, width)) * np.sqrt(
                        1 - signal_share[columns])
                    continue
                presentations = [shared + rng.standard_normal((rows, width)) * np.sqrt(
                    1 - signal_share[columns]) for _ in range(10)]
                for index, presentation in enumerate(presentations):
                    repeats[index, :, columns] = presentation
                data[:, columns] = np.mean(presentations, axis=0)
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


# ----------------------------------------------------------------------------- stages

def child_stage(stage, args, data, subject):
    """Run a stage in a child process: its wall time, peak RSS (from wait4) and details."""
    details_path = Path(args.work) / f"{stage}.json"
    details_path.unlink(missing_ok=True)
    python = sys.executable
    if stage == "check":
        command = [python, str(ROOT / "data_utils.py"), "check", "--data_dir", str(data),
                   "--subjects", subject]
    elif stage == "noise_ceiling":
        command = [python, str(ROOT / "noise_ceilings.py"), "--data_dir", str(data),
                   "--subject", subject, "--out", str(Path(args.work) / f"{subject}.npy"),
                   "--overwrite"]
    else:
        command = [python, __file__, "--stage", stage, "--work", args.work, "--subject",
                   subject, "--train_steps", str(args.train_steps), "--micro_batch",
                   str(args.micro_batch), "--hidden", str(args.hidden), "--n_permutations",
                   str(args.n_permutations), "--n_bootstrap", str(args.n_bootstrap)]
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=open(Path(args.work) / f"{stage}.log", "w"))
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    if status != 0:
        raise SystemExit(f"stage {stage} failed (status {status}); see "
                         f"{Path(args.work) / f'{stage}.log'}")
    report = {"stage": stage, "seconds": seconds,
              "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30}  # Linux: KiB
    if details_path.exists():
        report["details"] = json.loads(details_path.read_text())
    return report


def run_stage(args):
    """The child side of ``trainer_startup``, ``trainer_steps`` and ``evaluator``."""
    run_utils.setup_logging()
    work = Path(args.work)
    data = work / "ds003020"
    nc_path = work / f"{args.subject}.npy"
    details = {"trainer_startup": trainer_stage, "trainer_steps": trainer_stage,
               "evaluator": evaluator_stage}[args.stage](args, data, nc_path)
    (work / f"{args.stage}.json").write_text(json.dumps(details))
    return 0


def trainer_stage(args, data, nc_path):
    """The trainer's start-up (and, for trainer_steps, optimiser steps) with its own
    functions, on a base-size random-init wav2vec2."""
    import torch

    import brain_model
    import data_utils
    import training_data
    import training_steps

    details = {}
    began = time.perf_counter()
    dataset = data_utils.Dataset(data)
    subjects = [args.subject]
    train, val = training_data.choose_stories(dataset, subjects)
    stories = {s: train[s] + val[s] for s in subjects}
    counts = {s: dataset.check_run_inputs(s, stories[s]) for s in subjects}
    voxels = training_data.select_voxels(dataset, subjects, counts, [str(nc_path)])
    targets = training_data.load_targets(dataset, stories, voxels, train)
    groups, n_outputs = training_data.target_groups(targets, train, val, True)
    audio, bounds = training_data.load_stimuli(dataset, stories[args.subject], progress=False)
    details["data_s"] = round(time.perf_counter() - began, 1)
    model_dir = Path(args.work) / "wav2vec2-base-random"
    if not model_dir.exists():
        machine.save_base_model("wav2vec2", model_dir)
    window = next(iter(bounds.values()))[1]
    model, preprocessor = brain_model.build_model(str(model_dir), n_outputs, window)
    details.update(outputs=n_outputs, startup_s=round(time.perf_counter() - began, 1))
    if args.stage == "trainer_steps":
        optimizer, _ = training_steps.make_optimizer(model, 5e-5, 1e-3, 30, 5, 0.5, 1e-5)
        datasets = training_data.group_datasets(groups, audio, bounds)
        batches = training_data.epoch_batches([d.train for d in datasets], 0, 0,
                                              args.micro_batch, args.micro_batch,
                                              training_data.Collate(preprocessor))
        model.train()
        times = []
        for step, micro_batches in enumerate(batches):
            if step == args.train_steps:
                break
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            for inputs, target, offset in micro_batches:
                loss = torch.nn.functional.mse_loss(model(inputs)[:, offset:], target)
                loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        details.update(step_s=round(float(np.median(times)), 1),
                       samples_per_s=round(args.micro_batch / float(np.median(times)), 2))
    return details


def evaluator_settings(args, data, nc_path):
    """The evaluator's settings (its flag groups that ``encoding.encoding_task`` and the
    results' protocol read), at their defaults but for the dataset, the ceiling file and the
    permutations and resamples."""
    from brain_regions import RegionFlags
    from data_utils import DatasetFlags
    from encoding import EncodingFlags, UncertaintyFlags

    @dataclasses.dataclass(kw_only=True)
    class EvaluatorSettings(arguments.OutputFlags, UncertaintyFlags, RegionFlags, EncodingFlags,
                            DatasetFlags):
        """What the evaluator's start-up and results read of its settings."""

    settings = EvaluatorSettings(data_dir=str(data), nc_path=str(nc_path),
                                 save_dir=str(Path(args.work) / "alignment"),
                                 n_permutations=args.n_permutations,
                                 n_bootstrap=args.n_bootstrap)
    settings.finish_outputs("unused", args.subject)
    return settings


def evaluator_stage(args, data, nc_path):
    """The evaluator's response loading, one layer's ridge and scores, and the results, with
    its own functions, on random TR features; the ridge's FLOPs against the GEMM rate."""
    import alignment_outputs
    import data_utils
    import encoding
    import eval_utils
    import summaries

    details = {}
    timings = {}

    def timed(name, function):
        def wrapper(*a, **k):
            start = time.perf_counter()
            result = function(*a, **k)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
            return result
        return wrapper

    eval_utils.fit_ridge_cv = timed("ridge", eval_utils.fit_ridge_cv)
    eval_utils.block_permutation_pvalues = timed("permutations",
                                                 eval_utils.block_permutation_pvalues)
    eval_utils.bootstrap_correlations = timed("bootstrap", eval_utils.bootstrap_correlations)
    out = Path(args.work) / "alignment"
    settings = evaluator_settings(args, data, nc_path)
    began = time.perf_counter()
    dataset = settings.open_dataset()
    subject = data_utils.subject_id(args.subject)
    stories = encoding.training_stories(dataset, subject, None, data_utils.TEST_STORY)
    task, facts = encoding.encoding_task(settings, dataset, subject, stories)
    details["load_s"] = round(time.perf_counter() - began, 1)
    rng = np.random.default_rng(0)
    features = {story: rng.standard_normal((len(dataset.tr_times(story)), args.hidden),
                                           dtype=np.float32)
                for story in [*stories, data_utils.TEST_STORY]}
    start = time.perf_counter()
    scores = summaries.with_summary(encoding.layer_scores(features, task, what="bench"), task)
    details["scores_s"] = round(time.perf_counter() - start, 1)
    details.update({f"{name}_s": round(seconds, 1) for name, seconds in timings.items()})
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results = {"pretrained": {1: {"encoding": {"none": scores}, "efficiency": {},
                                  "partition": {}, "semantic_preference": None}}}
    alignment_outputs.write_results(out, results, {
        "subject": subject, "train_stories": stories, "test_story": data_utils.TEST_STORY,
        "models": {"pretrained": "unused"}, **facts,
        "protocol": alignment_outputs.protocol(settings)}, task)
    details["write_s"] = round(time.perf_counter() - start, 1)
    details.update(ridge_bound(task, args.hidden, timings["ridge"], rng))
    return details


def ridge_bound(task, hidden, ridge_s, rng):
    """The FLOPs of the ridge's products, from the shapes, the time they take at the GEMM rate
    of an ``X.T @ Y`` of the same size, and the ridge's time against it."""
    import torch

    n, v = len(task.responses.train), task.responses.train.shape[1]
    p = 4 * hidden
    n_val = [len(val) for _, val in task.splits]
    alphas = len(task.alphas)
    rank = min(n, p)
    flops = 2 * n * p * v  # X^T Y
    for size in n_val:
        flops += 2 * size * p * v + 2 * p * rank * v  # held-out X^T y, projection
        flops += alphas * 2 * size * rank * v  # a prediction per alpha
    flops += 2 * rank * p * v + 2 * p * rank * v  # the refit: projection and weights
    x = torch.from_numpy(rng.standard_normal((n, p), dtype=np.float32))
    y = torch.from_numpy(task.responses.train[:, :min(v, 16384)])
    x.T @ y  # warm-up
    start = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        x.T @ y
    gemm = repeats * 2 * n * p * y.shape[1] / (time.perf_counter() - start) / 1e9
    bound = flops / 1e9 / gemm
    return dict(ridge_tflop=round(flops / 1e12, 1), gemm_gflops=round(gemm, 1),
                ridge_bound_s=round(bound, 1), ridge_vs_bound=round(ridge_s / bound, 2),
                ridge_gflops=round(flops / 1e9 / ridge_s, 1))


def print_table(results):
    print(f"\n{'stage':<16} {'seconds':>9} {'peak RSS':>9}  (goal: every stage under "
          f"{MEMORY_GOAL_GIB:.0f} GiB)")
    for report in results:
        flag = "" if report["peak_rss_gib"] < MEMORY_GOAL_GIB else "  over the goal"
        print(f"{report['stage']:<16} {report['seconds']:>9.1f} {report['peak_rss_gib']:>6.2f} "
              f"GiB{flag}")
    ridge = next((r["details"] for r in results if r["stage"] == "evaluator"), None)
    if ridge:
        print(f"\nridge of one layer: {ridge['ridge_s']} s for {ridge['ridge_tflop']} TFLOP; at "
              f"the measured GEMM rate ({ridge['gemm_gflops']} GFLOP/s, X.T @ Y) the products "
              f"take {ridge['ridge_bound_s']} s: {ridge['ridge_vs_bound']}x that bound "
              f"(goal <= 1.5x), {ridge['ridge_gflops']} GFLOP/s achieved")


if __name__ == "__main__":
    sys.exit(main())
