"""Your own task: `folder:<path>` or `csv:<path>`.

folder: <root>/<split>/<class>/<files> when any of train/, valid/, test/
exist (a missing valid/ is held out of train: 10 % per class, by hash), else
<root>/<class>/<files> split 80/10/10 per class by a hash of the file path.

csv: columns path (relative to the CSV's folder, or absolute), label, split
(train | valid | test). Malformed rows are errors naming the line; listed
files that are missing or unreadable become failed manifest rows.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from downstream.base import SPLITS, Entry, Recipe, Source, assign_splits, audio_files, clip_id_of
from storage.records import stable_key


def collect_folder(roots: list[Path], work_dir: Path) -> list[Entry]:
    root = roots[0]
    if not root.is_dir():
        raise NotADirectoryError(f"folder task: {root} is not a folder")
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    if split_dirs:
        files = [(s, d.name, f) for s in split_dirs for d in _class_dirs(root / s) for f in audio_files(d)]
        if "valid" not in split_dirs:
            held_out = assign_splits([(clip_id_of(f, root), label) for s, label, f in files if s == "train"],
                                     valid=0.1, test=0.0)
            files = [(held_out[clip_id_of(f, root)] if s == "train" else s, label, f) for s, label, f in files]
        return [Entry(clip_id_of(f, root), f, label, split, root.name) for split, label, f in files]
    files = [(d.name, f) for d in _class_dirs(root) for f in audio_files(d)]
    splits = assign_splits([(clip_id_of(f, root), label) for label, f in files])
    return [Entry(clip_id_of(f, root), f, label, splits[clip_id_of(f, root)], root.name) for label, f in files]


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def collect_csv(roots: list[Path], work_dir: Path) -> list[Entry]:
    table = roots[0]
    if not table.is_file():
        raise FileNotFoundError(f"csv task: {table} is not a file")
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label", "split"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{table}: header lacks columns {sorted(missing)} (found {reader.fieldnames})")
        entries, seen = [], {}
        for line, row in enumerate(reader, 2):
            rel, label, split = (row.get(c) or "" for c in ("path", "label", "split"))
            rel, label, split = rel.strip(), label.strip(), split.strip()
            if not rel or not label:
                raise ValueError(f"{table} line {line}: empty path or label")
            if split not in SPLITS:
                raise ValueError(f"{table} line {line}: split {split!r} is not one of {SPLITS}")
            clip_id = Path(rel).with_suffix("").as_posix()
            if clip_id in seen:
                raise ValueError(f"{table} line {line}: {rel!r} repeats line {seen[clip_id]}")
            seen[clip_id] = line
            path = Path(rel) if Path(rel).is_absolute() else table.parent / rel
            entries.append(Entry(clip_id, path, label, split, table.stem))
    return entries


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "data"


def generic_recipe(kind: str, path: str) -> Recipe:
    """The task is named after the folder / file plus a short hash of its absolute path (unique, readable)."""
    absolute = Path(path).expanduser().resolve()
    name = f"{kind}-{_slug(absolute.stem if kind == 'csv' else absolute.name)}-{stable_key(str(absolute), length=6)}"
    return Recipe(
        name=name,
        description=f"Classification task from the {kind} {absolute}",
        classes=(),
        source=Source(needs_local_path=True, default_path=str(absolute),
                      instructions=__doc__.split("\n\n", 1)[1].strip()),
        collect=collect_folder if kind == "folder" else collect_csv,
        split_rule=("split folders, else 80/10/10 per class by hash" if kind == "folder"
                    else "the CSV's split column"),
    )
