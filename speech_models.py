"""Pretrained speech encoders: loading a checkpoint, its family and preprocessing, its layers.

The family is read from the checkpoint's ``config.json`` (``model_type``), never guessed from
its name. wav2vec2-like encoders (wav2vec2, HuBERT, WavLM, data2vec-audio) take normalised
raw audio; Whisper takes log-mel features of 30 s (the audio zero-padded) and only its
encoder is used. Audio preprocessing happens once in the data pipeline (``AudioPreprocessor``,
``training_data.Collate``), never inside ``forward``. ``tiny_config`` and ``save_tiny_model``
make small random-weight checkpoints for tests and the demo (``make_tiny.py``).
"""

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
from pathlib import Path

import numpy as np

import run_utils
from audio_io import SAMPLING_RATE

# loaded on first use, so that --help and argument errors appear at once
torch = run_utils.LazyModule("torch")
transformers = run_utils.LazyModule("transformers")
huggingface_hub = run_utils.LazyModule("huggingface_hub")
safetensors = run_utils.LazyModule("safetensors")

logger = logging.getLogger(__name__)

WAV2VEC2_LIKE = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer")
WHISPER = ("whisper",)
SUPPORTED = WAV2VEC2_LIKE + WHISPER
WHISPER_MAX_SECONDS = 30  # the Whisper encoder takes at most this much audio


class ModelError(run_utils.UserError, ValueError):
    """A checkpoint that cannot be used as a speech encoder; the message says why."""


def model_family(config):
    """``"wav2vec2"`` for wav2vec2-like encoders, ``"whisper"`` for Whisper."""
    model_type = getattr(config, "model_type", None)
    if model_type in WAV2VEC2_LIKE:
        return "wav2vec2"
    if model_type in WHISPER:
        return "whisper"
    raise ModelError(f"model_type {model_type!r} is not a supported audio encoder (supported: "
                     f"{', '.join(SUPPORTED)})")


def read_config(name_or_path, example="a checkpoint folder or a hub id such as "
                                      "facebook/wav2vec2-base"):
    """Any checkpoint's ``AutoConfig``, with one-line errors (ModelError) for a missing folder
    or config; ``example``: what to give instead, for the message."""
    looks_local = str(name_or_path).startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not (Path(name_or_path).expanduser() / "config.json").is_file():
        raise ModelError(f"{name_or_path}: no such model directory (or no config.json in it); "
                         f"give {example}")
    try:
        return transformers.AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelError(f"{name_or_path}: cannot load a model config ({str(err).splitlines()[0]}); "
                         "give a checkpoint folder or a hub id that is available offline") from None


def load_config(name_or_path):
    """The checkpoint's config, with one-line errors for missing or non-audio checkpoints."""
    config = read_config(name_or_path)
    model_family(config)
    return config


def _silent_bar(factory, args, kwargs):
    return factory(*args, **{**kwargs, "disable": True})


@contextlib.contextmanager
def quiet_transformers():
    """Inside the block transformers draws none of its own progress bars ("Loading weights",
    "Writing model shards"), which would break up ours; the hub's download bars stay."""
    previous = transformers.utils.logging.set_tqdm_hook(_silent_bar)
    try:
        yield
    finally:
        transformers.utils.logging.set_tqdm_hook(previous)


def load_backbone(name_or_path):
    """Pretrained encoder (``AutoModel``; the whole ``WhisperModel`` for Whisper) and its family.

    A folder without weights, or with a truncated or damaged weights file, is a ``ModelError``.
    """
    config = load_config(name_or_path)
    try:
        with quiet_transformers():
            backbone = transformers.AutoModel.from_pretrained(name_or_path, config=config)
    except torch.OutOfMemoryError:
        raise
    except (OSError, safetensors.SafetensorError, RuntimeError, EOFError) as err:
        # OSError: no weights file; SafetensorError / RuntimeError (torch's zip reader) /
        # EOFError: a truncated or damaged one
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        fix = ("the folder needs the weights saved beside config.json (model.safetensors or "
               "pytorch_model.bin, whole): copy or save the checkpoint again"
               if Path(name_or_path).expanduser().is_dir() else
               "give a checkpoint folder or a hub id whose weights are available offline")
        raise ModelError(f"{name_or_path}: cannot load the model weights ({reason}); "
                         f"{fix}") from None
    return backbone, model_family(config)


@dataclasses.dataclass
class Encoder:
    """A loaded speech encoder and what every script needs beside it."""

    backbone: "torch.nn.Module"  # ``AutoModel`` (the whole ``WhisperModel`` for Whisper)
    family: str  # "wav2vec2" (wav2vec2-like) or "whisper"
    preprocessor: "AudioPreprocessor"
    depth: int  # transformer layers: hidden-state indices run 0..depth

    @functools.cached_property
    def fingerprint(self):
        """SHA-256 of the weights and config (``fingerprint``), computed on first use."""
        return fingerprint(self.backbone)


def checked_models(settings, layers=None):
    """The (label, checkpoint) pairs the ``arguments.ModelFlags`` name
    (``run_utils.models_to_evaluate``), each loaded once here, and ``layers`` checked against
    its depth, so that a broken checkpoint or a layer it lacks stops the run before any
    extraction."""
    models = run_utils.models_to_evaluate(settings.model_name, settings.model_path,
                                          settings.logs_dir, settings.epochs,
                                          settings.skip_pretrained)
    for _, checkpoint in models:
        run_utils.choose_layers(layers, load_encoder(checkpoint).depth)
    return models


def load_encoder(name_or_path, device=None):
    """A checkpoint as an ``Encoder``: backbone (moved to ``device`` if given), family,
    preprocessor (the saved feature extractor or the family's default) and depth."""
    backbone, family = load_backbone(name_or_path)
    preprocessor = AudioPreprocessor(load_feature_extractor(name_or_path, family), family)
    if device is not None:
        backbone.to(device)
    return Encoder(backbone, family, preprocessor, num_layers(backbone))


def default_feature_extractor(family):
    """The standard feature extractor of a family (wav2vec2-like: normalised raw audio)."""
    if family == "whisper":
        return transformers.WhisperFeatureExtractor()
    return transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)


def load_feature_extractor(name_or_path, family):
    """The checkpoint's feature extractor, or the family's default when none was saved."""
    saved = Path(name_or_path).expanduser() / "preprocessor_config.json"
    try:
        return transformers.AutoFeatureExtractor.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        if saved.is_file():
            raise ModelError(f"{saved}: unreadable feature-extractor settings "
                             f"({str(err).splitlines()[0]}); save the checkpoint's feature "
                             "extractor again, or delete the file to use the family's "
                             "default") from None
        logger.warning("%s has no preprocessor_config.json: using the default %s feature extractor",
                       name_or_path, family)
        return default_feature_extractor(family)


def has_file(name_or_path, filename):
    """Whether a checkpoint (a folder, or a hub id in the offline HF cache) holds ``filename``."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return (folder / filename).is_file()
    return isinstance(huggingface_hub.try_to_load_from_cache(str(name_or_path), filename), str)


def load_base_files(name_or_path):
    """What a checkpoint holds beside its weights and feature extractor that a user of its tuned
    encoder needs, each loaded where it has one: its generation config and its processor (else
    its tokenizer alone; e.g. Whisper's, or a CTC model's vocabulary). Saved with every tuned
    checkpoint (``save_pretrained``), so that a tuned Whisper still transcribes. An unreadable
    one is a ``ModelError``."""
    loaders = (("generation_config.json", transformers.GenerationConfig),
               ("processor_config.json", transformers.AutoProcessor))
    files = [(name, loader) for name, loader in loaders if has_file(name_or_path, name)]
    tokenizer = next((name for name in ("tokenizer_config.json", "tokenizer.json")
                      if has_file(name_or_path, name)), None)
    if tokenizer is None:
        logger.info("%s has no tokenizer: its tuned checkpoints hold none", name_or_path)
    elif not has_file(name_or_path, "processor_config.json"):
        files.append((tokenizer, transformers.AutoTokenizer))
    try:
        return [loader.from_pretrained(name_or_path) for _, loader in files]
    except (OSError, ValueError) as err:
        raise ModelError(f"{name_or_path}: cannot read its {' or '.join(n for n, _ in files)} "
                         f"({str(err).splitlines()[0]}); save the checkpoint's tokenizer and "
                         "generation config again, or delete the damaged file") from None


class AudioPreprocessor:
    """Turns raw 16 kHz audio windows into model inputs, as the feature extractor would.

    wav2vec2-like: zero-mean unit-variance per window when the extractor normalises (as
    ``Wav2Vec2FeatureExtractor``), else the raw audio. Whisper: log-mel features of the window
    zero-padded to 30 s, from the checkpoint's ``WhisperFeatureExtractor``.
    """

    def __init__(self, feature_extractor, family):
        self.feature_extractor = feature_extractor
        self.family = family
        self.sampling_rate = getattr(feature_extractor, "sampling_rate", SAMPLING_RATE)

    def __call__(self, windows):
        """windows: (n, samples) float32 -> float32 (n, samples) or (n, mel bins, frames).
        Whisper pads every window to 30 s, so its windows may also be a list of 1-D arrays of
        different lengths."""
        if self.family == "whisper":
            windows = [np.asarray(window, dtype=np.float32) for window in windows]
            return self.feature_extractor(windows, sampling_rate=self.sampling_rate,
                                          return_tensors="np").input_features.astype(np.float32)
        windows = np.asarray(windows, dtype=np.float32)
        if getattr(self.feature_extractor, "do_normalize", False):
            mean = windows.mean(axis=-1, keepdims=True)
            var = windows.var(axis=-1, keepdims=True)
            return (windows - mean) / np.sqrt(var + 1e-7)
        return windows

    def digest(self):
        """SHA-256 of the feature extractor's settings, to key cached features."""
        return hashlib.sha256(self.feature_extractor.to_json_string().encode()).hexdigest()

    def whisper_frames(self, n_samples):
        """Encoder frames of a Whisper input that come from ``n_samples`` of real audio."""
        return max(1, math.ceil((n_samples // self.feature_extractor.hop_length) / 2))



# A wider variant for the synthetic demo. Wav2vec2-like: one 25 ms / 20 ms convolution of 128
# channels with per-frame layer norm, whose random filters already tell the synthetic phones
# apart (the default 3-layer, 32-channel CNN does much worse, and the CNN stays frozen in
# brain-tuning; its group norm over time also removes the loudness and the mix of sounds that a
# window holds), and a 64-wide transformer.
DEMO_SIZE = {"wav2vec2": dict(conv_dim=(128,), conv_kernel=(400,), conv_stride=(320,),
                              feat_extract_norm="layer", hidden_size=64, num_attention_heads=4,
                              intermediate_size=128),
             "whisper": dict(d_model=64, encoder_attention_heads=4, encoder_ffn_dim=128)}


def tiny_config(family, **overrides):
    """A small random-weight config of a family, for tests and the synthetic demo."""
    from transformers import (Data2VecAudioConfig, HubertConfig, Wav2Vec2Config, WavLMConfig,
                              WhisperConfig)

    if family == "whisper":
        settings = dict(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        num_mel_bins=80, vocab_size=64, max_source_positions=1500,
                        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=1)
        settings.update(overrides)
        return WhisperConfig(**settings)
    classes = {"wav2vec2": Wav2Vec2Config, "hubert": HubertConfig, "wavlm": WavLMConfig,
               "data2vec-audio": Data2VecAudioConfig}
    # attention_dropout 0: on the CPU, attention with dropout leaves the fused kernel for one
    # about 20x slower, which made it most of a CPU training step
    settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, conv_dim=(32, 32, 32), conv_stride=(10, 8, 4),
                    conv_kernel=(10, 8, 4), num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=2, num_buckets=16, max_bucket_distance=64,
                    attention_dropout=0.0)
    settings.update(overrides)
    return classes[family](**settings)


# ----------------------------------------------------------------------------- layer features

def num_layers(backbone):
    """Transformer layers of the encoder (hidden-state indices run 0..num_layers)."""
    return len(backbone.encoder.layers)


def hidden_size(backbone):
    """Width of the encoder's hidden states."""
    config = backbone.config
    return config.d_model if config.model_type == "whisper" else config.hidden_size



def backbone_family(backbone):
    """Family of a loaded transformers model."""
    return model_family(backbone.config)


def fingerprint(backbone):
    """SHA-256 of a model's weights and config, to key cached features."""
    digest = hashlib.sha256(backbone.config.to_json_string().encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                      .tobytes())
    return digest.hexdigest()


def save_tiny_model(out, family, seed=0, size="tiny"):
    """Write a tiny random-weight checkpoint (model and feature extractor) to ``out``;
    ``size="demo"`` gives the wider variant ``DEMO_SIZE``."""
    torch.manual_seed(seed)
    kind = "whisper" if family == "whisper" else "wav2vec2"
    overrides = {} if size == "tiny" else DEMO_SIZE[kind]
    with quiet_transformers():
        transformers.AutoModel.from_config(tiny_config(family, **overrides)).save_pretrained(out)
    default_feature_extractor(kind).save_pretrained(out)

