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
from alignment_analyses import DEFAULT_LAYERS
from encoding import ALL_ROWS
from summaries import CONFIDENCE, FOLLOWUP_CEILING, PARTITION_MEASURES, PARTITION_PARTS

logger = logging.getLogger(__name__)


def protocol(settings):
    """The scoring protocol of a run, for results.json (and the report): the evaluator's flags
    declared part of it (``arguments.protocol_values``) and the constants of the summaries."""
    return {**arguments.protocol_values(settings), "followup_ceiling": FOLLOWUP_CEILING,
            "confidence": CONFIDENCE}


# flag -> (the values that are the paper's, the paper's in words);
# docs/method.md#departures-from-the-paper
PAPER_EVALUATION = {
    "dataset": (("ds003020",), "ds003020"),
    "context_s": ((16.0,), "16"), "chunk_s": ((0.1,), "0.1"),
    "layers": ((None, list(DEFAULT_LAYERS)), " ".join(map(str, DEFAULT_LAYERS))),
    "tr_source": (("trfiles", "report"), "trfiles (measured TR times; or report)"),
    "alphas": ((None, eval_utils.ENCODING_ALPHAS.tolist()),
               "logspace(1, 4, 15) in singular-value units"),
    "n_boots": ((3,), "3"), "chunk_len": ((20,), "20"),
    "train_stories": ((None,), "the paper's training stories"),
    "test_story": ((data_utils.TEST_STORY,), data_utils.TEST_STORY),
    "test_target": (("repeats_mean",), "repeats_mean"),
    "normalise_by": (("test_repeats",), "test_repeats"), "alpha_score": (("r2",), "r2"),
    "nc_thr": ((0.4,), "0.4"), "voxels": (("all",), "all"),
    "epochs": ((["final"],), "final (the epoch of lowest validation loss)")}
# the trainer's flags recorded in a tuned checkpoint -> (the paper's values, in words)
PAPER_TRAINING = {
    "select_by": (("loss",), "loss (the epoch of lowest validation loss)"),
    "target": (("fmri",), "fmri"), "nc_thr": ((0.4,), "0.4"), "num_epochs": ((30,), "30"),
    "batch_size": ((128,), "128"), "base_lr": ((5e-5,), "5e-05"),
    "linear_layer_lr": ((1e-4,), "0.0001"), "warmup_epochs": ((5,), "5"),
    "head_lr_decay": ((0.8,), "0.8"), "head_lr_floor": ((0.1,), "0.1")}


def departures(settings, dtype, models):
    """The settings of a run that are not the paper's: [{"setting", "value", "paper"}], its
    flags (``PAPER_EVALUATION``), the precision of the extraction (``dtype``: None for fp32)
    and, per tuned model of ``models`` ((label, checkpoint) pairs), the training flags its
    checkpoint records (``PAPER_TRAINING``; how its epoch was chosen among them)."""
    found = [{"setting": f"--{name}", "value": _flag_text(getattr(settings, name)),
              "paper": paper} for name, (values, paper) in PAPER_EVALUATION.items()
             if not any(_same(getattr(settings, name), value) for value in values)
             and not (name == "tr_source" and settings.dataset != "ds003020")]
    if dtype is not None:
        found.append({"setting": "--precision", "value": f"{settings.precision} "
                      f"({str(dtype).removeprefix('torch.')} autocast)", "paper": "fp32"})
    for label, checkpoint in models:
        trained = run_utils.tuning_arguments(checkpoint) or {}  # {} for a pretrained model
        found += [{"setting": f"{label}: brain_trainer_story.py --{name}",
                   "value": _flag_text(trained[name]), "paper": paper}
                  for name, (values, paper) in PAPER_TRAINING.items()
                  if name in trained and not any(_same(trained[name], v) for v in values)]
    return found


def _same(value, paper):
    """Whether a flag's value is the paper's: numbers (and lists of them) to rounding error."""
    if isinstance(value, (list, tuple)) and isinstance(paper, list):
        return len(value) == len(paper) and all(map(_same, value, paper))
    if isinstance(value, (int, float)) and isinstance(paper, (int, float)):
        return bool(np.isclose(value, paper, rtol=1e-9, atol=0))
    return value == paper


def _flag_text(value):
    """A flag's value as written on the command line."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "default" if value is None else str(value)


def write_results(out_dir, all_results, facts, task):
    """results.json (``facts``, the rows, the comparisons, the semantic preference and the
    penalty grids, in the format of ``results_schema``), results.csv, comparisons.csv,
    alpha_grid.csv, the per-voxel .npz files (r,
    cc_norm, alpha and, with permutations, p_value and q_value; one entry per voxel of the
    subject, NaN where not fitted), the test predictions (``predictions_*.npz``: ``prediction``
    float32 (scored rows, fitted voxels), ``rows``, the test-story response rows they belong
    to, and ``voxels``, the int64 indices of its columns among the subject's voxels),
    ``summary_voxels.npy`` (the (n,) int64 indices, among the subject's voxels, of the voxels
    the "all" voxel means average over, for the report) and the plots (``write_plots``) in a
    fresh ``out_dir``.
    ``facts`` holds the subject, test story and the ``summary_voxels`` facts, for the titles.

    Returns the alignment rows, the comparisons, the semantic-preference rows and the
    variance-partitioning rows."""
    rows, preference_rows, alpha_rows, partition_rows = [], [], [], []
    n_train = len(task.responses.train)
    trim = task.test_trim
    test_rows = np.arange(trim, trim + len(task.responses.test))
    columns = task.fitted_indices()  # the subject's voxel index of each fitted voxel
    for label, layers in all_results.items():
        for layer, result in layers.items():
            reference = result["encoding"]["none"]
            fitted = [(analysis, ALL_ROWS, 1.0, None, n_train, scores)
                      for analysis, scores in result["encoding"].items()]
            fitted += [("none", name, task.subsets[name].fraction,
                        _count(task.subsets[name].stories), len(task.subsets[name].rows), scores)
                       for name, scores in result["efficiency"].items()]
            for analysis, subset, fraction, stories, train_rows, scores in fitted:
                rows += summary_rows(label, layer, analysis, (fraction, stories, train_rows),
                                     scores, reference, task.summaries.keys)
                grid = scores["summary"]["alpha_grid"]
                alpha_rows.append({
                    "model": label, "layer": layer, "low_level": analysis,
                    "train_fraction": fraction, "train_stories": stories,
                    "n_voxels": grid["n_voxels"],
                    "lowest_fraction": grid["lowest_fraction"],
                    "highest_fraction": grid["highest_fraction"],
                    "alphas": [float(a) for a in task.alphas],
                    "mean_cv_score": grid["mean_cv_score"], "wider_alphas": grid["wider_alphas"]})
                if subset != ALL_ROWS:
                    continue
                np.savez(out_dir / run_utils.voxel_results_name(label, layer, analysis),
                         **{name: task.full(scores[name]) for name in VOXEL_ARRAYS
                            if name in scores})
                if analysis == "none":
                    np.savez(out_dir / run_utils.voxel_results_name(label, layer, analysis,
                                                                    "predictions"),
                             prediction=scores["prediction"], rows=test_rows, voxels=columns)
            for spec, scores in result["partition"].items():
                partition_rows += partition_summary_rows(label, layer, spec, scores,
                                                         task.summaries.keys)
                np.savez(out_dir / run_utils.voxel_results_name(label, layer,
                                                                f"partition {spec}"),
                         **{name: task.full(scores[name])
                            for name in (*PARTITION_MEASURES, "alpha", "ratio")})
            if result["semantic_preference"] is not None:
                preference_rows.append(preference_row(label, layer,
                                                      result["semantic_preference"]))
    comparisons = compare_to_pretrained(all_results, task.summaries)
    needed_rows = stories_needed_rows(all_results, task)
    story_sets = {str(len(subset.stories)): subset.stories for subset in task.subsets.values()
                  if subset.stories is not None}
    run_utils.write_json(out_dir / results_schema.RESULTS_FILE, results_schema.results_document(
        facts, rows, comparisons, preference_rows, alpha_rows, partition_rows, story_sets,
        needed_rows))
    np.save(out_dir / run_utils.SUMMARY_VOXELS_NAME, columns[task.voxels])
    run_utils.write_csv(out_dir / "results.csv", rows)
    if comparisons:
        run_utils.write_csv(out_dir / "comparisons.csv", comparisons)
    if preference_rows:
        run_utils.write_csv(out_dir / "semantic_preference.csv", preference_rows)
    if partition_rows:
        run_utils.write_csv(out_dir / "partition.csv", partition_rows)
    if needed_rows:
        run_utils.write_csv(out_dir / "stories_needed.csv", needed_rows)
    run_utils.write_csv(out_dir / "alpha_grid.csv", [
        {name: " ".join(f"{v:.6g}" for v in value) if isinstance(value, list) else value
         for name, value in row.items()} for row in alpha_rows])
    write_plots(out_dir, rows, comparisons, preference_rows, facts, alpha_rows, partition_rows)
    if facts["regions"]["file"] is not None:
        shutil.copyfile(facts["regions"]["file"], out_dir / "regions.json")
    return rows, comparisons, preference_rows, partition_rows


VOXEL_ARRAYS = ("r", "cc_norm", "alpha", "p_value", "q_value")  # in voxels_*.npz


def partition_summary_rows(label, layer, spec, scores, keys):
    """partition.csv rows of one layer and low-level set: one per (region, aggregation) key,
    each measure's mean and each part's interval."""
    summary = scores["summary"]
    rows = []
    for key in keys:
        row = {"model": label, "layer": layer, "low_level": spec, "region": key[0],
               "aggregation": key[1], "n_voxels": summary["n_voxels"][key]}
        for name in PARTITION_MEASURES:
            row[name] = summary[name][key]
            if name in PARTITION_PARTS:
                interval = summary["ci"][name][key]
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = interval or (None, None)
        rows.append(row)
    return rows


def preference_row(label, layer, preference):
    """A semantic_preference.csv row: the scores and, with resamples, the interval."""
    low, high = _interval(None if preference.get("bootstrap") is None
                          else preference["bootstrap"][:, None])
    return {"model": label, "layer": layer,
            **{name: value for name, value in preference.items() if name != "bootstrap"},
            "ci_low": _at(low, 0), "ci_high": _at(high, 0)}


def _count(stories):
    return None if stories is None else len(stories)


def summary_rows(label, layer, analysis, training, scores, reference, keys):
    """results.csv rows of one fitted encoding model: one per (region, aggregation) key;
    ``training``: its (train_fraction, train_stories, train_rows); ``drop_percent`` (and its
    interval, from the same resamples) against ``reference``, the scores of the layer's own
    features."""
    fraction, stories, train_rows = training
    summary = scores["summary"]
    before = reference["summary"]["cc_norm"]
    drop_low, drop_high = _drop_interval(reference, scores, analysis)
    rows = []
    for index, key in enumerate(keys):
        region, aggregation = key
        value, ci = summary["cc_norm"][key], summary["ci"][key]
        defined = analysis != "none" and None not in (before[key], value)
        drop = eval_utils.percent_drop(before[key], value) if defined else None
        rows.append({
            "model": label, "layer": layer, "low_level": analysis, "region": region,
            "aggregation": aggregation, "train_fraction": fraction, "train_stories": stories,
            "train_rows": train_rows,
            "cc_norm": value, "r": summary["r"][key], "drop_percent": drop,
            "drop_ci_low": _at(drop_low, index, drop), "drop_ci_high": _at(drop_high, index, drop),
            "n_voxels": summary["n_voxels"][key],
            "cc_norm_ci_low": None if ci is None else ci[0],
            "cc_norm_ci_high": None if ci is None else ci[1],
            "significant_fraction": summary["significant_fraction"][key]})
    return rows


def _drop_samples(reference, scores):
    """Per resample and summary, the drop in percent of ``scores`` from ``reference`` (the
    layer's own features); None without resamples of both."""
    if "bootstrap" not in reference or "bootstrap" not in scores:
        return None
    return eval_utils.percent_drop_samples(reference["bootstrap"], scores["bootstrap"])


def _drops(reference, scores, keys):
    """key -> the drop in percent of ``scores`` from ``reference`` (None where undefined)."""
    before, after = reference["summary"]["cc_norm"], scores["summary"]["cc_norm"]
    return {key: None if None in (before[key], after[key])
            else eval_utils.percent_drop(before[key], after[key]) for key in keys}


def _drop_interval(reference, scores, analysis):
    """(low, high) arrays of the drop's interval per summary, NaN where a resample's mean
    before removal is not positive (the drop is undefined there); (None, None) without one."""
    samples = None if analysis == "none" else _drop_samples(reference, scores)
    return _interval(samples)


def _interval(samples):
    if samples is None:
        return None, None
    low, high = eval_utils.percentile_interval(samples, CONFIDENCE)
    undefined = np.isnan(samples).any(axis=0)
    return np.where(undefined, np.nan, low), np.where(undefined, np.nan, high)


def _at(values, index, defined=True):
    """``values[index]`` as a float; None where ``values`` is None, the entry is NaN or the
    value it belongs to is undefined (None)."""
    if values is None or defined is None or not np.isfinite(values[index]):
        return None
    return float(values[index])


def compare_to_pretrained(all_results, summaries):
    """Each tuned model against the pretrained one, per layer both have: the difference of
    mean cc_norm (per analysis and (region, aggregation)), of each low-level drop and of the
    semantic preference, with the interval from the same resamples of both models and its
    verdict (``eval_utils.interval_verdict``). [] without a pretrained model."""
    baseline = all_results.get("pretrained")
    if baseline is None:
        return []
    comparisons = []
    for label, layers in all_results.items():
        if label == "pretrained":
            continue
        for layer in sorted(set(layers) & set(baseline)):
            ours, theirs = layers[layer], baseline[layer]
            common = {"model": label, "baseline": "pretrained", "layer": layer}
            for analysis, scores in ours["encoding"].items():
                reference = theirs["encoding"][analysis]
                comparisons += _summary_comparisons(
                    common, "cc_norm", analysis, summaries.keys,
                    scores["summary"]["cc_norm"], reference["summary"]["cc_norm"],
                    _difference(scores.get("bootstrap"), reference.get("bootstrap")))
                if analysis == "none":
                    continue
                pairs = [(result["encoding"]["none"], result["encoding"][analysis])
                         for result in (ours, theirs)]
                comparisons += _summary_comparisons(
                    common, "drop_percent", analysis, summaries.keys,
                    *[_drops(*pair, summaries.keys) for pair in pairs],
                    _difference(*[_drop_samples(*pair) for pair in pairs]))
            preferences = (ours["semantic_preference"], theirs["semantic_preference"])
            if None not in preferences:
                comparisons += _summary_comparisons(
                    common, "semantic_preference", "none", [(None, None)],
                    {(None, None): preferences[0]["preference"]},
                    {(None, None): preferences[1]["preference"]},
                    _difference(*[None if p.get("bootstrap") is None else p["bootstrap"][:, None]
                                  for p in preferences]))
    return comparisons


def stories_needed_rows(all_results, task):
    """Per tuned model, layer it shares with the pretrained one and (region, aggregation):
    the whole training stories it needs for the pretrained model's mean cc_norm with all of
    them (``eval_utils.amount_needed`` over --train_story_counts and all the stories), with
    the interval of the same reading on each bootstrap resample of both. [] without a
    pretrained model or --train_story_counts."""
    baseline = all_results.get("pretrained")
    counted = [name for name, subset in task.subsets.items() if subset.stories is not None]
    if baseline is None or not counted:
        return []
    total = len(task.stories)
    amounts = [len(task.subsets[name].stories) for name in counted] + [total]
    keys = task.summaries.keys
    rows = []
    for label, layers in all_results.items():
        if label == "pretrained":
            continue
        for layer in sorted(set(layers) & set(baseline)):
            curve = [layers[layer]["efficiency"][name] for name in counted]
            curve.append(layers[layer]["encoding"]["none"])
            reference = baseline[layer]["encoding"]["none"]
            target = [_value(reference["summary"]["cc_norm"][key]) for key in keys]
            needed = eval_utils.amount_needed(amounts, [[_value(s["summary"]["cc_norm"][key])
                                                         for s in curve] for key in keys],
                                              target)
            low = high = None
            if all("bootstrap" in s for s in [*curve, reference]):
                samples = eval_utils.amount_needed(
                    amounts, np.stack([s["bootstrap"] for s in curve], -1),
                    reference["bootstrap"])
                tail = (1 - CONFIDENCE) / 2
                low, high = np.quantile(np.nan_to_num(samples, nan=np.inf), [tail, 1 - tail],
                                        axis=0, method="inverted_cdf")
            for index, key in enumerate(keys):
                value = _at(needed, index) if np.isfinite(target[index]) else None
                rows.append({
                    "model": label, "baseline": "pretrained", "layer": layer, "region": key[0],
                    "aggregation": key[1], "baseline_cc_norm": _at(target, index),
                    "total_stories": total, "stories_needed": value,
                    "ci_low": _at(low, index, value), "ci_high": _at(high, index, value),
                    "less_data": None if value is None else total / value})
    return rows


def _value(number):
    """A summary's number as a float, NaN for None."""
    return np.nan if number is None else float(number)


def _difference(ours, theirs):
    """Resamples of ``ours - theirs``; None unless both have them."""
    return None if ours is None or theirs is None else ours - theirs


def _summary_comparisons(common, measure, analysis, keys, ours, theirs, differences):
    """Comparison rows of one measure, one per key: both values, their difference, its
    interval (from ``differences``, (resamples, keys)) and verdict."""
    low, high = _interval(differences)
    rows = []
    for index, key in enumerate(keys):
        defined = None not in (ours[key], theirs[key])
        ci_low = _at(low, index, True if defined else None)
        ci_high = _at(high, index, True if defined else None)
        rows.append({**common, "measure": measure, "low_level": analysis, "region": key[0],
                     "aggregation": key[1], "model_value": ours[key],
                     "baseline_value": theirs[key],
                     "difference": ours[key] - theirs[key] if defined else None,
                     "ci_low": ci_low, "ci_high": ci_high,
                     "verdict": eval_utils.interval_verdict(ci_low, ci_high)})
    return rows


def write_run_flatmaps(out_dir, all_results, rows, layers, dataset, subject, task, cache_dir,
                       height):
    """The cortical maps of ``layers`` (--flatmap_layers; 'best': the layer of the highest mean
    cc_norm of the last model) in ``out_dir`` (``brain_regions.write_flatmaps``), from
    per-voxel cc_norm in the subject's voxel space (NaN where not fitted; only summary voxels
    are drawn), and with variance partitioning, of the variance unique to the layer beside
    each low-level set (``..._unique_vs_<set>.png``)."""
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
    shown = task.fitted_indices()[task.voxels]  # NaN where not fitted: only these are drawn
    if cc_norm:
        brain_regions.write_flatmaps(out_dir, cc_norm, shown, dataset, subject, cache_dir, height)
    partitioned = {spec for label, results in all_results.items() for layer in chosen
                   for spec in results[layer]["partition"]}
    for spec in sorted(partitioned):
        unique = {(label, layer): task.full(results[layer]["partition"][spec]["unique_layer"])
                  for label, results in all_results.items() for layer in sorted(chosen)}
        brain_regions.write_flatmaps(out_dir, unique, shown, dataset, subject, cache_dir, height,
                                     measure=f"variance unique to the layer beside {spec}",
                                     suffix=f"_unique_vs_{spec}")


def write_plots(out_dir, rows, comparisons, preference_rows, facts, alpha_rows,
                partition_rows):
    """alignment.png (mean cc_norm per layer, one line per model, with the bootstrap
    intervals), comparison.png (tuned minus pretrained with intervals), reliance.png (drop
    per layer; colour per model, line style per feature set removed), data_efficiency.png
    (cc_norm against the training rows, a panel per layer) and semantic_preference.png, each
    when the run has its results, over "all" voxel means; regions.png (per layer, the
    parcel-mean cc_norm of the groups, else regions, per model) with regions; alpha_grid.png
    (the mean CV score against the penalty, a panel per layer) of the layers' own features;
    partition.png (per low-level set and region, the voxel means of the three parts of the
    explained variance per layer and model) with variance partitioning."""
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
    gains = [row for row in comparisons if row["measure"] == "cc_norm"
             and row["region"] == "all" and row["aggregation"] == "voxel_mean"
             and row["low_level"] == "none"]
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
        plots.plot_curves_per_layer(out_dir / "data_efficiency.png", curves, "training TRs",
                                    "mean cc_norm", f"Data efficiency, {voxels}")
    grids = [row for row in alpha_rows if row["low_level"] == "none"
             and row["train_fraction"] == 1 and row["mean_cv_score"] is not None]
    if grids:
        curves = {}
        for row in grids:
            curves.setdefault(row["model"], {})[row["layer"]] = dict(
                zip(row["alphas"], row["mean_cv_score"]))
        plots.plot_curves_per_layer(out_dir / "alpha_grid.png", curves, "ridge penalty (alpha)",
                                    "mean CV score", f"The penalty grid, {voxels}",
                                    log_x=True)
    if partition_rows:
        regions = ["all", *facts["regions"]["shown"]]
        cells = {}
        for row in partition_rows:
            if row["aggregation"] == "voxel_mean" and row["region"] in regions:
                cells.setdefault((f"with {row['low_level']}", row["region"]), {}).setdefault(
                    row["model"], {})[row["layer"]] = [row[name] for name in PARTITION_PARTS]
        plots.plot_partition(out_dir / "partition.png", dict(sorted(
            cells.items(), key=lambda item: regions.index(item[0][1]))),
            f"Variance partitioning (voxel means), {voxels}")
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


def print_tables(rows, comparisons, preference_rows, partition_rows=()):
    """The run's headline tables on stdout: mean cc_norm per model and layer (all voxels,
    voxel means, all training rows), the drop without each low-level set, the variance unique
    to the layer and to each partitioned set, the gains over the pretrained model and the
    semantic preference."""
    overall = [row for row in rows if row["region"] == "all" and row["train_fraction"] == 1
               and row["aggregation"] == "voxel_mean"]
    print(run_utils.comparison_table([r for r in overall if r["low_level"] == "none"],
                                     "cc_norm"))
    for spec in dict.fromkeys(row["low_level"] for row in overall):
        if spec != "none":
            print(f"without {spec}:")
            print(run_utils.comparison_table([r for r in overall if r["low_level"] == spec],
                                             "drop_percent"))
    partitions = [row for row in partition_rows if row["region"] == "all"
                  and row["aggregation"] == "voxel_mean"]
    for spec in dict.fromkeys(row["low_level"] for row in partitions):
        print(f"variance partitioned with {spec}:")
        for part in ("unique_layer", "unique_low_level"):
            print(run_utils.comparison_table([r for r in partitions if r["low_level"] == spec],
                                             part))
    gains = [{**row, "model": f"{row['model']} - {row['baseline']}"} for row in comparisons
             if row["measure"] == "cc_norm" and row["region"] == "all"
             and row["aggregation"] == "voxel_mean" and row["low_level"] == "none"]
    if gains:
        print(run_utils.comparison_table(gains, "difference"))
    if preference_rows:
        print(run_utils.comparison_table(preference_rows, "preference"))
