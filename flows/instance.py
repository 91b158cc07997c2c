"""Flows pretrain-delores-s, pretrain-delores-m and pretrain-slicer: the instance methods on the
same feature store, run layout, caching and distributed trainer as pretrain-decar.

Per epoch there is one stage (train), cached on a content key that chains the epochs, so a run
stopped anywhere reruns only the unfinished epoch. The methods themselves are pure modules:
model/delores_s.py, model/delores_m.py, model/slicer.py over model/instance.py's epoch.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.artifacts import publish_instance_epoch, training_progress
from flows.pretrain import open_complete_store, validate_run
from flows.run_config import KEY_VERSION, freeze_run_config
from model.config import InstanceConfig, InstanceRunConfig
from storage.atomic import write_json
from storage.layout import RunLayout
from storage.locks import DirectoryLock
from storage.records import stable_key
from tasks.caching import run_stage
from tasks.instance import initialize_instance_model, train_instance_stage


def instance_keys(config: InstanceRunConfig, epochs: int) -> tuple[str, list[str]]:
    """Key of the initial state, then of each epoch's checkpoint (each depends on the one before)."""
    key = stable_key(KEY_VERSION, "instance-init", config.feature_key, config.method.model_dump(mode="json"),
                     config.seed)
    initial, keys = key, []
    for t in range(epochs):
        key = stable_key(KEY_VERSION, "instance-train", key, config.method.model_dump(mode="json"), config.seed, t)
        keys.append(key)
    return initial, keys


def run_instance_pretraining(method: str, features: str, run_name: str, runs_dir: str, epochs: int,
                             batch_size: int, lr: float, seed: int, device: str, processes: int | None,
                             loader_workers: int, options: dict | None, force_config: bool) -> str:
    """What the three flows share: validate, freeze run.json, initial state, one cached stage per epoch."""
    logger = get_run_logger()
    validate_run(run_name, epochs, device, processes, loader_workers)
    cfg = InstanceConfig(**{"method": method, "batch_size": batch_size, "lr": lr, **(options or {})})
    cfg = cfg.planned_for(epochs)  # a cosine schedule without an end decays over this run's epochs
    reader = open_complete_store(features)
    if len(reader.usable) < cfg.batch_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) is larger than the number of usable clips "
                         f"({len(reader.usable)}) in {features}")
    run = RunLayout(Path(runs_dir) / run_name)
    config = InstanceRunConfig(features=str(Path(features).resolve()), feature_key=reader.attrs["feature_key"],
                               method=cfg, seed=seed)
    with DirectoryLock(run.root):
        config = freeze_run_config(run, config, force_config)
        initial, keys = instance_keys(config, epochs)
        previous = str(run.initial_checkpoint())
        run_stage(initialize_instance_model, initial, checkpoint=previous, features=config.features,
                  config=cfg.model_dump(mode="json"), seed=seed)
        history = []
        for epoch, key in enumerate(keys):
            trained = run_stage(train_instance_stage, key, features=config.features, previous_checkpoint=previous,
                                checkpoint=str(run.checkpoint(epoch)), config=cfg.model_dump(mode="json"),
                                epoch=epoch, seed=seed, device=device, processes=processes,
                                loader_workers=loader_workers, progress=training_progress(epoch))
            metrics = {"epoch": epoch, "method": method, "loss": trained["loss"], "lr": trained["lr"],
                       "terms": trained["terms"],
                       "health": trained["health"], "checkpoint": trained["checkpoint"],
                       "seconds": {"train": trained["seconds"]}, "processes": trained["processes"]}
            write_json(run.metrics(epoch), metrics)
            history.append(metrics)
            previous = trained["checkpoint"]
            logger.info("epoch %d: loss %.4f (%s), embedding spread %.3g, effective rank %.1f", epoch,
                        trained["loss"], ", ".join(f"{k} {v:.4f}" for k, v in trained["terms"].items()),
                        trained["health"]["relative_spread"], trained["health"]["effective_rank"])
            publish_instance_epoch(run.root, method, run_name, history)
        summary = {"method": method, "epochs": len(history), "latest_epoch": history[-1]["epoch"],
                   "latest_checkpoint": history[-1]["checkpoint"], "final_loss": history[-1]["loss"]}
        write_json(run.root / "summary.json", summary)
    logger.info("pretrain-%s: %d epochs, latest checkpoint %s", method, len(history), summary["latest_checkpoint"])
    return str(run.root)


@flow(name="pretrain-delores-s")
def pretrain_delores_s(features: str, run_name: str, runs_dir: str = "runs", epochs: int = 100,
                       batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                       processes: int | None = None, loader_workers: int = 0, projector_dim: int = 2048,
                       barlow_lambda: float = 0.0051, options: dict | None = None,
                       force_config: bool = False) -> str:
    """DeLoRes-S (Barlow Twins for audio) on a feature store; returns the run directory.

    Args:
        features: path of a complete feature store (what cache-features returned).
        run_name: the run's folder name under runs_dir (letters, digits, '.', '_', '-').
        runs_dir: where runs live.
        epochs: epochs to run (an interrupted or shorter run continues to this many).
        batch_size: clips per step (the global batch over all processes).
        lr: the optimiser's base learning rate (AdamW's unless options choose LARS).
        seed: seeds the initial weights, the clip order and the views.
        device: "auto", "cpu", "cuda" (every visible GPU) or a list such as "cuda:0,1".
        processes: training processes joined by torch.distributed (default: one per GPU, else 1).
        loader_workers: DataLoader worker processes per training process.
        projector_dim: width of the 3-layer projector.
        barlow_lambda: weight of the off-diagonal cross-correlation terms.
        options: further InstanceConfig settings (model/config.py), e.g. {"encoder": "efficientnet"}, or
            the paper-era optimiser {"optimiser": "lars", "schedule": "cosine", "warmup_epochs": 10}
            with lr 0.2 x batch_size / 256 (Barlow Twins).
        force_config: continue an existing run with a changed config.
    """
    return run_instance_pretraining("delores-s", features, run_name, runs_dir, epochs, batch_size, lr, seed, device,
                                    processes, loader_workers, {"projector_dim": projector_dim,
                                                                "barlow_lambda": barlow_lambda, **(options or {})},
                                    force_config)


@flow(name="pretrain-delores-m")
def pretrain_delores_m(features: str, run_name: str, runs_dir: str = "runs", epochs: int = 100,
                       batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                       processes: int | None = None, loader_workers: int = 0, ema: float = 0.999,
                       queue_size: int = 4096, options: dict | None = None, force_config: bool = False) -> str:
    """DeLoRes-M (momentum teacher: MoCo instance loss + per-block Barlow Twins) on a feature store.

    Args:
        features: path of a complete feature store (what cache-features returned).
        run_name: the run's folder name under runs_dir (letters, digits, '.', '_', '-').
        runs_dir: where runs live.
        epochs: epochs to run (an interrupted or shorter run continues to this many).
        batch_size: clips per step (the global batch over all processes).
        lr: the optimiser's base learning rate (AdamW's unless options choose LARS).
        seed: seeds the initial weights, the clip order and the views.
        device: "auto", "cpu", "cuda" (every visible GPU) or a list such as "cuda:0,1".
        processes: training processes joined by torch.distributed (default: one per GPU, else 1).
        loader_workers: DataLoader worker processes per training process.
        ema: teacher momentum (teacher = ema * teacher + (1 - ema) * student after each step).
        queue_size: negatives kept for the instance loss.
        options: further InstanceConfig settings (model/config.py), e.g. {"temperature": 0.07}, or
            the paper-era optimiser {"optimiser": "lars", "schedule": "cosine", "warmup_epochs": 2}
            with lr 0.2 x batch_size / 256, measured better than AdamW for this method (README).
        force_config: continue an existing run with a changed config.
    """
    return run_instance_pretraining("delores-m", features, run_name, runs_dir, epochs, batch_size, lr, seed, device,
                                    processes, loader_workers, {"ema": ema, "queue_size": queue_size,
                                                                **(options or {})}, force_config)


@flow(name="pretrain-slicer")
def pretrain_slicer(features: str, run_name: str, runs_dir: str = "runs", epochs: int = 100,
                    batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                    processes: int | None = None, loader_workers: int = 0, cluster_heads: int = 128,
                    kmix_clusters: int = 4, kmix_partner: str = "farthest", options: dict | None = None,
                    force_config: bool = False) -> str:
    """SLICER (symmetric instance + cluster-level contrastive learning, k-mix) on a feature store.

    Args:
        features: path of a complete feature store (what cache-features returned).
        run_name: the run's folder name under runs_dir (letters, digits, '.', '_', '-').
        runs_dir: where runs live.
        epochs: epochs to run (an interrupted or shorter run continues to this many).
        batch_size: clips per step (the global batch over all processes).
        lr: the optimiser's base learning rate (AdamW's unless options choose LARS).
        seed: seeds the initial weights, the clip order, the views and k-mix's clustering.
        device: "auto", "cpu", "cuda" (every visible GPU) or a list such as "cuda:0,1".
        processes: training processes joined by torch.distributed (default: one per GPU, else 1).
        loader_workers: DataLoader worker processes per training process.
        cluster_heads: K of the cluster head.
        kmix_clusters: spherical k-means clusters of the clips' mean log-mel for k-mix.
        kmix_partner: "farthest" (a partner from the farthest cluster, the reference code) or "other"
            (from any other cluster, the paper's text).
        options: further InstanceConfig settings (model/config.py), e.g. {"ema": 0.99}.
        force_config: continue an existing run with a changed config.
    """
    return run_instance_pretraining("slicer", features, run_name, runs_dir, epochs, batch_size, lr, seed, device,
                                    processes, loader_workers, {"cluster_heads": cluster_heads,
                                                                "kmix_clusters": kmix_clusters,
                                                                "kmix_partner": kmix_partner, **(options or {})},
                                    force_config)
