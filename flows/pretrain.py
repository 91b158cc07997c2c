"""Flow pretrain-decar: per epoch extract -> cluster -> compare -> train, each stage cached.

The method itself is model/decar.py; the stages of an epoch are flows/epoch.py."""
from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path

import torch
from prefect import flow, get_run_logger

from flows.artifacts import publish_epoch_plots, publish_epoch_table, publish_run_summary, training_progress
from flows.epoch import run_epoch
from flows.run_config import epoch_keys, freeze_run_config, initial_key
from flows.runners import OnDemandCluster
from model.config import ClusterConfig, ModelConfig, RunConfig, TrainConfig
from model.decar import check_sync_batchnorm, should_stop
from model.runtime import training_devices
from storage.atomic import write_json
from storage.features import FeatureReader
from storage.layout import RunLayout
from storage.locks import DirectoryLock
from storage.records import read_record
from tasks.caching import run_stage
from tasks.train import initialize_model


@flow(name="pretrain-decar")
def pretrain_decar(features: str, run_name: str, runs_dir: str = "runs", epochs: int = 100, patience: int = 10,
                   clusters: int = 512, algorithm: str = "kmeans", batch_size: int = 64, lr: float = 0.05,
                   seed: int = 0, device: str = "auto", dask_address: str | None = None,
                   n_workers: int | None = None, crop_frames: int | None = None,
                   samples_per_epoch: int | None = None, width_mult: float = 1.0, embed_shard_size: int = 256,
                   bn_clips: int = 256, allow_degenerate: bool = False, processes: int | None = None,
                   loader_workers: int = 0, train_options: dict | None = None, cluster_options: dict | None = None,
                   model_options: dict | None = None, force_config: bool = False) -> str:
    """DECAR pre-training on a feature store; returns the run directory.

    Every stage is cached on content keys: rerunning continues where a run stopped, and a
    finished run reruns in seconds. The paper's values are the defaults.

    Args:
        features: path of a complete feature store (what cache-features returned).
        run_name: the run's folder name under runs_dir (letters, digits, '.', '_', '-').
        runs_dir: where runs live.
        epochs: the most epochs to run (an interrupted or shorter run continues to this many).
        patience: stop when the epoch-to-epoch NMI has not improved for this many epochs.
        clusters: k of k-means (PIC's count is emergent).
        algorithm: "kmeans" or "pic".
        batch_size: clips per SGD step (and per extraction batch).
        lr: SGD learning rate of the network (momentum 0.9, weight decay 1e-5) and of the head.
        seed: seeds the initial weights, k-means, the sampler and augmentation.
        device: "auto" (the GPUs when torch sees any, else the CPU), "cpu", "cuda" (every visible GPU)
            or a list such as "cuda:0,1".
        dask_address: an existing Dask scheduler for extraction; default: a local cluster.
        n_workers: worker processes of the local Dask cluster (default: up to 4).
        crop_frames: train on random crops of this many frames (None: whole clips).
        samples_per_epoch: clips drawn per epoch by the uniform-over-clusters sampler (None: the pool size).
        width_mult: EfficientNet-B0 width multiplier; 1.0 is the paper's network.
        embed_shard_size: clips per extraction shard (one Dask task each).
        bn_clips: clips of a fixed sample over which batch-norm statistics are recomputed before each
            extraction (0: keep the running statistics, as the paper's code does; a fresh network then
            embeds every clip alike).
        allow_degenerate: train even when the embeddings are (near-)constant or one cluster holds more
            than half of the clips (the stage fails otherwise, naming the measure).
        processes: training processes joined by torch.distributed (DDP): default one per GPU of
            `device`, else 1; on the CPU, N gloo processes. batch_size is the global batch.
        loader_workers: DataLoader worker processes per training process (0: read in the trainer).
        train_options: further TrainConfig settings (model/config.py), e.g. {"head_init": "centroids",
            "freq_mask_bins": 10}; they override the parameters above.
        cluster_options: further ClusterConfig settings, e.g. {"pca_dim": 32, "kmeans_init": "random"}.
        model_options: further ModelConfig settings, e.g. {"clip_norm": true}.
        force_config: continue an existing run with a changed config.
    """
    logger = get_run_logger()
    # plain parameters, then the configs' own constraints (pydantic names the field), then the store
    validate(run_name, epochs, patience, algorithm, device, processes, loader_workers)
    model = ModelConfig(**{"width_mult": width_mult, **(model_options or {})})
    cluster_config = ClusterConfig(**{"algorithm": algorithm, "clusters": clusters,
                                      "allow_degenerate": allow_degenerate, **(cluster_options or {})})
    train = TrainConfig(**{"batch_size": batch_size, "lr": lr, "crop_frames": crop_frames,
                           "samples_per_epoch": samples_per_epoch, "bn_clips": bn_clips, **(train_options or {})})
    devices = training_devices(device, processes)
    if train.sync_batchnorm and len(devices) > 1:
        check_sync_batchnorm(torch.device(devices[0]))
    reader = open_store(features, clusters, algorithm)
    run = RunLayout(Path(runs_dir) / run_name)
    config = RunConfig(features=str(Path(features).resolve()), feature_key=reader.attrs["feature_key"], model=model,
                       cluster=cluster_config, train=train, seed=seed, embed_shard_size=embed_shard_size)
    with DirectoryLock(run.root), ExitStack() as stack:
        config = freeze_run_config(run, config, force_config)
        previous = str(run.initial_checkpoint())
        run_stage(initialize_model, initial_key(config), checkpoint=previous, features=config.features,
                  model=config.model.model_dump(), train=config.train.model_dump(), seed=seed)
        cluster = OnDemandCluster(dask_address, n_workers, stack)
        history = []
        for epoch, keys in enumerate(epoch_keys(config, epochs - 1)):
            metrics = run_epoch(run, config, epoch, keys, previous, len(reader), device, cluster,
                                training_progress(epoch), processes, loader_workers)
            history.append(metrics)
            previous = metrics["checkpoint"]
            publish_epoch_table(run_name, history)
            publish_epoch_plots(run.root, run_name, history, run.labels(epoch))
            if should_stop(history, patience):
                logger.info("early stop after epoch %d: NMI has not improved for %d epochs", epoch, patience)
                break
        summary = write_summary(run, history, stopped_early=len(history) < epochs)
    publish_run_summary(run_name, summary)
    logger.info("pretrain-decar: %d epochs, latest checkpoint %s", len(history), summary["latest_checkpoint"])
    return str(run.root)


def validate(run_name: str, epochs: int, patience: int, algorithm: str, device: str, processes: int | None,
             loader_workers: int) -> None:
    """Fail before any work, naming the parameter (the configs' own constraints are checked by pydantic)."""
    validate_run(run_name, epochs, device, processes, loader_workers)
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if algorithm not in ("kmeans", "pic"):
        raise ValueError(f"algorithm must be 'kmeans' or 'pic', got {algorithm!r}")


def validate_run(run_name: str, epochs: int, device: str, processes: int | None, loader_workers: int) -> None:
    """The checks every pre-training flow shares (DECAR and the instance methods)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run_name or ""):
        raise ValueError(f"run_name must be letters, digits, '.', '_' or '-', got {run_name!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+(,\d+)*", device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or a GPU list such as 'cuda:0,1', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():  # training starts from this process
        raise ValueError(f"device is {device!r} but torch sees no GPU in the flow's process; use 'cpu' or 'auto'")
    if processes is not None and processes < 1 or loader_workers < 0:
        raise ValueError(f"processes must be >= 1 and loader_workers >= 0, got {processes}, {loader_workers}")
    training_devices(device, processes)  # e.g. more processes than listed GPUs


def open_store(features: str, clusters: int, algorithm: str) -> FeatureReader:
    """The feature store, if it is complete and has enough clips for k-means' k."""
    reader = open_complete_store(features)
    usable = len(reader.usable)
    if algorithm == "kmeans" and clusters > usable:
        raise ValueError(f"clusters ({clusters}) is larger than the number of usable clips ({usable}) "
                         f"in {features}")
    return reader


def open_complete_store(features: str) -> FeatureReader:
    """The feature store at `features`, or a clear error if there is none (or it is unfinished)."""
    if not Path(features).is_dir() or read_record(features) is None:
        raise FileNotFoundError(f"features: no complete feature store at {features!r} "
                                "(run cache-features first; it prints the store's path)")
    return FeatureReader(features)


def write_summary(run: RunLayout, history: list[dict], stopped_early: bool) -> dict:
    scored = [m for m in history if m["nmi"] is not None]
    best = max(scored, key=lambda m: m["nmi"]) if scored else history[-1]
    summary = {"epochs": len(history), "stopped_early": stopped_early,
               "latest_epoch": history[-1]["epoch"], "latest_checkpoint": history[-1]["checkpoint"],
               "best_nmi_epoch": best["epoch"], "best_nmi": best["nmi"], "best_checkpoint": best["checkpoint"],
               "final_loss": history[-1]["loss"]}
    write_json(run.root / "summary.json", summary)
    return summary
