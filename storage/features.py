"""Log-mel features in a chunked Zarr store (DESIGN.md).

    logmel  (N, n_mels, T) float16, one clip per chunk, S clips per shard
    length  (N,) int32 frames (0 for a clip that failed to decode)
    status  (N,) int8: 0 ok, 1 failed at this stage
    clip_id (N,) str
    attrs   feature config, manifest key, feature key, mean/std (when complete)

Shard s holds clips [s*S, (s+1)*S), written whole by one writer (storage/sharded.py).
"""
from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from storage.atomic import remove
from storage.sharded import verify_rows, write_shard_record

OK_STATUS, FAILED_STATUS = 0, 1
logger = logging.getLogger(__name__)


def create_store(store: str | Path, clip_ids: list[str], n_mels: int, frames: int,
                 shard_size: int, attrs: dict) -> None:
    """Create an empty store (replacing a half-created one)."""
    store = Path(store)
    remove(store)
    n = len(clip_ids)
    group = zarr.open_group(store, mode="w")
    group.create_array("logmel", shape=(n, n_mels, frames), chunks=(1, n_mels, frames),
                       shards=(shard_size, n_mels, frames), dtype="float16", fill_value=0)
    group.create_array("length", shape=(n,), chunks=(shard_size,), dtype="int32", fill_value=0)
    group.create_array("status", shape=(n,), chunks=(shard_size,), dtype="int8", fill_value=0)
    ids = group.create_array("clip_id", shape=(n,), chunks=(max(n, 1),), dtype=str)
    if n:
        ids[:] = np.asarray(clip_ids, dtype=object)
    group.attrs.update({**attrs, "shard_size": shard_size, "layout_complete": True})


def write_shard(store: str | Path, shard: int, start: int, logmels: np.ndarray,
                lengths: np.ndarray, status: np.ndarray, key: str, **stats) -> None:
    """Write one whole shard, then its completion record (with its statistics)."""
    group = zarr.open_group(store, mode="r+")
    stop = start + len(lengths)
    group["logmel"][start:stop] = logmels.astype(np.float16)
    group["length"][start:stop] = lengths.astype(np.int32)
    group["status"][start:stop] = status.astype(np.int8)
    write_shard_record(store, shard, start, stop, ("logmel", "length", "status"), key, **stats)


def finalize_store(store: str | Path, **attrs) -> None:
    zarr.open_group(store, mode="r+").attrs.update(attrs)


class FeatureReader:
    """Random access to one clip's log-mel (n_mels, length) as float32."""

    def __init__(self, store: str | Path):
        self.path = Path(store)
        self.group = zarr.open_group(self.path, mode="r")
        self.attrs = self.group.attrs.asdict()
        self.logmel = self.group["logmel"]
        self.lengths = self.group["length"][:]
        self.status = self.group["status"][:]

    @cached_property
    def clip_ids(self) -> list[str]:
        """Read on first use: shard tasks never need all N ids."""
        return [str(c) for c in self.group["clip_id"][:]]

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def mean(self) -> float:
        return float(self.attrs["mean"])

    @property
    def std(self) -> float:
        return float(self.attrs["std"])

    @property
    def usable(self) -> np.ndarray:
        """Row indices of clips with features (decoded, non-empty)."""
        return np.flatnonzero((self.status == OK_STATUS) & (self.lengths > 0))

    def get(self, i: int) -> np.ndarray:
        n = int(self.lengths[i])
        return np.asarray(self.logmel[i, :, :n], dtype=np.float32)

    def batches(self, start: int, stop: int, batch_size: int):
        """Rows start..stop in order, `batch_size` at a time, as get_many gives them."""
        for a in range(start, stop, batch_size):
            yield self.get_many(a, min(a + batch_size, stop))

    def get_many(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous rows (padded to the longest) and their lengths: fast sequential reads."""
        lengths = self.lengths[start:stop]
        width = max(int(lengths.max(initial=0)), 1)
        return np.asarray(self.logmel[start:stop, :, :width], dtype=np.float32), lengths


def preload_budget() -> int:
    """Bytes of log-mel a ClipLoader copies into RAM automatically: $DECAR_PRELOAD_BYTES, else an
    eighth of the machine's memory (each training process and loader worker holds its own copy)."""
    if os.environ.get("DECAR_PRELOAD_BYTES"):
        return int(float(os.environ["DECAR_PRELOAD_BYTES"]))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8
    except (ValueError, OSError, AttributeError):
        return 0


class ClipLoader:
    """Normalised log-mel of the i-th of `rows` (default: the usable clips), as training reads them.

    preload: True copies the whole float16 log-mel array into RAM on first use (then clips are
    sliced from memory, no Zarr reads), False never, None (automatic) when it fits
    `preload_budget()` and this loader has read an eighth of the store's clip count one by one
    (a training epoch: yes; the batch-norm sample of a large store: no, it reads a few hundred).
    Picklable: DataLoader workers get the path and open the store themselves on first use (a Zarr
    handle must not cross a process boundary)."""

    def __init__(self, store: str | Path, rows: np.ndarray | None = None, preload: bool | None = None):
        self.store, self.rows, self._reader = str(store), None if rows is None else np.asarray(rows), None
        self.preload, self._memory, self._fits, self._reads = preload, None, False, 0

    def _open(self) -> FeatureReader:
        if self._reader is None:
            self._reader = FeatureReader(self.store)
            if self.rows is None:
                self.rows = self._reader.usable
            self._fits = self.preload is None and self._nbytes() <= preload_budget()
            if self.preload:
                self._load()
        return self._reader

    def _nbytes(self) -> int:
        return int(np.prod(self._reader.logmel.shape)) * self._reader.logmel.dtype.itemsize

    def _load(self) -> None:
        try:
            self._memory = np.asarray(self._reader.logmel[:])
        except ValueError:  # zarr's own shard checksum: name the damaged file and its record instead
            verify_rows(self.store, 0, len(self._reader.lengths))
            raise
        logger.info("feature store %s held in RAM (%.1f MB of float16 log-mel)", self.store, self._nbytes() / 1e6)

    @property
    def in_memory(self) -> bool:
        self._open()
        return self._memory is not None

    def __len__(self) -> int:
        self._open()
        return len(self.rows)

    def __call__(self, i: int) -> np.ndarray:
        reader = self._open()
        row = int(self.rows[i])
        if self._memory is None and self._fits:
            self._reads += 1
            if self._reads > len(reader.lengths) // 8:
                self._load()
        if self._memory is not None:
            clip = self._memory[row, :, :int(reader.lengths[row])].astype(np.float32)
        else:
            try:
                clip = reader.get(row)
            except ValueError:  # zarr's own shard checksum: name the damaged file and its record instead
                verify_rows(self.store, row, row + 1)
                raise
        return (clip - reader.mean) / reader.std

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None, "_memory": None}
