"""Hidden-state features of speech encoders: the layers of a forward pass, mean-pooled per
utterance (the probes) or the last frame of sliding windows over a story (brain alignment),
and a story's window features on its TR grid, cached (docs/method.md#features-for-brain-alignment).
"""

import contextlib
import dataclasses
import logging
import math
import time
from typing import NamedTuple

import numpy as np

import arguments
import eval_utils
import processes
import run_utils
from arguments import flag
from speech_models import WHISPER_MAX_SECONDS, ModelError, model_family, num_layers

# loaded on first use, so that --help and argument errors appear at once
torch = run_utils.LazyModule("torch")

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def first_layers(backbone, count):
    """Run only the first ``count`` encoder layers inside the block."""
    original = backbone.encoder.layers
    backbone.encoder.layers = torch.nn.ModuleList(list(original)[:count])
    try:
        yield
    finally:
        backbone.encoder.layers = original


def hidden_states_at(backbone, family, inputs, layers, frame):
    """Hidden states of ``layers`` at time frame ``frame`` (an int, or a (batch,) tensor: a
    frame per row): dict layer -> (batch, hidden).

    Index 0 is the encoder input, ``i`` the output of layer ``i``. Only the layers up to one
    past the highest requested one run: the extra layer keeps the requested index free of
    the final layer norm that some encoders apply after their last layer, so the values are
    those of the full model.
    """
    states = layer_hidden_states(backbone, family, inputs, layers)
    if torch.is_tensor(frame):  # a frame per batch row
        rows = torch.arange(len(frame), device=inputs.device)
        return {layer: hidden[rows, frame.to(inputs.device)] for layer, hidden in states.items()}
    return {layer: hidden[:, frame] for layer, hidden in states.items()}


def record_hidden_states(model):
    """Have ``model`` record the hidden states of all its layers from now on.

    transformers >= 5 records them through hooks that it installs at a model's first call
    asking for them, on the layers the model holds then: a first call inside ``first_layers``
    would leave the other layers unrecorded for the model's life. Earlier versions return the
    hidden states without hooks (nothing to do).
    """
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return
    maybe_install_capturing_hooks(model)


def layer_hidden_states(backbone, family, inputs, layers):
    """Hidden states of ``layers``: dict layer -> (batch, frames, hidden), see
    ``hidden_states_at``."""
    total = num_layers(backbone)
    encoder = backbone.encoder if family == "whisper" else backbone
    record_hidden_states(encoder)  # while every layer is in place
    with first_layers(backbone, min(max(layers) + 1, total)):
        hidden = encoder(inputs, output_hidden_states=True).hidden_states
    return {layer: hidden[layer] for layer in layers}


def _equal_length_batches(waveforms, batch_size):
    """Consecutive waveforms grouped into batches of equal length: lists of (index, waveform)."""
    batch = []
    for index, waveform in enumerate(waveforms):
        if batch and (len(batch) == batch_size or len(waveform) != len(batch[0][1])):
            yield batch
            batch = []
        batch.append((index, waveform))
    if batch:
        yield batch


def pooled_layer_features(backbone, preprocessor, waveforms, layers, batch_size=16,
                          device="cpu", dtype=None, progress=False, total=None):
    """Mean over time of each layer's hidden states, one row per utterance
    (docs/method.md#downstream-tasks).

    Consecutive utterances of equal length share a forward pass (no padding, so the values are
    those of one utterance at a time); Whisper means over the frames that hold real audio.

    Parameters
    ----------
    waveforms : iterable of (n_samples,) float32 at ``preprocessor.sampling_rate``, read lazily
    total : number of waveforms, for the progress bar

    Returns
    -------
    dict layer -> (n_utterances, hidden) float32.
    """
    family = model_family(backbone.config)
    limit = WHISPER_MAX_SECONDS * preprocessor.sampling_rate
    rows = {layer: [] for layer in layers}
    backbone.eval()
    with torch.inference_mode(), run_utils.progress(desc="utterances", unit="utt", total=total,
                                                    disable=not progress) as bar:
        for batch in _equal_length_batches(waveforms, batch_size):
            length = len(batch[0][1])
            if family == "whisper" and length > limit:
                raise ModelError(f"utterance {batch[0][0]} is {length / preprocessor.sampling_rate:.1f}"
                                 f" s long; the Whisper encoder takes at most "
                                 f"{WHISPER_MAX_SECONDS} s")
            inputs = torch.from_numpy(preprocessor(np.stack([w for _, w in batch]))).to(device)
            frames = preprocessor.whisper_frames(length) if family == "whisper" else None
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                states = layer_hidden_states(backbone, family, inputs, layers)
            for layer, hidden in states.items():
                rows[layer].append(hidden[:, :frames].float().mean(dim=1).cpu().numpy())
            bar.update(len(batch))
    if not rows[layers[0]]:
        raise ValueError("no waveforms to encode")
    return {layer: np.concatenate(values).astype(np.float32, copy=False)
            for layer, values in rows.items()}


WHISPER_FRAMES = ("ours", "authors")  # --whisper_frame; the first is the default


def whisper_window_frame(preprocessor, n_samples, rule="ours"):
    """The Whisper encoder frame that stands for a window of ``n_samples`` of real audio (the
    rest of the 30 s input is padding), by ``rule``
    (docs/method.md#where-our-defaults-differ-from-the-authors-code):

    - "ours": the last frame made only of real audio, ``whisper_frames(n_samples) - 1``
      (``m/2 - 1`` for ``m = n_samples // hop`` mel frames);
    - "authors": the last frame whose receptive field touches real audio, as the authors' code
      finds it: the feature extractor's attention mask (``ceil(n_samples / hop)`` mel frames)
      passed through ones-kernels of conv1 (kernel 3, stride 1, padding 1) and conv2 (kernel 3,
      stride 2, padding 1), its last nonzero output: ``(ceil(n_samples / hop) + 1) // 2``.
      One frame later than ours whenever ``n_samples`` is a whole number of hops (every
      window of a story, but a story's last when the story is shorter than a window).

    Never past the encoder's last frame."""
    if rule == "ours":
        return preprocessor.whisper_frames(n_samples) - 1
    if rule != "authors":
        raise ValueError(f"unknown Whisper frame rule {rule!r}; expected one of {WHISPER_FRAMES}")
    extractor = preprocessor.feature_extractor
    mel_frames = math.ceil(n_samples / extractor.hop_length)
    return min((mel_frames + 1) // 2, extractor.nb_max_frames // 2 - 1)


def window_ends(n_samples, chunk):
    """End sample of each sliding window: every ``chunk`` samples, the last at the audio end."""
    return np.minimum(np.arange(1, math.ceil(n_samples / chunk) + 1) * chunk, n_samples)


def sliding_window_features(backbone, preprocessor, audio, layers, context_s=16.0, chunk_s=0.1,
                            batch_size=16, device="cpu", dtype=None, naive=False, progress=False,
                            on_batch=None, whisper_frame="ours"):
    """Features of a story for brain alignment (docs/method.md#features-for-brain-alignment).

    A window of ``context_s`` s of context plus a ``chunk_s`` s chunk slides over the audio in
    ``chunk_s`` steps (shorter windows at the start); each window gives the hidden state of its
    last frame (Whisper: the last frame from real audio) at each requested layer.

    Parameters
    ----------
    audio : (n_samples,) float32 at ``preprocessor.sampling_rate``
    naive : one window per forward pass, as the original code; same values, slower.
    on_batch : None, or called with the number of windows of each batch once it is done
        (e.g. to estimate the time left).
    whisper_frame : which frame of a Whisper window (``whisper_window_frame``): "ours" or
        "authors".

    Returns
    -------
    dict layer -> (n_windows, hidden) float32, and the window end times (n_windows,) in s.
    """
    rate = preprocessor.sampling_rate
    chunk, context = int(round(chunk_s * rate)), int(round(context_s * rate))
    ends = window_ends(len(audio), chunk)
    starts = np.maximum(0, ends - context - chunk)
    lengths = ends - starts
    out = {layer: None for layer in layers}
    family = model_family(backbone.config)
    groups = {}
    for index, length in enumerate(lengths):
        # windows of one length share a batch; Whisper's inputs are all 30 s long
        groups.setdefault(0 if family == "whisper" else int(length), []).append(index)
    step = 1 if naive else batch_size
    jobs = [indices[i:i + step] for indices in groups.values()
            for i in range(0, len(indices), step)]
    backbone.eval()
    with torch.inference_mode():
        for indices in run_utils.progress(jobs, desc="windows", unit="batch",
                                          disable=not progress):
            windows = [audio[starts[i]:ends[i]] for i in indices]
            inputs = torch.from_numpy(preprocessor(windows)).to(device)
            # the last frame (Whisper: the last one from real audio) of each window
            frame = (torch.as_tensor([whisper_window_frame(preprocessor, lengths[i],
                                                           whisper_frame) for i in indices])
                     if family == "whisper" else -1)
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                states = hidden_states_at(backbone, family, inputs, layers, frame)
            for layer, values in states.items():
                if out[layer] is None:
                    out[layer] = np.empty((len(ends), values.shape[-1]), np.float32)
                out[layer][indices] = values.float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(indices))
    return out, ends / rate


# ---------------------------------------------------------------------- story features on the TR grid

@dataclasses.dataclass(kw_only=True)
class ExtractionFlags(arguments.Flags):
    """The sliding windows of a story's features (docs/method.md#features-for-brain-alignment)."""

    context_s: float = flag(16.0, group="features", help="window context, seconds")
    chunk_s: float = flag(0.1, group="features", help="window step, seconds")
    batch_size: int = flag(16, group="features", resumable=True,
                           help="windows per forward pass")
    naive: bool = flag(False, group="features", resumable=True,
                       help="one window per forward pass (reference path; same features)")
    whisper_frame: str = flag(WHISPER_FRAMES[0], choices=WHISPER_FRAMES, group="features",
                              protocol=True,
                              help="Whisper only: a window's frame, ours (m/2 - 1, the last of "
                                   "real audio only) or the authors' (m/2); docs/method.md#where-"
                                   "our-defaults-differ-from-the-authors-code")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 1, "batch_size")
        arguments.check_positive(self, "context_s", "chunk_s")

    def extraction(self, dtype):
        """The ``Extraction`` of these flags at the autocast ``dtype``."""
        return Extraction(self.context_s, self.chunk_s, self.batch_size, self.naive, dtype,
                          self.whisper_frame)


class Extraction(NamedTuple):
    """How window features are extracted (``model_tr_features``): the window and the batch."""
    context_s: float  # seconds of context before each chunk
    chunk_s: float  # the window step, seconds
    batch_size: int  # windows per forward pass
    naive: bool  # one window per forward pass (reference path; same features)
    dtype: object  # autocast dtype (None: fp32)
    whisper_frame: str = WHISPER_FRAMES[0]  # a Whisper window's frame (whisper_window_frame)


def model_tr_features(encoder, layers, dataset, stories, extraction, cache_dir, device="cpu"):
    """TR-grid features of a model's ``layers`` for ``stories`` of ``dataset`` (under its TR
    timing): layer -> story -> (grid TRs, hidden), from the feature cache in ``cache_dir`` or
    extracted (nothing is read for no layers). Under torchrun the stories are dealt out to the
    processes and the features gathered. The number of windows is logged first, and an
    estimate of the extraction time once the first batches are done."""
    features = {layer: {} for layer in layers}
    if not layers:
        return features
    counts = [story_windows(dataset, story, extraction.chunk_s) for story in stories]
    mine = [stories[i] for i in processes.process_items(counts)]  # all without torchrun
    clock = ExtractionClock(sum(counts[stories.index(story)] for story in mine))
    logger.info("%d sliding windows of up to %g s over %d stories per layer set (stories "
                "already in the feature cache are read, not extracted)", clock.total,
                extraction.context_s + extraction.chunk_s, len(mine))
    resampled = {}
    for story in mine:
        window_features, times = cached_story_features(encoder, dataset, story, layers,
                                                       extraction, cache_dir, device,
                                                       clock.batch_done)
        clock.story_done(counts[stories.index(story)])
        resampled[story] = tr_features(dataset, story, window_features, times)
    for part in processes.gather_from_processes(resampled):
        for story, by_layer in part.items():
            for layer, values in by_layer.items():
                features[layer][story] = values
    return {layer: {story: by_story[story] for story in stories}
            for layer, by_story in features.items()}


def story_windows(dataset, story, chunk_s):
    """The number of sliding windows of a story (one per ``chunk_s`` of its WAV's audio)."""
    return math.ceil(round(dataset.stimulus_duration(story) / chunk_s, 6))


class ExtractionClock:
    """Counts the windows extracted and, once ``ESTIMATE_AFTER_S`` of extraction have been
    timed, logs the rate and the time left for the windows not yet done (counting those of
    cached stories, which are not known in advance, as to be extracted)."""

    ESTIMATE_AFTER_S = 30.0

    def __init__(self, total):
        self.total, self.done, self.in_story = total, 0, 0  # windows: all, finished stories
        self.timed, self.seconds, self.last = 0, 0.0, None  # of the timed batches
        self.estimated = False

    def batch_done(self, n_windows):
        now = time.perf_counter()
        if self.last is not None:  # a story's first batch also holds its start-up: not timed
            self.timed += n_windows
            self.seconds += now - self.last
        self.last = now
        self.in_story += n_windows
        if not self.estimated and self.seconds >= self.ESTIMATE_AFTER_S:
            self.estimated = True
            rate = self.timed / self.seconds
            left = max(self.total - self.done - self.in_story, 0) / rate
            logger.info("extracting %.1f windows/s: about %s left for this model's %d windows",
                        rate, _duration(left), self.total)

    def story_done(self, n_windows):
        self.done += n_windows
        self.in_story, self.last = 0, None


def _duration(seconds):
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def cached_story_features(encoder, dataset, story, layers, extraction, cache_dir, device="cpu",
                          on_batch=None):
    """Window features of a story's audio file (layer -> (windows, hidden)) and their end
    times, from the cache in ``cache_dir``; missing layers are extracted and cached (keyed by
    the model's fingerprint, the window settings, the autocast dtype, the preprocessor and the
    WAV, and a Whisper window's frame when not ours). ``on_batch``: see
    ``sliding_window_features``."""
    settings = {"context_s": extraction.context_s, "chunk_s": extraction.chunk_s,
                "autocast": str(extraction.dtype), "preprocessor": encoder.preprocessor.digest(),
                **run_utils.file_identity([dataset.stimulus_path(story)])}
    if encoder.preprocessor.family == "whisper" and extraction.whisper_frame != WHISPER_FRAMES[0]:
        settings["whisper_frame"] = extraction.whisper_frame  # (ours keeps the older key)
    # named by the audio file: stories that share one (Narratives' slumlord and reach) share
    # its windows; on ds003020 the file is named after the story
    path, text = run_utils.cache_path(cache_dir, dataset.stimulus_path(story).stem, settings,
                                      encoder.fingerprint)

    def extract(missing):
        logger.info("%s: extracting layers %s", story, " ".join(map(str, missing)))
        audio = dataset.stimulus(story, encoder.preprocessor.sampling_rate)
        features, times = sliding_window_features(
            encoder.backbone, encoder.preprocessor, audio, missing, extraction.context_s,
            extraction.chunk_s, extraction.batch_size, device, extraction.dtype,
            naive=extraction.naive, progress=processes.is_main_process(), on_batch=on_batch,
            whisper_frame=extraction.whisper_frame)
        return features, {"times": times}

    features, extras = run_utils.cached_arrays(path, layers, extract, text)
    return features, extras["times"]


def tr_features(dataset, story, window_features, times):
    """Window features resampled to the story's TR centres (``docs/method.md#features-for-
    brain-alignment``): layer -> (grid TRs, hidden)."""
    centres = dataset.tr_times(story)
    return {layer: eval_utils.lanczos_interp(values, times, centres)
            for layer, values in window_features.items()}
