"""An epoch's embeddings: Zarr (N, d) float32, one chunk per shard so writers stay disjoint.

Row i belongs to the feature store's row i; rows of clips without features stay zero
and are left out of clustering by the caller.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from storage.atomic import remove
from storage.sharded import laid_out, write_shard_record


def create_embeddings(path: str | Path, rows: int, dim: int, shard_size: int, key: str) -> None:
    remove(path)
    group = zarr.open_group(path, mode="w")
    group.create_array("embedding", shape=(rows, dim), chunks=(shard_size, dim), dtype="float32", fill_value=0)
    group.attrs.update({"key": key, "shard_size": shard_size, "layout_complete": True})


def embeddings_laid_out(path: str | Path, key: str) -> bool:
    return laid_out(path, key, key_attr="key")


def write_embedding_shard(path: str | Path, shard: int, start: int, values: np.ndarray, key: str,
                          **info) -> None:
    zarr.open_group(path, mode="r+")["embedding"][start:start + len(values)] = values.astype(np.float32)
    write_shard_record(path, shard, start, start + len(values), ("embedding",), key, **info)


def read_embeddings(path: str | Path, rows: np.ndarray | None = None) -> np.ndarray:
    values = zarr.open_group(path, mode="r")["embedding"][:]
    return values if rows is None else values[rows]
