"""Sentence-type probe on TIMIT: SA (dialect), SI (phonetically diverse) or SX (phonetically
compact), read from the utterance name; 3 classes, F1 per layer.

    python eval_sentence_type.py --data_path /data/timit --model_name facebook/wav2vec2-base \\
        --model_path outputs/brain_tuning/wav2vec2-base_UTS03_fmri --save_dir outputs/downstream

--data_path: TIMIT as for ``eval_phonemes.py``.

Or --hf_dataset: TIMIT laid out as ``timit_asr`` (``sentence_type``).

Probing, outputs and caching are described in ``probing.py``; ``--help`` lists every flag,
``--config FILE`` gives them from its section "probe".
"""

import sys

import probing
import run_utils


def parse_args(argv=None):
    return probing.parse_args("sentence_type", argv)


def main(argv=None):
    return run_utils.main(parse_args, probing.run, argv)


if __name__ == "__main__":
    sys.exit(main())
