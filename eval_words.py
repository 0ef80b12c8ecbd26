"""Word-identity probe on Speech Commands v2: which of the 35 command words is spoken, F1 per
layer.

    python eval_words.py --data_path /data/speech_commands_v0.02 \\
        --model_name facebook/wav2vec2-base \\
        --model_path outputs/brain_tuning/wav2vec2-base_UTS03_fmri --save_dir outputs/downstream

--data_path: the Speech Commands v2 folder: one folder per word, ``validation_list.txt`` and
``testing_list.txt``; training uses every file in neither list, testing the files of
``testing_list.txt``; ``_background_noise_`` is ignored.

Or --hf_dataset: ``google/speech_commands`` (config ``v0.02``) from the local cache, or a
``save_to_disk`` copy; its ``_silence_`` rows are left out. It holds no split of
``testing_list.txt`` (its ``test`` split is the separate test set of the 10 core commands), so
the probe tests on ``validation`` by default.

Probing, outputs and caching are described in ``probing.py``; ``--help`` lists every flag,
``--config FILE`` gives them from its section "probe".
"""

import sys

import probing
import run_utils


def parse_args(argv=None):
    return probing.parse_args("words", argv)


def main(argv=None):
    return run_utils.main(parse_args, probing.run, argv)


if __name__ == "__main__":
    sys.exit(main())
