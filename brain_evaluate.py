"""Brain alignment: how well each layer of pretrained and brain-tuned models predicts held-out fMRI.

    python brain_evaluate.py --model_name facebook/wav2vec2-base --subject 3 \\
        --data_dir /path/to/ds003020 --logs_dir outputs/brain_tuning/wav2vec2-base_UTS03_fmri

For each model and layer (SPEC section 4): sliding-window features of every story (16 s
context + 0.1 s chunks, last frame's hidden state), Lanczos-downsampled to the TR centres,
trimmed, z-scored and delayed by 1-4 TRs per story; a ridge encoding model per voxel with
alphas chosen on chunks held out inside the training stories; predictions of the test story
(``wheretheressmoke``, its first 40 response rows dropped as in the paper) scored by raw
Pearson r and cc_norm = r / noise ceiling.

Outputs in ``<save_dir>/<exp_name>/``: ``results.json`` and ``results.csv`` (per model and
layer: mean r and cc_norm over voxels above ``--nc_thr``, and per region with
``--roi_file``), ``voxels_<model>_layer<k>.npz`` (per-voxel r, cc_norm, alpha),
``alignment.png`` (mean cc_norm per layer, one line per model) and ``run_config.json``. Features
are cached in ``--cache_dir`` and never extracted twice.
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
import speech_models
from data_utils import DatasetError

logger = logging.getLogger(__name__)

DEFAULT_LAYERS = (2, 5, 7, 8, 10, 11, 12)
TEST_RESPONSE_TRIM = 40  # the paper drops the first 40 test rows (features [50:-5])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Brain alignment of pretrained and brain-tuned speech models (ds003020).",
        formatter_class=data_utils.HelpFormatter)
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
    parser.add_argument("--alphas", nargs="+", type=float, default=None,
                        help="ridge penalties (ordinary ridge); default: the paper's "
                             "logspace(1, 4, 15) in singular-value units, squared")
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
    labels = data_utils.unique_names((label, None) for label, _ in models)
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
                           "autocast": str(dtype), "preprocessor": preprocessor.digest()},
                          sort_keys=True)
    path = (Path(args.cache_dir) / model_key[:16]
            / f"{story}_{hashlib.sha256(settings.encode()).hexdigest()[:12]}.hf5")

    def extract(missing):
        audio = data_utils.load_stimulus(args.data_dir, story, preprocessor.sampling_rate)
        features, times = speech_models.sliding_window_features(
            backbone, preprocessor, audio, missing, args.context_s, args.chunk_s,
            args.batch_size, device, dtype, naive=args.naive)
        return features, {"times": times}

    features, extras = speech_models.cached_layer_features(path, layers, extract, settings)
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


def evaluate_model(args, label, checkpoint, stories, responses, nc, rois, device, dtype):
    """Per-layer scores of one model: dict layer -> per-voxel arrays and summaries."""
    backbone, family = speech_models.load_backbone(checkpoint)
    backbone.to(device)
    preprocessor = speech_models.AudioPreprocessor(
        speech_models.load_feature_extractor(checkpoint, family), family)
    layers = choose_layers(args.layers, speech_models.num_layers(backbone, family))
    key = speech_models.fingerprint(backbone)
    per_story = {}
    for story in [*stories, args.test_story]:
        window_features, times = cached_story_features(args, backbone, preprocessor, key, story,
                                                       layers, device, dtype)
        per_story[story] = tr_features(args, story, window_features, times)
    train_responses, test_responses = responses
    lengths = [data_utils.response_rows(args.data_dir, s) for s in stories]
    splits = eval_utils.bootstrap_chunk_splits(lengths, args.n_boots, args.chunk_len,
                                               seed=args.seed)
    results = {}
    for layer in layers:
        x_train, x_test = design_matrices({s: f[layer] for s, f in per_story.items()}, stories,
                                          args.test_story)
        if len(x_train) != len(train_responses) or len(x_test) != len(test_responses):
            raise DatasetError(f"{label} layer {layer}: {len(x_train)}/{len(x_test)} feature rows "
                               f"but {len(train_responses)}/{len(test_responses)} response rows; "
                               "the responses do not match respdict.json")
        r, cc_norm, alphas = encoding_scores(x_train, x_test, train_responses, test_responses,
                                             nc, args.alphas, splits, device)
        results[layer] = {"r": r, "cc_norm": cc_norm, "alpha": alphas,
                          "summary": {"r": summarise(r, nc, args.nc_thr, rois),
                                      "cc_norm": summarise(cc_norm, nc, args.nc_thr, rois)}}
        logger.info("%s layer %d: mean cc_norm %.3f, mean r %.3f (voxels with NC > %s)", label,
                    layer, results[layer]["summary"]["cc_norm"]["all"],
                    results[layer]["summary"]["r"]["all"], args.nc_thr)
    return results


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
                                                      device=device)
    r = eval_utils.column_correlation(x_test @ weights, test_responses)
    cc_norm = np.divide(r, nc, out=np.zeros_like(r), where=nc > 0)
    return r, cc_norm, best_alphas


def write_results(out_dir, all_results, args, run_config):
    """results.json, results.csv, per-voxel .npz files and alignment.png, all atomic."""
    rows = []
    for label, layers in all_results.items():
        for layer, result in layers.items():
            for region in result["summary"]["cc_norm"]:
                rows.append({"model": label, "layer": layer, "region": region,
                             "cc_norm": result["summary"]["cc_norm"][region],
                             "r": result["summary"]["r"][region]})
            safe = label.replace("/", "_").replace(" ", "_")
            with data_utils.atomic_output(out_dir / f"voxels_{safe}_layer{layer}.npz", True) as tmp:
                np.savez(tmp, r=result["r"], cc_norm=result["cc_norm"], alpha=result["alpha"])
    data_utils.write_json(out_dir / "results.json", {**run_config, "results": rows}, overwrite=True)
    with data_utils.atomic_output(out_dir / "results.csv", overwrite=True) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["model", "layer", "region", "cc_norm", "r"])
            writer.writeheader()
            writer.writerows(rows)
    eval_utils.plot_per_layer(
        out_dir / "alignment.png",
        {label: {layer: r["summary"]["cc_norm"]["all"] for layer, r in layers.items()}
         for label, layers in all_results.items()},
        "mean cc_norm", f"Brain alignment, {data_utils.subject_id(args.subject)}")
    return rows


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
    nc = eval_utils.get_noise_ceiling(args.data_dir, subject, args.nc_path, args.test_story)
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
    all_results = {}
    for label, checkpoint in models:
        all_results[label] = evaluate_model(args, label, checkpoint, stories,
                                            (train_responses, test_responses), nc, rois, device,
                                            dtype)
    run_config = {"arguments": vars(args), "subject": subject, "train_stories": stories,
                  "models": dict(models), "run": data_utils.run_metadata(args)}
    data_utils.write_json(out_dir / "run_config.json", run_config, overwrite=True)
    rows = write_results(out_dir, all_results, args, run_config)
    print(eval_utils.comparison_table([row for row in rows if row["region"] == "all"],
                                      "cc_norm"))
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
