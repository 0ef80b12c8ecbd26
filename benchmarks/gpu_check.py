"""The GPU check: training steps, feature extraction and the ridge on one GPU, in one table.

    bash benchmarks/gpu_check.sh                 # what to run on a machine with a GPU
    python benchmarks/gpu_check.py --quick       # the same, scaled down (a CPU smoke test)

With base-size random-init encoders (wav2vec2-base's and whisper-base's dimensions, no
download):

- training: ``--steps`` optimiser steps (AdamW) of the brain-tuning model (``build_model``,
  the paper's freezing) on batches of ``--batch`` 10 s windows of random audio with one output
  per voxel above a 0.4 ceiling of UTS03 (50,732), in bf16 autocast: samples/s and the peak
  GPU memory;
- extraction: the paper's sliding windows (16 s context, 0.1 s steps) over ``--audio_s`` of
  random audio (``sliding_window_features``, batched), in bf16 and in fp32: windows/s of
  both and the largest difference of their features relative to the features' spread;
- ridge: ``fit_ridge_cv`` of one whole-brain layer (8,738 rows of 768 x 4 delayed features ->
  95,556 voxels, the paper's 15 alphas, 3 splits) on the GPU, and on ``--cpu_voxels`` of its
  voxels on the CPU: seconds, the CPU time scaled to every voxel, and the largest difference
  of the weights on the common voxels.

Prints one table (and writes it as JSON to ``--out``).
"""

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import arguments  # noqa: E402
import brain_model  # noqa: E402
import eval_utils  # noqa: E402
import layer_features  # noqa: E402
import machine  # noqa: E402
import processes  # noqa: E402
import speech_models  # noqa: E402
from arguments import flag  # noqa: E402

WHOLE_BRAIN = dict(rows=8738, hidden=768, voxels=95556, outputs=50732)  # UTS03
QUICK = dict(rows=600, hidden=64, voxels=2000, outputs=500)


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The check's flags."""

    device: str = flag("auto", help="auto, cuda, cuda:N or cpu")
    steps: int = flag(50, help="training steps per model")
    batch: int = flag(16, help="10 s windows per step")
    audio_s: float = flag(120.0, help="audio for extraction")
    cpu_voxels: int = flag(4096, help="voxels of the CPU ridge (scaled to all for the table)")
    families: list[str] = flag(["wav2vec2", "whisper"], choices=machine.FAMILIES,
                               help="encoder families")
    quick: bool = flag(False, help="tiny sizes and few steps: checks that everything runs")
    out: str = flag("outputs/gpu_check.json", help="results JSON")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=__doc__.split("\n\n")[0])


def main(argv=None):
    args = parse_args(argv)
    device = processes.resolve_device(args.device)
    size = QUICK if args.quick else WHOLE_BRAIN
    if args.quick:
        args.steps, args.batch, args.audio_s = min(args.steps, 2), min(args.batch, 2), 20.0
        args.cpu_voxels = min(args.cpu_voxels, 500)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# {name}, torch {torch.__version__}, autocast {dtype}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for family in args.families:
            path = Path(folder) / family
            base_model(family, path, args.quick)
            rows.append(training(path, family, device, dtype, args, size["outputs"]))
            print(rows[-1], flush=True)
            rows.append(extraction(path, family, device, dtype, args.audio_s))
            print(rows[-1], flush=True)
    rows.append(ridge(device, args.cpu_voxels, **{k: size[k] for k in ("rows", "hidden",
                                                                      "voxels")}))
    print(rows[-1], flush=True)
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows},
                              indent=1) + "\n")
    return 0


def base_model(family, path, quick=False):
    """A random-init encoder with a base model's dimensions (whisper-base for Whisper; tiny
    ones with ``quick``), saved with its feature extractor."""
    if quick:
        speech_models.save_tiny_model(path, family)
        return
    torch.manual_seed(0)
    machine.save_base_model(family, path)


def training(path, family, device, dtype, args, n_outputs):
    """Samples/s and peak memory of optimiser steps of the brain-tuning model."""
    window = 10 * 16000
    model, preprocessor = brain_model.build_model(str(path), n_outputs, window)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rng = np.random.default_rng(0)
    inputs = torch.from_numpy(preprocessor(rng.standard_normal((args.batch, window),
                                                               dtype=np.float32))).to(device)
    target = torch.randn(args.batch, n_outputs, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps + 1):  # the first step is a warm-up
        machine.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            output = model(inputs)
        torch.nn.functional.mse_loss(output.float(), target).backward()
        optimizer.step()
        machine.synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times[1:]))
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, optimizer
    return {"check": f"train {family}", "samples_per_s": round(args.batch / seconds, 2),
            "seconds": round(sum(times[1:]), 1),
            "peak_gpu_gib": None if memory is None else round(memory, 2)}


def extraction(path, family, device, dtype, audio_s):
    """Windows/s of the sliding-window features in ``dtype`` and fp32, and their difference."""
    encoder = speech_models.load_encoder(str(path), device)
    audio = np.random.default_rng(1).standard_normal(int(audio_s * 16000)).astype(np.float32)
    layers = [encoder.depth // 2, encoder.depth]
    results = {}
    for label, autocast in (("bf16", dtype), ("fp32", None)):
        if label == "bf16" and dtype is None:
            continue
        machine.synchronize(device)
        start = time.perf_counter()
        features, times = layer_features.sliding_window_features(
            encoder.backbone, encoder.preprocessor, audio, layers, batch_size=32,
            device=device, dtype=autocast)
        machine.synchronize(device)
        results[label] = (features, len(times) / (time.perf_counter() - start))
    row = {"check": f"extract {family}", "windows": len(times),
           "fp32_windows_per_s": round(results["fp32"][1], 1)}
    if "bf16" in results:
        row["bf16_windows_per_s"] = round(results["bf16"][1], 1)
        row["bf16_vs_fp32_max_diff_in_sd"] = round(max(
            float(np.abs(results["bf16"][0][k] - results["fp32"][0][k]).max()
                  / results["fp32"][0][k].std()) for k in layers), 4)
    del encoder
    return row


def ridge(device, cpu_voxels, rows, hidden, voxels):
    """fit_ridge_cv of one whole-brain layer on ``device`` and on part of it on the CPU."""
    rng = np.random.default_rng(2)
    p = 4 * hidden
    x = rng.standard_normal((rows, p), dtype=np.float32)
    y = (x[:, :64] @ rng.standard_normal((64, voxels), dtype=np.float32) * 0.05
         + rng.standard_normal((rows, voxels), dtype=np.float32))
    lengths = [rows // 24] * 23 + [rows - 23 * (rows // 24)]
    splits = eval_utils.bootstrap_chunk_splits(lengths, n_boots=3, chunk_len=20, seed=0)
    alphas = eval_utils.ENCODING_ALPHAS
    row = {"check": f"ridge {rows}x{p} -> {voxels}"}
    if device.type == "cuda":
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        machine.synchronize(device)
        start = time.perf_counter()
        weights, _, _ = eval_utils.fit_ridge_cv(xt, yt, alphas, splits, backend="torch",
                                                device=device, memory_budget=8 * 2**30)
        machine.synchronize(device)
        row["gpu_s"] = round(time.perf_counter() - start, 1)
        gpu_weights = weights[:, :cpu_voxels].cpu().numpy()
        del xt, yt, weights
    start = time.perf_counter()
    cpu_weights, _, _ = eval_utils.fit_ridge_cv(x, y[:, :cpu_voxels], alphas, splits)
    cpu_s = time.perf_counter() - start
    row.update(cpu_s_for_all_voxels=round(cpu_s * voxels / cpu_voxels, 1),
               cpu_voxels=cpu_voxels)
    if device.type == "cuda":
        row["max_weight_diff_in_sd"] = round(float(np.abs(gpu_weights - cpu_weights).max()
                                                   / cpu_weights.std()), 6)
    return row


def print_table(rows):
    keys = list(dict.fromkeys(key for row in rows for key in row if key != "check"))
    print(f"\n{'check':<28} " + " ".join(f"{key:>20}" for key in keys))
    for row in rows:
        print(f"{row['check']:<28} " + " ".join(
            f"{'' if row.get(key) is None else row[key]!s:>20}" for key in keys))


if __name__ == "__main__":
    sys.exit(main())
