"""The Markdown of ``report.py``: a section per part of the run (the compared models and the
paper's expected directions, the tuned-minus-pretrained intervals, alignment per layer and
region, data efficiency, the subjects, low-level reliance, semantic preference, the probes)
from the alignment results (a ``results_schema.ResultsFolder``) and ``report_summary``'s
numbers.
"""

import os
from pathlib import Path

import eval_utils
import run_utils
from report_summary import (ACROSS_SUBJECTS_ALPHA, NO_DIFFERENCE, VOXEL_TYPES, expectation,
                            finite, find_row, headline_rows, probe_score, tuned_comparisons,
                            tuning_target)

DROP_ABOVE_100 = ("A drop above 100% means cc_norm became negative once the features were "
                  "removed: what is left of the layer's features predicts the test story worse "
                  "than chance.")
DROP_UNDEFINED = ("A drop is relative to the cc_norm before removal and is undefined where that "
                  "is <= 0 (or missing).")
# protocol choice -> (what it is, {value: the value in words})
PROTOCOL_CHOICES = {
    "test_target": ("test target", {
        "repeats_mean": "the mean over the test story's repeats",
        "data": "the `data` rows of the test story's response file"}),
    "normalise_by": ("normaliser", {
        "test_repeats": "cc_max from the scored rows of the test story's repeats",
        "nc_file": "cc_max from the noise-ceiling file (the follow-up paper's normaliser)",
        "intersubject": "the test story's intersubject ceiling, from its listeners (leave one subject out)"}),
    "alpha_score": ("alpha score", {
        "r2": "the signed square root of held-out R2, as the Huth lab's bootstrap_ridge",
        "corr": "held-out correlation"}),
    "tr_source": ("TR source", {
        "respdict": "a simulated 2 s grid from respdict.json",
        "report": "measured trigger times from the .report files",
        "trfiles": "measured trigger times from the TR files of Antonello et al."})}


# ----------------------------------------------------------------------------- cells

def _number(value):
    """Three decimals; "n/a" for a missing or non-finite value."""
    return f"{value:.3f}" if finite(value) else "n/a"


def _drop(value):
    """A drop in percent; "undefined" where there is none (see DROP_UNDEFINED)."""
    return f"{value:.1f}%" if finite(value) else "undefined"


def _counted(text, n):
    """A table cell with the number of voxels averaged: "0.194 (n=41)"."""
    return text if n is None else f"{text} (n={n})"


def _interval(low, high):
    """" [0.120, 0.180]"; nothing where the interval is missing."""
    return "" if low is None or high is None else f" [{_number(low)}, {_number(high)}]"


def _mean_cell(row):
    """A row's mean cc_norm with its interval, where recorded, and voxel count:
    "0.150 [0.120, 0.180] (n=41)"."""
    if row is None:
        return "n/a"
    return _counted(_number(row.cc_norm) + _interval(row.cc_norm_ci_low, row.cc_norm_ci_high),
                    row.n_voxels)


def _drop_cell(row):
    """A row's drop with its interval, where recorded, and voxel count."""
    if row is None:
        return "n/a"
    interval = ("" if row.drop_ci_low is None else
                f" [{_drop(row.drop_ci_low)}, {_drop(row.drop_ci_high)}]")
    return _counted(_drop(row.drop_percent) + interval, row.n_voxels)


def _significant_cell(row):
    return "n/a" if row is None else _counted(f"{row.significant_fraction:.0%}", row.n_voxels)


def _difference_cell(row):
    """A comparison's difference with its interval; "n/a" where there is none."""
    if row is None or row.difference is None:
        return "n/a"
    if row.measure == "drop_percent":
        interval = "" if row.ci_low is None else f" [{row.ci_low:+.1f}, {row.ci_high:+.1f}]"
        return f"{row.difference:+.1f} points{interval}"
    return _number(row.difference) + _interval(row.ci_low, row.ci_high)


def _verdict_cell(verdict, expected=None, missing="no interval"):
    """What an interval (or a test) says, in words: the verdict (None: ``missing``); with
    ``expected`` (the paper's direction) whether it goes the paper's way, in bold when it goes
    against."""
    if verdict is None:
        return missing
    if verdict == NO_DIFFERENCE or expected is None:
        return verdict
    return (f"{verdict}, as expected" if verdict == expected
            else f"**{verdict}: against the expected direction**")


def _p(value):
    """A p-value to four significant digits; "n/a" where there is none."""
    return f"{value:.4g}" if finite(value) else "n/a"


def _drop_notes(drops):
    """The explanations the drops shown need: above 100%, undefined."""
    notes = []
    if any(finite(d) and d > 100 for d in drops):
        notes.append(DROP_ABOVE_100)
    if any(not finite(d) for d in drops):
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


# ----------------------------------------------------------------------------- the report

def render(out, alignment, planted, downstream, summary, title, truth, curves=None):
    """The report's Markdown text (``downstream``: folder -> its results.json; ``curves``: the
    tuned models' training_curves.png, or None)."""
    results = alignment.results
    lines = [f"# {title}", "",
             f"Subject {results.subject}; encoding models fitted on "
             f"{len(results.train_stories)} stories, tested on {results.test_story}; "
             f"means over voxels with a noise ceiling above {results.nc_thr} and test "
             f"responses that vary ({results.excluded_voxels} voxels left out because their "
             "test responses are constant or NaN); n is the number of voxels averaged. Models: "
             + ", ".join(f"**{label}** (`{path}`)" for label, path in results.models.items())
             + ".", "", *_protocol_section(results),
             *_direction_section(summary), *_comparison_section(out, alignment, summary),
             *_baselines_section(alignment, summary), *_alignment_section(out, alignment),
             *_planted_section(planted, alignment),
             *_regions_section(out, alignment, summary),
             *_efficiency_section(out, alignment, summary)]
    if "across_subjects" in summary:
        lines += _across_subjects_section(summary)
    lines += _reliance_section(out, alignment, summary, planted)
    lines += _partition_section(out, alignment)
    lines += _preference_section(out, alignment, summary)
    lines += _penalty_grid_section(out, alignment)
    if curves is not None:
        lines += ["## Brain-tuning runs", "",
                  "Training (solid) and validation (dashed) loss and the validation correlation "
                  "per epoch of each tuned model's run (its metrics.jsonl; per step in "
                  "<run>/tensorboard/ when it was trained with --report_to tensorboard); the "
                  "ring marks the epoch its final/ keeps.", "",
                  _image(out, curves, "training curves"), ""]
    for folder, probe in downstream.items():
        lines += _probe_section(out, folder, probe)
    lines += ["## Summary", "", "```json", run_utils.json_text(summary, indent=1), "```", ""]
    if truth is not None:
        lines += [_synthetic_explanation(summary, truth)]
    return "\n".join(lines)


def _models_and_layers(results):
    """The models (in order) and layers of the headline rows without a feature removed."""
    rows = [r for r in headline_rows(results.results) if r.low_level == "none"]
    return list(dict.fromkeys(r.model for r in rows)), sorted({r.layer for r in rows}), rows


def _alignment_section(out, alignment):
    """Mean cc_norm per model and layer, per reported region; the significant fractions."""
    results = alignment.results
    models, layers, rows = _models_and_layers(results)
    lines = ["## Brain alignment", ""]
    note = fitted_voxels_note(results)
    if note:
        lines += [note, ""]
    if any(r.cc_norm_ci_low is not None for r in rows):
        lines += [f"In brackets: the {results.protocol.confidence:.0%} block-bootstrap interval "
                  "of the mean over the test story's time.", ""]
    for region in ["all", *results.regions.shown]:
        lines += [f"Mean cc_norm, region `{region}`:", "",
                  _table(["model", *[f"layer {k}" for k in layers]],
                         [[m, *[_mean_cell(find_row(rows, model=m, layer=k, region=region))
                                for k in layers]] for m in models]), ""]
    significant = [r for r in rows if r.region == "all" and r.significant_fraction is not None]
    if significant:
        lines += ["Fraction of those voxels whose permutation p-value survives "
                  f"Benjamini-Hochberg FDR at q = {results.protocol.fdr_q}, region `all`:", "",
                  _table(["model", *[f"layer {k}" for k in layers]],
                         [[m, *[_significant_cell(find_row(significant, model=m, layer=k))
                                for k in layers]] for m in models]), ""]
    return lines + [_image(out, alignment.folder / "alignment.png", "alignment per layer"), ""]


def _planted_section(planted, alignment):
    """Mean cc_norm over the planted voxels of each type (synthetic data)."""
    if not planted:
        return []
    _, layers, _ = _models_and_layers(alignment.results)
    return ["### Planted voxels (synthetic data)", "",
            "Mean cc_norm over the planted voxels of each type that pass the same rule "
            "(noise voxels respond to nothing: those that clear the noise-ceiling threshold "
            "do so by chance, see [What the planted signal predicts]"
            "(#what-the-planted-signal-predicts)):", "",
            _table(["model", "layer", *VOXEL_TYPES],
                   [[m, k, *[_counted(_number(planted.means[m]["none"][k][t]), planted.counts[t])
                             for t in VOXEL_TYPES]]
                    for m in planted.means for k in layers]), ""]


def fitted_voxels_note(results):
    """The sentence saying which voxels a run fitted (``fitted_voxels``), or None when it
    fitted every voxel."""
    fitted = results.fitted_voxels
    if fitted.selection == "all":
        return None
    selection = fitted.selection
    what = (f"the voxels whose noise ceiling is above {selection[3:]}"
            if selection.startswith("nc>") else
            f"the voxels of `{selection}` (a region or group of the run's --regions)")
    return (f"Only {what} were fitted (`--voxels {selection}`: {fitted.n} of "
            f"{results.subject_voxels} voxels); every mean and fraction below is over those "
            "voxels.")


def _direction_section(summary):
    """The compared models and, per headline number, whether it moves the paper's way beyond
    the noise: the interval of the difference decides (docs/method.md#uncertainty)."""
    roles, layer, checks = summary["models"], summary["layer"], summary["expected_direction"]
    tuned = roles["tuned"]
    against = [key for key, check in checks.items() if check["as_expected"] is False]
    confirmed = [key for key, check in checks.items() if check["as_expected"] is True]
    undetected = [key for key, check in checks.items() if check["verdict"] == NO_DIFFERENCE]
    if against:
        verdict = ("**Against the paper's expected direction, beyond the noise:** " + "; ".join(
            f"{expectation(key)[0]} is {checks[key]['tuned']:.3f} for {tuned} and "
            f"{checks[key]['pretrained']:.3f} for pretrained, where brain-tuning should "
            f"make it {checks[key]['expected']}" for key in against) + ".")
    else:
        verdict = "No comparison goes against the paper's expected direction beyond the noise."
    parts = [f"{len(confirmed)} of {len(checks)} go the paper's way with an interval that "
             "excludes 0"]
    if undetected:
        parts.append(f"{len(undetected)} show no detectable difference (the interval holds 0: "
                     "read them as noise, whichever way the point estimates go)")
    drops = [value for key, check in checks.items() if key.startswith("drop")
             for value in (check["pretrained"], check["tuned"])]
    return [f"## {tuned} against pretrained", "",
            f"The tuned model compared is **{tuned}** (`{summary['checkpoints']['tuned']}`), at "
            f"layer {layer}, the deepest evaluated. {verdict} Of the comparisons, "
            f"{'; '.join(parts)}. A verdict needs an interval: where a number has none (planted "
            "voxel types, a run with `--n_bootstrap 0`, or a drop whose cc_norm before removal "
            "is not above 0 in every resample) it is left undecided.", "",
            _direction_table(summary), "", *_drop_notes(drops)]


def _direction_table(summary):
    """Per headline number: both models', the difference, the paper's direction, the verdict."""
    checks = summary["expected_direction"]
    return _table(["measure", "pretrained", summary["models"]["tuned"], "difference",
                   "paper expects tuned", "verdict"],
                  [[expectation(key)[0],
                    *[(_drop if key.startswith("drop") else _number)(check[role])
                      for role in ("pretrained", "tuned")],
                    _check_difference(key, check), check["expected"],
                    _verdict_cell(check["verdict"], check["expected"])
                    if check["difference"] is not None else
                    ("undefined" if key.startswith("drop") else "n/a")]
                   for key, check in checks.items()])


def model_card_lines(summary, alignment):
    """The brain-alignment section of the tuned model's card (``report.py --model_card``):
    where it was evaluated, and its headline numbers against the pretrained model's."""
    results = alignment.results
    return [f"Evaluated with `brain_evaluate.py` on {results.subject}: encoding models fitted "
            f"on {len(results.train_stories)} stories, tested on {results.test_story}, at "
            f"layer {summary['layer']}; means over the voxels with a noise ceiling above "
            f"{results.nc_thr} (n = {summary['tuned'].get('n_voxels')}). In brackets the "
            f"{results.protocol.confidence:.0%} block-bootstrap interval of the difference; "
            "the verdict reads it against the brain-tuning paper's expected direction.", "",
            _direction_table(summary), ""]


def _check_difference(key, check):
    """A headline check's difference with its interval ("n/a" where it has none)."""
    difference, ci = check["difference"], check["ci"]
    if difference is None:
        return "n/a"
    if key.startswith("drop"):
        return f"{difference:+.1f} points" + ("" if ci is None else
                                              f" [{ci[0]:+.1f}, {ci[1]:+.1f}]")
    return _number(difference) + ("" if ci is None else _interval(*ci))


def _protocol_section(results):
    """Every setting of the run that departs from the paper's, with the paper's value, then the
    scoring choices in words."""
    protocol = results.protocol
    items = []
    for name, (what, words) in PROTOCOL_CHOICES.items():
        value = getattr(protocol, name)
        text = words.get(value, repr(value))
        if name == "tr_source" and protocol.others.get("dataset", "ds003020") != "ds003020":
            text = ("the scan clock of the BIDS events and bold.json (dataset "
                    f"{protocol.others['dataset']}, {protocol.others.get('space')})")
        elif name == "tr_source" and value != "respdict" and protocol.tr_path:
            text += f" (`{protocol.tr_path}`)"
        items.append(f"- {what}: {text}")
    if protocol.n_bootstrap:
        items.append(f"- intervals: {protocol.confidence:.0%}, from {protocol.n_bootstrap} "
                     f"block-bootstrap resamples of the test story's time (blocks of "
                     f"{protocol.block_len} TRs)")
    if protocol.n_permutations:
        items.append(f"- significance: {protocol.n_permutations} permutations per voxel, "
                     f"Benjamini-Hochberg FDR at q = {protocol.fdr_q}")
    items.append("- parcel means (follow-up paper): cc_norm set to 0 where the test-row "
                 f"ceiling is <= {protocol.followup_ceiling}, averaged over all of a "
                 "region's voxels")
    departures = results.departures
    if not departures:
        return ["**Protocol:** the paper's in every setting recorded.", "", *items, ""]
    return [f"**Protocol: departs from the paper's in {len(departures)} setting"
            f"{'s' if len(departures) > 1 else ''}** (numbers may differ from the paper's "
            "for these alone):", "",
            *[f"- `{d.setting}`: {d.value} (the paper's: {d.paper})" for d in departures], "",
            "Scoring:", "", *items, ""]


def _comparison_section(out, alignment, summary):
    """The tuned model minus the pretrained one, with intervals, per layer, region and
    aggregation."""
    results = alignment.results
    rows = tuned_comparisons(results, summary["models"])
    if not rows:
        return []
    tuned = summary["models"]["tuned"]
    confidence = results.protocol.confidence
    regions = ["all", *results.regions.shown]
    rows = sorted((r for r in rows if r.region in regions),
                  key=lambda r: (regions.index(r.region), r.aggregation, r.layer))
    cells = [[r.region, r.aggregation, r.layer, r.baseline_value, r.model_value,
              _difference_cell(r), _verdict_cell(r.verdict)] for r in rows]
    return [f"## {tuned} minus pretrained, with {confidence:.0%} intervals", "",
            f"Mean cc_norm of {tuned} minus that of pretrained, with the {confidence:.0%} "
            "block-bootstrap interval over the test story's time (the same resamples for both "
            "models). `voxel_mean`: the mean over the voxels above the noise-ceiling threshold; "
            "`parcel_mean`: the follow-up paper's, per-voxel cc_norm set to 0 where the test-row "
            "ceiling is low and averaged over all of a region's voxels (a group of regions: the "
            "mean of its regions' means).", "",
            _table(["region", "aggregation", "layer", "pretrained", tuned, "difference",
                    "verdict"], cells), "",
            _image(out, alignment.folder / "comparison.png", "difference per layer"), ""]


def _baselines_section(alignment, summary):
    """Every tuned model's difference from the pretrained one side by side (region ``all``,
    voxel means), with what each was tuned towards: the brain-tuned model and the baselines
    tuned towards a big speech model's or a text LM's features (``tuning_target``); nothing
    when the run has one tuned model."""
    results = alignment.results
    comparisons = [row for row in results.comparisons
                   if row.baseline == "pretrained" and row.measure == "cc_norm"
                   and row.low_level == "none" and row.region == "all"
                   and row.aggregation == "voxel_mean"]
    models = list(dict.fromkeys(row.model for row in comparisons))
    if len(models) < 2:
        return []
    headline = summary["models"]["tuned"]
    models = [headline] + [m for m in models if m != headline] if headline in models else models
    layers = sorted({row.layer for row in comparisons})
    cells = [[model, tuning_target(results.models.get(model)) or "n/a",
              *[_difference_cell(find_row(comparisons, model=model, layer=layer))
                for layer in layers]]
             for model in models]
    return [f"## Brain-tuned and baseline models: minus pretrained, with "
            f"{results.protocol.confidence:.0%} intervals", "",
            "Mean cc_norm (region `all`, voxel means) of each tuned model minus that of the "
            "pretrained one. The baselines are tuned like the brain-tuned model, towards "
            "another target: a bigger speech model's features (BigSLM-tuned) or a text LM's "
            "(LM-tuned), `target_features.py`.", "",
            _table(["model", "tuned towards", *[f"layer {k}" for k in layers]], cells), ""]


def _regions_section(out, alignment, summary):
    """Per region (or group) of regions.png at the compared layer: each model's parcel-mean
    cc_norm and the tuned-minus-pretrained difference, with intervals; regions.png and the
    cortical maps (flatmap_*.png) of the run."""
    results = alignment.results
    shown = results.regions.shown
    maps = sorted(alignment.folder.glob("flatmap_*.png"))
    if not shown and not maps:
        return []
    lines = ["## Brain regions", ""]
    layer, tuned = summary["layer"], summary["models"]["tuned"]
    if shown:
        rows = [r for r in results.results if r.aggregation == "parcel_mean"
                and r.train_fraction == 1 and r.low_level == "none" and r.layer == layer]
        gains = [r for r in tuned_comparisons(results, summary["models"])
                 if r.aggregation == "parcel_mean" and r.layer == layer]
        models = list(dict.fromkeys(r.model for r in rows))
        cells = [[region, *[_mean_cell(find_row(rows, model=m, region=region)) for m in models],
                  _difference_cell(find_row(gains, region=region))] for region in shown]
        lines += [f"Mean cc_norm per region at layer {layer} (regions: "
                  f"`{results.regions.given}`), the follow-up paper's way: per-voxel cc_norm "
                  "set to 0 where the test-row ceiling is low, averaged over all of a region's "
                  "voxels, a group's the mean of its regions' means; in brackets the "
                  f"{results.protocol.confidence:.0%} block-bootstrap interval.",
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
    of the training rows and on fewer whole stories, and the stories each tuned model needs
    for the pretrained model's full-data alignment, where the run fitted some on fewer than
    all."""
    layer = summary["layer"]
    results = alignment.results
    rows = [r for r in results.results if r.aggregation == "voxel_mean"
            and r.region == "all" and r.low_level == "none" and r.layer == layer]
    if all(r.train_fraction == 1 for r in rows):
        return []
    models = list(dict.fromkeys(r.model for r in rows))
    lines = ["## Data efficiency", ""]
    fractions = sorted({r.train_fraction for r in rows if r.train_stories is None})
    if len(fractions) > 1:
        lines += [f"Mean cc_norm at layer {layer} (region `all`) of encoding models fitted on a "
                  "fraction of the training rows (in brackets: how many rows):", "",
                  _table(["model", *[f"{fraction:.0%} of training rows"
                                     for fraction in fractions]],
                         [[m, *["n/a" if row is None else
                                f"{_number(row.cc_norm)} ({row.train_rows} rows)"
                                for row in (find_row(rows, model=m, train_fraction=fraction,
                                                     train_stories=None)
                                            for fraction in fractions)]] for m in models]), ""]
    counts = sorted({r.train_stories for r in rows if r.train_stories is not None})
    if counts:
        total = len(results.train_stories)
        lines += [f"Mean cc_norm at layer {layer} (region `all`) of encoding models fitted on "
                  "whole training stories (the same nested sets for every model, `story_sets` "
                  f"in results.json; in brackets the {results.protocol.confidence:.0%} "
                  "interval):", "",
                  _table(["model", *[f"{k} {'story' if k == 1 else 'stories'}" for k in counts],
                          f"all {total}"],
                         [[m, *[_mean_cell(find_row(rows, model=m, train_stories=k))
                                for k in counts],
                           _mean_cell(find_row(rows, model=m, train_fraction=1.0))]
                          for m in models]), ""]
        needed = [r for r in results.stories_needed if r.layer == layer and r.region == "all"
                  and r.aggregation == "voxel_mean"]
        if needed:
            lines += ["Stories each model needs for the pretrained model's mean cc_norm with "
                      "all of them (read off its curve by linear interpolation at the first "
                      "crossing; the follow-up paper reports about 5x less data for a brain-"
                      "tuned model on a new participant):", "",
                      _table(["model", "pretrained with all", "stories needed", "less data"],
                             [[r.model, f"{_number(r.baseline_cc_norm)} ({r.total_stories} "
                               "stories)", _needed_cell(r), "n/a" if r.less_data is None
                               else f"{r.less_data:.1f}x"] for r in needed]), "",
                      "An interval end of \"not reached\" means that in more than its tail of "
                      "the resamples the model does not reach the pretrained model's alignment "
                      "with all the stories; the smallest count is an upper bound where the "
                      "curve starts above it.", ""]
    return lines + [_image(out, alignment.folder / "data_efficiency.png", "data efficiency"),
                    ""]


def _needed_cell(row):
    """Stories needed with its interval: "4.2 [2.0, 9.5] of 24"; "not reached" for None."""
    def stories(value):
        return "not reached" if value is None else f"{value:.1f}"

    if row.stories_needed is None:
        return f"not reached with {row.total_stories}"
    interval = ("" if row.ci_low is None and row.ci_high is None
                else f" [{stories(row.ci_low)}, {stories(row.ci_high)}]")
    return f"{stories(row.stories_needed)}{interval} of {row.total_stories}"


def _penalty_grid_section(out, alignment):
    """Per model and layer, the share of voxels whose penalty is an end of the grid, and a wider
    grid where more than ``eval_utils.EDGE_WARNING_FRACTION`` are
    (docs/alignment.md#the-penalty-grid)."""
    grids = [g for g in alignment.results.alpha_grid if g.low_level == "none"
             and g.train_fraction == 1]
    if not grids:
        return []
    alphas = grids[0].alphas
    cells = [[g.model, g.layer, f"{g.lowest_fraction:.0%}", f"{g.highest_fraction:.0%}",
              g.n_voxels] for g in grids]
    crowded = [g for g in grids if g.wider_alphas is not None]
    share = f"{eval_utils.EDGE_WARNING_FRACTION:.0%}"
    verdict = f"No model and layer has more than {share} of its voxels at an end of the grid."
    if crowded:
        wider = sorted(set().union(*(g.wider_alphas for g in crowded)))  # both ends if need be
        verdict = (f"{len(crowded)} of {len(grids)} have more than {share} at an end: the grid may "
                   "be too narrow for them (their best penalty may lie beyond it). A wider "
                   f"grid: `--alphas {' '.join(f'{a:.4g}' for a in wider)}`.")
    return ["## The penalty grid", "",
            f"The ridge chose each voxel's penalty from {len(alphas)} values, {min(alphas):.3g} "
            f"to {max(alphas):.3g} (`--alphas`). Share of the voxels averaged whose choice is "
            "the lowest or the highest with their CV score still rising there (the models "
            "without a feature set removed; all in `alpha_grid.csv`):", "",
            _table(["model", "layer", "at the lowest", "at the highest", "voxels"], cells), "",
            verdict, "",
            _image(out, alignment.folder / "alpha_grid.png", "mean CV score per penalty"), ""]


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
                          if finite(gain) else "n/a"])
        statistic = scores["wilcoxon_statistic"]
        tests.append([layer, len(scores["subjects"]),
                      "n/a" if statistic is None else f"{statistic:g}", _p(scores["p_value"]),
                      _verdict_cell(scores["verdict"], "higher", missing="no test")])
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
            f"two-sided); across subjects it decides the verdict: higher or lower where p < "
            f"{ACROSS_SUBJECTS_ALPHA}, else no detectable difference. {smallest}", "",
            _table(["layer", "subjects", "statistic", "p", "verdict"], tests), "", *notes,
            *([""] if notes else [])]


def _reliance_section(out, alignment, summary, planted):
    """The drop of mean cc_norm without each low-level feature set, per model and layer, the
    tuned model's against the pretrained one's with verdicts, and per planted voxel type;
    nothing when the run removed none."""
    results = alignment.results
    headline = headline_rows(results.results)
    models, layers, _ = _models_and_layers(results)
    analyses = [a for a in dict.fromkeys(r.low_level for r in headline) if a != "none"]
    if not analyses:
        return []
    drops = [r for r in headline if r.low_level != "none" and r.region == "all"]
    lines = ["## Reliance on low-level features", "",
             "Drop of mean cc_norm (percent) when each low-level feature set is regressed out "
             "of the layer's features before fitting the encoding model (in brackets: the "
             f"{results.protocol.confidence:.0%} block-bootstrap interval):", "",
             _table(["model", "removed", *[f"layer {k}" for k in layers]],
                    [[m, a, *[_drop_cell(find_row(drops, model=m, low_level=a, layer=k))
                              for k in layers]]
                     for m in models for a in analyses]), "",
             *_drop_notes([r.drop_percent for r in drops])]
    gains = [r for r in tuned_comparisons(results, summary["models"], "drop_percent")
             if r.region == "all" and r.aggregation == "voxel_mean"]
    if gains:
        tuned = summary["models"]["tuned"]
        lines += [f"{tuned}'s drop minus pretrained's (percentage points; the paper expects "
                  "brain-tuning to lower it), with the interval from the same resamples:", "",
                  _table(["removed", "layer", "difference", "verdict"],
                         [[r.low_level, r.layer, _difference_cell(r),
                           _verdict_cell(r.verdict, "lower")] for r in gains]), ""]
    if planted:
        lines += _planted_reliance(planted, analyses, layers)
    return lines + [_image(out, alignment.folder / "reliance.png", "reliance per layer"), ""]


def _partition_section(out, alignment):
    """Per model, low-level set and layer, the variance unique to the layer, shared and unique
    to the set (all voxels, voxel means, with intervals), and partition.png; nothing when the
    run partitioned none."""
    results = alignment.results
    rows = [r for r in results.partition if r.region == "all" and r.aggregation == "voxel_mean"]
    if not rows:
        return []

    def part(row, name):
        return _number(getattr(row, name)) + _interval(getattr(row, f"{name}_ci_low"),
                                                       getattr(row, f"{name}_ci_high"))

    return ["## Variance partitioning", "",
            "The variance of the test story's responses explained (r |r| / cc_max^2: the "
            "share of the explainable variance, voxel means) by a banded ridge of the layer's "
            "features and a low-level feature set together, split into what only the layer "
            "explains (joint minus the set alone), what both explain (shared) and what only "
            "the set explains (joint minus the layer alone); in brackets the "
            f"{results.protocol.confidence:.0%} block-bootstrap interval "
            "(docs/method.md#variance-partitioning). Reliance on the set shows as a large shared "
            "part beside a small unique one.", "",
            _table(["model", "set", "layer", "joint", "unique to the layer", "shared",
                    "unique to the set"],
                   [[r.model, r.low_level, r.layer, _number(r.joint), part(r, "unique_layer"),
                     part(r, "shared"), part(r, "unique_low_level")] for r in rows]), "",
            _image(out, alignment.folder / "partition.png", "variance partitioning per layer"),
            ""]


def _planted_reliance(planted, analyses, layers):
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
    return ["By planted voxel type (cc_norm before -> after, and the drop):", "",
            _table(["model", "removed", "layer", "semantic", "acoustic"], cells), "",
            *_drop_notes(shown)]


def _preference_section(out, alignment, summary):
    """Each layer's semantic preference with its interval, and the tuned model's against the
    pretrained one's with verdicts."""
    results = alignment.results
    rows = results.semantic_preference
    if not rows:
        return []
    lines = ["## Semantic preference", "",
             "How well each layer predicts the semantic features of the words heard, and "
             "the phonetic features (held-out story, mean r); the preference is the "
             f"difference, in brackets its {results.protocol.confidence:.0%} block-bootstrap "
             "interval:", "",
             _table(["model", "layer", "semantic r", "phonetic r", "preference"],
                    [[r.model, r.layer, r.semantic_r, r.phonetic_r,
                      _number(r.preference) + _interval(r.ci_low, r.ci_high)] for r in rows]),
             ""]
    gains = tuned_comparisons(results, summary["models"], "semantic_preference")
    if gains:
        lines += [f"{summary['models']['tuned']} minus pretrained (the paper expects "
                  "brain-tuning to raise the preference):", "",
                  _table(["layer", "difference", "verdict"],
                         [[r.layer, _difference_cell(r), _verdict_cell(r.verdict, "higher")]
                          for r in gains]), ""]
    return lines + [_image(out, alignment.folder / "semantic_preference.png",
                           "semantic preference"), ""]


# ----------------------------------------------------------------------------- probes

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
    """A probe's headline score per model and layer (an ``eval_*.py`` results.json)."""
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
                       if finite(chance) else "")
        intro = ("Macro F1 on the test split per layer (micro F1, the other scores and sizes in "
                 f"`{csv_path}`).{chance_text}")
    else:  # eval_asr.py
        intro = (f"{probe['score_name']} on the test split per layer: {probe['description']} "
                 f"(the other error rates and the sizes in `{csv_path}`). An empty transcript "
                 "scores 0.")

    def cell(model, layer):
        row = next((r for r in rows if r["model"] == model and r["layer"] == layer), None)
        return "n/a" if row is None else _number(row[score])

    return [f"## Downstream probe: {task} ({probe['dataset']})", "",
            intro + renamed + _source_text(probe.get("source")), "",
            _table(["model", *[f"layer {k}" for k in task_layers]],
                   [[m, *[cell(m, k) for k in task_layers]]
                    for m in dict.fromkeys(r["model"] for r in rows)]), "",
            _image(out, Path(folder) / f"{task}.png", task), ""]


def _synthetic_explanation(summary, truth):
    """What the planted signal of a synthetic dataset predicts, and what the run found."""
    pretrained, tuned = summary["pretrained"], summary["tuned"]
    label = summary["models"]["tuned"]
    n = summary["planted_voxels"]["semantic"]
    gain = summary["semantic_cc_norm_gain"]
    percent = summary["semantic_cc_norm_gain_percent"]
    relative = f" ({percent:+.0f}%)" if finite(percent) else ""
    if not finite(gain):
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
        f"{f' ({gain:+.3f})' if finite(gain) else ''}. {outcome}\n"
        + _noise_explanation(summary))


def _noise_explanation(summary):
    """Why planted noise voxels are in the means at all, and what their change says."""
    noise = summary.get("noise_voxels")
    if noise is None:
        return ""
    return (
        f"\n{noise['passing']} of the {noise['planted']} planted noise voxels pass the voxel "
        "rule, though they respond to nothing and their true noise ceiling is 0: each ceiling "
        "is estimated from the test story's repeats over its scored rows, and with so few rows "
        f"some estimates of pure noise exceed {summary['nc_thr']} by chance. Their cc_norm "
        "divides a correlation near 0 by that small, overestimated ceiling, so it swings from "
        "model to model: tuned minus pretrained over these voxels is "
        f"{noise['difference']:+.3f}, 95% interval [{_number(noise['ci'][0])}, "
        f"{_number(noise['ci'][1])}] (a t interval over the voxels, independent by "
        f"construction): {noise['verdict']}. A real subject's ceilings carry the same "
        "chance error, which is why the summaries use a threshold and the comparisons an "
        "interval.\n")
