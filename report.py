"""Collect a pipeline run's results into one Markdown report and a summary JSON.

    python report.py --out outputs/demo --alignment outputs/demo/alignment/tiny-wav2vec2_UTS01 \\
        --downstream outputs/demo/downstream/tiny-wav2vec2_phonemes --data_dir outputs/demo/data \\
        [--tuned final]

Reads the outputs of ``brain_evaluate.py`` (``--alignment``, with its reliance and semantic-
preference results when it ran them) and of the ``eval_*.py`` probes (``--downstream``, any
number) and writes ``<out>/report.md`` (tables per model and layer, the plots) and
``<out>/summary.json``. Models keep the labels of the alignment run in every table (a probe
that labelled the same checkpoint otherwise is shown under the alignment run's label).

The pretrained model is compared with the tuned model ``--tuned`` names (needed when the
alignment run holds several), at the deepest layer evaluated; the report says plainly where
the comparison goes against the paper's expected direction (brain-tuning raises alignment and
the semantic preference, and lowers the drop when low-level features are removed), and
explains drops above 100% (cc_norm turned negative) and undefined ones (cc_norm before <= 0).
``summary.json`` records the compared labels and checkpoints, their headline numbers and
``expected_direction``. Every mean is over the voxels whose noise ceiling exceeds the run's
``--nc_thr`` (from its ``run_config.json``) and whose test responses vary (of those it fitted:
a run with ``--voxels`` fits a selection, which the report names); each cell shows how
many (n), where the alignment results record it, and the mean's block-bootstrap interval where
they record one. Only these voxel means of encoding models fitted on all training rows make
the headline numbers and tables (``headline_rows``); the follow-up paper's parcel means appear
in the section on the tuned-minus-pretrained intervals, the fits on fewer training rows in the
data-efficiency table. The report states the run's protocol (test target, normaliser, alpha
score, TR source) and whether each choice is the authors'.

With several ``--alignment`` folders (one per subject) the first is the one reported in detail;
a section across subjects adds each subject's mean cc_norm of both models per layer and the
Wilcoxon signed-rank test of the gains (with the smallest p that many subjects allow).

On a synthetic dataset (``--data_dir`` holding ``synthetic_truth.json``) the same rule picks
the planted semantic, acoustic and noise voxels, and the report explains what the planted
signal predicts.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import scipy.stats

import data_utils
import eval_utils
import run_utils
from data_utils import DatasetError
from run_utils import UsageError

logger = logging.getLogger(__name__)

VOXEL_TYPES = ("semantic", "acoustic", "noise")
# summary entry -> (what it measures, the direction brain-tuning should move it in the paper)
EXPECTED_DIRECTION = {"cc_norm": ("brain alignment (mean cc_norm)", "higher"),
                      "semantic_cc_norm": ("planted semantic voxels (mean cc_norm)", "higher"),
                      "semantic_preference": ("semantic preference", "higher")}
DROP_ABOVE_100 = ("A drop above 100% means cc_norm became negative once the features were "
                  "removed: what is left of the layer's features predicts the test story worse "
                  "than chance.")
DROP_UNDEFINED = ("A drop is relative to the cc_norm before removal and is undefined where that "
                  "is <= 0 (or missing).")
# results.json "protocol" choice -> (what it is, {value: the value in words})
PROTOCOL_CHOICES = {
    "test_target": ("test target", {
        "repeats_mean": "the mean over the test story's repeats",
        "data": "the `data` rows of the test story's response file"}),
    "normalise_by": ("normaliser", {
        "test_repeats": "cc_max from the scored rows of the test story's repeats",
        "nc_file": "cc_max from the noise-ceiling file (the follow-up paper's normaliser)"}),
    "alpha_score": ("alpha score", {
        "r2": "the signed square root of held-out R2, as the Huth lab's bootstrap_ridge",
        "corr": "held-out correlation"}),
    "tr_source": ("TR source", {
        "respdict": "a simulated 2 s grid from respdict.json",
        "report": "measured trigger times from the .report files",
        "trfiles": "measured trigger times from the TR files of Antonello et al."})}
# the authors' values of each choice (SPEC section 4)
AUTHORS_PROTOCOL = {"test_target": ("repeats_mean",), "normalise_by": ("test_repeats",),
                    "alpha_score": ("r2",), "tr_source": ("trfiles", "report")}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Write report.md and summary.json from brain_evaluate.py and eval_*.py "
                    "results: the pretrained model against the --tuned one (with intervals "
                    "where the run has them), where they go against the paper's expected "
                    "direction, whether the run followed the authors' protocol, and, given "
                    "one alignment run per subject, the gains across subjects.",
        formatter_class=run_utils.HelpFormatter)
    parser.add_argument("--out", required=True, help="folder of report.md and summary.json")
    parser.add_argument("--alignment", required=True, nargs="+", metavar="FOLDER",
                        help="brain_evaluate.py results folders (results.json, run_config.json, "
                             "the per-voxel files); the first is reported in detail, and with "
                             "several (one per subject) a section compares the models across "
                             "subjects (Wilcoxon signed-rank test of the gains)")
    parser.add_argument("--tuned", default=None, metavar="LABEL",
                        help="label of the tuned model to compare with the pretrained one, as in "
                             "the alignment results (e.g. 'final', 'epoch 4'); needed when an "
                             "alignment run holds several tuned models; the same in every "
                             "--alignment folder")
    parser.add_argument("--downstream", nargs="*", default=[],
                        help="eval_*.py results folders (holding results.json)")
    parser.add_argument("--data_dir", default=None,
                        help="the dataset; when it is synthetic, planted-voxel summaries are added "
                             "(over the voxels above the run's --nc_thr whose test responses vary)")
    parser.add_argument("--title", default="Brain-tuning report", help="report title")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    return parser.parse_args(argv)


def run(args):
    out = Path(args.out)
    if (out / "report.md").exists() and not args.overwrite:
        raise run_utils.OutputExistsError(f"{out / 'report.md'} exists; pass --overwrite")
    alignments = [read_alignment(Path(folder)) for folder in args.alignment]
    alignment = alignments[0]
    roles = compared_models(alignment, args.tuned)
    downstream = {folder: with_alignment_labels(read_results(folder), folder,
                                                alignment.results["models"])
                  for folder in args.downstream}
    truth = planted = None
    truth_path = Path(args.data_dir or "") / "synthetic_truth.json"
    if args.data_dir and truth_path.exists():
        truth = data_utils.load_truth(args.data_dir)
        planted = planted_scores(alignment, truth, truth_path,
                                 scored_voxels(alignment, alignment.results["subject_voxels"]))
    summary = summarise(alignment, roles, planted, list(downstream.values()))
    if len(alignments) > 1:
        summary["across_subjects"] = across_subjects(alignments, roles, summary["layer"],
                                                     args.tuned)
    text = render(out, alignment, planted, downstream, summary, args.title, truth)
    run_utils.write_json(out / "summary.json", {**summary, **run_utils.run_config(args)},
                         overwrite=True)
    run_utils.write_text(out / "report.md", text, overwrite=True)
    logger.info("wrote %s and %s", out / "report.md", out / "summary.json")


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


class Alignment(NamedTuple):
    """A brain_evaluate.py results folder."""
    folder: Path
    results: dict  # results.json: subject, train_stories, models, results, ... (see headline_rows)
    arguments: dict  # the run's arguments (run_config.json)


class Planted(NamedTuple):
    """Mean cc_norm over the planted voxel types that pass the voxel rule."""
    counts: dict  # type -> number of voxels averaged
    means: dict  # model -> analysis -> layer -> {type: mean cc_norm}


def read_results(folder, name="results.json"):
    """A JSON file of a results folder of brain_evaluate.py or an eval_*.py script."""
    path = Path(folder) / name
    if not path.is_file():
        raise UsageError(f"{path}: missing; is {folder} a results folder of brain_evaluate.py "
                         "or an eval_*.py script?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid JSON ({err}); run the script again") from None


def read_alignment(folder):
    """The results and arguments of a brain_evaluate.py results folder."""
    results = read_results(folder)
    config = read_results(folder, "run_config.json")
    missing = [key for key in ("subject", "models", "results") if key not in results]
    if missing or "arguments" not in config:
        raise UsageError(f"{folder}: results.json or run_config.json lacks "
                         f"{', '.join(missing) or 'arguments'}; is it a brain_evaluate.py "
                         "results folder?")
    return Alignment(folder, results, config["arguments"])


def _aggregation(row):
    """"voxel_mean" or "parcel_mean"; results of older runs hold only voxel means."""
    return row.get("aggregation", "voxel_mean")


def _train_fraction(row):
    """The fraction of the training rows the encoding model was fitted on (older runs: all)."""
    return row.get("train_fraction", 1.0)


def headline_rows(rows):
    """The rows every summary and table of the models uses: means over the voxels above the
    noise-ceiling threshold ("voxel_mean") of encoding models fitted on all training rows."""
    return [row for row in rows if _aggregation(row) == "voxel_mean" and _train_fraction(row) == 1]


def compared_models(alignment, tuned=None):
    """Labels of the compared models: {"pretrained": "pretrained", "tuned": label}, the
    tuned one named by ``tuned``, else the only tuned model of the run, else its only model
    brain-tuned on fMRI (the others being baselines tuned towards other targets,
    ``tuning_target``)."""
    rows = headline_rows(alignment.results["results"])
    labels = list(dict.fromkeys(row["model"] for row in rows))
    candidates = [label for label in labels if label != "pretrained"]
    where = alignment.folder / "results.json"
    listed = ", ".join(repr(label) for label in candidates)
    if "pretrained" not in labels or not candidates:
        raise UsageError(f"{where}: holds {', '.join(map(repr, labels)) or 'no model'}; the "
                         "report compares 'pretrained' with a tuned model, so evaluate both")
    if tuned is None and len(candidates) > 1:
        on_fmri = [label for label in candidates
                   if tuning_target(alignment.results["models"].get(label)) == "fMRI"]
        if len(on_fmri) == 1:
            return {"pretrained": "pretrained", "tuned": on_fmri[0]}
        raise UsageError(f"{where}: several tuned models ({listed}); pass --tuned with the one "
                         "to compare with 'pretrained'")
    if tuned is not None and tuned not in candidates:
        raise UsageError(f"--tuned {tuned!r}: not a tuned model of {where}; its tuned models "
                         f"are {listed}")
    return {"pretrained": "pretrained", "tuned": tuned or candidates[0]}


def tuning_target(checkpoint):
    """What a tuned checkpoint was brain-tuned towards, from its ``brain_tuning.json``:
    "fMRI", the random-fMRI control ("random_fmri_all", ...), or for a ``--target_features``
    file "<kind> features of <model>" (``target_features.py``: speech = BigSLM-tuned, text =
    LM-tuned) or its file name; None when the folder is no brain-tuning checkpoint."""
    try:
        arguments = json.loads((Path(checkpoint) / "brain_tuning.json").read_text())["arguments"]
    except (TypeError, OSError, ValueError, KeyError):
        return None
    features = arguments.get("target_features")
    if not features:
        return "fMRI" if arguments.get("target", "fmri") == "fmri" else arguments["target"]
    try:
        with h5py.File(features, "r") as handle:
            kind, model = str(handle.attrs["kind"]), str(handle.attrs["model"])
    except (OSError, KeyError):
        return f"features of {Path(features).name}"
    role = {"speech": "BigSLM-tuned", "text": "LM-tuned"}.get(kind, kind)
    return f"{kind} features of {Path(model).name} ({role})"


def _resolved(checkpoint):
    return run_utils.resolve_checkpoint(checkpoint).resolve()


def with_alignment_labels(probe, folder, alignment_models):
    """A probe's results.json with each model under the alignment run's label for the same
    checkpoint (``alignment_models``: label -> checkpoint); ``probe["relabelled"]`` maps the
    probe's own labels that changed. A probe label that means another checkpoint in the
    alignment run is a UsageError (one label, one model)."""
    by_checkpoint = {_resolved(path): label for label, path in alignment_models.items()}
    renamed = {}
    for label, path in probe.get("models", {}).items():
        same = by_checkpoint.get(_resolved(path))
        if same is None and label in alignment_models:
            raise UsageError(f"{Path(folder) / 'results.json'}: {label!r} is {path} there but "
                             f"{alignment_models[label]} in the alignment run; pass probe "
                             "results of the alignment run's models")
        if same is not None and same != label:
            renamed[label] = same
    rows = [{**row, "model": renamed.get(row["model"], row["model"])} for row in probe["results"]]
    return {**probe, "results": rows, "relabelled": renamed}


def scored_voxels(alignment, n_voxels):
    """Mask (n_voxels,) of the voxels every summary averages over, as the alignment run saved
    them (``summary_voxels.npy``: noise ceiling above its --nc_thr and test responses that
    vary over the scored rows), so that every column here uses the evaluator's own rule."""
    path = alignment.folder / run_utils.SUMMARY_VOXELS_NAME
    if not path.is_file():
        raise UsageError(f"{path}: missing; the alignment results were written by an older "
                         "version: run brain_evaluate.py again")
    indices = np.load(path)
    if indices.size and (indices.min() < 0 or indices.max() >= n_voxels):
        raise UsageError(f"{path}: voxel indices beyond the {n_voxels} voxels of the per-voxel "
                         "results; the folder is damaged: run brain_evaluate.py again")
    voxels = np.zeros(n_voxels, bool)
    voxels[indices] = True
    return voxels


def planted_scores(alignment, truth, truth_path, voxels):
    """Mean cc_norm over the planted voxel types (``truth``, read from ``truth_path``) within
    the ``voxels`` mask, per model, analysis and layer; voxels the run did not fit (NaN, see
    ``brain_evaluate.py --voxels``) are left out."""
    subject = alignment.results["subject"]
    if subject not in truth["subjects"]:
        raise DatasetError(f"{truth_path}: no subject {subject}; pass the --data_dir the "
                           "alignment run evaluated")
    planted = {}
    for kind in VOXEL_TYPES:
        indices = np.asarray(truth["subjects"][subject][f"{kind}_voxels"], dtype=np.intp)
        if indices.size and indices.max() >= voxels.size:
            raise DatasetError(f"{truth_path}: {kind} voxel {indices.max()} is beyond the "
                               f"{voxels.size} voxels of {subject}'s responses; pass the "
                               "--data_dir the alignment run evaluated")
        planted[kind] = indices[voxels[indices]]
    means = {}
    for row in headline_rows(alignment.results["results"]):
        if row["region"] != "all":
            continue
        path = alignment.folder / run_utils.voxel_results_name(row["model"], row["layer"],
                                                                row["low_level"])
        cc_norm = np.load(path)["cc_norm"]
        if cc_norm.shape != voxels.shape:
            raise UsageError(f"{path}: {cc_norm.size} voxels but the responses have "
                             f"{voxels.size}; pass the --data_dir the alignment run evaluated")
        means.setdefault(row["model"], {}).setdefault(row["low_level"], {})[row["layer"]] = {
            kind: _fitted_mean(cc_norm[indices]) for kind, indices in planted.items()}
    return Planted({kind: int(indices.size) for kind, indices in planted.items()}, means)


def _fitted_mean(values):
    """The mean of the fitted (not NaN) ``values``; NaN when there is none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def fitted_voxels_note(results):
    """The sentence saying which voxels a run fitted (results.json ``fitted_voxels``), or
    None when it fitted every voxel (or is older than ``--voxels``)."""
    fitted = results.get("fitted_voxels")
    if not fitted or fitted.get("selection", "all") == "all":
        return None
    selection = fitted["selection"]
    what = (f"the voxels whose noise ceiling is above {selection[3:]}"
            if selection.startswith("nc>") else
            f"the voxels of `{selection}` (a region or group of the run's --regions)")
    total = results.get("subject_voxels")
    return (f"Only {what} were fitted (`--voxels {selection}`: {fitted['n']}"
            + (f" of {total}" if total is not None else "") + " voxels); every mean and "
            "fraction below is over those voxels.")


def _row(rows, **match):
    """The first row matching every ``match`` item, or None."""
    return next((row for row in rows if all(row[k] == v for k, v in match.items())), None)


def summarise(alignment, roles, planted, downstream):
    """summary.json: the headline numbers of the compared models at the deepest layer both
    have, and how each compares with the paper's expected direction."""
    results = alignment.results
    headline = headline_rows(results["results"])
    layers = [{row["layer"] for row in headline if row["model"] == model}
              for model in roles.values()]
    layer = max(set.intersection(*layers))
    summary = {"layer": layer, "models": roles,
               "checkpoints": {role: results["models"].get(model) for role, model in roles.items()},
               "test_story": alignment.arguments["test_story"],
               "nc_thr": alignment.arguments["nc_thr"]}
    if "excluded_voxels" in results:
        summary["excluded_voxels"] = results["excluded_voxels"]
    if planted:
        summary["planted_voxels"] = planted.counts
    for role, model in roles.items():
        rows = [r for r in headline if r["model"] == model and r["layer"] == layer
                and r["region"] == "all"]
        baseline = _row(rows, low_level="none")
        entry = {"cc_norm": baseline["cc_norm"]}
        if baseline.get("n_voxels") is not None:
            entry["n_voxels"] = baseline["n_voxels"]
        if baseline.get("cc_norm_ci_low") is not None:
            entry["cc_norm_ci"] = [baseline["cc_norm_ci_low"], baseline["cc_norm_ci_high"]]
        if baseline.get("significant_fraction") is not None:
            entry["significant_fraction"] = baseline["significant_fraction"]
        for row in rows:
            if row["low_level"] != "none":
                entry[f"drop_percent_without_{row['low_level']}"] = row["drop_percent"]
        if planted:
            scores = planted.means[model]
            for kind, value in scores["none"][layer].items():
                entry[f"{kind}_cc_norm"] = value
            for analysis, by_layer in scores.items():
                if analysis != "none":
                    for kind in ("semantic", "acoustic"):
                        entry[f"{kind}_drop_percent_without_{analysis}"] = eval_utils.percent_drop(
                            scores["none"][layer][kind], by_layer[layer][kind])
        preference = _row(results.get("semantic_preference", []), model=model, layer=layer)
        if preference is not None:
            entry["semantic_preference"] = preference["preference"]
        for probe in downstream:
            score = probe_score(probe)
            best = max((r for r in probe["results"] if r["model"] == model),
                       key=lambda r: r[score], default=None)
            if best is not None:
                entry[f"{probe['task']}_{score}_best_layer"] = best[score]
        summary[role] = entry
    if planted:
        before = summary["pretrained"]["semantic_cc_norm"]
        after = summary["tuned"]["semantic_cc_norm"]
        summary["semantic_cc_norm_gain"] = after - before
        summary["semantic_cc_norm_gain_percent"] = (100.0 * (after - before) / abs(before)
                                                    if before else None)
    summary["expected_direction"] = expected_direction(summary["pretrained"], summary["tuned"])
    comparison = _row(headline_rows(tuned_comparisons(results, roles)), layer=layer,
                      region="all")
    if comparison is not None:
        summary["comparison"] = {
            "difference": comparison["difference"],
            "ci": [comparison["ci_low"], comparison["ci_high"]],
            "excludes_zero": _excludes_zero(comparison["ci_low"], comparison["ci_high"])}
    if "protocol" in results:
        summary["protocol"] = {**results["protocol"],
                               "follows_authors": follows_authors(results["protocol"])}
    return summary


def tuned_comparisons(results, roles):
    """The "comparisons" of results.json of the tuned model against the pretrained one, without
    low-level features removed (none in older results)."""
    return [row for row in results.get("comparisons", []) if row["model"] == roles["tuned"]
            and row["baseline"] == roles["pretrained"] and row["low_level"] == "none"]


def _confidence(results):
    """The confidence level of the run's intervals (older runs: the evaluator's 95%)."""
    return results.get("protocol", {}).get("confidence", 0.95)


def _excludes_zero(low, high):
    """Whether the interval [low, high] leaves out 0 (None where it is missing)."""
    if not (_finite(low) and _finite(high)):
        return None
    return bool(low > 0 or high < 0)


def follows_authors(protocol):
    """Per protocol choice the run records: whether it is the authors' (AUTHORS_PROTOCOL)."""
    return {key: protocol[key] in values for key, values in AUTHORS_PROTOCOL.items()
            if key in protocol}


def across_subjects(alignments, roles, layer, tuned):
    """Per layer every run has for both compared models: each subject's mean cc_norm (region
    all, no feature removed), the gains and the Wilcoxon signed-rank test over subjects.

    ``roles`` and ``layer`` are those of the first run; a run of a subject already given, or
    one without the same compared models or without ``layer``, is a UsageError."""
    folders, scores = {}, []
    for alignment in alignments:
        where = alignment.folder / "results.json"
        subject = alignment.results["subject"]
        if subject in folders:
            raise UsageError(f"{alignment.folder}: subject {subject} again (also in "
                             f"{folders[subject]}); pass one alignment run per subject")
        folders[subject] = alignment.folder
        own = compared_models(alignment, tuned)
        if own != roles:
            raise UsageError(f"{where}: its tuned model is {own['tuned']!r} but "
                             f"{alignments[0].folder} compares {roles['tuned']!r}; pass runs of "
                             "the same tuned model (or name it with --tuned)")
        means = {(row["model"], row["layer"]): row["cc_norm"]
                 for row in headline_rows(alignment.results["results"])
                 if row["region"] == "all" and row["low_level"] == "none"}
        if any((model, layer) not in means for model in roles.values()):
            raise UsageError(f"{where}: no layer {layer} results of both {roles['pretrained']!r} "
                             f"and {roles['tuned']!r}; pass runs that evaluated the layers of "
                             f"{alignments[0].folder}")
        scores.append(means)
    layers = sorted(set.intersection(*[{k for m, k in means if m == model}
                                       for means in scores for model in roles.values()]))
    summary = {}
    for k in layers:
        pretrained = [means[(roles["pretrained"], k)] for means in scores]
        tuned_scores = [means[(roles["tuned"], k)] for means in scores]
        statistic, p_value = wilcoxon_test(tuned_scores, pretrained)
        summary[k] = {"subjects": list(folders), "pretrained": pretrained,
                      "tuned": tuned_scores, "gain": _gains(tuned_scores, pretrained).tolist(),
                      "wilcoxon_statistic": statistic, "p_value": p_value,
                      "min_possible_p": 2.0 / 2 ** len(scores)}
    return summary


def _gains(tuned, pretrained):
    """tuned - pretrained per subject (NaN where a mean is missing)."""
    return np.asarray(tuned, dtype=float) - np.asarray(pretrained, dtype=float)


def wilcoxon_test(tuned, pretrained):
    """(statistic, p) of ``scipy.stats.wilcoxon(tuned, pretrained)`` (two-sided); (None, None)
    where it cannot run: every gain zero, or one undefined."""
    gains = _gains(tuned, pretrained)
    if not np.all(np.isfinite(gains)) or not np.any(gains):
        return None, None
    result = scipy.stats.wilcoxon(tuned, pretrained)
    return float(result.statistic), float(result.pvalue)


def _expectation(key):
    """(what ``key`` of a summary entry measures, "higher" or "lower"), or None when the paper
    states no direction for it."""
    if key in EXPECTED_DIRECTION:
        return EXPECTED_DIRECTION[key]
    if key.startswith("drop_percent_without_"):
        return f"drop without {key[len('drop_percent_without_'):]} (%)", "lower"
    return None


def _finite(value):
    return value is not None and bool(np.isfinite(value))


def expected_direction(pretrained, tuned):
    """Per summary entry the paper states a direction for: the expected direction, both
    values and ``as_expected`` (None where a value is missing or undefined)."""
    checks = {}
    for key in pretrained:
        expectation = _expectation(key)
        if expectation is None or key not in tuned:
            continue
        before, after = pretrained[key], tuned[key]
        holds = None
        if _finite(before) and _finite(after):
            holds = after > before if expectation[1] == "higher" else after < before
        checks[key] = {"expected": expectation[1], "pretrained": before, "tuned": after,
                       "as_expected": holds}
    return checks


def _number(value):
    """Three decimals; "n/a" for a missing or non-finite value."""
    return f"{value:.3f}" if _finite(value) else "n/a"


def _drop(value):
    """A drop in percent; "undefined" where there is none (see DROP_UNDEFINED)."""
    return f"{value:.1f}%" if _finite(value) else "undefined"


def _counted(text, n):
    """A table cell with the number of voxels averaged, when known: "0.194 (n=41)"."""
    return text if n is None else f"{text} (n={n})"


def _interval(low, high):
    """" [0.120, 0.180]"; nothing where the interval is missing."""
    return "" if low is None or high is None else f" [{_number(low)}, {_number(high)}]"


def _cell(row, key, format_value=_number):
    """A row's value with its interval and voxel count, where recorded:
    "0.150 [0.120, 0.180] (n=41)"."""
    if row is None:
        return "n/a"
    interval = _interval(row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high"))
    return _counted(format_value(row[key]) + interval, row.get("n_voxels"))


def _p(value):
    """A p-value to four significant digits; "n/a" where there is none."""
    return f"{value:.4g}" if _finite(value) else "n/a"


def _drop_notes(drops):
    """The explanations the drops shown need: above 100%, undefined."""
    notes = []
    if any(_finite(d) and d > 100 for d in drops):
        notes.append(DROP_ABOVE_100)
    if any(not _finite(d) for d in drops):
        notes.append(DROP_UNDEFINED)
    return [" ".join(notes), ""] if notes else []


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_number(v) if isinstance(v, float) else str(v)
                                       for v in row) + " |")
    return "\n".join(lines)


def _image(out, path, caption):
    return f"![{caption}]({os.path.relpath(path, out)})" if Path(path).exists() else ""


def render(out, alignment, planted, downstream, summary, title, truth):
    """The report's Markdown text (``downstream``: folder -> its results.json)."""
    config, results = alignment.arguments, alignment.results
    excluded = (f" ({results['excluded_voxels']} voxels left out because their test responses "
                "are constant or NaN)" if "excluded_voxels" in results else "")
    lines = [f"# {title}", "",
             f"Subject {results['subject']}; encoding models fitted on "
             f"{len(results['train_stories'])} stories, tested on {config['test_story']}; "
             f"means over voxels with a noise ceiling above {config['nc_thr']} and test "
             f"responses that vary{excluded}; n is the number of voxels averaged. Models: "
             + ", ".join(f"**{label}** (`{path}`)" for label, path in results["models"].items())
             + ".", "", *_protocol_section(results.get("protocol")),
             *_direction_section(summary), *_comparison_section(out, alignment, summary),
             *_baselines_section(alignment, summary)]
    headline = headline_rows(results["results"])
    models = list(dict.fromkeys(r["model"] for r in headline))
    rows = [r for r in headline if r["low_level"] == "none"]
    regions = reported_regions(results, rows)
    layers = sorted({r["layer"] for r in rows})
    lines += ["## Brain alignment", ""]
    note = fitted_voxels_note(results)
    if note:
        lines += [note, ""]
    if any(r.get("cc_norm_ci_low") is not None for r in rows):
        lines += [f"In brackets: the {_confidence(results):.0%} block-bootstrap interval of the "
                  "mean over the test story's time.", ""]
    for region in regions:
        lines += [f"Mean cc_norm, region `{region}`:", "",
                  _table(["model", *[f"layer {k}" for k in layers]],
                         [[m, *[_cell(_row(rows, model=m, layer=k, region=region), "cc_norm")
                                for k in layers]] for m in models]), ""]
    significant = [r for r in rows if r["region"] == "all"
                   and r.get("significant_fraction") is not None]
    if significant:
        q = results.get("protocol", {}).get("fdr_q", 0.05)
        lines += ["Fraction of those voxels whose permutation p-value survives "
                  f"Benjamini-Hochberg FDR at q = {q}, region `all`:", "",
                  _table(["model", *[f"layer {k}" for k in layers]],
                         [[m, *[_cell(_row(significant, model=m, layer=k),
                                      "significant_fraction", lambda v: f"{v:.0%}")
                                for k in layers]] for m in models]), ""]
    lines += [_image(out, alignment.folder / "alignment.png", "alignment per layer"), ""]
    if planted:
        lines += ["### Planted voxels (synthetic data)", "",
                  "Mean cc_norm over the planted voxels of each type that pass the same rule "
                  "(noise voxels respond to nothing, so few or none clear the noise-ceiling "
                  "threshold):", "",
                  _table(["model", "layer", *VOXEL_TYPES],
                         [[m, k, *[_counted(_number(planted.means[m]["none"][k][t]),
                                            planted.counts[t]) for t in VOXEL_TYPES]]
                          for m in planted.means for k in layers]), ""]
    lines += _regions_section(out, alignment, summary)
    lines += _efficiency_section(out, alignment, summary)
    if "across_subjects" in summary:
        lines += _across_subjects_section(summary)
    analyses = [a for a in dict.fromkeys(r["low_level"] for r in headline) if a != "none"]
    if analyses:
        lines += _reliance_section(out, alignment, headline, planted, models, layers, analyses)
    if results.get("semantic_preference"):
        lines += ["## Semantic preference", "",
                  "How well each layer predicts the semantic features of the words heard, and "
                  "the phonetic features (held-out story, mean r):", "",
                  _table(["model", "layer", "semantic r", "phonetic r", "preference"],
                         [[r["model"], r["layer"], r["semantic_r"], r["phonetic_r"],
                           r["preference"]] for r in results["semantic_preference"]]), "",
                  _image(out, alignment.folder / "semantic_preference.png",
                         "semantic preference"), ""]
    for folder, probe in downstream.items():
        lines += _probe_section(out, folder, probe)
    lines += ["## Summary", "", "```json", run_utils.json_text(summary, indent=1), "```", ""]
    if truth is not None:
        lines += [_synthetic_explanation(summary, truth)]
    return "\n".join(lines)


def _direction_section(summary):
    """The compared models, whether each headline number moves the paper's way, plainly."""
    roles, layer, checks = summary["models"], summary["layer"], summary["expected_direction"]
    tuned = roles["tuned"]
    against = [key for key, check in checks.items() if check["as_expected"] is False]
    if against:
        verdict = ("**Against the paper's expected direction:** " + "; ".join(
            f"{_expectation(key)[0]} is {checks[key]['tuned']:.3f} for {tuned} and "
            f"{checks[key]['pretrained']:.3f} for pretrained, where brain-tuning should "
            f"make it {checks[key]['expected']}" for key in against) + ".")
    else:
        verdict = "Every comparison with a defined value goes the paper's expected way."
    table = [[_expectation(key)[0],
              *[(_drop if key.startswith("drop") else _number)(check[role])
                for role in ("pretrained", "tuned")], check["expected"],
              {True: "as expected", False: "**against the expected direction**",
               None: "undefined" if key.startswith("drop") else "n/a"}[check["as_expected"]]]
             for key, check in checks.items()]
    drops = [value for key, check in checks.items() if key.startswith("drop")
             for value in (check["pretrained"], check["tuned"])]
    return [f"## {tuned} against pretrained", "",
            f"The tuned model compared is **{tuned}** (`{summary['checkpoints']['tuned']}`), at "
            f"layer {layer}, the deepest evaluated. {verdict}", "",
            _table(["measure", "pretrained", tuned, "paper expects tuned", "here"], table), "",
            *_drop_notes(drops)]


def _protocol_section(protocol):
    """The run's protocol choices in words, each said to be the authors' or not."""
    if protocol is None:
        return []
    follows = follows_authors(protocol)
    items = []
    for key, (what, words) in PROTOCOL_CHOICES.items():
        if key not in protocol:
            continue
        value = protocol[key]
        text = words.get(value, repr(value))
        if key == "tr_source" and value != "respdict" and protocol.get("tr_path"):
            text += f" (`{protocol['tr_path']}`)"
        authors = "authors'" if follows[key] else (
            f"not the authors', which is {words[AUTHORS_PROTOCOL[key][0]]}")
        items.append(f"- {what}: {text} ({authors})")
    if protocol.get("n_bootstrap"):
        items.append(f"- intervals: {protocol['confidence']:.0%}, from {protocol['n_bootstrap']} "
                     f"block-bootstrap resamples of the test story's time (blocks of "
                     f"{protocol['block_len']} TRs)")
    if protocol.get("n_permutations"):
        items.append(f"- significance: {protocol['n_permutations']} permutations per voxel, "
                     f"Benjamini-Hochberg FDR at q = {protocol['fdr_q']}")
    if "followup_ceiling" in protocol:
        items.append("- parcel means (follow-up paper): cc_norm set to 0 where the test-row "
                     f"ceiling is <= {protocol['followup_ceiling']}, averaged over all of a "
                     "region's voxels")
    departs = [PROTOCOL_CHOICES[key][0] for key, same in follows.items() if not same]
    verdict = (f"departs from the authors' in: {', '.join(departs)}." if departs else
               "the authors' in every choice recorded.")
    return [f"**Protocol:** {verdict}", "", *items, ""]


def _comparison_section(out, alignment, summary):
    """The tuned model minus the pretrained one, with intervals, per layer, region and
    aggregation (results.json "comparisons", none in older results)."""
    rows = tuned_comparisons(alignment.results, summary["models"])
    if not rows:
        return []
    tuned = summary["models"]["tuned"]
    confidence = _confidence(alignment.results)
    regions = reported_regions(alignment.results, rows)
    rows = [r for r in rows if r["region"] in regions]
    rows = sorted(rows, key=lambda r: (regions.index(r["region"]), _aggregation(r), r["layer"]))
    cells = []
    for r in rows:
        excludes = _excludes_zero(r["ci_low"], r["ci_high"])
        side = "higher" if excludes and r["ci_low"] > 0 else "lower"
        cells.append([r["region"], _aggregation(r), r["layer"], r["baseline_cc_norm"],
                      r["model_cc_norm"], _number(r["difference"]) + _interval(r["ci_low"],
                                                                               r["ci_high"]),
                      {True: f"yes, {side}", False: "no", None: "n/a"}[excludes]])
    return [f"## {tuned} minus pretrained, with {confidence:.0%} intervals", "",
            f"Mean cc_norm of {tuned} minus that of pretrained, with the {confidence:.0%} "
            "block-bootstrap interval over the test story's time (the same resamples for both "
            "models). `voxel_mean`: the mean over the voxels above the noise-ceiling threshold; "
            "`parcel_mean`: the follow-up paper's, per-voxel cc_norm set to 0 where the test-row "
            "ceiling is low and averaged over all of a region's voxels (a group of regions: the "
            "mean of its regions' means).", "",
            _table(["region", "aggregation", "layer", "pretrained", tuned, "difference",
                    "interval excludes 0"], cells), "",
            _image(out, alignment.folder / "comparison.png", "difference per layer"), ""]


def _baselines_section(alignment, summary):
    """Every tuned model's difference from the pretrained one side by side (region ``all``,
    voxel means), with what each was tuned towards: the brain-tuned model and the baselines
    tuned towards a big speech model's or a text LM's features (``tuning_target``); nothing
    when the run has one tuned model."""
    comparisons = [row for row in alignment.results.get("comparisons", [])
                   if row["baseline"] == "pretrained" and row["low_level"] == "none"
                   and row["region"] == "all" and row["aggregation"] == "voxel_mean"]
    models = list(dict.fromkeys(row["model"] for row in comparisons))
    if len(models) < 2:
        return []
    headline = summary["models"]["tuned"]
    models = [headline] + [m for m in models if m != headline] if headline in models else models
    layers = sorted({row["layer"] for row in comparisons})
    paths = alignment.results["models"]
    cells = [[model, tuning_target(paths.get(model)) or "n/a",
              *[_comparison_cell(comparisons, model, layer) for layer in layers]]
             for model in models]
    return [f"## Brain-tuned and baseline models: minus pretrained, with "
            f"{_confidence(alignment.results):.0%} intervals", "",
            "Mean cc_norm (region `all`, voxel means) of each tuned model minus that of the "
            "pretrained one. The baselines are tuned like the brain-tuned model, towards "
            "another target: a bigger speech model's features (BigSLM-tuned) or a text LM's "
            "(LM-tuned), `target_features.py`.", "",
            _table(["model", "tuned towards", *[f"layer {k}" for k in layers]], cells), ""]


def _comparison_cell(comparisons, model, layer):
    row = next((r for r in comparisons if r["model"] == model and r["layer"] == layer), None)
    return "n/a" if row is None else _number(row["difference"]) + _interval(row["ci_low"],
                                                                           row["ci_high"])


def reported_regions(results, rows):
    """The regions the report's tables show: "all" and those of regions.png (results.json
    "regions" "shown"; every region of ``rows`` in older results)."""
    if "regions" not in results:
        return list(dict.fromkeys(r["region"] for r in rows))
    return ["all", *results["regions"]["shown"]]


def _regions_section(out, alignment, summary):
    """Per region (or group) of regions.png at the compared layer: each model's parcel-mean
    cc_norm and the tuned-minus-pretrained difference, with intervals; regions.png and the
    cortical maps (flatmap_*.png) of the run."""
    results = alignment.results
    shown = results.get("regions", {}).get("shown", [])
    maps = sorted(alignment.folder.glob("flatmap_*.png"))
    if not shown and not maps:
        return []
    lines = ["## Brain regions", ""]
    layer, tuned = summary["layer"], summary["models"]["tuned"]
    if shown:
        rows = [r for r in results["results"] if _aggregation(r) == "parcel_mean"
                and _train_fraction(r) == 1 and r["low_level"] == "none" and r["layer"] == layer]
        gains = [r for r in tuned_comparisons(results, summary["models"])
                 if _aggregation(r) == "parcel_mean" and r["layer"] == layer]
        models = list(dict.fromkeys(r["model"] for r in rows))
        cells = []
        for region in shown:
            gain = _row(gains, region=region)
            cells.append([region, *[_cell(_row(rows, model=m, region=region), "cc_norm")
                                    for m in models],
                          "n/a" if gain is None or gain["difference"] is None else
                          _number(gain["difference"]) + _interval(gain["ci_low"],
                                                                  gain["ci_high"])])
        source = results["regions"]["given"]
        lines += [f"Mean cc_norm per region at layer {layer} (regions: `{source}`), the follow-up "
                  "paper's way: per-voxel cc_norm set to 0 where the test-row ceiling is low, "
                  "averaged over all of a region's voxels, a group's the mean of its regions' "
                  f"means; in brackets the {_confidence(results):.0%} block-bootstrap interval.",
                  "", _table(["region", *models, f"{tuned} - pretrained"], cells), "",
                  _image(out, alignment.folder / "regions.png", "alignment per region"), ""]
    if maps:
        lines += ["Per-voxel cc_norm on the subject's flat map (voxels above the noise-ceiling "
                  "threshold), and the tuned model minus the pretrained one:", ""]
        lines += [_image(out, path, path.stem.removeprefix("flatmap_").replace("_", " "))
                  for path in maps] + [""]
    return lines


def _efficiency_section(out, alignment, summary):
    """Mean cc_norm at the compared layer (region all) of encoding models fitted on fractions
    of the training rows, where the run fitted some on fewer than all."""
    layer = summary["layer"]
    rows = [r for r in alignment.results["results"] if _aggregation(r) == "voxel_mean"
            and r["region"] == "all" and r["low_level"] == "none" and r["layer"] == layer]
    if all(_train_fraction(r) == 1 for r in rows):
        return []
    fractions = sorted({_train_fraction(r) for r in rows})
    cells = []
    for m in dict.fromkeys(r["model"] for r in rows):
        cell = []
        for fraction in fractions:
            row = _row(rows, model=m, train_fraction=fraction)  # new-style rows: all have it
            cell.append("n/a" if row is None else _number(row["cc_norm"]) + (
                f" ({row['train_rows']} rows)" if row.get("train_rows") is not None else ""))
        cells.append([m, *cell])
    return ["## Data efficiency", "",
            f"Mean cc_norm at layer {layer} (region `all`) of encoding models fitted on a "
            "fraction of the training rows (in brackets: how many rows):", "",
            _table(["model", *[f"{fraction:.0%} of training rows" for fraction in fractions]],
                   cells), "",
            _image(out, alignment.folder / "data_efficiency.png", "data efficiency"), ""]


def _across_subjects_section(summary):
    """Each subject's mean cc_norm of both compared models per layer, and the Wilcoxon
    signed-rank test of the gains over subjects."""
    tuned = summary["models"]["tuned"]
    by_layer = summary["across_subjects"]
    cells, tests, notes = [], [], []
    for layer, scores in by_layer.items():
        for subject, before, after, gain in zip(scores["subjects"], scores["pretrained"],
                                                scores["tuned"], scores["gain"]):
            cells.append([layer, subject, _number(before), _number(after), f"{gain:+.3f}"
                          if _finite(gain) else "n/a"])
        statistic = scores["wilcoxon_statistic"]
        tests.append([layer, len(scores["subjects"]),
                      "n/a" if statistic is None else f"{statistic:g}", _p(scores["p_value"])])
        if scores["p_value"] is None:
            reason = ("every gain is zero" if all(g == 0 for g in scores["gain"])
                      else "a subject's mean is undefined")
            notes.append(f"At layer {layer} the test cannot run: {reason}.")
    n = len(next(iter(by_layer.values()))["subjects"])
    smallest = (f"With {n} subjects the exact two-sided p cannot go below "
                f"{_p(2.0 / 2 ** n)} (2/2^{n}, reached when every gain has the same sign)"
                + ("; with fewer than 6 subjects it cannot go below 0.05." if n < 6 else "."))
    return ["## Across subjects", "",
            f"Mean cc_norm (region `all`, the voxels above each run's noise-ceiling threshold, "
            f"encoding models fitted on all training rows) of pretrained and {tuned} per "
            f"subject, and the gain ({tuned} minus pretrained):", "",
            _table(["layer", "subject", "pretrained", tuned, "gain"], cells), "",
            "Wilcoxon signed-rank test of the gains over subjects (`scipy.stats.wilcoxon`, "
            f"two-sided). {smallest}", "",
            _table(["layer", "subjects", "statistic", "p"], tests), "", *notes,
            *([""] if notes else [])]


def _reliance_section(out, alignment, headline, planted, models, layers, analyses):
    drops = [r for r in headline if r["low_level"] != "none" and r["region"] == "all"]
    lines = ["## Reliance on low-level features", "",
             "Drop of mean cc_norm (percent) when each low-level feature set is regressed out "
             "of the layer's features before fitting the encoding model:", "",
             _table(["model", "removed", *[f"layer {k}" for k in layers]],
                    [[m, a, *[_cell(_row(drops, model=m, low_level=a, layer=k), "drop_percent",
                                    _drop) for k in layers]]
                     for m in models for a in analyses]), "",
             *_drop_notes([r["drop_percent"] for r in drops])]
    if planted:
        cells, shown = [], []
        for m in planted.means:
            for a in analyses:
                for k in layers:
                    row = [m, a, k]
                    for t in ("semantic", "acoustic"):
                        before, after = planted.means[m]["none"][k][t], planted.means[m][a][k][t]
                        drop = eval_utils.percent_drop(before, after)
                        shown.append(drop)
                        row.append(_counted(f"{_number(before)} -> {_number(after)}, drop "
                                            f"{_drop(drop)}", planted.counts[t]))
                    cells.append(row)
        lines += ["By planted voxel type (cc_norm before -> after, and the drop):", "",
                  _table(["model", "removed", "layer", "semantic", "acoustic"], cells), "",
                  *_drop_notes(shown)]
    return lines + [_image(out, alignment.folder / "reliance.png", "reliance per layer"), ""]


def probe_score(probe):
    """The key of a probe's headline score in its rows: the ``score`` its results.json names
    (``eval_asr.py``: ``one_minus_wer`` or ``one_minus_per``), else the macro F1."""
    return probe.get("score", "f1_macro")


def _source_text(source):
    """Where a probe run read its data (results of older runs do not say)."""
    if not source:
        return ""
    if "hf_dataset" not in source:
        return f" Data: `{source['data_path']}`, in the distribution layout."
    config = f", config `{source['hf_config']}`" if source.get("hf_config") else ""
    train, test = source["splits"]
    splits = (f"its `{train}` split's speakers split for training and test" if train == test
              else f"splits `{train}` and `{test}`")
    return (f" Data: the HuggingFace dataset `{source['hf_dataset']}`{config}, {splits}, "
            f"audio `{source['audio_column']}`, labels `{source['label_column']}`.")


def _probe_section(out, folder, probe):
    task = probe["task"]
    task_layers = sorted({r["layer"] for r in probe["results"]})
    rows = probe["results"]
    score = probe_score(probe)
    renamed = "".join(f" This probe's results label {new} as `{old}`."
                      for old, new in probe["relabelled"].items())
    csv_path = os.path.relpath(Path(folder) / "results.csv", out)
    if score == "f1_macro":
        chance = probe.get("chance_f1_macro")
        chance_text = (f" Chance (guessing labels at their training frequencies): {chance:.3f}."
                       if _finite(chance) else "")
        intro = ("Macro F1 on the test split per layer (micro F1, the other scores and sizes in "
                 f"`{csv_path}`).{chance_text}")
    else:  # eval_asr.py
        intro = (f"{probe['score_name']} on the test split per layer: {probe['description']} "
                 f"(the other error rates and the sizes in `{csv_path}`). An empty transcript "
                 "scores 0.")
    return [f"## Downstream probe: {task} ({probe['dataset']})", "",
            intro + renamed + _source_text(probe.get("source")), "",
            _table(["model", *[f"layer {k}" for k in task_layers]],
                   [[m, *[_cell(_row(rows, model=m, layer=k), score) for k in task_layers]]
                    for m in dict.fromkeys(r["model"] for r in rows)]), "",
            _image(out, Path(folder) / f"{task}.png", task), ""]


def _synthetic_explanation(summary, truth):
    pretrained, tuned = summary["pretrained"], summary["tuned"]
    label = summary["models"]["tuned"]
    n = summary["planted_voxels"]["semantic"]
    gain = summary["semantic_cc_norm_gain"]
    percent = summary["semantic_cc_norm_gain_percent"]
    relative = f" ({percent:+.0f}%)" if _finite(percent) else ""
    if not _finite(gain):
        outcome = ("No comparison is possible: no planted semantic voxel passes the voxel rule "
                   f"(noise ceiling above {summary['nc_thr']}).")
    elif gain > 0:
        outcome = f"The tuned model is better{relative}, as expected."
    else:
        outcome = ("The tuned model is NOT better here: the tuning run did not learn word "
                   "identity (see val_corr in the run's metrics.jsonl). A small random-weight "
                   "model tuned for a few CPU minutes on a few hundred noisy samples often does "
                   "not; the method assumes a pretrained model whose features already tell "
                   "sounds apart, and more data and epochs (a GPU).")
    return (
        "## What the planted signal predicts\n\n"
        "The synthetic subject's semantic voxels respond to a fixed embedding of each word "
        "heard; acoustic voxels to the loudness of the audio; noise voxels to nothing. "
        + ("Words come in families that share their sounds and differ only in the order of "
           "their phones, with embeddings that average to zero within a family, so the semantic "
           "signal cannot be read off which sounds occur (removing the power spectrum or the "
           "phoneme counts should leave semantic alignment intact and remove acoustic "
           "alignment): a model has to tell the words apart. "
           if truth.get("family_size", 1) > 1 else
           "Each word has its own sounds, so part of the semantic signal can be read off which "
           "sounds occur; the rest needs the words told apart. ")
        + "An untrained model's features hold which sounds are heard only diffusely, mixed with "
        "everything else in the audio, so a linear encoding model fitted on a few hundred TRs "
        "finds little of the semantic signal in them. Brain-tuning trains the encoder to predict "
        "these very voxels from the audio of the training stories, so a tuned model's features "
        "should carry word identity and predict the semantic voxels of the held-out story "
        "better.\n\n"
        f"At layer {summary['layer']}, the tuned model's ({label}) mean cc_norm over the {n} "
        f"planted semantic voxels that pass the voxel rule is {_number(tuned['semantic_cc_norm'])}"
        f" against {_number(pretrained['semantic_cc_norm'])} for the pretrained model"
        f"{f' ({gain:+.3f})' if _finite(gain) else ''}. {outcome}\n")


if __name__ == "__main__":
    sys.exit(main())
