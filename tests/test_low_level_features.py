"""Low-level features (low_level_features.py) checked against the synthetic dataset's truth."""

import collections
import re
import shutil

import h5py
import numpy as np
import pytest
import soundfile as sf

import data_utils
import eval_utils
import low_level_features as llf
import run_utils
import synthetic_data
from data_utils import Dataset
from run_utils import DatasetError

STORY = "howtodraw"  # a training story written at 16 kHz mono: no resampling, fast


@pytest.fixture(scope="module", name="dataset")
def dataset_fixture(synthetic_dir):
    """The synthetic dataset (read-only) on the simulated respdict grid."""
    return Dataset(synthetic_dir)


@pytest.fixture(scope="module")
def truth(dataset):
    return dataset.truth()


@pytest.fixture(scope="module")
def vocabularies(dataset, truth):
    return llf.build_vocabularies(dataset, train_stories(truth))


@pytest.fixture()
def textgrids_only(synthetic_dir, tmp_path):
    """The root of a copy of the dataset with respdict.json and the TextGrids but no audio or
    responses."""
    copy = tmp_path / "ds003020"
    shutil.copytree(synthetic_dir / "derivative" / "TextGrids", copy / "derivative" / "TextGrids")
    shutil.copy(synthetic_dir / "derivative" / "respdict.json", copy / "derivative")
    return copy


def train_stories(truth):
    return [story for story, info in truth["stories"].items() if info["split"] == "train"]


def true_phones(dataset, truth, story):
    """Phones of a story from the word tier and the lexicon (not from the phone tier):
    list of (start, end, phone without stress digit, word token number)."""
    phones = []
    for token, (start, _, word) in enumerate(dataset.words(story)):
        info = truth["words"][word]
        ends = start + np.cumsum(info["durations"])
        for phone, begin, end in zip(info["phones"], np.r_[start, ends[:-1]], ends):
            phones.append((begin, end, re.sub(r"[012]$", "", phone), token))
    return phones


def true_ngrams(phones, n):
    """(start, end, "A_B[_C]") of each run of n phones of one word token."""
    return [(run[0][0], run[-1][1], "_".join(p[2] for p in run))
            for run in (phones[i:i + n] for i in range(len(phones) - n + 1))
            if len({p[3] for p in run}) == 1]


def expected_counts(events, columns, centres):
    """Lanczos-downsampled indicators of (start, end, label) events at their midpoints."""
    values = np.zeros((len(events), len(columns)))
    times = np.zeros(len(events))
    for row, (start, end, label) in enumerate(events):
        if label in columns:
            values[row, columns.index(label)] = 1.0
        times[row] = (start + end) / 2
    return eval_utils.lanczos_interp(values, times, centres)


# ----------------------------------------------------------------------------- tables and names

def test_articulation_table():
    assert len(llf.ARPABET_PHONES) == 39 == len(set(llf.ARPABET_PHONES))
    assert set(llf.ARTICULATION) == set(llf.ARPABET_PHONES)
    used = set().union(*llf.ARTICULATION.values())
    assert used == set(llf.ARTICULATORY_FEATURES)
    assert llf.ARTICULATION["P"] == {"bilabial", "stop", "voiceless"}
    assert {"nasal", "bilabial", "voiced"} <= llf.ARTICULATION["M"]
    assert {"vowel", "front", "high"} <= llf.ARTICULATION["IY"]
    assert {"postalveolar", "affricate", "voiced"} <= llf.ARTICULATION["JH"]
    places = {"bilabial", "labiodental", "dental", "alveolar", "postalveolar", "palatal", "velar",
              "glottal"}
    for phone, features in llf.ARTICULATION.items():
        assert len(features & {"voiced", "voiceless"}) == 1, phone
        if "vowel" in features:
            assert features & {"high", "mid", "low"} and features & {"front", "central", "back"}
            assert not features & places, phone
        else:
            assert features & places, phone


def test_normalise_phone_strips_stress(tmp_path):
    assert llf.normalise_phone("AH0", tmp_path) == "AH"
    assert llf.normalise_phone(" ih1 ", tmp_path) == "IH"
    assert llf.normalise_phone("ZH", tmp_path) == "ZH"
    with pytest.raises(DatasetError, match=r"souls\.TextGrid.*'QX1'"):
        llf.normalise_phone("QX1", tmp_path / "souls.TextGrid")


def test_feature_names_and_bad_requests(dataset, vocabularies):
    assert llf.feature_names("phonemes") == list(llf.ARPABET_PHONES)
    assert len(llf.feature_names("powspec")) == llf.N_MELS
    assert llf.feature_names("diphones", vocabularies) == vocabularies["diphones"]
    with pytest.raises(ValueError, match="powspec, phonemes, diphones, triphones, articulation"):
        llf.story_features(dataset, STORY, ["phonemes", "mfcc"])
    with pytest.raises(ValueError, match="triphones needs a vocabulary"):
        llf.story_features(dataset, STORY, ["triphones"], {"diphones": ["AH_B"]})


# ----------------------------------------------------------------------------- phone features

def test_shapes_and_dtypes(dataset, vocabularies):
    features = llf.story_features(dataset, STORY, llf.FEATURE_SETS, vocabularies)
    n_trs = len(dataset.tr_times(STORY))
    assert list(features) == list(llf.FEATURE_SETS)
    for name, values in features.items():
        assert values.dtype == np.float32
        assert values.shape == (n_trs, len(llf.feature_names(name, vocabularies)))
    assert features["phonemes"].shape[1] == 39
    assert features["articulation"].shape[1] == len(llf.ARTICULATORY_FEATURES)


def test_story_phones_match_the_lexicon(dataset, truth):
    raw = [label for _, _, label in dataset.phones(STORY)]
    assert any(label[-1].isdigit() for label in raw)
    phones = llf.story_phones(dataset, STORY)
    expected = true_phones(dataset, truth, STORY)
    assert [p[2] for p in phones] == [p[2] for p in expected]
    assert [p[3] for p in phones] == [p[3] for p in expected]
    np.testing.assert_allclose([p[:2] for p in phones], [p[:2] for p in expected], atol=1e-6)


def test_phoneme_counts(dataset, truth):
    features = llf.story_features(dataset, STORY, "phonemes")["phonemes"]
    events = [p[:3] for p in true_phones(dataset, truth, STORY)]
    centres = dataset.tr_times(STORY)
    np.testing.assert_allclose(features, expected_counts(events, list(llf.ARPABET_PHONES), centres),
                               atol=1e-5)
    # Lanczos weights of one event sum to 0.994..1 over the TRs: totals are counts.
    counts = collections.Counter(phone for _, _, phone in events)
    totals = features.sum(axis=0)
    expected = np.array([counts[phone] for phone in llf.ARPABET_PHONES], dtype=float)
    assert np.all(totals <= expected + 1e-3) and np.all(totals >= 0.99 * expected - 1e-3)
    # Per TR: close to the number of phone midpoints inside the TR, best at lag 0.
    starts = dataset.trfile(STORY).tr_starts()
    binned = np.histogram([(s + e) / 2 for s, e, _ in events],
                          np.r_[starts, starts[-1] + data_utils.TR_SECONDS])[0]
    per_tr = features.sum(axis=1)
    lags = {lag: np.corrcoef(np.roll(per_tr, lag)[10:-5], binned[10:-5])[0, 1]
            for lag in (-1, 0, 1)}
    assert lags[0] > 0.8 and lags[0] > max(lags[-1], lags[1])


def test_single_event_lands_in_its_tr():
    centres = np.arange(60) * 2.0 - 9.0
    values = np.eye(3)
    times = np.array([centres[17], centres[40] + 0.6, centres[5] - 0.6])
    grid = llf.to_tr_grid(values, times, centres)
    assert grid.dtype == np.float32
    assert list(grid.argmax(axis=0)) == [17, 40, 5]
    assert grid[17, 0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(grid.sum(axis=0), 1.0, atol=0.01)


def test_to_tr_grid_equals_lanczos_on_irregular_trs():
    rng = np.random.default_rng(0)
    centres = np.cumsum(rng.uniform(1.9, 2.1, 300)) - 9.0
    times = np.sort(rng.uniform(-5, centres[-1], 4000))
    values = rng.standard_normal((4000, 3))
    np.testing.assert_allclose(llf.to_tr_grid(values, times, centres),
                               eval_utils.lanczos_interp(values, times, centres), atol=1e-4)


@pytest.mark.parametrize("name", ["diphones", "triphones"])
def test_ngram_counts(dataset, truth, vocabularies, name):
    n = llf.NGRAM_ORDER[name]
    expected_vocabulary = sorted({gram for story in train_stories(truth) for _, _, gram in
                                  true_ngrams(true_phones(dataset, truth, story), n)})
    assert vocabularies[name] == expected_vocabulary
    vocabulary = expected_vocabulary[::2]  # the other n-grams must be dropped
    features = llf.story_features(dataset, STORY, name, {name: vocabulary})[name]
    events = true_ngrams(true_phones(dataset, truth, STORY), n)
    assert any(gram not in vocabulary for _, _, gram in events)
    expected = expected_counts(events, vocabulary, dataset.tr_times(STORY))
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_vocabulary_max_size(dataset, truth):
    stories = train_stories(truth)[:2]
    counts = collections.Counter(gram for story in stories for _, _, gram in
                                 true_ngrams(true_phones(dataset, truth, story), 2))
    ranked = sorted(counts, key=lambda gram: (-counts[gram], gram))
    vocabulary = llf.build_vocabularies(dataset, stories, ["diphones"], max_size=7)
    assert vocabulary == {"diphones": sorted(ranked[:7])}


def test_articulation_is_phonemes_through_the_table(dataset):
    features = llf.story_features(dataset, STORY, ["phonemes", "articulation"])
    table = np.array([[feature in llf.ARTICULATION[phone] for feature in llf.ARTICULATORY_FEATURES]
                      for phone in llf.ARPABET_PHONES], dtype=float)
    np.testing.assert_allclose(features["articulation"], features["phonemes"] @ table, atol=1e-4)


def test_ngrams_stay_inside_words(textgrids_only):
    phones = [(0.0, 0.1, "B"), (0.1, 0.2, "AH1"), (0.2, 0.3, "T"), (0.3, 0.4, "S"),
              (0.4, 0.5, "sp"), (0.5, 0.6, "K"), (0.6, 0.7, "AE1"), (0.7, 0.8, "T")]
    words = [(0.0, 0.3, "but"), (0.3, 0.5, ""), (0.5, 0.8, "cat")]
    synthetic_data.write_textgrid(textgrids_only / "derivative" / "TextGrids" / "tiny.TextGrid",
                                  {"phone": phones, "word": words}, 0.8)
    found = llf.story_phones(Dataset(textgrids_only), "tiny")
    assert [(p[2], p[3]) for p in found] == [("B", 0), ("AH", 0), ("T", 0), ("S", -1),
                                             ("K", 1), ("AE", 1), ("T", 1)]
    assert llf.phone_ngrams(found, 2) == [(0.0, 0.2, "B_AH"), (0.1, 0.3, "AH_T"),
                                          (0.5, 0.7, "K_AE"), (0.6, 0.8, "AE_T")]
    assert [gram for _, _, gram in llf.phone_ngrams(found, 3)] == ["B_AH_T", "K_AE_T"]


def test_unknown_phone_label_names_the_file(textgrids_only):
    path = textgrids_only / "derivative" / "TextGrids" / f"{STORY}.TextGrid"
    text = path.read_text(encoding="utf-8-sig")
    path.write_text(re.sub(r'text = "[A-Z]+[012]" ', 'text = "QX1" ', text, count=1))
    with pytest.raises(DatasetError, match=rf"{STORY}\.TextGrid.*'QX1'"):
        llf.story_features(Dataset(textgrids_only), STORY, ["phonemes"])


def test_missing_files_raise_dataset_errors(textgrids_only):
    with pytest.raises(DatasetError, match="stimulus WAV"):
        llf.story_features(Dataset(textgrids_only), STORY, ["powspec"])
    (textgrids_only / "derivative" / "TextGrids" / f"{STORY}.TextGrid").unlink()
    with pytest.raises(DatasetError, match="TextGrid"):
        llf.story_features(Dataset(textgrids_only), STORY, ["phonemes"])


# ----------------------------------------------------------------------------- power spectrum

def test_power_spectrum_of_a_pure_tone():
    rate, frequency = 16000, 1250.0
    tone = np.sin(2 * np.pi * frequency * np.arange(rate) / rate)
    spectrum, times = llf.power_spectrum(tone, rate)
    assert spectrum.shape == (len(times), llf.N_MELS) and spectrum.dtype == np.float32
    np.testing.assert_allclose(np.diff(times), 0.01)
    assert times[0] == 0.0
    edges = llf.band_edges(rate)
    loudest = int(np.argmax(spectrum[5:-5].mean(axis=0)))
    assert edges[loudest] < frequency < edges[loudest + 2]
    assert loudest == int(np.argmin(np.abs(edges[1:-1] - frequency)))
    # A burst from 0.5 s: frame times are window centres (25 ms windows).
    burst = np.where(np.arange(rate) >= rate // 2, tone, 0.0)
    spectrum, times = llf.power_spectrum(burst, rate)
    band = spectrum[:, loudest]
    assert np.all(band[times <= 0.48] < band.max() - 40)
    assert np.all(band[(times >= 0.52) & (times <= 0.98)] > band.max() - 1)


def test_power_spectrum_frames_hear_the_phones(dataset, truth):
    """At the midpoint of each vowel-length phone, the loudest band is the one peaking nearest
    the phone's first (louder) frequency."""
    spectrum, times = llf.power_spectrum(dataset.stimulus(STORY))
    peaks = llf.band_edges()[1:-1]
    hits = [np.argmax(spectrum[np.argmin(np.abs(times - (start + end) / 2))])
            == np.argmin(np.abs(peaks - truth["phones"][phone][0]))
            for start, end, phone, _ in true_phones(dataset, truth, STORY)
            if end - start >= 0.09]
    assert len(hits) > 50 and np.mean(hits) > 0.9


def test_powspec_follows_the_audio_energy(dataset):
    """The planted acoustic signal is the RMS energy per TR; the mean log power per TR follows
    it (moderately: it also counts pauses) and best without a lag."""
    features = llf.story_features(dataset, STORY, ["powspec"])["powspec"]
    audio = dataset.stimulus(STORY)
    starts = dataset.trfile(STORY).tr_starts()
    rows = np.arange(10, len(features) - 5)
    log_rms = np.log([np.sqrt(np.mean(audio[int(s * 16000):int((s + 2) * 16000)] ** 2))
                      for s in starts[rows]])
    mean_db = features.mean(axis=1)
    lags = {lag: np.corrcoef(mean_db[rows + lag], log_rms)[0, 1] for lag in (-2, -1, 0, 1, 2)}
    assert lags[0] > 0.45 and lags[0] > max(value for lag, value in lags.items() if lag)


# ----------------------------------------------------------------------------- cache

def test_cache_is_read_back(dataset, vocabularies, tmp_path, monkeypatch):
    first = llf.story_features(dataset, STORY, llf.FEATURE_SETS, vocabularies,
                               cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.hf5"))
    assert len(files) == len(llf.FEATURE_SETS)
    with h5py.File(next(f for f in files if "_phonemes_" in f.name), "r") as handle:
        assert '"tr_source": "respdict"' in handle.attrs["settings"]

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(llf, "compute_features", fail)
    second = llf.story_features(dataset, STORY, llf.FEATURE_SETS, vocabularies,
                                cache_dir=tmp_path)
    for name in llf.FEATURE_SETS:
        np.testing.assert_array_equal(first[name], second[name])
    smaller = {"diphones": vocabularies["diphones"][1:]}
    with pytest.raises(AssertionError, match="recomputed"):
        llf.story_features(dataset, STORY, ["diphones"], smaller, cache_dir=tmp_path)


def test_cache_follows_replaced_source_files(dataset_copy, vocabularies, tmp_path):
    names = ["powspec", "phonemes"]
    copy = Dataset(dataset_copy)
    before = llf.story_features(copy, STORY, names, cache_dir=tmp_path / "cache")
    wav = copy.stimulus_path(STORY)
    audio, rate = sf.read(wav, dtype="float32")
    sf.write(wav, np.ascontiguousarray(audio[::-1]), rate)
    textgrid = copy.textgrid_path(STORY)
    textgrid.write_text(textgrid.read_text().replace('"AH0"', '"IY1"'))
    cached = llf.story_features(copy, STORY, names, cache_dir=tmp_path / "cache")
    fresh = llf.story_features(copy, STORY, names)
    for name in names:
        np.testing.assert_array_equal(cached[name], fresh[name])
        assert not np.array_equal(cached[name], before[name])


def test_cache_key_covers_the_settings(dataset, synthetic_dir, vocabularies, monkeypatch):
    centres = dataset.tr_times(STORY)

    def key(name="diphones", vocabulary=vocabularies["diphones"], trs=centres, source="respdict"):
        settings = llf.cache_settings(Dataset(synthetic_dir, source), STORY, name, trs, vocabulary)
        return run_utils.cache_path("cache", f"{STORY}_{name}", settings)[0]

    assert key() == key() and key().name.startswith(f"{STORY}_diphones_")
    assert key(vocabulary=vocabularies["diphones"][:-1]) != key()
    assert key(trs=centres + 0.01) != key()
    assert key(source="report") != key()
    powspec = key("powspec", None)
    monkeypatch.setattr(llf, "N_MELS", 40)
    assert key("powspec", None) != powspec


def test_word_vector_text_files(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text(", 0.5 1 -2\nThe 1 2 3\n. . . 4 5 6\nthe 7 8 9\n", encoding="utf-8")
    vectors = llf.load_word_vectors(glove)
    assert set(vectors) == {",", "the", ". . ."}
    np.testing.assert_array_equal(vectors["the"], [1, 2, 3])  # the first entry wins
    np.testing.assert_array_equal(vectors[". . ."], [4, 5, 6])
    assert vectors["the"].dtype == np.float32
    word2vec = tmp_path / "word2vec.txt"
    word2vec.write_text("2 2\nhello 0.1 0.2\nworld 0.3 0.4\n", encoding="utf-8")
    assert set(llf.load_word_vectors(word2vec)) == {"hello", "world"}
    short = tmp_path / "short.txt"
    short.write_text("a 1 2 3\nb 1 2\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"short.txt:2: 2 values, expected 3"):
        llf.load_word_vectors(short)
    text = tmp_path / "text.txt"
    text.write_text("a 1 2\nb one 2\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"text.txt:2: expected"):
        llf.load_word_vectors(text)
    with pytest.raises(DatasetError, match="no such word-vector file"):
        llf.load_word_vectors(tmp_path / "missing.txt")
