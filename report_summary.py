"""The numbers of ``report.py``: which models it compares, the planted voxels of a synthetic
dataset, the headline summary (summary.json) with the paper's expected directions, and the
gains across subjects. The alignment results are ``results_schema`` folders; the probes'
results.json files (``eval_*.py``) are read as they are.
"""

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import scipy

import eval_utils
import results_schema
import run_utils
from run_utils import DatasetError, UsageError

VOXEL_TYPES = ("semantic", "acoustic", "noise")
TRUTH_FILE = "synthetic_truth.json"  # beside a synthetic dataset (data_utils.Dataset.truth)
# summary entry -> (what it measures, the direction brain-tuning should move it in the paper)
EXPECTED_DIRECTION = {"cc_norm": ("brain alignment (mean cc_norm)", "higher"),
                      "semantic_cc_norm": ("planted semantic voxels (mean cc_norm)", "higher"),
                      "semantic_preference": ("semantic preference", "higher")}
ACROSS_SUBJECTS_ALPHA = 0.05  # a Wilcoxon p below it decides the verdict across subjects
NO_DIFFERENCE = "no detectable difference"


@dataclasses.dataclass(frozen=True)
class Planted:
    """Mean cc_norm over the planted voxel types that pass the voxel rule."""

    counts: dict  # type -> number of voxels averaged
    means: dict  # model -> analysis -> layer -> {type: mean cc_norm}
    planted: dict  # type -> number of voxels planted
    noise: dict  # model -> layer -> cc_norm (n,) of the noise voxels averaged


# ----------------------------------------------------------------------------- the compared models

def headline_rows(rows):
    """The rows every summary and table of the models uses: means over the voxels above the
    noise-ceiling threshold ("voxel_mean") of encoding models fitted on all training rows."""
    return [row for row in rows if row.aggregation == "voxel_mean" and row.train_fraction == 1]


def find_row(rows, **match):
    """The first row (a schema row) whose fields equal every ``match`` item, or None."""
    return next((row for row in rows
                 if all(getattr(row, name) == value for name, value in match.items())), None)


def compared_models(alignment, tuned=None):
    """Labels of the compared models: {"pretrained": "pretrained", "tuned": label}, the
    tuned one named by ``tuned``, else the only tuned model of the run, else its only model
    brain-tuned on fMRI (the others being baselines tuned towards other targets,
    ``tuning_target``)."""
    rows = headline_rows(alignment.results.results)
    labels = list(dict.fromkeys(row.model for row in rows))
    candidates = [label for label in labels if label != "pretrained"]
    where = alignment.folder / results_schema.RESULTS_FILE
    listed = ", ".join(repr(label) for label in candidates)
    if "pretrained" not in labels or not candidates:
        raise UsageError(f"{where}: holds {', '.join(map(repr, labels)) or 'no model'}; the "
                         "report compares 'pretrained' with a tuned model, so evaluate both")
    if tuned is None and len(candidates) > 1:
        on_fmri = [label for label in candidates
                   if tuning_target(alignment.results.models.get(label)) == "fMRI"]
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
    arguments = run_utils.tuning_arguments(checkpoint)
    if arguments is None:
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


def tuned_comparisons(results, roles, measure="cc_norm"):
    """The comparisons of the tuned model against the pretrained one in ``measure``; of mean
    cc_norm those without low-level features removed."""
    return [row for row in results.comparisons if row.model == roles["tuned"]
            and row.baseline == roles["pretrained"] and row.measure == measure
            and (measure != "cc_norm" or row.low_level == "none")]


def headline_intervals(results, roles, layer):
    """The comparison row (or None) behind each summary entry the paper states a direction for,
    at ``layer``: "cc_norm", "drop_percent_without_<set>" and "semantic_preference"."""
    overall = dict(layer=layer, region="all", aggregation="voxel_mean")
    found = {"cc_norm": find_row(tuned_comparisons(results, roles), **overall),
             "semantic_preference": find_row(
                 tuned_comparisons(results, roles, "semantic_preference"), layer=layer)}
    for row in tuned_comparisons(results, roles, "drop_percent"):
        if all(getattr(row, name) == value for name, value in overall.items()):
            found[f"drop_percent_without_{row.low_level}"] = row
    return found


# ----------------------------------------------------------------------------- probes

def training_runs(alignment):
    """The brain-tuning runs of the alignment's tuned models: run folder name -> (its
    ``metrics.jsonl`` lines, the epoch its ``final/`` keeps or None), for each checkpoint
    folder whose parent holds a ``metrics.jsonl`` (one entry per run, however many of its
    checkpoints were evaluated)."""
    runs = {}
    for checkpoint in alignment.results.models.values():
        run = Path(checkpoint).parent
        metrics = run / "metrics.jsonl"
        if run.name in runs or not metrics.is_file():
            continue
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        final = run / "final" / "brain_tuning.json"
        kept = json.loads(final.read_text()).get("epoch") if final.is_file() else None
        runs[run.name] = (lines, kept)
    return runs


def read_probe(folder, alignment_models):
    """An ``eval_*.py`` results.json, each model under the alignment run's label for the same
    checkpoint (``with_alignment_labels``)."""
    probe = results_schema.read_json(Path(folder) / "results.json",
                                     "a results folder of an eval_*.py script")
    return with_alignment_labels(probe, folder, alignment_models)


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


def probe_score(probe):
    """The key of a probe's headline score in its rows: the ``score`` its results.json names
    (``eval_asr.py``: ``one_minus_wer`` or ``one_minus_per``), else the macro F1."""
    return probe.get("score", "f1_macro")


# ----------------------------------------------------------------------------- planted voxels

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
    subject = alignment.results.subject
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
    means, noise = {}, {}
    for row in headline_rows(alignment.results.results):
        if row.region != "all":
            continue
        path = alignment.folder / run_utils.voxel_results_name(row.model, row.layer,
                                                                row.low_level)
        cc_norm = np.load(path)["cc_norm"]
        if cc_norm.shape != voxels.shape:
            raise UsageError(f"{path}: {cc_norm.size} voxels but the responses have "
                             f"{voxels.size}; pass the --data_dir the alignment run evaluated")
        means.setdefault(row.model, {}).setdefault(row.low_level, {})[row.layer] = {
            kind: _fitted_mean(cc_norm[indices]) for kind, indices in planted.items()}
        if row.low_level == "none":
            noise.setdefault(row.model, {})[row.layer] = cc_norm[planted["noise"]]
    totals = {kind: len(truth["subjects"][subject][f"{kind}_voxels"]) for kind in VOXEL_TYPES}
    return Planted({kind: int(indices.size) for kind, indices in planted.items()}, means,
                   totals, noise)


def noise_difference(planted, roles, layer):
    """Tuned minus pretrained mean cc_norm over the planted noise voxels that pass the voxel
    rule (by chance: their true ceiling is 0), with its 95% t interval over those voxels,
    which are independent by construction; None with fewer than two of them.

    Returns {"planted", "passing", "difference", "ci", "verdict"}."""
    tuned, pretrained = (planted.noise[roles[role]][layer] for role in ("tuned", "pretrained"))
    fitted = ~(np.isnan(tuned) | np.isnan(pretrained))
    if fitted.sum() < 2:
        return None
    test = scipy.stats.ttest_rel(tuned[fitted], pretrained[fitted])
    low, high = test.confidence_interval(0.95)
    return {"planted": planted.planted["noise"], "passing": int(fitted.sum()),
            "difference": float(np.mean(tuned[fitted] - pretrained[fitted])),
            "ci": [float(low), float(high)], "verdict": eval_utils.interval_verdict(low, high)}


def _fitted_mean(values):
    """The mean of the fitted (not NaN) ``values``; NaN when there is none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


# ----------------------------------------------------------------------------- summary.json

def summarise(alignment, roles, planted, downstream):
    """summary.json: the headline numbers of the compared models at the deepest layer both
    have, and how each compares with the paper's expected direction."""
    results = alignment.results
    headline = headline_rows(results.results)
    layers = [{row.layer for row in headline if row.model == model} for model in roles.values()]
    layer = max(set.intersection(*layers))
    summary = {"layer": layer, "models": roles,
               "checkpoints": {role: results.models.get(model) for role, model in roles.items()},
               "test_story": results.test_story, "nc_thr": results.nc_thr,
               "excluded_voxels": results.excluded_voxels}
    if planted:
        summary["planted_voxels"] = planted.counts
    for role, model in roles.items():
        rows = [r for r in headline if r.model == model and r.layer == layer
                and r.region == "all"]
        summary[role] = {**_model_entry(rows), **_planted_entry(planted, model, layer),
                         **_preference_entry(results, model, layer),
                         **_probe_entry(downstream, model)}
    if planted:
        before = summary["pretrained"]["semantic_cc_norm"]
        after = summary["tuned"]["semantic_cc_norm"]
        summary["semantic_cc_norm_gain"] = after - before
        summary["semantic_cc_norm_gain_percent"] = (100.0 * (after - before) / abs(before)
                                                    if before else None)
        summary["noise_voxels"] = noise_difference(planted, roles, layer)
    intervals = headline_intervals(results, roles, layer)
    summary["expected_direction"] = expected_direction(summary["pretrained"], summary["tuned"],
                                                       intervals)
    comparison = intervals["cc_norm"]
    if comparison is not None:
        summary["comparison"] = {"difference": comparison.difference, "ci": _ci(comparison),
                                 "verdict": comparison.verdict}
    summary["protocol"] = {**results_schema.to_json(results.protocol),
                           "departures": results_schema.to_json(results.departures)}
    return summary


def _ci(row):
    """[low, high] of a row's interval, or None where it has none."""
    return None if row is None or row.ci_low is None else [row.ci_low, row.ci_high]


def _model_entry(rows):
    """A model's mean cc_norm at the compared layer (region all), with its voxel count,
    interval and significant fraction where recorded, and the drop without each feature set."""
    baseline = find_row(rows, low_level="none")
    entry = {"cc_norm": baseline.cc_norm, "n_voxels": baseline.n_voxels}
    if baseline.cc_norm_ci_low is not None:
        entry["cc_norm_ci"] = [baseline.cc_norm_ci_low, baseline.cc_norm_ci_high]
    if baseline.significant_fraction is not None:
        entry["significant_fraction"] = baseline.significant_fraction
    for row in rows:
        if row.low_level != "none":
            entry[f"drop_percent_without_{row.low_level}"] = row.drop_percent
            if row.drop_ci_low is not None:
                entry[f"drop_percent_without_{row.low_level}_ci"] = [row.drop_ci_low,
                                                                     row.drop_ci_high]
    return entry


def _planted_entry(planted, model, layer):
    """A model's mean cc_norm per planted voxel type and the drops of the semantic and
    acoustic ones without each feature set ({} without planted voxels)."""
    if not planted:
        return {}
    scores = planted.means[model]
    entry = {f"{kind}_cc_norm": value for kind, value in scores["none"][layer].items()}
    for analysis, by_layer in scores.items():
        if analysis != "none":
            for kind in ("semantic", "acoustic"):
                entry[f"{kind}_drop_percent_without_{analysis}"] = eval_utils.percent_drop(
                    scores["none"][layer][kind], by_layer[layer][kind])
    return entry


def _preference_entry(results, model, layer):
    preference = find_row(results.semantic_preference, model=model, layer=layer)
    if preference is None:
        return {}
    entry = {"semantic_preference": preference.preference}
    if preference.ci_low is not None:
        entry["semantic_preference_ci"] = [preference.ci_low, preference.ci_high]
    return entry


def _probe_entry(downstream, model):
    """A model's best score over the layers of each probe."""
    entry = {}
    for probe in downstream:
        score = probe_score(probe)
        best = max((r for r in probe["results"] if r["model"] == model),
                   key=lambda r: r[score], default=None)
        if best is not None:
            entry[f"{probe['task']}_{score}_best_layer"] = best[score]
    return entry


def finite(value):
    return value is not None and bool(np.isfinite(value))


def expectation(key):
    """(what ``key`` of a summary entry measures, "higher" or "lower"), or None when the paper
    states no direction for it."""
    if key in EXPECTED_DIRECTION:
        return EXPECTED_DIRECTION[key]
    if key.startswith("drop_percent_without_") and not key.endswith("_ci"):
        return f"drop without {key[len('drop_percent_without_'):]} (%)", "lower"
    return None


def expected_direction(pretrained, tuned, intervals):
    """Per summary entry the paper states a direction for: the expected direction, both
    values, the difference with its interval and ``verdict`` (from the comparison row of
    ``intervals``, ``headline_intervals``; None without an interval) and ``as_expected``:
    True or False only where the interval excludes 0, None where it does not or is missing."""
    checks = {}
    for key in pretrained:
        expected = expectation(key)
        if expected is None or key not in tuned:
            continue
        before, after = pretrained[key], tuned[key]
        row = intervals.get(key)
        verdict = None if row is None else row.verdict
        checks[key] = {"expected": expected[1], "pretrained": before, "tuned": after,
                       "difference": after - before if finite(before) and finite(after)
                       else None,
                       "ci": _ci(row), "verdict": verdict,
                       "as_expected": None if verdict in (None, NO_DIFFERENCE)
                       else verdict == expected[1]}
    return checks


# ----------------------------------------------------------------------------- across subjects

def across_subjects(alignments, roles, layer, tuned):
    """Per layer every run has for both compared models: each subject's mean cc_norm (region
    all, no feature removed), the gains and the Wilcoxon signed-rank test over subjects.

    ``roles`` and ``layer`` are those of the first run; a run of a subject already given, or
    one without the same compared models or without ``layer``, is a UsageError."""
    folders, scores = {}, []
    for alignment in alignments:
        where = alignment.folder / results_schema.RESULTS_FILE
        subject = alignment.results.subject
        if subject in folders:
            raise UsageError(f"{alignment.folder}: subject {subject} again (also in "
                             f"{folders[subject]}); pass one alignment run per subject")
        folders[subject] = alignment.folder
        own = compared_models(alignment, tuned)
        if own != roles:
            raise UsageError(f"{where}: its tuned model is {own['tuned']!r} but "
                             f"{alignments[0].folder} compares {roles['tuned']!r}; pass runs of "
                             "the same tuned model (or name it with --tuned)")
        means = {(row.model, row.layer): row.cc_norm
                 for row in headline_rows(alignment.results.results)
                 if row.region == "all" and row.low_level == "none"}
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
        gains = _gains(tuned_scores, pretrained)
        summary[k] = {"subjects": list(folders), "pretrained": pretrained,
                      "tuned": tuned_scores, "gain": gains.tolist(),
                      "wilcoxon_statistic": statistic, "p_value": p_value,
                      "min_possible_p": 2.0 / 2 ** len(scores),
                      "verdict": subjects_verdict(gains, p_value)}
    return summary


def subjects_verdict(gains, p_value):
    """The verdict across subjects: "higher" or "lower" (the median gain's sign) where the
    Wilcoxon p is below ``ACROSS_SUBJECTS_ALPHA``, else "no detectable difference"; None where
    the test could not run."""
    if p_value is None:
        return None
    if p_value >= ACROSS_SUBJECTS_ALPHA:
        return NO_DIFFERENCE
    return "higher" if np.median(gains) > 0 else "lower"


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
