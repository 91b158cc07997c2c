"""Representation health: is DECAR learning, or has it collapsed?

Epoch-to-epoch NMI only says the assignments are stable; a network whose
embeddings are constant (fresh EfficientNet with default batch-norm statistics,
METHODS.md "What we measured") gives perfectly stable labels by row order.
These measures, computed every epoch, make collapse visible, and
check_clustering stops a run before it trains on meaningless pseudo-labels.
Pure numpy: no I/O, no orchestration.
"""
from __future__ import annotations

import math

import numpy as np

SVD_ROWS = 20_000  # rows sampled for the effective rank: enough for 512 dims, fast at 200k
CHUNK = 16_384  # rows per block: float64 statistics without an (N, d) float64 copy


def embedding_health(z: np.ndarray, svd_rows: int = SVD_ROWS, seed: int = 0) -> dict:
    """Spread, effective rank and distinct rows of embeddings z (N, d).

    relative_spread: mean per-dimension std / mean row L2 norm (scale-free; 0 for
    constant rows). effective_rank: exp(entropy of s_i / sum s) of the centred z,
    on a seeded sample of at most svd_rows rows (1 for a line, d for isotropic data,
    0 when there is no variance at all).
    """
    z = np.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"expected an (N, d) array, got shape {z.shape}")
    n, d = z.shape
    out = {"rows": int(n), "dims": int(d), "relative_spread": 0.0, "effective_rank": 0.0,
           "distinct_rows": 0, "svd_rows": 0}
    if n == 0 or d == 0:
        return out
    blocks = range(0, n, CHUNK)
    mean = sum(z[i:i + CHUNK].sum(axis=0, dtype=np.float64) for i in blocks) / n
    # two passes (not E[x^2] - E[x]^2): exactly 0 for constant columns, no cancellation
    var = sum(((z[i:i + CHUNK] - mean) ** 2).sum(axis=0) for i in blocks) / n
    norm = sum(np.linalg.norm(z[i:i + CHUNK].astype(np.float64), axis=1).sum() for i in blocks) / n
    out["relative_spread"] = float(np.sqrt(var).mean() / norm) if norm > 0 else 0.0
    out["distinct_rows"] = int(len(np.unique(z, axis=0)))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, svd_rows), replace=False))
    sample = z[rows].astype(np.float64)
    sample -= sample.mean(axis=0)
    s = np.linalg.svd(sample, compute_uv=False)
    out["svd_rows"] = int(len(rows))
    out["effective_rank"] = _exp_entropy(s)
    return out


def _exp_entropy(weights: np.ndarray) -> float:
    """exp(Shannon entropy) of weights normalised to sum 1; 0 when they are all 0."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    p = weights[weights > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def cluster_health(labels) -> dict:
    """Cluster size balance: size_entropy (nats), its ratio to ln(non-empty clusters)
    (1 = uniform; 0 when there are fewer than 2 clusters), largest_fraction."""
    labels = np.asarray(labels).ravel()
    if labels.size == 0:
        return {"clusters": 0, "size_entropy": 0.0, "size_entropy_ratio": 0.0, "largest_fraction": 0.0}
    sizes = np.unique(labels, return_counts=True)[1]
    entropy = math.log(_exp_entropy(sizes.astype(np.float64)))
    return {"clusters": int(len(sizes)), "size_entropy": entropy,
            "size_entropy_ratio": entropy / math.log(len(sizes)) if len(sizes) > 1 else 0.0,
            "largest_fraction": float(sizes.max() / labels.size)}


def training_health(loss: float, clusters: int, accuracy: float) -> dict:
    """The epoch's loss and head accuracy next to chance: loss ln(C) and accuracy 1/C
    mean the network learnt nothing about the pseudo-labels."""
    chance_loss = math.log(clusters) if clusters > 1 else None
    return {"loss": float(loss), "loss_vs_chance": float(loss) / chance_loss if chance_loss else None,
            "pseudo_label_accuracy": float(accuracy), "chance_accuracy": 1.0 / clusters if clusters > 0 else None}


def _flat(health: dict) -> dict:
    """Accept {**embedding, **clusters, **training} or the same nested one level deep."""
    flat = {}
    for key, value in health.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def collapse_warnings(health: dict) -> list[str]:
    """Human-readable warnings, each naming measure, value, threshold and likely cause."""
    h, out = _flat(health), []
    constant = "embeddings are (near-)constant: batch-norm running statistics of a fresh network? " \
               "recompute them (precise BN)"
    if h.get("relative_spread") is not None and h["relative_spread"] < 1e-4:
        out.append(f"relative_spread = {h['relative_spread']:.3g} < 1e-4: {constant}")
    if h.get("distinct_rows") is not None and h.get("rows"):
        floor = max(2.0, 0.01 * h["rows"])
        if h["distinct_rows"] < floor:
            out.append(f"distinct_rows = {h['distinct_rows']} of {h['rows']} < {floor:g} (max(2, 1% of rows)): "
                       f"most clips share one embedding: {constant}")
    if h.get("effective_rank") is not None and h.get("rows") and h["effective_rank"] < 2:
        out.append(f"effective_rank = {h['effective_rank']:.3g} < 2: embeddings lie on a line or a point "
                   "(dimensional collapse: dead ReLUs in g, or constant embeddings)")
    if h.get("largest_fraction") is not None and h["largest_fraction"] > 0.5:
        out.append(f"largest_fraction = {h['largest_fraction']:.3g} > 0.5: one cluster holds most clips "
                   "(collapsed or near-constant embeddings; PIC with too few neighbours)")
    if h.get("loss_vs_chance") is not None and h["loss_vs_chance"] > 0.98:
        out.append(f"loss_vs_chance = {h['loss_vs_chance']:.3g} > 0.98: the training loss stayed at ln(clusters), "
                   "the network learnt nothing (too few steps per epoch, lr, or pseudo-labels unrelated to content)")
    return out


class DegenerateClustering(RuntimeError):
    """The pseudo-labels carry no information about the clips; training on them is wasted."""


OVERRIDE = "pass allow_degenerate=True to the flow to train on them anyway"


def check_clustering(z_health: dict, labels, max_largest_fraction: float = 0.5, min_spread: float = 1e-6) -> None:
    """Raise DegenerateClustering on constant embeddings, < 2 clusters or one dominant cluster."""
    problems = []
    spread, distinct = z_health.get("relative_spread"), z_health.get("distinct_rows")
    if spread is not None and spread < min_spread:
        problems.append(f"relative_spread = {spread:.3g} < min_spread {min_spread:g}: embeddings are "
                        "(near-)constant, labels would follow row order (batch-norm running statistics of a "
                        "fresh network? recompute them with precise BN)")
    if distinct is not None and distinct < 2:
        problems.append(f"distinct_rows = {distinct} < 2: every clip has the same embedding "
                        "(batch-norm running statistics of a fresh network? recompute them with precise BN)")
    c = cluster_health(labels)
    if c["clusters"] < 2:
        problems.append(f"clusters = {c['clusters']} < 2 non-empty clusters: nothing to learn "
                        "(PIC on collapsed embeddings returns one cluster)")
    elif c["largest_fraction"] > max_largest_fraction:
        problems.append(f"largest_fraction = {c['largest_fraction']:.3g} > max_largest_fraction "
                        f"{max_largest_fraction:g}: one cluster holds most clips (collapsed embeddings?)")
    if problems:
        raise DegenerateClustering("degenerate clustering: " + "; ".join(problems) + f". {OVERRIDE}")
