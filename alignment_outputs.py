"""What an evaluation writes: results.json and the CSV tables, the per-voxel arrays and test
predictions, the tuned-minus-pretrained comparisons, the plots and the cortical maps.
"""

import logging
import shutil

import numpy as np

import arguments
import brain_regions
import data_utils
import eval_utils
import plots
import results_schema
import run_utils
from summaries import CONFIDENCE, FOLLOWUP_CEILING

logger = logging.getLogger(__name__)


def protocol(settings):
    """The scoring protocol of a run, for results.json (and the report): the evaluator's flags
    declared part of it (``arguments.protocol_values``) and the constants of the summaries."""
    return {**arguments.protocol_values(settings), "followup_ceiling": FOLLOWUP_CEILING,
            "confidence": CONFIDENCE}


def write_results(out_dir, all_results, facts, task):
    """results.json (``facts``, the rows, the comparisons and the semantic preference, in the
    format of ``results_schema``), results.csv, comparisons.csv, the per-voxel .npz files (r,
    cc_norm, alpha and, with permutations, p_value and q_value; one entry per voxel of the
    subject, NaN where not fitted), the test predictions (``predictions_*.npz``: ``prediction``
    float32 (scored rows, fitted voxels), ``rows``, the test-story response rows they belong
    to, and ``voxels``, the int64 indices of its columns among the subject's voxels),
    ``summary_voxels.npy`` (the (n,) int64 indices, among the subject's voxels, of the voxels
    the "all" voxel means average over, for the report) and the plots (``write_plots``) in a
    fresh ``out_dir``.
    ``facts`` holds the subject, test story and the ``summary_voxels`` facts, for the titles.

    Returns the alignment rows, the comparisons and the semantic-preference rows."""
    rows, preference_rows = [], []
    n_train = len(task.responses.train)
    trim = data_utils.TEST_RESPONSE_TRIM
    test_rows = np.arange(trim, trim + len(task.responses.test))
    columns = task.fitted_indices()  # the subject's voxel index of each fitted voxel
    for label, layers in all_results.items():
        for layer, result in layers.items():
            before = result["encoding"]["none"]["summary"]["cc_norm"]
            fitted = [(analysis, 1.0, n_train, scores)
                      for analysis, scores in result["encoding"].items()]
            fitted += [("none", fraction, len(task.subsets[fraction].rows), scores)
                       for fraction, scores in result["efficiency"].items()]
            for analysis, fraction, train_rows, scores in fitted:
                rows += summary_rows(label, layer, analysis, fraction, train_rows, scores,
                                     before, task.summaries.keys)
                if fraction < 1:
                    continue
                np.savez(out_dir / run_utils.voxel_results_name(label, layer, analysis),
                         **{name: task.full(scores[name]) for name in VOXEL_ARRAYS
                            if name in scores})
                if analysis == "none":
                    np.savez(out_dir / run_utils.voxel_results_name(label, layer, analysis,
                                                                    "predictions"),
                             prediction=scores["prediction"], rows=test_rows, voxels=columns)
            if result["semantic_preference"] is not None:
                preference_rows.append({"model": label, "layer": layer,
                                        **result["semantic_preference"]})
    comparisons = compare_to_pretrained(all_results, task.summaries)
    run_utils.write_json(out_dir / results_schema.RESULTS_FILE, results_schema.results_document(
        facts, rows, comparisons, preference_rows))
    np.save(out_dir / run_utils.SUMMARY_VOXELS_NAME, columns[task.voxels])
    run_utils.write_csv(out_dir / "results.csv", rows)
    if comparisons:
        run_utils.write_csv(out_dir / "comparisons.csv", comparisons)
    if preference_rows:
        run_utils.write_csv(out_dir / "semantic_preference.csv", preference_rows)
    write_plots(out_dir, rows, comparisons, preference_rows, facts)
    if facts["regions"]["file"] is not None:
        shutil.copyfile(facts["regions"]["file"], out_dir / "regions.json")
    return rows, comparisons, preference_rows


VOXEL_ARRAYS = ("r", "cc_norm", "alpha", "p_value", "q_value")  # in voxels_*.npz


def summary_rows(label, layer, analysis, fraction, train_rows, scores, before, keys):
    """results.csv rows of one fitted encoding model: one per (region, aggregation) key;
    ``drop_percent`` against ``before`` (the cc_norm summaries of the layer's own features)."""
    summary = scores["summary"]
    rows = []
    for key in keys:
        region, aggregation = key
        value, ci = summary["cc_norm"][key], summary["ci"][key]
        defined = analysis != "none" and None not in (before[key], value)
        rows.append({
            "model": label, "layer": layer, "low_level": analysis, "region": region,
            "aggregation": aggregation, "train_fraction": fraction, "train_rows": train_rows,
            "cc_norm": value, "r": summary["r"][key],
            "drop_percent": eval_utils.percent_drop(before[key], value) if defined else None,
            "n_voxels": summary["n_voxels"][key],
            "cc_norm_ci_low": None if ci is None else ci[0],
            "cc_norm_ci_high": None if ci is None else ci[1],
            "significant_fraction": summary["significant_fraction"][key]})
    return rows


def compare_to_pretrained(all_results, summaries):
    """Each tuned model minus the pretrained one, per layer both have, analysis and (region,
    aggregation): the difference of mean cc_norm and, with the bootstrap, its interval from
    the same resamples of both models. [] without a pretrained model."""
    baseline = all_results.get("pretrained")
    if baseline is None:
        return []
    comparisons = []
    for label, layers in all_results.items():
        if label == "pretrained":
            continue
        for layer in sorted(set(layers) & set(baseline)):
            for analysis, scores in layers[layer]["encoding"].items():
                reference = baseline[layer]["encoding"][analysis]
                differences = (scores["bootstrap"] - reference["bootstrap"]
                               if "bootstrap" in scores else None)
                low, high = (eval_utils.percentile_interval(differences, CONFIDENCE)
                             if differences is not None else (None, None))
                for index, key in enumerate(summaries.keys):
                    ours, theirs = scores["summary"]["cc_norm"][key], reference["summary"][
                        "cc_norm"][key]
                    defined = None not in (ours, theirs)
                    comparisons.append({
                        "model": label, "baseline": "pretrained", "layer": layer,
                        "low_level": analysis, "region": key[0], "aggregation": key[1],
                        "model_cc_norm": ours, "baseline_cc_norm": theirs,
                        "difference": ours - theirs if defined else None,
                        "ci_low": float(low[index]) if defined and low is not None else None,
                        "ci_high": float(high[index]) if defined and low is not None else None})
    return comparisons


def write_run_flatmaps(out_dir, all_results, rows, layers, dataset, subject, task, cache_dir,
                       height):
    """The cortical maps of ``layers`` (--flatmap_layers; 'best': the layer of the highest mean
    cc_norm of the last model) in ``out_dir`` (``brain_regions.write_flatmaps``), from
    per-voxel cc_norm in the subject's voxel space (NaN where not fitted; only summary voxels
    are drawn)."""
    last = list(all_results)[-1]
    overall = {row["layer"]: row["cc_norm"] for row in rows
               if row["model"] == last and row["region"] == "all" and row["low_level"] == "none"
               and row["aggregation"] == "voxel_mean" and row["train_fraction"] == 1}
    chosen = set()
    for layer in layers:
        if layer == "best":
            chosen.add(max(overall, key=lambda k: -np.inf if overall[k] is None else overall[k]))
        elif int(layer) in overall:
            chosen.add(int(layer))
        else:
            logger.warning("--flatmap_layers %s: not a layer of this run (%s); no map", layer,
                           " ".join(map(str, sorted(overall))))
    cc_norm = {(label, layer): task.full(results[layer]["encoding"]["none"]["cc_norm"])
               for label, results in all_results.items() for layer in sorted(chosen)}
    if cc_norm:  # NaN where not fitted: only the summary voxels are drawn
        brain_regions.write_flatmaps(out_dir, cc_norm, task.fitted_indices()[task.voxels],
                                     dataset, subject, cache_dir, height)


def write_plots(out_dir, rows, comparisons, preference_rows, facts):
    """alignment.png (mean cc_norm per layer, one line per model, with the bootstrap
    intervals), comparison.png (tuned minus pretrained with intervals), reliance.png (drop
    per layer; colour per model, line style per feature set removed), data_efficiency.png
    (cc_norm against the training rows, a panel per layer) and semantic_preference.png, each
    when the run has its results, over "all" voxel means; regions.png (per layer, the
    parcel-mean cc_norm of the groups, else regions, per model) with regions."""
    story = f"{facts['subject']}, {facts['test_story']}"
    voxels = f"{story}, {facts['scored_voxels']} voxels with NC > {facts['nc_thr']}"
    selection = facts.get("fitted_voxels", {}).get("selection", "all")
    if selection != "all":
        voxels += f" (--voxels {selection})"
    overall = [row for row in rows if row["region"] == "all"
               and row["aggregation"] == "voxel_mean"]
    baseline = [row for row in overall if row["low_level"] == "none"
                and row["train_fraction"] == 1]
    plots.plot_per_layer(out_dir / "alignment.png", _series(baseline, "cc_norm"),
                         "mean cc_norm", f"Brain alignment, {voxels}",
                         intervals=_intervals(baseline, "cc_norm_ci_low", "cc_norm_ci_high"))
    gains = [row for row in comparisons if row["region"] == "all"
             and row["aggregation"] == "voxel_mean" and row["low_level"] == "none"]
    if gains:
        plots.plot_per_layer(out_dir / "comparison.png", _series(gains, "difference"),
                             "tuned - pretrained mean cc_norm",
                             f"Gain over the pretrained model ({CONFIDENCE:.0%} block-bootstrap "
                             f"intervals), {voxels}",
                             intervals=_intervals(gains, "ci_low", "ci_high"))
    removed = [row for row in overall if row["low_level"] != "none"]
    if removed:
        plots.plot_per_layer(out_dir / "reliance.png",
                             _series(removed, "drop_percent", with_analysis=True),
                             "drop in mean cc_norm (%)",
                             f"Reliance on low-level features (higher: more reliant), {voxels}")
    fractions = [row for row in overall if row["low_level"] == "none"]
    if len({row["train_fraction"] for row in fractions}) > 1:
        curves = {}
        for row in fractions:
            curves.setdefault(row["model"], {}).setdefault(row["layer"], {})[
                row["train_rows"]] = row["cc_norm"]
        plots.plot_data_efficiency(out_dir / "data_efficiency.png", curves, "mean cc_norm",
                                   f"Data efficiency, {voxels}")
    if preference_rows:
        plots.plot_per_layer(out_dir / "semantic_preference.png",
                             _series(preference_rows, "preference"),
                             "semantic r - phonetic r", f"Semantic preference, {story}")
    shown = facts["regions"]["shown"]
    if shown:
        cells = [row for row in rows if row["region"] in shown and row["low_level"] == "none"
                 and row["train_fraction"] == 1 and row["aggregation"] == "parcel_mean"]
        values, intervals = {}, {}
        for row in sorted(cells, key=lambda row: shown.index(row["region"])):
            values.setdefault(row["model"], {}).setdefault(row["layer"], {})[
                row["region"]] = row["cc_norm"]
            intervals.setdefault(row["model"], {}).setdefault(row["layer"], {})[
                row["region"]] = (None if row["cc_norm_ci_low"] is None
                                  else (row["cc_norm_ci_low"], row["cc_norm_ci_high"]))
        plots.plot_regions(out_dir / "regions.png", values, "mean cc_norm (parcel mean)",
                           f"Brain alignment per region, {story} (follow-up paper's parcel "
                           f"means, {CONFIDENCE:.0%} block-bootstrap intervals)", intervals)


def _series(rows, key, with_analysis=False):
    """Plot series: model label (or (model label, "without <set>")) -> {layer: row[key]}."""
    series = {}
    for row in rows:
        name = (row["model"], f"without {row['low_level']}") if with_analysis else row["model"]
        series.setdefault(name, {})[row["layer"]] = row[key]
    return series


def _intervals(rows, low, high):
    """Plot intervals: model label -> {layer: (row[low], row[high])}, None when not computed."""
    intervals = {}
    for row in rows:
        if row[low] is not None:
            intervals.setdefault(row["model"], {})[row["layer"]] = (row[low], row[high])
    return intervals or None


def print_tables(rows, comparisons, preference_rows, low_level=()):
    """The run's headline tables on stdout: mean cc_norm per model and layer (all voxels,
    voxel means, all training rows), the drop without each ``low_level`` set, the gains over
    the pretrained model and the semantic preference."""
    overall = [row for row in rows if row["region"] == "all" and row["train_fraction"] == 1
               and row["aggregation"] == "voxel_mean"]
    print(run_utils.comparison_table([r for r in overall if r["low_level"] == "none"],
                                     "cc_norm"))
    for spec in low_level:
        print(f"without {spec}:")
        print(run_utils.comparison_table([r for r in overall if r["low_level"] == spec],
                                         "drop_percent"))
    gains = [{**row, "model": f"{row['model']} - {row['baseline']}"} for row in comparisons
             if row["region"] == "all" and row["aggregation"] == "voxel_mean"
             and row["low_level"] == "none"]
    if gains:
        print(run_utils.comparison_table(gains, "difference"))
    if preference_rows:
        print(run_utils.comparison_table(preference_rows, "preference"))
