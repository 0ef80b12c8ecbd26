"""The synthetic language that the synthetic datasets are spoken in: words of 2-4 ARPAbet
phones (or anagram families of them), each phone a sound of two harmonics, each word with a
planted semantic embedding; a story spoken in it and the haemodynamic lag of the planted
responses. Used by ``synthetic_data.py`` (the ds003020 copy), ``synthetic_narratives.py``
(the Narratives copy) and ``synthetic_downstream.py`` (the downstream datasets)."""

import zlib

import numpy as np
import soundfile as sf

import run_utils

VOWELS = ("AA", "AE", "AH", "EH", "IH", "IY", "OW", "UW")
CONSONANTS = ("B", "D", "F", "G", "K", "L", "M", "N", "P", "R", "S", "SH", "T", "Z")
NOISE_TOKENS = ("{BR}", "{LG}", "{NS}")
AUDIO_TAIL_S = 9.0  # speech ends this long before the audio does (a story's closing silence;
#                     in ds003020 with the last response row's TR, 2 * respdict - 30 s)
HRF_DELAYS = (2, 3, 4)  # TRs
HRF_WEIGHTS = (0.45, 0.35, 0.2)


def named_rng(seed, name):
    """A random stream for one named part, independent of how many other parts exist."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# ----------------------------------------------------------------------------- stimulus

def make_lexicon(seed, n_words, semantic_dim, family_size=1):
    """Phone frequencies and words (phones, phone durations, semantic embedding): independent
    words, or anagram families of ``family_size`` words."""
    if not 1 <= family_size <= 6:
        raise run_utils.UsageError("family_size must be 1..6 (3 phones have 6 orders)")
    rng = named_rng(seed, "lexicon")
    phones = {}
    low = rng.permutation(np.linspace(220.0, 900.0, len(VOWELS) + len(CONSONANTS)))
    high = rng.permutation(np.linspace(1100.0, 3600.0, len(VOWELS) + len(CONSONANTS)))
    for phone, f1, f2 in zip(VOWELS + CONSONANTS, low, high):
        phones[phone] = (round(float(f1), 2), round(float(f2), 2))
    words = {}
    while len(words) < n_words:
        if family_size == 1:
            _add_word(words, rng, semantic_dim)
        else:
            _add_family(words, rng, semantic_dim, min(family_size, n_words - len(words)))
    return {"phones": phones, "words": words}


def _add_word(words, rng, semantic_dim):
    """A word of 2-4 phones (CV, CVC, VC or CVCV) with its own embedding, unless drawn before."""
    pattern = [("C", "V"), ("C", "V", "C"), ("V", "C"), ("C", "V", "C", "V")][rng.integers(4)]
    sequence, stressed = [], False
    for kind in pattern:
        if kind == "V":
            sequence.append(f"{VOWELS[rng.integers(len(VOWELS))]}{0 if stressed else 1}")
            stressed = True
        else:
            sequence.append(CONSONANTS[rng.integers(len(CONSONANTS))])
    label = "".join(p.rstrip("012").lower() for p in sequence)
    if label in words:
        return
    durations = [round(float(rng.uniform(0.09, 0.15) if p[-1].isdigit()
                             else rng.uniform(0.05, 0.09)), 3) for p in sequence]
    words[label] = {"phones": sequence, "durations": durations,
                    "embedding": rng.standard_normal(semantic_dim).round(4).tolist()}


def _add_family(words, rng, semantic_dim, size):
    """An anagram family: one set of 3-4 phones spoken in ``size`` orders. The embeddings are
    centred within the family, so which sounds a word has says nothing of its meaning."""
    n_phones = int(rng.integers(3, 5))
    vowels = list(rng.choice(VOWELS, 1 if n_phones == 3 else 2, replace=False))
    sounds = vowels + list(rng.choice(CONSONANTS, n_phones - len(vowels), replace=False))
    durations = {p: round(float(rng.uniform(0.09, 0.15) if p in vowels
                                else rng.uniform(0.05, 0.09)), 3) for p in sounds}
    family = {}
    while len(family) < size:
        order = [str(p) for p in rng.permutation(sounds)]
        family.setdefault("".join(order).lower(), order)
    if any(label in words for label in family):
        return
    embeddings = rng.standard_normal((size, semantic_dim))
    if size > 1:
        embeddings = (embeddings - embeddings.mean(axis=0)) * np.sqrt(size / (size - 1))
    for (label, order), embedding in zip(family.items(), embeddings):
        first_vowel = next(p for p in order if p in vowels)
        words[label] = {"phones": [p + ("1" if p == first_vowel else "0") if p in vowels else p
                                   for p in order],
                        "durations": [durations[p] for p in order],
                        "embedding": embedding.round(4).tolist()}


def phone_sound(frequencies, duration, rate, rng, pitch=1.0):
    """A phone: two harmonics at ``frequencies`` (Hz, times ``pitch``) with 10 ms ramps."""
    t = np.arange(int(round(duration * rate))) / rate
    f1, f2 = (pitch * f for f in frequencies)
    sound = (np.sin(2 * np.pi * f1 * t + rng.uniform(0, 2 * np.pi))
             + 0.5 * np.sin(2 * np.pi * f2 * t))
    ramp = min(len(t) // 2, int(0.01 * rate))
    if ramp:
        envelope = np.ones(len(t))
        envelope[:ramp] = np.sin(np.linspace(0, np.pi / 2, ramp)) ** 2
        envelope[-ramp:] = envelope[:ramp][::-1]
        sound *= envelope
    return sound


# ----------------------------------------------------------------------------- a story

def make_story(seed, story, lexicon, duration, rate, tail_s=AUDIO_TAIL_S):
    """Audio (float64 mono at ``rate``), phone and word tiers, and the word tokens of a story:
    speech until ``tail_s`` before ``duration``, then background noise alone (a story's
    closing silence).

    Returns audio, phone tier, word tier (lists of (start, end, label) tiling 0..duration)
    and tokens (start, end, word, gain).
    """
    rng = named_rng(seed, f"story/{story}")
    speech = duration - tail_s
    audio = rng.normal(0.0, 0.002, int(round(speech * rate)))
    words = list(lexicon["words"])
    phone_tier, word_tier, tokens = [], [], []
    now = 0.0

    def gap(until, label=""):
        nonlocal now
        if until > now:
            phone_tier.append((now, until, label))
            word_tier.append((now, until, label))
            now = until

    gap(round(rng.uniform(0.2, 0.6), 3))
    while True:
        event = rng.uniform()
        if event < 0.06:
            length, label = rng.uniform(0.5, 1.2), "sp"
        elif event < 0.09:
            length, label = 0.3, NOISE_TOKENS[rng.integers(len(NOISE_TOKENS))]
        else:
            label = words[rng.integers(len(words))]
            length = sum(lexicon["words"][label]["durations"])
        if now + length > speech - 0.5:
            break
        start = now
        if label == "sp":
            gap(round(start + length, 4), "sp")
        elif label in NOISE_TOKENS:
            first = int(round(start * rate))
            audio[first:first + int(length * rate)] += rng.normal(0.0, 0.02, int(length * rate))
            phone_tier.append((start, start + length, "ns"))
            word_tier.append((start, start + length, label))
            now = start + length
        else:
            gain = float(10 ** rng.uniform(-0.8, 0.0))
            info = lexicon["words"][label]
            for phone, phone_duration in zip(info["phones"], info["durations"]):
                first = int(round(now * rate))
                sound = phone_sound(lexicon["phones"][phone.rstrip("012")],
                                                     phone_duration, rate, rng)
                audio[first:first + len(sound)] += 0.5 * gain * sound
                phone_tier.append((now, now + phone_duration, phone))
                now += phone_duration
            word_tier.append((start, now, label))
            tokens.append((start, now, label, gain))
        gap(round(now + rng.uniform(0.03, 0.2), 4))
    gap(duration)  # the closing silence, drawn from its own stream: the speech stays the same
    tail = named_rng(seed, f"tail/{story}")
    audio = np.concatenate([audio, tail.normal(0.0, 0.002,
                                               int(round(duration * rate)) - len(audio))])
    return audio, phone_tier, word_tier, tokens


def haemodynamic_lag(features):
    """Features seen through the lag: sum over ``HRF_DELAYS`` of weight * features[k - delay]."""
    lagged = np.zeros_like(features)
    for delay, weight in zip(HRF_DELAYS, HRF_WEIGHTS):
        lagged[delay:] += weight * features[:-delay]
    return lagged


def write_wav(path, audio, rate, channels, subtype):
    """Write mono ``audio`` as a WAV; stereo gets unequal channels whose mean is ``audio``."""
    if channels == 2:
        audio = np.stack([1.1 * audio, 0.9 * audio], axis=1)
    sf.write(path, np.clip(audio, -1.0, 1.0), rate, subtype=subtype, format="WAV")
