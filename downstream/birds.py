"""Bird song detection: freefield1010 + warblr (DCASE 2018 bird audio detection), 2 classes.

Labels: the `hasbird` column (0 / 1) of ff1010bird_metadata.csv and
warblrb10k_public_metadata.csv (columns itemid, datasetid, hasbird); audio
wav/<itemid>.wav in each dataset's zip. No official split: the paper says
random 80/20; here 80/10/10 (a validation split is needed to choose the
model), stratified by label, by a hash of the item id. The metadata URLs are
the figshare files the challenge linked; override the source if they move.
"""
from __future__ import annotations

import csv
from pathlib import Path

from downstream.base import Entry, Recipe, RemoteFile, Source, assign_splits

METADATA = {"ff1010bird": "ff1010bird_metadata.csv", "warblrb10k": "warblrb10k_public_metadata.csv"}
ARCHIVES = {"ff1010bird": "ff1010bird_wav", "warblrb10k": "warblrb10k_public_wav"}


def collect(roots: list[Path], work_dir: Path) -> list[Entry]:
    items = []  # (dataset, itemid, label)
    for dataset, filename in METADATA.items():
        metadata = _find(roots, filename)
        with open(metadata, newline="") as f:
            reader = csv.DictReader(f)
            if not {"itemid", "hasbird"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{metadata}: expected columns itemid,datasetid,hasbird, got {reader.fieldnames}")
            for line, row in enumerate(reader, 2):
                if row["hasbird"] not in ("0", "1"):
                    raise ValueError(f"{metadata} line {line}: hasbird is {row['hasbird']!r}, expected 0 or 1")
                items.append((dataset, row["itemid"], row["hasbird"]))
    splits = assign_splits([(f"{d}/{i}", label) for d, i, label in items])
    entries = []
    for dataset, itemid, label in items:
        folders = [r / "wav" for r in roots] + [r / ARCHIVES[dataset] / "wav" for r in roots]
        path = next((f / f"{itemid}.wav" for f in folders if (f / f"{itemid}.wav").exists()),
                    folders[0] / f"{itemid}.wav")
        entries.append(Entry(f"{dataset}/{itemid}", path, label, splits[f"{dataset}/{itemid}"], dataset))
    return entries


def _find(roots: list[Path], filename: str) -> Path:
    for root in roots:
        if (root / filename).is_file():
            return root / filename
    raise FileNotFoundError(f"{filename} not found in {[str(r) for r in roots]}")


BIRD_SONG = Recipe(
    name="bird-song",
    description="Bird audio detection, freefield1010 + warblr, 2 classes (hasbird 0 / 1)",
    classes=("0", "1"),
    source=Source(files=(
        RemoteFile("ff1010bird_wav.zip", "https://archive.org/download/ff1010bird/ff1010bird_wav.zip"),
        RemoteFile("warblrb10k_public_wav.zip",
                   "https://archive.org/download/warblrb10k_public/warblrb10k_public_wav.zip"),
        RemoteFile("ff1010bird_metadata.csv", "https://ndownloader.figshare.com/files/6035814"),
        RemoteFile("warblrb10k_public_metadata.csv", "https://ndownloader.figshare.com/files/6035817"),
    )),
    collect=collect,
    paper_scores={"random_frozen": 67.6, "random_finetuned": 90.0, "decar_frozen": 76.4, "decar_finetuned": 90.3},
    paper_classes=2,
    split_rule="random deterministic 80/10/10 stratified by hasbird (hash of dataset/itemid); the paper: 80/20",
)
