"""Content keys and completion records.

Every stage is a function of (its inputs' identities, its config). `stable_key`
turns those into a short hex key; a stage writes `<output>.done.json` holding
that key as its last step, and a rerun whose key matches skips the work.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from storage.atomic import read_json, write_json
from storage.faults import maybe_crash


def stable_key(*parts, length: int = 16) -> str:
    """Deterministic hash of JSON-serialisable parts (dict key order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def record_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".done.json")


def write_record(output: str | Path, key: str, **info) -> None:
    maybe_crash(f"record:{output}")
    write_json(record_path(output), {"key": key, **info})


def read_record(output: str | Path) -> dict | None:
    path = record_path(output)
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None  # a torn record counts as absent: the stage reruns


def is_complete(output: str | Path, key: str) -> bool:
    record = read_record(output)
    return record is not None and record.get("key") == key and Path(output).exists()

