"""Collect a pipeline run's results into one Markdown report and a summary JSON.

    python report.py --out outputs/demo --alignment outputs/demo/alignment/tiny-wav2vec2_UTS01 \\
        --downstream outputs/demo/downstream/tiny-wav2vec2_phonemes --data_dir outputs/demo/data

Reads the outputs of ``brain_evaluate.py`` (``--alignment``, with its reliance and semantic-
preference results when it ran them) and of the ``eval_*.py`` probes (``--downstream``, any
number) and writes ``<out>/report.md`` (tables per model and layer, the plots) and
``<out>/summary.json``. The pretrained model is compared with the first tuned model of the
alignment run, whose arguments (test story, noise ceiling and threshold) come from its
``run_config.json``. On a synthetic dataset (``--data_dir`` holding ``synthetic_truth.json``) the
summary gives, per model, the mean cc_norm over the planted semantic, acoustic and noise
voxels (those whose noise ceiling exceeds the evaluation's ``--nc_thr``) at the deepest layer
evaluated, and the report explains what the planted signal predicts.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

import data_utils
import eval_utils
import noise_ceilings
import run_utils
from run_utils import UsageError

logger = logging.getLogger(__name__)

VOXEL_TYPES = ("semantic", "acoustic", "noise")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Write report.md and summary.json from brain_evaluate.py and eval_*.py "
                    "results.", formatter_class=run_utils.HelpFormatter)
    parser.add_argument("--out", required=True, help="folder of report.md and summary.json")
    parser.add_argument("--alignment", required=True,
                        help="a brain_evaluate.py results folder (results.json, run_config.json, "
                             "the per-voxel files)")
    parser.add_argument("--downstream", nargs="*", default=[],
                        help="eval_*.py results folders (holding results.json)")
    parser.add_argument("--data_dir", default=None,
                        help="the dataset; when it is synthetic, planted-voxel summaries are added")
    parser.add_argument("--title", default="Brain-tuning report", help="report title")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    return parser.parse_args(argv)


def run(args):
    out = Path(args.out)
    if (out / "report.md").exists() and not args.overwrite:
        raise run_utils.OutputExistsError(f"{out / 'report.md'} exists; pass --overwrite")
    alignment = Alignment(Path(args.alignment), read_results(args.alignment),
                          read_results(args.alignment, "run_config.json")["arguments"])
    downstream = {folder: read_results(folder) for folder in args.downstream}
    truth = None
    if args.data_dir and (Path(args.data_dir) / "synthetic_truth.json").exists():
        truth = data_utils.load_truth(args.data_dir)
    planted = planted_scores(alignment, truth) if truth else None
    summary = summarise(alignment.results, planted, list(downstream.values()))
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
    results: dict  # results.json: subject, train_stories, models, results, semantic_preference
    arguments: dict  # the run's arguments (run_config.json)


def read_results(folder, name="results.json"):
    """A JSON file of a results folder of brain_evaluate.py or an eval_*.py script."""
    path = Path(folder) / name
    if not path.is_file():
        raise UsageError(f"{path}: missing; is {folder} a results folder of brain_evaluate.py "
                         "or an eval_*.py script?")
    return json.loads(path.read_text())


def planted_scores(alignment, truth):
    """Mean cc_norm over the planted voxel types, per model, analysis and layer.

    Returns dict model -> analysis -> layer -> {type: mean cc_norm}, over the voxels of each
    type whose noise ceiling exceeds the evaluation's threshold.
    """
    arguments, subject = alignment.arguments, alignment.results["subject"]
    nc = noise_ceilings.load_noise_ceiling(arguments["nc_path"]
                                           or noise_ceilings.default_nc_path(subject))
    planted = truth["subjects"][subject]
    scores = {}
    for row in alignment.results["results"]:
        if row["region"] != "all":
            continue
        name = run_utils.voxel_results_name(row["model"], row["layer"], row["low_level"])
        cc_norm = np.load(alignment.folder / name)["cc_norm"]
        means = {}
        for kind in VOXEL_TYPES:
            voxels = np.asarray(planted[f"{kind}_voxels"], dtype=np.intp)
            voxels = voxels[nc[voxels] > arguments["nc_thr"]] if kind != "noise" else voxels
            means[kind] = float(cc_norm[voxels].mean()) if voxels.size else float("nan")
        scores.setdefault(row["model"], {}).setdefault(row["low_level"], {})[row["layer"]] = means
    return scores


def summarise(alignment, planted, downstream):
    """summary.json: per model (pretrained, tuned) the headline numbers."""
    models = list(dict.fromkeys(row["model"] for row in alignment["results"]))
    if "pretrained" not in models or len(models) < 2:
        raise UsageError("the alignment run must hold the pretrained and a tuned model")
    roles = {"pretrained": "pretrained", "tuned": next(m for m in models if m != "pretrained")}
    layers = sorted({row["layer"] for row in alignment["results"]})
    layer = layers[-1]
    summary = {"layer": layer, "models": roles}
    for role, model in roles.items():
        rows = [r for r in alignment["results"] if r["model"] == model and r["layer"] == layer
                and r["region"] == "all"]
        entry = {"cc_norm": next(r["cc_norm"] for r in rows if r["low_level"] == "none")}
        for row in rows:
            if row["low_level"] != "none":
                entry[f"drop_percent_without_{row['low_level']}"] = row["drop_percent"]
        if planted:
            for kind, value in planted[model]["none"][layer].items():
                entry[f"{kind}_cc_norm"] = value
            for analysis, by_layer in planted[model].items():
                if analysis != "none":
                    for kind in ("semantic", "acoustic"):
                        before, after = planted[model]["none"][layer][kind], by_layer[layer][kind]
                        entry[f"{kind}_drop_percent_without_{analysis}"] = (
                            eval_utils.percent_drop(before, after))
        for row in alignment.get("semantic_preference", []):
            if row["model"] == model and row["layer"] == layer:
                entry["semantic_preference"] = row["preference"]
        for results in downstream:
            label = _same_checkpoint(alignment["models"][model], results.get("models", {}))
            best = max((r for r in results["results"] if r["model"] == label),
                       key=lambda r: r["f1_macro"], default=None)
            if best is not None:
                entry[f"{results['task']}_f1_macro_best_layer"] = best["f1_macro"]
        summary[role] = entry
    if planted:
        before = summary["pretrained"]["semantic_cc_norm"]
        after = summary["tuned"]["semantic_cc_norm"]
        summary["semantic_cc_norm_gain"] = after - before
        summary["semantic_cc_norm_gain_percent"] = (100.0 * (after - before) / abs(before)
                                                    if before else None)
    return summary


def _same_checkpoint(path, models):
    """The label under which ``models`` (label -> checkpoint) holds the checkpoint ``path``
    (a run folder standing for its final/ model), or None."""
    def resolved(folder):
        return run_utils.resolve_checkpoint(folder).resolve()

    return next((label for label, other in models.items()
                 if resolved(other) == resolved(path)), None)


def _value(rows, key, **match):
    """``row[key]`` of the first row matching every ``match`` item (nan when none does)."""
    value = next((row[key] for row in rows if all(row[k] == v for k, v in match.items())), None)
    return float("nan") if value is None else value


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                       for v in row) + " |")
    return "\n".join(lines)


def _image(out, path, caption):
    return f"![{caption}]({os.path.relpath(path, out)})" if Path(path).exists() else ""


def render(out, alignment, planted, downstream, summary, title, truth):
    """The report's Markdown text (``downstream``: folder -> its results.json)."""
    config, results = alignment.arguments, alignment.results
    lines = [f"# {title}", "",
             f"Subject {results['subject']}; encoding models fitted on "
             f"{len(results['train_stories'])} stories, tested on {config['test_story']}; "
             f"summaries over voxels with a noise ceiling above {config['nc_thr']}. Models: "
             + ", ".join(f"**{label}** (`{path}`)" for label, path in results["models"].items())
             + ".", "", "## Brain alignment", ""]
    rows = [r for r in results["results"] if r["low_level"] == "none"]
    regions = list(dict.fromkeys(r["region"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    for region in regions:
        lines += [f"Mean cc_norm, region `{region}`:", "",
                  _table(["model", *[f"layer {k}" for k in layers]],
                         [[m, *[_value(rows, "cc_norm", model=m, layer=k, region=region)
                                for k in layers]]
                          for m in dict.fromkeys(r["model"] for r in rows)]), ""]
    lines += [_image(out, alignment.folder / "alignment.png", "alignment per layer"), ""]
    if planted:
        lines += ["### Planted voxels (synthetic data)", "",
                  "Mean cc_norm over each planted voxel type:", "",
                  _table(["model", "layer", *VOXEL_TYPES],
                         [[m, k, *[analyses["none"][k][t] for t in VOXEL_TYPES]]
                          for m, analyses in planted.items() for k in layers]), ""]
    analyses = [a for a in dict.fromkeys(r["low_level"] for r in results["results"])
                if a != "none"]
    if analyses:
        lines += ["## Reliance on low-level features", "",
                  "Drop of mean cc_norm (percent) when each low-level feature set is regressed "
                  "out of the layer's features before fitting the encoding model:", ""]
        drops = [r for r in results["results"] if r["low_level"] != "none"
                 and r["region"] == "all"]
        lines += [_table(["model", "removed", *[f"layer {k}" for k in layers]],
                         [[m, a, *[_value(drops, "drop_percent", model=m, low_level=a, layer=k)
                                   for k in layers]]
                          for m in dict.fromkeys(r["model"] for r in drops) for a in analyses]),
                  ""]
        if planted:
            lines += ["By planted voxel type (cc_norm before -> after):", "",
                      _table(["model", "removed", "layer", "semantic", "acoustic"],
                             [[m, a, k, *[f"{planted[m]['none'][k][t]:.3f} -> "
                                          f"{planted[m][a][k][t]:.3f}"
                                          for t in ("semantic", "acoustic")]]
                              for m in planted for a in analyses for k in layers]), ""]
        lines += [_image(out, alignment.folder / "reliance.png", "reliance per layer"), ""]
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
        task = probe["task"]
        task_layers = sorted({r["layer"] for r in probe["results"]})
        lines += [f"## Downstream probe: {task} ({probe['dataset']})", "",
                  "Macro F1 on the test split per layer (micro F1, accuracy and sizes in "
                  f"`{os.path.relpath(Path(folder) / 'results.csv', out)}`):", "",
                  _table(["model", *[f"layer {k}" for k in task_layers]],
                         [[m, *[_value(probe["results"], "f1_macro", model=m, layer=k)
                                for k in task_layers]]
                          for m in dict.fromkeys(r["model"] for r in probe["results"])]), "",
                  _image(out, Path(folder) / f"{task}.png", task), ""]
    lines += ["## Summary", "", "```json", json.dumps(summary, indent=1), "```", ""]
    if truth is not None:
        lines += [_synthetic_explanation(summary, truth)]
    return "\n".join(lines)


def _synthetic_explanation(summary, truth):
    pretrained, tuned = summary["pretrained"], summary["tuned"]
    gain = summary["semantic_cc_norm_gain"]
    percent = summary["semantic_cc_norm_gain_percent"]
    relative = f" ({percent:+.0f}%)" if percent is not None else ""
    outcome = (f"The tuned model is better{relative}, as expected." if gain > 0 else
               "The tuned model is NOT better here: the tuning run did not learn word identity "
               "(see val_corr in the run's metrics.jsonl). A small random-weight model tuned for "
               "a few CPU minutes on a few hundred noisy samples often does not; the method "
               "assumes a pretrained model whose features already tell sounds apart, and more "
               "data and epochs (a GPU).")
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
        f"At layer {summary['layer']}, the tuned model's mean cc_norm over the planted semantic "
        f"voxels is {tuned['semantic_cc_norm']:.3f} against {pretrained['semantic_cc_norm']:.3f} "
        f"for the pretrained model ({gain:+.3f}). {outcome}\n")


if __name__ == "__main__":
    sys.exit(main())
