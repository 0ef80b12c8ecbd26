"""Benchmark: brain-alignment feature extraction, batched (ours) against one window per pass.

    python benchmarks/bench_features.py --family wav2vec2 --seconds 20

Slides the paper's windows (16 s context + 0.1 s chunk, 0.1 s steps) over random audio with
a base-size encoder (random init from the family's default config, no download), through
``speech_models.sliding_window_features``: batched, computing only the layers needed, and the
naive reference path of the original code (one window per forward pass, all layers). Prints
windows per second of both, the ratio, and the largest difference between their features.
"""

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import speech_models  # noqa: E402


def base_model(family):
    """A base-size encoder with random weights and its preprocessor."""
    from transformers import (AutoModel, HubertConfig, Wav2Vec2Config,
                              Wav2Vec2FeatureExtractor, WhisperConfig, WhisperFeatureExtractor)

    configs = {"wav2vec2": Wav2Vec2Config, "hubert": HubertConfig,
               "whisper": lambda: WhisperConfig(d_model=512, encoder_layers=6, decoder_layers=1,
                                                encoder_attention_heads=8, encoder_ffn_dim=2048)}
    backbone = AutoModel.from_config(configs[family]())
    extractor = WhisperFeatureExtractor() if family == "whisper" else Wav2Vec2FeatureExtractor()
    return backbone, speech_models.AudioPreprocessor(extractor, family)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("wav2vec2", "hubert", "whisper"), default="wav2vec2")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="audio length; the first 16 s give the short windows")
    parser.add_argument("--layers", nargs="+", type=int, default=[2, 5, 7],
                        help="hidden-state indices to extract")
    parser.add_argument("--batch_size", type=int, default=16, help="windows per forward (ours)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    backbone, preprocessor = base_model(args.family)
    audio = np.random.default_rng(0).standard_normal(int(args.seconds * 16000)).astype(np.float32)
    print(f"{args.family} base ({sum(p.numel() for p in backbone.parameters()) / 1e6:.1f}M "
          f"parameters), {args.seconds:.0f} s of audio, layers {args.layers}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    runs = {}
    for name, naive in (("ours (batched, needed layers)", False), ("naive (one window, all layers)", True)):
        # the original ran every layer: keep all of them for the naive path
        keep_all = mock.patch.object(speech_models, "first_layers",
                                     lambda backbone, count: nullcontext()) if naive else nullcontext()
        began = time.perf_counter()
        with keep_all:
            features, times = speech_models.sliding_window_features(
                backbone, preprocessor, audio, args.layers, batch_size=args.batch_size, naive=naive)
        runs[name] = (time.perf_counter() - began, features, len(times))
    (ours_s, ours, windows), (naive_s, naive, _) = runs.values()
    print(f"{'method':<34}{'seconds':>9}{'windows/s':>11}")
    for name, (seconds, _, count) in runs.items():
        print(f"{name:<34}{seconds:>9.1f}{count / seconds:>11.2f}")
    difference = max(float(np.abs(ours[layer] - naive[layer]).max()) for layer in args.layers)
    print(f"ours faster by {naive_s / ours_s:.1f}x over {windows} windows; "
          f"max |difference| {difference:.2e}")


if __name__ == "__main__":
    main()
