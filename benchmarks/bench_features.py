"""Benchmark: brain-alignment feature extraction at the model's limit, on full 16.1 s windows.

    python benchmarks/bench_features.py --family wav2vec2 --seconds 19.2     # CPU fp32
    python benchmarks/bench_features.py --family whisper --device cuda --seconds 120   # bf16
    python benchmarks/bench_features.py --compare_naive --seconds 20 --layers 2 5 7

Slides the paper's windows (16 s context + 0.1 s chunk, 0.1 s steps) over ``--seconds`` of
random audio with a base-size encoder (random init from the family's default config, no
download; Whisper with whisper-base's dimensions) through
``layer_features.sliding_window_features``, batched and computing only the layers needed, and
times only the full-length windows: the ones ending in the first 16.1 s are shorter, cheaper
and, for wav2vec2 and HuBERT, of a different length each, so they are left out (the function's
window ends are filtered; the rest of its path is the one the evaluator runs). Whisper pads
every window to 30 s, so all its windows cost the same.

Layers: the evaluator's default ones up to the model's depth (all 12 layers of a base
wav2vec2 run). Reports windows/s (over the whole run, and of the fastest batch, the figure
least slowed by other processes), the model FLOPs of one window counted from the config (CNN
feature encoder or Whisper's two conv1d layers on 3000 mel frames, wav2vec2's positional conv
embedding and feature projection, and per transformer layer the attention projections,
attention scores with their weighted sum and the MLP, over the layers that actually run), the
achieved GFLOP/s and its fraction of the machine's GEMM rate, measured in the same run on a
matrix product of the MLP's shape at the batch's size, in the run's dtype on its device
(torch; on the CPU in fp32 also numpy's BLAS, ``machine.gemm_rate``, and the best is
used). The count is checked against ``torch.utils.flop_counter.FlopCounterMode`` on one
forward pass of one window. ``--profile`` adds torch.profiler's operators of one batch.
``--compare_naive`` adds the earlier comparison over every window of the audio, short ones
included: batched against the original code's path (one window per forward pass, all
layers), with the largest difference between their features. Results are written as JSON
(``--out``).
"""

import dataclasses
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import arguments  # noqa: E402
import layer_features  # noqa: E402
import machine  # noqa: E402
import processes  # noqa: E402
import run_utils  # noqa: E402
import speech_models  # noqa: E402
from alignment_analyses import DEFAULT_LAYERS  # noqa: E402
from arguments import flag  # noqa: E402

CONTEXT_S, CHUNK_S = 16.0, 0.1  # the paper's windows


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The benchmark's flags."""

    family: str = flag("wav2vec2", choices=machine.FAMILIES,
                       help="encoder family (base size, random weights)")
    device: str = flag("cpu", choices=("cpu", "cuda"), help="where the model runs")
    precision: str | None = flag(None, choices=("fp32", "bf16"),
                                 help="autocast dtype (default: fp32 on cpu, bf16 on cuda)")
    seconds: float = flag(19.2, help="audio length; the windows ending after 16.1 s are the full "
                                     "ones timed (19.2 s: 32 windows)")
    layers: list[int] | None = flag(None, help="hidden-state indices to extract (default: the "
                                               f"evaluator's, {' '.join(map(str, DEFAULT_LAYERS))}"
                                               ", up to the model's depth)")
    batch_size: int = flag(16, help="windows per forward pass")
    compare_naive: bool = flag(False, help="also time every window of the audio batched and one "
                                           "per pass")
    profile: bool = flag(False, help="also print torch.profiler's operators of one batch's "
                                     "forward pass")
    seed: int = flag(0, help="random seed")
    out: str = flag("outputs/bench_features.json", help="JSON results")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=__doc__.splitlines()[0])


def base_model(family):
    """A base-size encoder with random weights and its preprocessor (Whisper's decoder is
    unused: one layer of it)."""
    overrides = {"decoder_layers": 1} if family == "whisper" else {}
    return machine.base_backbone(family, **overrides), machine.base_preprocessor(family)


def layers_run(backbone, layers):
    """Encoder layers a forward pass for ``layers`` runs: one past the highest requested, at
    most all (as ``layer_features.layer_hidden_states``)."""
    return min(max(layers) + 1, speech_models.num_layers(backbone))


def conv_frames(length, kernel, stride, padding=0):
    """Output length of a 1-D convolution."""
    return (length + 2 * padding - kernel) // stride + 1


def widths(config, family):
    """(hidden size, MLP width) of the encoder layers."""
    if family == "whisper":
        return config.d_model, config.encoder_ffn_dim
    return config.hidden_size, config.intermediate_size


def window_flops(config, family, n_samples, n_layers):
    """FLOPs (a multiply-add counted as 2) of one window's forward pass, from the config: (dict
    part -> FLOPs, encoder frames). Norms, activations, softmax and additions are left out."""
    parts = {}
    d, ffn = widths(config, family)
    if family == "whisper":
        frames = config.max_source_positions  # every input is 30 s: 3000 mel frames -> 1500
        mel = 2 * frames
        parts["conv1d x2"] = (2 * mel * 3 * config.num_mel_bins * d
                              + 2 * frames * 3 * d * d)
    else:
        frames, channels, cnn = n_samples, 1, 0
        for dim, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
            frames = conv_frames(frames, kernel, stride)
            cnn += 2 * frames * kernel * channels * dim
            channels = dim
        parts["CNN feature encoder"] = cnn
        parts["feature projection"] = 2 * frames * channels * d
        kernel, groups = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups
        parts["positional conv"] = (2 * conv_frames(frames, kernel, 1, kernel // 2) * kernel
                                    * (d // groups) * d)
    parts["attention projections"] = n_layers * 4 * frames * d * d * 2
    parts["attention scores"] = n_layers * 2 * frames * frames * d * 2
    parts["MLP"] = n_layers * 2 * frames * d * ffn * 2
    return parts, frames


def flops_by_kind(parts):
    """``window_flops``' parts summed as ``counted_flops`` groups them."""
    kinds = {"CNN feature encoder": "convolution", "positional conv": "convolution",
             "conv1d x2": "convolution", "feature projection": "linear",
             "attention projections": "linear", "MLP": "linear", "attention scores": "attention"}
    totals = {}
    for part, flops in parts.items():
        totals[kinds[part]] = totals.get(kinds[part], 0) + flops
    return totals


def counted_flops(backbone, family, inputs, layers):
    """FLOPs ``FlopCounterMode`` counts in one forward pass of ``inputs`` for ``layers``, by
    kind: convolution, linear (mm, addmm) and attention (bmm, baddbmm).

    The pass uses eager attention: torch's counter has no formula for the CPU's SDPA kernel
    (``_scaled_dot_product_flash_attention_for_cpu``), so under SDPA it would miss the
    attention scores and weighted sum; eager attention computes the same products as bmm.
    The parameters are frozen for the pass: the counter's module tracker hooks the gradient of
    any input that requires one, which fails in inference mode on wav2vec2's weight-normed
    positional conv.
    """
    kinds = {"convolution": "convolution", "mm": "linear", "addmm": "linear",
             "bmm": "attention", "baddbmm": "attention"}
    original = backbone.config._attn_implementation
    # older transformers cannot switch: there the CPU's SDPA attention goes uncounted
    switch = getattr(backbone, "set_attn_implementation", lambda implementation: None)
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    switch("eager")
    backbone.requires_grad_(False)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            layer_features.hidden_states_at(backbone, family, inputs, layers, -1)
    finally:
        switch(original)
        for parameter in trainable:
            parameter.requires_grad_(True)
    counts = {}
    for op, flops in counter.get_flop_counts()["Global"].items():
        kind = kinds.get(str(op).split(".")[-1], str(op))
        counts[kind] = counts.get(kind, 0) + int(flops)
    return counts


@contextmanager
def full_windows_only(window):
    """Inside the block ``sliding_window_features`` keeps only the windows of ``window``
    samples (those ending at or after it)."""
    all_ends = layer_features.window_ends

    def full_ends(n_samples, chunk):
        ends = all_ends(n_samples, chunk)
        return ends[ends >= window]

    with mock.patch.object(layer_features, "window_ends", full_ends):
        yield


def time_extraction(backbone, preprocessor, audio, layers, batch_size, device, dtype,
                    naive=False):
    """(seconds, features, window count, (windows, seconds) of each batch) of one
    ``sliding_window_features`` run."""
    batches = []
    last = [time.perf_counter()]

    def on_batch(count):  # the features are on the CPU by now: no pending GPU work
        now = time.perf_counter()
        batches.append((count, now - last[0]))
        last[0] = now

    began = last[0] = time.perf_counter()
    features, times = layer_features.sliding_window_features(
        backbone, preprocessor, audio, layers, CONTEXT_S, CHUNK_S, batch_size=batch_size,
        device=device, dtype=dtype, naive=naive, on_batch=on_batch)
    return time.perf_counter() - began, features, len(times), batches


def profile_table(backbone, family, inputs, layers, device, dtype, rows=20):
    """torch.profiler's table of one forward pass of ``inputs``: the ``rows`` operators (by
    input shapes) with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with torch.inference_mode(), profile(activities=activities, record_shapes=True) as profiler:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            layer_features.hidden_states_at(backbone, family, inputs, layers, -1)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=rows)


def compare_naive(backbone, preprocessor, audio, layers, batch_size, device, dtype):
    """Every window of the audio, batched with the needed layers against one window per pass
    with all layers (the original code): dict of their seconds, windows/s, speed-up and the
    largest feature difference."""
    runs = {}
    for name, naive in (("batched", False), ("naive", True)):
        # the original ran every layer: keep all of them for the naive path
        keep_all = (mock.patch.object(layer_features, "first_layers",
                                      lambda backbone, count: nullcontext())
                    if naive else nullcontext())
        with keep_all:
            seconds, features, windows, _ = time_extraction(
                backbone, preprocessor, audio, layers, batch_size, device, dtype, naive)
        runs[name] = (seconds, features, windows)
    (ours_s, ours, windows), (naive_s, naive, _) = runs["batched"], runs["naive"]
    return dict(windows=windows, batched_seconds=ours_s, naive_seconds=naive_s,
                batched_windows_per_s=windows / ours_s, naive_windows_per_s=windows / naive_s,
                speedup=naive_s / ours_s,
                max_abs_difference=max(float(np.abs(ours[layer] - naive[layer]).max())
                                       for layer in layers))


def gemm_rates(m, k, n, precision, dtype, device, seed):
    """The machine's GEMM rate on an (m, k) @ (k, n) product in the run's dtype: torch's, and on
    the CPU in fp32 also numpy's; GFLOP/s by name."""
    gemm = {f"torch {precision}": machine.torch_gemm_rate(m, k, n, dtype or torch.float32, device)}
    if device.type == "cpu" and dtype is None:
        numpy_rate, setting, _ = machine.gemm_rate(m, k, [n], np.float32, seed)
        gemm[f"numpy float32 ({setting})"] = numpy_rate
    return gemm


def full_window_result(seconds, windows, batches, parts, frames, gemm, counted):
    """The results of the timed run over the full windows: windows/s, over the run and of its
    fastest full batch (the figure least slowed by other processes), GFLOP/s and fractions of
    the GEMM rate, and the FLOP counts."""
    flops = sum(parts.values())
    gemm_best = max(gemm.values())
    achieved = flops * windows / seconds / 1e9
    full = max(count for count, _ in batches)
    best = max(count / batch_s for count, batch_s in batches if count == full)
    return dict(windows=windows, frames=frames, seconds=seconds,
                windows_per_s=windows / seconds, batch_windows=[c for c, _ in batches],
                batch_seconds=[s for _, s in batches], best_batch_windows_per_s=best,
                best_batch_gflops=flops * best / 1e9,
                best_batch_gemm_fraction=flops * best / 1e9 / gemm_best,
                gflop_per_window=flops / 1e9,
                gflop_per_window_parts={part: value / 1e9 for part, value in parts.items()},
                gflops=achieved, gemm_gflops=gemm, gemm_fraction=achieved / gemm_best,
                flop_counter_gflop=sum(counted.values()) / 1e9,
                flop_counter_gflop_by_kind={kind: value / 1e9 for kind, value in counted.items()})


def print_results(settings, result, parts, counted, profile, naive):
    """The run's figures, the FLOP check and the optional profile and naive comparison."""
    flops = sum(parts.values())
    gemm = result["gemm_gflops"]
    m, k, n = result["gemm_shape"]
    batches = list(zip(result["batch_windows"], result["batch_seconds"]))
    print(f"\nfull {result['window_s']:.1f} s windows ({result['frames']} encoder frames), "
          f"batches of {settings.batch_size}: {result['windows']} windows in "
          f"{result['seconds']:.1f} s")
    print(f"{'windows/s':<28}{result['windows_per_s']:>10.3f}")
    print(f"{'GFLOP per window':<28}{result['gflop_per_window']:>10.1f}   (" + ", ".join(
        f"{part} {value:.1f}" for part, value in result["gflop_per_window_parts"].items()) + ")")
    print(f"{'achieved GFLOP/s':<28}{result['gflops']:>10.1f}")
    print(f"{'GEMM rate GFLOP/s':<28}{max(gemm.values()):>10.1f}   (({m}, {k}) @ ({k}, {n}): "
          + ", ".join(f"{name} {value:.1f}" for name, value in gemm.items()) + ")")
    print(f"{'fraction of GEMM rate':<28}{result['gemm_fraction']:>10.2f}")
    print(f"{'fastest batch':<28}{result['best_batch_windows_per_s']:>10.3f}   windows/s, "
          f"{result['best_batch_gflops']:.1f} GFLOP/s, {result['best_batch_gemm_fraction']:.2f} "
          "of the GEMM rate (batches: "
          + ", ".join(f"{count} in {batch_s:.1f} s" for count, batch_s in batches) + ")")
    print(f"\nFLOP check, one window: ours {flops / 1e9:.2f} GFLOP, FlopCounterMode "
          f"{result['flop_counter_gflop']:.2f} GFLOP (eager attention), "
          f"{(flops / 1e9 / result['flop_counter_gflop'] - 1) * 100:+.2f}%; by kind (ours / "
          "counted): " + ", ".join(f"{kind} {value / 1e9:.2f} / {counted.get(kind, 0) / 1e9:.2f}"
                                   for kind, value in flops_by_kind(parts).items()))
    if profile:
        print(f"\ntorch.profiler, one forward pass of {settings.batch_size} full windows (or all "
              f"there are):\n{profile}")
    if naive:
        print(f"\nevery window of {settings.seconds:g} s ({naive['windows']}, short ones "
              f"included): batched {naive['batched_windows_per_s']:.2f} windows/s, one window "
              f"per pass over all layers {naive['naive_windows_per_s']:.2f} windows/s, batched "
              f"faster by {naive['speedup']:.1f}x; max |difference| "
              f"{naive['max_abs_difference']:.2e}")


def last_batch_profile(backbone, preprocessor, audio, settings, layers, device, dtype):
    """torch.profiler's table of the last batch of full windows."""
    rate = preprocessor.sampling_rate
    chunk = int(round(CHUNK_S * rate))
    window = int(round(CONTEXT_S * rate)) + chunk
    ends = layer_features.window_ends(len(audio), chunk)
    batch = preprocessor([audio[end - window:end]
                          for end in ends[ends >= window][-settings.batch_size:]])
    return profile_table(backbone, settings.family, torch.from_numpy(batch).to(device), layers,
                         device, dtype)


def main(argv=None):
    settings = parse_args(argv)
    device = processes.resolve_device(settings.device)
    precision = settings.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = processes.autocast_dtype(precision, device)
    torch.manual_seed(settings.seed)
    backbone, preprocessor = base_model(settings.family)
    backbone.to(device).eval()
    depth = speech_models.num_layers(backbone)
    layers = run_utils.choose_layers(settings.layers, depth, DEFAULT_LAYERS)
    rate = preprocessor.sampling_rate
    chunk = int(round(CHUNK_S * rate))
    window = int(round(CONTEXT_S * rate)) + chunk
    audio = np.random.default_rng(settings.seed).standard_normal(
        int(round(settings.seconds * rate))).astype(np.float32)
    if len(audio) < window:
        raise SystemExit(f"--seconds {settings.seconds}: shorter than one full window "
                         f"({window / rate} s)")
    n_layers = layers_run(backbone, layers)
    parts, frames = window_flops(backbone.config, settings.family, window, n_layers)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{machine.cpu_name()}, {os.cpu_count()} cpus")
    encoder = backbone.encoder if settings.family == "whisper" else backbone
    load_before = os.getloadavg()
    print(f"{settings.family} base ({sum(p.numel() for p in encoder.parameters()) / 1e6:.1f}M "
          f"encoder parameters, attention {backbone.config._attn_implementation}), layers "
          f"{layers} ({n_layers} of {depth} run), {precision} on {device}; {where}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; load average "
          f"{load_before[0]:.2f} (other processes slow every number)")

    # the FLOP check: one window through FlopCounterMode (also the warm-up of the CPU path)
    inputs = torch.from_numpy(preprocessor(audio[None, :window])).to(device)
    counted = counted_flops(backbone, settings.family, inputs, layers)
    if device.type == "cuda":  # warm-up at the timed batch shape
        with full_windows_only(window):
            time_extraction(backbone, preprocessor,
                            audio[:window + (settings.batch_size - 1) * chunk], layers,
                            settings.batch_size, device, dtype)
    # the machine's GEMM rate on the MLP's product at the batch's shape, in the run's dtype
    m, (k, n) = settings.batch_size * frames, widths(backbone.config, settings.family)
    gemm = gemm_rates(m, k, n, precision, dtype, device, settings.seed)
    with full_windows_only(window):
        seconds, _, windows, batches = time_extraction(
            backbone, preprocessor, audio, layers, settings.batch_size, device, dtype)
    result = dict(window_s=window / rate, gemm_shape=[m, k, n],
                  **full_window_result(seconds, windows, batches, parts, frames, gemm, counted))
    profile = (last_batch_profile(backbone, preprocessor, audio, settings, layers, device, dtype)
               if settings.profile else None)
    naive = (compare_naive(backbone, preprocessor, audio, layers, settings.batch_size, device,
                           dtype) if settings.compare_naive else None)
    load_after = os.getloadavg()
    print_results(settings, result, parts, counted, profile, naive)
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    results = dict(args=arguments.as_dict(settings), family=settings.family, device=str(device),
                   machine=where, precision=precision, torch=torch.__version__,
                   threads=torch.get_num_threads(),
                   attn_implementation=backbone.config._attn_implementation, layers=layers,
                   layers_run=n_layers, load_average_before=load_before,
                   load_average_after=load_after, full_windows=result, compare_naive=naive)
    run_utils.write_json(settings.out, results, overwrite=True)
    print(f"results: {settings.out}")


if __name__ == "__main__":
    main()
