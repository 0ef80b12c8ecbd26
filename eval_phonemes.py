"""Phoneme probe on TIMIT: which of the 39 phone classes (Lee & Hon 1989 folding of the
61 TIMIT phones; the glottal stop q dropped) occur in an utterance, multi-label, F1 per layer.

    python eval_phonemes.py --data_path /data/timit --model_name facebook/wav2vec2-base \\
        --model_path outputs/brain_tuning/wav2vec2-base_UTS03_fmri --save_dir outputs/downstream

--data_path: TIMIT as distributed by the LDC: ``TRAIN/`` and ``TEST/`` with
``DR<n>/<speaker>/<utterance>.WAV`` and ``.PHN`` beside it (any case, optionally under
``data/``; WAV files in NIST SPHERE or RIFF).

Or --hf_dataset: TIMIT laid out as ``timit_asr`` (``phonetic_detail``), from the local cache or
a ``save_to_disk`` folder.

Probing, outputs and caching are described in ``probing.py``; ``--help`` lists every flag,
``--config FILE`` gives them from its section "probe".
"""

import sys

import probing
import run_utils


def parse_args(argv=None):
    return probing.parse_args("phonemes", argv)


def main(argv=None):
    return run_utils.main(parse_args, probing.run, argv)


if __name__ == "__main__":
    sys.exit(main())
