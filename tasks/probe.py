"""Downstream evaluation stages: frozen clip embeddings of one feature-store shard (decar,
random-init or log-mel statistics), and one task's evaluation in one mode (linear probe or
fine-tuning) written as a Parquet of score rows."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.probe import LogMelClips, finetune, logmel_statistics, train_linear_probe
from storage.atomic import atomic_path
from storage.embeddings import read_embeddings, write_embedding_shard
from storage.features import FeatureReader, shard_done, shard_record
from storage.manifest import ok_rows, read_manifest
from storage.records import is_complete, write_record
from tasks.caching import stage
from tasks.embed import cached_network, embed_rows, load_network, resolve_device
from model.clustering import set_threads

MODELS = ("decar", "random-init", "logmel-stats")
NETWORKS = ("decar", "random-init")  # the models with an encoder (fine-tuned in finetune mode)
SPLITS = ("train", "valid", "test")


def logmel_rows(reader: FeatureReader, start: int, stop: int) -> np.ndarray:
    out = np.zeros((stop - start, 2 * reader.logmel.shape[1]), np.float32)
    for i in range(start, stop):
        if reader.lengths[i] > 0:  # clips that failed to decode stay zero (and are left out later)
            out[i - start] = logmel_statistics(reader.get(i))
    return out


@stage(name="embed-benchmark-shard", retries=1, retry_delay_seconds=2)
def embed_benchmark_shard(embeddings: str, features: str, model: str, checkpoint: str, checkpoint_sha256: str,
                          seed: int, shard: int, start: int, stop: int, batch_size: int, key: str,
                          threads: int = 1) -> dict:
    """Frozen clip vectors of feature rows start..stop, written into the model's embeddings Zarr."""
    if shard_done(embeddings, shard, key):
        return shard_record(embeddings, shard)
    set_threads(threads)
    reader = FeatureReader(features)
    if model == "logmel-stats":
        values = logmel_rows(reader, start, stop)
    else:
        device = resolve_device("auto")
        net, mean, std = cached_network(checkpoint, checkpoint_sha256, str(device), model, seed)
        values = embed_rows(net, reader, start, stop, mean, std, batch_size, device, output="represent")
    write_embedding_shard(embeddings, shard, start, values, key)
    return shard_record(embeddings, shard)


def labelled_rows(manifest: str, features: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """Feature-store rows and class indices per split (usable clips only), and the class names."""
    by_clip = {r["clip_id"]: (str(r["label"]), r["split"]) for r in ok_rows(read_manifest(manifest))}
    reader = FeatureReader(features)
    classes = sorted({label for label, _ in by_clip.values()})
    index = {c: i for i, c in enumerate(classes)}
    rows = {s: [] for s in SPLITS}
    labels = {s: [] for s in SPLITS}
    for row in reader.usable:
        label, split = by_clip[reader.clip_ids[row]]
        rows[split].append(int(row))
        labels[split].append(index[label])
    return ({s: np.asarray(v, np.int64) for s, v in rows.items()},
            {s: np.asarray(v, np.int64) for s, v in labels.items()}, classes)


def write_scores(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def read_scores(path: str | Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@stage(name="evaluate-task")
def evaluate_task(task: str, mode: str, manifest: str, features: str, embeddings: dict[str, str],
                  checkpoint: str, checkpoint_sha256: str, config: dict, seed: int, output: str,
                  key: str) -> list[dict]:
    """Score every model of `mode` on one task; rows also go to `output` (Parquet) with its record.

    config: epochs, lr, batch_size. frozen: a linear probe on each model's embeddings (paths in
    `embeddings`); finetune: decar and random-init encoders trained end to end."""
    if is_complete(output, key):  # Prefect's cache may be gone while the result is on disk
        return read_scores(output)
    rows, labels, classes = labelled_rows(manifest, features)
    common = dict(task=task, mode=mode, checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256,
                  n_train=len(rows["train"]), n_valid=len(rows["valid"]), n_test=len(rows["test"]),
                  classes=len(classes))
    results = []
    for model in (MODELS if mode == "frozen" else NETWORKS):
        started = time.perf_counter()
        if mode == "frozen":
            values = read_embeddings(embeddings[model])
            split_data = [a for s in SPLITS for a in (values[rows[s]], labels[s])]
            score = train_linear_probe(*split_data, seed=seed, classes=len(classes), **config)
        else:
            score = finetune_model(model, checkpoint, features, rows, labels, len(classes), config, seed)
        results.append({**common, "model": model, **score, "seconds": round(time.perf_counter() - started, 3)})
    write_scores(output, results)
    write_record(output, key)
    return results


def finetune_model(model: str, checkpoint: str, features: str, rows: dict, labels: dict, classes: int,
                   config: dict, seed: int) -> dict:
    device = resolve_device("auto")
    net, mean, std = load_network(checkpoint, device, model, seed)  # a private copy: trained in place
    reader = FeatureReader(features)

    def split(s: str) -> LogMelClips:
        return LogMelClips(lambda i, r=rows[s]: (reader.get(int(r[i])) - mean) / std, labels[s])

    return finetune(net.encoder, split("train"), split("valid"), split("test"), classes, seed=seed,
                    device=device, **config)
