"""AudioSet mirrors as people keep them: which file of a mirror holds which segment.

Layouts recognised without configuration (any extension of MIRROR_EXTENSIONS, at
any depth: `balanced_train_segments/`, `eval_segments/`, sharded `00/`, `01/`):

    <ytid>.<ext>                    one file per video (or per segment)
    Y<ytid>.<ext>                   audioset_tagging_cnn / PANNs download scripts
    <ytid>_<start>.<ext>            start in seconds, integer or decimal (`_30`, `_30.000`)
    <ytid>_<start>_<end>.<ext>      start and end in seconds
    <ytid>_<start ms>.<ext>         this project's own clip id

A file named with a start time belongs to the segment starting there; a file
named by the video alone serves every segment of that video (cut if it is longer
than the segment). `pattern` (e.g. "{ytid}_{start:.3f}.wav", "Y{ytid}.wav")
names the file directly for any other layout. Pure: listing a folder or an HTTP
index page is the caller's business (tasks/mirror.py).
"""
from __future__ import annotations

import html
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from storage.segments import Segment

MIRROR_EXTENSIONS = ("flac", "wav", "ogg", "opus", "mp3", "m4a", "webm")
LAYOUTS = ("<ytid>", "Y<ytid>", "<ytid>_<start s>", "<ytid>_<start s>_<end s>", "<ytid>_<start ms>")
PATTERN_FIELDS = ("ytid", "start", "end", "clip_id")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def pattern_path(pattern: str, segment: Segment) -> str:
    """The relative path `pattern` gives for `segment` ({ytid}, {start}, {end} in seconds, {clip_id})."""
    return pattern.format(ytid=segment.ytid, start=segment.start_s, end=segment.end_s, clip_id=segment.clip_id)


def check_pattern(pattern: str) -> None:
    """Fail with a readable message when `pattern` cannot name a file."""
    names = {m.group(1).split(":")[0].split("!")[0] for m in re.finditer(r"{([^{}]*)}", pattern)}
    unknown = sorted(names - set(PATTERN_FIELDS))
    if unknown or not names & {"ytid", "clip_id"}:
        raise ValueError(f"mirror_pattern must name files with {{ytid}} or {{clip_id}} (and optionally {{start}}, "
                         f"{{end}} in seconds, e.g. '{{ytid}}_{{start:.3f}}.wav'); got {pattern!r}"
                         + (f" with unknown fields {unknown}" if unknown else ""))
    try:
        pattern_path(pattern, Segment("abcdefghijk", 30.0, 40.0))
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"mirror_pattern {pattern!r} cannot be formatted: {exc}") from None


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the mirror's root, '/'-separated
    start_s: float | None = None  # from the name; None: the file is named by its video alone
    end_s: float | None = None
    start_ms: bool = False  # the start could be this project's <start ms>


def _interpretations(stem: str):
    """(ytid, start, end, start may be ms) readings of a file's stem; ytids may hold '_' and digits."""
    parts = stem.split("_")
    readings = [(stem, None, None, False)]
    if len(parts) >= 2 and _NUMBER.fullmatch(parts[-1]):
        readings.append(("_".join(parts[:-1]), float(parts[-1]), None, parts[-1].isdigit()))
    if len(parts) >= 3 and _NUMBER.fullmatch(parts[-1]) and _NUMBER.fullmatch(parts[-2]):
        start, end = float(parts[-2]), float(parts[-1])
        if start < end:
            readings.append(("_".join(parts[:-2]), start, end, False))
    for ytid, start, end, ms in readings:
        yield ytid, start, end, ms
        if ytid.startswith("Y") and len(ytid) > 1:
            yield ytid[1:], start, end, ms


@dataclass
class MirrorIndex:
    """Files of a mirror by the YouTube id their name carries."""

    files: list[str]
    by_ytid: dict[str, list[Entry]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for path in self.files:
            name = PurePosixPath(path)
            if name.suffix[1:].lower() not in MIRROR_EXTENSIONS:
                continue
            for ytid, start, end, ms in _interpretations(name.stem):
                self.by_ytid.setdefault(ytid, []).append(Entry(path, start, end, ms))

    def find(self, segment: Segment) -> list[Entry]:
        """The files that hold `segment`, best first: named by its start (and end), then by its video
        alone; within each, by extension (MIRROR_EXTENSIONS order), then name."""
        entries = self.by_ytid.get(segment.ytid, [])
        by_start = [e for e in entries if e.start_s is not None and _same_start(e, segment)]
        whole = [e for e in entries if e.start_s is None]
        rank = {ext: i for i, ext in enumerate(MIRROR_EXTENSIONS)}

        def order(e: Entry):
            return (rank.get(PurePosixPath(e.path).suffix[1:].lower(), len(rank)), e.path)
        return sorted(by_start, key=order) + sorted(whole, key=order)

    def not_found(self, segment: Segment, where: str) -> str:
        """The error of a segment with no file: the layouts tried and a few names that were there."""
        same_video = sorted({e.path for e in self.by_ytid.get(segment.ytid, [])})
        if same_video:
            seen = f"files of video {segment.ytid} found, for other segments: {', '.join(same_video[:3])}"
        else:
            sample = [p for p in self.files if PurePosixPath(p).suffix[1:].lower() in MIRROR_EXTENSIONS][:3]
            seen = (f"{len(self.files)} files found, e.g. {', '.join(sample)}" if sample else
                    f"no audio files found ({len(self.files)} other files)" if self.files else "no files found")
        return (f"no file for segment {segment.ytid} [{segment.start_s:g}, {segment.end_s:g}] s under {where}: "
                f"tried {', '.join(LAYOUTS)} .{{{','.join(MIRROR_EXTENSIONS)}}} at any depth; {seen}. "
                "Set mirror_pattern for another layout")


def _same_start(entry: Entry, segment: Segment) -> bool:
    """The name's start is the segment's in seconds (and its end, when named), or its start in ms."""
    if abs(entry.start_s - segment.start_s) < 5e-4:
        return entry.end_s is None or abs(entry.end_s - segment.end_s) < 5e-4
    return entry.start_ms and entry.end_s is None and round(entry.start_s) == round(segment.start_s * 1000)


def list_folder(root: str) -> list[str]:
    """Every file under `root` (following no hidden folders), as '/'-separated relative paths."""
    out = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, root)
        out += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
                for name in sorted(files) if not name.startswith(".")]
    return out


def index_links(page: str, page_url: str, base_url: str) -> tuple[list[str], list[str]]:
    """Links of an HTTP directory index (Apache, nginx, python -m http.server): (files, folders),
    as URLs under `base_url`; links leaving it (parents, sorting, other sites) are dropped."""
    files, folders = [], []
    for href in _HREF.findall(page):
        url = urllib.parse.urljoin(page_url, html.unescape(href)).split("#")[0].split("?")[0]
        if not url.startswith(base_url) or len(url) <= len(page_url) and url.endswith("/"):
            continue
        (folders if url.endswith("/") else files).append(url)
    return files, folders
