"""Intent probe on SLURP: the action of the request (46 in SLURP), one example per recording,
F1 per layer.

    python eval_intent.py --data_path /data/slurp --model_name facebook/wav2vec2-base \\
        --model_path outputs/brain_tuning/wav2vec2-base_UTS03_fmri --save_dir outputs/downstream

--data_path: the SLURP root with ``train.jsonl`` and ``test.jsonl`` (there or in
``dataset/slurp/``) and the recordings in ``slurp_real/`` (there, in ``audio/`` or
``scripts/audio/``, or ``--audio_dir``).

Or --hf_dataset: a HuggingFace copy with ``audio`` and ``action``, one row per recording.

Probing, outputs and caching are described in ``probing.py``; ``--help`` lists every flag,
``--config FILE`` gives them from its section "probe".
"""

import sys

import probing
import run_utils


def parse_args(argv=None):
    return probing.parse_args("intent", argv)


def main(argv=None):
    return run_utils.main(parse_args, probing.run, argv)


if __name__ == "__main__":
    sys.exit(main())
