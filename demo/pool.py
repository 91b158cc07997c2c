"""A generated audio pool laid out like the AudioSet download source.

`generate_pool(folder)` writes, deterministically from `seed`:

    folder/balanced_train_segments.csv   segments CSV in the official format
    folder/videos/<ytid>.<wav|flac|mp3>  the "YouTube videos": longer than the
                                         segment (other audio before and after,
                                         start_seconds > 0), 44.1 kHz stereo WAV,
                                         22.05 kHz mono FLAC or 32 kHz MP3
    folder/mirror/<clip_id>.<ext>        a "mirror": already cut to the segment,
                                         16 kHz FLAC, 44.1 kHz stereo WAV or
                                         22.05 kHz OGG Vorbis (ffmpeg decodes the
                                         latter about 10 ms shorter)

so the download flow has to cut, downmix and resample. The clips come from
several families of synthetic sounds (speech-like vowels, chords, melodies,
hiss, rumble, clicks, impacts, sirens), each with random variation, so that
clustering has structure to find. The labels are AudioSet-style ids chosen for
illustration. numpy + soundfile only; 300 clips take a few seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from downstream.synth import pretraining_clip
from storage.segments import clip_id as segment_clip_id

SR = 16000
_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])
# (extension, sample rate, channels, soundfile subtype)
# No Vorbis for videos: ffmpeg seeks libsndfile's Vorbis files about 6 ms off (their granule positions).
_VIDEO_FORMATS = [("wav", 44100, 2, "PCM_16"), ("flac", 22050, 1, "PCM_16"), ("mp3", 32000, 1, "MPEG_LAYER_III")]
_MIRROR_FORMATS = [("flac", 16000, 1, "PCM_16"), ("wav", 44100, 2, "PCM_16"), ("ogg", 22050, 1, "VORBIS")]
CSV_NAME = "balanced_train_segments.csv"


def _time(n: int) -> np.ndarray:
    return np.arange(n) / SR


def _noise(rng, n: int, alpha: float, low: float = 20.0, high: float = 8000.0) -> np.ndarray:
    """Coloured noise: white noise shaped to a 1/f^alpha power spectrum within [low, high] Hz."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    gain = np.where((freqs >= low) & (freqs <= high), np.maximum(freqs, 1.0) ** (-alpha / 2), 0.0)
    return np.fft.irfft(spectrum * gain, n)


def speech(rng, n: int) -> np.ndarray:
    """Vowel sequences: harmonics of a moving pitch, weighted by moving formants, in syllables."""
    t = _time(n)
    f0 = rng.uniform(90, 250) * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t + rng.uniform(0, 6))
                                 + rng.uniform(-0.1, 0.1) * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    path = _VOWELS[rng.integers(0, len(_VOWELS), 4)]
    formants = np.stack([np.interp(t, np.linspace(0, t[-1], 4), path[:, j]) for j in range(3)])  # (3, n)
    k = np.arange(1, 25)[:, None]
    weights = sum(np.exp(-(((k * f0) - formants[j]) / 120.0) ** 2) / (j + 1) for j in range(3))
    voiced = (weights * np.sin(k * phase)).sum(0)
    syllables = np.abs(np.sin(np.pi * rng.uniform(2.5, 5) * t + rng.uniform(0, 3))) ** 0.6
    return syllables * (voiced + 0.05 * rng.standard_normal(n))


def chord(rng, n: int) -> np.ndarray:
    """A held triad (major, minor or suspended, sometimes a seventh) with decaying harmonics."""
    t = _time(n)
    root = rng.integers(45, 64)
    shape = [[0, 4, 7], [0, 3, 7], [0, 5, 7]][rng.integers(0, 3)] + ([10] if rng.random() < 0.4 else [])
    out = np.zeros(n)
    for note in shape:
        f = 440 * 2 ** ((root + note - 69) / 12)
        for h in range(1, 6):
            if h * f < 7500:
                out += np.sin(2 * np.pi * h * f * t + rng.uniform(0, 6)) / h ** rng.uniform(1, 2)
    envelope = np.minimum(t / 0.05, 1) * np.exp(-t / rng.uniform(1, 4))
    return out * envelope * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))


def melody(rng, n: int) -> np.ndarray:
    """Plucked notes from a pentatonic scale."""
    out = np.zeros(n)
    base, pos = rng.integers(55, 72), 0
    brightness = rng.uniform(1, 2.5)
    while pos < n:
        length = min(int(rng.uniform(0.15, 0.4) * SR), n - pos)
        f = 440 * 2 ** ((base + [0, 2, 4, 7, 9, 12][rng.integers(0, 6)] - 69) / 12)
        t = _time(length)
        note = sum(np.sin(2 * np.pi * h * f * t) / h ** brightness for h in range(1, 5) if h * f < 7500)
        out[pos:pos + length] = note * np.exp(-t / rng.uniform(0.05, 0.2))
        pos += length
    return out


def hiss(rng, n: int) -> np.ndarray:
    """White to pink noise above a few hundred Hz, slowly swelling."""
    t = _time(n)
    swell = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 1) * t)
    return _noise(rng, n, rng.uniform(0, 1), low=rng.uniform(300, 2000)) * swell


def rumble(rng, n: int) -> np.ndarray:
    """Brown-ish noise below a few hundred Hz."""
    return _noise(rng, n, rng.uniform(1.5, 2.5), high=rng.uniform(200, 800))


def clicks(rng, n: int) -> np.ndarray:
    """A (slightly jittered) train of short clicks, 2-12 per second."""
    out = np.zeros(n)
    period = SR / rng.uniform(2, 12)
    click = rng.standard_normal(int(SR * rng.uniform(0.001, 0.004)))
    for start in np.arange(0, n - len(click), period):
        start = int(start + rng.normal(0, period * 0.03))
        if 0 <= start < n - len(click):
            out[start:start + len(click)] += click * np.linspace(1, 0, len(click))
    return out


def impacts(rng, n: int) -> np.ndarray:
    """A few knocks: a noise burst plus damped resonant modes."""
    out = np.zeros(n)
    length = int(0.6 * SR)
    t = _time(length)
    modes = rng.uniform(100, 2000, rng.integers(2, 5))
    for start in rng.integers(0, max(n - length, 1), rng.integers(2, 7)):
        hit = rng.standard_normal(length) * np.exp(-t / 0.01)
        hit += sum(np.sin(2 * np.pi * f * t) * np.exp(-t / rng.uniform(0.05, 0.3)) for f in modes)
        stop = min(start + length, n)
        out[start:stop] += hit[:stop - start] * rng.uniform(0.5, 1)
    return out


def siren(rng, n: int) -> np.ndarray:
    """A wailing or yelping tone: frequency modulated, with a few harmonics."""
    t = _time(n)
    freq = rng.uniform(500, 1200) + rng.uniform(200, 500) * np.sin(2 * np.pi * rng.uniform(0.3, 4) * t)
    phase = 2 * np.pi * np.cumsum(freq) / SR
    return sum(np.sin(h * phase) / h ** 1.5 for h in range(1, 4))


FAMILIES = {  # family -> (synthesiser, AudioSet-style labels, for illustration)
    "speech": (speech, ["/m/09x0r"]),
    "chord": (chord, ["/m/04rlf"]),
    "melody": (melody, ["/m/04rlf", "/m/04szw"]),
    "hiss": (hiss, ["/m/096m7z"]),
    "rumble": (rumble, ["/m/07pjjrj"]),
    "clicks": (clicks, ["/m/07qc9xj"]),
    "impacts": (impacts, ["/m/07pws3f"]),
    "siren": (siren, ["/m/03kmc9"]),
}


def _normalise(x: np.ndarray, peak: float) -> np.ndarray:
    return (x * (peak / max(np.abs(x).max(), 1e-9))).astype(np.float32)


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    """Linear interpolation from 16 kHz: enough for band-limited test audio."""
    if rate == SR:
        return x
    n_out = int(round(len(x) * rate / SR))
    return np.interp(np.arange(n_out) * (SR / rate), np.arange(len(x)), x).astype(np.float32)


def _write(path: Path, mono16k: np.ndarray, fmt: tuple) -> None:
    ext, rate, channels, subtype = fmt
    x = _resample(mono16k, rate)
    if channels == 2:  # a slightly different right channel, so a downmix is not a copy
        x = np.stack([x, 0.8 * x], axis=1)
    sf.write(path, x, rate, subtype=subtype, format={"mp3": "MP3"}.get(ext, ext.upper()))


def _ytid(rng, taken: set) -> str:
    while (ytid := "".join(rng.choice(_ALPHABET, 11))) in taken:
        pass
    taken.add(ytid)
    return ytid


def generate_pool(folder: str | Path, n_clips: int = 300, seconds: float = 3.0, seed: int = 0,
                  sounds: str = "families") -> list[dict]:
    """Write the pool (see module docstring); returns one row per clip:
    ytid, start_s, end_s, family, labels, clip_id, video and mirror (paths relative to folder).

    sounds: "families" (the synthesisers above, cycled) or "synth" (downstream.synth's sound world:
    speech, words, instruments, scenes of pre-training sources only, family "synth")."""
    if sounds not in ("families", "synth"):
        raise ValueError(f"sounds must be 'families' or 'synth', got {sounds!r}")
    folder = Path(folder)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    (folder / "mirror").mkdir(parents=True, exist_ok=True)
    names = list(FAMILIES)
    taken: set = set()
    rows = []
    for i in range(n_clips):
        rng = np.random.default_rng([seed, i])
        family = names[i % len(names)] if sounds == "families" else "synth"
        synth, labels = FAMILIES[family] if sounds == "families" else (None, ["/m/0synth"])
        ytid = _ytid(rng, taken)
        start = 1.0 + 0.5 * (i % 3)
        n = int(round(seconds * SR))
        audio = synth(rng, n) if synth else pretraining_clip(rng, seconds)[:n]
        segment = _normalise(audio, rng.uniform(0.3, 0.9))
        before = _normalise(np.sin(2 * np.pi * 1000 * _time(int(start * SR))), 0.5)  # other audio: a beep
        after = _normalise(_noise(rng, SR, 1.0), 0.3)
        video_fmt, mirror_fmt = _VIDEO_FORMATS[i % 3], _MIRROR_FORMATS[i % 3]
        clip_id = segment_clip_id(ytid, start)
        video = f"videos/{ytid}.{video_fmt[0]}"
        mirror = f"mirror/{clip_id}.{mirror_fmt[0]}"
        _write(folder / video, np.concatenate([before, segment, after]), video_fmt)
        _write(folder / mirror, segment, mirror_fmt)
        rows.append(dict(ytid=ytid, start_s=start, end_s=start + seconds, family=family, labels=labels,
                         clip_id=clip_id, video=video, mirror=mirror))
    write_segments_csv(folder / CSV_NAME, rows)
    return rows


def write_segments_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write rows (ytid, start_s, end_s, labels) as an AudioSet segments CSV."""
    unique_labels = {label for row in rows for label in row["labels"]}
    lines = [
        "# Segments csv created by demo.pool",
        f"# num_ytids={len({r['ytid'] for r in rows})}, num_segs={len(rows)}, "
        f"num_unique_labels={len(unique_labels)}, num_positive_labels={sum(len(r['labels']) for r in rows)}",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    lines += [f'{r["ytid"]}, {r["start_s"]:.3f}, {r["end_s"]:.3f}, "{",".join(r["labels"])}"' for r in rows]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
