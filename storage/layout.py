"""Where each stage's outputs live (see DESIGN.md, "Data flow and on-disk layout")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def audio_dir(self, source: str) -> Path:
        return self.root / "audio" / source

    def manifest(self, dataset: str) -> Path:
        return self.root / "manifests" / f"{dataset}.parquet"

    def features(self, dataset: str, feature_key: str) -> Path:
        return self.root / "features" / f"{dataset}-{feature_key}.zarr"

    def downloads(self) -> Path:
        return self.root / "downloads"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "run.json"

    def epoch_dir(self, epoch: int) -> Path:
        return self.root / f"epoch-{epoch:03d}"

    def embeddings(self, epoch: int) -> Path:
        return self.epoch_dir(epoch) / "embeddings.zarr"

    def labels(self, epoch: int) -> Path:
        return self.epoch_dir(epoch) / "labels.parquet"

    def clustering(self, epoch: int) -> Path:
        return self.epoch_dir(epoch) / "clustering.json"

    def checkpoint(self, epoch: int) -> Path:
        return self.epoch_dir(epoch) / "checkpoint.pt"

    def metrics(self, epoch: int) -> Path:
        return self.epoch_dir(epoch) / "metrics.json"

    def initial_checkpoint(self) -> Path:
        return self.root / "init" / "checkpoint.pt"

    def benchmarks(self) -> Path:
        return self.root / "benchmarks"

    def epochs(self) -> list[int]:
        """Epoch numbers that have a directory, ascending."""
        out = []
        for p in self.root.glob("epoch-[0-9][0-9][0-9]"):
            out.append(int(p.name.split("-")[1]))
        return sorted(out)
