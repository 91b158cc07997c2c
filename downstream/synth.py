"""A parametric "sound world" for science benchmarks: speech, instruments and scenes.

Every source is an integer id of a kind (speaker, word, instrument, scene); its
parameters are a pure function of (kind, id) through `np.random.default_rng([KIND_SEED[kind], id])`.
Ids below HELD_OUT are pre-training sources, ids from HELD_OUT on are held out, so a
downstream task built from held-out ids can never share a source with the pre-training pool.

    speech       source-filter synthesis: glottal pulse train (pitch contour, jitter,
                 spectral tilt, breathiness) through a cascade of formant resonators;
                 phonemes are vowels, fricatives, plosives and nasals; a word is a fixed
                 phoneme sequence with a stress pattern. A speaker has an f0 range, a
                 vocal-tract length (scales all formants), personal formant offsets,
                 breathiness, tilt and speaking rate.
    instruments  additive synthesis: family (bowed, plucked, blown, reed, struck) sets the
                 envelope (ADSR), vibrato, inharmonicity, breath noise and partial decay;
                 an instance adds its own harmonic profile, body resonances and register.
    scenes       textures (rain, wind, traffic rumble, babble, hum, running water) and events
                 (bird chirps, footsteps, door knocks, dishes, typing, car horns) mixed with
                 per-instance levels, in a per-scene room (exponentially decaying noise IR).

`pretraining_clip(rng, seconds)` draws a varied clip (single sources and mixtures) from
pre-training sources only; `speaker_clip`, `keyword_clip`, `instrument_clip` and `scene_clip`
make downstream clips from whatever ids they are given (downstream.generated passes held-out
ids). numpy + scipy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.signal import fftconvolve, lfilter, resample_poly
from scipy.special import expit

SR = 16000
HELD_OUT = 1_000_000  # ids >= HELD_OUT are never used by pretraining_clip
KIND_SEED = {"speaker": 101, "word": 202, "instrument": 303, "scene": 404}
# pre-training sources: ids 0 .. PRETRAIN_SOURCES[kind] - 1
PRETRAIN_SOURCES = {"speaker": 200, "word": 300, "instrument": 150, "scene": 120}


def source_rng(kind: str, source_id: int) -> np.random.Generator:
    return np.random.default_rng([KIND_SEED[kind], int(source_id)])


@dataclass
class Used:
    """Records which (kind, id) sources a clip was made of (for tests and audits)."""
    sources: set = field(default_factory=set)

    def add(self, kind: str, source_id: int) -> None:
        self.sources.add((kind, int(source_id)))


# --------------------------------------------------------------------------- small DSP helpers

def _noise(rng, n: int, alpha: float = 0.0) -> np.ndarray:
    """Coloured noise with a 1/f^alpha power spectrum, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec *= np.maximum(f, 20.0) ** (-alpha / 2)
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _band(rng, n: int, low: float, high: float) -> np.ndarray:
    """White noise band-limited to [low, high] Hz (FFT mask with soft edges), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    width = max(0.1 * (high - low), 30.0)
    gain = expit((f - low) / width * 4) * expit((high - f) / width * 4)
    x = np.fft.irfft(spec * gain, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    """Two-pole resonance at freq Hz with bandwidth bw Hz, unit gain at DC-normalised peak."""
    freq = min(freq, 0.47 * SR)
    r = np.exp(-np.pi * bw / SR)
    b1, b2 = 2 * r * np.cos(2 * np.pi * freq / SR), -r * r
    return lfilter([1 - r], [1, -b1, -b2], x)


def _onepole(x: np.ndarray, pole: float) -> np.ndarray:
    return lfilter([1 - pole], [1, -pole], x)


def _smooth_curve(rng, n: int, knots: int, scale: float) -> np.ndarray:
    """A smooth random curve of n samples through `knots` random points (mean 0, +-scale)."""
    points = rng.uniform(-scale, scale, knots)
    return np.interp(np.arange(n), np.linspace(0, n - 1, knots), points)


def _fade(n: int, fade: int) -> np.ndarray:
    w = np.ones(n)
    fade = min(fade, n // 2)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
        w[:fade], w[n - fade:] = ramp, ramp[::-1]
    return w


def _place(out: np.ndarray, x: np.ndarray, start: int) -> None:
    """Add x into out at start, clipped to out's bounds."""
    if start >= len(out) or start + len(x) <= 0:
        return
    a, b = max(start, 0), min(start + len(x), len(out))
    out[a:b] += x[a - start:b - start]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)) + 1e-12)


# --------------------------------------------------------------------------- rooms

@dataclass(frozen=True)
class Room:
    rt60: float       # seconds
    wet: float        # reverberant / direct level
    damping: float    # one-pole low-pass pole on the tail (absorption of highs)


def room_of(rng) -> Room:
    return Room(rt60=float(rng.uniform(0.15, 1.2)), wet=float(rng.uniform(0.05, 0.6)),
                damping=float(rng.uniform(0.1, 0.7)))


def reverberate(x: np.ndarray, room: Room, rng) -> np.ndarray:
    """Direct path + exponentially decaying noise tail (RT60: -60 dB after rt60 s)."""
    n_ir = int(min(room.rt60, 1.0) * SR)
    t = np.arange(n_ir) / SR
    tail = rng.standard_normal(n_ir) * np.exp(-6.9 * t / room.rt60)
    tail = _onepole(tail, room.damping)
    tail[: int(0.005 * SR)] = 0  # pre-delay before the first reflections
    tail *= room.wet / (np.sqrt(np.sum(tail**2)) + 1e-12)
    wet = fftconvolve(x, tail)[: len(x)]
    return x + wet


# --------------------------------------------------------------------------- speech

# vowels: (F1, F2, F3) of an adult male voice (Peterson & Barney style averages)
VOWELS = {
    "i": (270, 2290, 3010), "I": (390, 1990, 2550), "e": (530, 1840, 2480), "ae": (660, 1720, 2410),
    "a": (730, 1090, 2440), "o": (570, 840, 2410), "U": (440, 1020, 2240), "u": (300, 870, 2240),
    "A": (640, 1190, 2390), "er": (490, 1350, 1690),
}
FRICATIVES = {  # (band low, band high, level, voiced)
    "s": (4000, 7500, 0.15, False), "sh": (2000, 5000, 0.2, False), "f": (1200, 7500, 0.06, False),
    "th": (1500, 7500, 0.05, False), "h": (400, 4000, 0.1, False), "z": (4000, 7500, 0.1, True),
    "v": (1200, 7000, 0.05, True),
}
PLOSIVES = {  # (burst centre, burst width, voiced)
    "p": (900, 1200, False), "t": (4500, 3000, False), "k": (2000, 1400, False),
    "b": (800, 1000, True), "d": (4000, 2500, True), "g": (1900, 1200, True),
}
NASALS = {"m": (250, 1100, 2300), "n": (250, 1600, 2500), "ng": (250, 2000, 2700)}
CONSONANTS = list(FRICATIVES) + list(PLOSIVES) + list(NASALS)


@dataclass(frozen=True)
class Speaker:
    id: int
    f0: float              # median pitch, Hz
    f0_range: float        # pitch movement, semitones
    formant_scale: float   # 1 / relative vocal-tract length
    formant_offsets: tuple  # personal scale of F1, F2, F3
    breathiness: float
    tilt: float            # glottal low-pass pole (higher = darker voice)
    rate: float            # speaking-rate factor (>1 faster)
    jitter: float
    bandwidth: float       # formant bandwidth scale


@lru_cache(maxsize=4096)
def speaker(speaker_id: int) -> Speaker:
    rng = source_rng("speaker", speaker_id)
    f0 = float(np.exp(rng.uniform(np.log(80), np.log(300))))
    # longer vocal tracts go with lower voices, with personal variation
    scale = 1 + 0.16 * np.log(f0 / 130) / np.log(2.3) + rng.normal(0, 0.05)
    return Speaker(
        id=int(speaker_id), f0=f0, f0_range=float(rng.uniform(1.0, 6.0)), formant_scale=float(scale),
        formant_offsets=tuple(float(v) for v in rng.normal(1, 0.05, 3)),
        breathiness=float(rng.uniform(0.0, 0.5)), tilt=float(rng.uniform(0.55, 0.93)),
        rate=float(rng.uniform(0.75, 1.35)), jitter=float(rng.uniform(0.0, 0.02)),
        bandwidth=float(rng.uniform(0.7, 1.6)),
    )


def _syllable(rng) -> list[str]:
    vowel = str(rng.choice(list(VOWELS)))
    out = []
    if rng.random() < 0.8:
        out.append(str(rng.choice(CONSONANTS)))
    out.append(vowel)
    if rng.random() < 0.4:
        out.append(str(rng.choice(CONSONANTS)))
    return out


@lru_cache(maxsize=4096)
def word(word_id: int) -> tuple[tuple[str, ...], int]:
    """A word: a fixed phoneme sequence of 1-3 syllables and which syllable is stressed.
    Returned as (phonemes with '|' between syllables, stressed syllable)."""
    if word_id >= HELD_OUT:  # held-out words come in anagram pairs: same syllables, reversed order,
        # so a bag of frames (time-averaged statistics) cannot tell the pair apart
        rng = source_rng("word", HELD_OUT + (word_id - HELD_OUT) // 2)
        syllables = [_syllable(rng) for _ in range(int(rng.integers(2, 4)))]
        stress = int(rng.integers(0, len(syllables)))
        if (word_id - HELD_OUT) % 2:
            syllables, stress = syllables[::-1], len(syllables) - 1 - stress
        return _join(syllables), stress
    rng = source_rng("word", word_id)
    syllables = [_syllable(rng) for _ in range(int(rng.integers(1, 4)))]
    return _join(syllables), int(rng.integers(0, len(syllables)))


def _join(syllables) -> tuple[str, ...]:
    return tuple(p for i, s in enumerate(syllables) for p in (["|"] if i else []) + list(s))


def _durations(phonemes, stress: int, spk: Speaker, rng) -> list[tuple[str, int, bool]]:
    """(phoneme, samples, stressed) per phoneme, scaled by speaking rate."""
    out, syllable = [], 0
    for p in phonemes:
        if p == "|":
            syllable += 1
            continue
        stressed = syllable == stress
        if p in VOWELS:
            d = rng.uniform(0.07, 0.14) * (1.5 if stressed else 1.0)
        elif p in FRICATIVES:
            d = rng.uniform(0.07, 0.12)
        elif p in PLOSIVES:
            d = rng.uniform(0.06, 0.1)
        else:
            d = rng.uniform(0.05, 0.09)
        out.append((p, max(int(d / spk.rate * SR), 80), stressed))
    return out


def _glottal_source(f0: np.ndarray, spk: Speaker, rng) -> np.ndarray:
    """Pulse train at the (jittered) pitch contour, glottal tilt, lip radiation, breath noise."""
    n = len(f0)
    f = f0 * (1 + spk.jitter * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1)))
    phase = np.cumsum(f / SR)
    pulses = np.zeros(n)
    pulses[1:][np.diff(np.floor(phase)) > 0] = 1.0
    src = _onepole(_onepole(pulses, spk.tilt), spk.tilt)
    src = np.diff(src, prepend=0.0)  # lip radiation
    src /= _rms(src)
    # breath: noise modulated by the glottal cycle
    breath = _band(rng, n, 500, 7000) * (0.6 + 0.4 * np.cos(2 * np.pi * phase))
    return (1 - spk.breathiness) * src + spk.breathiness * 1.5 * breath


def _formants(spk: Speaker, base) -> list[tuple[float, float]]:
    scale = spk.formant_scale
    out = [(base[j] * scale * spk.formant_offsets[j], (60 + 0.06 * base[j]) * spk.bandwidth)
           for j in range(3)]
    out.append((3500 * scale, 200 * spk.bandwidth))
    return out


def _filter_formants(x: np.ndarray, formants) -> np.ndarray:
    """Cascade of formant resonators, output rescaled to the input's RMS."""
    y = x
    for freq, bw in formants:
        y = _resonator(y, freq, bw)
    return y * (_rms(x) / _rms(y))


def utterance(spk: Speaker, phonemes, stress: int, rng) -> np.ndarray:
    """Synthesize a phoneme sequence (may contain '|' syllable marks) with speaker spk."""
    segments = _durations(phonemes, stress, spk, rng)
    fade = int(0.008 * SR)
    total = sum(d for _, d, _ in segments) + 2 * fade
    t = np.arange(total) / SR
    # pitch: declination + smooth movement + accent on the stressed syllable
    semis = _smooth_curve(rng, total, max(2, int(t[-1] * 4)), spk.f0_range / 2) - 1.5 * t / max(t[-1], 1e-3)
    accent = np.zeros(total)
    pos = fade
    for p, d, stressed in segments:
        if stressed and p in VOWELS:
            accent[pos:pos + d] += spk.f0_range * 0.6 * np.sin(np.linspace(0, np.pi, d))
        pos += d
    f0 = spk.f0 * 2 ** ((semis + accent) / 12)
    source = _glottal_source(f0, spk, rng)
    out = np.zeros(total)
    pos = fade
    prev_vowel = VOWELS["A"]
    for i, (p, d, stressed) in enumerate(segments):
        a, b = pos - fade, pos + d + fade
        src = source[a:b]
        n = b - a
        if p in VOWELS:
            seg = _filter_formants(src, _formants(spk, VOWELS[p])) * (1.0 if stressed else 0.7)
            prev_vowel = VOWELS[p]
        elif p in NASALS:
            seg = 0.3 * _filter_formants(src, _formants(spk, NASALS[p]))
        elif p in FRICATIVES:
            low, high, level, voiced = FRICATIVES[p]
            if p == "h":  # aspiration shaped by the neighbouring vowel
                nxt = next((q for q, _, _ in segments[i + 1:] if q in VOWELS), None)
                noise = _filter_formants(_band(rng, n, 200, 7000), _formants(spk, VOWELS[nxt] if nxt else prev_vowel))
                seg = level * noise
            else:
                s = spk.formant_scale
                seg = level * _band(rng, n, low * s, min(high * s, 7800))
            if voiced:
                seg = seg + 0.3 * _filter_formants(src, _formants(spk, (250, 1500, 2500)))
        else:  # plosive: closure (voice bar if voiced), burst, aspiration
            centre, width, voiced = PLOSIVES[p]
            seg = np.zeros(n)
            closure = int(0.55 * n)
            if voiced:
                seg[:closure] = 0.15 * _onepole(src[:closure], 0.95) * 10
            burst_len = int(0.015 * SR)
            burst = _band(rng, burst_len, max(centre - width / 2, 100), min(centre + width / 2, 7800))
            burst *= np.exp(-np.arange(burst_len) / (0.004 * SR)) * 0.4
            _place(seg, burst, closure)
            if not voiced:
                asp = 0.06 * _band(rng, n - closure - burst_len, 500, 6000)
                _place(seg, asp * np.linspace(1, 0, len(asp)), closure + burst_len)
        out[a:b] += seg * _fade(n, fade)
        pos += d
    return out


def speech(spk: Speaker, rng, n: int, words: list[int] | None = None, used: Used | None = None) -> np.ndarray:
    """n samples of speaker spk saying `words` (word ids) or random syllables, with pauses."""
    out = np.zeros(n)
    pos = int(rng.uniform(0, 0.2) * SR)
    k = 0
    while pos < n:
        if words:
            wid = words[k % len(words)]
            phonemes, stress = word(wid)
            if used is not None:
                used.add("word", wid)
        else:
            syl = [_syllable(rng) for _ in range(int(rng.integers(1, 4)))]
            phonemes = tuple(p for i, s in enumerate(syl) for p in (["|"] if i else []) + s)
            stress = int(rng.integers(0, len(syl)))
        w = utterance(spk, phonemes, stress, rng)
        _place(out, w, pos)
        pos += len(w) + int(rng.uniform(0.02, 0.25) * SR / spk.rate)
        k += 1
    if used is not None:
        used.add("speaker", spk.id)
    return out


# --------------------------------------------------------------------------- instruments

FAMILIES = ("bowed", "plucked", "blown", "reed", "struck")
# family -> (midi low, midi high) of the family's overall range
_FAMILY_RANGE = {"bowed": (36, 88), "plucked": (40, 84), "blown": (55, 96), "reed": (45, 84), "struck": (48, 96)}


@dataclass(frozen=True)
class Instrument:
    id: int
    family: str
    low: int                 # register, midi
    high: int
    profile: tuple           # harmonic amplitudes (before body resonance)
    body: tuple              # ((freq, gain, width), ...) body resonances
    attack: float
    decay: float
    sustain: float
    release: float
    vibrato_rate: float
    vibrato_depth: float     # fraction of f0
    inharmonicity: float     # B in f_k = k f0 sqrt(1 + B k^2)
    partial_ratios: tuple | None  # struck bars/bells: fixed inharmonic ratios
    noise: float             # breath / bow noise level
    partial_decay: float     # how much faster high partials decay


def family_of(instrument_id: int) -> str:
    return FAMILIES[int(instrument_id) % len(FAMILIES)]


@lru_cache(maxsize=4096)
def instrument(instrument_id: int) -> Instrument:
    rng = source_rng("instrument", instrument_id)
    fam = family_of(instrument_id)
    lo, hi = _FAMILY_RANGE[fam]
    low = int(rng.integers(lo, hi - 18))
    high = int(min(low + rng.integers(12, 26), hi))
    k = np.arange(1, 25)
    slope = {"bowed": (0.8, 1.4), "plucked": (1.0, 2.0), "blown": (1.8, 3.0), "reed": (0.9, 1.6),
             "struck": (1.0, 2.0)}[fam]
    profile = k ** -rng.uniform(*slope) * np.exp(rng.normal(0, 0.35, len(k)))
    if fam == "reed":  # clarinet-like: even harmonics weak
        profile[1::2] *= rng.uniform(0.05, 0.3)
    if fam == "plucked":  # pluck position notches every m-th harmonic
        m = int(rng.integers(3, 9))
        profile[m - 1::m] *= 0.1
    body = tuple((float(rng.uniform(200, 4000)), float(rng.uniform(1.5, 5.0)), float(rng.uniform(0.1, 0.4)))
                 for _ in range(int(rng.integers(1, 4))))
    env = {  # attack, decay, sustain, release ranges
        "bowed": ((0.06, 0.2), (0.1, 0.3), (0.6, 0.9), (0.1, 0.3)),
        "plucked": ((0.002, 0.01), (0.3, 1.5), (0.0, 0.05), (0.05, 0.2)),
        "blown": ((0.03, 0.1), (0.05, 0.2), (0.7, 0.95), (0.05, 0.15)),
        "reed": ((0.01, 0.05), (0.05, 0.2), (0.7, 0.95), (0.03, 0.1)),
        "struck": ((0.001, 0.004), (0.15, 1.0), (0.0, 0.02), (0.05, 0.3)),
    }[fam]
    attack, decay, sustain, release = (float(rng.uniform(*r)) for r in env)
    vib = fam in ("bowed", "blown", "reed") and rng.random() < 0.85
    ratios = None
    if fam == "struck":
        kind = rng.integers(0, 3)
        if kind == 0:  # free bar
            base = np.array([1, 2.76, 5.40, 8.93, 13.34, 18.64])
        elif kind == 1:  # bell-like
            base = np.array([0.5, 1, 1.2, 1.5, 2, 2.5, 3, 4.2])
        else:  # stiff string (piano-like)
            base = None
        if base is not None:
            ratios = tuple(float(r) for r in base * np.exp(rng.normal(0, 0.02, len(base))))
    return Instrument(
        id=int(instrument_id), family=fam, low=low, high=high, profile=tuple(float(p) for p in profile),
        body=body, attack=attack, decay=decay, sustain=sustain, release=release,
        vibrato_rate=float(rng.uniform(4, 7)) if vib else 0.0,
        vibrato_depth=float(rng.uniform(0.002, 0.012)) if vib else 0.0,
        inharmonicity=float(10 ** rng.uniform(-5, -3)) if fam in ("plucked", "struck") else 0.0,
        partial_ratios=ratios,
        noise=float(rng.uniform(0.02, 0.2)) if fam in ("blown", "bowed", "reed") else 0.0,
        partial_decay=float(rng.uniform(0.5, 3.0)),
    )


def _adsr(inst: Instrument, n: int, hold: int) -> np.ndarray:
    t = np.arange(n) / SR
    a = max(inst.attack, 1e-3)
    env = np.where(t < a, t / a, inst.sustain + (1 - inst.sustain) * np.exp(-(t - a) / max(inst.decay, 1e-3)))
    hold_t = hold / SR
    after = t > hold_t
    level_at = env[min(hold, n - 1)]
    env[after] = level_at * np.exp(-(t[after] - hold_t) / max(inst.release, 1e-3) * 3)
    return env


def note(inst: Instrument, midi: float, n: int, hold: int, rng) -> np.ndarray:
    """One note of n samples (sounding `hold` samples before release)."""
    f0 = 440 * 2 ** ((midi - 69) / 12)
    t = np.arange(n) / SR
    vib = 1 + inst.vibrato_depth * np.sin(2 * np.pi * inst.vibrato_rate * t + rng.uniform(0, 6)) \
        * np.minimum(t / 0.3, 1)
    if inst.partial_ratios is not None:
        ratios = np.array(inst.partial_ratios)
        amps = np.array(inst.profile[: len(ratios)])
    else:
        k = np.arange(1, len(inst.profile) + 1)
        ratios = k * np.sqrt(1 + inst.inharmonicity * k**2)
        amps = np.array(inst.profile)
    freqs = f0 * ratios
    keep = freqs < 7600
    freqs, amps = freqs[keep], amps[keep]
    for fc, gain, width in inst.body:  # body resonances colour the partials
        amps = amps * (1 + (gain - 1) * np.exp(-0.5 * (np.log(freqs / fc) / width) ** 2))
    phase = 2 * np.pi * np.cumsum(vib) / SR
    env = _adsr(inst, n, hold)
    out = np.zeros(n)
    decays = inst.family in ("plucked", "struck")
    for f, a in zip(freqs, amps):
        partial = a * np.sin(f * phase + rng.uniform(0, 2 * np.pi))
        if decays:  # higher partials die away faster
            partial *= np.exp(-t * inst.partial_decay * (f / f0 - 1) / max(inst.decay, 0.05) * 0.3)
        out += partial
    out *= env
    if inst.noise:
        low = min(f0 * 2, 4000)
        out += inst.noise * _band(rng, n, low, min(low * 4, 7800)) * env * (1 + 0.3 * _smooth_curve(rng, n, 6, 1))
    return out


def melody(inst: Instrument, rng, n: int, used: Used | None = None) -> np.ndarray:
    """A few notes in the instrument's register (legato for sustained families)."""
    out = np.zeros(n)
    pos = int(rng.uniform(0, 0.15) * SR)
    midi = rng.integers(inst.low, inst.high + 1)
    sustained = inst.family in ("bowed", "blown", "reed")
    while pos < n:
        dur = int(rng.uniform(0.2, 0.8) * SR)
        tail = int((inst.release if sustained else inst.decay) * SR * 1.5) + 1
        x = note(inst, midi + rng.normal(0, 0.05), dur + tail, dur, rng)
        _place(out, x * rng.uniform(0.6, 1.0), pos)
        pos += dur if sustained else int(dur * rng.uniform(0.6, 1.2))
        step = int(rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 7, -7, 12, -12]))
        midi = int(np.clip(midi + step, inst.low, inst.high))
    if used is not None:
        used.add("instrument", inst.id)
    return out


# --------------------------------------------------------------------------- scenes

SCENE_CLASSES = ("street", "park", "rain", "cafe", "office", "kitchen")
# mean level (dB relative to the scene's loudest component) of each component per class;
# absent components are left out. Instances vary every level (sd 4 dB) and may drop a weak one.
_SCENE_MIX = {
    "street": {"traffic": 0, "footsteps": -10, "babble": -14, "horn": -8, "wind": -14},
    "park": {"birds": 0, "wind": -6, "babble": -16, "footsteps": -14, "water": -16},
    "rain": {"rain": 0, "wind": -8, "traffic": -14, "knocks": -20},
    "cafe": {"babble": 0, "dishes": -6, "hum": -16, "footsteps": -12},
    "office": {"hum": -2, "typing": 0, "knocks": -10, "footsteps": -10, "babble": -14},
    "kitchen": {"water": -2, "dishes": 0, "hum": -8, "knocks": -12, "babble": -18},
}
_INDOOR = {"cafe", "office", "kitchen"}
_COMPONENTS = sorted({c for mix in _SCENE_MIX.values() for c in mix})


@dataclass(frozen=True)
class Scene:
    id: int
    kind: str
    levels: tuple            # ((component, linear gain), ...)
    room: Room
    params: dict = field(hash=False, compare=False)  # per-component instance parameters


def scene_class_of(scene_id: int) -> str:
    return SCENE_CLASSES[int(scene_id) % len(SCENE_CLASSES)]


@lru_cache(maxsize=4096)
def scene(scene_id: int) -> Scene:
    rng = source_rng("scene", scene_id)
    kind = scene_class_of(scene_id)
    levels = []
    for comp, db in _SCENE_MIX[kind].items():
        if db < -12 and rng.random() < 0.3:
            continue
        levels.append((comp, float(10 ** ((db + rng.normal(0, 5)) / 20))))
    # one or two intruders from other classes' components make classes overlap
    others = sorted(set(_COMPONENTS) - set(_SCENE_MIX[kind]))
    for comp in rng.choice(others, int(rng.integers(1, 3)), replace=False):
        levels.append((str(comp), float(10 ** (rng.uniform(-20, -6) / 20))))
    room = Room(rt60=float(rng.uniform(0.3, 1.0) if kind in _INDOOR else rng.uniform(0.1, 0.3)),
                wet=float(rng.uniform(0.2, 0.6) if kind in _INDOOR else rng.uniform(0.02, 0.15)),
                damping=float(rng.uniform(0.1, 0.7)))
    params = {
        "traffic_cut": float(rng.uniform(150, 600)), "engine": float(rng.uniform(30, 90)),
        "wind_cut": float(rng.uniform(150, 700)), "wind_rate": float(rng.uniform(0.1, 0.6)),
        "whistle": float(rng.uniform(400, 1500)),
        "rain_rate": float(rng.uniform(200, 3000)), "drop_freq": float(rng.uniform(1500, 5000)),
        "rain_low": float(rng.uniform(800, 3000)),
        "hum_f": float(rng.choice([50.0, 60.0])), "fan_cut": float(rng.uniform(300, 2000)),
        "water_low": float(rng.uniform(300, 1500)), "water_rate": float(rng.uniform(3, 12)),
        "step_rate": float(rng.uniform(1.4, 2.4)), "step_res": float(rng.uniform(80, 400)),
        "knock_res": float(rng.uniform(120, 450)), "type_rate": float(rng.uniform(3, 9)),
        "dish_f": float(rng.uniform(1500, 5000)), "horn_f": float(rng.uniform(300, 550)),
        "birds": [(float(rng.uniform(1800, 6000)), float(rng.uniform(-3000, 3000)), float(rng.uniform(0.03, 0.15)),
                   int(rng.integers(1, 6)), float(rng.uniform(0.05, 0.2))) for _ in range(int(rng.integers(1, 4)))],
        "babble_speakers": [int(v) for v in rng.integers(0, 10**9, 6)],
    }
    return Scene(id=int(scene_id), kind=kind, levels=tuple(levels), room=room, params=params)


def _events(rng, n: int, rate: float) -> np.ndarray:
    """Poisson event start times (samples) over n samples at `rate` per second."""
    count = rng.poisson(rate * n / SR)
    return np.sort(rng.integers(0, n, count))


def _decaying_tone(freqs, decay: float, n: int, rng) -> np.ndarray:
    t = np.arange(n) / SR
    return sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / (i + 1) for i, f in enumerate(freqs)) \
        * np.exp(-t / decay)


def _babble_voice(seed: int) -> Speaker:
    """A babble voice: speaker-like parameters from the scene's own seed (not a speaker id)."""
    rng = np.random.default_rng([KIND_SEED["scene"], 7, seed])
    f0 = float(np.exp(rng.uniform(np.log(85), np.log(280))))
    return Speaker(id=-1, f0=f0, f0_range=float(rng.uniform(1, 5)),
                   formant_scale=float(1 + 0.16 * np.log(f0 / 130) / np.log(2.3) + rng.normal(0, 0.05)),
                   formant_offsets=(1.0, 1.0, 1.0), breathiness=float(rng.uniform(0, 0.4)),
                   tilt=float(rng.uniform(0.6, 0.9)), rate=float(rng.uniform(0.8, 1.3)), jitter=0.01,
                   bandwidth=1.0)


def _component(name: str, p: dict, rng, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    if name == "traffic":
        x = _band(rng, n, 20, p["traffic_cut"]) * (1 + 0.5 * _smooth_curve(rng, n, 4, 1))
        x += 0.3 * sum(np.sin(2 * np.pi * h * p["engine"] * t) / h for h in range(1, 5)) \
            * (1 + 0.3 * np.sin(2 * np.pi * 0.2 * t))
        if rng.random() < 0.5:  # a pass-by swell
            centre, width = rng.uniform(0, t[-1] + 0.5), rng.uniform(0.4, 1.2)
            x += 2 * _band(rng, n, 200, 2500) * np.exp(-0.5 * ((t - centre) / width) ** 2)
        return x
    if name == "wind":
        gust = 1 + 0.8 * np.sin(2 * np.pi * p["wind_rate"] * t + rng.uniform(0, 6)) + 0.4 * _smooth_curve(rng, n, 5, 1)
        x = _band(rng, n, 20, p["wind_cut"]) * np.maximum(gust, 0.1)
        whistle = _resonator(rng.standard_normal(n), p["whistle"], 30)
        return x + 0.2 * whistle / _rms(whistle) * np.maximum(gust, 0.0)
    if name == "rain":
        drops = np.zeros(n)
        starts = _events(rng, n, p["rain_rate"])
        drops[starts] = rng.uniform(0.2, 1.0, len(starts)) * rng.choice([-1, 1], len(starts))
        kernel = _decaying_tone([p["drop_freq"] * rng.uniform(0.8, 1.2)], 0.003, int(0.02 * SR), rng)
        return fftconvolve(drops, kernel)[:n] * 3 + 0.5 * _band(rng, n, p["rain_low"], 7800)
    if name == "water":
        am = 1 + 0.5 * np.sin(2 * np.pi * p["water_rate"] * t) * _smooth_curve(rng, n, 8, 1)
        bubbles = np.zeros(n)
        for s in _events(rng, n, 15):
            f = rng.uniform(300, 1500) * (1 + np.arange(int(0.03 * SR)) / SR * 20)
            bubbles[s:s + len(f)] += (np.sin(2 * np.pi * np.cumsum(f) / SR) *
                                      np.exp(-np.arange(len(f)) / (0.008 * SR)))[: n - s]
        return _band(rng, n, p["water_low"], 6000) * am + 0.8 * bubbles
    if name == "hum":
        x = sum(np.sin(2 * np.pi * h * p["hum_f"] * t + rng.uniform(0, 6)) / h for h in range(1, 8))
        return 0.5 * x + _band(rng, n, 50, p["fan_cut"])
    if name == "babble":
        x = np.zeros(n)
        for seed in p["babble_speakers"][: int(rng.integers(3, 7))]:
            x += speech(_babble_voice(seed), rng, n) * rng.uniform(0.3, 1.0)
        return _onepole(x, 0.3)
    out = np.zeros(n)
    if name == "footsteps":
        period = SR / p["step_rate"]
        for s in np.arange(rng.uniform(0, period), n, period):
            step = _resonator(rng.standard_normal(int(0.08 * SR)), p["step_res"], 80) * 20
            step *= np.exp(-np.arange(len(step)) / (0.015 * SR))
            step[: int(0.004 * SR)] += rng.standard_normal(int(0.004 * SR)) * 0.5  # heel click
            _place(out, step * rng.uniform(0.6, 1.0), int(s + rng.normal(0, 0.02 * SR)))
        return out
    if name == "knocks":
        for s in _events(rng, n, 0.6):
            for j in range(int(rng.integers(2, 5))):
                rap = _decaying_tone([p["knock_res"], p["knock_res"] * 2.3], 0.02, int(0.1 * SR), rng)
                _place(out, rap, int(s + j * rng.uniform(0.12, 0.2) * SR))
        return out
    if name == "typing":
        for s in _events(rng, n, p["type_rate"]):
            click = rng.standard_normal(int(0.006 * SR)) * np.exp(-np.arange(int(0.006 * SR)) / 20)
            _place(out, _band(rng, len(click), 1500, 7000) * np.abs(click), int(s))
        return out
    if name == "dishes":
        for s in _events(rng, n, 1.5):
            f = p["dish_f"] * rng.uniform(0.7, 1.4)
            _place(out, _decaying_tone([f, f * 2.32, f * 3.7], rng.uniform(0.08, 0.4), int(0.5 * SR), rng)
                   * rng.uniform(0.3, 1.0), int(s))
        return out
    if name == "horn":
        for s in _events(rng, n, 0.4):
            d = int(rng.uniform(0.2, 0.6) * SR)
            x = sum(np.sin(2 * np.pi * h * p["horn_f"] * np.arange(d) / SR) / h for h in range(1, 8))
            _place(out, x * _fade(d, int(0.01 * SR)), int(s))
        return out
    if name == "birds":
        for f_start, sweep, dur, reps, gap in p["birds"]:
            for s in _events(rng, n, rng.uniform(0.3, 1.2)):
                m = int(dur * SR)
                f = np.clip(f_start + sweep * np.arange(m) / m, 1000, 7500)
                chirp = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.sin(np.linspace(0, np.pi, m)) ** 2
                for r in range(reps):
                    _place(out, chirp, int(s + r * (dur + gap) * SR))
        return out
    raise ValueError(f"unknown scene component {name!r}")


def ambience(sc: Scene, rng, n: int, used: Used | None = None) -> np.ndarray:
    """n samples of scene sc: each component at the instance's level (unit-RMS before gain)."""
    out = np.zeros(n)
    for name, gain in sc.levels:
        x = _component(name, sc.params, rng, n)
        out += gain * x / _rms(x) * (rng.uniform(0.7, 1.3))
    if used is not None:
        used.add("scene", sc.id)
    return reverberate(out, sc.room, rng)


# --------------------------------------------------------------------------- clips

def finish(x: np.ndarray, rng, sr: int = SR) -> np.ndarray:
    """Random loudness (-35 to -15 dBFS RMS), peak-limited to 0.99, float32, resampled to sr."""
    x = x - x.mean()
    x = x / _rms(x) * 10 ** (rng.uniform(-35, -15) / 20)
    peak = np.abs(x).max()
    if peak > 0.99:
        x *= 0.99 / peak
    if sr != SR:
        g = np.gcd(sr, SR)
        x = resample_poly(x, sr // g, SR // g)
        x = np.clip(x, -1, 1)
    return x.astype(np.float32)


def _noise_floor(rng, n: int) -> np.ndarray:
    return _noise(rng, n, rng.uniform(0, 2)) * 10 ** (rng.uniform(-45, -30) / 20)


def speaker_clip(speaker_id: int, rng, n: int, used: Used | None = None) -> np.ndarray:
    """Speaker speaking random syllables in a random room, with a noise floor (unfinished)."""
    x = speech(speaker(speaker_id), rng, n, used=used)
    x = reverberate(x, room_of(rng), rng)
    return x / _rms(x) + _noise_floor(rng, n)


def keyword_clip(word_id: int, speaker_id: int, rng, n: int, used: Used | None = None) -> np.ndarray:
    """One word by one speaker, at a random position, in a random room with a noise floor."""
    spk = speaker(speaker_id)
    phonemes, stress = word(word_id)
    w = utterance(spk, phonemes, stress, rng)
    out = np.zeros(n)
    _place(out, w, int(rng.uniform(0, max(n - len(w), 1))))
    out = reverberate(out, room_of(rng), rng)
    if used is not None:
        used.add("word", word_id)
        used.add("speaker", speaker_id)
    return out / _rms(out) + _noise_floor(rng, n)


def instrument_clip(instrument_id: int, rng, n: int, used: Used | None = None) -> np.ndarray:
    x = melody(instrument(instrument_id), rng, n, used=used)
    x = reverberate(x, room_of(rng), rng)
    return x / _rms(x) + _noise_floor(rng, n)


def scene_clip(scene_id: int, rng, n: int, used: Used | None = None) -> np.ndarray:
    x = ambience(scene(scene_id), rng, n, used=used)
    return x / _rms(x) + _noise_floor(rng, n)


def _pretrain_id(rng, kind: str) -> int:
    return int(rng.integers(0, PRETRAIN_SOURCES[kind]))


_PRETRAIN_KINDS = ("speech", "words", "instrument", "scene", "speech+scene", "words+scene",
                   "instrument+scene", "speech+instrument", "speech+speech")
_PRETRAIN_P = (0.14, 0.14, 0.2, 0.2, 0.08, 0.06, 0.08, 0.05, 0.05)


def pretraining_clip_sources(rng, seconds: float, sr: int = SR) -> tuple[np.ndarray, set]:
    """pretraining_clip, plus the set of (kind, id) sources it used."""
    n = int(round(seconds * SR))
    used = Used()
    makers = {
        "speech": lambda: speaker_clip(_pretrain_id(rng, "speaker"), rng, n, used),
        "words": lambda: speaker_clip_words(_pretrain_id(rng, "speaker"),
                                            [_pretrain_id(rng, "word") for _ in range(int(rng.integers(1, 5)))],
                                            rng, n, used),
        "instrument": lambda: instrument_clip(_pretrain_id(rng, "instrument"), rng, n, used),
        "scene": lambda: scene_clip(_pretrain_id(rng, "scene"), rng, n, used),
    }
    x = np.zeros(n)
    for i, name in enumerate(str(rng.choice(_PRETRAIN_KINDS, p=_PRETRAIN_P)).split("+")):
        y = makers[name]()
        x += y / _rms(y) * (1.0 if i == 0 else 10 ** (rng.uniform(-15, 0) / 20))
    return finish(x, rng, sr), used.sources


def speaker_clip_words(speaker_id: int, words: list[int], rng, n: int, used: Used | None = None) -> np.ndarray:
    x = speech(speaker(speaker_id), rng, n, words=words, used=used)
    x = reverberate(x, room_of(rng), rng)
    return x / _rms(x) + _noise_floor(rng, n)


def pretraining_clip(rng, seconds: float, sr: int = SR) -> np.ndarray:
    """A varied clip (speech, words, instruments, scenes and mixtures of them) made of
    pre-training sources only (ids < PRETRAIN_SOURCES[kind] < HELD_OUT), float32 in [-1, 1]."""
    return pretraining_clip_sources(rng, seconds, sr)[0]
