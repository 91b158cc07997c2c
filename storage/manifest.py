"""The clip manifest: one Parquet row per clip, whatever happened to it.

Columns every manifest has (the download flow and the benchmark recipes both
write it): clip_id, path, duration_s, sample_rate, status ('ok' | 'failed'),
error (readable reason, '' when ok), error_kind (short machine code), source.
Download manifests add ytid, start_s, end_s, labels; recipe manifests add label
and split. `path` is relative to the data root (the folder holding
`manifests/`), so a data folder can be moved or mounted elsewhere.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_path
from storage.records import stable_key

REQUIRED = ("clip_id", "path", "duration_s", "sample_rate", "status", "error", "error_kind", "source")
OK, FAILED = "ok", "failed"


def write_manifest(path: str | Path, rows: list[dict]) -> Path:
    """Write rows atomically. Rows are dicts holding at least REQUIRED."""
    path = Path(path)
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED if c not in row]
        if missing:
            raise ValueError(f"manifest row {i} ({row.get('clip_id')!r}) lacks columns {missing}")
    table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string()) for c in REQUIRED})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    table = pq.read_table(path)
    missing = [c for c in ("clip_id", "path", "status") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} is not a clip manifest: it lacks columns {missing}")
    return table.to_pylist()


def data_root(manifest_path: str | Path) -> Path:
    """Manifests live in <data>/manifests/; their paths are relative to <data>."""
    return Path(manifest_path).resolve().parent.parent


def resolve_audio(manifest_path: str | Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else data_root(manifest_path) / p


def ok_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == OK]


def manifest_key(rows: list[dict]) -> str:
    """Identity of the usable content: the ok rows' ids, files and durations."""
    return stable_key([(r["clip_id"], r["path"], round(float(r.get("duration_s") or 0), 3)) for r in ok_rows(rows)])
