"""The Narratives handle (narratives.py) on the synthetic copy in the DataLad layout
(synthetic_narratives.py): scans, stories and exclusions, responses against the files, timing
against the planted signal, words and phones, the intersubject ceiling, check on a damaged
copy, regions from the fsaverage6 annotation, and brain_evaluate.py on it."""

import csv
import json
import shutil
import subprocess
import sys

import nibabel
import numpy as np
import pytest

import brain_evaluate
import brain_trainer_story
import brain_regions
import data_utils
import eval_utils
import narratives
import noise_ceilings
import speech_models
import synthetic_narratives
from run_utils import DatasetError, UsageError
from synthetic_speech import HRF_DELAYS, HRF_WEIGHTS

QUICK = ["--context_s", "3", "--chunk_s", "0.5", "--n_boots", "2", "--n_permutations", "0",
         "--n_bootstrap", "50"]


@pytest.fixture(scope="module")
def narratives_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("narratives") / "narratives"
    synthetic_narratives.generate(out, seed=0, n_subjects=6, story_seconds=90.0, n_vertices=40)
    return out


@pytest.fixture(scope="module")
def dataset(narratives_dir):
    return narratives.NarrativesDataset(narratives_dir)


def _events(root, subject, task, run=None):
    name = f"{subject}_task-{task}" + (f"_run-{run}" if run else "")
    with open(root / subject / "func" / f"{name}_events.tsv") as handle:
        return list(csv.DictReader(handle, delimiter="\t")), name


def _file_rows(root, name, subject, onset, tr, rows):
    """A scan's rows of a story read with nibabel alone: z-scored, NaN -> 0."""
    folder = root / "derivatives" / "afni-nosmooth" / subject / "func"
    data = np.hstack([np.stack([a.data for a in nibabel.load(
        folder / f"{name}_space-fsaverage6_hemi-{hemi}_desc-clean.func.gii").darrays])
        for hemi in "LR"])
    first = int(round(onset / tr)) + 6
    return eval_utils.zscore(np.nan_to_num(data[first:first + rows]).astype(np.float64))


def test_stories_subjects_and_exclusions(dataset):
    assert dataset.subjects() == [f"sub-{n:03d}" for n in range(1, 7)]
    assert dataset.stories("sub-001") == ["black", "lucy", "milkywayoriginal", "pieman",
                                          "reach", "slumlord", "tunnel"]
    assert "milkywaysynonyms" in dataset.stories(2) and "black" not in dataset.stories(6)
    assert "sub-004" not in dataset.listeners("tunnel")  # excluded a priori
    assert dataset.listeners("milkywaysynonyms") == ["sub-002", "sub-004", "sub-006"]
    assert dataset.repeats_shape("sub-001", "pieman")[0] == 2
    with pytest.raises(DatasetError, match="heard 'pieman' once;.*--normalise_by intersubject"):
        dataset.repeats_shape("sub-002", "pieman")  # its run-2 is excluded
    assert narratives.subject_id("2") == narratives.subject_id("sub-002") == "sub-002"


def test_timing_follows_events_and_bold_json(dataset):
    # 90 s stories: round(90 / TR) TRs less the authors' 6; milkyway's synonyms at 1.52 s
    assert dataset.response_rows("lucy") == 60 - 6
    assert dataset.tr_seconds("milkywaysynonyms") == 1.52
    assert dataset.response_rows("milkywaysynonyms") == round(90 / 1.52) - 6
    assert dataset.response_rows("slumlord") == dataset.response_rows("reach") == 36 - 6
    # pieman: audio from scan 0, story at 15 s = TR 10, first row TR 16 (24 s)
    times = dataset.tr_times("pieman")
    assert len(times) == 54 + 15 and times[10] == pytest.approx(24.75)
    # slumlordreach's audio starts with the first row (4.5 s); reach at round(...) + 6
    reach = _events(dataset.root, "sub-001", "slumlordreach")[0][3]
    first = (round(float(reach["onset"]) / 1.5) + 6) * 1.5 - 4.5
    assert dataset.tr_times("reach")[10] == pytest.approx(first + 0.75)
    starts, stops = dataset.window_bounds("lucy", 16000, n_delays=4)
    assert np.all(stops - starts == 5 * 1.5 * 16000)
    assert stops[0] == round((dataset.tr_times("lucy")[10] + 0.75) * 16000)


def test_responses_are_the_files_rows(dataset, narratives_dir):
    for subject, task, story in (("sub-003", "lucy", "lucy"),
                                 ("sub-002", "slumlordreach", "reach"),
                                 ("sub-004", "milkyway", "milkywaysynonyms")):
        rows, name = _events(narratives_dir, subject, task)
        row = [r for r in rows if r["trial_type"] == "story"][-1]
        tr = dataset.tr_seconds(story)
        expected = _file_rows(narratives_dir, name, subject, float(row["onset"]), tr,
                              dataset.response_rows(story))
        np.testing.assert_allclose(dataset.responses(subject, story), expected, atol=1e-5)
    runs = [_file_rows(narratives_dir, f"sub-001_task-pieman_run-{run}", "sub-001", 15.0, 1.5,
                       dataset.response_rows("pieman")) for run in (1, 2)]
    np.testing.assert_allclose(dataset.responses(1, "pieman"), np.mean(runs, axis=0),
                               atol=1e-5)
    np.testing.assert_allclose(dataset.repeats(1, "pieman", [5, 50])[:, :, 1],
                               np.stack(runs)[:, :, 50], atol=1e-5)


def test_planted_signal_lines_up_with_the_grid(dataset):
    """The semantic vertices' planted signal, rebuilt from the handle's words and TR grid (and
    the truth's embeddings and lag), correlates with the responses at the vertices' true
    ceilings; one TR off, it does not."""
    truth = dataset.truth()
    weights = np.array(truth["semantic_weights"])
    semantic = np.flatnonzero(np.array(truth["vertex_type"]) == "semantic")
    ceiling = np.array(truth["true_ceiling"])[semantic]
    for story in ("lucy", "reach", "milkywaysynonyms"):
        tr, times = dataset.tr_seconds(story), dataset.tr_times(story)
        grid = np.zeros((len(times), weights.shape[1]))
        for start, end, word in dataset.words(story):
            index = int(np.floor(((start + end) / 2 - (times[0] - tr / 2)) / tr))
            if 0 <= index < len(grid):
                grid[index] += truth["words"][word]["embedding"]
        lagged = sum(w * np.roll(grid, d, axis=0) for d, w in zip(HRF_DELAYS, HRF_WEIGHTS))
        signal = lagged @ weights[semantic].T
        subject = dataset.listeners(story)[0]
        y = dataset.responses(subject, story)[:, semantic]
        aligned = eval_utils.column_correlation(signal[10:-5], y)
        shifted = eval_utils.column_correlation(signal[11:-4], y)
        assert np.mean(aligned / ceiling) > 0.85, story
        assert np.mean(shifted / ceiling) < np.mean(aligned / ceiling) - 0.2, story


def test_words_and_phones_from_gentle(dataset, narratives_dir):
    aligned = json.loads((narratives_dir / "stimuli" / "gentle" / "slumlordreach" /
                          "align.json").read_text())["words"]
    found = [w for w in aligned if w["case"] == "success"]
    assert len(found) < len(aligned)  # some transcript words were not found in the audio
    slumlord, reach = dataset.words("slumlord"), dataset.words("reach")
    assert len(slumlord) + len(reach) == len(found)  # split between the two story rows
    assert slumlord[-1][0] < reach[0][0]
    word = found[0]
    phones = [p for p in dataset.phones("slumlord") if word["start"] <= p[0] < word["end"]]
    assert [p[2] for p in phones] == [p["phone"].split("_")[0].upper() for p in word["phones"]]
    np.testing.assert_allclose([p[0] for p in phones], word["start"] + np.cumsum(
        [0] + [p["duration"] for p in word["phones"]][:-1]))


def test_intersubject_ceiling_recovers_the_planted_ceilings(dataset):
    truth = dataset.truth()
    true = np.array(truth["true_ceiling"])
    isc, ceiling, listeners = dataset.intersubject_ceiling("lucy")
    assert len(listeners) == 6
    stacked = np.stack([dataset.responses(s, "lucy") for s in listeners])  # all at once
    np.testing.assert_allclose(ceiling, eval_utils.intersubject_ceiling(stacked)[1])
    signal = true > 0
    assert np.abs(ceiling[signal] - true[signal]).mean() < 0.08
    assert np.corrcoef(ceiling[signal], true[signal])[0, 1] > 0.85
    assert ceiling[np.array(truth["vertex_type"]) == "noise"].mean() < 0.15


def test_check_is_clean_then_names_each_damage(narratives_dir, tmp_path):
    ok = subprocess.run([sys.executable, "data_utils.py", "check", "--dataset", "narratives",
                         "--data_dir", str(narratives_dir)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "milkywaysynonyms: 3 listeners, TR 1.52 s" in ok.stdout
    assert "pieman: 6 listeners" in ok.stdout and "heard twice by 2" in ok.stdout
    copy = tmp_path / "narratives"
    shutil.copytree(narratives_dir, copy)
    derived = copy / "derivatives" / "afni-nosmooth"
    (derived / "sub-003" / "func" / "sub-003_task-lucy_space-fsaverage6_hemi-R_desc-clean"
               ".func.gii").unlink()
    for hemi in "LR":  # cut short
        gifti = (derived / "sub-005" / "func" /
                 f"sub-005_task-tunnel_space-fsaverage6_hemi-{hemi}_desc-clean.func.gii")
        image = nibabel.load(gifti)
        nibabel.save(nibabel.gifti.GiftiImage(darrays=image.darrays[:20]), str(gifti))
    shutil.rmtree(copy / "stimuli" / "gentle" / "black")
    (copy / "sub-002" / "func" / "sub-002_task-slumlordreach_bold.json").write_text("{}")
    events = copy / "sub-006" / "func" / "sub-006_task-pieman_events.tsv"
    events.write_text(events.read_text().replace("\n15\t", "\n21\t"))  # 6 s later in the audio
    result = subprocess.run([sys.executable, "data_utils.py", "check", "--dataset",
                             "narratives", "--data_dir", str(copy)], capture_output=True,
                            text=True)
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    expected = ["sub-003_task-lucy_space-fsaverage6_hemi-R_desc-clean.func.gii: missing",
                "sub-005_task-tunnel_space-fsaverage6_hemi-L_desc-clean.func.gii: 20 TRs",
                "gentle/black/align.json: the Gentle alignment of story 'black' is missing",
                "sub-002_task-slumlordreach_bold.json: no readable RepetitionTime",
                "sub-006_task-pieman_events.tsv and"]
    for text in expected:
        assert any(text in line for line in problems), (text, problems)
    assert "Traceback" not in result.stderr
    (copy / "code" / "scan_exclude.json").unlink()
    result = subprocess.run([sys.executable, "data_utils.py", "check", "--dataset",
                             "narratives", "--data_dir", str(copy)], capture_output=True,
                            text=True)
    assert "code/scan_exclude.json: missing" in result.stdout and result.returncode == 1


def test_regions_from_the_fsaverage6_annotation(dataset, narratives_dir, tmp_path):
    annot = [str(narratives_dir / "synthetic_annot" / f"{h}.HCPMMP1.annot")
             for h in ("lh", "rh")]
    path = brain_regions.subject_regions(dataset, "sub-001", "annot", tmp_path, annot)
    regions = json.loads(path.read_text())
    types = np.array(dataset.truth()["vertex_type"])
    auditory = regions["A1"] + regions["LBelt"] + regions["PBelt"]
    assert set(types[auditory]) == {"acoustic"}
    assert sorted(regions["early_auditory"]) == ["A1", "LBelt", "PBelt"]
    assert min(regions["A1_rh"]) >= 40 > max(regions["A1_lh"])  # left then right vertices
    with pytest.raises(UsageError, match="annot"):
        brain_regions.subject_regions(dataset, "sub-001", "aparc", tmp_path)


@pytest.fixture(scope="module")
def evaluated(narratives_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("narratives_evaluate")
    speech_models.save_tiny_model(root / "model", "wav2vec2", seed=0)
    annot = [str(narratives_dir / "synthetic_annot" / f"{h}.HCPMMP1.annot")
             for h in ("lh", "rh")]
    args = ["--dataset", "narratives", "--data_dir", str(narratives_dir), "--subject", "3",
            "--test_story", "lucy", "--test_target", "data", "--normalise_by", "intersubject",
            "--model_name", str(root / "model"), "--layers", "1", "--regions", "annot",
            "--annot", *annot, "--nc_path", str(root / "lucy.npy"), "--low_level", "powspec",
            "--cache_dir", str(root / "cache"), "--save_dir", str(root / "out"),
            "--exp_name", "run", *QUICK]
    assert brain_evaluate.main(args) == 0
    return root, args


def test_brain_evaluate_on_narratives(evaluated, dataset):
    root, _ = evaluated
    results = json.loads((root / "out" / "run" / "results.json").read_text())
    assert results["subject"] == "sub-003" and results["test_story"] == "lucy"
    assert results["protocol"]["dataset"] == "narratives"
    assert results["protocol"]["normalise_by"] == "intersubject"
    assert set(results["train_stories"]) == set(dataset.stories(3)) - {"lucy"}
    departures = {d["setting"] for d in results["departures"]}
    assert "--dataset" in departures and "--tr_source" not in departures
    # cc_norm = r / the test story's intersubject ceiling, recomputed here
    voxels = np.load(root / "out" / "run" / "voxels_pretrained_layer1.npz")
    ceiling = dataset.intersubject_ceiling("lucy")[1]
    np.testing.assert_allclose(np.load(root / "lucy.npy"), ceiling)
    prediction = np.load(root / "out" / "run" / "predictions_pretrained_layer1.npz")
    r = eval_utils.column_correlation(prediction["prediction"], dataset.responses(3, "lucy"))
    np.testing.assert_allclose(voxels["r"], r, atol=1e-5)
    fitted = ceiling > 0
    np.testing.assert_allclose(voxels["cc_norm"][fitted], r[fitted] / ceiling[fitted],
                               rtol=1e-4, atol=1e-6)
    record = json.loads((root / "lucy.json").read_text())
    assert record["listeners"] == dataset.listeners("lucy")
    rows = list(csv.DictReader(open(root / "out" / "run" / "results.csv")))
    regions = {row["region"] for row in rows}
    assert {"A1", "early_auditory", "STSdp"} <= regions


def test_a_ceiling_of_other_listeners_is_refused(evaluated, narratives_dir, tmp_path):
    root, args = evaluated
    copy = tmp_path / "narratives"
    shutil.copytree(narratives_dir, copy)
    gifti = (copy / "derivatives" / "afni-nosmooth" / "sub-005" / "func" /
             "sub-005_task-lucy_space-fsaverage6_hemi-L_desc-clean.func.gii")
    image = nibabel.load(gifti)
    for array in image.darrays:
        array.data = array.data[::-1].copy()
    nibabel.save(image, str(gifti))
    with pytest.raises(DatasetError, match="sub-005_task-lucy.*--nc_path"):
        noise_ceilings.get_noise_ceiling(narratives.NarrativesDataset(copy), 3,
                                         root / "lucy.npy", "lucy")


def test_narratives_usage_errors(evaluated, narratives_dir, caplog):
    root, args = evaluated
    base = [a for a in args if a not in ("--test_target", "data", "--normalise_by",
                                          "intersubject")]
    assert brain_evaluate.main([*base, "--overwrite"]) == 1
    assert "--test_target data --normalise_by intersubject" in caplog.text
    caplog.clear()
    with pytest.raises(UsageError, match="--tr_source"):
        data_utils.DatasetFlags(data_dir=str(narratives_dir), dataset="narratives",
                                tr_source="report")
    with pytest.raises(UsageError, match="--space belongs to Narratives"):
        data_utils.DatasetFlags(data_dir="ds003020", space="fsaverage6")
    assert data_utils.DatasetFlags(data_dir=str(narratives_dir),
                                   dataset="narratives").open_dataset().space == "fsaverage6"


def test_brain_tuning_on_narratives_listeners(narratives_dir, evaluated):
    """Several Narratives subjects per story: the multi-subject path, voxels chosen by the
    validation story's intersubject ceiling, the window length one for every TR."""
    root, _ = evaluated
    assert brain_trainer_story.main([
        "--dataset", "narratives", "--data_dir", str(narratives_dir), "--subject", "1", "2",
        "--train_stories", "lucy", "reach", "--val_stories", "slumlord",
        "--model_name", str(root / "model"), "--num_epochs", "1", "--batch_size", "8",
        "--nc_thr", "0.3", "--save_dir", str(root / "runs"), "--exp_name", "tuned"]) == 0
    final = root / "runs" / "tuned" / "final"
    record = json.loads((final / "brain_tuning.json").read_text())
    assert record["subjects"] == ["sub-001", "sub-002"]
    dataset = narratives.NarrativesDataset(narratives_dir)
    ceiling = dataset.intersubject_ceiling("slumlord")[1]
    np.testing.assert_allclose(
        np.load(noise_ceilings.NC_DIR / "narratives_fsaverage6_slumlord.npy"), ceiling)
    voxels = json.loads((final / "voxels.json").read_text())
    for subject in ("sub-001", "sub-002"):  # the same vertices: the ceiling is the story's
        assert voxels[subject] == np.flatnonzero(ceiling > 0.3).tolist()
    assert record["n_outputs"] == 2 * int((ceiling > 0.3).sum())
    bounds = {s: dataset.window_bounds(s, 16000) for s in ("lucy", "milkywaysynonyms")}
    assert {int(stops[0] - starts[0]) for starts, stops in bounds.values()} == {5 * 1.5 * 16000}


def test_mni_volumes_in_the_task_brain_mask(dataset, narratives_dir, tmp_path):
    """--space MNI152NLin2009cAsym: the volume's voxels inside the task's brain mask."""
    copy = tmp_path / "narratives"
    shutil.copytree(narratives_dir, copy)
    derived = copy / "derivatives" / "afni-nosmooth"
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 1:5] = True
    template = derived / "tpl-MNI152NLin2009cAsym"
    template.mkdir()
    nibabel.save(nibabel.Nifti1Image(mask.astype(np.uint8), np.eye(4)),
                 str(template / "tpl-MNI152NLin2009cAsym_res-lucy_desc-brain_mask.nii.gz"))
    rng = np.random.default_rng(0)
    volumes = {}
    for subject in dataset.listeners("lucy"):
        n_trs = len(nibabel.load(derived / subject / "func" / f"{subject}_task-lucy_space-"
                                 "fsaverage6_hemi-L_desc-clean.func.gii").darrays)
        volumes[subject] = rng.standard_normal((4, 5, 6, n_trs)).astype(np.float32)
        nibabel.save(nibabel.Nifti1Image(volumes[subject], np.eye(4)), str(
            derived / subject / "func" /
            f"{subject}_task-lucy_space-MNI152NLin2009cAsym_res-native_desc-clean_bold.nii.gz"))
    mni = narratives.NarrativesDataset(copy, space="MNI152NLin2009cAsym")
    assert mni.check_run_inputs("sub-002", ["lucy"]) == mask.sum()
    first = round(3.0 / 1.5) + 6
    expected = eval_utils.zscore(
        volumes["sub-002"][mask].T[first:first + mni.response_rows("lucy")].astype(np.float64))
    np.testing.assert_allclose(mni.responses("sub-002", "lucy"), expected, atol=1e-5)
    with pytest.raises(DatasetError, match="sub-002_task-tunnel_space-MNI152NLin2009cAsym_res-"
                                           "native_desc-clean_bold.nii.gz: missing"):
        mni.responses("sub-002", "tunnel")
    other = mask.copy()
    other[1, 1, 1], other[0, 0, 0] = False, True  # as many voxels, not the same ones
    nibabel.save(nibabel.Nifti1Image(other.astype(np.uint8), np.eye(4)),
                 str(template / "tpl-MNI152NLin2009cAsym_res-tunnel_desc-brain_mask.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(volumes["sub-002"], np.eye(4)), str(
        derived / "sub-002" / "func" /
        "sub-002_task-tunnel_space-MNI152NLin2009cAsym_res-native_desc-clean_bold.nii.gz"))
    with pytest.raises(DatasetError, match="brain masks of lucy and tunnel differ"):
        mni.check_run_inputs("sub-002", ["lucy", "tunnel"])


def test_group_mean_ceiling_against_a_planted_mean():
    """The ceiling of the mean of n subjects equals the correlation of a planted group mean
    with its shared signal."""
    rng = np.random.default_rng(1)
    shared = rng.uniform(0.05, 0.8, 30)
    signal = rng.standard_normal((20000, 30))
    for n in (3, 10):
        mean = np.mean([np.sqrt(shared) * signal + np.sqrt(1 - shared) *
                        rng.standard_normal(signal.shape) for _ in range(n)], axis=0)
        np.testing.assert_allclose(eval_utils.group_mean_ceiling(np.sqrt(shared), n),
                                   eval_utils.column_correlation(mean, signal), atol=0.02)


def test_the_group_of_listeners(dataset, evaluated, caplog):
    """--subject group: the listeners' mean, scored against the ceiling of that mean."""
    root, args = evaluated
    np.testing.assert_allclose(
        dataset.responses("group", "lucy"),
        eval_utils.zscore(np.mean([dataset.responses(s, "lucy") for s in dataset.listeners(
            "lucy")], axis=0, dtype=np.float64)), atol=1e-5)
    assert dataset.stories("group") == sorted(dataset.hearings())
    truth = dataset.truth()
    true = np.array(truth["true_ceiling"])
    signal = true > 0
    n = len(dataset.listeners("lucy"))
    group_args = [*args[:args.index("--subject")], "--subject", "group",
                  *args[args.index("--subject") + 2:]]
    group_args[group_args.index("--nc_path") + 1] = str(root / "lucy_group.npy")
    group_args[group_args.index("--exp_name") + 1] = "group"
    assert brain_evaluate.main(group_args) == 0
    ceiling = np.load(root / "lucy_group.npy")
    expected = np.sqrt(n * true ** 2 / (n * true ** 2 + 1 - true ** 2))  # of the planted mean
    assert np.abs(ceiling[signal] - expected[signal]).mean() < 0.06
    results = json.loads((root / "out" / "group" / "results.json").read_text())
    assert results["subject"] == "group"
    with pytest.raises(DatasetError, match="the group has no repeats of 'pieman'"):
        dataset.repeats_shape("group", "pieman")


def test_maps_and_viewer_refuse_a_narratives_run(evaluated, caplog):
    root, _ = evaluated
    assert brain_regions.main(["view", str(root / "out" / "run"), "--layers", "1"]) == 1
    assert "a run on narratives (fsaverage6)" in caplog.text


def test_noise_ceilings_cli_writes_a_story_ceiling(dataset, narratives_dir, tmp_path):
    args = ["--dataset", "narratives", "--data_dir", str(narratives_dir), "--story", "pieman"]
    assert noise_ceilings.main([*args, "--subject", "4", "--out", str(tmp_path / "one.npy")]) == 0
    isc, ceiling, listeners = dataset.intersubject_ceiling("pieman")
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), ceiling)
    assert noise_ceilings.main([*args, "--subject", "group", "--out",
                                str(tmp_path / "group.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "group.npy"),
                               eval_utils.group_mean_ceiling(ceiling, len(listeners)))
    record = json.loads((tmp_path / "group.json").read_text())
    assert record["subject"] == "group" and record["listeners"] == listeners
    assert noise_ceilings.main([*args, "--subject", "4", "--out", str(tmp_path / "one.npy"),
                                "--no_data_norm", "--overwrite"]) == 1


def test_story_names_of_runs_with_several_stories(tmp_path):
    path = tmp_path / "events.tsv"
    schema = [(5.0, 180, "movie", "n/a"), (199.93, 160, "story", "bigbang_audio.wav"),
              (369.17, 180, "movie", "n/a"), (558.61, 170, "story", "vinny_audio.wav")]
    assert narratives._story_names([r for r in schema if r[2] == "story"], path) == [
        "bigbang", "vinny"]
    split = [(29.5, 903, "story", "slumlordreach_audio.wav"),
             (969.5, 825, "story", "slumlordreach_audio.wav")]
    assert narratives._story_names(split, path) == ["slumlord", "reach"]
    with pytest.raises(DatasetError, match="only slumlordreach"):
        narratives._story_names([split[0], (1900.0, 100, "story", "tunnel_audio.wav"),
                                 (2100.0, 100, "story", "tunnel_audio.wav")], path)
    with pytest.raises(DatasetError, match="stim_file 'n/a'"):
        narratives._story_names([(3.0, 10, "story", "n/a")], path)


def test_onsets_that_differ_within_a_tr(narratives_dir, tmp_path):
    """Schema's case: each listener's onset of a story differs by a fraction of a TR. The grid
    is the story's own; every listener's rounded rows lie within half a TR of it; check says
    how far."""
    copy = tmp_path / "narratives"
    shutil.copytree(narratives_dir, copy)
    events = copy / "sub-002" / "func" / "sub-002_task-lucy_events.tsv"
    events.write_text(events.read_text().replace("\n3\t", "\n3.4\t"))
    dataset = narratives.NarrativesDataset(copy)
    timing = dataset.story_timing("lucy")
    assert timing["first_row_audio"] == pytest.approx(6 * 1.5)  # story onset + the 6 TRs
    first = (round(3.4 / 1.5) + 6) * 1.5 - 3.4  # sub-002's rows, on its audio clock
    assert abs(first - timing["first_row_audio"]) <= 0.75
    result = subprocess.run([sys.executable, "data_utils.py", "check", "--dataset",
                             "narratives", "--data_dir", str(copy)], capture_output=True,
                            text=True)
    assert result.returncode == 0
    assert "lucy: listeners' onsets differ within the TR; their rows lie up to 0.40 s" in \
        result.stdout


def test_words_that_contradict_the_audio_start_are_a_problem(narratives_dir, tmp_path):
    """The spec's first unknown: where the audio starts on the scan clock (taken to be the
    first events row of its file). Events that put tunnel's audio 12 s earlier than it is (a
    music row before the story, the same file) leave its speech before the story's onset: the
    check names the alignment file, and a run refuses it."""
    copy = tmp_path / "narratives"
    shutil.copytree(narratives_dir, copy)
    for events in copy.glob("sub-*/func/*_task-tunnel_events.tsv"):
        header, row = events.read_text().splitlines()
        events.write_text(f"{header}\n0\t10\tmusic\ttunnel_audio.wav\n"
                          + row.replace("3\t", "15\t", 1) + "\n")
    dataset = narratives.NarrativesDataset(copy)
    assert dataset.story_timing("tunnel")["audio_onset"] == 15.0
    problem = dataset.onset_problem("tunnel")
    assert "gentle/tunnel/align.json: story 'tunnel' starts 15.00 s into its audio" in problem
    assert "words start in the 10 s before it" in problem
    problems = dataset.story_problems("sub-001", "tunnel")[0]  # a run's check lists it too
    assert problem in problems
    with pytest.raises(DatasetError, match="and 2 more"):  # the audio also ends too early
        dataset.check_run_inputs("sub-001", ["tunnel"])
    assert narratives.NarrativesDataset(narratives_dir).onset_problem("tunnel") is None
    assert narratives.NarrativesDataset(narratives_dir).onset_problem("reach") is None
