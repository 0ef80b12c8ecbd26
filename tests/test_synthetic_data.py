"""The synthetic dataset: ds003020 layout and formats, determinism, and the planted signal."""

import collections
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import data_utils
import run_utils
import synthetic_data

TINY = dict(subjects=(1,), n_train_stories=2, train_trs=40, test_trs=60, n_voxels=30, n_words=8)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path):
    first = tmp_path / "a"
    second = tmp_path / "b"
    other = tmp_path / "c"
    synthetic_data.generate(first, seed=5, **TINY)
    synthetic_data.generate(second, seed=5, **TINY)
    synthetic_data.generate(other, seed=6, **TINY)
    assert _files(first) == _files(second) == _files(other)
    for relative in _files(first):
        if relative.name == run_utils.RUN_MARKER:
            continue  # the project's marker: when and how the folder was written
        if relative.suffix == ".hf5":
            with h5py.File(first / relative) as a, h5py.File(second / relative) as b:
                assert set(a) == set(b)
                for name in a:
                    np.testing.assert_array_equal(a[name][()], b[name][()])
        else:
            assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    souls = Path("stimuli") / "souls.wav"
    assert (first / souls).read_bytes() != (other / souls).read_bytes()


def test_layout_and_formats_follow_ds003020(synthetic_dir):
    truth = data_utils.Dataset(synthetic_dir).truth()
    respdict = json.loads((synthetic_dir / "derivative" / "respdict.json").read_text())
    assert set(respdict) == set(truth["stories"])
    assert {"souls", "legacy", "exorcism", "stagefright", "life",
            "wheretheressmoke"} <= set(respdict)
    seen_formats = collections.Counter()
    for story, info in truth["stories"].items():
        raw = (synthetic_dir / "derivative" / "TextGrids" / f"{story}.TextGrid").read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") == info["bom"]
        text = raw.decode("utf-8-sig")
        expected_start = {"chronological": '"Praat chronological TextGrid text file"',
                          "long": 'File type = "ooTextFile"', "short": 'File type = "ooTextFile"'}
        assert text.startswith(expected_start[info["textgrid_format"]])
        assert ("xmin = " in text) == (info["textgrid_format"] == "long")
        seen_formats[info["textgrid_format"]] += 1
        seen_formats["bom"] += info["bom"]
    assert seen_formats["short"] and seen_formats["chronological"] and seen_formats["bom"]
    assert truth["stories"]["legacy"]["textgrid_format"] == "short"
    for name, info in truth["subjects"].items():
        for story in info["stories"]:
            path = synthetic_dir / "derivative" / "preprocessed_data" / name / f"{story}.hf5"
            with h5py.File(path) as handle:
                data = handle["data"]
                assert data.dtype == np.float64
                assert data.shape == (respdict[story] - 20, info["n_voxels"])
                if story == data_utils.TEST_STORY:
                    assert handle["individual_repeats"].shape == (info["n_repeats"],) + data.shape
                    assert handle["individual_repeats"].dtype == np.float64
                else:
                    assert "individual_repeats" not in handle


def test_responses_are_zscored_per_story(synthetic_dir):
    data = data_utils.Dataset(synthetic_dir).responses(1, "howtodraw")
    np.testing.assert_allclose(data.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(data.std(axis=0), 1, atol=1e-4)


def test_ground_truth_partitions_voxels_and_spans_ceilings(synthetic_dir):
    truth = data_utils.Dataset(synthetic_dir).truth()
    for info in truth["subjects"].values():
        groups = [set(info[f"{kind}_voxels"]) for kind in ("semantic", "acoustic", "noise")]
        assert set.union(*groups) == set(range(info["n_voxels"]))
        assert sum(map(len, groups)) == info["n_voxels"] and all(groups)
        ceiling = np.array(info["true_cc_max"])
        fraction = np.array(info["signal_fraction"])
        n = info["n_repeats"]
        signal = fraction > 0
        np.testing.assert_allclose(ceiling[signal], 1 / np.sqrt(1 + (1 / fraction[signal] - 1) / n),
                                   rtol=1e-4)
        assert (ceiling[list(groups[2])] == 0).all()
        assert ceiling[signal].min() < 0.2 and 0.8 < ceiling.max() <= 0.9


def test_words_sound_alike_and_differ_from_other_words(synthetic_dir):
    """The same word sounds the same (up to loudness) wherever it occurs; other words do not."""
    rate = 16000
    dataset = data_utils.Dataset(synthetic_dir)
    audio = dataset.stimulus(data_utils.TEST_STORY, rate)
    tokens = collections.defaultdict(list)
    for start, end, word in dataset.words(data_utils.TEST_STORY):
        first = int(round(start * rate))
        tokens[word].append(audio[first:first + int((end - start) * rate) - 2])

    def similarity(a, b):
        length = min(len(a), len(b))
        spectra = [np.abs(np.fft.rfft(x[:length])) for x in (a, b)]
        return np.corrcoef(*spectra)[0, 1]

    words = [w for w, found in tokens.items() if len(found) >= 2][:6]
    assert len(words) >= 4
    same = [similarity(tokens[w][0], tokens[w][1]) for w in words]
    different = [similarity(tokens[a][0], tokens[b][0]) for a, b in zip(words, words[1:])]
    assert min(same) > 0.9 and max(different) < min(same)


def _semantic_features(data_dir, story, truth):
    """Summed word embeddings per grid TR from the TextGrid, by the documented rule."""
    n_grid = truth["stories"][story]["respdict_trs"] - 5
    features = np.zeros((n_grid, truth["semantic_dim"]))
    for start, end, word in data_utils.Dataset(data_dir).words(story):
        tr = int(((start + end) / 2 + 10) // 2)
        if tr < n_grid:
            features[tr] += truth["words"][word]["embedding"]
    return features


def _energy(data_dir, story, truth):
    """Audio RMS per grid TR, from the WAV as a user would read it."""
    rate = 16000
    audio = data_utils.Dataset(data_dir).stimulus(story, rate)
    n_grid = truth["stories"][story]["respdict_trs"] - 5
    energy = np.zeros(n_grid)
    for tr in range(n_grid):
        first, last = max(0, (2 * tr - 10) * rate), max(0, (2 * tr - 8) * rate)
        if last > first and first < len(audio):
            energy[tr] = np.sqrt(np.mean(audio[first:last] ** 2))
    return energy


def _lag(features, truth):
    lagged = np.zeros_like(features)
    for delay, weight in zip(truth["hrf"]["delays_tr"], truth["hrf"]["weights"]):
        lagged[delay:] += weight * features[:-delay]
    return lagged[10:-5]


def test_planted_signal_is_recoverable_from_the_files(synthetic_dir):
    """Rebuilt from TextGrid, WAV and truth, each voxel's signal correlates with the mean
    response as its noise ceiling says (the correlation of the true signal is cc_max)."""
    truth = data_utils.Dataset(synthetic_dir).truth()
    subject = truth["subjects"]["UTS01"]
    story = data_utils.TEST_STORY
    response = data_utils.Dataset(synthetic_dir).responses(1, story).astype(np.float64)
    semantic = _lag(_semantic_features(synthetic_dir, story, truth), truth)
    energy = _lag(_energy(synthetic_dir, story, truth)[:, None], truth)[:, 0]
    weights = np.array(subject["semantic_weights"])
    ceiling = np.array(subject["true_cc_max"])

    def corr(a, b):
        return np.corrcoef(a, b)[0, 1]

    for kind in ("semantic", "acoustic"):
        voxels = subject[f"{kind}_voxels"]
        found = np.array([corr(semantic @ weights[v] if kind == "semantic" else
                               subject["acoustic_sign"][v] * energy, response[:, v])
                          for v in voxels])
        assert np.abs(found - ceiling[voxels]).mean() < 0.07, kind
        assert np.corrcoef(found, ceiling[voxels])[0, 1] > 0.9, kind
    noise = subject["noise_voxels"]
    assert np.abs([corr(semantic @ weights[subject["semantic_voxels"][0]], response[:, v])
                   for v in noise]).mean() < 0.1


def test_cli_replaces_only_datasets_it_wrote(tmp_path, caplog):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "mine.txt").write_text("precious")
    sizes = ["--n_train_stories", "1", "--train_trs", "40", "--test_trs", "50", "--n_voxels",
             "10", "--subjects", "1"]
    assert synthetic_data.main(["--out", str(theirs), *sizes]) == 1
    assert "--overwrite" in caplog.text
    caplog.clear()
    assert synthetic_data.main(["--out", str(theirs), *sizes, "--overwrite"]) == 1
    assert "was not written by brain-tuning" in caplog.text
    assert [p.name for p in theirs.iterdir()] == ["mine.txt"]
    assert (theirs / "mine.txt").read_text() == "precious"

    ours = tmp_path / "ours"
    assert synthetic_data.main(["--out", str(ours), *sizes]) == 0
    (ours / "stray.txt").write_text("from the first run")
    assert synthetic_data.main(["--out", str(ours), *sizes]) == 1
    assert synthetic_data.main(["--out", str(ours), *sizes, "--overwrite", "--seed", "1"]) == 0
    assert not (ours / "stray.txt").exists()
    assert data_utils.Dataset(ours).truth()["seed"] == 1
    assert data_utils.Dataset(ours).stories(1) == sorted(["souls", "stagefright", "life",
                                                       "wheretheressmoke"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "theirs"]  # no lock left


@pytest.mark.parametrize("bad", [["--n_train_stories", "0"], ["--train_trs", "10"],
                                 ["--subjects", "banana"]])
def test_cli_rejects_bad_settings(tmp_path, bad):
    assert synthetic_data.main(["--out", str(tmp_path / "d")] + bad) == 1
    assert not (tmp_path / "d").exists()


def test_words_come_in_anagram_families_with_centred_embeddings(tmp_path):
    truth = synthetic_data.generate(tmp_path / "ds", seed=2, subjects=(1,), n_train_stories=1,
                                    train_trs=30, test_trs=30, n_voxels=20, n_words=24,
                                    family_size=3)
    families = {}
    for info in truth["words"].values():
        sounds = tuple(sorted(p.rstrip("012") for p in info["phones"]))
        families.setdefault(sounds, []).append(np.array(info["embedding"]))
    sizes = [len(members) for members in families.values()]
    assert sizes == [3] * 8 and truth["family_size"] == 3
    for members in families.values():
        if len(members) > 1:
            np.testing.assert_allclose(np.sum(members, axis=0), 0, atol=1e-3)
    # embeddings keep about unit variance
    every = np.concatenate([np.array(i["embedding"]) for i in truth["words"].values()])
    assert 0.5 < every.std() < 1.5


def test_ceiling_range_is_honoured(tmp_path):
    truth = synthetic_data.generate(tmp_path / "ds", seed=2, subjects=(1,), n_train_stories=1,
                                    train_trs=30, test_trs=30, n_voxels=40,
                                    cc_max_range=(0.8, 0.95))
    subject = truth["subjects"]["UTS01"]
    signal = [c for c, kind in zip(subject["true_cc_max"], subject["voxel_type"])
              if kind != "noise"]
    assert min(signal) >= 0.8 and max(signal) <= 0.95


def test_voxel_types_can_be_planted(tmp_path):
    types = ["noise"] * 4 + ["acoustic"] * 3 + ["semantic"] * 5
    truth = synthetic_data.generate(tmp_path / "ds", seed=1, subjects=(1,), n_train_stories=1,
                                    train_trs=30, test_trs=60, n_voxels=12, n_words=6,
                                    voxel_types={"UTS01": types})
    subject = truth["subjects"]["UTS01"]
    assert subject["voxel_type"] == types
    assert subject["acoustic_voxels"] == [4, 5, 6]
    assert np.all(np.array(subject["true_cc_max"])[:4] == 0)  # noise voxels: no signal
    assert np.all(np.array(subject["true_cc_max"])[4:] > 0)
    for bad in (types[:-1], types[:-1] + ["visual"]):
        with pytest.raises(ValueError, match="voxel types must be 12 of semantic, acoustic"):
            synthetic_data.generate(tmp_path / "bad", seed=1, subjects=(1,), n_train_stories=1,
                                    train_trs=30, test_trs=60, n_voxels=12, n_words=6,
                                    voxel_types={"UTS01": bad})
