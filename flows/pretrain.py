"""Flow pretrain-decar: per epoch extract -> cluster -> compare -> train, each stage cached."""
from __future__ import annotations

import re
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from prefect import flow, get_run_logger
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from flows.run_config import (cluster_config, epoch_keys, freeze_run_config, initial_key)
from flows.runners import dask_runner, local_cluster
from flows.sharded import run_sharded
from model.config import ClusterConfig, ModelConfig, TrainConfig
from storage.atomic import write_json
from storage.embeddings import create_embeddings, embeddings_laid_out
from storage.features import FeatureReader, shard_done, shard_ranges
from storage.layout import RunLayout
from storage.locks import DirectoryLock
from storage.records import is_complete, read_record
from tasks.caching import run_stage, stage
from tasks.cluster import cluster_embeddings, compare_labels
from tasks.embed import extract_embedding_shard, finish_embeddings
from tasks.train import initial_checkpoint, train_epoch

SHARD_SIZE = 256  # clips per embedding shard (one Dask task each)


@flow(name="extract-embeddings")
def extract_embeddings(jobs: list[dict], done: list[bool]) -> list[dict]:
    """Runs on the Dask task runner; workers load the checkpoint themselves and write their rows."""
    return run_sharded(extract_embedding_shard, jobs, done, what="embeddings")


@stage(name="initialize-model")
def initialize_model(checkpoint: str, model: dict, feature_config: dict, norm: dict, seed: int, key: str) -> str:
    return initial_checkpoint(checkpoint, ModelConfig(**model), feature_config, norm, seed, key)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def validate(features: str, run_name: str, epochs: int, patience: int, clusters: int, algorithm: str,
             batch_size: int, lr: float, device: str) -> FeatureReader:
    """Fail before any work, naming the parameter."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run_name or ""):
        raise ValueError(f"run_name must be letters, digits, '.', '_' or '-', got {run_name!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if algorithm not in ("kmeans", "pic"):
        raise ValueError(f"algorithm must be 'kmeans' or 'pic', got {algorithm!r}")
    if batch_size < 1 or lr <= 0:
        raise ValueError(f"batch_size must be >= 1 and lr > 0, got batch_size={batch_size}, lr={lr}")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():  # training runs in this process
        raise ValueError(f"device is {device!r} but torch sees no GPU in the flow's process; use 'cpu' or 'auto'")
    record = read_record(features)
    if not Path(features).is_dir() or record is None:
        raise FileNotFoundError(f"features: no complete feature store at {features!r} "
                                "(run cache-features first; it prints the store's path)")
    reader = FeatureReader(features)
    usable = len(reader.usable)
    if algorithm == "kmeans" and clusters > usable:
        raise ValueError(f"clusters ({clusters}) is larger than the number of usable clips ({usable}) "
                         f"in {features}")
    if clusters < 2:
        raise ValueError(f"clusters must be >= 2, got {clusters}")
    return reader


def run_epoch_stages(run: RunLayout, config: dict, epoch: int, keys, previous_checkpoint: str,
                     reader: FeatureReader, device: str, dask: "DaskAddress", progress=None) -> dict:
    """The four stages of one epoch; returns the epoch's metrics."""
    logger = get_run_logger()
    seconds = {}
    features = str(reader.path)
    embeddings = run.embeddings(epoch)

    started = time.perf_counter()
    if not is_complete(embeddings, keys.extract):
        if not embeddings_laid_out(embeddings, keys.extract):
            create_embeddings(embeddings, len(reader), config["model"]["embedding_dim"], SHARD_SIZE, keys.extract)
        sha = read_record(previous_checkpoint)["sha256"]
        jobs = [dict(embeddings=str(embeddings), features=features, checkpoint=previous_checkpoint,
                     checkpoint_sha256=sha, shard=s, start=a, stop=b, batch_size=config["train"]["batch_size"],
                     device=device, key=f"{keys.extract}-{s}")
                for s, (a, b) in enumerate(shard_ranges(len(reader), SHARD_SIZE))]
        done = [shard_done(embeddings, j["shard"], j["key"]) for j in jobs]
        if not all(done):
            extract_embeddings.with_options(task_runner=dask_runner(dask.get()))(jobs, done)
    extracted = run_stage(finish_embeddings, embeddings, keys.extract, embeddings=str(embeddings),
                          shards=len(shard_ranges(len(reader), SHARD_SIZE)),
                          seconds=time.perf_counter() - started)
    seconds["extract"] = extracted["seconds"]

    clustered, compared = cluster_epoch(run, config, epoch, keys, features)
    seconds["cluster"] = clustered["seconds"]

    trained = run_stage(train_epoch, run.checkpoint(epoch), keys.train, features=features,
                        labels=str(run.labels(epoch)), previous_checkpoint=previous_checkpoint,
                        checkpoint=str(run.checkpoint(epoch)), config=config["train"], epoch=epoch,
                        seed=config["seed"], device=device, progress=progress)
    seconds["train"] = trained["seconds"]
    logger.info("epoch %d: loss %.4f, NMI %s, %d clusters (largest %.1f%%), %s", epoch, trained["loss"],
                "n/a" if compared["nmi"] is None else f"{compared['nmi']:.4f}", compared["clusters"],
                100 * compared["largest_fraction"], ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    metrics = {"epoch": epoch, "loss": trained["loss"], "nmi": compared["nmi"], "clusters": compared["clusters"],
               "largest_fraction": compared["largest_fraction"], "algorithm": clustered["algorithm"],
               "checkpoint": str(run.checkpoint(epoch)), "seconds": seconds}
    write_json(run.metrics(epoch), metrics)
    return metrics


def cluster_epoch(run: RunLayout, config: dict, epoch: int, keys, features: str) -> tuple[dict, dict]:
    """Cluster stage then compare stage of one epoch (pretrain-decar and recluster share it)."""
    clustered = run_stage(cluster_embeddings, run.labels(epoch), keys.cluster, embeddings=str(run.embeddings(epoch)),
                          features=features, labels=str(run.labels(epoch)),
                          config=cluster_config(config, epoch).model_dump(), seed=config["seed"] * 1000 + epoch,
                          epoch=epoch)
    previous_labels = str(run.labels(epoch - 1)) if epoch > 0 else None
    compared = run_stage(compare_labels, run.clustering(epoch), keys.compare, labels=str(run.labels(epoch)),
                         previous=previous_labels, output=str(run.clustering(epoch)))
    return clustered, compared


class DaskAddress:
    """The scheduler to use: the configured one, or a local cluster started on first need."""

    def __init__(self, address: str | None, n_workers: int | None, stack: ExitStack):
        self.address, self.n_workers, self.stack = address, n_workers, stack

    def get(self) -> str:
        if not self.address:
            self.address = self.stack.enter_context(local_cluster(self.n_workers))
        return self.address


def should_stop(history: list[dict], patience: int) -> bool:
    """Early stop: the epoch-to-epoch NMI has not improved for `patience` epochs."""
    best, since = None, 0
    for m in history:
        if m["nmi"] is None:
            continue
        if best is None or m["nmi"] > best:
            best, since = m["nmi"], 0
        else:
            since += 1
    return since >= patience


@flow(name="pretrain-decar")
def pretrain_decar(features: str, run_name: str, runs_dir: str = "runs", epochs: int = 100, patience: int = 10,
                   clusters: int = 512, algorithm: str = "kmeans", batch_size: int = 64, lr: float = 0.05,
                   seed: int = 0, device: str = "auto", dask_address: str | None = None,
                   n_workers: int | None = None, crop_frames: int | None = None,
                   samples_per_epoch: int | None = None, width_mult: float = 1.0,
                   force_config: bool = False) -> str:
    """DECAR pre-training on a feature store; returns the run directory.

    Every stage is cached on content keys: rerunning continues where a run stopped,
    and a finished run reruns in seconds. `width_mult` < 1 narrows EfficientNet-B0 (tests)."""
    logger = get_run_logger()
    reader = validate(features, run_name, epochs, patience, clusters, algorithm, batch_size, lr, device)
    run = RunLayout(Path(runs_dir) / run_name)
    identity = {
        "features": str(Path(features).resolve()), "feature_key": reader.attrs["feature_key"],
        "model": ModelConfig(width_mult=width_mult).model_dump(),
        "cluster": ClusterConfig(algorithm=algorithm, clusters=clusters).model_dump(),
        "train": TrainConfig(batch_size=batch_size, lr=lr, crop_frames=crop_frames,
                             samples_per_epoch=samples_per_epoch).model_dump(),
        "seed": seed,
    }
    with DirectoryLock(run.root), ExitStack() as stack:
        config = freeze_run_config(run, identity, force_config)
        initial = run.initial_checkpoint()
        run_stage(initialize_model, initial, initial_key(config), checkpoint=str(initial), model=config["model"],
                  feature_config=reader.attrs["feature_config"], norm={"mean": reader.mean, "std": reader.std},
                  seed=seed)
        dask = DaskAddress(dask_address, n_workers, stack)
        history, previous, table_key = [], str(initial), f"decar-{slug(run_name)}-epochs"
        keys = epoch_keys(config, epochs - 1)
        for epoch in range(epochs):
            update = training_progress(epoch)
            metrics = run_epoch_stages(run, config, epoch, keys[epoch], previous, reader, device, dask, update)
            history.append(metrics)
            previous = metrics["checkpoint"]
            create_table_artifact([table_row(m) for m in history], key=table_key,
                                  description=f"pretrain-decar {run_name}: one row per epoch")
            if should_stop(history, patience):
                logger.info("early stop after epoch %d: NMI has not improved for %d epochs", epoch, patience)
                break
        summary = write_summary(run, history, stopped_early=len(history) < epochs)
    create_markdown_artifact(summary_markdown(run_name, summary), key=f"decar-{slug(run_name)}-summary")
    logger.info("pretrain-decar: %d epochs, latest checkpoint %s", len(history), summary["latest_checkpoint"])
    return str(run.root)


def training_progress(epoch: int):
    """A callback for train_epoch: a progress artifact in the UI and a log line every quarter."""
    logger = get_run_logger()
    bar, quarters = [], set()  # the artifact is made on first use: a cached epoch makes none

    def update(fraction: float, loss: float) -> None:
        if not bar:
            bar.append(create_progress_artifact(0.0, description=f"epoch {epoch}: training"))
        update_progress_artifact(bar[0], 100 * fraction, description=f"epoch {epoch}: training, loss {loss:.4f}")
        quarter = int(fraction * 4)
        if quarter not in quarters and quarter > 0:
            quarters.add(quarter)
            logger.info("epoch %d: training %d%%, loss %.4f", epoch, 25 * quarter, loss)

    return update


def table_row(m: dict) -> dict:
    return {"epoch": m["epoch"], "loss": round(m["loss"], 4),
            "nmi": None if m["nmi"] is None else round(m["nmi"], 4), "clusters": m["clusters"],
            "largest_cluster_%": round(100 * m["largest_fraction"], 1),
            **{f"{k}_s": round(v, 1) for k, v in m["seconds"].items()}}


def write_summary(run: RunLayout, history: list[dict], stopped_early: bool) -> dict:
    scored = [m for m in history if m["nmi"] is not None]
    best = max(scored, key=lambda m: m["nmi"]) if scored else history[-1]
    summary = {"epochs": len(history), "stopped_early": stopped_early,
               "latest_epoch": history[-1]["epoch"], "latest_checkpoint": history[-1]["checkpoint"],
               "best_nmi_epoch": best["epoch"], "best_nmi": best["nmi"], "best_checkpoint": best["checkpoint"],
               "final_loss": history[-1]["loss"]}
    write_json(run.root / "summary.json", summary)
    return summary


def summary_markdown(run_name: str, s: dict) -> str:
    return (f"# pretrain-decar `{run_name}`\n\n"
            f"- epochs run: {s['epochs']}{' (early stop on NMI patience)' if s['stopped_early'] else ''}\n"
            f"- latest checkpoint: `{s['latest_checkpoint']}` (loss {s['final_loss']:.4f})\n"
            f"- best checkpoint (highest epoch-to-epoch NMI, {s['best_nmi']}): `{s['best_checkpoint']}`\n\n"
            "NMI measures the stability of the assignments, not their quality: "
            "run benchmark-downstream for quality.\n")
