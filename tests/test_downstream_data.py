"""Downstream dataset readers: TIMIT layout, NIST SPHERE audio, the 61 -> 39 phone map."""

import numpy as np
import pytest
import soundfile as sf

import audio_io
import downstream_data
from run_utils import DatasetError

# Lee & Hon (1989), table of folded phones, written out independently of the module's dict.
FOLDED = [("aa", "ao"), ("ah", "ax", "ax-h"), ("er", "axr"), ("hh", "hv"), ("ih", "ix"),
          ("l", "el"), ("m", "em"), ("n", "en", "nx"), ("ng", "eng"), ("sh", "zh"), ("uw", "ux"),
          ("sil", "pcl", "tcl", "kcl", "bcl", "dcl", "gcl", "h#", "pau", "epi")]
TIMIT_61 = ("iy ih eh ey ae aa aw ay ah ao oy ow uh uw ux er ax ix axr ax-h jh ch b d g p t k "
            "dx s sh z zh f th v dh m n ng em nx en eng l r w y hh hv el bcl dcl gcl pcl tcl kcl "
            "q pau epi h#").split()


def test_phone_map_is_lee_and_hon():
    assert len(TIMIT_61) == 61 and set(downstream_data.TIMIT_61_TO_39) == set(TIMIT_61)
    assert len(downstream_data.TIMIT_39) == 39
    assert downstream_data.TIMIT_61_TO_39["q"] is None
    folded = {phone for group in FOLDED for phone in group[1:]}
    for group in FOLDED:
        for phone in group[1:]:
            assert downstream_data.TIMIT_61_TO_39[phone] == group[0]
    for phone in set(TIMIT_61) - folded - {"q"}:
        assert downstream_data.TIMIT_61_TO_39[phone] == phone


def _write_timit(root, upper=True, under_data=False, sphere=True):
    rng = np.random.default_rng(0)
    base = root / "data" if under_data else root
    case = str.upper if upper else str.lower
    utterances = {}
    for split in ("TRAIN", "TEST"):
        for speaker, name in (("FCJF0", "SA1"), ("MDAB0", "SX9"), ("MDAB0", "SI1039")):
            folder = base / case(split) / case("DR1") / case(speaker)
            folder.mkdir(parents=True, exist_ok=True)
            audio = rng.uniform(-0.5, 0.5, 8000)
            sf.write(folder / case(f"{name}.wav"), audio, 16000, subtype="PCM_16",
                     format="NIST" if sphere else "WAV")
            (folder / case(f"{name}.phn")).write_text("0 2000 h#\n2000 4000 ix\n4000 5000 q\n"
                                                       "5000 8000 zh\n")
            utterances[(split, speaker, name)] = audio
    return utterances


@pytest.mark.parametrize("upper,under_data,sphere", [(True, False, True), (False, True, False)])
def test_timit_tree_in_any_case(tmp_path, upper, under_data, sphere):
    written = _write_timit(tmp_path, upper, under_data, sphere)
    test = downstream_data.timit_utterances(tmp_path, "TEST")
    assert [(u["speaker"], u["utterance"], u["sentence_type"]) for u in test] == [
        ("FCJF0", "SA1", "SA"), ("MDAB0", "SI1039", "SI"), ("MDAB0", "SX9", "SX")]
    assert all(u["region"] == "DR1" for u in test)
    sf.write(test[0]["wav"].with_name(test[0]["wav"].name + ".wav"), np.zeros(10), 16000)
    assert len(downstream_data.timit_utterances(tmp_path, "TEST")) == 3  # RIFF copies skipped
    header = test[0]["wav"].read_bytes()[:7]
    assert (header == b"NIST_1A") == sphere
    audio = audio_io.read_audio(test[0]["wav"])
    np.testing.assert_allclose(audio, written[("TEST", "FCJF0", "SA1")], atol=1 / 2 ** 15)
    classes = downstream_data.timit_phone_classes(
        downstream_data.read_timit_labels(test[0]["phn"]))
    assert classes == {"sil", "ih", "sh"}


def test_timit_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="TRAIN/ and TEST/"):
        downstream_data.timit_utterances(tmp_path, "TEST")
    _write_timit(tmp_path)
    phn = next((tmp_path / "TEST").rglob("SA1.PHN"))
    phn.write_text("0 100 h#\n100 zz\n")
    with pytest.raises(DatasetError, match=r"SA1.PHN:2"):
        downstream_data.read_timit_labels(phn)
    phn.write_text("0 100 xx\n")
    with pytest.raises(DatasetError, match="not one of the 61 TIMIT phones"):
        downstream_data.timit_phone_classes(downstream_data.read_timit_labels(phn), phn)
    wav = next((tmp_path / "TEST").rglob("SA1.WAV"))
    wav.write_bytes(b"NIST_1A\ngarbage")
    with pytest.raises(DatasetError, match="SA1.WAV: unreadable audio"):
        audio_io.read_audio(wav)
    phn.unlink()
    with pytest.raises(DatasetError, match="no .PHN file"):
        downstream_data.timit_utterances(tmp_path, "TEST")
