"""Training-step throughput of brain-tuning, and the share of it spent in the data pipeline.

    python benchmarks/bench_training.py --family wav2vec2 --batch_size 2 --steps 3

A base-size encoder (random init from the family's default config, so nothing is downloaded)
is trained for a few steps on synthetic stories through the trainer's own data path, the
training data pipeline of ``training_data`` (``TRWindowDataset``, ``Collate(AudioPreprocessor)``,
``epoch_batches``), with each step split into the wait for the DataLoader batch and forward +
backward + optimiser step. The peer is the original code's design: the loader yields raw audio
and the model calls the HF feature extractor inside ``forward`` on every batch. Both run in
this process on the same weights, batches and random draws, their steps interleaved (in
alternating order) so that a change in machine load hits both alike.
Run on demand; not part of the test suite.
"""

import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import arguments  # noqa: E402
import brain_model  # noqa: E402
import data_utils  # noqa: E402
import machine  # noqa: E402
import run_utils  # noqa: E402
import speech_models  # noqa: E402
from arguments import flag  # noqa: E402
from audio_io import SAMPLING_RATE  # noqa: E402
from training_data import Collate, TRWindowDataset, epoch_batches  # noqa: E402


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The benchmark's flags."""

    family: str = flag("wav2vec2", choices=machine.FAMILIES,
                       help="encoder family (base size, random weights)")
    batch_size: int = flag(2, help="samples per training step")
    steps: int = flag(3, help="timed steps per method")
    warmup: int = flag(1, help="untimed steps per method first")
    voxels: int = flag(1000, help="outputs of the linear head")
    stories: int = flag(2, help="synthetic stories")
    minutes: float = flag(3.0, help="audio per story")
    num_workers: int = flag(0, help="DataLoader worker processes")
    extract_repeats: int = flag(5, help="repeats of the isolated feature-extraction timing "
                                        "(median)")
    device: str = flag("cpu", help="cpu or cuda[:N]")
    seed: int = flag(0, help="random seed")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=__doc__.split("\n")[0])


def synthetic_stories(n_stories, minutes, n_outputs, rng):
    """Random audio, TR window bounds from ``data_utils.Dataset.window_bounds`` and random
    targets.

    Each story gets a ``respdict.json`` entry whose simulated TR grid ends with the audio, so
    the bounds are those the trainer would compute (10 s windows every 2 s).
    """
    seconds = int(minutes * 60)
    names = [f"story{i}" for i in range(n_stories)]
    audio, bounds, targets = {}, {}, {}
    with tempfile.TemporaryDirectory() as data_dir:
        respdict = {name: seconds // 2 + 15 for name in names}
        run_utils.write_json(Path(data_dir) / "derivative" / "respdict.json", respdict)
        dataset = data_utils.Dataset(data_dir)
        for name in names:
            audio[name] = (0.1 * rng.standard_normal(seconds * SAMPLING_RATE)).astype(np.float32)
            starts, stops = dataset.window_bounds(name, SAMPLING_RATE)
            bounds[name] = (starts, int(stops[0] - starts[0]))
            targets[name] = rng.standard_normal((len(starts), n_outputs)).astype(np.float32)
    return audio, bounds, targets


def base_model(name, n_outputs, whisper_frames, seed):
    """Random-init base-size ``BrainTuningModel`` with the paper's freezing."""
    torch.manual_seed(seed)
    backbone = machine.base_backbone(name)
    model = brain_model.BrainTuningModel(backbone, speech_models.model_family(backbone.config),
                                           n_outputs, whisper_frames)
    model.freeze()
    return model


def raw_audio(windows):
    """The peer's "preprocessing": none, the loader yields the raw audio windows."""
    return windows


class ExtractInForward(nn.Module):
    """The original design: the HF feature extractor runs inside ``forward`` on every batch.

    The raw audio goes back to CPU numpy, one array per sample, through the extractor, and the
    result back to the model's device. ``extract_seconds`` records each extractor call.
    """

    def __init__(self, model, feature_extractor):
        super().__init__()
        self.model = model
        self.feature_extractor = feature_extractor
        self.extract_seconds = []

    def extract(self, audio):
        """(batch, samples) raw audio -> model inputs on the audio's device."""
        arrays = [a.numpy() for a in audio.detach().cpu()]
        features = self.feature_extractor(arrays, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        return features[self.feature_extractor.model_input_names[0]].to(audio.device)

    def forward(self, audio):
        began = time.perf_counter()
        inputs = self.extract(audio)
        self.extract_seconds.append(time.perf_counter() - began)
        return self.model(inputs)


class TimedTraining:
    """One method's model, optimiser and batch stream (the trainer's ``epoch_batches``).

    Each method keeps its own torch and numpy RNG states, both seeded alike, so interleaved
    steps of the two methods draw the same dropout, layer-drop and time masks.
    """

    def __init__(self, network, model, collate, train_set, args, device):
        self.network = network.to(device).train()
        self.device = device
        self.optimizer = torch.optim.Adam([
            {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": 5e-5},
            {"params": list(model.head.parameters()), "lr": 1e-4}])
        self.loader = epoch_batches([train_set], epoch=0, seed=args.seed,
                                    batch_size=args.batch_size, micro_batch_size=args.batch_size,
                                    collate=collate, num_workers=args.num_workers)
        self.batches = None
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        self.rng = (torch.get_rng_state(), np.random.get_state())

    def step(self):
        """One training step: (seconds waiting for the batch, seconds of forward+backward+step)."""
        torch.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])
        if self.batches is None:
            self.batches = iter(self.loader)
        began = time.perf_counter()
        micro_batches = next(self.batches)
        loaded = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for inputs, target, offset in micro_batches:
            inputs, target = inputs.to(self.device), target.to(self.device)
            output = self.network(inputs)
            loss = nn.functional.mse_loss(output[:, offset:offset + target.shape[1]], target)
            loss.backward()
        self.optimizer.step()
        machine.synchronize(self.device)
        done = time.perf_counter()
        self.rng = (torch.get_rng_state(), np.random.get_state())
        return loaded - began, done - loaded


def median_seconds(function, repeats):
    """Median wall time of ``function()`` over ``repeats`` calls (after one untimed call)."""
    function()
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def summarise(name, timings, batch_size, extract_in_forward):
    """A table row: samples/s, step, data-pipeline and in-forward extraction times (medians
    over the timed steps, robust to a step slowed by another process)."""
    data = statistics.median(t[0] for t in timings)
    steps = [t[0] + t[1] for t in timings]
    step = statistics.median(steps)
    return {"method": name, "samples/s": batch_size / step, "step ms": 1e3 * step,
            "step min-max ms": f"{1e3 * min(steps):.0f}-{1e3 * max(steps):.0f}",
            "data ms": 1e3 * data, "data %": 100 * data / step,
            "extract-in-forward ms": 1e3 * extract_in_forward,
            "outside model %": 100 * (data + extract_in_forward) / step}


def print_table(rows):
    columns = list(rows[0])
    cells = [[f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def main(argv=None):
    args = parse_args(argv)
    run_utils.setup_logging("WARNING")
    device = torch.device(args.device)
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, numpy {np.__version__}")
    print(f"device {device}, torch threads {torch.get_num_threads()} (interop "
          f"{torch.get_num_interop_threads()}), cpu cores {torch.multiprocessing.cpu_count()}, "
          f"{platform.processor() or platform.machine()}, load average "
          f"{os.getloadavg()[0]:.2f} (other processes slow both methods)")

    rng = np.random.default_rng(args.seed)
    audio, bounds, targets = synthetic_stories(args.stories, args.minutes, args.voxels, rng)
    train_set = TRWindowDataset(audio, bounds, targets)
    window_samples = next(iter(bounds.values()))[1]
    needed = (args.warmup + args.steps) * args.batch_size
    if len(train_set) < needed:
        sys.exit(f"{len(train_set)} windows but {needed} needed; raise --stories or --minutes")

    family = speech_models.model_family(machine.base_config(args.family))
    feature_extractor = speech_models.default_feature_extractor(family)
    preprocessor = speech_models.AudioPreprocessor(feature_extractor, family)
    frames = preprocessor.whisper_frames(window_samples) if family == "whisper" else None
    ours_collate, peer_collate = Collate(preprocessor), Collate(raw_audio)

    model = base_model(args.family, args.voxels, frames, args.seed)
    peer = ExtractInForward(base_model(args.family, args.voxels, frames, args.seed),
                            feature_extractor)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {args.family} base, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters ({trainable / 1e6:.1f}M trainable), head to {args.voxels} voxels; "
          f"data: {len(train_set)} windows of {window_samples / SAMPLING_RATE:g} s from "
          f"{args.stories} stories; batch {args.batch_size}, {args.warmup} warm-up + "
          f"{args.steps} timed steps, num_workers {args.num_workers}")

    runs = {"ours": TimedTraining(model, model, ours_collate, train_set, args, device),
            "peer": TimedTraining(peer, peer.model, peer_collate, train_set, args, device)}
    timings = {name: [] for name in runs}
    for step in range(args.warmup + args.steps):
        for name in list(runs)[::1 if step % 2 else -1]:
            seconds = runs[name].step()
            if step >= args.warmup:
                timings[name].append(seconds)
    peer_extract = statistics.median(peer.extract_seconds[args.warmup:])

    rows = [summarise("ours: preprocess in loader", timings["ours"], args.batch_size, 0.0),
            summarise("peer: extractor in forward", timings["peer"], args.batch_size,
                      peer_extract)]
    print()
    print_table(rows)
    print("data: waiting for the DataLoader batch (with --num_workers 0 it includes Collate's "
          "preprocessing); outside model: data + extractor inside forward")
    print(f"\nratio ours/peer samples/s: {rows[0]['samples/s'] / rows[1]['samples/s']:.3f}")

    items = [train_set[i] for i in range(args.batch_size)]
    raw = peer_collate(items)[0].to(device)
    ours_extract = median_seconds(lambda: ours_collate(items), args.extract_repeats)
    peer_extract_alone = median_seconds(lambda: peer.extract(raw), args.extract_repeats)
    print(f"feature extraction alone (isolated) per batch of {args.batch_size} (median of "
          f"{args.extract_repeats}): ours Collate {1e3 * ours_extract:.2f} ms, "
          f"peer extractor in forward {1e3 * peer_extract_alone:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
