"""CTC speech recognition on TIMIT (docs/method.md#downstream-tasks: ASR, scored 1 - WER), per
model and layer; the method is described in ``asr.py``.

    python eval_asr.py --data_path /data/timit --model_name facebook/wav2vec2-base \\
        --model_path outputs/brain_tuning/wav2vec2-base_UTS03_fmri --save_dir outputs/downstream

    python eval_asr.py ... --finetune            # the paper's setting: the encoder trains too
    python eval_asr.py ... --target phones       # the 39 folded phones, scored 1 - PER
    python eval_asr.py --config configs/iclr2025_wav2vec2-base.json ...   # its section "asr"

--data_path: TIMIT as distributed by the LDC (``TRAIN/``, ``TEST/``, ``DR<n>/<speaker>/``
``<utterance>.WAV`` with ``.PHN`` and ``.WRD`` beside it; see ``eval_phonemes.py``). The SA
sentences, which every speaker reads, are left out as in the standard TIMIT recognition
setup (3,696 training and 1,344 test utterances); ``--include_sa`` keeps them. Or
``--hf_dataset``: TIMIT as a HuggingFace dataset laid out as ``timit_asr`` (transcripts from
``word_detail``, or ``phonetic_detail`` for the phones; see ``downstream_data.HubDataset``).

Models (pretrained, every ``--model_path``/``--logs_dir`` checkpoint, as the other probes
choose them) and layers (``--layers``): by default a linear CTC head on each layer of the
frozen encoder, its frame features cached in ``--cache_dir`` (``--frame_memory_gb`` of them
extracted in one pass), Adam ``--lr`` 1e-3; with ``--finetune`` the encoder up to the layer
trains with the head (default: the last layer only), ``--backbone_lr`` 5e-5 for the encoder
and ``--lr`` 1e-4 for the head. ``--num_epochs`` passes over the training utterances in a
random order (``--seed``), ``--batch_size`` utterances per Adam step. Under ``torchrun
--nproc_per_node N eval_asr.py ...`` the processes share out the utterances to encode and each
batch; rank 0 alone writes.

Outputs in ``<save_dir>/<exp_name>/`` (default ``<model>_asr``, ``_phones`` and
``_finetune`` added for those settings): ``results.json`` (the task, target, tokens, models,
the name of the headline score and the rows) and ``results.csv`` (per model and layer:
``one_minus_wer``, ``wer``, ``cer`` or ``one_minus_per``, ``per``; ``n_train``, ``n_test``),
``<task>.png`` (the headline score per layer, one line per model) and ``run_config.json``;
written together once every model is done, as the other probes' (``run_utils.output_folder``).
"""

import dataclasses
import logging
import sys
from pathlib import Path

import arguments
import asr
import downstream_data
import processes
import run_utils
import speech_models
from arguments import ModelFlags, OutputFlags, flag
from probing import ProbeFlags

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class Settings(OutputFlags, ModelFlags, ProbeFlags, dataset="TIMIT",
               hub_tasks=("asr", "asr_phones"), default_layers="all; with --finetune the last"):
    """CTC recognition's settings: the probes' dataset, models and outputs, and the CTC
    head's target and training."""

    target: str = flag("characters", choices=asr.TARGETS,
                       help="characters: the .WRD words spelled out, scored 1 - WER (and CER); "
                            "phones: the 39 folded phones of .PHN, scored 1 - PER")
    finetune: bool = flag(False, help="train the encoder (not its CNN) with the head, the "
                                      "paper's setting, instead of a head on the frozen "
                                      "encoder's features")
    include_sa: bool = flag(False, help="keep the SA sentences, which every speaker reads (left "
                                        "out by default, as in the standard TIMIT recognition "
                                        "setup)")
    num_epochs: int = flag(20, help="passes over the training utterances")
    batch_size: int = flag(16, help="training utterances per Adam step")
    lr: float | None = flag(None, help="Adam learning rate of the CTC head (default: 1e-3, the "
                                       "probes'; with --finetune 1e-4, brain-tuning's head rate)")
    backbone_lr: float = flag(asr.FINETUNE_BACKBONE_LR,
                              help="with --finetune: Adam learning rate of the encoder "
                                   "(brain-tuning's backbone rate)")
    frame_memory_gb: float = flag(
        asr.FRAME_MEMORY_GB,
        help="frozen: GB of frame features extracted together; layers that fit share one "
             "forward pass per utterance (peak memory about twice it; docs/downstream.md)")
    seed: int = flag(0, help="seed of the head's initialisation, the training order, dropout "
                             "and the --max_examples subsets")
    save_dir: str = flag("outputs/downstream", group="output", resumable=True,
                         help="parent of the results folder")
    exp_name: str | None = flag(None, group="output", resumable=True,
                                help="results folder name (default: "
                                     "<model>_asr[_phones][_finetune])")

    def __post_init__(self):
        super().__post_init__()
        self.finish_outputs(self.model_name, self.task)
        if self.lr is None:
            self.lr = asr.FINETUNE_HEAD_LR if self.finetune else asr.PROBE_LR
        arguments.check_at_least(self, 1, "num_epochs", "batch_size")
        arguments.check_positive(self, "lr", "backbone_lr", "frame_memory_gb")
        arguments.check_at_least(self, 0, "seed")

    @property
    def task(self):
        """``asr``, ``asr_phones``, ``asr_finetune`` or ``asr_phones_finetune``."""
        return asr.task_name(self.target, self.finetune)


def parse_args(argv=None):
    return arguments.parse(Settings, argv, section="asr", docs="docs/downstream.md", description=(
        "CTC speech recognition on TIMIT with every layer of pretrained and brain-tuned speech "
        "models: a linear CTC head on the frozen encoder, or the encoder fine-tuned with it "
        "(--finetune)."))


def run(settings):
    """Recognise, in this process and the others of its torchrun process group (if any)."""
    with processes.process_group(settings.device) as group:
        return recognise(settings, group)


def recognise(settings, group):
    """The whole run: under torchrun the processes share the frame extraction and each
    training batch, and rank 0 alone locks and writes the results (the others return None)."""
    out_dir = Path(settings.save_dir) / settings.exp_name
    run_utils.check_replaceable(out_dir, settings.overwrite)  # before the slow part
    with group.folder_lock(out_dir):  # held for the run's life
        models = speech_models.checked_models(settings, settings.layers)
        dtype = processes.autocast_dtype(settings.precision, group.device)
        source = settings.data_source()
        train, test = [asr.asr_examples(source, split, settings.target, settings.include_sa,
                                        settings.max_examples, settings.seed)
                       for split in ("train", "test")]
        vocabulary = asr.token_vocabulary(train, test)
        logger.info("TIMIT %s: %d training and %d test utterances, %d tokens and the blank",
                    settings.target, len(train), len(test), len(vocabulary) - 1)
        training = asr.Training(settings.num_epochs, settings.batch_size, settings.lr,
                                settings.backbone_lr, settings.seed)
        rows = []
        for label, checkpoint in models:
            rows += asr.evaluate_model(label, checkpoint, train, test, vocabulary,
                                       settings.target, settings.layers, settings.finetune,
                                       settings.cache_dir, training, group.device, dtype,
                                       settings.frame_memory_gb * 2**30)
        if not group.is_main:
            return None
        score, name, others = asr.SCORES[settings.target]
        setting = ("the encoder fine-tuned up to each layer with a linear CTC head"
                   if settings.finetune else "a linear CTC head on each layer of the frozen "
                                             "encoder")
        layout = "asr_phones" if settings.target == "phones" else "asr"
        facts = {"task": settings.task, "dataset": "TIMIT",
                 "source": downstream_data.source_facts(layout, source),
                 "target": settings.target, "finetune": settings.finetune, "score": score,
                 "score_name": name,
                 "description": f"CTC speech recognition of the {settings.target}, {setting}",
                 "tokens": list(vocabulary), "models": dict(models)}
        with run_utils.output_folder(out_dir, settings.overwrite,
                                     what=f"{settings.task} runs") as staging:
            run_utils.write_json(staging / "run_config.json", run_utils.run_config(
                arguments.as_dict(settings), **facts))
            asr.write_results(staging, rows, facts)
        for key in (score, *others):
            logger.info("\n%s", run_utils.comparison_table(rows, key))
        logger.info("results in %s", out_dir)


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
