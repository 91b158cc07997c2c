"""Flow recluster: rerun only the clustering stage of one epoch, optionally with other parameters.

The epoch's embeddings are reused. Its new labels replace the old ones; what depended on
them (that epoch's training, every later epoch) is removed, so pretrain-decar recomputes it
on its next run. The override is recorded in run.json so that run continues with it."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.epoch import cluster_epoch
from flows.run_config import epoch_keys, read_run_config, relocate_features, write_run_config
from storage.atomic import remove
from storage.features import FeatureReader
from storage.layout import RunLayout
from storage.locks import DirectoryLock
from storage.records import is_complete, record_path


def invalidate_after(run: RunLayout, epoch: int) -> list[str]:
    """Remove epoch `epoch`'s training outputs and every later epoch."""
    removed = []
    for path in (run.checkpoint(epoch), record_path(run.checkpoint(epoch)), run.metrics(epoch),
                 run.root / "summary.json"):
        if path.exists():
            remove(path)
            removed.append(str(path))
    for later in run.epochs():
        if later > epoch:
            remove(run.epoch_dir(later))
            removed.append(str(run.epoch_dir(later)))
    return removed


@flow(name="recluster")
def recluster(run_dir: str, epoch: int, clusters: int | None = None, algorithm: str | None = None,
              features: str | None = None) -> str:
    """Recluster epoch `epoch` of a pretrain-decar run; returns the labels file's path.

    Args:
        run_dir: the run's folder (runs/<run_name>).
        epoch: the epoch whose embeddings are clustered again.
        clusters: a new k for that epoch (default: the run's).
        algorithm: "kmeans" or "pic" for that epoch (default: the run's).
        features: the run's feature store, if it moved with the run (default: where run.json saw it).
    """
    logger = get_run_logger()
    run = RunLayout(run_dir)
    config = relocate_features(read_run_config(run), features)
    if algorithm not in (None, "kmeans", "pic"):
        raise ValueError(f"algorithm must be 'kmeans' or 'pic', got {algorithm!r}")
    if clusters is not None and clusters < 2:
        raise ValueError(f"clusters must be >= 2, got {clusters}")
    old_keys = epoch_keys(config, epoch)[epoch] if epoch >= 0 else None
    if old_keys is None or not is_complete(run.embeddings(epoch), old_keys.extract):
        raise ValueError(f"epoch {epoch} of {run_dir} has no complete embeddings: "
                         "run pretrain-decar up to that epoch first")
    usable = len(FeatureReader(config.features).usable)
    if clusters is not None and clusters > usable:
        raise ValueError(f"clusters ({clusters}) is larger than the number of usable clips ({usable})")

    with DirectoryLock(run.root):
        override = dict(config.cluster_overrides.get(str(epoch), {}))
        override.update({k: v for k, v in (("clusters", clusters), ("algorithm", algorithm)) if v is not None})
        config = config.model_copy(update={"cluster_overrides": {**config.cluster_overrides, str(epoch): override}})
        config.cluster_at(epoch)  # validates the override before anything is written
        keys = epoch_keys(config, epoch)[epoch]
        removed = invalidate_after(run, epoch) if keys.cluster != old_keys.cluster else []
        write_run_config(run, config)
        clustered, compared = cluster_epoch(run, config, epoch, keys)

    logger.info("recluster epoch %d (%s): %d clusters, largest %.1f%%, NMI vs previous epoch %s; "
                "invalidated %d later outputs", epoch, clustered["algorithm"], compared["clusters"],
                100 * compared["largest_fraction"], compared["nmi"], len(removed))
    create_markdown_artifact(
        f"### recluster `{Path(run_dir).name}` epoch {epoch}\n- algorithm: {clustered['algorithm']}\n"
        f"- clusters: {compared['clusters']} (largest {100 * compared['largest_fraction']:.1f}%, "
        f"singletons {compared['singletons']})\n- NMI vs previous epoch: {compared['nmi']}\n"
        f"- invalidated: {len(removed)} outputs (retrained on the next pretrain-decar run)\n",
        key="recluster-summary")
    return str(run.labels(epoch))
