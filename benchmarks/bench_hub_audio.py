"""Benchmark: the probes' audio from a HuggingFace dataset (--hf_dataset) against the same
audio as files in a folder (--data_path), at Speech Commands' clip size.

    python benchmarks/bench_hub_audio.py                      # 5000 1-s clips, ~1 min
    python benchmarks/bench_hub_audio.py --clips 20000 --out /tmp/hub_audio.json

Writes ``--clips`` random 1-s 16-bit WAV clips of 16 kHz into word folders laid out as Speech
Commands v2 and the same clips, bytes embedded, as a ``save_to_disk`` dataset laid out as
``google/speech_commands`` (``synthetic_downstream.hub_dataset``), then times, for each input,
what a probe run does before the model: listing the examples of the training split
(``downstream_data.task_examples``) and reading every clip's samples
(``audio_io.read_audio``, soundfile on the file, or on the row's bytes). The peer is the
folder, read by the same reader; the datasets library's own ``Audio`` decoding needs
torchcodec and FFmpeg, which are not dependencies. Prints per-clip times, the ratio hub /
folder and the projection to Speech Commands v0.02's 84,848 training and 4,890 test clips.
The work is file and Arrow reading, not arithmetic, so no GEMM fraction applies. Results are
written as JSON (``--out``).
"""

import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import arguments  # noqa: E402
import audio_io  # noqa: E402
import downstream_data  # noqa: E402
import run_utils  # noqa: E402
import synthetic_downstream  # noqa: E402
from arguments import flag  # noqa: E402
from machine import best_seconds  # noqa: E402

SPEECH_COMMANDS_CLIPS = 84848 + 4890  # v0.02 training and test splits
RATE = 16000


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The benchmark's flags."""

    clips: int = flag(5000, help="1-s clips to write and read")
    repeats: int = flag(3, help="timed passes over each input (the fastest is reported)")
    out: str | None = flag(None, help="also write the figures to this JSON file")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 10, "clips")
        arguments.check_at_least(self, 1, "repeats")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=__doc__.splitlines()[0])


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


def measure(source, repeats):
    """Seconds to list the training examples and to read all their audio."""
    listing, examples = best_seconds(
        lambda: downstream_data.task_examples("words", source, "train"), repeats)
    reading, total = best_seconds(lambda: sum(len(audio_io.read_audio(e["audio"]))
                                              for e in examples), repeats)
    return {"examples": len(examples), "list_s": listing, "read_s": reading,
            "samples": int(total)}


def main(argv=None):
    args = parse_args(argv)
    run_utils.setup_logging("WARNING")
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
