"""Write a tiny random-weight checkpoint that every script loads like a real one (no download).

    python make_tiny.py --family wav2vec2 --size demo --out outputs/demo/tiny-wav2vec2

For demos and tests: it has learned nothing. ``--size demo`` is the wider variant that
``make demo`` tunes (``speech_models.DEMO_SIZE``).
"""

import dataclasses
import logging
import sys

import arguments
import run_utils
import speech_models
from arguments import flag

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """Write a tiny random-weight checkpoint of a family, with its feature extractor, that every
    script loads like a real one. For demos and tests: it has learned nothing."""

    family: str = flag("wav2vec2", choices=("wav2vec2", "hubert", "wavlm", "data2vec-audio",
                                            "whisper"), help="model family")
    out: str = flag(help="output folder")
    seed: int = flag(0, help="random seed of the weights")
    size: str = flag("tiny", choices=("tiny", "demo"),
                     help="tiny: hidden size 32, three 32-channel CNN layers (fast, for tests); "
                          "demo: hidden size 64 and one 128-channel 25 ms CNN layer whose random "
                          "filters tell the synthetic phones apart (what make demo uses)")
    overwrite: bool = flag(False, help="replace a model folder written earlier by make_tiny.py")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 0, "seed")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, description=Settings.__doc__,
                           docs="docs/synthetic-data.md")


def run(args):
    with run_utils.output_folder(args.out, args.overwrite, what="tiny model") as staging:
        speech_models.save_tiny_model(staging, args.family, args.seed, args.size)
    logger.info("wrote a tiny %s checkpoint to %s", args.family, args.out)


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
