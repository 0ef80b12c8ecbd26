"""Emotion probe on CREMA-D: anger, disgust, fear, happiness, neutral or sadness; 6 classes,
F1 per layer; the actors are split so that no speaker is in both training and test.

    python eval_emotion.py --data_path /data/CREMA-D --model_name facebook/wav2vec2-base \\
        --model_path outputs/brain_tuning/wav2vec2-base_UTS03_fmri --save_dir outputs/downstream

--data_path: the CREMA-D root with ``AudioWAV/<actor>_<sentence>_<EMOTION>_<level>.wav`` (or the
``.wav`` files directly); ``--test_fraction`` of the actors (default 0.2) are held out,
chosen with ``--seed``.

Or --hf_dataset: a HuggingFace copy with ``audio`` and ``label`` (names or codes); one split's
actors are split the same way (``speaker_id``, or the file name).

Probing, outputs and caching are described in ``probing.py``; ``--help`` lists every flag,
``--config FILE`` gives them from its section "probe".
"""

import sys

import probing
import run_utils


def parse_args(argv=None):
    return probing.parse_args("emotion", argv)


def main(argv=None):
    return run_utils.main(parse_args, probing.run, argv)


if __name__ == "__main__":
    sys.exit(main())
