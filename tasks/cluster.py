"""Clustering stages: embeddings -> pseudo-labels (Parquet), then NMI against the previous epoch."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from model.clustering import cluster, cluster_stats, nmi
from model.config import ClusterConfig
from model.decar import cluster_seed
from model.health import check_clustering, cluster_health, embedding_health
from model.runtime import set_threads
from storage.atomic import write_json
from storage.embeddings import read_embeddings
from storage.faults import maybe_crash
from storage.features import FeatureReader
from storage.labels import read_labels, write_labels
from storage.records import write_record
from storage.sharded import verify_store
from tasks.caching import stage


@stage(name="cluster-embeddings", output="labels")
def cluster_embeddings(embeddings: str, features: str, labels: str, config: dict, seed: int,
                       epoch: int, key: str, threads: int = 0) -> dict:
    """Cluster the usable clips' embeddings and write this epoch's labels (`seed`: the run's)."""
    if threads:
        set_threads(threads)
    cfg = ClusterConfig(**config)
    reader = FeatureReader(features)
    rows = reader.usable
    started = time.perf_counter()
    verify_store(embeddings)
    z = read_embeddings(embeddings, rows)
    health = embedding_health(z)
    assignment = cluster(z, cfg, cluster_seed(seed, epoch))
    if not cfg.allow_degenerate:  # never train silently on labels that carry no information
        check_clustering(health, assignment, cfg.max_largest_fraction)
    maybe_crash("cluster")
    write_labels(labels, [reader.clip_ids[r] for r in rows], rows, assignment, epoch, cfg.algorithm)
    stats = cluster_stats(assignment)
    health = {"embedding": health, "clusters": cluster_health(assignment)}
    write_record(labels, key, algorithm=cfg.algorithm, health=health, **stats)
    return {"labels": labels, "algorithm": cfg.algorithm, "seconds": time.perf_counter() - started,
            "health": health, **stats}


@stage(name="compare-labels", output="output")
def compare_labels(labels: str, previous: str | None, output: str, key: str) -> dict:
    """NMI between this epoch's and the previous epoch's labels (matched by clip id), and sizes."""
    clip_ids, current, _ = read_labels(labels)
    score = None
    if previous and Path(previous).exists():
        before = dict(zip(*read_labels(previous)[:2]))
        common = [i for i, c in enumerate(clip_ids) if c in before]
        if common:
            score = nmi(current[common], np.array([before[clip_ids[i]] for i in common]))
    summary = {"nmi": score, **cluster_stats(current)}
    write_json(output, summary)
    write_record(output, key)
    return summary
