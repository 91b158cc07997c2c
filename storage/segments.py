"""AudioSet segments: one line of a segments CSV (ytid, start, end, labels), its clip id, and
deterministic subsets. Pure parsing: the download stage reads the CSV (file or URL)."""
from __future__ import annotations

import csv
import hashlib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Segment:
    ytid: str
    start_s: float
    end_s: float
    labels: tuple[str, ...] = ()

    @property
    def clip_id(self) -> str:
        return clip_id(self.ytid, self.start_s)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def clip_id(ytid: str, start_s: float) -> str:
    """`<ytid>_<start in ms>`: unique per segment, stable, usable as a file name."""
    return f"{ytid}_{round(start_s * 1000)}"


def parse_segments(text: str, origin: str = "segments csv") -> list[Segment]:
    """Parse an AudioSet segments CSV: `# ...` comments, then `YTID, start, end, "label,label"`."""
    segments = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([line], skipinitialspace=True))
        problem = None
        if len(fields) < 3:
            problem = f"expected YTID, start_seconds, end_seconds, positive_labels; found {len(fields)} field(s)"
        else:
            ytid = fields[0].strip()
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                start = end = None
                problem = f"start_seconds and end_seconds must be numbers; found {fields[1]!r}, {fields[2]!r}"
            if start is not None and not (ytid and 0 <= start < end):
                problem = f"expected a YTID and 0 <= start_seconds < end_seconds; found {fields[:3]}"
        if problem:
            raise ValueError(f"{origin}, line {number}: {problem}: {line.strip()[:120]!r}")
        labels = tuple(label.strip() for label in ",".join(fields[3:]).split(",") if label.strip())
        segments.append(Segment(ytid, start, end, labels))
    return segments


def dataset_name(path_or_url: str) -> str:
    """The CSV's file name without extension, e.g. 'balanced_train_segments'."""
    return Path(urllib.parse.urlparse(str(path_or_url)).path).stem


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2 ** 64


def select_subset(segments: list[Segment], fraction: float = 1.0, limit: int | None = None) -> list[Segment]:
    """A deterministic subset: the segments whose ytid hashes below `fraction`, in hash order,
    then the first `limit`. Independent of the CSV's line order; duplicate clip ids are dropped."""
    unique = list({s.clip_id: s for s in reversed(segments)}.values())  # first occurrence wins
    chosen = sorted((s for s in unique if _unit_hash(s.ytid) < fraction),
                    key=lambda s: (_unit_hash(s.ytid), s.ytid, s.start_s))
    return chosen if limit is None else chosen[:limit]
