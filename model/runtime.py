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


def training_devices(device: str, processes: int | None = None) -> list[str]:
    """One device per training process: "cpu" (`processes` of them, default 1), "cuda" (every
    visible GPU, or the first `processes`), "cuda:0,1" (those GPUs), "auto" (the GPUs if any)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return ["cpu"] * (processes or 1)
    if not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N[,M...]', got {device!r}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but torch sees no GPU here; use 'cpu' or 'auto'")
    ids = range(torch.cuda.device_count()) if device == "cuda" else [int(i) for i in device[5:].split(",")]
    gpus = [f"cuda:{i}" for i in ids]
    if processes and processes > len(gpus):
        raise ValueError(f"processes ({processes}) is more than the GPUs of device={device!r} ({len(gpus)})")
    return gpus[: processes or len(gpus)]


def extraction_device(device: str) -> str:
    """Extraction runs one model per Dask worker: the first device of a list."""
    return device.split(",")[0]
