"""Where the method runs: device choice and thread caps (one home for both)."""
from __future__ import annotations

import faiss
import torch


def resolve_device(device: str) -> torch.device:
    """"auto" -> the GPU when torch sees one, else the CPU; "cuda" without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but torch sees no GPU here; use 'cpu' or 'auto'")
    return torch.device(device)


def set_threads(n: int) -> None:
    """Cap faiss (OpenMP) and torch threads, e.g. one per Dask worker thread: oversubscribed
    cores slowed faiss k-means 3-5x under contention (README, Benchmarks)."""
    faiss.omp_set_num_threads(n)
    torch.set_num_threads(n)
