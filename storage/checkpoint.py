"""Checkpoints: one torch file of plain dicts and tensors, written atomically,
with its sha256 recorded beside it so a truncated or altered file is detected.

Contents (format "decar-checkpoint-v1"): epoch, model_config (dict),
feature_config (dict), norm {mean, std}, encoder / projection / head state
dicts (head may be None), clusters, plus free-form `extra`.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from storage.atomic import write_bytes
from storage.records import file_sha256, read_record, write_record

FORMAT = "decar-checkpoint-v1"


class CorruptCheckpoint(RuntimeError):
    pass


def save_checkpoint(path: str | Path, payload: dict, key: str) -> str:
    """Write atomically and record (key, sha256); returns the sha256."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    write_bytes(path, buffer.getvalue())
    digest = file_sha256(path)
    write_record(path, key, sha256=digest)
    return digest


def load_checkpoint(path: str | Path, verify: bool = True, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if verify:
        record = read_record(path)
        if record and record.get("sha256") and record["sha256"] != file_sha256(path):
            raise CorruptCheckpoint(f"checkpoint {path} does not match the sha256 recorded when it was "
                                    "written: it is truncated or altered; delete it to recompute")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise CorruptCheckpoint(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{path} is not a {FORMAT} file")
    return payload
