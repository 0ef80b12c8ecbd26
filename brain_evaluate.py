"""Brain alignment: how well each layer of pretrained and brain-tuned models predicts held-out
fMRI (docs/method.md#scoring).

    python brain_evaluate.py --model_name facebook/wav2vec2-base --subject 3 \\
        --data_dir /path/to/ds003020 --logs_dir outputs/brain_tuning/wav2vec2-base_UTS03_fmri
    python brain_evaluate.py --config configs/iclr2025_wav2vec2-base.json --subject 3 \\
        --data_dir /path/to/ds003020 --logs_dir ...            # the paper's protocol
    torchrun --nproc_per_node 4 brain_evaluate.py ...            # several GPUs or machines

For each model and layer: sliding-window features of every story on the TR grid, a ridge
encoding model per voxel fitted on the training stories, and its prediction of the test story
scored by Pearson r and cc_norm, with permutation p-values and block-bootstrap intervals; with
``--low_level`` the drop once low-level features are regressed out, with
``--semantic_preference`` semantic against phonetic prediction, with ``--train_fraction`` the
data-efficiency curve, with ``--regions`` per-region summaries and cortical maps. The scoring
protocol is the authors' by default; every choice is a flag, recorded in results.json.

Outputs in ``<save_dir>/<exp_name>/`` (``alignment_outputs``): results.json (its schema:
``results_schema``), results.csv, comparisons.csv, per-voxel npz files, test predictions,
plots and run_config.json, written whole at the end. Each finished (model, layer, analysis)
result is kept at once (``finished_results``): ``--resume`` continues a killed run.
"""

import dataclasses
import logging
import sys
from pathlib import Path

import alignment_analyses
import alignment_outputs
import arguments
import encoding
import finished_results
import processes
import run_utils
import speech_models
from alignment_analyses import AnalysisFlags
from arguments import ModelFlags, OutputFlags, flag
from brain_regions import RegionFlags
from data_utils import DatasetFlags
from encoding import EncodingFlags, UncertaintyFlags
from layer_features import ExtractionFlags

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class Settings(OutputFlags, ExtractionFlags, UncertaintyFlags, AnalysisFlags, RegionFlags,
               EncodingFlags, ModelFlags, DatasetFlags):  # --help lists them in reverse
    """The evaluator's settings: its flags, each declared once in its group."""

    subject: str = flag(help="subject: 1, '1' or UTS01 (Narratives: 1 or sub-001, or 'group': "
                             "the mean of each story's listeners)", group="data")
    layers: list[int] | None = flag(
        None, resumable=True, group="models",
        help=f"hidden-state indices (default "
             f"{' '.join(map(str, alignment_analyses.DEFAULT_LAYERS))}, clipped to the model's "
             "depth)")
    save_dir: str = flag("outputs/brain_alignment", group="output", resumable=True,
                         help="parent of the results folder")
    resume: bool = flag(False, group="output", resumable=True,
                        help="continue a killed run: reuse the (model, layer, analysis) results "
                             "it finished (kept in <save_dir>/.<exp_name>.partial/) if it had "
                             "the same settings; without --resume that folder is refused, and "
                             "--overwrite discards it")

    def __post_init__(self):
        super().__post_init__()
        kind, _ = encoding.voxel_selection(self.voxels)
        if kind == "region" and self.regions is None:
            raise run_utils.UsageError(
                f"--voxels {self.voxels}: a region or group name needs --regions (a file or a "
                "source: overlays, annot, aparc); else give 'all' or 'nc>T'")
        self.finish_outputs(self.model_name, self.subject)


def parse_args(argv=None):
    return arguments.parse(Settings, argv, section="evaluate", docs="docs/alignment.md",
                           description="Brain alignment of pretrained and brain-tuned speech "
                                       "models (ds003020): per layer, how well a ridge encoding "
                                       "model of its features predicts the held-out story's "
                                       "fMRI (docs/method.md).")


def run(settings):
    """Evaluate, in this process and the others of its torchrun process group (if any)."""
    with processes.process_group(settings.device) as group:
        return evaluate(settings, group)


def evaluate(settings, group):
    """The whole run; rank 0 locks, writes and prints the results (the others return None)."""
    out_dir = Path(settings.save_dir) / settings.exp_name
    run_utils.check_replaceable(out_dir, settings.overwrite)  # before any expensive work
    with group.folder_lock(out_dir):  # held for the run's life
        # inputs: the dataset, its stories and the encoding problem, all checked
        dataset = settings.open_dataset()
        subject = dataset.subject_id(settings.subject)
        dtype = processes.autocast_dtype(settings.precision, group.device)
        stories = encoding.training_stories(dataset, subject, settings.train_stories,
                                            settings.test_story)
        task, voxel_facts = encoding.encoding_task(settings, dataset, subject, stories)
        models = speech_models.checked_models(settings, settings.layers)  # before extraction
        departures = alignment_outputs.departures(settings, dtype, models)
        for departure in departures:
            logger.info("not the paper's protocol: %(setting)s %(value)s (the paper's: "
                        "%(paper)s)", departure)
        # what a resumed run keeps, and the stimulus features every model shares
        keep = finished_results.result_settings(settings, dataset, subject, stories, dtype)
        partial = finished_results.partial_folder(out_dir)
        with processes.main_process_first():  # the others read what rank 0 kept or left
            finished = (finished_results.FinishedResults.open(
                partial, keep, settings.resume, settings.overwrite) if group.is_main
                else finished_results.FinishedResults(partial, keep))
            stimulus = alignment_analyses.stimulus_features(
                dataset, stories, settings.test_story, settings.cache_dir, settings.low_level,
                settings.phonetic_features,
                settings.word_vectors if settings.semantic_preference else None,
                settings.ngram_vocab_size,
                settings.semantic_features if settings.semantic_preference else None)
        # every model's layers and analyses
        all_results, fingerprints = {}, {}
        low_level_alone = {}  # the low-level sets' own predictions, the same for every model
        for label, checkpoint in models:
            all_results[label], fingerprints[label] = alignment_analyses.evaluate_model(
                label, checkpoint, settings.layers, dataset, settings.extraction(dtype),
                settings.cache_dir, task, stimulus, finished, settings.low_level,
                settings.low_level_alphas, group.device, settings.low_level_method,
                settings.partition_ratios, low_level_alone)
        if not group.is_main:
            return None
        # the results folder, written whole
        facts = {"subject": subject, "train_stories": stories, "test_story": settings.test_story,
                 "models": dict(models), **voxel_facts,
                 "protocol": alignment_outputs.protocol(settings),
                 "departures": departures}
        inputs = {**keep["input files"], "model_fingerprints": fingerprints}  # the manifest
        with run_utils.output_folder(out_dir, settings.overwrite) as staging:
            run_utils.write_json(staging / "run_config.json", run_utils.run_config(
                arguments.as_dict(settings), **facts, inputs=inputs,
                processes=group.world_size))
            rows, comparisons, preference_rows, partition_rows = alignment_outputs.write_results(
                staging, all_results, facts, task)
            if settings.flatmap_layers:
                alignment_outputs.write_run_flatmaps(
                    staging, all_results, rows, settings.flatmap_layers, dataset, subject, task,
                    settings.cache_dir, settings.flatmap_height)
        finished.remove()
        alignment_outputs.print_tables(rows, comparisons, preference_rows, partition_rows)
        logger.info("results in %s", out_dir)
        return out_dir


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
