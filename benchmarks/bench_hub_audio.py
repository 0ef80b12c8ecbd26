"""Benchmark: the probes' audio from a HuggingFace dataset (--hf_dataset) against the same
audio as files in a folder (--data_path), at Speech Commands' clip size.

    python benchmarks/bench_hub_audio.py                      # 5000 1-s clips, ~1 min
    python benchmarks/bench_hub_audio.py --clips 20000 --out /tmp/hub_audio.json

Writes ``--clips`` random 1-s 16-bit WAV clips of 16 kHz into word folders laid out as Speech
Commands v2 and the same clips, bytes embedded, as a ``save_to_disk`` dataset laid out as
``google/speech_commands`` (``synthetic_downstream.hub_dataset``), then times, for each input,
what a probe run does before the model: listing the examples of the training split
(``downstream_data.task_examples``) and reading every clip's samples
(``data_utils.read_audio``, soundfile on the file, or on the row's bytes). The peer is the
folder, read by the same reader; the datasets library's own ``Audio`` decoding needs
torchcodec and FFmpeg, which are not dependencies. Prints per-clip times, the ratio hub /
folder and the projection to Speech Commands v0.02's 84,848 training and 4,890 test clips.
The work is file and Arrow reading, not arithmetic, so no GEMM fraction applies. Results are
written as JSON (``--out``).
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data_utils  # noqa: E402
import downstream_data  # noqa: E402
import run_utils  # noqa: E402
import synthetic_downstream  # noqa: E402

SPEECH_COMMANDS_CLIPS = 84848 + 4890  # v0.02 training and test splits
RATE = 16000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=run_utils.HelpFormatter)
    parser.add_argument("--clips", type=int, default=5000, help="1-s clips to write and read")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes over each input (the fastest is reported)")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    run_utils.check_at_least(parser, args, 10, "clips")
    run_utils.check_at_least(parser, args, 1, "repeats")
    return args


def write_inputs(root, clips, seed=0):
    """The clips as a Speech Commands folder (``root/folder``) and as its hub copy
    (``root/hub``); a tenth of them listed for testing, a tenth for validation."""
    rng = np.random.default_rng(seed)
    folder = root / "folder"
    words = synthetic_downstream.COMMAND_WORDS
    lists = {"testing": [], "validation": []}
    for index in range(clips):
        word = words[index % len(words)]
        name = f"{word}/{index:08x}_nohash_0.wav"
        (folder / word).mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, rng.normal(0, 0.1, RATE), RATE, subtype="PCM_16")
        if index % 10 in (0, 5):
            lists["testing" if index % 10 == 0 else "validation"].append(name)
    for split, names in lists.items():
        (folder / f"{split}_list.txt").write_text("".join(f"{name}\n" for name in names))
    (folder / "_background_noise_").mkdir()
    sf.write(folder / "_background_noise_" / "white_noise.wav", rng.normal(0, 0.1, RATE), RATE,
             subtype="PCM_16")
    synthetic_downstream.hub_dataset("speech_commands", folder).save_to_disk(str(root / "hub"))
    return folder, downstream_data.HubDataset(str(root / "hub"))


def timed(work, repeats):
    """The fastest of ``repeats`` runs of ``work()``, in seconds, and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure(source, repeats):
    """Seconds to list the training examples and to read all their audio."""
    listing, examples = timed(lambda: downstream_data.task_examples("words", source, "train"),
                              repeats)
    reading, total = timed(lambda: sum(len(data_utils.read_audio(e["audio"]))
                                       for e in examples), repeats)
    return {"examples": len(examples), "list_s": listing, "read_s": reading,
            "samples": int(total)}


def main(argv=None):
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"{args.clips} clips of 1 s, best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        folder, hub = write_inputs(Path(tmp), args.clips)
        rows = {"folder": measure(folder, args.repeats), "hub": measure(hub, args.repeats)}
    assert rows["folder"]["samples"] == rows["hub"]["samples"]
    print(f"{'input':8} {'clips':>6} {'list ms/clip':>13} {'read ms/clip':>13} "
          f"{'projected s':>12}")
    for name, row in rows.items():
        per_clip = (row["list_s"] + row["read_s"]) / row["examples"]
        row["projected_speech_commands_s"] = per_clip * SPEECH_COMMANDS_CLIPS
        print(f"{name:8} {row['examples']:6d} {1e3 * row['list_s'] / row['examples']:13.3f} "
              f"{1e3 * row['read_s'] / row['examples']:13.3f} "
              f"{row['projected_speech_commands_s']:12.1f}")
    ratio = ((rows["hub"]["list_s"] + rows["hub"]["read_s"])
             / (rows["folder"]["list_s"] + rows["folder"]["read_s"]))
    print(f"hub / folder time: {ratio:.2f}  (projected over Speech Commands v0.02's "
          f"{SPEECH_COMMANDS_CLIPS:,} clips)")
    if args.out:
        run_utils.write_json(args.out, {"clips": args.clips, "rows": rows, "ratio": ratio},
                             overwrite=True)


if __name__ == "__main__":
    sys.exit(main())
