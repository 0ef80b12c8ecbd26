"""What the benchmarks share: the machine they run on (CPU name, peak memory), timing, the
GEMM rates their achieved FLOP rates are compared with, and base-size random-init speech
encoders (nothing downloaded). A module, not a benchmark: import it, do not run it.

torch and transformers are imported inside the functions that need them, so that the
benchmarks of numpy code start without them.
"""

import math
import platform
import resource
import time
from contextlib import nullcontext

import numpy as np
from threadpoolctl import threadpool_limits

FAMILIES = ("wav2vec2", "hubert", "whisper")
# WhisperConfig() defaults to a tiny-size model; these are openai/whisper-base's dimensions.
WHISPER_BASE = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                    decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048)


# ----------------------------------------------------------------------------- the machine

def cpu_name():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mib():
    """This process's peak resident memory so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- timing

def synchronize(device):
    """Wait for ``device``'s pending work (a no-op off CUDA)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(work, device=None):
    """(wall seconds, result) of ``work()``, with ``device``'s work finished on both ends."""
    if device is not None:
        synchronize(device)
    began = time.perf_counter()
    result = work()
    if device is not None:
        synchronize(device)
    return time.perf_counter() - began, result


def best_seconds(work, repeats):
    """(the fastest wall seconds of ``repeats`` runs of ``work()``, the last result)."""
    best, result = math.inf, None
    for _ in range(repeats):
        began = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - began)
    return best, result


# ----------------------------------------------------------------------------- GEMM rates

def gemm_rate(m, k, widths, dtype, seed, min_seconds=0.3):
    """The machine's best GFLOP/s for numpy (m, k) @ (k, width) products in ``dtype``, over
    ``widths`` and over one and the default number of BLAS threads; the setting that gave it;
    and the rate of every setting."""
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


def torch_gemm_rate(m, k, n, dtype, device, min_seconds=0.3):
    """GFLOP/s of torch's (m, k) @ (k, n) in ``dtype`` on ``device`` (best of two timings)."""
    import torch

    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up
    synchronize(device)
    best = 0.0
    for _ in range(2):
        count, began = 0, time.perf_counter()
        while time.perf_counter() - began < min_seconds:
            torch.matmul(a, b, out=out)
            count += 1
        synchronize(device)
        best = max(best, 2.0 * m * k * n * count / (time.perf_counter() - began) / 1e9)
    return best


# ----------------------------------------------------------------------------- base-size models

def base_config(family, **overrides):
    """The family's base-size config (wav2vec2-base's, HuBERT-base's, whisper-base's)."""
    from transformers import HubertConfig, Wav2Vec2Config, WhisperConfig

    if family == "whisper":
        return WhisperConfig(**{**WHISPER_BASE, **overrides})
    return {"wav2vec2": Wav2Vec2Config, "hubert": HubertConfig}[family](**overrides)


def base_backbone(family, **overrides):
    """A base-size encoder (``AutoModel``; for Whisper the whole ``WhisperModel``) with random
    weights from torch's current seed."""
    from transformers import AutoModel

    return AutoModel.from_config(base_config(family, **overrides))


def base_preprocessor(family):
    """The family's default feature extractor as the toolkit's ``AudioPreprocessor``."""
    import speech_models

    return speech_models.AudioPreprocessor(speech_models.default_feature_extractor(family),
                                           family)


def save_base_model(family, path, **overrides):
    """A base-size random-init encoder saved in ``path`` with its feature extractor, a
    checkpoint folder the toolkit loads as it loads a downloaded one."""
    import speech_models

    base_backbone(family, **overrides).save_pretrained(path)
    speech_models.default_feature_extractor(family).save_pretrained(path)
