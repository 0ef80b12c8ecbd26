"""The analyses of a model's layers in brain alignment: the encoding scores of each layer's
features, of the features with low-level feature sets regressed out (reliance), of fewer
training rows (data efficiency), and the semantic preference; each result kept as soon as it is
done (docs/method.md#low-level-reliance, docs/method.md#semantic-preference).
"""

import dataclasses
import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

import arguments
import data_utils
import eval_utils
import layer_features
import low_level_features
import processes
import run_utils
import speech_models
from arguments import flag
from encoding import ALL_ROWS, layer_scores, low_level_prediction, partition_scores
from run_utils import DatasetError, UsageError
from summaries import PARTITION_PARTS, with_partition_summary, with_summary

logger = logging.getLogger(__name__)

DEFAULT_LAYERS = (2, 5, 7, 8, 10, 11, 12)  # the paper's hidden-state indices
SEMANTIC_PREFERENCE = "semantic preference"  # the analysis name of --semantic_preference
RESULT_FORMAT = 3  # of a kept result (older ones are fitted again); 2: with the penalty grid's
# counts; 3: keyed by training subset, subsets with their bootstrap
GROUP = "low-level reliance and semantic preference"
LOW_LEVEL_METHODS = ("residual", "partition")  # --low_level_method
PARTITION = "partition"  # the analysis name prefix of --low_level_method partition
PARTITION_RATIOS = np.logspace(-3, 3, 7)  # the low-level band's penalty over the layer's


@dataclasses.dataclass(kw_only=True)
class AnalysisFlags(arguments.Flags):
    """The analyses beyond each layer's encoding scores."""

    low_level: list[str] = flag([], group=GROUP, resumable=True,
                                help="reliance analysis: low-level feature sets ("
                                     + ", ".join(low_level_features.FEATURE_SETS) + ") to "
                                     "regress out of each layer's features before fitting the "
                                     "encoding model again; each is removed on its own, 'a+b' "
                                     "removes a and b together")
    low_level_method: list[str] = flag(
        list(LOW_LEVEL_METHODS), choices=LOW_LEVEL_METHODS, group=GROUP, resumable=True,
        protocol=True,
        help="how --low_level reliance is measured: residual (the paper's: the drop in cc_norm "
             "once the set is regressed out of the features) and/or partition (variance "
             "partitioning: a banded ridge of the layer and the set together, each with its own "
             "penalty, gives the variance unique to each and shared; about --partition_ratios "
             "times the cost of a layer's fit); docs/alignment.md#variance-partitioning")
    partition_ratios: list[float] | None = flag(
        None, group=GROUP, protocol=True,
        help="penalty ratios of the banded ridge of --low_level_method partition (the "
             "low-level set's penalty over the layer's, each with every --alphas); default: "
             "logspace(-3, 3, 7)")
    ngram_vocab_size: int = flag(1000, group=GROUP,
                                 help="diphone/triphone columns: the most frequent in the "
                                      "training stories")
    low_level_alphas: list[float] | None = flag(
        None, group=GROUP,
        help="ridge penalties for regressing --low_level features out of the model's features; "
             "default: logspace(0, 4, 17) in singular-value units, squared (reaching lower than "
             "--alphas, so that the removal is not limited by shrinkage)")
    semantic_preference: bool = flag(False, group=GROUP, resumable=True,
                                     help="also score how well each layer predicts semantic "
                                          "features (--word_vectors or --semantic_features) "
                                          "versus phonetic ones (--phonetic_features)")
    word_vectors: str | None = flag(None, group=GROUP,
                                    help="word-vector text file (word2vec/GloVe text format: a "
                                         "word and its values per line), or 'synthetic' for the "
                                         "embedding planted in a synthetic dataset; needed by "
                                         "--semantic_preference")
    semantic_features: str | None = flag(None, group=GROUP,
                                         help="HDF5 file of target_features.py (e.g. a text "
                                              "LM's word states: target_features.py text) "
                                              "holding the training and test stories: the "
                                              "semantic features of --semantic_preference, in "
                                              "place of --word_vectors")
    phonetic_features: list[str] = flag(["phonemes", "articulation"], group=GROUP,
                                        help="low-level feature sets that "
                                             "--semantic_preference compares against")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 1, "ngram_vocab_size")
        if self.semantic_preference and (
                (self.word_vectors is None) == (self.semantic_features is None)):
            raise UsageError("--semantic_preference needs one of --word_vectors FILE (or "
                             "'synthetic') and --semantic_features FILE.hf5")
        try:
            for spec in self.low_level:
                low_level_features.check_feature_sets(spec.split("+"))
            low_level_features.check_feature_sets(self.phonetic_features)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if self.low_level_alphas is None:
            self.low_level_alphas = eval_utils.CONFOUND_ALPHAS.tolist()
        if self.partition_ratios is None:
            self.partition_ratios = PARTITION_RATIOS.tolist()
        arguments.check_penalties(self, "low_level_alphas", "partition_ratios")
        self.low_level_method = [m for m in LOW_LEVEL_METHODS if m in self.low_level_method]


class Stimulus(NamedTuple):
    """Stimulus features per story on the TR grid, as far as the analyses need them."""
    low_level: dict  # story -> low-level feature set -> (grid TRs, dims)
    phonetic: dict = None  # story -> the --phonetic_features side by side
    semantic: dict = None  # story -> word-vector features


def stimulus_features(dataset, stories, test_story, cache_dir, low_level=(),
                      phonetic_features=(), word_vectors=None, ngram_vocab_size=None,
                      semantic_features=None):
    """Low-level (the ``low_level`` specs' sets), phonetic and semantic features per story
    of ``dataset`` on its TR grid, as the analyses need them; semantic and phonetic ones only
    with ``word_vectors`` (a file or "synthetic") or ``semantic_features`` (a file of
    ``target_features.py``). Low-level features are cached in ``<cache_dir>/stimulus``."""
    semantic_source = word_vectors or semantic_features
    names = sorted({name for spec in low_level for name in spec.split("+")}
                   | (set(phonetic_features) if semantic_source else set()))
    if not names:
        return Stimulus(low_level={})
    all_stories = [*stories, test_story]
    vocabularies = low_level_features.build_vocabularies(dataset, stories, names,
                                                         max_size=ngram_vocab_size)
    low = {story: low_level_features.story_features(dataset, story, names, vocabularies,
                                                    Path(cache_dir) / "stimulus")
           for story in all_stories}
    if not semantic_source:
        return Stimulus(low_level=low)
    if semantic_features:  # the file's response rows, back on the whole TR grid
        rows = dataset.target_features(semantic_features, all_stories)
        semantic = {story: on_tr_grid(values, len(dataset.tr_times(story)))
                    for story, values in rows.items()}
    else:
        vectors = low_level_features.load_word_vectors(word_vectors, dataset)
        semantic = {story: low_level_features.word_vector_features(dataset, story, vectors)
                    for story in all_stories}
    return Stimulus(
        low_level=low,
        phonetic={story: np.hstack([low[story][name] for name in phonetic_features])
                  for story in all_stories},
        semantic=semantic)


def on_tr_grid(rows, n_grid_trs):
    """Response rows ((rows, features), as the responses are trimmed) put back on the story's
    whole TR grid: (n_grid_trs, features) float32, NaN in the trimmed TRs (which every use of
    TR-grid features trims again)."""
    grid = np.full((n_grid_trs, rows.shape[1]), np.nan, np.float32)
    grid[data_utils.TRIM_START_TRS:n_grid_trs - data_utils.TRIM_END_TRS] = rows
    return grid


def evaluate_model(label, checkpoint, layers, dataset, extraction, cache_dir, task, stimulus,
                   finished, low_level=(), low_level_alphas=eval_utils.CONFOUND_ALPHAS,
                   device="cpu", low_level_method=LOW_LEVEL_METHODS,
                   partition_ratios=PARTITION_RATIOS, low_level_alone=None):
    """Per-layer scores of one model, its features extracted from the stories of ``dataset``
    (``layer_features.model_tr_features``, cached in ``cache_dir``).

    ``layers``: the requested hidden-state indices, or None for ``DEFAULT_LAYERS``;
    ``low_level``: specs ("a" or "a+b") of low-level feature sets of ``stimulus``, one analysis
    each per ``low_level_method``: "residual" regresses them out, "partition" partitions the
    variance with them (``partition_scores``, penalty ratios ``partition_ratios``; the sets'
    own test predictions are kept in ``low_level_alone``, a dict spec -> prediction that the
    caller may share between models, for they are the same for all). The
    semantic preference is scored when ``stimulus`` has semantic features, and the encoding
    model fitted again on each of ``task.subsets``. Each (layer, analysis, training subset)
    result held by ``finished`` (a ``FinishedResults``) is reused; the others are computed and
    kept there at once.

    Returns dict layer -> {"encoding": {analysis: scores}, "efficiency": {subset label:
    scores}, "partition": {spec: scores}, "semantic_preference": ... or None}, where analysis
    is "none" (the layer's features) or a ``low_level`` item (the features with those
    low-level features regressed out), and scores holds the per-voxel results
    (``layer_scores``) and their ``summary`` (``summarise``); and
    the model's fingerprint (``speech_models.fingerprint``), for the run's record.
    """
    low_level_alone = {} if low_level_alone is None else low_level_alone
    encoder = speech_models.load_encoder(checkpoint, device)
    layers = run_utils.choose_layers(layers, encoder.depth, DEFAULT_LAYERS)
    residual = low_level if "residual" in low_level_method else []
    partitioned = low_level if PARTITION in low_level_method else []
    analyses = (["none", *residual, *[f"{PARTITION} {spec}" for spec in partitioned]]
                + ([SEMANTIC_PREFERENCE] if stimulus.semantic is not None else []))
    cells = ([(analysis, ALL_ROWS) for analysis in analyses]
             + [("none", subset) for subset in task.subsets])
    keys = {(layer, analysis, subset): {
        "fingerprint": encoder.fingerprint, "preprocessor": encoder.preprocessor.digest(),
        "layer": layer, "analysis": analysis, "subset": subset, "format": RESULT_FORMAT}
        for layer in layers for analysis, subset in cells}
    done = {cell: finished.load(key) for cell, key in keys.items()}
    reused = [_what(label, *cell) for cell, result in done.items() if result is not None]
    if reused:
        logger.info("reusing %d finished results of %s: %s", len(reused), finished.path,
                    "; ".join(reused))
    missing = sorted({layer for (layer, _, _), result in done.items() if result is None})
    todo = sorted(cell for cell, result in done.items() if result is None)
    if len({json.dumps(part) for part in processes.gather_from_processes(todo)}) > 1:
        raise UsageError(f"the torchrun processes see different finished results in "
                         f"{finished.path}: --save_dir must be on a file system they all share")
    features = layer_features.model_tr_features(encoder, missing, dataset,
                                                [*task.stories, task.test_story], extraction,
                                                cache_dir, device)
    results = {}
    for layer in layers:
        for analysis, subset in cells:
            if done[layer, analysis, subset] is None:
                done[layer, analysis, subset] = analysis_result(
                    analysis, features[layer], task, stimulus, low_level_alphas, device,
                    _what(label, layer, analysis, subset), subset,
                    done[layer, "none", ALL_ROWS], partition_ratios, low_level_alone)
                if processes.is_main_process():
                    finished.save(keys[layer, analysis, subset], done[layer, analysis, subset])
        results[layer] = {"encoding": {}, "efficiency": {}, "partition": {
            spec: with_partition_summary(done[layer, f"{PARTITION} {spec}", ALL_ROWS], task)
            for spec in partitioned}, "semantic_preference": done.get(
            (layer, SEMANTIC_PREFERENCE, ALL_ROWS))}
        for spec, scores in results[layer]["partition"].items():
            parts = scores["summary"]
            logger.info("%s: of the variance explained, %.3f unique to the layer, %.3f shared, "
                        "%.3f unique to %s", _what(label, layer, f"{PARTITION} {spec}"),
                        *[parts[name][("all", "voxel_mean")] for name in PARTITION_PARTS], spec)
        for analysis, subset in cells:
            if analysis == SEMANTIC_PREFERENCE or analysis.startswith(f"{PARTITION} "):
                continue
            scores = with_summary(done[layer, analysis, subset], task)
            if subset == ALL_ROWS:
                results[layer]["encoding"][analysis] = scores
            else:
                results[layer]["efficiency"][subset] = scores
            mean = scores["summary"]["cc_norm"][("all", "voxel_mean")]
            logger.info("%s: mean cc_norm %.3f, mean r %.3f (%d voxels with NC > %s)",
                        _what(label, layer, analysis, subset), mean,
                        scores["summary"]["r"][("all", "voxel_mean")], task.voxels.sum(),
                        task.nc_thr)
            warn_of_a_narrow_grid(_what(label, layer, analysis, subset),
                                  scores["summary"]["alpha_grid"], task.alphas)
        preference = results[layer]["semantic_preference"]
        if preference is not None:
            logger.info("%s layer %d: semantic r %.3f, phonetic r %.3f", label, layer,
                        preference["semantic_r"], preference["phonetic_r"])
    return results, encoder.fingerprint


def warn_of_a_narrow_grid(what, grid, alphas):
    """One warning line when more than ``eval_utils.EDGE_WARNING_FRACTION`` of the voxels chose
    an end of the penalty grid (``grid``: ``eval_utils.alpha_grid_summary``), with a wider grid
    that would cover them."""
    if grid["wider_alphas"] is None:
        return
    ends = [f"{100 * fraction:.0f}% chose its {end} ({value:.3g})" for fraction, end, value in (
        (grid["lowest_fraction"], "lowest", min(alphas)),
        (grid["highest_fraction"], "highest", max(alphas)))
        if fraction > eval_utils.EDGE_WARNING_FRACTION]
    logger.warning("%s: of the %d voxels, %s of --alphas: the grid may be too narrow; try "
                   "--alphas %s (docs/alignment.md#the-penalty-grid)", what, grid["n_voxels"],
                   ", ".join(ends), " ".join(f"{a:.4g}" for a in grid["wider_alphas"]))


def _what(label, layer, analysis, subset=ALL_ROWS):
    """"<model> layer <k>[ without <set> | semantic preference | with <set> partitioned][,
    <training subset>]", for log lines."""
    suffix = {"none": "", SEMANTIC_PREFERENCE: f" {SEMANTIC_PREFERENCE}"}.get(
        analysis, f" with {analysis.removeprefix(PARTITION + ' ')} partitioned"
        if analysis.startswith(f"{PARTITION} ") else f" without {analysis}")
    share = "" if subset == ALL_ROWS else f", {subset}"
    return f"{label} layer {layer}{suffix}{share}"


def analysis_result(analysis, features, task, stimulus, low_level_alphas, device, what,
                    subset=ALL_ROWS, own=None, partition_ratios=PARTITION_RATIOS,
                    low_level_alone=None):
    """One analysis of a layer's TR-grid features (story -> (grid TRs, hidden)): the
    semantic preference (``semantic_preference``), the variance partitioning with the
    low-level sets of "partition a[+b]" (``partition_scores``, from ``own``: the features' own
    result, and the sets' own prediction, fitted once into ``low_level_alone``), or the
    encoding scores (``layer_scores``) of the features ("none", fitted on the training rows of
    ``subset``) or of their residuals after regressing out the
    low-level feature sets of ``analysis`` ("a" or "a+b"). Only the features' own scores keep
    their test predictions."""
    if analysis == SEMANTIC_PREFERENCE:
        return semantic_preference(features, stimulus.semantic, stimulus.phonetic, task.stories,
                                   task.test_story, task.alphas, task.splits, device,
                                   task.alpha_score, task.uncertainty)
    if analysis == "none":
        return layer_scores(features, task, device, what, subset)
    spec = analysis.removeprefix(f"{PARTITION} ")
    confounds = {story: np.hstack([stimulus.low_level[story][name]
                                   for name in spec.split("+")]) for story in features}
    if spec != analysis:
        low_level_alone = {} if low_level_alone is None else low_level_alone
        if spec not in low_level_alone:
            low_level_alone[spec] = low_level_prediction(confounds, task, device, what)
        return partition_scores(features, confounds, task, own["prediction"],
                                low_level_alone[spec], partition_ratios, device, what)
    residuals = eval_utils.regress_out(features, confounds, task.stories, low_level_alphas,
                                       task.splits, device, score=task.alpha_score)
    scores = layer_scores(residuals, task, device, what)
    del scores["prediction"]
    return scores


def semantic_preference(features, semantic, phonetic, stories, test_story, alphas, splits,
                        device=None, score="corr", uncertainty=None):
    """How much better a layer predicts semantic than phonetic stimulus features
    (docs/method.md#semantic-preference).

    Each score is the mean, over the target's columns that vary in both the training stories
    and the test story, of the held-out-story correlation of a ridge prediction from the
    layer's TR-grid features (``eval_utils.prediction_score``). With ``uncertainty``
    (``encoding.Uncertainty``) holding bootstrap resamples, the preference is also computed on
    block-bootstrap resamples of the test story's rows drawn from its ``seed`` and
    ``block_len``: the same resamples for every model.

    Returns
    -------
    dict with ``semantic_r``, ``phonetic_r``, ``preference`` = semantic_r - phonetic_r,
    ``semantic_columns``/``phonetic_columns``, the number of columns averaged, and with
    resamples ``bootstrap``: (n_bootstrap,) float64 preferences.
    """
    scores, resampled = {}, {}
    for name, targets in (("semantic", semantic), ("phonetic", phonetic)):
        per_column, prediction, target = eval_utils.prediction_score(
            features, targets, stories, test_story, alphas, splits, device, score=score)
        used = np.isfinite(per_column)
        if not used.any():
            raise DatasetError(f"no {name} feature column varies in both the training stories "
                               f"and {test_story}; the --semantic_preference comparison is "
                               "undefined (check that --word_vectors covers the stories' "
                               "words, or that --semantic_features varies)")
        scores[f"{name}_r"] = float(per_column[used].mean())
        scores[f"{name}_columns"] = int(used.sum())
        if uncertainty is not None and uncertainty.bootstrap_counts is not None:
            counts, starts = eval_utils.bootstrap_block_counts(
                len(target), uncertainty.block_len, len(uncertainty.bootstrap_counts),
                uncertainty.seed)
            mean = np.full((int(used.sum()), 1), 1.0 / used.sum())
            resampled[name] = eval_utils.bootstrap_correlations(
                prediction[:, used], target[:, used], counts, starts, mean)[:, 0]
    scores["preference"] = scores["semantic_r"] - scores["phonetic_r"]
    if resampled:
        scores["bootstrap"] = resampled["semantic"] - resampled["phonetic"]
    return scores
