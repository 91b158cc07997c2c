"""A run's frozen config (run.json) and the content keys of each epoch's stages.

Keys chain: extract(t) depends on the checkpoint of t-1, cluster(t) on extract(t)
and epoch t's clustering config, train(t) on cluster(t). Changing the clustering
of epoch t therefore changes the keys of t's training and of every later stage,
and nothing before.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.config import RunConfig
from storage.atomic import read_json, write_json
from storage.features import FeatureReader
from storage.layout import RunLayout
from storage.records import read_record, stable_key

KEY_VERSION = 2  # 2: the embedding shard size is part of the extraction key


class ConfigMismatch(ValueError):
    pass


def freeze_run_config(run: RunLayout, config: RunConfig, force: bool = False) -> RunConfig:
    """Write run.json on first use; later, refuse a different identity unless forced.

    Per-epoch clustering overrides written by `recluster` are kept (dropped when forced to a new config).
    The feature store is identified by its content key: a store found at another path (the run and
    its store moved or copied) is accepted, and run.json records the new path."""
    if run.config.exists():
        stored = read_json(run.config)
        old = flatten({k: v for k, v in stored.items() if k not in ("cluster_overrides", "features")})
        new = flatten(config.identity())
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed and not force:
            details = "; ".join(f"{k}: run has {old.get(k)!r}, asked {new.get(k)!r}" for k in changed)
            raise ConfigMismatch(f"run {run.root} was started with another config ({details}). "
                                 "Use another run_name, or force_config=True to continue with the new one.")
        if not changed and "cluster_overrides" in type(config).model_fields:
            config = config.model_copy(update={"cluster_overrides": stored.get("cluster_overrides", {})})
    write_run_config(run, config)
    return config


def relocate_features(config: RunConfig, features: str | None) -> RunConfig:
    """The run's config with its feature store at `features` (moved or copied; default: where run.json
    last saw it). A store of other content is refused: it is identified by its key, not its path."""
    path = Path(features or config.features)
    if read_record(path) is None:
        raise FileNotFoundError(f"features: no complete feature store at {str(path)!r}"
                                + ("" if features else " (the run's store moved? pass features=<its new path>)"))
    key = FeatureReader(path).attrs.get("feature_key")
    if key != config.feature_key:
        raise ConfigMismatch(f"features: the store at {str(path)!r} has feature_key {key!r}; the run was started "
                             f"on {config.feature_key!r}")
    return config.model_copy(update={"features": str(path.resolve())})


def write_run_config(run: RunLayout, config: RunConfig) -> None:
    write_json(run.config, config.model_dump(mode="json"))


def read_run_config(run: RunLayout) -> RunConfig:
    if not run.config.exists():
        raise FileNotFoundError(f"{run.root} is not a pretrain-decar run: {run.config} is missing")
    return RunConfig(**read_json(run.config))


def flatten(config: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.05}} -> {"train.lr": 0.05}, so a mismatch names the exact setting."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass(frozen=True)
class EpochKeys:
    extract: str
    cluster: str
    compare: str
    train: str


def initial_key(config: RunConfig) -> str:
    return stable_key(KEY_VERSION, "init", config.feature_key, config.model.model_dump(), config.seed,
                      config.train.bn_clips, config.train.batch_size)


def epoch_keys(config: RunConfig, last_epoch: int) -> list[EpochKeys]:
    """Keys of epochs 0..last_epoch."""
    out: list[EpochKeys] = []
    checkpoint, previous_cluster = initial_key(config), None
    for t in range(last_epoch + 1):
        extract = stable_key(KEY_VERSION, "extract", config.feature_key, checkpoint, config.embed_shard_size)
        cluster = stable_key(KEY_VERSION, "cluster", extract, config.cluster_at(t).model_dump(), config.seed, t)
        compare = stable_key(KEY_VERSION, "compare", cluster, previous_cluster)
        checkpoint = stable_key(KEY_VERSION, "train", cluster, checkpoint, config.train.model_dump(), config.seed, t)
        out.append(EpochKeys(extract, cluster, compare, checkpoint))
        previous_cluster = cluster
    return out
