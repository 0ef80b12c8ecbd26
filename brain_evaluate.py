"""Brain alignment: how well each layer of pretrained and brain-tuned models predicts held-out fMRI.

    python brain_evaluate.py --model_name facebook/wav2vec2-base --subject 3 \\
        --data_dir /path/to/ds003020 --logs_dir outputs/brain_tuning/wav2vec2-base_UTS03_fmri

For each model and layer (SPEC section 4): sliding-window features of every story (16 s
context + 0.1 s chunks, last frame's hidden state), Lanczos-downsampled to the TR centres,
trimmed, z-scored and delayed by 1-4 TRs per story; a ridge encoding model per voxel with
alphas chosen on chunks held out inside the training stories; predictions of the test story
(``wheretheressmoke``, its first 40 response rows dropped as in the paper) scored by raw
Pearson r and cc_norm = r / cc_max.

The scoring protocol is the authors' by default (SPEC section 4), each choice a flag recorded
in results.json (``protocol``) and run_config.json: the prediction is correlated with the mean
of the test story's repeats over the scored rows (``--test_target``), cc_max comes from those
rows of the repeats (``--normalise_by``), and each voxel's alpha maximises the held-out
sign(R2) sqrt(|R2|) of the Huth-lab ``bootstrap_ridge(use_corr=False)`` (``--alpha_score``).
The TR timing defaults to the simulated grid (``--tr_source``; the authors used TR files).

Uncertainty: per-voxel p-values of the test correlation by a block permutation of the test
story (``--n_permutations``, ``--block_len``) with Benjamini-Hochberg FDR (``--fdr_q``); a
block-bootstrap interval (``--n_bootstrap``) of every mean cc_norm and of every tuned-minus-
pretrained difference, from the same resamples for every model. Data efficiency, with
``--train_fraction``: the encoding model fitted again on fractions of the training rows.

Reliance on low-level features (SPEC section 5), with ``--low_level powspec phonemes ...``:
each named set of ``low_level_features`` (``a+b`` for several together) is regressed out of
each layer's TR-level features with a cross-validated ridge fitted on the training stories
and applied to every story; the encoding model is fitted again on the residuals, and the drop
in cc_norm is the layer's reliance on those features. Semantic preference (SPEC section 7),
with ``--semantic_preference --word_vectors FILE|synthetic``: how well each layer's TR-level
features predict the word vectors of the words heard (same ridge and splits, held-out story,
mean r over dimensions) minus how well they predict ``--phonetic_features``; with
``--semantic_features FILE.hf5`` instead, the semantic features are those of a
``target_features.py`` file (e.g. a text LM's word states, ``target_features.py text``).

Every input is checked before anything expensive (``data_utils.check_run_inputs``: respdict
entries, response rows and voxel counts, WAVs covering their stories, TextGrids; the noise
ceiling's voxel count), and a run that would average over no voxel is refused.

Summaries come in two aggregations (``aggregation`` in results.csv): "voxel_mean", the mean
over the voxels whose noise ceiling exceeds ``--nc_thr`` and whose test target varies over the
scored rows (a constant voxel, or an all-NaN one, which reads as 0, is left out and counted
in results.json's ``excluded_voxels``), and "parcel_mean", the follow-up paper's: cc_norm
counted as 0 where the test-row ceiling is at most ``FOLLOWUP_CEILING``, averaged over all of
a region's voxels, and for a group of regions the mean of its regions' means. ``--regions``
is a file mapping region names to voxel indices and group names to region names, or a source
of ``brain_regions.py`` (the subject's pycortex ROIs, an fsaverage annotation such as
HCP-MMP1 with the follow-up paper's groups, or its FreeSurfer aparc), made once from the
dataset's anatomy and cached. A summary without voxels is null in results.json, blank in
results.csv, with a warning. ``--flatmap_layers`` draws per-voxel cc_norm, and each tuned
model minus the pretrained one, on the subject's flat map (pycortex).

``--voxels`` chooses the voxels that are fitted and scored: ``all`` (default), ``nc>T`` (noise
ceiling above T) or a region or group of ``--regions``. Only their columns are read and the
whole problem is theirs (time and memory scale with the selection); each fitted voxel's
results equal those of an ``all`` run, and every summary ("all", regions, groups, both
aggregations; the FDR too) is over the fitted voxels only, recorded as ``fitted_voxels``
(selection and count) in results.json and run_config.json.

Outputs in ``<save_dir>/<exp_name>/``: ``results.json`` and ``results.csv`` (per model,
layer, low-level analysis ("none", or the set removed), region, aggregation and training
fraction: mean r and cc_norm, ``n_voxels`` averaged, the bootstrap interval of the mean
cc_norm, the fraction of significant voxels, and ``drop_percent`` = 100 (before - after) /
before, empty where before <= 0), ``comparisons.csv`` (tuned minus pretrained, with
intervals), ``voxels_<model>_layer<k>[_without_<set>].npz`` (per-voxel r, cc_norm, alpha,
p_value, q_value, one per voxel of the subject, NaN where not fitted),
``predictions_<model>_layer<k>.npz`` (``prediction``, the float32 test prediction of the fitted
voxels, ``rows``, the test-story rows it belongs to, and ``voxels``, the subject's voxel index
of each column), ``summary_voxels.npy`` (indices of the voxel-mean voxels),
``alignment.png`` (mean cc_norm per layer, one line per model, with intervals),
``regions.png`` (with --regions: per layer, each group's (else region's) parcel-mean cc_norm
per model with intervals, the paper's figure), ``regions.json`` (the region file used),
``flatmap_*.png`` (with --flatmap_layers),
``comparison.png``, ``reliance.png`` (drop per layer; colour per model, line style per
feature set removed), ``data_efficiency.png``, ``semantic_preference.csv``/``.png``
(semantic_r, phonetic_r, preference per model and layer; also in results.json) and
``run_config.json`` (the arguments and the run). The folder is written whole at the end
(``run_utils.output_folder``): a failed run leaves the previous results as they were.

Each (model, layer, analysis) result is kept as soon as it is done in
``<save_dir>/.<exp_name>.partial/`` (``FinishedResults``), removed once the results folder is
in place: ``--resume`` continues a killed run without fitting its finished results again (the
same numbers as an uninterrupted run); without it such a folder is refused, and
``--overwrite`` discards it. Model features are cached in ``--cache_dir``, stimulus features
in ``<cache_dir>/stimulus``; nothing is computed twice.

Several GPUs or machines: ``torchrun --nproc_per_node N brain_evaluate.py ...`` (several
nodes through torchrun's rendezvous) deals the stories' feature extraction out to the
processes and splits the fitted voxels into one contiguous share per process for the ridge;
every process then holds the whole test prediction, and rank 0 alone writes the results,
which equal a one-process run's. Every process must see the same ``--data_dir``,
``--save_dir`` and ``--cache_dir`` (a cluster's shared file system).
"""

import argparse
import json
import logging
import math
import shutil
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse
import scipy.stats

import brain_regions
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
# or only what is computed from the finished results (the FDR level): --resume may change
# them. --nc_thr and --regions may not: each finished result holds bootstrap means over the
# run's summaries; nor --voxels: its per-voxel arrays are over the fitted voxels alone.
RESUME_MAY_CHANGE = {"resume", "overwrite", "device", "precision", "log_level", "save_dir",
                     "exp_name", "cache_dir", "batch_size", "naive", "model_name", "model_path",
                     "logs_dir", "epochs", "skip_pretrained", "layers", "low_level",
                     "semantic_preference", "train_fraction", "fdr_q", "flatmap_layers",
                     "flatmap_height"}
FOLLOWUP_CEILING = 0.05  # the follow-up paper's summaries count voxels of a lower test-row
#                          ceiling as 0
CONFIDENCE = 0.95  # of the bootstrap intervals
TEST_TARGETS = ("repeats_mean", "data")  # --test_target; the first is the authors'
NORMALISERS = ("test_repeats", "nc_file")  # --normalise_by; the first is the authors'


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
    parser.add_argument("--voxels", default="all", metavar="SELECTION",
                        help="the voxels encoding models are fitted and scored on: 'all', "
                             "'nc>T' (noise ceiling of --nc_path above T, e.g. nc>0.4) or the "
                             "name of a region or group of --regions; only their columns are "
                             "read, so time and memory scale with the selection. Per-voxel "
                             "results keep the subject's voxel space (NaN where not fitted) "
                             "and equal those of an 'all' run; every summary (and the FDR) "
                             "is over the fitted voxels only (results.json fitted_voxels)")
    regions = parser.add_argument_group("brain regions and cortical maps (brain_regions.py)")
    regions.add_argument("--regions", "--roi_file", dest="regions", default=None,
                         help="per-region summaries: a JSON file mapping region name -> list of "
                              "voxel indices and group name -> region names (brain_regions.py "
                              "regions writes one), or a source computed from the subject's "
                              "anatomy and cached in --cache_dir: "
                              + ", ".join(brain_regions.SOURCES) + " (see brain_regions.py); "
                              "copied into the results as regions.json. A region with none "
                              "of the summary voxels (see --nc_thr) gets no voxel mean: null "
                              "in results.json, blank in results.csv, and a warning")
    brain_regions.add_source_arguments(regions)
    regions.add_argument("--flatmap_layers", nargs="+", default=[],
                         help="cortical maps (pycortex quickflat on the subject's flat map) of "
                              "per-voxel cc_norm of these layers ('best': the layer of the "
                              "highest mean cc_norm of the last model), per model and tuned "
                              "minus pretrained: flatmap_<model>_layer<k>.png")
    regions.add_argument("--flatmap_height", type=int, default=brain_regions.MAP_HEIGHT,
                         help="cortical map height in pixels")
    parser.add_argument("--low_level", nargs="+", default=[],
                        help="reliance analysis: low-level feature sets ("
                             + ", ".join(low_level_features.FEATURE_SETS) + ") to regress out of "
                             "each layer's features before fitting the encoding model again; each "
                             "is removed on its own, 'a+b' removes a and b together")
    parser.add_argument("--ngram_vocab_size", type=int, default=1000,
                        help="diphone/triphone columns: the most frequent in the training stories")
    parser.add_argument("--semantic_preference", action="store_true",
                        help="also score how well each layer predicts semantic features "
                             "(--word_vectors or --semantic_features) versus phonetic ones "
                             "(--phonetic_features)")
    parser.add_argument("--word_vectors", default=None,
                        help="word-vector text file (word2vec/GloVe text format: a word and its "
                             "values per line), or 'synthetic' for the embedding planted in a "
                             "synthetic dataset; needed by --semantic_preference")
    parser.add_argument("--semantic_features", default=None,
                        help="HDF5 file of target_features.py (e.g. a text LM's word states: "
                             "target_features.py text) holding the training and test stories: "
                             "the semantic features of --semantic_preference, in place of "
                             "--word_vectors")
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
    protocol = parser.add_argument_group(
        "scoring protocol (the defaults are the authors'; see SPEC section 4 and the README)")
    protocol.add_argument("--test_target", choices=TEST_TARGETS, default="repeats_mean",
                          help="what the test prediction is correlated with: the mean of the "
                               "test story's individual_repeats over the scored rows (the "
                               "authors'), or its 'data' rows")
    protocol.add_argument("--normalise_by", choices=NORMALISERS, default="test_repeats",
                          help="cc_norm = r / cc_max, cc_max from the scored rows of the test "
                               "story's repeats (the authors'), or the noise-ceiling file "
                               "(--nc_path, computed on all its rows; the follow-up paper's "
                               "normaliser)")
    protocol.add_argument("--alpha_score", choices=eval_utils.RIDGE_SCORES, default="r2",
                          help="how each voxel's ridge alpha is chosen on the held-out chunks "
                               "(and the alphas of --low_level and --semantic_preference): r2 "
                               "= sign(R2) sqrt(|R2|) with the Huth-lab assumed variance "
                               "(bootstrap_ridge use_corr=False, the authors'), or corr "
                               "(Pearson r)")
    uncertainty = parser.add_argument_group("uncertainty and data efficiency")
    uncertainty.add_argument("--n_permutations", type=int, default=1000,
                             help="per-voxel p-values of the test correlation by a block "
                                  "permutation of the test story (0: none); Benjamini-"
                                  "Hochberg FDR over the fitted voxels (--voxels)")
    uncertainty.add_argument("--fdr_q", type=float, default=0.05,
                             help="FDR level: a voxel is significant when its BH-adjusted "
                                  "p-value is below it (significant_fraction in results.csv)")
    uncertainty.add_argument("--n_bootstrap", type=int, default=1000,
                             help="block-bootstrap resamples of the test story's time for the "
                                  f"{100 * CONFIDENCE:.0f}%% intervals of each mean cc_norm and of each "
                                  "tuned-minus-pretrained difference (the same resamples for "
                                  "every model; 0: none)")
    uncertainty.add_argument("--block_len", type=int, default=10,
                             help="TRs per block of the permutations and of the bootstrap "
                                  "(keeps the autocorrelation of fMRI within a block)")
    uncertainty.add_argument("--train_fraction", nargs="+", type=float, default=[1.0],
                             help="data efficiency: also fit each layer's encoding model on "
                                  "these fractions of the training rows (whole stories first, "
                                  "then leading rows; the same for every model) and report "
                                  "cc_norm per fraction; 1.0 is always included")
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
                             "ngram_vocab_size", "block_len")
    run_utils.check_at_least(parser, args, 0, "n_permutations", "n_bootstrap")
    if not 0 < args.fdr_q < 1:
        parser.error(f"--fdr_q must be in (0, 1), got {args.fdr_q}")
    if not all(0 < fraction <= 1 for fraction in args.train_fraction):
        parser.error(f"--train_fraction values must be in (0, 1], got "
                     f"{' '.join(map(str, args.train_fraction))}")
    args.train_fraction = sorted({*args.train_fraction, 1.0})
    for flag in ("context_s", "chunk_s"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag} must be positive")
    if args.semantic_preference and (args.word_vectors is None) == (args.semantic_features is None):
        parser.error("--semantic_preference needs one of --word_vectors FILE (or 'synthetic') "
                     "and --semantic_features FILE.hf5")
    brain_regions.check_source_arguments(parser, args, args.regions)
    try:
        kind, _ = voxel_selection(args.voxels)
    except ValueError as err:
        parser.error(str(err))
    if kind == "region" and args.regions is None:
        parser.error(f"--voxels {args.voxels}: a region or group name needs --regions (a file "
                     f"or a source: {', '.join(brain_regions.SOURCES)}); else give 'all' or "
                     "'nc>T'")
    for layer in args.flatmap_layers:
        if layer != "best" and not layer.isdigit():
            parser.error(f"--flatmap_layers takes layer numbers or 'best', got {layer!r}")
    if args.flatmap_height < 64:
        parser.error(f"--flatmap_height must be at least 64 pixels, got {args.flatmap_height}")
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
    """Evaluate, in this process and the others of its torchrun process group (if any)."""
    with speech_models.process_group(args.device) as processes:
        return evaluate(args, processes)


def evaluate(args, processes):
    """The whole run; rank 0 locks, writes and prints the results (the others return None)."""
    out_dir = Path(args.save_dir) / args.exp_name
    run_utils.check_replaceable(out_dir, args.overwrite)  # before any expensive work
    with processes.folder_lock(out_dir):  # held for the run's life
        subject = data_utils.subject_id(args.subject)
        models = run_utils.models_to_evaluate(args.model_name, args.model_path, args.logs_dir,
                                              args.epochs, args.skip_pretrained)
        device = processes.device
        dtype = speech_models.autocast_dtype(args.precision, device)
        stories = training_stories(args.data_dir, subject, args.train_stories, args.test_story)
        task, voxel_facts = encoding_task(args, subject, stories)
        settings = result_settings(args, subject, stories, dtype)
        with speech_models.main_process_first():  # the others read what rank 0 kept or left
            finished = (FinishedResults.open(partial_folder(out_dir), settings, args.resume,
                                             args.overwrite)
                        if processes.is_main else FinishedResults(partial_folder(out_dir),
                                                                  settings))
        extraction = speech_models.Extraction(args.data_dir, args.cache_dir, args.context_s, args.chunk_s,
                                args.batch_size, args.naive, dtype, args.tr_source, args.tr_path)
        with speech_models.main_process_first():  # rank 0 fills the stimulus cache
            stimulus = stimulus_features(stories, args.test_story, extraction, args.low_level,
                                         args.phonetic_features,
                                         args.word_vectors if args.semantic_preference else None,
                                         args.ngram_vocab_size,
                                         args.semantic_features if args.semantic_preference
                                         else None)
        all_results = {label: evaluate_model(label, checkpoint, args.layers, extraction, task,
                                             stimulus, finished, args.low_level,
                                             args.low_level_alphas, device)
                       for label, checkpoint in models}
        if not processes.is_main:
            return None
        facts = {"subject": subject, "train_stories": stories, "test_story": args.test_story,
                 "models": dict(models), **voxel_facts, "protocol": protocol(args)}
        with run_utils.output_folder(out_dir, args.overwrite) as staging:
            run_utils.write_json(staging / "run_config.json", run_utils.run_config(
                args, **facts, processes=processes.world_size))
            rows, comparisons, preference_rows = write_results(staging, all_results, facts, task)
            if args.flatmap_layers:
                write_run_flatmaps(staging, all_results, rows, args, subject, task)
        finished.remove()
        overall = [row for row in rows if row["region"] == "all" and row["train_fraction"] == 1
                   and row["aggregation"] == "voxel_mean"]
        print(run_utils.comparison_table([r for r in overall if r["low_level"] == "none"],
                                         "cc_norm"))
        for spec in args.low_level:
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
        logger.info("results in %s", out_dir)
        return out_dir


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


def protocol(args):
    """The scoring choices of a run, for results.json (and the report)."""
    return {"test_target": args.test_target, "normalise_by": args.normalise_by,
            "alpha_score": args.alpha_score, "tr_source": args.tr_source,
            "tr_path": args.tr_path, "followup_ceiling": FOLLOWUP_CEILING,
            "n_permutations": args.n_permutations, "n_bootstrap": args.n_bootstrap,
            "block_len": args.block_len, "fdr_q": args.fdr_q, "confidence": CONFIDENCE,
            "train_fractions": args.train_fraction}


class Responses(NamedTuple):
    """The fMRI rows encoding models are fitted and scored on."""
    train: np.ndarray  # (rows, voxels) the training stories' rows, stacked in story order
    #                    (under torchrun: this process's share of the voxels, process_share)
    test: np.ndarray  # (rows, voxels) the test target (--test_target) over the scored rows
    test_ceiling: np.ndarray  # (voxels,) cc_max of the test story's repeats over those rows
    normaliser: np.ndarray  # (voxels,) what cc_norm divides r by (--normalise_by)


class TrainingSubset(NamedTuple):
    """The training rows of a --train_fraction."""
    rows: np.ndarray  # indices into the stacked training rows
    splits: list  # (train rows, held-out rows) pairs over ``rows``


class Summaries(NamedTuple):
    """Every summary of per-voxel values is a weighted sum over the voxels: ``values @
    weights`` for means (of cc_norm or r), ``indicator @ members`` for fractions of voxels."""
    keys: list  # (region, aggregation) per column
    weights: scipy.sparse.csr_array  # (voxels, summaries) float64
    members: scipy.sparse.csr_array  # (voxels, summaries) float64
    n_voxels: list  # voxels each summary averages over; 0: no summary (None)


class Uncertainty(NamedTuple):
    """How p-values and intervals are computed (the same resamples for every model)."""
    n_permutations: int
    block_len: int
    seed: int
    bootstrap_counts: np.ndarray  # (resamples, blocks), or None for no intervals
    block_starts: np.ndarray
    bootstrap_weights: scipy.sparse.csr_array  # (voxels, summaries): per-voxel r -> mean
    # cc_norm summaries (or a dense array)
    fdr_q: float


class EncodingTask(NamedTuple):
    """The encoding problem every layer of every model is scored on. Its voxels are the fitted
    ones (``--voxels``): every array over voxels below has one entry per fitted voxel, in the
    order of ``fitted``."""
    stories: list  # training stories, in order
    test_story: str
    responses: Responses
    voxels: np.ndarray  # (voxels,) bool: NC > nc_thr and varying test target (voxel means)
    summaries: Summaries
    splits: list  # (train rows, held-out rows) pairs over the stacked training rows
    subsets: dict  # --train_fraction below 1 -> TrainingSubset
    alphas: list  # ridge penalties
    alpha_score: str  # how alphas are chosen (eval_utils.fit_ridge_cv)
    nc_thr: float  # voxel means average over voxels whose noise ceiling exceeds it
    uncertainty: Uncertainty
    fitted: np.ndarray = None  # (voxels,) int64: their indices among the subject's voxels
    #                            (sorted); None: every voxel, in order
    n_voxels: int = None  # the subject's voxels; None: as many as fitted

    def fitted_indices(self):
        """(voxels,) int64: the indices of the fitted voxels among the subject's voxels."""
        if self.fitted is None:
            return np.arange(self.voxels.size, dtype=np.int64)
        return np.asarray(self.fitted, np.int64)

    def full(self, values):
        """Per-voxel ``values`` of the fitted voxels in the subject's voxel space: (n_voxels,)
        float, NaN where not fitted (``values`` as they are when every voxel is fitted)."""
        values = np.asarray(values)
        n_voxels = self.voxels.size if self.n_voxels is None else self.n_voxels
        if values.shape[0] == n_voxels:
            return values
        dtype = np.result_type(values.dtype, np.float32)
        out = np.full((n_voxels, *values.shape[1:]), np.nan, dtype)
        out[self.fitted_indices()] = values
        return out


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
    never saved with another voxel count than the responses'), the ``--regions`` (made from
    the anatomy when a source is named), the fitted voxels (``--voxels``, ``fitted_voxels``),
    the test target and its ceiling (``test_scoring``), the summary voxels
    (``summary_voxels``), the anatomy of ``--flatmap_layers``, the cross-validation splits and
    the --train_fraction subsets.

    Only the fitted voxels' columns are read, and the task is theirs alone: responses, test
    target and ceilings, normaliser, summary voxels and summaries (regions cut to the fitted
    voxels, at their positions among them); ``EncodingTask.full`` takes its per-voxel results
    back to the subject's voxel space.

    Returns the ``EncodingTask`` and the facts about its voxels (``summary_voxels``, and
    ``fitted_voxels``: the selection and its voxel count)."""
    n_voxels = data_utils.check_run_inputs(args.data_dir, subject, [*stories, args.test_story],
                                           args.tr_source, args.tr_path)
    nc_path = noise_ceilings.ceiling_file(subject, args.nc_path)
    with speech_models.main_process_first():  # rank 0 computes and saves what is missing
        nc = noise_ceilings.get_noise_ceiling(args.data_dir, subject, nc_path, args.test_story,
                                              n_voxels=n_voxels)
        region_file = (brain_regions.subject_regions(args.data_dir, subject, args.regions,
                                                     args.cache_dir, args.annot, args.fsaverage)
                       if args.regions in brain_regions.SOURCES else args.regions)
        if args.flatmap_layers:  # pycortex, the anatomy and its voxel count, before any model
            anatomy = brain_regions.subject_anatomy(args.data_dir, subject)
            brain_regions.thick_mask(brain_regions.import_cortex(anatomy, args.cache_dir),
                                     anatomy, n_voxels)
    regions, groups = load_rois(region_file, n_voxels)
    fitted = fitted_voxels(args.voxels, nc, nc_path, regions, groups, region_file, args.nc_thr)
    every = fitted.size == n_voxels
    columns = None if every else fitted  # None: every column, read as it is
    target, test_ceiling = test_scoring(args.data_dir, subject, args.test_story,
                                        args.test_target, columns)
    if len(target) // args.block_len < 2:
        raise UsageError(f"--block_len {args.block_len}: the {len(target)} scored test rows "
                         "make fewer than 2 blocks to permute and resample")
    voxels, voxel_facts = summary_voxels(
        nc[fitted], args.nc_thr, nc_path, target,
        data_utils.response_path(args.data_dir, subject, args.test_story))
    voxel_facts["subject_voxels"] = int(n_voxels)
    voxel_facts["fitted_voxels"] = {"selection": args.voxels, "n": int(fitted.size)}
    if not every:
        regions = {name: _positions(indices, fitted) for name, indices in regions.items()}
    voxel_facts["regions"] = {"given": args.regions, "file": region_file and str(region_file),
                              "groups": list(groups), "shown": figure_regions(regions, groups)}
    summaries = summary_weights(voxels, test_ceiling, regions, groups, region_file,
                                args.nc_thr, "" if every else f" (--voxels {args.voxels})")
    normaliser = test_ceiling if args.normalise_by == "test_repeats" else nc[fitted]
    share = speech_models.process_share(fitted.size)  # all of them without torchrun
    if share.start == share.stop:
        raise UsageError(f"--voxels {args.voxels}: {fitted.size} voxels to fit, fewer than the "
                         "torchrun processes; run fewer processes or select more voxels")
    if share != slice(0, fitted.size):
        columns = fitted[share]
        logger.info("the ridge of each layer is split over the processes: %d of the %d fitted "
                    "voxels in this one", share.stop - share.start, fitted.size)
    responses = Responses(
        np.vstack([data_utils.load_fmri(args.data_dir, subject, s, columns) for s in stories]),
        target, test_ceiling, normaliser)
    lengths = [data_utils.response_rows(args.data_dir, s) for s in stories]
    splits = cv_splits(lengths, args.n_boots, args.chunk_len, args.seed)
    subsets = {fraction: training_subset(lengths, fraction, args.n_boots, args.chunk_len,
                                         args.seed)
               for fraction in args.train_fraction if fraction < 1}
    counts, starts = (eval_utils.bootstrap_block_counts(len(target), args.block_len,
                                                        args.n_bootstrap, args.seed)
                      if args.n_bootstrap else (None, None))
    per_r = divide_rows(summaries.weights, normaliser)
    uncertainty = Uncertainty(args.n_permutations, args.block_len, args.seed, counts, starts,
                              per_r, args.fdr_q)
    task = EncodingTask(stories, args.test_story, responses, voxels, summaries, splits,
                        subsets, args.alphas, args.alpha_score, args.nc_thr, uncertainty,
                        fitted, int(n_voxels))
    return task, voxel_facts


def voxel_selection(text):
    """A ``--voxels`` value parsed: ("all", None), ("nc", threshold) for ``nc>T`` (T a finite
    number) or ("region", name) for anything else. A malformed ``nc>T`` is a ValueError."""
    text = text.strip()
    if text == "all":
        return "all", None
    if text.startswith("nc>"):
        try:
            threshold = float(text[3:])
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold):
            raise ValueError(f"--voxels {text}: expected nc>T with T a finite number, e.g. "
                             "nc>0.4")
        return "nc", threshold
    if not text:
        raise ValueError("--voxels: expected all, nc>T or a region name, got nothing")
    return "region", text


REGION_NAMES_SHOWN = 8  # an unknown --voxels region is answered with this many known names


def fitted_voxels(selection, nc, nc_path, regions, groups, region_file, nc_thr):
    """The (sorted, int64) indices of the voxels ``--voxels selection`` fits: every voxel; those
    whose noise ceiling ``nc`` (from ``nc_path``) exceeds T (``nc>T``); or the voxels of a
    region of ``regions``, or of a group of ``groups`` (the union of its regions'). An unknown
    region name, a selection without voxels and one without any voxel above ``nc_thr`` (no
    summary) are UsageErrors."""
    kind, value = voxel_selection(selection)
    n_voxels = np.size(nc)
    if kind == "all":
        return np.arange(n_voxels, dtype=np.int64)
    if kind == "nc":
        fitted = np.flatnonzero(np.asarray(nc) > value)
        what = f"no voxel has a noise ceiling above {value} in {nc_path} (max {np.max(nc):.3g})"
    else:
        if value in groups:
            members = [index for region in groups[value] for index in regions[region]]
        elif value in regions:
            members = regions[value]
        else:
            names = [*regions, *groups]
            shown = ", ".join(names[:REGION_NAMES_SHOWN]) + (
                f", ... ({len(names)} in all)" if len(names) > REGION_NAMES_SHOWN else "")
            raise UsageError(f"--voxels {value}: no region or group of that name in --regions "
                             f"{region_file}; its names: {shown or 'none'}")
        fitted = np.unique(np.asarray(members, np.int64))
        kind = "group" if value in groups else "region"
        what = f"{kind} {value!r} of {region_file} has no voxel"
    if not fitted.size:
        raise UsageError(f"--voxels {selection}: {what}; nothing to fit")
    if not (np.asarray(nc)[fitted] > nc_thr).any():
        raise UsageError(f"--voxels {selection}: none of its {fitted.size} voxels has a noise "
                         f"ceiling above --nc_thr {nc_thr} ({nc_path}); every summary would be "
                         "empty: lower --nc_thr or choose other voxels")
    logger.info("--voxels %s: fitting %d of the %d voxels", selection, fitted.size, n_voxels)
    return fitted.astype(np.int64)


def _positions(indices, fitted):
    """The positions in ``fitted`` (sorted voxel indices) of those of ``indices`` it holds."""
    indices = np.asarray(indices, np.int64)
    at = np.minimum(np.searchsorted(fitted, indices), max(fitted.size - 1, 0))
    return at[fitted[at] == indices].tolist()


def cv_splits(lengths, n_boots=3, chunk_len=20, seed=0, what=""):
    """The cross-validation splits over stories of ``lengths`` rows
    (``eval_utils.bootstrap_chunk_splits``); too few rows for them is a UsageError."""
    try:
        return eval_utils.bootstrap_chunk_splits(lengths, n_boots, chunk_len, seed=seed)
    except ValueError as err:
        raise UsageError(f"--chunk_len {chunk_len}{what}: {err}") from None


def training_subset(lengths, fraction, n_boots=3, chunk_len=20, seed=0):
    """The ``TrainingSubset`` of a ``fraction`` of the rows of stories of ``lengths`` rows
    (``eval_utils.leading_rows``), with its own cross-validation splits."""
    used = eval_utils.leading_rows(lengths, fraction)
    offsets = np.cumsum([0, *lengths[:-1]])
    rows = np.concatenate([offset + np.arange(n) for offset, n in zip(offsets, used)])
    splits = cv_splits([n for n in used if n], n_boots, chunk_len, seed,
                       f" (--train_fraction {fraction})")
    return TrainingSubset(rows, splits)


def test_scoring(data_dir, subject, test_story, test_target, voxels=None, voxel_batch=8192):
    """What test predictions are scored against, over the scored rows (the first
    ``TEST_RESPONSE_TRIM`` dropped): the target (``test_target`` "repeats_mean": the mean over
    the story's ``individual_repeats``; "data": its ``data`` rows) and the noise ceiling
    cc_max of the repeats over those rows (``eval_utils.noise_ceiling``), of the columns
    ``voxels`` (sorted indices; None: all). The repeats are read a window of ``voxel_batch``
    voxel indices at a time (only the selected columns of each).

    Returns (rows, voxels) float32 and (voxels,) float64."""
    path = data_utils.response_path(data_dir, subject, test_story)
    _, n_rows, n_voxels = noise_ceilings.repeats_shape(path)
    voxels = np.arange(n_voxels) if voxels is None else np.asarray(voxels, np.intp)
    target = np.empty((n_rows - TEST_RESPONSE_TRIM, voxels.size), np.float32)
    ceiling = np.empty(voxels.size)
    for first in range(0, n_voxels, voxel_batch):
        at = np.flatnonzero((voxels >= first) & (voxels < first + voxel_batch))
        if not at.size:
            continue
        repeats = data_utils.load_repeats(data_dir, subject, test_story,
                                          voxels[at])[:, TEST_RESPONSE_TRIM:]
        ceiling[at] = eval_utils.noise_ceiling(repeats.astype(np.float64))
        if test_target == "repeats_mean":
            target[:, at] = repeats.mean(axis=0, dtype=np.float64)
    if test_target == "data":
        columns = None if voxels.size == n_voxels else voxels
        target[:] = data_utils.load_fmri(data_dir, subject, test_story,
                                         columns)[TEST_RESPONSE_TRIM:]
    return target, ceiling


def summary_voxels(nc, nc_thr, nc_path, test_target, test_path):
    """The voxels the voxel means average over: noise ceiling above ``nc_thr`` and a test
    target (``test_target``, (rows, n_voxels); NaN read as 0, so an all-NaN voxel is constant)
    that varies over the scored rows. A selection without voxels is a DatasetError.

    Returns the (n_voxels,) bool mask and the facts for results.json: ``nc_thr``,
    ``subject_voxels``, ``scored_voxels`` and ``excluded_voxels`` (above the threshold but
    constant)."""
    above = noise_ceilings.ceiling_voxels(nc, nc_thr, nc_path)
    constant = above & data_utils.constant_voxels(test_target)
    voxels = above & ~constant
    if constant.any():
        logger.warning("%d of the %d voxels with NC > %s have constant (or NaN) responses in the "
                       "scored rows of %s: left out of every voxel mean", constant.sum(),
                       above.sum(), nc_thr, test_path)
    if not voxels.any():
        raise DatasetError(f"{test_path}: every voxel with NC > {nc_thr} has constant (or NaN) "
                           f"responses after the first {TEST_RESPONSE_TRIM} rows; nothing can "
                           "be scored: check the file or --nc_path")
    logger.info("voxel means average over %d of %d voxels (NC > %s)", voxels.sum(), nc.size,
                nc_thr)
    return voxels, {"nc_thr": nc_thr, "subject_voxels": int(nc.size),
                    "scored_voxels": int(voxels.sum()), "excluded_voxels": int(constant.sum())}


def load_rois(path, n_voxels):
    """Regions and region groups of a ``--regions`` file, checked: a JSON object mapping a region
    name to its voxel indices, or a group name to the names of its regions (in the file).

    Returns (regions: name -> list of ints, groups: name -> list of region names); both {}
    without a file."""
    if path is None:
        return {}, {}
    if not Path(path).is_file():
        raise UsageError(f"--regions {path}: no such file (or name a source: "
                         f"{', '.join(brain_regions.SOURCES)})")
    try:
        rois = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err}); a --regions file maps region "
                           "names to lists of voxel indices") from None
    if not isinstance(rois, dict) or not all(isinstance(v, list) for v in rois.values()):
        raise DatasetError(f"{path}: expected a JSON object mapping region names to lists of "
                           "voxel indices (or group names to lists of region names)")
    if "all" in rois:
        raise DatasetError(f"{path}: the region name 'all' is taken by the summary over every "
                           "voxel; rename that region")
    groups = {name: members for name, members in rois.items()
              if members and all(isinstance(m, str) for m in members)}
    regions = {name: voxels for name, voxels in rois.items() if name not in groups}
    for name, voxels in regions.items():
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in voxels):
            raise DatasetError(f"{path}: region {name!r} must list integer voxel indices (or, "
                               "for a group, region names)")
        if len(voxels) and (min(voxels) < 0 or max(voxels) >= n_voxels):
            raise DatasetError(f"{path}: region {name!r} has voxel indices outside "
                               f"0..{n_voxels - 1}")
    for name, members in groups.items():
        unknown = [m for m in members if m not in regions]
        if unknown:
            raise DatasetError(f"{path}: group {name!r} names {', '.join(map(repr, unknown))}, "
                               "which are not regions of the file")
    return regions, groups


def summary_weights(voxels, test_ceiling, regions, groups, roi_path=None, nc_thr=None,
                    within=""):
    """The ``Summaries`` of "all" and each region and group, in both aggregations:

    - "voxel_mean" (ours): the mean over the region's ``voxels`` (NC > --nc_thr, varying test
      target); a group's over the union of its regions' voxels.
    - "parcel_mean" (the follow-up paper's): per-voxel values counted as 0 where the test-row
      ceiling ``test_ceiling`` <= ``FOLLOWUP_CEILING``, averaged over all of the region's
      voxels; a group's is the mean of its regions' means (regions without voxels left out).

    A summary without voxels is logged (``within``: what the voxels are, for the message)
    and undefined (n_voxels 0). ``weights`` and ``members`` are sparse: each column is built
    from its (rows, values), never densely."""
    n = voxels.size
    kept = (test_ceiling > FOLLOWUP_CEILING).astype(np.float64)
    everything = {"all": np.arange(n), **{name: np.unique(np.asarray(indices, np.intp))
                                          for name, indices in regions.items()}}
    nothing = (np.zeros(0, np.intp), np.zeros(0))

    def uniform(indices):  # a sparse column: (sorted rows, values)
        return indices, np.full(len(indices), 1.0 / max(len(indices), 1))

    def mean_of(columns):  # summed in order, then divided: as np.mean of the dense columns
        rows, position = np.unique(np.concatenate([c[0] for c in columns]), return_inverse=True)
        sums = np.bincount(position, np.concatenate([c[1] for c in columns]), rows.size)
        return rows, sums / len(columns)

    keys, weights, members, counts = [], [], [], []

    def add(key, value_weights, member_weights, count):
        keys.append(key)
        weights.append(value_weights)
        members.append(member_weights)
        counts.append(int(count))

    parcels, empty = {}, []
    for name in [*everything, *groups]:
        indices = (np.unique(np.concatenate([everything[m] for m in groups[name]]))
                   if name in groups else everything[name])
        cell = indices[voxels[indices]]
        add((name, "voxel_mean"), uniform(cell), uniform(cell), cell.size)
        if name in groups:
            defined = [parcels[m] for m in groups[name] if parcels[m][2]]
            if defined:
                add((name, "parcel_mean"), mean_of([d[0] for d in defined]),
                    mean_of([d[1] for d in defined]), sum(d[2] for d in defined))
            else:
                add((name, "parcel_mean"), nothing, nothing, 0)
        else:
            rows, values = uniform(indices)
            parcels[name] = ((rows, values * kept[rows]), (rows, values), indices.size)
            add((name, "parcel_mean"), *parcels[name])
        if name != "all" and not cell.size:
            empty.append(name)
    if empty:
        logger.warning("--regions %s: %d regions or groups have no voxel with NC > %s and "
                       "varying test responses%s; their voxel means are left empty (null in "
                       "results.json): %s", roi_path, len(empty), nc_thr, within,
                       ", ".join(empty))

    def matrix(columns):  # (n, len(columns)) csr_array of sparse columns, zeros dropped
        data = np.concatenate([values for _, values in columns])
        rows = np.concatenate([rows for rows, _ in columns])
        numbers = np.repeat(np.arange(len(columns)), [len(rows) for rows, _ in columns])
        nonzero = data != 0
        return scipy.sparse.csr_array((data[nonzero], (rows[nonzero], numbers[nonzero])),
                                      shape=(n, len(columns)), dtype=np.float64)

    return Summaries(keys, matrix(weights), matrix(members), counts)


def divide_rows(matrix, denominator):
    """The csr_array ``matrix`` (rows, columns) with each row divided by ``denominator`` (rows,),
    rows where it is not positive (or NaN) zeroed: the sparse ``np.divide(matrix, denominator[:,
    None], where=denominator[:, None] > 0)`` with zeros elsewhere."""
    matrix = scipy.sparse.csr_array(matrix, dtype=np.float64)
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    per_entry = np.asarray(denominator, np.float64)[rows]
    data = np.divide(matrix.data, per_entry, out=np.zeros_like(matrix.data),
                     where=per_entry > 0)
    nonzero = data != 0
    return scipy.sparse.csr_array((data[nonzero], (rows[nonzero], matrix.indices[nonzero])),
                                  shape=matrix.shape)


def stimulus_features(stories, test_story, extraction, low_level=(), phonetic_features=(),
                      word_vectors=None, ngram_vocab_size=None, semantic_features=None):
    """Low-level (the ``low_level`` specs' sets), phonetic and semantic features per story
    on the TR grid, as the analyses need them; semantic and phonetic ones only with
    ``word_vectors`` (a file or "synthetic") or ``semantic_features`` (a file of
    ``target_features.py``). Low-level features are cached in ``<cache_dir>/stimulus``."""
    semantic_source = word_vectors or semantic_features
    names = sorted({name for spec in low_level for name in spec.split("+")}
                   | (set(phonetic_features) if semantic_source else set()))
    if not names:
        return Stimulus(low_level={})
    data_dir, tr_source, tr_path = extraction.data_dir, extraction.tr_source, extraction.tr_path
    all_stories = [*stories, test_story]
    vocabularies = low_level_features.build_vocabularies(data_dir, stories, names,
                                                         max_size=ngram_vocab_size)
    low = {story: low_level_features.story_features(
        data_dir, story, names, vocabularies, tr_source, tr_path,
        Path(extraction.cache_dir) / "stimulus") for story in all_stories}
    if not semantic_source:
        return Stimulus(low_level=low)
    if semantic_features:  # the file's response rows, back on the whole TR grid
        rows = data_utils.load_target_features(semantic_features, data_dir, all_stories,
                                               tr_source)
        semantic = {story: on_tr_grid(values, len(data_utils.tr_times(data_dir, story,
                                                                      tr_source, tr_path)))
                    for story, values in rows.items()}
    else:
        vectors = low_level_features.load_word_vectors(word_vectors, data_dir)
        semantic = {story: low_level_features.word_vector_features(data_dir, story, vectors,
                                                                   tr_source, tr_path)
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


def evaluate_model(label, checkpoint, layers, extraction, task, stimulus, finished,
                   low_level=(), low_level_alphas=eval_utils.CONFOUND_ALPHAS, device="cpu"):
    """Per-layer scores of one model.

    ``layers``: the requested hidden-state indices, or None for ``DEFAULT_LAYERS``;
    ``low_level``: specs ("a" or "a+b") of low-level feature sets of ``stimulus`` to regress
    out, one analysis each. The semantic preference is scored when ``stimulus`` has
    semantic features, and the encoding model fitted again on each of ``task.subsets``. Each
    (layer, analysis, fraction) result held by ``finished`` (a ``FinishedResults``) is reused;
    the others are computed and kept there at once.

    Returns dict layer -> {"encoding": {analysis: scores}, "efficiency": {fraction: scores},
    "semantic_preference": ... or None}, where analysis is "none" (the layer's features) or a
    ``low_level`` item (the features with those low-level features regressed out), and scores
    holds the per-voxel results (``layer_scores``) and their ``summary`` (``summarise``).
    """
    encoder = speech_models.load_encoder(checkpoint, device)
    layers = run_utils.choose_layers(layers, encoder.depth, DEFAULT_LAYERS)
    analyses = ["none", *low_level] + ([SEMANTIC_PREFERENCE] if stimulus.semantic is not None
                                       else [])
    cells = [(analysis, 1.0) for analysis in analyses] + [("none", f) for f in task.subsets]
    keys = {(layer, analysis, fraction): {
        "fingerprint": encoder.fingerprint, "preprocessor": encoder.preprocessor.digest(),
        "layer": layer, "analysis": analysis, "train_fraction": fraction}
        for layer in layers for analysis, fraction in cells}
    done = {cell: finished.load(key) for cell, key in keys.items()}
    reused = [_what(label, *cell) for cell, result in done.items() if result is not None]
    if reused:
        logger.info("reusing %d finished results of %s: %s", len(reused), finished.path,
                    "; ".join(reused))
    missing = sorted({layer for (layer, _, _), result in done.items() if result is None})
    todo = sorted(cell for cell, result in done.items() if result is None)
    if len({json.dumps(part) for part in speech_models.gather_from_processes(todo)}) > 1:
        raise UsageError(f"the torchrun processes see different finished results in "
                         f"{finished.path}: --save_dir must be on a file system they all share")
    features = speech_models.model_tr_features(encoder, missing,
                                               [*task.stories, task.test_story], extraction,
                                               device)
    results = {}
    for layer in layers:
        for analysis, fraction in cells:
            if done[layer, analysis, fraction] is None:
                done[layer, analysis, fraction] = analysis_result(
                    analysis, features[layer], task, stimulus, low_level_alphas, device,
                    _what(label, layer, analysis, fraction), fraction)
                if speech_models.is_main_process():
                    finished.save(keys[layer, analysis, fraction],
                                  done[layer, analysis, fraction])
        results[layer] = {"encoding": {}, "efficiency": {}, "semantic_preference": done.get(
            (layer, SEMANTIC_PREFERENCE, 1.0))}
        for analysis, fraction in cells:
            if analysis == SEMANTIC_PREFERENCE:
                continue
            scores = with_summary(done[layer, analysis, fraction], task)
            if fraction == 1:
                results[layer]["encoding"][analysis] = scores
            else:
                results[layer]["efficiency"][fraction] = scores
            mean = scores["summary"]["cc_norm"][("all", "voxel_mean")]
            logger.info("%s: mean cc_norm %.3f, mean r %.3f (%d voxels with NC > %s)",
                        _what(label, layer, analysis, fraction), mean,
                        scores["summary"]["r"][("all", "voxel_mean")], task.voxels.sum(),
                        task.nc_thr)
        preference = results[layer]["semantic_preference"]
        if preference is not None:
            logger.info("%s layer %d: semantic r %.3f, phonetic r %.3f", label, layer,
                        preference["semantic_r"], preference["phonetic_r"])
    return results


def _what(label, layer, analysis, fraction=1.0):
    """"<model> layer <k>[ without <set> | semantic preference][, <f> of the training rows]",
    for log lines."""
    suffix = {"none": "", SEMANTIC_PREFERENCE: f" {SEMANTIC_PREFERENCE}"}.get(
        analysis, f" without {analysis}")
    share = "" if fraction == 1 else f", {fraction:g} of the training rows"
    return f"{label} layer {layer}{suffix}{share}"


def analysis_result(analysis, features, task, stimulus, low_level_alphas, device, what,
                    fraction=1.0):
    """One analysis of a layer's TR-grid features (story -> (grid TRs, hidden)): the
    semantic preference (``semantic_preference``), or the encoding scores (``layer_scores``)
    of the features ("none", fitted on ``fraction`` of the training rows) or of their
    residuals after regressing out the low-level feature sets of ``analysis`` ("a" or
    "a+b"). Only the features' own scores keep their test predictions."""
    if analysis == SEMANTIC_PREFERENCE:
        return semantic_preference(features, stimulus.semantic, stimulus.phonetic, task.stories,
                                   task.test_story, task.alphas, task.splits, device,
                                   task.alpha_score)
    if analysis == "none":
        return layer_scores(features, task, device, what, fraction)
    confounds = {story: np.hstack([stimulus.low_level[story][name]
                                   for name in analysis.split("+")]) for story in features}
    residuals = eval_utils.regress_out(features, confounds, task.stories, low_level_alphas,
                                       task.splits, device, score=task.alpha_score)
    scores = layer_scores(residuals, task, device, what)
    del scores["prediction"]
    return scores


def layer_scores(features, task, device=None, what="features", fraction=1.0):
    """Encoding-model scores of TR-grid features (story -> (grid TRs, features)) on ``task``,
    the model fitted on ``fraction`` of the training rows (``task.subsets``): per-voxel ``r``,
    ``cc_norm`` and ``alpha``, each (n_voxels,). On all the rows also the test
    ``prediction`` ((scored rows, n_voxels) float32), the permutation ``p_value``
    (``eval_utils.block_permutation_pvalues``, with --n_permutations) and the block-bootstrap
    means of cc_norm (``bootstrap``: (resamples, summaries), with --n_bootstrap)."""
    responses = task.responses
    x_train, x_test = design_matrices(features, task.stories, task.test_story)
    if len(x_train) != len(responses.train) or len(x_test) != len(responses.test):
        raise DatasetError(f"{what}: {len(x_train)}/{len(x_test)} feature rows "
                           f"but {len(responses.train)}/{len(responses.test)} response rows; "
                           "the responses do not match respdict.json")
    y_train, splits = responses.train, task.splits
    if fraction < 1:
        subset = task.subsets[fraction]
        x_train, y_train, splits = x_train[subset.rows], y_train[subset.rows], subset.splits
    weights, alphas, _ = eval_utils.fit_ridge_cv(x_train, y_train, task.alphas, splits,
                                                 device=device,
                                                 progress=speech_models.is_main_process(),
                                                 score=task.alpha_score)
    parts = speech_models.gather_from_processes(
        ((x_test @ weights).astype(np.float32, copy=False), alphas))  # under torchrun: shares
    prediction = np.hstack([part[0] for part in parts])
    alphas = np.concatenate([part[1] for part in parts])
    r = eval_utils.column_correlation(prediction, responses.test)
    normaliser = responses.normaliser
    cc_norm = np.divide(r, normaliser, out=np.zeros_like(r), where=normaliser > 0)
    scores = {"r": r, "cc_norm": cc_norm.astype(r.dtype, copy=False), "alpha": alphas}
    if fraction < 1:
        return scores
    scores["prediction"] = prediction
    uncertainty = task.uncertainty
    if uncertainty.n_permutations:
        scores["p_value"] = eval_utils.block_permutation_pvalues(
            prediction, responses.test, uncertainty.n_permutations, uncertainty.block_len,
            uncertainty.seed)
    if uncertainty.bootstrap_counts is not None:
        scores["bootstrap"] = eval_utils.bootstrap_correlations(
            prediction, responses.test, uncertainty.bootstrap_counts, uncertainty.block_starts,
            uncertainty.bootstrap_weights)
    return scores


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


def with_summary(scores, task):
    """``scores`` with the per-voxel BH-adjusted ``q_value`` (when there are p-values) and
    their ``summary``: per (region, aggregation) key of ``task.summaries``, mean ``r`` and
    ``cc_norm``, ``n_voxels``, the ``ci`` of the mean cc_norm ((low, high), from the
    bootstrap) and the ``significant_fraction`` of voxels (q < --fdr_q); None where not
    defined or not computed."""
    summaries = task.summaries
    scores = dict(scores)
    summary = {"r": summarise(scores["r"], summaries),
               "cc_norm": summarise(scores["cc_norm"], summaries),
               "n_voxels": dict(zip(summaries.keys, summaries.n_voxels))}
    none = dict.fromkeys(summaries.keys)
    summary["ci"], summary["significant_fraction"] = none, none
    if "p_value" in scores:
        scores["q_value"] = scipy.stats.false_discovery_control(
            scores["p_value"].astype(np.float64)).astype(scores["p_value"].dtype)
        significant = (scores["q_value"] < task.uncertainty.fdr_q).astype(np.float64)
        summary["significant_fraction"] = _defined(significant @ summaries.members, summaries)
    if "bootstrap" in scores:
        low, high = eval_utils.percentile_interval(scores["bootstrap"], CONFIDENCE)
        summary["ci"] = {key: None if n == 0 else (float(lo), float(hi))
                         for key, n, lo, hi in zip(summaries.keys, summaries.n_voxels, low, high)}
    scores["summary"] = summary
    return scores


def summarise(values, summaries):
    """Summaries (``Summaries``) of per-voxel values (n_voxels,): (region, aggregation) ->
    float, or None for a summary without voxels."""
    return _defined(np.asarray(values, np.float64) @ summaries.weights, summaries)


def _defined(numbers, summaries):
    return {key: float(value) if n else None
            for key, n, value in zip(summaries.keys, summaries.n_voxels, numbers)}


def semantic_preference(features, semantic, phonetic, stories, test_story, alphas, splits,
                        device=None, score="corr"):
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
                                                 splits, device, score=score)
        used = np.isfinite(per_column)
        if not used.any():
            raise DatasetError(f"no {name} feature column varies in both the training stories "
                               f"and {test_story}; the --semantic_preference comparison is "
                               "undefined (check that --word_vectors covers the stories' "
                               "words, or that --semantic_features varies)")
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
    the input files (noise ceiling, respdict, responses, WAVs, TextGrids, word vectors or
    semantic features)."""
    all_stories = [*stories, args.test_story]
    files = [noise_ceilings.ceiling_file(subject, args.nc_path),
             data_utils.derivative_dir(args.data_dir) / "respdict.json",
             *(data_utils.response_path(args.data_dir, subject, s) for s in all_stories),
             *(data_utils.stimulus_path(args.data_dir, s) for s in all_stories),
             *(data_utils.textgrid_path(args.data_dir, s) for s in all_stories)]
    if args.semantic_preference:
        files += [path for path in (args.word_vectors, args.semantic_features)
                  if path is not None and Path(path).is_file()]
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

def write_results(out_dir, all_results, facts, task):
    """results.json (``facts``, the rows, the comparisons and the semantic preference),
    results.csv, comparisons.csv, the per-voxel .npz files (r, cc_norm, alpha and, with
    permutations, p_value and q_value; one entry per voxel of the subject, NaN where not
    fitted), the test predictions (``predictions_*.npz``: ``prediction`` float32 (scored rows,
    fitted voxels), ``rows``, the test-story response rows they belong to, and ``voxels``, the
    int64 indices of its columns among the subject's voxels), ``summary_voxels.npy`` (the (n,)
    int64 indices, among the subject's voxels, of the voxels the "all" voxel means average
    over, for the report) and the plots (``write_plots``) in a fresh ``out_dir``.
    ``facts`` holds the subject, test story and the ``summary_voxels`` facts, for the titles.

    Returns the alignment rows, the comparisons and the semantic-preference rows."""
    rows, preference_rows = [], []
    n_train = len(task.responses.train)
    test_rows = np.arange(TEST_RESPONSE_TRIM, TEST_RESPONSE_TRIM + len(task.responses.test))
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
    run_utils.write_json(out_dir / "results.json", {
        **facts, "results": rows, "comparisons": comparisons,
        "semantic_preference": preference_rows})
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


def write_run_flatmaps(out_dir, all_results, rows, args, subject, task):
    """The cortical maps of --flatmap_layers ('best': the layer of the highest mean cc_norm of
    the last model) in ``out_dir`` (``brain_regions.write_flatmaps``), from per-voxel cc_norm
    in the subject's voxel space (NaN where not fitted; only summary voxels are drawn)."""
    last = list(all_results)[-1]
    overall = {row["layer"]: row["cc_norm"] for row in rows
               if row["model"] == last and row["region"] == "all" and row["low_level"] == "none"
               and row["aggregation"] == "voxel_mean" and row["train_fraction"] == 1}
    layers = set()
    for layer in args.flatmap_layers:
        if layer == "best":
            layers.add(max(overall, key=lambda k: -np.inf if overall[k] is None else overall[k]))
        elif int(layer) in overall:
            layers.add(int(layer))
        else:
            logger.warning("--flatmap_layers %s: not a layer of this run (%s); no map", layer,
                           " ".join(map(str, sorted(overall))))
    cc_norm = {(label, layer): task.full(results[layer]["encoding"]["none"]["cc_norm"])
               for label, results in all_results.items() for layer in sorted(layers)}
    if cc_norm:  # NaN where not fitted: only the summary voxels are drawn
        brain_regions.write_flatmaps(out_dir, cc_norm, task.fitted_indices()[task.voxels],
                                     args.data_dir, subject, args.cache_dir,
                                     args.flatmap_height)


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


REGION_FIGURE_MAX = 12  # regions.png and the report show at most this many groups (or regions)


def figure_regions(regions, groups):
    """The regions of regions.png and of the report's region tables: the whole-brain (not
    per-hemisphere) groups, else the whole-brain regions, in file order, at most
    ``REGION_FIGURE_MAX``; [] without regions."""
    hemispheres = tuple(f"_{hemi}" for hemi in brain_regions.HEMISPHERES)
    whole = [name for name in (groups or regions) if not name.endswith(hemispheres)]
    if len(whole) > REGION_FIGURE_MAX:
        logger.info("regions.png and the report show the first %d of %d %s",
                    REGION_FIGURE_MAX, len(whole), "groups" if groups else "regions")
    return whole[:REGION_FIGURE_MAX]


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


if __name__ == "__main__":
    sys.exit(main())
