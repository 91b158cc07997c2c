"""Keep one task from using every core of a shared worker."""
from __future__ import annotations


def cap_threads(n: int = 1) -> None:
    import torch

    torch.set_num_threads(max(1, n))
    try:
        import faiss

        faiss.omp_set_num_threads(max(1, n))
    except ImportError:  # faiss is only needed by clustering
        pass
