"""Collect a pipeline run's results into one Markdown report and a summary JSON.

    python report.py --out outputs/demo --alignment outputs/demo/alignment/tiny-wav2vec2_UTS01 \\
        --downstream outputs/demo/downstream/tiny-wav2vec2_phonemes --data_dir outputs/demo/data \\
        [--tuned final]

Reads the outputs of ``brain_evaluate.py`` (``--alignment``, results folders of the
``results_schema`` format, with its reliance and semantic-preference results when it ran them)
and of the ``eval_*.py`` probes (``--downstream``, any number) and writes ``<out>/report.md``
(tables per model and layer, the plots; ``report_markdown``) and ``<out>/summary.json``
(``report_summary``). Models keep the labels of the alignment run in every table (a probe
that labelled the same checkpoint otherwise is shown under the alignment run's label).

The pretrained model is compared with the tuned model ``--tuned`` names (needed when the
alignment run holds several), at the deepest layer evaluated; the report says plainly where
the comparison goes against the paper's expected direction (brain-tuning raises alignment and
the semantic preference, and lowers the drop when low-level features are removed), and
explains drops above 100% (cc_norm turned negative) and undefined ones (cc_norm before <= 0).
``summary.json`` records the compared labels and checkpoints, their headline numbers and
``expected_direction``. Every mean is over the voxels whose noise ceiling exceeds the run's
``--nc_thr`` and whose test responses vary (of those it fitted: a run with ``--voxels`` fits a
selection, which the report names); each cell shows how many (n), and the mean's
block-bootstrap interval where the run computed one. Only these voxel means of encoding models
fitted on all training rows make the headline numbers and tables
(``report_summary.headline_rows``); the follow-up paper's parcel means appear in the section on
the tuned-minus-pretrained intervals, the fits on fewer training rows in the data-efficiency
table. The report states the run's protocol (test target, normaliser, alpha score, TR source)
and whether each choice is the authors'
(docs/method.md#where-our-defaults-differ-from-the-authors-code).

With several ``--alignment`` folders (one per subject) the first is the one reported in detail;
a section across subjects adds each subject's mean cc_norm of both models per layer and the
Wilcoxon signed-rank test of the gains (with the smallest p that many subjects allow).

On a synthetic dataset (``--data_dir`` holding ``synthetic_truth.json``) the same rule picks
the planted semantic, acoustic and noise voxels, and the report explains what the planted
signal predicts.
"""

import dataclasses
import logging
import sys
from pathlib import Path

import arguments
import data_utils
import model_cards
import plots
import report_markdown
import report_summary
import results_schema
import run_utils
from arguments import flag

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The report's settings."""

    out: str = flag(help="folder of report.md and summary.json")
    alignment: list[str] = flag(
        metavar="FOLDER",
        help="brain_evaluate.py results folders (results.json, run_config.json, the per-voxel "
             "files); the first is reported in detail, and with several (one per subject) a "
             "section compares the models across subjects (Wilcoxon signed-rank test of the "
             "gains)")
    tuned: str | None = flag(
        None, metavar="LABEL",
        help="label of the tuned model to compare with the pretrained one, as in the alignment "
             "results (e.g. 'final', 'epoch 4'); needed when an alignment run holds several "
             "tuned models; the same in every --alignment folder")
    downstream: list[str] = flag([], nargs="*",
                                 help="eval_*.py results folders (holding results.json)")
    data_dir: str | None = flag(
        None, help="the dataset; when it is synthetic, planted-voxel summaries are added (over "
                   "the voxels above the run's --nc_thr whose test responses vary)")
    title: str = flag("Brain-tuning report", help="report title")
    model_card: bool = flag(False, help="also write the alignment results into the tuned "
                                        "model's card (README.md of the --tuned checkpoint, "
                                        "which brain_trainer_story.py wrote), replacing an "
                                        "earlier report's; docs/brain-tuning.md#model-cards")
    overwrite: bool = flag(False, help="replace an existing report")


def parse_args(argv=None):
    return arguments.parse(Settings, argv, docs="docs/alignment.md", description=(
        "Write report.md and summary.json from brain_evaluate.py and eval_*.py results: the "
        "pretrained model against the --tuned one (with intervals where the run has them), "
        "where they go against the paper's expected direction, whether the run followed the "
        "authors' protocol, and, given one alignment run per subject, the gains across "
        "subjects."))


def run(settings):
    out = Path(settings.out)
    if (out / "report.md").exists() and not settings.overwrite:
        raise run_utils.OutputExistsError(f"{out / 'report.md'} exists; pass --overwrite")
    alignments = [results_schema.read_results_folder(folder) for folder in settings.alignment]
    alignment = alignments[0]
    roles = report_summary.compared_models(alignment, settings.tuned)
    downstream = {folder: report_summary.read_probe(folder, alignment.results.models)
                  for folder in settings.downstream}
    truth = planted = None
    if settings.data_dir is not None:
        dataset = data_utils.Dataset(settings.data_dir)
        truth_path = dataset.root / report_summary.TRUTH_FILE
        if truth_path.is_file():
            truth = dataset.truth()
            planted = report_summary.planted_scores(
                alignment, truth, truth_path,
                report_summary.scored_voxels(alignment, alignment.results.subject_voxels))
    summary = report_summary.summarise(alignment, roles, planted, list(downstream.values()))
    card = model_cards.card_file(summary["checkpoints"]["tuned"]) if settings.model_card else None
    if len(alignments) > 1:
        summary["across_subjects"] = report_summary.across_subjects(
            alignments, roles, summary["layer"], settings.tuned)
    runs = report_summary.training_runs(alignment)
    curves = out / "training_curves.png" if runs else None
    if curves is not None:
        plots.plot_training_curves(curves, runs, "Brain-tuning: loss and validation "
                                                 "correlation per epoch")
    text = report_markdown.render(out, alignment, planted, downstream, summary, settings.title,
                                  truth, curves)
    run_utils.write_json(out / "summary.json", {
        **summary, **run_utils.run_config(arguments.as_dict(settings))}, overwrite=True)
    run_utils.write_text(out / "report.md", text, overwrite=True)
    logger.info("wrote %s and %s", out / "report.md", out / "summary.json")
    if card is not None:
        model_cards.add_alignment(card, report_markdown.model_card_lines(summary, alignment))
        logger.info("added the brain alignment to the model card %s", card)


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
