"""Downstream evaluation stages: the task's clips (prepared by its recipe), and one task's
evaluation in one mode (linear probe on frozen embeddings, or fine-tuning) written as a Parquet
of score rows. Frozen embeddings come from tasks/embed.py's shard stage."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from downstream import get_recipe
from model.data import Clips
from model.probe import finetune, train_linear_probe
from model.runtime import resolve_device
from storage.atomic import atomic_path
from storage.embeddings import read_embeddings
from storage.features import FeatureReader
from storage.manifest import ok_rows, read_manifest
from storage.records import is_complete, write_record
from tasks.caching import stage
from tasks.embed import MODELS, NETWORKS, load_network

SPLITS = ("train", "valid", "test")


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


@task(name="prepare-task")
def prepare_task(name: str, data_dir: str, source: str | None) -> str:
    """Fetch / list the task's clips; returns its manifest. Not cached: it re-lists the files (a changed
    folder must count), and downloads retry and resume on their own (storage.archives)."""
    return str(get_recipe(name).prepare(data_dir, source))


@stage(name="evaluate-task", output="output")
def evaluate_task(task: str, mode: str, manifest: str, features: str, embeddings: dict[str, str],
                  checkpoint: str, checkpoint_sha256: str, config: dict, seed: int, output: str,
                  key: str, device: str = "auto") -> list[dict]:
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
            score = finetune_model(model, checkpoint, features, rows, labels, len(classes), config, seed, device)
        results.append({**common, "model": model, **score, "seconds": round(time.perf_counter() - started, 3)})
    write_scores(output, results)
    write_record(output, key)
    return results


def finetune_model(model: str, checkpoint: str, features: str, rows: dict, labels: dict, classes: int,
                   config: dict, seed: int, device: str = "auto") -> dict:
    device = resolve_device(device)
    net, mean, std = load_network(checkpoint, device, model, seed)  # a private copy: trained in place
    reader = FeatureReader(features)

    def split(s: str) -> Clips:
        return Clips(lambda i, r=rows[s]: (reader.get(int(r[i])) - mean) / std, labels[s])

    return finetune(net.encoder, split("train"), split("valid"), split("test"), classes, seed=seed,
                    device=device, **config)
