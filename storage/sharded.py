"""The sharded-store protocol shared by feature stores and embedding stores.

A store holds N rows in Zarr arrays; shard s owns rows [s*S, (s+1)*S) and is written whole
by one writer, so parallel writers never touch the same file. A store is laid out (arrays
created, `layout_complete` and its key in the attributes) before any shard is written. A shard
is done when `shards/shard-NNNNN.done.json` holds the stage's shard key; that record also holds
the sha256 of every file storing the shard's rows, verified before the rows are trusted:
Zarr reads a truncated shard or a deleted chunk file back as fill values without an error.
"""
from __future__ import annotations

import json
from pathlib import Path

import zarr

from storage.records import file_sha256, read_record, write_record


class CorruptShard(RuntimeError):
    pass


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def shard_marker(store: str | Path, shard: int) -> Path:
    return Path(store) / "shards" / f"shard-{shard:05d}"


def laid_out(store: str | Path, key: str, key_attr: str = "feature_key") -> bool:
    """Whether a sharded store was fully created for `key` (a killed creation is redone)."""
    try:
        attrs = zarr.open_group(store, mode="r").attrs.asdict()
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return False
    return attrs.get("layout_complete") is True and attrs.get(key_attr) == key


def shard_done(store: str | Path, shard: int, key: str) -> bool:
    record = read_record(shard_marker(store, shard))
    return record is not None and record.get("key") == key


def shard_record(store: str | Path, shard: int) -> dict | None:
    return read_record(shard_marker(store, shard))


def write_shard_record(store: str | Path, shard: int, start: int, stop: int, arrays: tuple[str, ...],
                       key: str, **info) -> None:
    """Mark a shard done: its key, row range and the checksums of the files of `arrays` holding its rows."""
    files = shard_checksums(store, arrays, start, stop)
    write_record(shard_marker(store, shard), key, start=start, stop=stop, files=files, **info)


# ---------------------------------------------------------------- checksums

def _array_meta(store: Path, array: str) -> dict:
    return json.loads((store / array / "zarr.json").read_text())


def _chunk_paths(store: Path, array: str, start: int, stop: int) -> list[str]:
    meta = _array_meta(store, array)
    rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])  # the shard shape when sharded
    tail = "/0" * (len(meta["shape"]) - 1)  # every array here has one chunk along its other axes
    return [f"{array}/c/{i}{tail}" for i in range(start // rows, (max(stop, start + 1) - 1) // rows + 1)]


def shard_checksums(store: str | Path, arrays: tuple[str, ...], start: int, stop: int) -> dict:
    """{relative file: sha256 or None} for the files holding rows start..stop of `arrays`
    (None: a chunk zarr did not write because it held only fill values)."""
    store = Path(store)
    out = {}
    for array in arrays:
        for rel in _chunk_paths(store, array, start, stop):
            path = store / rel
            out[rel] = file_sha256(path) if path.is_file() else None
    return out


def verify_shard(store: str | Path, shard: int) -> None:
    """Check one shard's files against its record; a record without checksums is trusted as is."""
    marker = shard_marker(store, shard)
    record = read_record(marker)
    if record is None:
        raise CorruptShard(f"{store}: shard {shard} has no completion record")
    for rel, expected in (record.get("files") or {}).items():
        path = Path(store) / rel
        if expected is None:
            continue  # an all-fill chunk: nothing was written
        if not path.is_file():
            problem = f"{path} is missing (recorded sha256 {expected[:12]}...)"
        elif file_sha256(path) != expected:
            problem = f"{path} does not match the sha256 recorded when it was written (truncated or altered)"
        else:
            continue
        raise CorruptShard(f"{store} shard {shard}: {problem}. "
                           f"Delete {marker}.done.json and rerun to recompute that shard.")


def verify_rows(store: str | Path, start: int, stop: int) -> None:
    """Verify every recorded shard of `store` that holds a row in start..stop."""
    size, rows = int(zarr.open_group(store, mode="r").attrs["shard_size"]), _row_count(Path(store))
    for shard, (a, b) in enumerate(shard_ranges(rows, size)):
        if a < stop and b > start and shard_record(store, shard) is not None:
            verify_shard(store, shard)


def _row_count(store: Path) -> int:
    """Rows of the store: the first axis of any of its arrays (all share it)."""
    for meta_file in sorted(store.glob("*/zarr.json")):
        meta = json.loads(meta_file.read_text())
        if meta.get("node_type") == "array":
            return int(meta["shape"][0])
    raise FileNotFoundError(f"{store} holds no Zarr array")


def verify_store(store: str | Path) -> None:
    verify_rows(store, 0, 1 << 62)
