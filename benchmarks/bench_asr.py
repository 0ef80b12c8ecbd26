"""Benchmark: what eval_asr.py costs per model, on a TIMIT-length utterance, projected to TIMIT.

    python benchmarks/bench_asr.py                               # CPU fp32, ~3 min on 2 cores
    python benchmarks/bench_asr.py --device cuda --utterances 16 # a GPU (fp32)

A base-size wav2vec2 (random init from the default config, nothing downloaded) and
``--utterances`` random utterances of ``--seconds`` (3.1 s, TIMIT's mean):

- frozen (the default setting): ``asr.utterance_hidden`` per utterance for layers 1, 6
  and 12, each its own forward pass up to the layer, as ``asr.frame_features`` extracts
  one layer at a time; the peer is one forward pass of the whole encoder returning every
  hidden state (``output_hidden_states=True``), what extracting all 13 layers together would
  cost.
- ``--finetune``: ``asr.finetuned_transcripts`` training the last layer, one epoch of
  batches of ``--batch_size`` utterances (each encoded alone, as the script does: CTC loss,
  backward through the encoder above the CNN, Adam); the peer is transformers'
  ``Wav2Vec2ForCTC`` with its feature encoder frozen, the same utterances padded into one
  batch per step (its own CTC loss, backward, Adam).

Prints seconds per utterance, the ratio ours / peer, the achieved GFLOP/s of the fine-tuning
step (forward and backward counted by ``torch.utils.flop_counter.FlopCounterMode`` on one
utterance) and its fraction of the machine's GEMM rate measured in the same run (torch
matmul of the MLP's shape, and on the CPU numpy's BLAS too, the best used), and the
projection to TIMIT without SA (3,696 training and 1,344 test utterances): frozen, all 13
layers one pass each, and --finetune for 20 epochs. Results are written as JSON (``--out``).
"""

import copy
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import arguments  # noqa: E402
import brain_model  # noqa: E402
import asr  # noqa: E402
import processes  # noqa: E402
import run_utils  # noqa: E402
import speech_models  # noqa: E402
from arguments import flag  # noqa: E402
from machine import (base_backbone, base_preprocessor, cpu_name, gemm_rate, timed,  # noqa: E402
                     torch_gemm_rate)

TIMIT_TRAIN, TIMIT_TEST = 3696, 1344  # without the SA sentences
RATE = 16000
N_TOKENS = 29  # the blank, a space and TIMIT's letters and apostrophe


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The benchmark's flags."""

    device: str = flag("cpu", choices=("cpu", "cuda"), help="where the model runs")
    seconds: float = flag(3.1, help="length of each utterance")
    utterances: int = flag(4, help="utterances timed")
    batch_size: int = flag(2, help="utterances per Adam step")
    seed: int = flag(0, help="random seed")
    out: str = flag("outputs/bench_asr.json", help="JSON results")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 1, "utterances", "batch_size")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=__doc__.splitlines()[0])


def frozen_costs(encoder, waveforms, device):
    """Seconds per utterance: each layer's own pass (``asr.utterance_hidden``), all layers
    in one pass as ``asr.extract_layers`` runs it, and the peer, one pass of the encoder
    returning every hidden state."""
    layers = list(range(encoder.depth + 1))
    with torch.inference_mode():
        asr.utterance_hidden(encoder, waveforms[0], encoder.depth, device)  # warm-up
        per_layer = {}
        for layer in layers:
            seconds, _ = timed(lambda: [asr.utterance_hidden(encoder, w, layer, device)
                                        for w in waveforms], device)
            per_layer[layer] = seconds / len(waveforms)
        seconds, _ = timed(lambda: [asr.utterance_states(encoder, w, layers, device)
                                    for w in waveforms], device)
        together = seconds / len(waveforms)
        inputs = [torch.from_numpy(encoder.preprocessor(w[None])).to(device) for w in waveforms]
        seconds, _ = timed(lambda: [encoder.backbone(x, output_hidden_states=True)
                                    for x in inputs], device)
    return per_layer, together, seconds / len(waveforms)


def grouped_cost(per_layer, per_pass):
    """Seconds per utterance for every layer, ``per_pass`` layers per forward pass (each pass
    costs what the pass up to its highest layer does)."""
    layers = sorted(per_layer)
    return sum(per_layer[max(layers[i:i + per_pass])] for i in range(0, len(layers), per_pass))


def finetune_cost(encoder, folder, waveforms, labels, batch_size, device):
    """Seconds per training utterance of ``asr.finetuned_transcripts`` (the copy of the
    encoder made once, outside the time)."""
    paths = []
    for index, waveform in enumerate(waveforms):
        paths.append(folder / f"{index}.wav")
        sf.write(paths[-1], waveform, RATE, subtype="FLOAT")
    examples = [{"audio": path} for path in paths]
    training = asr.Training(1, batch_size, asr.FINETUNE_HEAD_LR, asr.FINETUNE_BACKBONE_LR, 0)
    asr.finetuned_transcripts(encoder, encoder.depth, examples[:batch_size], [],
                              labels[:batch_size], N_TOKENS, training, device)  # warm-up
    seconds, _ = timed(lambda: asr.finetuned_transcripts(
        encoder, encoder.depth, examples, [], labels, N_TOKENS, training, device), device)
    copy_seconds, _ = timed(lambda: brain_model.BrainTuningModel(
        copy.deepcopy(encoder.backbone), encoder.family, N_TOKENS), device)
    return (seconds - copy_seconds) / len(waveforms)


def peer_finetune_cost(config, waveforms, labels, batch_size, device):
    """Seconds per training utterance of transformers' Wav2Vec2ForCTC, padded batches."""
    from transformers import Wav2Vec2ForCTC

    model = Wav2Vec2ForCTC(config.__class__(**{**config.to_dict(), "vocab_size": N_TOKENS,
                                               "pad_token_id": 0,
                                               "ctc_loss_reduction": "mean"})).to(device)
    model.freeze_feature_encoder()
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    inputs = torch.from_numpy(np.stack(waveforms)).to(device)
    targets = torch.nn.utils.rnn.pad_sequence([torch.tensor(ids) for ids in labels],
                                              batch_first=True, padding_value=-100).to(device)

    def epoch():
        for start in range(0, len(waveforms), batch_size):
            optimizer.zero_grad()
            loss = model(inputs[start:start + batch_size],
                         labels=targets[start:start + batch_size]).loss
            loss.backward()
            optimizer.step()

    with processes.seeded(0):
        epoch()  # warm-up
        seconds, _ = timed(epoch, device)
    return seconds / len(waveforms)


def finetune_flops(encoder, waveform, device):
    """FLOPs of one utterance's fine-tuning step, forward and backward (FlopCounterMode)."""
    model = brain_model.BrainTuningModel(copy.deepcopy(encoder.backbone), encoder.family,
                                           N_TOKENS).to(device)
    model.freeze()
    tuned = dataclasses.replace(encoder, backbone=model.backbone)
    with FlopCounterMode(display=False) as counter:
        logits = model.head(asr.utterance_hidden(tuned, waveform, encoder.depth, device,
                                                 cut=True))
        logits.log_softmax(-1).sum().backward()
    return counter.get_total_flops()


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    backbone, preprocessor = base_backbone("wav2vec2"), base_preprocessor("wav2vec2")
    backbone.to(device).eval()
    encoder = speech_models.Encoder(backbone, "wav2vec2", preprocessor,
                                    speech_models.num_layers(backbone))
    rng = np.random.default_rng(args.seed)
    waveforms = [rng.normal(0, 0.1, int(args.seconds * RATE)).astype(np.float32)
                 for _ in range(args.utterances)]
    words = int(args.seconds * 3)  # TIMIT speaks about 3 words per second
    labels = [list(rng.integers(1, N_TOKENS, words * 6)) for _ in waveforms]
    print(f"{cpu_name()}; {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
          f"load {os.getloadavg()[0]:.2f}; device {device}; wav2vec2-base (random weights); "
          f"{args.utterances} utterances of {args.seconds} s")
    per_layer, together, peer_frozen = frozen_costs(encoder, waveforms, device)
    with tempfile.TemporaryDirectory() as folder:
        ours = finetune_cost(encoder, Path(folder), waveforms, labels, args.batch_size, device)
    peer = peer_finetune_cost(backbone.config, waveforms, labels, args.batch_size, device)
    flops = finetune_flops(encoder, waveforms[0], device)
    d, ffn = backbone.config.hidden_size, backbone.config.intermediate_size
    frames = int(args.seconds * 50)
    gemm = {"torch": torch_gemm_rate(frames, d, ffn, torch.float32, device)}
    if device.type == "cpu":
        gemm["numpy"] = gemm_rate(frames, d, [ffn], np.float32, args.seed)[0]
    best_gemm = max(gemm.values())
    achieved = flops / ours / 1e9

    one_at_a_time = sum(per_layer.values())
    print("\nfrozen, seconds per utterance for all 13 layers")
    print(f"  one pass per layer (layer 0 {per_layer[0]:.3f} ... layer {encoder.depth} "
          f"{per_layer[encoder.depth]:.3f})  {one_at_a_time:8.3f}")
    print(f"  eval_asr, all in one pass                  {together:8.3f}")
    print(f"  peer: encoder(output_hidden_states=True)   {peer_frozen:8.3f}")
    print(f"  ours / peer {together / peer_frozen:.2f}; one pass per layer / ours "
          f"{one_at_a_time / together:.1f}")
    print(f"\n--finetune, seconds per training utterance: ours {ours:.3f}, Wav2Vec2ForCTC "
          f"{peer:.3f}, ours / peer {ours / peer:.2f}")
    print(f"  {flops / 1e9:.1f} GFLOP per utterance (forward and backward), {achieved:.1f} "
          f"GFLOP/s, {achieved / best_gemm:.2f} of the GEMM rate "
          f"({', '.join(f'{k} {v:.1f}' for k, v in gemm.items())} GFLOP/s)")
    utterances = TIMIT_TRAIN + TIMIT_TEST
    layer_bytes = 50 * args.seconds * utterances * d * 4  # float32 frames of one layer
    default_pass = max(1, int(asr.FRAME_MEMORY_GB * 2**30 // layer_bytes))
    projection = {"frozen_one_pass_per_layer_hours": one_at_a_time * utterances / 3600,
                  "frozen_default_memory_hours": grouped_cost(per_layer, default_pass)
                  * utterances / 3600, "frozen_default_layers_per_pass": default_pass,
                  "frozen_all_in_one_pass_hours": together * utterances / 3600,
                  "finetune_20_epochs_hours": ours * TIMIT_TRAIN * 20 / 3600}
    print(f"\nprojected to TIMIT ({TIMIT_TRAIN} + {TIMIT_TEST} utterances, "
          f"{layer_bytes / 2**30:.1f} GiB of frames per layer): frozen, all 13 layers, "
          f"{projection['frozen_default_memory_hours']:.1f} h with the default "
          f"--frame_memory_gb {asr.FRAME_MEMORY_GB:g} ({default_pass} layers per pass), "
          f"{projection['frozen_all_in_one_pass_hours']:.1f} h in one pass "
          f"(--frame_memory_gb {np.ceil(13 * layer_bytes / 2**30):.0f}), "
          f"{projection['frozen_one_pass_per_layer_hours']:.1f} h one pass per layer; "
          f"--finetune 20 epochs {projection['finetune_20_epochs_hours']:.1f} h, plus the "
          "test decoding")
    run_utils.write_json(args.out, {"device": str(device), "frozen_per_layer_s": per_layer,
                                    "frozen_together_s": together,
                                    "frozen_peer_s": peer_frozen,
                                    "finetune_s": ours, "peer_finetune_s": peer,
                                    "finetune_gflop": flops / 1e9, "gemm_gflops": gemm,
                                    "projection": projection}, overwrite=True)


if __name__ == "__main__":
    sys.exit(main())
