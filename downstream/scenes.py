"""Acoustic scenes: TUT Urban Acoustic Scenes 2018, development set (Zenodo 1228142), 10 classes.

Split: the official fold 1 (evaluation_setup/fold1_train.txt = train,
fold1_evaluate.txt = test). Valid is held out of train by recording location
(scene + meta.csv identifier, e.g. airport/barcelona-0), 10 % of each scene's
locations, so segments of one recording never straddle train and valid.
Audio is 48 kHz stereo 24-bit as published; the feature stage converts it.
"""
from __future__ import annotations

import csv
from pathlib import Path

from downstream.base import Entry, Recipe, RemoteFile, Source, assign_splits, find_dir

DATASET = "TUT-urban-acoustic-scenes-2018-development"
ZENODO = "https://zenodo.org/record/1228142/files"
AUDIO_ARCHIVES = 13
CLASSES = ("airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
           "street_pedestrian", "street_traffic", "tram")


def collect(roots: list[Path], work_dir: Path) -> list[Entry]:
    meta_dir = find_dir(roots, DATASET, ".", containing="meta.csv")
    if meta_dir is None:
        raise FileNotFoundError(f"no {DATASET}/meta.csv in {[str(r) for r in roots]}")
    meta = {row[0]: row for row in _rows(meta_dir / "meta.csv")}  # filename, scene, identifier, source
    audio = {}  # the audio zips each unpack their own part of <DATASET>/audio/
    for root in roots:
        for folder in (root / DATASET, root):
            for wav in folder.glob("audio/*.wav"):
                audio.setdefault(f"audio/{wav.name}", wav)
    train = [row[0] for row in _rows(meta_dir / "evaluation_setup" / "fold1_train.txt")]
    test = [row[0] for row in _rows(meta_dir / "evaluation_setup" / "fold1_evaluate.txt")]
    unknown = [f for f in train + test if f not in meta]
    if unknown:
        raise ValueError(f"{len(unknown)} files of the fold lists are not in meta.csv, e.g. {unknown[:3]}")

    def location(filename: str) -> str:
        row = meta[filename]
        identifier = row[2] if len(row) > 2 else "-".join(Path(filename).stem.split("-")[1:3])
        return f"{row[1]}/{identifier}"

    held_out = assign_splits([(location(f), meta[f][1]) for f in train], valid=0.1, test=0.0)
    test_set, entries = set(test), []
    for filename in train + test:
        split = "test" if filename in test_set else held_out[location(filename)]
        path = audio.get(filename, meta_dir / filename)
        entries.append(Entry(Path(filename).stem, path, meta[filename][1], split, "tut-urban-2018"))
    return entries


def _rows(path: Path) -> list[list[str]]:
    """Tab-separated rows, header ('filename ...') skipped."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r and r[0].strip()]
    return [r for r in rows if r[0] != "filename"]


TUT_URBAN = Recipe(
    name="tut-urban-2018",
    description="Acoustic scene classification, TUT Urban Acoustic Scenes 2018 development set, 10 classes",
    classes=CLASSES,
    source=Source(files=tuple(
        RemoteFile(name, f"{ZENODO}/{name}") for name in
        [f"{DATASET}.audio.{i}.zip" for i in range(1, AUDIO_ARCHIVES + 1)] + [f"{DATASET}.meta.zip"])),
    collect=collect,
    paper_scores={"random_frozen": 32.6, "random_finetuned": 61.6, "decar_frozen": 51.4, "decar_finetuned": 66.9},
    paper_classes=10,
    split_rule="official fold1_train.txt / fold1_evaluate.txt (test); valid = 10 % of each scene's recording "
               "locations held out of train",
)
