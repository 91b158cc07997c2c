"""Generated downstream tasks from the synthetic sound world (downstream.synth), held-out sources only.

    synth-speaker     which of 12 held-out speakers talks (random syllables, random room)
    synth-keyword     which of 10 held-out words is said; speakers are held out AND differ
                      between train, valid and test (as in Speech Commands)
    synth-instrument  instrument family (bowed, plucked, blown, reed, struck) of a held-out
                      instrument; instruments differ between train, valid and test
    synth-scene       scene class (street, park, rain, cafe, office, kitchen) of a held-out scene
                      instance; instances (levels, room, event types) differ between the splits

Every source id is >= synth.HELD_OUT, so no task shares a speaker, word, instrument or scene
with `synth.pretraining_clip`. Clips are deterministic from [TASK_SEED, task, split, class, i];
TASK_SEED is no pre-training seed. `task_arrays` gives the clips in memory; `write_generated_task`
writes `<folder>/<split>/<class>/<nnn>.wav` (16-bit WAV) for the `folder:` recipe, atomically.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from downstream import synth
from downstream.synth import FAMILIES, HELD_OUT, SCENE_CLASSES, SR

TASK_SEED = 90210  # bench/science.py draws its pre-training pool from other first seeds
VERSION = 1  # bump when the generated audio changes
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class GeneratedTask:
    description: str
    classes: tuple[str, ...]
    per_class: dict           # split -> clips per class at scale 1
    make: Callable            # (class index, split, i, rng, samples, used) -> audio (unfinished)

    def counts(self, scale: float = 1.0) -> dict:
        """split -> total clips at this scale."""
        return {s: len(self.classes) * _scaled(n, scale) for s, n in self.per_class.items()}


def _scaled(n: int, scale: float) -> int:
    return max(1, int(round(n * scale)))


# speaker task: ids HELD_OUT + 0..11; keyword speakers HELD_OUT + 100.. (disjoint per split)
_KEYWORD_SPEAKERS = {"train": range(HELD_OUT + 100, HELD_OUT + 140), "valid": range(HELD_OUT + 140, HELD_OUT + 150),
                     "test": range(HELD_OUT + 150, HELD_OUT + 170)}
# instrument / scene instances: instance j of class c is id HELD_OUT + j * classes + c; j ranges per split
_INSTANCES = {"train": range(0, 12), "valid": range(12, 15), "test": range(15, 21)}


def _speaker(c, split, i, rng, n, used):
    return synth.speaker_clip(HELD_OUT + c, rng, n, used)


def _keyword(c, split, i, rng, n, used):
    speakers = _KEYWORD_SPEAKERS[split]
    return synth.keyword_clip(HELD_OUT + c, speakers[i % len(speakers)], rng, n, used)


def _instrument(c, split, i, rng, n, used):
    inst = _INSTANCES[split]
    return synth.instrument_clip(HELD_OUT + inst[i % len(inst)] * len(FAMILIES) + c, rng, n, used)


def _scene(c, split, i, rng, n, used):
    inst = _INSTANCES[split]
    return synth.scene_clip(HELD_OUT + inst[i % len(inst)] * len(SCENE_CLASSES) + c, rng, n, used)


GENERATED_TASKS: dict[str, GeneratedTask] = {
    "synth-speaker": GeneratedTask("speaker identity, 12 held-out speakers, random syllables and rooms",
                                   tuple(f"speaker{c:02d}" for c in range(12)),
                                   {"train": 16, "valid": 4, "test": 10}, _speaker),
    "synth-keyword": GeneratedTask("which of 10 held-out words (5 anagram pairs); held-out speakers, different "
                                   "per split",
                                   tuple(f"word{c:02d}" for c in range(10)),
                                   {"train": 20, "valid": 5, "test": 12}, _keyword),
    "synth-instrument": GeneratedTask("instrument family of held-out instruments, different per split",
                                      FAMILIES, {"train": 30, "valid": 8, "test": 24}, _instrument),
    "synth-scene": GeneratedTask("scene class of held-out scene instances, different per split",
                                 SCENE_CLASSES, {"train": 30, "valid": 8, "test": 20}, _scene),
}


def _task(name: str) -> GeneratedTask:
    if name not in GENERATED_TASKS:
        raise ValueError(f"unknown generated task {name!r}; generated tasks: {', '.join(GENERATED_TASKS)}")
    return GENERATED_TASKS[name]


def task_arrays(name: str, scale: float = 1.0, seconds: float = 1.5, sr: int = SR,
                with_sources: bool = False) -> dict:
    """split -> (audio (N, samples) float32 in [-1, 1], labels (N,) int64)[, sources (set of (kind, id))]."""
    task = _task(name)
    task_index = list(GENERATED_TASKS).index(name)
    n = int(round(seconds * SR))
    out = {}
    for s, split in enumerate(SPLITS):
        audio, labels, used = [], [], synth.Used()
        for c in range(len(task.classes)):
            for i in range(_scaled(task.per_class[split], scale)):
                rng = np.random.default_rng([TASK_SEED, task_index, s, c, i])
                audio.append(synth.finish(task.make(c, split, i, rng, n, used), rng, sr))
                labels.append(c)
        arrays = (np.stack(audio), np.asarray(labels, dtype=np.int64))
        out[split] = arrays + (used.sources,) if with_sources else arrays
    return out


def write_generated_task(name: str, folder: str | Path, scale: float = 1.0, seconds: float = 1.5) -> Path:
    """Write task `name` to folder/<split>/<class>/<nnn>.wav (replacing the folder); returns the folder."""
    import soundfile as sf

    from storage.atomic import atomic_path

    task = _task(name)
    arrays = task_arrays(name, scale, seconds)
    with atomic_path(folder) as tmp:  # a half-written task never sits under the final name
        for split, (audio, labels) in arrays.items():
            counters = {}
            for x, c in zip(audio, labels):
                i = counters.get(c, 0)
                counters[c] = i + 1
                target = tmp / split / task.classes[c]
                target.mkdir(parents=True, exist_ok=True)
                sf.write(target / f"{i:03d}.wav", x, SR, subtype="PCM_16")
    return Path(folder)


def generated_task_folder(name: str, data_dir: str | Path, scale: float = 1.0, seconds: float = 1.5) -> Path:
    """The task's folder under data_dir/generated-tasks/, written on first use (record-keyed)."""
    from storage.records import is_complete, stable_key, write_record

    folder = Path(data_dir) / "generated-tasks" / name
    key = stable_key(VERSION, name, scale, seconds)
    if not is_complete(folder, key):
        write_generated_task(name, folder, scale, seconds)
        write_record(folder, key)
    return folder
