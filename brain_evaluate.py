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

Every input is checked before anything expensive (``data_utils.check_run_inputs``: respdict
entries, response rows and voxel counts, WAVs covering their stories, TextGrids; the noise
ceiling's voxel count), and a run that would average over no voxel is refused.

Summaries average over the voxels whose noise ceiling exceeds ``--nc_thr`` and whose
test-story responses vary over the scored rows (a constant voxel, or an all-NaN one, which
reads as 0, is left out of every summary and counted in results.json's ``excluded_voxels``).
A region of ``--roi_file`` with no such voxel has no summary: null in results.json, blank in
results.csv, and a warning.

Outputs in ``<save_dir>/<exp_name>/``: ``results.json`` and ``results.csv`` (per model, layer,
low-level analysis ("none", or the set removed) and region: mean r and cc_norm over the
summary voxels, ``n_voxels`` averaged, and ``drop_percent`` = 100 (before - after) / before,
empty where before <= 0), ``voxels_<model>_layer<k>[_without_<set>].npz`` (per-voxel r,
cc_norm, alpha), ``summary_voxels.npy`` (indices of the summary voxels), ``alignment.png``
(mean cc_norm per layer, one line per model), ``reliance.png`` (drop per layer; colour per
model, line style per feature set removed), ``semantic_preference.csv``/``.png``
(semantic_r, phonetic_r, preference per model and layer; also in results.json) and
``run_config.json`` (the arguments and the run). The folder is written whole at the end
(``run_utils.output_folder``): a failed run leaves the previous results as they were.

Each (model, layer, analysis) result is kept as soon as it is done in
``<save_dir>/.<exp_name>.partial/`` (``FinishedResults``), removed once the results folder is
in place: ``--resume`` continues a killed run without fitting its finished results again (the
same numbers as an uninterrupted run); without it such a folder is refused, and
``--overwrite`` discards it. Model features are cached in ``--cache_dir``, stimulus features
in ``<cache_dir>/stimulus``; nothing is computed twice.
"""

import argparse
import json
import logging
import shutil
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

import data_utils
import eval_utils
import low_level_features
import noise_ceilings
import plots
import run_utils
import speech_models
from data_utils import DatasetError
from run_utils import UsageError

logger = logging.getLogger(__name__)

DEFAULT_LAYERS = (2, 5, 7, 8, 10, 11, 12)
TEST_RESPONSE_TRIM = 40  # the paper drops the first 40 test rows (features [50:-5])
SEMANTIC_PREFERENCE = "semantic preference"  # the analysis name of --semantic_preference
SETTINGS_FILE = "settings.json"  # in the partial folder: what its finished results depend on
# Arguments that choose which results a run makes, change only its speed or where it writes,
# or only its summaries (recomputed from the per-voxel results): --resume may change them.
RESUME_MAY_CHANGE = {"resume", "overwrite", "device", "precision", "log_level", "save_dir",
                     "exp_name", "cache_dir", "batch_size", "naive", "model_name", "model_path",
                     "logs_dir", "epochs", "skip_pretrained", "layers", "low_level",
                     "semantic_preference", "nc_thr", "roi_file"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Brain alignment of pretrained and brain-tuned speech models (ds003020).",
        formatter_class=run_utils.HelpFormatter)
    run_utils.add_model_arguments(parser)
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
    parser.add_argument("--nc_thr", type=float, default=eval_utils.NC_THRESHOLD,
                        help="summaries average over voxels whose noise ceiling exceeds this "
                             "(and whose test-story responses vary); a run with no such voxel "
                             "is refused")
    parser.add_argument("--roi_file", default=None,
                        help="JSON mapping region name -> list of voxel indices, for per-region "
                             "summaries; a region with none of the summary voxels (see "
                             "--nc_thr) gets no summary: null in results.json, blank in "
                             "results.csv, and a warning")
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the cross-validation splits")
    run_utils.add_results_arguments(parser, "outputs/brain_alignment", "<model>_<subject>")
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed run: reuse the (model, layer, analysis) results "
                             "it finished (kept in <save_dir>/.<exp_name>.partial/) if it had the "
                             "same settings; without --resume that folder is refused, and "
                             "--overwrite discards it")
    args = parser.parse_args(argv)
    run_utils.check_model_arguments(parser, args)
    run_utils.check_at_least(parser, args, 1, "n_boots", "chunk_len", "batch_size",
                             "ngram_vocab_size")
    for flag in ("context_s", "chunk_s"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag} must be positive")
    if args.semantic_preference and args.word_vectors is None:
        parser.error("--semantic_preference needs --word_vectors FILE (or 'synthetic')")
    run_utils.finish_results_arguments(parser, args, args.subject)
    try:
        for spec in args.low_level:
            low_level_features.check_feature_sets(spec.split("+"))
        low_level_features.check_feature_sets(args.phonetic_features)
    except ValueError as err:
        parser.error(str(err))
    if args.alphas is None:
        args.alphas = eval_utils.ENCODING_ALPHAS.tolist()
    if args.low_level_alphas is None:
        args.low_level_alphas = eval_utils.CONFOUND_ALPHAS.tolist()
    return args


def run(args):
    out_dir = Path(args.save_dir) / args.exp_name
    run_utils.check_replaceable(out_dir, args.overwrite)  # before any expensive work
    with run_utils.FolderLock(out_dir):  # held for the run's life
        subject = data_utils.subject_id(args.subject)
        models = run_utils.models_to_evaluate(args.model_name, args.model_path, args.logs_dir,
                                              args.epochs, args.skip_pretrained)
        device = speech_models.resolve_device(args.device)
        dtype = speech_models.autocast_dtype(args.precision, device)
        stories = training_stories(args.data_dir, subject, args.train_stories, args.test_story)
        task, voxel_facts = encoding_task(args, subject, stories)
        finished = FinishedResults.open(partial_folder(out_dir),
                                        result_settings(args, subject, stories, dtype),
                                        args.resume, args.overwrite)
        extraction = Extraction(args.data_dir, args.cache_dir, args.context_s, args.chunk_s,
                                args.batch_size, args.naive, dtype, args.tr_source, args.tr_path)
        stimulus = stimulus_features(stories, args.test_story, extraction, args.low_level,
                                     args.phonetic_features,
                                     args.word_vectors if args.semantic_preference else None,
                                     args.ngram_vocab_size)
        all_results = {label: evaluate_model(label, checkpoint, args.layers, extraction, task,
                                             stimulus, finished, args.low_level,
                                             args.low_level_alphas, device)
                       for label, checkpoint in models}
        facts = {"subject": subject, "train_stories": stories, "test_story": args.test_story,
                 "models": dict(models), **voxel_facts}
        with run_utils.output_folder(out_dir, args.overwrite) as staging:
            run_utils.write_json(staging / "run_config.json", run_utils.run_config(args, **facts))
            rows, preference_rows = write_results(staging, all_results, facts,
                                                  task.cells["all"])
        finished.remove()
        overall = [row for row in rows if row["region"] == "all"]
        print(run_utils.comparison_table([r for r in overall if r["low_level"] == "none"],
                                         "cc_norm"))
        for spec in args.low_level:
            print(f"without {spec}:")
            print(run_utils.comparison_table([r for r in overall if r["low_level"] == spec],
                                              "drop_percent"))
        if preference_rows:
            print(run_utils.comparison_table(preference_rows, "preference"))
        logger.info("results in %s", out_dir)
        return out_dir


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


class Responses(NamedTuple):
    """The fMRI rows encoding models are fitted and scored on."""
    train: np.ndarray  # the training stories' rows, stacked in story order
    test: np.ndarray  # the test story's rows without the first TEST_RESPONSE_TRIM


class EncodingTask(NamedTuple):
    """The encoding problem every layer of every model is scored on."""
    stories: list  # training stories, in order
    test_story: str
    responses: Responses
    nc: np.ndarray  # noise ceiling per voxel
    cells: dict  # "all" and each --roi_file region -> indices of the voxels its summary averages
    splits: list  # (train rows, held-out rows) pairs over the stacked training rows
    alphas: list  # ridge penalties
    nc_thr: float  # summaries average over voxels whose noise ceiling exceeds it


class Extraction(NamedTuple):
    """Where the stories' features come from and how window features are extracted."""
    data_dir: str
    cache_dir: str  # model features; stimulus features in <cache_dir>/stimulus
    context_s: float
    chunk_s: float
    batch_size: int
    naive: bool
    dtype: object  # autocast dtype (None: fp32)
    tr_source: str = "respdict"
    tr_path: str = None


class Stimulus(NamedTuple):
    """Stimulus features per story on the TR grid, as far as the analyses need them."""
    low_level: dict  # story -> low-level feature set -> (grid TRs, dims)
    phonetic: dict = None  # story -> the --phonetic_features side by side
    semantic: dict = None  # story -> word-vector features


def training_stories(data_dir, subject, requested, test_story):
    """The requested training stories, or the paper's that the subject has; checked against
    the subject's responses and the test story."""
    available = data_utils.list_stories(data_dir, subject)
    stories = requested or [s for s in data_utils.TRAIN_STORIES if s in available]
    if not stories:
        raise UsageError(f"{subject} has none of the paper's training stories; name them with "
                         "--train_stories")
    for story in [*stories, test_story]:
        if story not in available:
            raise UsageError(f"story {story!r} has no responses for {subject} (check "
                             "--train_stories and --test_story)")
    if test_story in stories:
        raise UsageError(f"the test story {test_story} is also a training story")
    return stories


def encoding_task(args, subject, stories):
    """The run's encoding problem, every input checked before any model is loaded: the
    stories' files (``data_utils.check_run_inputs``), the noise ceiling (computed if missing,
    never saved with another voxel count than the responses'), the summary voxels
    (``summary_voxels``), ``--roi_file`` and the cross-validation splits.

    Returns the ``EncodingTask`` and the facts about its voxels (``summary_voxels``)."""
    n_voxels = data_utils.check_run_inputs(args.data_dir, subject, [*stories, args.test_story],
                                           args.tr_source, args.tr_path)
    nc_path = noise_ceilings.ceiling_file(subject, args.nc_path)
    nc = noise_ceilings.get_noise_ceiling(args.data_dir, subject, nc_path, args.test_story,
                                          n_voxels=n_voxels)
    test = data_utils.load_fmri(args.data_dir, subject, args.test_story)[TEST_RESPONSE_TRIM:]
    voxels, voxel_facts = summary_voxels(
        nc, args.nc_thr, nc_path, test,
        data_utils.response_path(args.data_dir, subject, args.test_story))
    cells = summary_cells(voxels, load_rois(args.roi_file, n_voxels), args.roi_file,
                          args.nc_thr)
    responses = Responses(
        np.vstack([data_utils.load_fmri(args.data_dir, subject, s) for s in stories]), test)
    lengths = [data_utils.response_rows(args.data_dir, s) for s in stories]
    try:
        splits = eval_utils.bootstrap_chunk_splits(lengths, args.n_boots, args.chunk_len,
                                                   seed=args.seed)
    except ValueError as err:
        raise UsageError(f"--chunk_len {args.chunk_len}: {err}") from None
    task = EncodingTask(stories, args.test_story, responses, nc, cells, splits, args.alphas,
                        args.nc_thr)
    return task, voxel_facts


def summary_voxels(nc, nc_thr, nc_path, test_responses, test_path):
    """The voxels every summary averages over: noise ceiling above ``nc_thr`` and responses
    that vary over the scored test rows (``test_responses``, (rows, n_voxels); NaN read as 0,
    so an all-NaN voxel is constant). A selection without voxels is a DatasetError.

    Returns the (n_voxels,) bool mask and the facts for results.json: ``nc_thr``,
    ``subject_voxels``, ``scored_voxels`` and ``excluded_voxels`` (above the threshold but
    constant)."""
    above = noise_ceilings.ceiling_voxels(nc, nc_thr, nc_path)
    constant = above & data_utils.constant_voxels(test_responses)
    voxels = above & ~constant
    if constant.any():
        logger.warning("%d of the %d voxels with NC > %s have constant (or NaN) responses in the "
                       "scored rows of %s: left out of every summary", constant.sum(),
                       above.sum(), nc_thr, test_path)
    if not voxels.any():
        raise DatasetError(f"{test_path}: every voxel with NC > {nc_thr} has constant (or NaN) "
                           f"responses after the first {TEST_RESPONSE_TRIM} rows; nothing can "
                           "be scored: check the file or --nc_path")
    logger.info("summaries average over %d of %d voxels (NC > %s)", voxels.sum(), nc.size,
                nc_thr)
    return voxels, {"nc_thr": nc_thr, "subject_voxels": int(nc.size),
                    "scored_voxels": int(voxels.sum()), "excluded_voxels": int(constant.sum())}


def load_rois(path, n_voxels):
    """Regions of ``--roi_file`` (name -> voxel indices), checked; {} without a file."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise UsageError(f"--roi_file {path}: no such file")
    try:
        rois = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err}); --roi_file maps region names to "
                           "lists of voxel indices") from None
    if not isinstance(rois, dict) or not all(isinstance(v, list) for v in rois.values()):
        raise DatasetError(f"{path}: expected a JSON object mapping region names to lists of "
                           "voxel indices")
    if "all" in rois:
        raise DatasetError(f"{path}: the region name 'all' is taken by the summary over every "
                           "voxel; rename that region")
    for name, voxels in rois.items():
        if not all(isinstance(v, int) for v in voxels):
            raise DatasetError(f"{path}: region {name!r} must list integer voxel indices")
        if len(voxels) and (min(voxels) < 0 or max(voxels) >= n_voxels):
            raise DatasetError(f"{path}: region {name!r} has voxel indices outside "
                               f"0..{n_voxels - 1}")
    return rois


def summary_cells(voxels, rois, roi_path, nc_thr):
    """What each summary averages over: "all" and each region of ``rois`` -> indices of its
    voxels within the ``voxels`` mask. A region left without voxels is logged: its summaries
    are None."""
    cells = {"all": np.flatnonzero(voxels)}
    for name, indices in rois.items():
        indices = np.asarray(indices, dtype=np.intp)
        cells[name] = indices[voxels[indices]]
        if not cells[name].size:
            logger.warning("--roi_file %s: region %r has no voxel with NC > %s and varying test "
                           "responses; its summaries are left empty (null in results.json)",
                           roi_path, name, nc_thr)
    return cells


def stimulus_features(stories, test_story, extraction, low_level=(), phonetic_features=(),
                      word_vectors=None, ngram_vocab_size=None):
    """Low-level (the ``low_level`` specs' sets), phonetic and semantic features per story
    on the TR grid, as the analyses need them; semantic and phonetic ones only with
    ``word_vectors`` (a file or "synthetic"). Cached in ``<cache_dir>/stimulus``."""
    names = sorted({name for spec in low_level for name in spec.split("+")}
                   | (set(phonetic_features) if word_vectors else set()))
    if not names:
        return Stimulus(low_level={})
    data_dir, tr_source, tr_path = extraction.data_dir, extraction.tr_source, extraction.tr_path
    all_stories = [*stories, test_story]
    vocabularies = low_level_features.build_vocabularies(data_dir, stories, names,
                                                         max_size=ngram_vocab_size)
    low = {story: low_level_features.story_features(
        data_dir, story, names, vocabularies, tr_source, tr_path,
        Path(extraction.cache_dir) / "stimulus") for story in all_stories}
    if not word_vectors:
        return Stimulus(low_level=low)
    vectors = low_level_features.load_word_vectors(word_vectors, data_dir)
    return Stimulus(
        low_level=low,
        phonetic={story: np.hstack([low[story][name] for name in phonetic_features])
                  for story in all_stories},
        semantic={story: low_level_features.word_vector_features(data_dir, story, vectors,
                                                                 tr_source, tr_path)
                  for story in all_stories})


def evaluate_model(label, checkpoint, layers, extraction, task, stimulus, finished,
                   low_level=(), low_level_alphas=eval_utils.CONFOUND_ALPHAS, device="cpu"):
    """Per-layer scores of one model.

    ``layers``: the requested hidden-state indices, or None for ``DEFAULT_LAYERS``;
    ``low_level``: specs ("a" or "a+b") of low-level feature sets of ``stimulus`` to regress
    out, one analysis each. The semantic preference is scored when ``stimulus`` has
    semantic features. Each (layer, analysis) result held by ``finished`` (a
    ``FinishedResults``) is reused; the others are computed and kept there at once.

    Returns dict layer -> {"encoding": {analysis: scores}, "semantic_preference": ... or None},
    where analysis is "none" (the layer's features) or a ``low_level`` item (the features
    with those low-level features regressed out), and scores holds per-voxel ``r``,
    ``cc_norm`` and ``alpha`` and their ``summary``: r and cc_norm averaged over each of
    ``task.cells`` (``summarise``) and the voxels counted (``n_voxels``).
    """
    encoder = speech_models.load_encoder(checkpoint, device)
    layers = run_utils.choose_layers(layers, encoder.depth, DEFAULT_LAYERS)
    analyses = ["none", *low_level] + ([SEMANTIC_PREFERENCE] if stimulus.semantic is not None
                                       else [])
    keys = {(layer, analysis): {"fingerprint": encoder.fingerprint,
                                "preprocessor": encoder.preprocessor.digest(),
                                "layer": layer, "analysis": analysis}
            for layer in layers for analysis in analyses}
    done = {cell: finished.load(key) for cell, key in keys.items()}
    reused = [_what(label, *cell) for cell, result in done.items() if result is not None]
    if reused:
        logger.info("reusing %d finished results of %s: %s", len(reused), finished.path,
                    "; ".join(reused))
    missing = sorted({layer for (layer, _), result in done.items() if result is None})
    features = model_tr_features(encoder, missing, [*task.stories, task.test_story],
                                 extraction, device)
    results = {}
    for layer in layers:
        for analysis in analyses:
            if done[layer, analysis] is None:
                done[layer, analysis] = analysis_result(analysis, features[layer], task,
                                                        stimulus, low_level_alphas, device,
                                                        _what(label, layer, analysis))
                finished.save(keys[layer, analysis], done[layer, analysis])
        results[layer] = {"encoding": {}, "semantic_preference": done.get(
            (layer, SEMANTIC_PREFERENCE))}
        for analysis in ["none", *low_level]:
            scores = done[layer, analysis]
            summary = {"r": summarise(scores["r"], task.cells),
                       "cc_norm": summarise(scores["cc_norm"], task.cells),
                       "n_voxels": {name: int(v.size) for name, v in task.cells.items()}}
            results[layer]["encoding"][analysis] = {**scores, "summary": summary}
            logger.info("%s: mean cc_norm %.3f, mean r %.3f (%d voxels with NC > %s)",
                        _what(label, layer, analysis), summary["cc_norm"]["all"],
                        summary["r"]["all"], task.cells["all"].size, task.nc_thr)
        preference = results[layer]["semantic_preference"]
        if preference is not None:
            logger.info("%s layer %d: semantic r %.3f, phonetic r %.3f", label, layer,
                        preference["semantic_r"], preference["phonetic_r"])
    return results


def _what(label, layer, analysis):
    """"<model> layer <k>[ without <set> | semantic preference]", for log lines."""
    suffix = {"none": "", SEMANTIC_PREFERENCE: f" {SEMANTIC_PREFERENCE}"}.get(
        analysis, f" without {analysis}")
    return f"{label} layer {layer}{suffix}"


def analysis_result(analysis, features, task, stimulus, low_level_alphas, device, what):
    """One analysis of a layer's TR-grid features (story -> (grid TRs, hidden)): the
    semantic preference (``semantic_preference``), or the encoding scores (``layer_scores``)
    of the features ("none") or of their residuals after regressing out the low-level
    feature sets of ``analysis`` ("a" or "a+b")."""
    if analysis == SEMANTIC_PREFERENCE:
        return semantic_preference(features, stimulus.semantic, stimulus.phonetic, task.stories,
                                   task.test_story, task.alphas, task.splits, device)
    if analysis != "none":
        confounds = {story: np.hstack([stimulus.low_level[story][name]
                                       for name in analysis.split("+")]) for story in features}
        features = eval_utils.regress_out(features, confounds, task.stories, low_level_alphas,
                                          task.splits, device)
    return layer_scores(features, task, device, what)


def model_tr_features(encoder, layers, stories, extraction, device="cpu"):
    """TR-grid features of a model's ``layers``: layer -> story -> (grid TRs, hidden), from
    the feature cache or extracted (nothing is read for no layers)."""
    features = {layer: {} for layer in layers}
    if not layers:
        return features
    for story in stories:
        window_features, times = cached_story_features(encoder, story, layers, extraction,
                                                       device)
        resampled = tr_features(extraction.data_dir, story, window_features, times,
                                extraction.tr_source, extraction.tr_path)
        for layer, values in resampled.items():
            features[layer][story] = values
    return features


def cached_story_features(encoder, story, layers, extraction, device="cpu"):
    """Window features of a story (layer -> (windows, hidden)) and their end times, from the
    cache; missing layers are extracted and cached (keyed by the model's fingerprint, the
    window settings, the autocast dtype, the preprocessor and the story's WAV)."""
    settings = {"context_s": extraction.context_s, "chunk_s": extraction.chunk_s,
                "autocast": str(extraction.dtype), "preprocessor": encoder.preprocessor.digest(),
                **run_utils.file_identity([data_utils.stimulus_path(extraction.data_dir,
                                                                     story)])}
    path, text = run_utils.cache_path(extraction.cache_dir, story, settings, encoder.fingerprint)

    def extract(missing):
        logger.info("%s: extracting layers %s", story, " ".join(map(str, missing)))
        audio = data_utils.load_stimulus(extraction.data_dir, story,
                                         encoder.preprocessor.sampling_rate)
        features, times = speech_models.sliding_window_features(
            encoder.backbone, encoder.preprocessor, audio, missing, extraction.context_s,
            extraction.chunk_s, extraction.batch_size, device, extraction.dtype,
            naive=extraction.naive, progress=True)
        return features, {"times": times}

    features, extras = run_utils.cached_arrays(path, layers, extract, text)
    return features, extras["times"]


def tr_features(data_dir, story, window_features, times, tr_source="respdict", tr_path=None):
    """Window features resampled to the story's TR centres: layer -> (grid TRs, hidden)."""
    centres = data_utils.tr_times(data_dir, story, tr_source, tr_path)
    return {layer: eval_utils.lanczos_interp(values, times, centres)
            for layer, values in window_features.items()}


def layer_scores(features, task, device=None, what="features"):
    """Encoding-model scores of TR-grid features (story -> (grid TRs, features)) on ``task``:
    per-voxel ``r``, ``cc_norm`` and ``alpha``, each (n_voxels,)."""
    responses = task.responses
    x_train, x_test = design_matrices(features, task.stories, task.test_story)
    if len(x_train) != len(responses.train) or len(x_test) != len(responses.test):
        raise DatasetError(f"{what}: {len(x_train)}/{len(x_test)} feature rows "
                           f"but {len(responses.train)}/{len(responses.test)} response rows; "
                           "the responses do not match respdict.json")
    r, cc_norm, alphas = encoding_scores(x_train, x_test, responses.train, responses.test,
                                         task.nc, task.alphas, task.splits, device)
    return {"r": r, "cc_norm": cc_norm, "alpha": alphas}


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


def summarise(values, cells):
    """Mean of per-voxel values (n_voxels,) over each cell (name -> voxel indices); None for a
    cell without voxels."""
    return {name: float(values[voxels].mean()) if voxels.size else None
            for name, voxels in cells.items()}


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


# ----------------------------------------------------------------------------- finished results

def partial_folder(out_dir):
    """``<save_dir>/.<exp_name>.partial``: the finished results of a run not yet complete."""
    return out_dir.parent / f".{out_dir.name}.partial"


def result_settings(args, subject, stories, dtype):
    """What the numbers of a (model, layer, analysis) result depend on beyond its key: the
    arguments but ``RESUME_MAY_CHANGE``, the stories, the autocast dtype and the identity of
    the input files (noise ceiling, respdict, responses, WAVs, TextGrids, word vectors)."""
    all_stories = [*stories, args.test_story]
    files = [noise_ceilings.ceiling_file(subject, args.nc_path),
             data_utils.derivative_dir(args.data_dir) / "respdict.json",
             *(data_utils.response_path(args.data_dir, subject, s) for s in all_stories),
             *(data_utils.stimulus_path(args.data_dir, s) for s in all_stories),
             *(data_utils.textgrid_path(args.data_dir, s) for s in all_stories)]
    if args.semantic_preference and Path(args.word_vectors).is_file():
        files.append(args.word_vectors)
    arguments = {f"--{name}": value for name, value in sorted(vars(args).items())
                 if name not in RESUME_MAY_CHANGE}
    return {**arguments, "subject": subject, "train_stories": stories, "autocast": str(dtype),
            "input files": run_utils.file_identity(files)}


class FinishedResults:
    """The (model, layer, analysis) results a run has finished, kept in the folder ``path``.

    One ``<digest of the key>.npz`` per result (its arrays and numbers), written atomically as
    soon as it is done, beside ``settings.json`` (``result_settings``); the folder (with the
    project's marker) is made with the first result."""

    def __init__(self, path, settings):
        self.path = Path(path)
        self.settings = json.loads(run_utils.json_text(settings))  # as read back from the file

    @classmethod
    def open(cls, path, settings, resume, overwrite):
        """The finished results at ``path``: an interrupted run's with ``resume`` (refused when
        its settings differ); else none, an earlier run's folder being discarded with
        ``overwrite`` and refused without."""
        finished = cls(path, settings)
        run_utils.recover(finished.path)
        if not finished.path.exists():
            if resume:
                logger.info("%s: no finished results to resume; starting from the beginning",
                            finished.path)
            return finished
        if resume:
            finished.check_settings()
            logger.info("resuming with the %d finished results in %s",
                        len(list(finished.path.glob("[!.]*.npz"))), finished.path)
            return finished
        if not overwrite:
            raise run_utils.OutputExistsError(
                f"{finished.path} holds the finished results of an interrupted run; pass "
                "--resume to continue it or --overwrite to discard them")
        run_utils.check_replaceable(finished.path, overwrite=True)  # ours to delete
        finished.remove()
        logger.warning("discarded the finished results of an interrupted run in %s "
                       "(--overwrite)", finished.path)
        return finished

    def check_settings(self):
        """A UsageError unless the folder's results were made with ``self.settings``."""
        try:
            saved = json.loads((self.path / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            raise UsageError(f"{self.path / SETTINGS_FILE}: missing or unreadable; pass "
                             f"--overwrite without --resume to discard {self.path}") from None
        changed = [name for name in sorted(saved.keys() | self.settings.keys())
                   if saved.get(name) != self.settings.get(name)]
        if changed:
            raise UsageError(f"{self.path}: its finished results were made with other settings "
                             f"({', '.join(changed)}); resume with the same ones, or pass "
                             "--overwrite without --resume to discard them")

    def _file(self, key):
        return self.path / f"{run_utils.digest(json.dumps(key, sort_keys=True))}.npz"

    def load(self, key):
        """The finished result of ``key`` (a dict): name -> array (numbers for 0-d ones), or
        None when there is none (or it is unreadable: logged, to be computed again)."""
        path = self._file(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            logger.warning("finished result %s is unreadable (%s); computing it again", path, err)
            return None
        return {name: values.item() if values.ndim == 0 else values
                for name, values in arrays.items()}

    def save(self, key, result):
        """Keep the result (name -> array or number) of ``key``, atomically."""
        if not self.path.exists():
            with run_utils.atomic_output(self.path) as staging:
                run_utils.mark_folder(staging, "finished results of an evaluation")
                run_utils.write_json(staging / SETTINGS_FILE, self.settings)
        with run_utils.atomic_output(self._file(key), overwrite=True) as tmp:
            np.savez(tmp, **{name: np.asarray(values) for name, values in result.items()})

    def remove(self):
        """Delete the folder (the run is complete, or its results are discarded)."""
        if self.path.exists():
            shutil.rmtree(self.path)


# ----------------------------------------------------------------------------- outputs

def write_results(out_dir, all_results, facts, summary_voxels):
    """results.json (``facts``, the rows and the semantic preference), results.csv, the
    per-voxel .npz files, ``summary_voxels.npy`` (``summary_voxels``: the (n,) int64 indices
    of the voxels the "all" summaries average over, for the report) and the plots
    (alignment.png; reliance.png with low-level analyses; semantic_preference.png/.csv with
    the semantic preference) in a fresh ``out_dir``.
    ``facts`` holds the subject, test story and the ``summary_voxels`` facts, for the titles.

    Returns the alignment rows and the semantic-preference rows."""
    rows, preference_rows = [], []
    for label, layers in all_results.items():
        for layer, result in layers.items():
            before = result["encoding"]["none"]["summary"]["cc_norm"]
            for analysis, scores in result["encoding"].items():
                for region, value in scores["summary"]["cc_norm"].items():
                    defined = analysis != "none" and None not in (before[region], value)
                    rows.append({
                        "model": label, "layer": layer, "low_level": analysis, "region": region,
                        "cc_norm": value, "r": scores["summary"]["r"][region],
                        "drop_percent": (eval_utils.percent_drop(before[region], value)
                                         if defined else None),
                        "n_voxels": scores["summary"]["n_voxels"][region]})
                np.savez(out_dir / run_utils.voxel_results_name(label, layer, analysis),
                         r=scores["r"], cc_norm=scores["cc_norm"], alpha=scores["alpha"])
            if result["semantic_preference"] is not None:
                preference_rows.append({"model": label, "layer": layer,
                                        **result["semantic_preference"]})
    run_utils.write_json(out_dir / "results.json", {**facts, "results": rows,
                                                    "semantic_preference": preference_rows})
    np.save(out_dir / run_utils.SUMMARY_VOXELS_NAME, np.asarray(summary_voxels, np.int64))
    run_utils.write_csv(out_dir / "results.csv", rows)
    story = f"{facts['subject']}, {facts['test_story']}"
    voxels = f"{story}, {facts['scored_voxels']} voxels with NC > {facts['nc_thr']}"
    baseline = [row for row in rows if row["region"] == "all" and row["low_level"] == "none"]
    plots.plot_per_layer(out_dir / "alignment.png", _series(baseline, "cc_norm"),
                         "mean cc_norm", f"Brain alignment, {voxels}")
    removed = [row for row in rows if row["region"] == "all" and row["low_level"] != "none"]
    if removed:
        plots.plot_per_layer(out_dir / "reliance.png",
                             _series(removed, "drop_percent", with_analysis=True),
                             "drop in mean cc_norm (%)",
                             f"Reliance on low-level features (higher: more reliant), {voxels}")
    if preference_rows:
        run_utils.write_csv(out_dir / "semantic_preference.csv", preference_rows)
        plots.plot_per_layer(out_dir / "semantic_preference.png",
                             _series(preference_rows, "preference"),
                             "semantic r - phonetic r", f"Semantic preference, {story}")
    return rows, preference_rows


def _series(rows, key, with_analysis=False):
    """Plot series: model label (or (model label, "without <set>")) -> {layer: row[key]}."""
    series = {}
    for row in rows:
        name = (row["model"], f"without {row['low_level']}") if with_analysis else row["model"]
        series.setdefault(name, {})[row["layer"]] = row[key]
    return series


if __name__ == "__main__":
    sys.exit(main())
