"""Checksums of Zarr shard files, recorded when a shard is written and verified before use.

Zarr does not notice every damaged file: a truncated shard or a deleted chunk
file reads back as fill values (zeros) without an error. So each shard's
completion record holds `files`: the sha256 of every file that stores its rows
(None for a chunk zarr did not write because it held only fill values), and
readers verify them before they trust the data.
"""
from __future__ import annotations

import json
from pathlib import Path

from storage.records import file_sha256, read_record


class CorruptShard(RuntimeError):
    pass


def _file_rows(store: Path, array: str) -> int:
    meta = json.loads((store / array / "zarr.json").read_text())
    grid = meta["chunk_grid"]["configuration"]["chunk_shape"]  # the shard shape when sharded
    return int(grid[0])


def _chunk_paths(store: Path, array: str, start: int, stop: int) -> list[str]:
    rows = _file_rows(store, array)
    ndim = len(json.loads((store / array / "zarr.json").read_text())["shape"])
    tail = "/0" * (ndim - 1)  # every array here has one chunk along its other axes
    return [f"{array}/c/{i}{tail}" for i in range(start // rows, (max(stop, start + 1) - 1) // rows + 1)]


def shard_checksums(store: str | Path, arrays: tuple[str, ...], start: int, stop: int) -> dict:
    """{relative file: sha256 or None} for the files holding rows start..stop of `arrays`."""
    store = Path(store)
    out = {}
    for array in arrays:
        for rel in _chunk_paths(store, array, start, stop):
            path = store / rel
            out[rel] = file_sha256(path) if path.is_file() else None
    return out


def verify_files(store: str | Path, files: dict, what: str) -> None:
    store = Path(store)
    for rel, expected in files.items():
        path = store / rel
        if expected is None:
            continue  # an all-fill chunk: nothing was written
        if not path.is_file():
            raise CorruptShard(f"{what}: {path} is missing (recorded sha256 {expected[:12]}...)")
        if file_sha256(path) != expected:
            raise CorruptShard(f"{what}: {path} does not match the sha256 recorded when it was written "
                               f"(truncated or altered)")


def verify_shard(store: str | Path, shard: int) -> None:
    """Check one shard's files against its record; a record without checksums is trusted as is."""
    marker = Path(store) / "shards" / f"shard-{shard:05d}"
    record = read_record(marker)
    if record is None:
        raise CorruptShard(f"{store}: shard {shard} has no completion record")
    what = f"{store} shard {shard}"
    try:
        verify_files(store, record.get("files") or {}, what)
    except CorruptShard as exc:
        raise CorruptShard(f"{exc}. Delete {marker}.done.json and rerun to recompute that shard.") from None


def verify_rows(store: str | Path, start: int, stop: int) -> None:
    """Verify every shard of `store` that holds a row in start..stop."""
    store = Path(store)
    records = sorted((store / "shards").glob("shard-*.done.json"))
    for path in records:
        record = read_record(path.with_name(path.name[: -len(".done.json")]))
        if record and record.get("start", 0) < stop and record.get("stop", 0) > start:
            verify_shard(store, int(path.name[6:11]))


def verify_store(store: str | Path) -> None:
    verify_rows(store, 0, 1 << 62)
