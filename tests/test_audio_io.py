"""Audio files read by audio_io as the models take them (float32 mono, resampled), and the
zero-padded windows cut from them."""

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf

import audio_io


def _write_wav(folder, audio, rate, subtype="PCM_16"):
    path = folder / "souls.wav"
    sf.write(path, audio, rate, subtype=subtype)
    return path


def test_stereo_44k_is_downmixed_and_resampled(tmp_path):
    rate, seconds = 44100, 2.0
    t = np.arange(int(rate * seconds)) / rate
    left, right = 0.6 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 440 * t)
    path = _write_wav(tmp_path, np.stack([left, right], axis=1), rate, "FLOAT")
    audio = audio_io.read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == int(seconds * 16000)
    reference = scipy.signal.resample_poly((left + right) / 2, 160, 441)
    # the numbers of librosa.resample's default (soxr_hq), without its start-up cost
    np.testing.assert_allclose(audio, librosa.resample(
        ((left + right) / 2).astype(np.float32), orig_sr=rate, target_sr=16000), atol=1e-6)
    middle = slice(1000, -1000)
    np.testing.assert_allclose(audio[middle], reference[middle], atol=2e-3)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.fft.rfftfreq(len(audio), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=1)


@pytest.mark.parametrize("rate,channels", [(16000, 1), (22050, 1), (48000, 2), (8000, 6)])
def test_any_rate_and_channel_count(tmp_path, rate, channels):
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (rate, channels))
    path = _write_wav(tmp_path, audio, rate, "FLOAT")
    loaded = audio_io.read_audio(path, sampling_rate=16000)
    assert loaded.dtype == np.float32 and loaded.shape == (16000,)
    if rate == 16000:
        np.testing.assert_allclose(loaded, audio.mean(axis=1), atol=1e-6)


def test_slice_windows_against_loop():
    audio = np.arange(20, dtype=np.float32)
    starts = np.array([-3, 0, 15, 18])
    out = audio_io.slice_windows(audio, starts, 5)
    for row, start in zip(out, starts):
        expected = [audio[s] if 0 <= s < len(audio) else 0 for s in range(start, start + 5)]
        np.testing.assert_array_equal(row, expected)
    assert out.dtype == np.float32
