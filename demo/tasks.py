"""Small downstream tasks generated offline for the demo and the tests (folder per class).

    demo-families  8 classes: which synthetic family (speech, chord, melody, hiss, rumble,
                   clicks, impacts, siren; demo.pool) a clip comes from. 25 clips each.
    demo-pitch     3 classes: low / mid / high. Tonal clips (chord, melody, speech) played
                   an octave down, as generated, or an octave up; the generators' own pitch
                   ranges span about 1.5 octaves, so neighbouring classes overlap. 30 clips each.

Clips are 1 s, 16 kHz mono WAV under `<data_dir>/demo-tasks/<name>/<class>/<nnn>.wav`, drawn
with seeds disjoint from the pre-training pool's (demo.pool.generate_pool uses [seed, i]; these
use [TASK_SEED, task, class, i]). The benchmark reads them with the `folder:` recipe (a
deterministic, stratified 80/10/10 split). numpy + soundfile only; each task takes ~1 s to make.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from demo.pool import FAMILIES, SR, _normalise, chord, melody, speech
from storage.atomic import atomic_path
from storage.records import is_complete, stable_key, write_record

TASK_SEED = 7919  # not the pool's seeds (0 by default; tests use small ones)
VERSION = 1  # bump when the generated audio changes
PITCH_SHIFTS = {"low": 0.5, "mid": 1.0, "high": 2.0}
TONAL = (chord, melody, speech)


def pitch_shifted(synth, rng, n: int, factor: float) -> np.ndarray:
    """synth's sound with every frequency times `factor`: generate n*factor samples and play them
    in n (band-limited first when speeding up, so nothing folds back over 8 kHz)."""
    x = synth(rng, int(round(n * factor)))
    if factor > 1:
        spectrum = np.fft.rfft(x)
        spectrum[np.fft.rfftfreq(len(x), 1 / SR) > 0.95 * SR / 2 / factor] = 0
        x = np.fft.irfft(spectrum, len(x))
    return np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x)


def families_clip(label: str, rng, n: int) -> np.ndarray:
    return FAMILIES[label][0](rng, n)


def pitch_clip(label: str, rng, n: int) -> np.ndarray:
    return pitch_shifted(TONAL[rng.integers(0, len(TONAL))], rng, n, PITCH_SHIFTS[label])


DEMO_TASKS = {  # name -> (classes, clip maker, clips per class)
    "demo-families": (tuple(FAMILIES), families_clip, 25),
    "demo-pitch": (tuple(PITCH_SHIFTS), pitch_clip, 30),
}


def generate_task(name: str, folder: str | Path, per_class: int | None = None, seconds: float = 1.0) -> Path:
    """Write task `name` to folder/<class>/<nnn>.wav (replacing the folder); returns the folder."""
    if name not in DEMO_TASKS:
        raise ValueError(f"unknown demo task {name!r}; demo tasks: {', '.join(DEMO_TASKS)}")
    classes, make, default_count = DEMO_TASKS[name]
    task_index = list(DEMO_TASKS).index(name)
    n = int(round(seconds * SR))
    with atomic_path(folder) as tmp:  # a half-written task never sits under the final name
        for c, label in enumerate(classes):
            (tmp / label).mkdir(parents=True)
            for i in range(per_class or default_count):
                rng = np.random.default_rng([TASK_SEED, task_index, c, i])
                audio = _normalise(make(label, rng, n), rng.uniform(0.3, 0.9))
                sf.write(tmp / label / f"{i:03d}.wav", audio, SR, subtype="PCM_16")
    return Path(folder)


def demo_task_folder(name: str, data_dir: str | Path, per_class: int | None = None,
                     seconds: float = 1.0) -> Path:
    """The task's folder under data_dir/demo-tasks/, generated on first use (record-keyed)."""
    folder = Path(data_dir) / "demo-tasks" / name
    key = stable_key(VERSION, name, per_class, seconds)
    if not is_complete(folder, key):
        generate_task(name, folder, per_class, seconds)
        write_record(folder, key)
    return folder
