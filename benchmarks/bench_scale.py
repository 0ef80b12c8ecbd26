"""Benchmark: every stage of a user's run at the real dataset's size, with time and peak memory.

    python benchmarks/bench_scale.py                              # UTS03's real shapes (~13 GB disk)
    python benchmarks/bench_scale.py --voxels 4000 --stories 3    # a rehearsal in a few minutes

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
- ``evaluator``: ``brain_evaluate.encoding_task`` (every response read, the test target and
  ceilings, the CV splits), one layer's ridge (``--hidden`` features x 4 delays) over all
  voxels on random TR features, the test scores with the permutations and the bootstrap, and
  the results written (``write_results``). The feature extraction is left out (a base model
  on 240,000 windows is a GPU job; ``bench_features.py`` measures it).

For the ridge the table also gives its FLOPs (every matrix product ``fit_ridge_cv`` makes,
counted from the shapes), the time those would take at the machine's GEMM rate measured on
an ``X.T @ Y`` of the same size, and the achieved fraction of that rate. Results go to a JSON
(``--out``); the dataset is removed at the end unless ``--keep``.
"""

import argparse
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

SHAPES = Path(__file__).resolve().parent / "ds003020_shapes.json"
STAGES = ("check", "noise_ceiling", "trainer_startup", "trainer_steps", "evaluator")
MEMORY_GOAL_GIB = 16.0
WAV_RATE, WAV_CHANNELS = 44100, 2  # the real stimuli: 44.1 kHz, 16-bit, stereo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--subject", default="UTS03", help="whose real shapes to use")
    parser.add_argument("--voxels", type=int, default=None,
                        help="voxels (default: the subject's real count)")
    parser.add_argument("--stories", type=int, default=None,
                        help="training stories (default: every paper training story it has)")
    parser.add_argument("--work", default="/tmp/bench_scale", help="folder of the dataset")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--train_steps", type=int, default=2, help="timed optimiser steps")
    parser.add_argument("--micro_batch", type=int, default=4, help="10 s windows per step")
    parser.add_argument("--hidden", type=int, default=768,
                        help="features per TR of the evaluated layer (x4 delays)")
    parser.add_argument("--n_permutations", type=int, default=1000)
    parser.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--out", default="outputs/bench_scale.json", help="results JSON")
    parser.add_argument("--keep", action="store_true", help="keep the dataset")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # run one stage
    return parser.parse_args(argv)


def main():
    args = parse_args()
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
        duration = 2.0 * (n_trs - 15)
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
    import logging
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
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
    from transformers import AutoModel, Wav2Vec2Config

    import brain_trainer_story as trainer
    import data_utils
    import speech_models

    details = {}
    began = time.perf_counter()
    subjects = [args.subject]
    train, val = trainer.choose_stories(data, subjects)
    stories = {s: train[s] + val[s] for s in subjects}
    counts = {s: data_utils.check_run_inputs(data, s, stories[s]) for s in subjects}
    voxels = trainer.select_voxels(data, subjects, counts, [str(nc_path)])
    targets = trainer.load_targets(data, stories, voxels, train)
    groups, n_outputs = trainer.target_groups(targets, train, val, True)
    audio, bounds = trainer.load_stimuli(data, stories[args.subject], progress=False)
    details["data_s"] = round(time.perf_counter() - began, 1)
    model_dir = Path(args.work) / "wav2vec2-base-random"
    if not model_dir.exists():
        AutoModel.from_config(Wav2Vec2Config()).save_pretrained(model_dir)
        speech_models.default_feature_extractor("wav2vec2").save_pretrained(model_dir)
    window = next(iter(bounds.values()))[1]
    model, preprocessor = speech_models.build_model(str(model_dir), n_outputs, window)
    details.update(outputs=n_outputs, startup_s=round(time.perf_counter() - began, 1))
    if args.stage == "trainer_steps":
        optimizer, _ = trainer.make_optimizer(model, 5e-5, 1e-3, 30, 5, 0.5, 1e-5)
        datasets = trainer.group_datasets(groups, audio, bounds)
        batches = speech_models.epoch_batches([d.train for d in datasets], 0, 0,
                                              args.micro_batch, args.micro_batch,
                                              speech_models.Collate(preprocessor))
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


def evaluator_stage(args, data, nc_path):
    """The evaluator's response loading, one layer's ridge and scores, and the results, with
    its own functions, on random TR features; the ridge's FLOPs against the GEMM rate."""
    import torch

    import brain_evaluate
    import data_utils
    import eval_utils

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
    evaluate_args = brain_evaluate.parse_args([
        "--model_name", "unused", "--subject", args.subject, "--data_dir", str(data),
        "--nc_path", str(nc_path), "--save_dir", str(out), "--exp_name", "run",
        "--n_permutations", str(args.n_permutations), "--n_bootstrap", str(args.n_bootstrap)])
    began = time.perf_counter()
    stories = brain_evaluate.training_stories(data, args.subject, None, data_utils.TEST_STORY)
    task, facts = brain_evaluate.encoding_task(evaluate_args, args.subject, stories)
    details["load_s"] = round(time.perf_counter() - began, 1)
    rng = np.random.default_rng(0)
    features = {story: rng.standard_normal((len(data_utils.tr_times(data, story)), args.hidden),
                                           dtype=np.float32)
                for story in [*stories, data_utils.TEST_STORY]}
    start = time.perf_counter()
    scores = brain_evaluate.with_summary(
        brain_evaluate.layer_scores(features, task, what="bench"), task)
    details["scores_s"] = round(time.perf_counter() - start, 1)
    details.update({f"{name}_s": round(seconds, 1) for name, seconds in timings.items()})
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results = {"pretrained": {1: {"encoding": {"none": scores}, "efficiency": {},
                                  "semantic_preference": None}}}
    brain_evaluate.write_results(out, results, {
        "subject": data_utils.subject_id(args.subject), "train_stories": stories,
        "test_story": data_utils.TEST_STORY, "models": {"pretrained": "unused"}, **facts},
        task)
    details["write_s"] = round(time.perf_counter() - start, 1)

    # the ridge's products, from the shapes, against the GEMM rate of X.T @ Y
    n, v = len(task.responses.train), task.responses.train.shape[1]
    p = 4 * args.hidden
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
    details.update(ridge_tflop=round(flops / 1e12, 1), gemm_gflops=round(gemm, 1),
                   ridge_bound_s=round(bound, 1),
                   ridge_vs_bound=round(timings["ridge"] / bound, 2),
                   ridge_gflops=round(flops / 1e9 / timings["ridge"], 1))
    return details


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
