"""What every downstream task recipe shares: its description, where its data
comes from, how files become manifest rows, and deterministic splits.

A recipe's `collect(roots, work_dir)` looks at the dataset as it lies on disk
(`roots`: the extracted archives' folders, or the user's own copy) and returns
one Entry per clip (label, split, file). `Recipe.prepare` fetches and extracts
the sources (resumably), probes every file with soundfile and writes the task
manifest. Audio stays as published (any rate, any channel count): the feature
stage resamples to 16 kHz mono.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

import soundfile as sf

from storage.archives import archive_stem, download_file, is_archive, safe_extract
from storage.layout import DataLayout
from storage.locks import DirectoryLock
from storage.manifest import FAILED, OK, write_manifest

SPLITS = ("train", "valid", "test")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name in the downloads folder, and under a base-URL or folder override
    url: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Source:
    files: tuple[RemoteFile, ...] = ()
    needs_local_path: bool = False  # registration or a licence stands between us and the files
    instructions: str = ""
    default_path: str | None = None  # generic recipes: the folder or CSV named in the recipe


@dataclass(frozen=True)
class Entry:
    clip_id: str
    path: Path
    label: str
    split: str
    source: str


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    classes: tuple[str, ...]  # empty: the classes are the data's (speaker ids, generic recipes)
    source: Source
    collect: Callable[[list[Path], Path], list[Entry]] = field(repr=False)
    paper_scores: dict[str, float] | None = None  # DECAR Table 2, test accuracy %
    paper_classes: int | None = None  # the class count the paper states
    split_rule: str = ""
    # generated tasks: writes the task's data under the given data folder and returns its root
    generate: Callable[[Path], Path] | None = field(default=None, repr=False)

    def prepare(self, data_dir: str | Path, source_override: str | Path | None = None) -> Path:
        """Fetch, extract (or generate) and list the task's clips; returns the manifest path."""
        layout = DataLayout(data_dir)
        work_dir = layout.audio_dir(f"task-{self.name}")
        # one preparer per task and data folder: two would write the same .part files
        with DirectoryLock(layout.downloads() / self.name, what=f"task {self.name} download"):
            if self.generate and source_override is None:
                roots = [self.generate(layout.root)]
            else:
                roots = fetch_sources(self, layout, source_override)
            entries = self.collect(roots, work_dir)
            if not entries:
                raise ValueError(f"task {self.name}: found no clips under {[str(r) for r in roots]}. "
                                 f"{self.source.instructions or self.description}")
            stray = sorted({e.label for e in entries} - set(self.classes)) if self.classes else []
            if stray:
                raise ValueError(f"task {self.name}: labels {stray} are not among its classes {self.classes}")
            rows = probe_entries(entries, Path(data_dir))
            return write_manifest(layout.manifest(f"task-{self.name}"), rows)


def fetch_sources(recipe: Recipe, layout: DataLayout, override: str | Path | None) -> list[Path]:
    """Folders to look for the dataset in: extracted archives, plain files' folder, or the user's copy.

    override: None (the published URLs), a base URL (each file fetched from
    <base>/<name>), a folder holding the published files (extracted from
    there), or a folder holding the dataset already extracted.
    """
    source = recipe.source
    if source.needs_local_path or not source.files:
        override = override if override is not None else source.default_path
        if override is None:
            raise ValueError(f"task {recipe.name} needs a local copy of its dataset: pass its folder as the "
                             f"source override. {source.instructions}")
        folder = Path(override).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"task {recipe.name}: source {folder} does not exist. "
                                    f"{source.instructions}")
        return [folder]

    local_files: dict[str, Path] = {}
    if override is not None and not _is_url(str(override)):
        folder = Path(override).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"task {recipe.name}: source folder {folder} does not exist")
        present = {f.name: folder / f.name for f in source.files if (folder / f.name).is_file()}
        if not any(is_archive(name) for name in present):
            return [folder]  # the dataset, already extracted (plain files such as metadata inside it)
        missing = [f.name for f in source.files if f.name not in present]
        if missing:
            raise FileNotFoundError(f"task {recipe.name}: {folder} holds some of the published files but "
                                    f"lacks {missing}")
        local_files = present

    downloads = layout.downloads() / recipe.name
    extracted = layout.audio_dir(f"task-{recipe.name}")
    roots: list[Path] = []
    plain_dirs: list[Path] = []
    for remote in source.files:
        if remote.name in local_files:
            path = local_files[remote.name]
        else:
            url = remote.url if override is None else f"{str(override).rstrip('/')}/{remote.name}"
            path = download_file(url, downloads / remote.name, sha256=remote.sha256, size=remote.size)
        if is_archive(remote.name):
            roots.append(safe_extract(path, extracted / archive_stem(remote.name)))
        elif path.parent not in plain_dirs:
            plain_dirs.append(path.parent)
    return roots + plain_dirs


def _is_url(value: str) -> bool:
    return urlparse(value).scheme in ("http", "https", "file")


def probe_entries(entries: list[Entry], data_dir: Path) -> list[dict]:
    """Manifest rows; unreadable or missing files become 'failed' rows, never silent gaps."""
    counts = Counter(e.clip_id for e in entries)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate clip ids, e.g. {duplicates[:5]}")
    with ThreadPoolExecutor(max_workers=8) as pool:  # file metadata reads are I/O bound
        return list(pool.map(lambda e: _probe(e, data_dir.resolve()), entries))


def _probe(entry: Entry, data_dir: Path) -> dict:
    row = {"clip_id": entry.clip_id, "path": _relative(entry.path, data_dir), "duration_s": 0.0,
           "sample_rate": 0, "status": OK, "error": "", "error_kind": "", "source": entry.source,
           "label": entry.label, "split": entry.split}
    if not entry.path.is_file():
        return {**row, "status": FAILED, "error": f"file not found: {entry.path}", "error_kind": "missing"}
    try:
        info = sf.info(str(entry.path))
    except Exception as exc:  # soundfile raises several types for bad files
        return {**row, "status": FAILED, "error": f"unreadable audio: {exc}", "error_kind": "unreadable"}
    if info.frames <= 0 or info.samplerate <= 0:
        return {**row, "status": FAILED, "error": "no audio frames", "error_kind": "empty",
                "sample_rate": int(info.samplerate)}
    return {**row, "duration_s": info.frames / info.samplerate, "sample_rate": int(info.samplerate)}


def _relative(path: Path, data_dir: Path) -> str:
    """Relative to the data root when inside it (movable data folder), else absolute."""
    absolute = path.resolve()
    try:
        return absolute.relative_to(data_dir).as_posix()
    except ValueError:
        return absolute.as_posix()


# ---------------------------------------------------------------- splits

def hash_rank(key: str) -> str:
    """A fixed pseudo-random order that does not depend on listing order or Python's hash seed."""
    return hashlib.sha1(key.encode()).hexdigest()


def assign_splits(pairs: Iterable[tuple[str, str]], valid: float = 0.1, test: float = 0.1) -> dict[str, str]:
    """(group, label) pairs -> {group: split}, stratified by label, deterministic.

    Within each label the groups are ordered by hash; the first round(test * n)
    go to test, the next round(valid * n) to valid, the rest to train (at least
    one group stays in train). Group = clip id when clips are independent, or a
    speaker / recording / session id to keep related clips in one split.
    """
    by_label: dict[str, set[str]] = {}
    for group, label in pairs:
        by_label.setdefault(label, set()).add(group)
    out: dict[str, str] = {}
    for label, groups in by_label.items():
        ordered = sorted(groups, key=lambda g: hash_rank(f"{label}/{g}"))
        n = len(ordered)
        n_test = math.floor(test * n + 0.5)
        n_valid = math.floor(valid * n + 0.5)
        while n_test + n_valid >= n and (n_test or n_valid):
            if n_valid >= n_test and n_valid:
                n_valid -= 1
            else:
                n_test -= 1
        for i, group in enumerate(ordered):
            out[group] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    return out


# ---------------------------------------------------------------- finding things

def find_dir(roots: list[Path], *candidates: str, containing: str) -> Path | None:
    """The first root/candidate folder holding `containing` (a file or folder name)."""
    for root in roots:
        for candidate in candidates or (".",):
            folder = root / candidate
            if (folder / containing).exists():
                return folder
    return None


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def clip_id_of(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()
