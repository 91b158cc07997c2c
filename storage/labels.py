"""Pseudo-labels of one epoch: Parquet (clip_id, label, row), epoch and algorithm in its metadata."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_path


def write_labels(path: str | Path, clip_ids: list[str], rows: np.ndarray, labels: np.ndarray,
                 epoch: int, algorithm: str) -> None:
    table = pa.table({"clip_id": pa.array(clip_ids, pa.string()),
                      "label": pa.array(np.asarray(labels, dtype=np.int64)),
                      "row": pa.array(np.asarray(rows, dtype=np.int64))})
    table = table.replace_schema_metadata({"epoch": str(epoch), "algorithm": algorithm})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_labels(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(clip_ids, labels, feature-store rows)."""
    table = pq.read_table(path)
    return (table.column("clip_id").to_pylist(), table.column("label").to_numpy(),
            table.column("row").to_numpy())
