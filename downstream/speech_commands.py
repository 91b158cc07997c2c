"""Speech Commands V1 / V2, the 12-class keyword task (10 words, _unknown_, _silence_).

Splits: the official validation_list.txt and testing_list.txt; every other
word clip is train. All non-target words are _unknown_ (not subsampled: the
benchmark may balance). _silence_ comes from the _background_noise_ recordings
cut into non-overlapping 1 s crops written beside the extracted data (the one
place a recipe writes audio); each recording's first 80 % of crops are train,
next 10 % valid, last 10 % test, so no second of noise is in two splits.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import soundfile as sf

from downstream.base import Entry, Recipe, RemoteFile, Source, find_dir
from storage.atomic import atomic_path

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
CLASSES = WORDS + ("_unknown_", "_silence_")
NOISE = "_background_noise_"


def collect(roots: list[Path], work_dir: Path, source: str) -> list[Entry]:
    root = find_dir(roots, ".", "speech_commands", containing="testing_list.txt")
    if root is None:
        raise FileNotFoundError(f"no testing_list.txt in {[str(r) for r in roots]}: not a Speech Commands folder")
    valid = _read_list(root / "validation_list.txt")
    test = _read_list(root / "testing_list.txt")
    entries = []
    for word_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("_")):
        label = word_dir.name if word_dir.name in WORDS else "_unknown_"
        for wav in sorted(word_dir.glob("*.wav")):
            rel = f"{word_dir.name}/{wav.name}"
            split = "test" if rel in test else "valid" if rel in valid else "train"
            entries.append(Entry(rel[:-4], wav, label, split, source))
    return entries + silence_entries(root / NOISE, work_dir / "_silence_", source)


def _read_list(path: Path) -> set[str]:
    if not path.exists():
        raise FileNotFoundError(f"official split list {path} is missing")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def silence_entries(noise_dir: Path, out_dir: Path, source: str, seconds: float = 1.0) -> list[Entry]:
    entries = []
    for noise in sorted(noise_dir.glob("*.wav")):
        info = sf.info(str(noise))
        crop = int(seconds * info.samplerate)
        count = info.frames // crop
        if count == 0:
            continue
        audio = None
        for k in range(count):
            path = out_dir / f"{noise.stem}-{k:03d}.wav"
            if not path.exists():  # crops are written atomically: an existing one is whole
                if audio is None:
                    audio, _ = sf.read(str(noise), dtype="int16", always_2d=False)
                with atomic_path(path) as tmp:
                    sf.write(str(tmp), audio[k * crop:(k + 1) * crop], info.samplerate,
                             subtype="PCM_16", format="WAV")
            position = k / count
            split = "train" if position < 0.8 else "valid" if position < 0.9 else "test"
            entries.append(Entry(f"_silence_/{noise.stem}-{k:03d}", path, "_silence_", split, source))
    return entries


def _recipe(version: int, url: str, scores: dict) -> Recipe:
    name = f"speech-commands-v{version}"
    archive = url.rsplit("/", 1)[1]
    return Recipe(
        name=name,
        description=f"Keyword spotting, Speech Commands V{version} (Warden 2018), 12 classes",
        classes=CLASSES,
        source=Source(files=(RemoteFile(archive, url),)),
        collect=partial(collect, source=name),
        paper_scores=scores,
        paper_classes=12,
        split_rule="official validation_list.txt / testing_list.txt; _silence_ crops: first 80 % / next 10 % / "
                   "last 10 % of each background recording",
    )


V1 = _recipe(1, "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
             {"random_frozen": 62.0, "random_finetuned": 97.4, "decar_frozen": 63.9, "decar_finetuned": 97.6})
V2 = _recipe(2, "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
             {"random_frozen": 62.9, "random_finetuned": 97.7, "decar_frozen": 65.7, "decar_finetuned": 97.6})
