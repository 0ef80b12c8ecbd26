"""Brain alignment: how well each layer of pretrained and brain-tuned models predicts held-out fMRI.

    python brain_evaluate.py --model_name facebook/wav2vec2-base --subject 3 \\
        --data_dir /path/to/ds003020 --logs_dir outputs/brain_tuning/wav2vec2-base_UTS03_fmri

For each model and layer (SPEC section 4): sliding-window features of every story (16 s
context + 0.1 s chunks, last frame's hidden state), Lanczos-downsampled to the TR centres,
trimmed, z-scored and delayed by 1-4 TRs per story; a ridge encoding model per voxel with
alphas chosen on chunks held out inside the training stories; predictions of the test story
(``wheretheressmoke``, its first 40 response rows dropped as in the paper) scored by raw
Pearson r and cc_norm = r / noise ceiling.

Reliance on low-level features (SPEC section 5), with ``--low_level powspec phonemes ...``:
each named set of ``low_level_features`` (``a+b`` for several together) is regressed out of
each layer's TR-level features with a cross-validated ridge fitted on the training stories
and applied to every story; the encoding model is fitted again on the residuals, and the drop
in cc_norm is the layer's reliance on those features. Semantic preference (SPEC section 7),
with ``--semantic_preference --word_vectors FILE|synthetic``: how well each layer's TR-level
features predict the word vectors of the words heard (same ridge and splits, held-out story,
mean r over dimensions) minus how well they predict ``--phonetic_features``.

Outputs in ``<save_dir>/<exp_name>/``: ``results.json`` and ``results.csv`` (per model, layer,
low-level analysis ("none", or the set removed) and region: mean r and cc_norm over voxels
above ``--nc_thr``, and ``drop_percent`` = 100 (before - after) / before, empty where before <= 0),
``voxels_<model>_layer<k>[_without_<set>].npz`` (per-voxel r, cc_norm, alpha),
``alignment.png`` (mean cc_norm per layer, one line per model), ``reliance.png`` (drop per
layer), ``semantic_preference.csv``/``.png`` (semantic_r, phonetic_r, preference per model and
layer; also in results.json) and ``run_config.json``. Model features are cached in
``--cache_dir``, stimulus features in ``<cache_dir>/stimulus``; nothing is computed twice.
"""

import argparse
import csv
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

import data_utils
import eval_utils
import low_level_features
import noise_ceilings
import plots
import run_utils
import speech_models
from data_utils import DatasetError

logger = logging.getLogger(__name__)

DEFAULT_LAYERS = (2, 5, 7, 8, 10, 11, 12)
TEST_RESPONSE_TRIM = 40  # the paper drops the first 40 test rows (features [50:-5])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Brain alignment of pretrained and brain-tuned speech models (ds003020).",
        formatter_class=run_utils.HelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--subject", required=True, help="subject: 1, '1' or UTS01")
    parser.add_argument("--data_dir", required=True,
                        help="ds003020 root: the folder holding stimuli/ and derivative/")
    parser.add_argument("--train_stories", nargs="+", default=None,
                        help="stories the encoding model is fitted on; default: the paper's "
                             "training list restricted to what the subject has")
    parser.add_argument("--test_story", default=data_utils.TEST_STORY, help="held-out story")
    parser.add_argument("--layers", nargs="+", type=int, default=None,
                        help=f"hidden-state indices (default {' '.join(map(str, DEFAULT_LAYERS))}, "
                             "clipped to the model's depth)")
    parser.add_argument("--nc_path", default=None,
                        help="noise-ceiling file (default subject_NCs/UTS0N.npy; computed from "
                             "the test-story repeats when missing)")
    parser.add_argument("--nc_thr", type=float, default=0.4,
                        help="summaries average over voxels whose noise ceiling exceeds this")
    parser.add_argument("--roi_file", default=None,
                        help="JSON mapping region name -> list of voxel indices, for per-region "
                             "summaries")
    parser.add_argument("--low_level", nargs="+", default=[],
                        help="reliance analysis: low-level feature sets ("
                             + ", ".join(low_level_features.FEATURE_SETS) + ") to regress out of "
                             "each layer's features before fitting the encoding model again; each "
                             "is removed on its own, 'a+b' removes a and b together")
    parser.add_argument("--ngram_vocab_size", type=int, default=1000,
                        help="diphone/triphone columns: the most frequent in the training stories")
    parser.add_argument("--semantic_preference", action="store_true",
                        help="also score how well each layer predicts semantic features "
                             "(--word_vectors) versus phonetic ones (--phonetic_features)")
    parser.add_argument("--word_vectors", default=None,
                        help="word-vector text file (word2vec/GloVe text format: a word and its "
                             "values per line), or 'synthetic' for the embedding planted in a "
                             "synthetic dataset; needed by --semantic_preference")
    parser.add_argument("--phonetic_features", nargs="+", default=["phonemes", "articulation"],
                        help="low-level feature sets that --semantic_preference compares against")
    parser.add_argument("--alphas", nargs="+", type=float, default=None,
                        help="ridge penalties (ordinary ridge); default: the paper's "
                             "logspace(1, 4, 15) in singular-value units, squared")
    parser.add_argument("--low_level_alphas", nargs="+", type=float, default=None,
                        help="ridge penalties for regressing --low_level features out of the "
                             "model's features; default: logspace(0, 4, 17) in singular-value "
                             "units, squared (reaching lower than --alphas, so that the removal "
                             "is not limited by shrinkage)")
    parser.add_argument("--n_boots", type=int, default=3, help="cross-validation splits")
    parser.add_argument("--chunk_len", type=int, default=20, help="rows per held-out chunk")
    parser.add_argument("--context_s", type=float, default=16.0, help="window context, seconds")
    parser.add_argument("--chunk_s", type=float, default=0.1, help="window step, seconds")
    parser.add_argument("--batch_size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--naive", action="store_true",
                        help="one window per forward pass (reference path; same features)")
    parser.add_argument("--tr_source", choices=data_utils.TR_SOURCES, default="respdict",
                        help="TR timing source (see data_utils.tr_times)")
    parser.add_argument("--tr_path", default=None, help="folder of .report files or .jbl file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 on a GPU that supports it, else fp32")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cross-validation splits")
    parser.add_argument("--save_dir", default="outputs/brain_alignment", help="parent of the results")
    parser.add_argument("--exp_name", default=None,
                        help="results folder name (default: <model>_<subject>)")
    parser.add_argument("--cache_dir", default=None,
                        help="feature cache (default: <save_dir>/feature_cache)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    args = parser.parse_args(argv)
    if args.exp_name is None:
        args.exp_name = f"{Path(args.model_name.rstrip('/')).name}_{args.subject}"
    if args.cache_dir is None:
        args.cache_dir = str(Path(args.save_dir) / "feature_cache")
    if args.alphas is None:
        args.alphas = (np.logspace(1, 4, 15) ** 2).tolist()
    if args.low_level_alphas is None:
        args.low_level_alphas = (np.logspace(0, 4, 17) ** 2).tolist()
    try:
        for spec in args.low_level:
            low_level_features.check_feature_sets(spec.split("+"))
        low_level_features.check_feature_sets(args.phonetic_features)
    except ValueError as err:
        parser.error(str(err))
    if args.semantic_preference and args.word_vectors is None:
        parser.error("--semantic_preference needs --word_vectors FILE (or 'synthetic')")
    return args


def add_model_arguments(parser):
    """The flags that choose the models to evaluate (see ``models_to_evaluate``)."""
    parser.add_argument("--model_name", required=True,
                        help="pretrained checkpoint folder or hub id (evaluated as 'pretrained')")
    parser.add_argument("--model_path", action="append", default=[],
                        help="a brain-tuned model folder (a run folder means its final/); repeat "
                             "for several")
    parser.add_argument("--logs_dir", default=None,
                        help="a brain_trainer_story.py run folder: evaluates its --epochs")
    parser.add_argument("--epochs", nargs="+", default=["final"],
                        help="with --logs_dir: epoch numbers (checkpoint-epoch<k>) or 'final'")
    parser.add_argument("--skip_pretrained", action="store_true",
                        help="evaluate only the tuned models")


def models_to_evaluate(args):
    """(label, checkpoint) pairs: the pretrained model, then every tuned one."""
    models = [] if args.skip_pretrained else [("pretrained", args.model_name)]
    for path in map(Path, args.model_path):
        if not (path / "config.json").exists() and (path / "final" / "config.json").exists():
            path = path / "final"  # a brain_trainer_story.py run folder: its final model
        models.append((path.name if path.name != "final" else path.parent.name + "/final",
                       str(path)))
    if args.logs_dir:
        for epoch in args.epochs:
            folder = Path(args.logs_dir) / (epoch if epoch == "final" else f"checkpoint-epoch{epoch}")
            if not folder.is_dir():
                raise DatasetError(f"{folder}: not found; the run has "
                                   + ", ".join(sorted(p.name for p in Path(args.logs_dir).glob("*")
                                                      if (p / "config.json").exists())))
            models.append((f"epoch {epoch}" if epoch != "final" else "final", str(folder)))
    if not models:
        raise DatasetError("nothing to evaluate: give --model_path or --logs_dir, or drop "
                           "--skip_pretrained")
    labels = run_utils.unique_names((label, None) for label, _ in models)
    return [(label, checkpoint) for label, (_, checkpoint) in zip(labels, models)]


def choose_layers(requested, depth):
    """Requested layers, or the paper's default clipped to the model's depth."""
    if requested is None:
        return [layer for layer in DEFAULT_LAYERS if layer <= depth]
    beyond = [layer for layer in requested if not 0 <= layer <= depth]
    if beyond:
        raise DatasetError(f"--layers {' '.join(map(str, beyond))}: the model has hidden states "
                           f"0..{depth} only")
    return sorted(set(requested))


def cached_story_features(args, backbone, preprocessor, model_key, story, layers, device, dtype):
    """Window features of a story from the cache, extracting (and caching) the missing layers."""
    settings = json.dumps({"context_s": args.context_s, "chunk_s": args.chunk_s,
                           "autocast": str(dtype), "preprocessor": preprocessor.digest(),
                           **run_utils.file_identity([data_utils.stimulus_path(args.data_dir,
                                                                                story)])},
                          sort_keys=True)
    path = (Path(args.cache_dir) / model_key[:16]
            / f"{story}_{hashlib.sha256(settings.encode()).hexdigest()[:12]}.hf5")

    def extract(missing):
        logger.info("%s: extracting layers %s", story, " ".join(map(str, missing)))
        audio = data_utils.load_stimulus(args.data_dir, story, preprocessor.sampling_rate)
        features, times = speech_models.sliding_window_features(
            backbone, preprocessor, audio, missing, args.context_s, args.chunk_s,
            args.batch_size, device, dtype, naive=args.naive, progress=True)
        return features, {"times": times}

    features, extras = run_utils.cached_arrays(path, layers, extract, settings)
    return features, extras["times"]


def tr_features(args, story, window_features, times):
    """Window features resampled to the story's TR centres: layer -> (grid TRs, hidden)."""
    centres = data_utils.tr_times(args.data_dir, story, args.tr_source, args.tr_path)
    return {layer: eval_utils.lanczos_interp(values, times, centres)
            for layer, values in window_features.items()}


def summarise(values, nc, nc_thr, rois):
    """Mean of per-voxel values over voxels above the noise-ceiling threshold and per region."""
    good = nc > nc_thr
    summary = {"all": float(values[good].mean()) if good.any() else float("nan")}
    for name, voxels in rois.items():
        voxels = np.asarray(voxels, dtype=np.intp)
        selected = voxels[good[voxels]]
        summary[name] = float(values[selected].mean()) if selected.size else float("nan")
    return summary


def evaluate_model(args, label, checkpoint, stories, responses, nc, rois, device, dtype,
                   stimulus=None):
    """Per-layer scores of one model.

    Returns dict layer -> {"encoding": {analysis: scores}, "semantic_preference": ... or None},
    where analysis is "none" (the layer's features) or a ``--low_level`` item (the features
    with those low-level features regressed out), and scores holds per-voxel ``r``,
    ``cc_norm`` and ``alpha`` and their ``summary``. ``stimulus`` (from ``stimulus_features``)
    holds the low-level, phonetic and semantic features per story.
    """
    backbone, family = speech_models.load_backbone(checkpoint)
    backbone.to(device)
    preprocessor = speech_models.AudioPreprocessor(
        speech_models.load_feature_extractor(checkpoint, family), family)
    layers = choose_layers(args.layers, speech_models.num_layers(backbone))
    key = speech_models.fingerprint(backbone)
    per_story = {}
    for story in [*stories, args.test_story]:
        window_features, times = cached_story_features(args, backbone, preprocessor, key, story,
                                                       layers, device, dtype)
        per_story[story] = tr_features(args, story, window_features, times)
    lengths = [data_utils.response_rows(args.data_dir, s) for s in stories]
    splits = eval_utils.bootstrap_chunk_splits(lengths, args.n_boots, args.chunk_len,
                                               seed=args.seed)
    results = {}
    for layer in layers:
        features = {story: values[layer] for story, values in per_story.items()}
        analyses = {"none": features}
        for spec in args.low_level:
            confounds = {story: np.hstack([stimulus["low_level"][story][name]
                                           for name in spec.split("+")]) for story in features}
            analyses[spec] = eval_utils.regress_out(features, confounds, stories,
                                                    args.low_level_alphas, splits, device)
        results[layer] = {"encoding": {}, "semantic_preference": None}
        for analysis, values in analyses.items():
            scores = layer_scores(args, values, stories, responses, nc, rois, splits, device,
                                  f"{label} layer {layer}")
            results[layer]["encoding"][analysis] = scores
            logger.info("%s layer %d%s: mean cc_norm %.3f, mean r %.3f (voxels with NC > %s)",
                        label, layer, "" if analysis == "none" else f" without {analysis}",
                        scores["summary"]["cc_norm"]["all"], scores["summary"]["r"]["all"],
                        args.nc_thr)
        if args.semantic_preference:
            results[layer]["semantic_preference"] = semantic_preference(
                features, stimulus["semantic"], stimulus["phonetic"], stories, args.test_story,
                args.alphas, splits, device)
            logger.info("%s layer %d: semantic r %.3f, phonetic r %.3f", label, layer,
                        results[layer]["semantic_preference"]["semantic_r"],
                        results[layer]["semantic_preference"]["phonetic_r"])
    return results


def layer_scores(args, features, stories, responses, nc, rois, splits, device, what):
    """Encoding-model scores of TR-grid features (story -> (grid TRs, features))."""
    train_responses, test_responses = responses
    x_train, x_test = design_matrices(features, stories, args.test_story)
    if len(x_train) != len(train_responses) or len(x_test) != len(test_responses):
        raise DatasetError(f"{what}: {len(x_train)}/{len(x_test)} feature rows "
                           f"but {len(train_responses)}/{len(test_responses)} response rows; "
                           "the responses do not match respdict.json")
    r, cc_norm, alphas = encoding_scores(x_train, x_test, train_responses, test_responses,
                                         nc, args.alphas, splits, device)
    return {"r": r, "cc_norm": cc_norm, "alpha": alphas,
            "summary": {"r": summarise(r, nc, args.nc_thr, rois),
                        "cc_norm": summarise(cc_norm, nc, args.nc_thr, rois)}}


def semantic_preference(features, semantic, phonetic, stories, test_story, alphas, splits,
                        device=None):
    """How much better a layer predicts semantic than phonetic stimulus features (SPEC 7).

    Each score is the mean, over the target's columns that vary in both the training stories
    and the test story, of the held-out-story correlation of a ridge prediction from the
    layer's TR-grid features (``eval_utils.prediction_score``).

    Returns
    -------
    dict with ``semantic_r``, ``phonetic_r``, ``preference`` = semantic_r - phonetic_r, and
    ``semantic_columns``/``phonetic_columns``, the number of columns averaged.
    """
    scores = {}
    for name, targets in (("semantic", semantic), ("phonetic", phonetic)):
        per_column = eval_utils.prediction_score(features, targets, stories, test_story, alphas,
                                                 splits, device)
        used = np.isfinite(per_column)
        if not used.any():
            raise DatasetError(f"no {name} feature column varies in both the training stories "
                               f"and {test_story}; the --semantic_preference comparison is "
                               "undefined (check --word_vectors covers the stories' words)")
        scores[f"{name}_r"] = float(per_column[used].mean())
        scores[f"{name}_columns"] = int(used.sum())
    scores["preference"] = scores["semantic_r"] - scores["phonetic_r"]
    return scores


def stimulus_features(args, stories):
    """Low-level (``--low_level``), phonetic and semantic features per story on the TR grid,
    as needed by the requested analyses (cached in ``<cache_dir>/stimulus``)."""
    names = sorted({name for spec in args.low_level for name in spec.split("+")}
                   | (set(args.phonetic_features) if args.semantic_preference else set()))
    if not names:
        return None
    all_stories = [*stories, args.test_story]
    vocabularies = low_level_features.build_vocabularies(
        args.data_dir, stories, names, max_size=args.ngram_vocab_size)
    low = {story: low_level_features.story_features(
        args.data_dir, story, names, vocabularies, args.tr_source, args.tr_path,
        Path(args.cache_dir) / "stimulus") for story in all_stories}
    stimulus = {"low_level": low}
    if args.semantic_preference:
        vectors = low_level_features.load_word_vectors(args.word_vectors, args.data_dir)
        stimulus["phonetic"] = {story: np.hstack([low[story][name]
                                                  for name in args.phonetic_features])
                                for story in all_stories}
        stimulus["semantic"] = {story: low_level_features.word_vector_features(
            args.data_dir, story, vectors, args.tr_source, args.tr_path)
            for story in all_stories}
    return stimulus


def design_matrices(tr_level, stories, test_story):
    """Delayed design matrices from TR-grid features (story -> (grid TRs, features)).

    Training stories are trimmed [10:-5] like the responses; the test story [50:-5], matching
    its responses without their first 40 rows (the paper's protocol).
    """
    x_train = eval_utils.delayed_story_features([tr_level[s] for s in stories])
    x_test = eval_utils.delayed_story_features(
        [tr_level[test_story]],
        trim=(data_utils.TRIM_START_TRS + TEST_RESPONSE_TRIM, data_utils.TRIM_END_TRS))
    return x_train, x_test


def encoding_scores(x_train, x_test, train_responses, test_responses, nc, alphas, splits,
                    device="cpu"):
    """Fit the ridge encoding model and score the test story.

    Returns per-voxel raw Pearson r, cc_norm (r / noise ceiling, 0 where the ceiling is 0)
    and the chosen alphas, each (n_voxels,).
    """
    weights, best_alphas, _ = eval_utils.fit_ridge_cv(x_train, train_responses, alphas, splits,
                                                      device=device, progress=True)
    r = eval_utils.column_correlation(x_test @ weights, test_responses)
    cc_norm = np.divide(r, nc, out=np.zeros_like(r), where=nc > 0)
    return r, cc_norm, best_alphas


def _write_csv(path, rows):
    with run_utils.atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def write_results(out_dir, all_results, args, run_config):
    """results.json/.csv, per-voxel .npz files and the plots (alignment.png; reliance.png with
    --low_level; semantic_preference.png/.csv with --semantic_preference), all atomic.

    Returns the alignment rows and the semantic-preference rows."""
    rows, preference_rows = [], []
    for label, layers in all_results.items():
        safe = label.replace("/", "_").replace(" ", "_")
        for layer, result in layers.items():
            before = result["encoding"]["none"]["summary"]["cc_norm"]
            for analysis, scores in result["encoding"].items():
                for region, value in scores["summary"]["cc_norm"].items():
                    drop = (eval_utils.percent_drop(before[region], value)
                            if analysis != "none" else None)
                    rows.append({"model": label, "layer": layer, "low_level": analysis,
                                 "region": region, "cc_norm": value,
                                 "r": scores["summary"]["r"][region], "drop_percent": drop})
                suffix = "" if analysis == "none" else f"_without_{analysis}"
                with run_utils.atomic_output(out_dir / f"voxels_{safe}_layer{layer}{suffix}.npz",
                                              True) as tmp:
                    np.savez(tmp, r=scores["r"], cc_norm=scores["cc_norm"], alpha=scores["alpha"])
            if result["semantic_preference"] is not None:
                preference_rows.append({"model": label, "layer": layer,
                                        **result["semantic_preference"]})
    run_utils.write_json(out_dir / "results.json",
                          {**run_config, "results": rows, "semantic_preference": preference_rows},
                          overwrite=True)
    _write_csv(out_dir / "results.csv", rows)
    baseline = [row for row in rows if row["region"] == "all" and row["low_level"] == "none"]
    plots.plot_per_layer(out_dir / "alignment.png", _series(baseline, "cc_norm"),
                              "mean cc_norm", f"Brain alignment, {data_utils.subject_id(args.subject)}")
    removed = [row for row in rows if row["region"] == "all" and row["low_level"] != "none"]
    if removed:
        plots.plot_per_layer(out_dir / "reliance.png",
                                  _series(removed, "drop_percent", with_analysis=True),
                                  "drop in mean cc_norm (%)",
                                  "Reliance on low-level features (higher: more reliant)")
    if preference_rows:
        _write_csv(out_dir / "semantic_preference.csv", preference_rows)
        plots.plot_per_layer(out_dir / "semantic_preference.png",
                                  _series(preference_rows, "preference"),
                                  "semantic r - phonetic r", "Semantic preference")
    return rows, preference_rows


def _series(rows, key, with_analysis=False):
    """Plot series: label -> {layer: row[key]}."""
    series = {}
    for row in rows:
        label = f"{row['model']} without {row['low_level']}" if with_analysis else row["model"]
        series.setdefault(label, {})[row["layer"]] = (float("nan") if row[key] is None
                                                      else row[key])
    return series


def run(args):
    subject = data_utils.subject_id(args.subject)
    out_dir = Path(args.save_dir) / args.exp_name
    if (out_dir / "results.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out_dir / 'results.json'} exists; pass --overwrite or another "
                              "--exp_name")
    device = speech_models.resolve_device(args.device)
    dtype = speech_models.autocast_dtype(args.precision, device)
    available = data_utils.list_stories(args.data_dir, subject)
    stories = args.train_stories or [s for s in data_utils.TRAIN_STORIES if s in available]
    for story in [*stories, args.test_story]:
        if story not in available:
            raise DatasetError(f"story {story!r} has no responses for {subject}")
    if args.test_story in stories:
        raise DatasetError(f"the test story {args.test_story} is also a training story")
    nc = noise_ceilings.get_noise_ceiling(args.data_dir, subject, args.nc_path, args.test_story)
    rois = json.loads(Path(args.roi_file).read_text()) if args.roi_file else {}
    for name, voxels in rois.items():
        if not all(isinstance(v, int) for v in voxels):
            raise DatasetError(f"{args.roi_file}: region {name!r} must list integer voxel indices")
        if len(voxels) and (min(voxels) < 0 or max(voxels) >= nc.size):
            raise DatasetError(f"{args.roi_file}: region {name!r} has voxel indices outside "
                               f"0..{nc.size - 1}")
    train_responses = np.vstack([data_utils.load_fmri(args.data_dir, subject, s) for s in stories])
    test_responses = data_utils.load_fmri(args.data_dir, subject, args.test_story)[TEST_RESPONSE_TRIM:]
    models = models_to_evaluate(args)
    stimulus = stimulus_features(args, stories)
    all_results = {}
    for label, checkpoint in models:
        all_results[label] = evaluate_model(args, label, checkpoint, stories,
                                            (train_responses, test_responses), nc, rois, device,
                                            dtype, stimulus)
    run_config = {"arguments": vars(args), "subject": subject, "train_stories": stories,
                  "models": dict(models), "run": run_utils.run_metadata()}
    run_utils.write_json(out_dir / "run_config.json", run_config, overwrite=True)
    rows, preference_rows = write_results(out_dir, all_results, args, run_config)
    overall = [row for row in rows if row["region"] == "all"]
    print(run_utils.comparison_table([r for r in overall if r["low_level"] == "none"], "cc_norm"))
    for spec in args.low_level:
        print(f"without {spec}:")
        print(run_utils.comparison_table([r for r in overall if r["low_level"] == spec],
                                          "drop_percent"))
    if preference_rows:
        print(run_utils.comparison_table(preference_rows, "preference"))
    logger.info("results in %s", out_dir)
    return out_dir


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run(args)
    except (DatasetError, speech_models.ModelError, FileExistsError) as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
