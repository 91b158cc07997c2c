"""The stages of one DECAR epoch, as the flows call them: extract -> cluster -> compare -> train.

Each stage is cached on its content key (flows/run_config.py) and resumable on its own;
pretrain-decar runs all four, recluster only cluster -> compare.
"""
from __future__ import annotations

import time

from prefect import get_run_logger

from flows.run_config import EpochKeys
from flows.runners import OnDemandCluster
from flows.sharded import fill_shards
from model.config import RunConfig
from model.health import collapse_warnings, training_health
from model.runtime import extraction_device
from storage.atomic import write_json
from storage.embeddings import create_embeddings
from storage.layout import RunLayout
from storage.records import is_complete, read_record
from tasks.caching import run_stage
from tasks.cluster import cluster_embeddings, compare_labels
from tasks.embed import embed_shard, finish_embeddings
from tasks.train import train_epoch


def run_epoch(run: RunLayout, config: RunConfig, epoch: int, keys: EpochKeys, previous_checkpoint: str, rows: int,
              device: str, cluster: OnDemandCluster, progress=None, processes: int | None = None,
              loader_workers: int = 0) -> dict:
    """The four stages of one epoch; returns (and writes) the epoch's metrics."""
    outputs = {"extract": (run.embeddings(epoch), keys.extract), "cluster": (run.labels(epoch), keys.cluster),
               "train": (run.checkpoint(epoch), keys.train)}
    cached = [stage for stage, (path, key) in outputs.items() if is_complete(path, key)]  # reused, not run now
    extracted = extract_epoch(run, config, epoch, keys, previous_checkpoint, rows, extraction_device(device), cluster)
    clustered, compared = cluster_epoch(run, config, epoch, keys)
    trained = run_stage(train_epoch, keys.train, features=config.features, embeddings=str(run.embeddings(epoch)),
                        labels=str(run.labels(epoch)),
                        previous_checkpoint=previous_checkpoint, checkpoint=str(run.checkpoint(epoch)),
                        config=config.train.model_dump(), epoch=epoch, seed=config.seed, device=device,
                        processes=processes, loader_workers=loader_workers, progress=progress)
    seconds = {"extract": extracted["seconds"], "cluster": clustered["seconds"], "train": trained["seconds"]}
    health = {**clustered["health"], "training": training_health(trained["loss"], trained["clusters"],
                                                                  trained["accuracy"])}
    logger = get_run_logger()
    for warning in collapse_warnings(health):
        logger.warning("epoch %d: %s", epoch, warning)
    logger.info(
        "epoch %d: loss %.4f, NMI %s, %d clusters (largest %.1f%%), %s", epoch, trained["loss"],
        "n/a" if compared["nmi"] is None else f"{compared['nmi']:.4f}", compared["clusters"],
        100 * compared["largest_fraction"],
        ", ".join(f"{k} cached" if k in cached else f"{k} {v:.3g} s" for k, v in seconds.items()))
    metrics = {"epoch": epoch, "loss": trained["loss"], "nmi": compared["nmi"], "clusters": compared["clusters"],
               "largest_fraction": compared["largest_fraction"], "algorithm": clustered["algorithm"],
               "checkpoint": str(run.checkpoint(epoch)), "seconds": seconds, "cached": cached, "health": health,
               "warnings": collapse_warnings(health), "processes": trained.get("processes", 1)}
    write_json(run.metrics(epoch), metrics)
    return metrics


def extract_epoch(run: RunLayout, config: RunConfig, epoch: int, keys: EpochKeys, checkpoint: str, rows: int,
                  device: str, cluster: OnDemandCluster) -> dict:
    """z of every clip of the store with the previous epoch's network, sharded on Dask."""
    embeddings = run.embeddings(epoch)
    started = time.perf_counter()
    shards = len(range(0, rows, config.embed_shard_size))
    if not is_complete(embeddings, keys.extract):
        sha = read_record(checkpoint)["sha256"]
        shards = fill_shards(
            embed_shard.name, embeddings, keys.extract, rows, config.embed_shard_size,
            create=lambda: create_embeddings(embeddings, rows, config.model.embedding_dim, config.embed_shard_size,
                                             keys.extract),
            job=lambda s, a, b: dict(embeddings=str(embeddings), features=config.features, checkpoint=checkpoint,
                                     checkpoint_sha256=sha, shard=s, start=a, stop=b,
                                     batch_size=config.train.batch_size, device=device),
            cluster=cluster, what="embeddings")
    return run_stage(finish_embeddings, keys.extract, embeddings=str(embeddings), shards=shards,
                     seconds=time.perf_counter() - started)


def cluster_epoch(run: RunLayout, config: RunConfig, epoch: int, keys: EpochKeys) -> tuple[dict, dict]:
    """Cluster stage then compare stage of one epoch (pretrain-decar and recluster share it)."""
    clustered = run_stage(cluster_embeddings, keys.cluster, embeddings=str(run.embeddings(epoch)),
                          features=config.features, labels=str(run.labels(epoch)),
                          config=config.cluster_at(epoch).model_dump(), seed=config.seed, epoch=epoch)
    previous_labels = str(run.labels(epoch - 1)) if epoch > 0 else None
    compared = run_stage(compare_labels, keys.compare, labels=str(run.labels(epoch)),
                         previous=previous_labels, output=str(run.clustering(epoch)))
    return clustered, compared
