"""Embedding extraction: one shard of the feature store through the network in eval mode."""
from __future__ import annotations

import os
import socket
from functools import lru_cache

import numpy as np
import torch

from model.config import ModelConfig
from model.network import DecarNet, add_channel
from storage.checkpoint import load_checkpoint
from storage.embeddings import write_embedding_shard
from storage.faults import maybe_crash
from storage.features import FeatureReader, shard_done, shard_record
from storage.records import write_record
from storage.integrity import verify_rows
from tasks.caching import stage
from model.clustering import set_threads


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU here; use 'cpu' or 'auto'")
    return torch.device(device)


def network_from_checkpoint(payload: dict, device: torch.device) -> DecarNet:
    net = DecarNet(ModelConfig(**payload["model_config"]))
    net.encoder.load_state_dict(payload["encoder"])
    net.projection.load_state_dict(payload["projection"])
    return net.to(device).eval()


def load_network(checkpoint: str, device: torch.device, model: str = "decar",
                 seed: int = 0) -> tuple[DecarNet, float, float]:
    """The checkpoint's network ("decar") or a seeded fresh one of the same ModelConfig
    ("random-init"), with the checkpoint's log-mel normalisation (both see the same inputs)."""
    payload = load_checkpoint(checkpoint)
    if model == "random-init":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = DecarNet(ModelConfig(**payload["model_config"]))
        payload = {**payload, "encoder": fresh.encoder.state_dict(), "projection": fresh.projection.state_dict()}
    elif model != "decar":
        raise ValueError(f"model {model!r} has no network; networks: decar, random-init")
    norm = payload["norm"]
    return network_from_checkpoint(payload, device), float(norm["mean"]), float(norm["std"])


@lru_cache(maxsize=2)
def cached_network(checkpoint: str, sha256: str, device: str, model: str = "decar",
                   seed: int = 0) -> tuple[DecarNet, float, float]:
    """One load per worker process and checkpoint content, not one per shard (frozen use only)."""
    return load_network(checkpoint, torch.device(device), model, seed)


@torch.no_grad()
def embed_rows(net: DecarNet, reader: FeatureReader, start: int, stop: int, mean: float, std: float,
               batch_size: int, device: torch.device, output: str = "embed") -> np.ndarray:
    """Rows start..stop in store order (never shuffled: row i must stay clip i)."""
    forward = net.embed if output == "embed" else net.represent
    parts = []
    for a in range(start, stop, batch_size):
        b = min(a + batch_size, stop)
        batch, lengths = reader.get_many(a, b)
        out = np.zeros((b - a, net.config.embedding_dim if output == "embed" else net.encoder.out_dim),
                       np.float32)
        valid = np.flatnonzero(lengths > 0)
        if valid.size:
            x = (torch.from_numpy(batch[valid]) - mean) / std
            out[valid] = forward(add_channel(x).to(device)).float().cpu().numpy()
        parts.append(out)
    return np.concatenate(parts) if parts else np.zeros((0, net.config.embedding_dim), np.float32)


@stage(name="extract-embedding-shard", retries=1, retry_delay_seconds=2)
def extract_embedding_shard(embeddings: str, features: str, checkpoint: str, checkpoint_sha256: str,
                            shard: int, start: int, stop: int, batch_size: int, device: str,
                            key: str, threads: int = 1) -> dict:
    if shard_done(embeddings, shard, key):
        return shard_record(embeddings, shard)
    maybe_crash("embed-shard")
    verify_rows(features, start, stop)  # a damaged feature shard is reported, never read as zeros
    set_threads(threads)
    dev = resolve_device(device)
    net, mean, std = cached_network(checkpoint, checkpoint_sha256, str(dev))
    values = embed_rows(net, FeatureReader(features), start, stop, mean, std, batch_size, dev)
    write_embedding_shard(embeddings, shard, start, values, key, worker=f"{socket.gethostname()}:{os.getpid()}")
    return shard_record(embeddings, shard)


@stage(name="finish-embeddings")
def finish_embeddings(embeddings: str, shards: int, key: str, seconds: float = 0.0) -> dict:
    """Check every shard is there, then the store's record. `seconds` (the extraction's wall
    time) is returned so a cached rerun still reports the original timing."""
    missing = [s for s in range(shards) if shard_record(embeddings, s) is None]
    if missing:
        raise RuntimeError(f"{embeddings}: shards {missing[:10]} have no completion record")
    write_record(embeddings, key)
    return {"embeddings": embeddings, "seconds": seconds}
