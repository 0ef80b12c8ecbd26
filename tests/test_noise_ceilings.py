"""Noise ceilings and normalised correlations (Schoppe et al. 2016): the maths in eval_utils
and the subject ceiling files and CLI of noise_ceilings.py."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

import damage
import data_utils
import eval_utils
import hdf5_io
import noise_ceilings
import run_utils
import synthetic_data
from data_utils import Dataset
from run_utils import DatasetError


def _planted_repeats(signal_fraction, n_repeats=10, n_time=400, seed=0):
    """Repeats of voxels with known signal fraction, each repeat of unit variance (ddof=1)."""
    rng = np.random.default_rng(seed)
    signal = scipy.stats.zscore(rng.standard_normal((n_time, len(signal_fraction))), ddof=1)
    noise = rng.standard_normal((n_repeats, n_time, len(signal_fraction)))
    repeats = np.sqrt(signal_fraction) * signal + np.sqrt(1 - signal_fraction) * noise
    return scipy.stats.zscore(repeats, axis=1, ddof=1), signal


def _reference_cc_max(repeats):
    """docs/method.md#scoring, one voxel at a time with plain numpy."""
    n = repeats.shape[0]
    out = []
    for voxel in range(repeats.shape[2]):
        y = repeats[:, :, voxel].mean(axis=0)
        sp = (n * np.var(y, ddof=1) - 1) / (n - 1)
        out.append(1 / np.sqrt(1 + (1 / n) * (1 / sp - 1)) if sp > 0 else 0.0)
    return np.array(out)


def test_noise_ceiling_matches_the_formula():
    repeats, _ = _planted_repeats(np.linspace(0.0, 0.6, 25))
    np.testing.assert_allclose(eval_utils.noise_ceiling(repeats), _reference_cc_max(repeats),
                               rtol=1e-10)


def test_noise_ceiling_recovers_the_true_ceiling():
    p = np.linspace(0.05, 0.5, 10)
    repeats, _ = _planted_repeats(p, n_repeats=10, n_time=20000)
    expected = 1 / np.sqrt(1 + (1 / p - 1) / 10)
    np.testing.assert_allclose(eval_utils.noise_ceiling(repeats), expected, atol=0.02)


@pytest.mark.parametrize("n_subjects", [5, 20])
def test_intersubject_ceiling_recovers_the_planted_shared_signal(n_subjects):
    """Subjects hearing one story once: a shared signal of variance a plus noise of each
    one's own. The leave-one-out correlation is the Fisher-z mean of a loop over subjects; the
    corrected ceiling is sqrt(a), what the planted signal itself reaches on each subject."""
    shared = np.linspace(0.0, 0.6, 13)
    subjects, signal = _planted_repeats(shared, n_repeats=n_subjects, n_time=20000, seed=3)
    isc, ceiling = eval_utils.intersubject_ceiling(subjects)
    loop = [np.tanh(np.mean([np.arctanh(np.corrcoef(
        subjects[i, :, v], np.delete(subjects, i, axis=0)[:, :, v].mean(axis=0))[0, 1])
        for i in range(n_subjects)])) for v in range(len(shared))]
    np.testing.assert_allclose(isc, loop, atol=1e-10)
    np.testing.assert_allclose(ceiling, np.sqrt(shared), atol=0.03)
    reached = [np.mean([np.corrcoef(signal[:, v], subjects[i, :, v])[0, 1]
                        for i in range(n_subjects)]) for v in range(len(shared))]
    np.testing.assert_allclose(ceiling[1:], reached[1:], atol=0.03)
    assert (isc[1:] < ceiling[1:]).all()  # uncorrected, the others' noise lowers it
    with pytest.raises(ValueError, match="at least 3 subjects"):
        eval_utils.intersubject_ceiling(subjects[:2])


def test_no_signal_gives_zero():
    repeats, _ = _planted_repeats(np.zeros(200), n_time=300)
    cc_max = eval_utils.noise_ceiling(repeats)
    assert (cc_max >= 0).all() and np.median(cc_max) == 0.0
    constant = np.zeros((5, 30, 3))
    np.testing.assert_array_equal(eval_utils.noise_ceiling(constant), 0.0)


def test_dtype_is_kept():
    repeats, _ = _planted_repeats(np.full(4, 0.3))
    assert eval_utils.noise_ceiling(repeats.astype(np.float32)).dtype == np.float32
    assert eval_utils.noise_ceiling(repeats).dtype == np.float64
    np.testing.assert_allclose(eval_utils.noise_ceiling(repeats.astype(np.float32)),
                               eval_utils.noise_ceiling(repeats), atol=1e-5)


def test_data_norm_false_is_scale_invariant():
    repeats, _ = _planted_repeats(np.linspace(0.05, 0.5, 8))
    scaled = repeats * np.array([3.0, 0.5, 2.0, 1.0, 4.0, 1.5, 0.7, 2.5])
    np.testing.assert_allclose(eval_utils.noise_ceiling(scaled, data_norm=False),
                               eval_utils.noise_ceiling(repeats), rtol=1e-10)
    assert not np.allclose(eval_utils.noise_ceiling(scaled), eval_utils.noise_ceiling(repeats))


def test_spe_and_cc_norm_against_independent_computation():
    repeats, signal = _planted_repeats(np.linspace(0.05, 0.5, 12), n_time=300)
    rng = np.random.default_rng(1)
    prediction = signal + rng.standard_normal(signal.shape)
    spe, cc_norm, cc_max, corr = eval_utils.spe_and_cc_norm(repeats, prediction)
    y = repeats.mean(axis=0)
    for v in range(y.shape[1]):
        assert corr[v] == pytest.approx(scipy.stats.pearsonr(y[:, v], prediction[:, v])[0], abs=1e-12)
        sp = (10 * np.var(y[:, v], ddof=1) - 1) / 9
        expected_spe = (np.var(y[:, v], ddof=1) - np.var(y[:, v] - prediction[:, v], ddof=1)) / sp
        assert spe[v] == pytest.approx(expected_spe, rel=1e-10)
    np.testing.assert_allclose(cc_max, _reference_cc_max(repeats), rtol=1e-10)
    np.testing.assert_allclose(cc_norm, corr / cc_max, rtol=1e-10)


def test_the_true_signal_is_normalised_to_one():
    """cc_norm of the noise-free signal is about 1 whatever the noise level."""
    p = np.linspace(0.05, 0.5, 8)
    repeats, signal = _planted_repeats(p, n_time=20000)
    _, cc_norm, _, corr = eval_utils.spe_and_cc_norm(repeats, signal)
    np.testing.assert_allclose(cc_norm, 1.0, atol=0.03)
    assert corr[0] < 0.6 < corr[-1]


def test_edge_cases_give_zeros_not_nan():
    repeats, signal = _planted_repeats(np.array([0.0, 0.3, 0.3]), n_time=200)
    repeats[:, :, 0] = 0.0
    prediction = signal.copy()
    prediction[:, 2] = 1.0
    for flooring in (None, 0.2):
        spe, cc_norm, cc_max, corr = eval_utils.spe_and_cc_norm(repeats, prediction,
                                                                max_flooring=flooring)
        for values in (spe, cc_norm, cc_max, corr):
            assert np.isfinite(values).all()
        assert cc_max[0] == 0 and spe[0] == 0 and corr[0] == 0 and cc_norm[0] == 0
        assert corr[2] == 0 and cc_norm[2] == 0
    _, floored, cc_max, corr = eval_utils.spe_and_cc_norm(repeats, prediction, max_flooring=0.99)
    np.testing.assert_allclose(floored[1], corr[1] / max(cc_max[1], 0.99))


def test_spe_and_cc_norm_every_argument_combination():
    repeats, signal = _planted_repeats(np.full(3, 0.2), n_time=50)
    for data_norm in (True, False):
        for flooring in (None, 0.0, 0.5):
            for dtype in (np.float32, np.float64):
                result = eval_utils.spe_and_cc_norm(repeats.astype(dtype), signal.astype(dtype),
                                                    data_norm=data_norm, max_flooring=flooring)
                assert len(result) == 4
                assert all(a.shape == (3,) and a.dtype == dtype and np.isfinite(a).all()
                           for a in result)


@pytest.mark.parametrize("repeats_shape,prediction_shape", [((5, 20, 3), (20, 4)),
                                                             ((1, 20, 3), (20, 3)),
                                                             ((20, 3), (20, 3))])
def test_bad_shapes_raise(repeats_shape, prediction_shape):
    with pytest.raises(ValueError):
        eval_utils.spe_and_cc_norm(np.ones(repeats_shape), np.ones(prediction_shape))


def test_column_correlation_against_scipy():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    expected = [scipy.stats.pearsonr(x[:, i], y[:, i])[0] for i in range(4)]
    np.testing.assert_allclose(eval_utils.column_correlation(x, y), expected, atol=1e-12)
    assert eval_utils.column_correlation(x.astype(np.float32), y.astype(np.float32)).dtype == np.float32


# ----------------------------------------------------------------------------- on the dataset

def test_ceilings_track_the_generators_ground_truth(synthetic_dir):
    dataset = Dataset(synthetic_dir)
    truth = dataset.truth()["subjects"]["UTS01"]
    cc_max = eval_utils.noise_ceiling(dataset.repeats(1))
    true = np.array(truth["true_cc_max"])
    signal = true > 0
    assert np.corrcoef(cc_max[signal], true[signal])[0, 1] > 0.9
    assert np.abs(cc_max[signal] - true[signal]).mean() < 0.08
    assert np.median(cc_max[~signal]) < 0.15
    assert cc_max.min() == 0.0 and cc_max.max() > 0.8


def test_cli_writes_file_and_provenance(synthetic_dir, tmp_path):
    out = tmp_path / "ncs" / "UTS02.npy"
    args = ["--data_dir", str(synthetic_dir), "--subject", "UTS02",
            "--out", str(out), "--voxel_batch", "50"]
    assert noise_ceilings.main(args) == 0
    cc_max = np.load(out)
    assert cc_max.dtype == np.float64
    np.testing.assert_allclose(cc_max, eval_utils.noise_ceiling(
        Dataset(synthetic_dir).repeats(2).astype(np.float64)), rtol=1e-5)
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert metadata["subject"] == "UTS02" and metadata["n_repeats"] == 10
    assert metadata["n_voxels"] == cc_max.size and metadata["arguments"]["voxel_batch"] == 50
    out.write_bytes(b"keep me")
    assert noise_ceilings.main(args) == 1
    assert out.read_bytes() == b"keep me"
    assert noise_ceilings.main(args + ["--overwrite"]) == 0
    np.testing.assert_array_equal(np.load(out), cc_max)


def test_cli_data_problem_is_one_line(synthetic_dir, tmp_path, caplog):
    args = ["--data_dir", str(synthetic_dir), "--subject", "3",
            "--out", str(tmp_path / "x.npy")]
    assert noise_ceilings.main(args) == 1
    assert "UTS03" in caplog.text and not (tmp_path / "x.npy").exists()


def test_get_noise_ceiling_computes_once_then_loads(synthetic_dir, tmp_path, caplog):
    path = tmp_path / "UTS01.npy"
    with caplog.at_level(logging.INFO):
        first = noise_ceilings.get_noise_ceiling(Dataset(synthetic_dir), 1, path)
    assert "computing the noise ceiling" in caplog.text and path.exists()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = noise_ceilings.get_noise_ceiling(Dataset(synthetic_dir), 1, path)
    assert "computing" not in caplog.text
    np.testing.assert_array_equal(first, second)


def test_noise_ceiling_of_another_subject_is_refused(synthetic_dir, tmp_path):
    path = tmp_path / "UTS02.npy"
    dataset = Dataset(synthetic_dir)
    noise_ceilings.get_noise_ceiling(dataset, 2, path)
    with pytest.raises(DatasetError, match="another subject"):
        noise_ceilings.get_noise_ceiling(dataset, 1, path)
    path.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="unreadable noise-ceiling file"):
        noise_ceilings.load_noise_ceiling(path)


def test_default_nc_path_is_in_subject_ncs():
    assert noise_ceilings.default_nc_path("3") == noise_ceilings.NC_DIR / "UTS03.npy"
    repository = Path(noise_ceilings.__file__).resolve().parent / "subject_NCs"
    assert (repository / "README.md").exists()


# ----------------------------------------------------------------------------- damaged inputs

def _repeats_with_fewer_voxels(data_dir, n_voxels=100):
    """Cut UTS01's test-story repeats to their first ``n_voxels`` voxels (``data`` keeps all)."""
    repeats = damage.read_hdf5(data_dir, 1, data_utils.TEST_STORY, "individual_repeats")
    damage.replace_hdf5(data_dir, 1, data_utils.TEST_STORY, "individual_repeats",
                        repeats[:, :, :n_voxels])
    return hdf5_io.hdf5_shape(Dataset(data_dir).response_path(1, data_utils.TEST_STORY))[1]


def test_repeats_with_other_voxel_count_are_refused_before_anything_is_saved(dataset_copy,
                                                                             tmp_path):
    """150-of-200-voxel repeats: no ceiling computed or saved, the message has both counts."""
    n_data = _repeats_with_fewer_voxels(dataset_copy)
    path = tmp_path / "ncs" / "UTS01.npy"
    with pytest.raises(DatasetError) as info:
        noise_ceilings.get_noise_ceiling(Dataset(dataset_copy), 1, path)
    message = str(info.value)
    assert f"{data_utils.TEST_STORY}.hf5" in message and "100 voxels" in message
    assert f"{n_data}" in message
    assert not path.exists() and not path.with_suffix(".json").exists()
    with pytest.raises(DatasetError, match="100 voxels"):
        noise_ceilings.compute_subject_noise_ceiling(Dataset(dataset_copy), 1)


def test_cli_refuses_repeats_with_other_voxel_count(dataset_copy, tmp_path, caplog):
    _repeats_with_fewer_voxels(dataset_copy)
    out = tmp_path / "UTS01.npy"
    assert noise_ceilings.main(["--data_dir", str(dataset_copy), "--subject", "1",
                                "--out", str(out)]) == 1
    assert "'individual_repeats' has 100 voxels" in caplog.text and not out.exists()


def test_get_noise_ceiling_checks_the_runs_voxel_count(synthetic_dir, tmp_path):
    """n_voxels is the run's voxel count: a ceiling of another size is refused, loaded or not."""
    path = tmp_path / "UTS01.npy"
    dataset = Dataset(synthetic_dir)
    n_data = hdf5_io.hdf5_shape(dataset.response_path(1, "souls"))[1]
    with pytest.raises(DatasetError) as info:
        noise_ceilings.get_noise_ceiling(dataset, 1, path, n_voxels=n_data - 7)
    assert f"{n_data} voxels" in str(info.value) and f"{n_data - 7}" in str(info.value)
    assert str(path) in str(info.value) and not path.exists()
    cc_max = noise_ceilings.get_noise_ceiling(dataset, 1, path, n_voxels=n_data)
    assert cc_max.shape == (n_data,) and path.exists()
    with pytest.raises(DatasetError, match=f"{path}: {n_data} voxels.*{n_data + 3}"):
        noise_ceilings.get_noise_ceiling(dataset, 1, path, n_voxels=n_data + 3)


def test_nan_ceilings_are_counted_and_read_as_zero(tmp_path, caplog):
    path = tmp_path / "UTS01.npy"
    values = np.array([0.5, np.nan, 0.7, np.nan, np.inf, 0.1])
    np.save(path, values)
    with caplog.at_level(logging.WARNING):
        cc_max = noise_ceilings.load_noise_ceiling(path, 6)
    np.testing.assert_array_equal(cc_max, [0.5, 0.0, 0.7, 0.0, 0.0, 0.1])
    assert cc_max.dtype == np.float64
    assert f"{path}: 3 of 6 noise ceilings are NaN or infinite" in caplog.text
    caplog.clear()
    np.save(path, np.array([0.5, 0.2]))
    with caplog.at_level(logging.WARNING):
        noise_ceilings.load_noise_ceiling(path)
    assert caplog.text == ""


def test_ceiling_voxels_selects_above_threshold():
    nc = np.array([0.1, 0.5, 0.35, 0.9, 0.35])
    np.testing.assert_array_equal(noise_ceilings.ceiling_voxels(nc, 0.35, "nc.npy"),
                                  [False, True, False, True, False])


@pytest.mark.parametrize("nc,threshold,largest", [(np.zeros(20), 0.35, "0"),
                                                  (np.full(5, 0.3), 0.4, "0.3")])
def test_ceiling_voxels_refuses_an_empty_selection(tmp_path, nc, threshold, largest):
    """An all-zero ceiling file (or a threshold above every ceiling) is one line, not NaNs."""
    path = tmp_path / "UTS01.npy"
    np.save(path, nc)
    loaded = noise_ceilings.load_noise_ceiling(path)
    with pytest.raises(DatasetError) as info:
        noise_ceilings.ceiling_voxels(loaded, threshold, path)
    assert str(info.value).startswith(
        f"{path}: no voxel has a noise ceiling above {threshold} (max {largest});")


# ----------------------------------------------------------------------------- what made a ceiling

def test_a_ceiling_of_another_datasets_responses_is_refused_naming_both(synthetic_dir, tmp_path):
    """The same subject and voxel count, other responses (another dataset, or the test story
    replaced): the ceiling's record says what it was made from, and the run stops."""
    other = tmp_path / "other"
    synthetic_data.generate(other, seed=9, subjects=(1,), n_train_stories=2, train_trs=44,
                            test_trs=311, n_voxels=120, n_words=10)
    path = tmp_path / "UTS01.npy"
    made = noise_ceilings.get_noise_ceiling(Dataset(other), 1, path)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["responses"]["files"] == [str(Dataset(other).response_path(
        1, data_utils.TEST_STORY).resolve())]
    assert record["ceiling_sha256"] == run_utils.content_hash(path)
    np.testing.assert_array_equal(noise_ceilings.get_noise_ceiling(Dataset(other), 1, path),
                                  made)  # its own dataset: used
    ours = Dataset(synthetic_dir).response_path(1, data_utils.TEST_STORY)
    with pytest.raises(DatasetError) as refused:
        noise_ceilings.get_noise_ceiling(Dataset(synthetic_dir), 1, path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and str(ours.resolve()) in message
    assert "was computed from" in message and "--nc_path" in message


def test_a_ceiling_without_a_record_is_used_with_a_warning(synthetic_dir, tmp_path, caplog):
    """The authors' published files come without our record: used, with a warning; a record
    left beside a replaced ceiling is not taken for its own."""
    path = tmp_path / "UTS01.npy"
    dataset = Dataset(synthetic_dir)
    computed = noise_ceilings.get_noise_ceiling(dataset, 1, path)
    np.save(path, computed * 0.5)  # replaced after its record was written
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(noise_ceilings.get_noise_ceiling(dataset, 1, path),
                                      computed * 0.5)
    assert "no record of the responses it was computed from" in caplog.text
    path.with_suffix(".json").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        noise_ceilings.get_noise_ceiling(dataset, 1, path)
    assert "cannot be checked" in caplog.text


@pytest.mark.parametrize("values", [[0.5, 1.2, 0.3], [0.5, -0.2, 0.3]])
def test_ceilings_outside_zero_one_are_refused(tmp_path, values):
    path = tmp_path / "UTS01.npy"
    np.save(path, np.array(values))
    with pytest.raises(DatasetError, match=r"1 of 3 noise ceilings lie outside \[0, 1\]"):
        noise_ceilings.load_noise_ceiling(path, 3)
