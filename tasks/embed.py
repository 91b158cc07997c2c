"""Embedding stages: one shard of a feature store through a frozen network (or its log-mel
statistics) into an embedding store, and the store's completion. Pre-training (z of each epoch)
and the benchmark (h of each model) use the same shard task."""
from __future__ import annotations

import os
import socket
from functools import lru_cache

import numpy as np
import torch

from model.config import InstanceConfig, ModelConfig
from model.decar import batchnorm_sample, embed, precise_batchnorm
from model.instance import InstanceNet
from model.network import DecarNet
from model.probe import logmel_statistics
from model.runtime import resolve_device, set_threads
from storage.checkpoint import load_checkpoint
from storage.embeddings import write_embedding_shard
from storage.faults import maybe_crash
from storage.features import FeatureReader
from storage.records import write_record
from storage.sharded import shard_done, shard_record, verify_rows
from tasks.caching import stage

# random-init: batch-norm statistics as initialised (eval mode is then a near-linear random
# projection); random-init-bn: statistics recomputed on the task's clips. Both are reported and
# DECAR is compared with the stronger (README, "The method's numerical hygiene").
MODELS = ("decar", "random-init", "random-init-bn", "logmel-stats")
NETWORKS = ("decar", "random-init")  # the models fine-tuned (training mode uses batch statistics)
BN_CLIPS = 256  # clips of the task's store for random-init-bn's statistics


def load_network(checkpoint: str, device: torch.device, model: str = "decar", seed: int = 0,
                 features: str | None = None) -> tuple[DecarNet | InstanceNet, float, float]:
    """The checkpoint's network ("decar": whatever method built it, DECAR or an instance method,
    as the checkpoint says), or a seeded fresh one of the same kind and config ("random-init";
    "random-init-bn" with batch-norm statistics recomputed on a seeded sample of `features`), with
    the checkpoint's log-mel normalisation (all see the same inputs)."""
    payload = load_checkpoint(checkpoint)
    mean, std = float(payload["norm"]["mean"]), float(payload["norm"]["std"])
    if model in ("random-init", "random-init-bn"):
        net = random_network(payload, seed).to(device).eval()
        if model == "random-init-bn":
            reader = FeatureReader(features)
            rows = reader.usable
            precise_batchnorm(net, lambda i: (reader.get(int(rows[i])) - mean) / std,
                              batchnorm_sample(seed, len(rows), BN_CLIPS), 32, device)
    elif model == "decar":
        net = InstanceNet.from_checkpoint(payload, device) if "method" in payload else \
            DecarNet.from_checkpoint(payload, device)
    else:
        raise ValueError(f"model {model!r} has no network; networks: decar, random-init, random-init-bn")
    return net, mean, std


def random_network(payload: dict, seed: int) -> DecarNet | InstanceNet:
    """A seeded fresh network of the checkpoint's kind and config (DECAR's, or an instance method's encoder)."""
    if "method" in payload:
        return InstanceNet.random_init(InstanceConfig(**payload["instance_config"]), seed,
                                       int(payload["feature_config"]["n_mels"]))
    return DecarNet.random_init(ModelConfig(**payload["model_config"]), seed)


def network_config(payload: dict) -> dict:
    """What a checkpoint's network is built from (part of the random-init baselines' identity)."""
    return payload["instance_config"] if "method" in payload else payload["model_config"]


def representation_dim(payload: dict) -> int:
    """Dimensions of the representation h the benchmark probes for this checkpoint's network."""
    return random_network(payload, 0).encoder.out_dim


@lru_cache(maxsize=2)
def cached_network(checkpoint: str, sha256: str, device: str, model: str = "decar", seed: int = 0,
                   features: str | None = None) -> tuple[DecarNet, float, float]:
    """One load per worker process and checkpoint content, not one per shard (frozen use only)."""
    return load_network(checkpoint, torch.device(device), model, seed, features)


def logmel_rows(reader: FeatureReader, start: int, stop: int) -> np.ndarray:
    """The log-mel statistics baseline's vectors of rows start..stop (zero for clips without features)."""
    out = np.zeros((stop - start, 2 * reader.logmel.shape[1]), np.float32)
    for i in range(start, stop):
        if reader.lengths[i] > 0:
            out[i - start] = logmel_statistics(reader.get(i))
    return out


@stage(name="embed-shard", retries=1, retry_delay_seconds=2)
def embed_shard(embeddings: str, features: str, checkpoint: str, checkpoint_sha256: str, shard: int, start: int,
                stop: int, batch_size: int, device: str, key: str, model: str = "decar", output: str = "embed",
                seed: int = 0, threads: int = 1) -> dict:
    """Vectors of feature rows start..stop written into shard `shard` of `embeddings`.

    model: decar (the checkpoint), random-init / random-init-bn (seeded, same config) or logmel-stats; output: "embed"
    (z, what pre-training clusters) or "represent" (h, what the benchmark probes)."""
    if shard_done(embeddings, shard, key):
        return shard_record(embeddings, shard)
    maybe_crash("embed-shard")
    verify_rows(features, start, stop)  # a damaged feature shard is reported, never read as zeros
    set_threads(threads)
    reader = FeatureReader(features)
    if model == "logmel-stats":
        values = logmel_rows(reader, start, stop)
    else:
        dev = resolve_device(device)
        net, mean, std = cached_network(checkpoint, checkpoint_sha256, str(dev), model, seed,
                                        features if model == "random-init-bn" else None)
        values = embed(net, reader.batches(start, stop, batch_size), mean, std, dev, output)
    write_embedding_shard(embeddings, shard, start, values, key, worker=f"{socket.gethostname()}:{os.getpid()}")
    return shard_record(embeddings, shard)


@stage(name="finish-embeddings", output="embeddings")
def finish_embeddings(embeddings: str, shards: int, key: str, seconds: float = 0.0) -> dict:
    """Check every shard is there, then the store's record. `seconds` (the extraction's wall
    time) is returned so a cached rerun still reports the original timing."""
    missing = [s for s in range(shards) if shard_record(embeddings, s) is None]
    if missing:
        raise RuntimeError(f"{embeddings}: shards {missing[:10]} have no completion record")
    write_record(embeddings, key)
    return {"embeddings": embeddings, "seconds": seconds}
