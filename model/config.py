"""One validated config object per stage. Defaults are the paper's values (METHODS.md)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureConfig(_Config):
    """Log-mel front end: 25 ms window, 10 ms hop, 64 mel bins, 60-7800 Hz, natural log."""

    sample_rate: int = 16000
    win_length: int = Field(400, gt=0)
    hop_length: int = Field(160, gt=0)
    n_fft: int = Field(1024, gt=0)
    n_mels: int = Field(64, gt=0)
    f_min: float = Field(60.0, ge=0)
    f_max: float = 7800.0
    power: float = 2.0
    log_eps: float = Field(1e-5, gt=0)
    max_seconds: float = Field(10.0, gt=0, description="clips are cut to this length (AudioSet: 10 s)")

    @model_validator(mode="after")
    def _check(self):
        if self.n_fft < self.win_length:
            raise ValueError(f"n_fft ({self.n_fft}) must be >= win_length ({self.win_length})")
        if not self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")
        return self

    @property
    def max_frames(self) -> int:
        return int(self.max_seconds * self.sample_rate) // self.hop_length + 1


class ModelConfig(_Config):
    """EfficientNet-B0 encoder f (1-channel stem, global max pool) and projection g."""

    embedding_dim: int = Field(512, gt=0, description="output of g: Linear 1280->embedding_dim + ReLU")
    width_mult: float = Field(1.0, gt=0, description="1.0 is EfficientNet-B0; smaller for tests and CPU runs")
    clip_norm: bool = Field(False, description="remove each clip's mean log-mel (its loudness) at the input: "
                            "the first clusterings otherwise follow loudness about as much as content")


class ClusterConfig(_Config):
    algorithm: Literal["kmeans", "pic"] = "kmeans"
    clusters: int = Field(512, ge=2, description="k for k-means; PIC's count is emergent")
    pca_dim: int = Field(128, ge=2)
    kmeans_iterations: int = Field(20, ge=1)
    kmeans_init: Literal["random", "kmeans++"] = Field(
        "kmeans++", description="faiss's random points merge separated components; k-means++ seeding does not "
                                "(bench/kmeans.py: NMI 0.986 -> 0.996 at 200k x 128, k=512, ~1.5 s more)")
    kmeans_redo: int = Field(1, ge=1, description="k-means runs with independent seeds; the lowest objective wins")
    pic_neighbours: int = Field(5, ge=1)
    pic_sigma: float = Field(0.2, gt=0)
    pic_alpha: float = Field(0.001, gt=0, lt=1)
    pic_iterations: int = Field(200, ge=1)
    max_largest_fraction: float = Field(0.5, gt=0, le=1, description="the guard refuses a clustering whose "
                                        "largest cluster holds more of the points than this")
    allow_degenerate: bool = Field(False, description="train even on (near-)constant embeddings or a clustering "
                                   "the guard refuses (model/health.py)")


class TrainConfig(_Config):
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-5, ge=0)
    head_lr: float | None = Field(None, description="defaults to lr; the head's SGD has no momentum")
    head_init: Literal["random", "centroids"] = Field(
        "random", description="random: N(0, 0.01) each epoch (paper); centroids: rows = the epoch's normalised "
        "cluster centroids of z, logits = cos / head_temperature (DeepCluster-v2; bench/science.py)")
    head_temperature: float = Field(0.1, gt=0)
    crop_frames: int | None = Field(None, ge=8, description="random crop length in frames; None = whole clip")
    freq_masks: int = Field(2, ge=0)
    freq_mask_bins: int = Field(30, ge=0)
    time_masks: int = Field(2, ge=0)
    time_mask_frames: int = Field(40, ge=0)
    time_warp: int = Field(5, ge=0)
    freq_shift: int = Field(0, ge=0, description="shift each training crop up or down by up to this many mel "
                            "bins (0: off, the paper); a crude pitch/formant shift")
    samples_per_epoch: int | None = Field(None, ge=1, description="draws per epoch; None = number of clips")
    bn_clips: int = Field(256, ge=0, description="clips of the run's fixed sample over which batch-norm "
                          "statistics are recomputed after each epoch (precise BN); 0 keeps training's")
    # speed options for GPUs (README, "Training on several GPUs and nodes"); all off by default: without
    # a GPU here nothing has shown them faster (bench/gpu.py measures them where there is one)
    mixed_precision: bool = Field(True, description="bf16 autocast on GPUs (the CPU always trains in float32)")
    channels_last: bool = Field(False, description="network and batches in channels-last memory format")
    compile: bool = Field(False, description="torch.compile the training network (first steps pay the compile)")
    sync_batchnorm: bool = Field(False, description="batch-norm statistics over all processes' batches "
                                 "(SyncBatchNorm; torch supports it on GPUs only)")


class RunConfig(_Config):
    """Everything a pre-training run's outputs depend on; frozen in the run's run.json.

    The stage keys are computed from it (flows/run_config.py); `cluster_overrides` holds the
    per-epoch clustering changes made by `recluster` ({"3": {"clusters": 1024}})."""

    features: str = Field(description="where the feature store was last found (resolved path); not part of the "
                          "identity, so a run and its store moved or copied elsewhere resume")
    feature_key: str = Field(description="the feature store's content key (feature config, manifest hash, shard "
                             "size): what identifies the store")
    model: ModelConfig = ModelConfig()
    cluster: ClusterConfig = ClusterConfig()
    train: TrainConfig = TrainConfig()
    seed: int = 0
    embed_shard_size: int = Field(256, ge=1, description="clips per embedding shard (one Dask task each)")
    cluster_overrides: dict[str, dict] = Field(default_factory=dict)

    def cluster_at(self, epoch: int) -> ClusterConfig:
        """Epoch `epoch`'s clustering: the run's, with that epoch's override applied."""
        return ClusterConfig(**{**self.cluster.model_dump(), **self.cluster_overrides.get(str(epoch), {})})

    def identity(self) -> dict:
        """What a resumed run must agree on (overrides are the run's own history, not its identity;
        the store is identified by feature_key, not by where it lies)."""
        return self.model_dump(exclude={"cluster_overrides", "features"})


class InstanceConfig(_Config):
    """DeLoRes-S, DeLoRes-M and SLICER (METHODS.md): two augmented views of each clip, one loss.

    Defaults are the papers' where this project can follow them, except the optimiser: AdamW at a
    constant rate by default (what was measured at CPU scale); the paper-era LARS with warm-up and
    cosine decay is `optimiser="lars", schedule="cosine"` (model/optimisers.py)."""

    method: Literal["delores-s", "delores-m", "slicer"]
    encoder: Literal["byola", "efficientnet"] = Field(
        "byola", description="byola: three conv3x3(64)-BN-ReLU-maxpool2 blocks, then Linear 512->d-ReLU-Dropout "
        "0.3-Linear d->d-ReLU, embedding = max + mean over time (the methods' default); efficientnet: "
        "EfficientNet-B0 (DECAR's), embedding = max + mean over time of the last map pooled over frequency")
    encoder_dim: int = Field(2048, gt=0, description="byola: d, the width of its MLP and of its embedding")
    width_mult: float = Field(1.0, gt=0, description="efficientnet only: its width multiplier")
    clip_norm: bool = Field(False, description="remove each clip's mean log-mel (its loudness) at the input")
    # views
    crop_frames: int = Field(96, ge=8, description="each view is a random crop of this many frames (~0.95 s)")
    mixup_alpha: float = Field(0.4, ge=0, description="mix ratio = alpha * U(0, 1), log-domain (0: no mixup)")
    bank_size: int = Field(2048, ge=1, description="past inputs kept for mixup / k-mix partners")
    rrc_scale: tuple[float, float] = Field((0.6, 1.5), description="random resized crop: freq and time scale range")
    # heads and losses
    projector_dim: int = Field(2048, gt=0, description="Barlow Twins projector width (3 layers)")
    barlow_lambda: float = Field(0.0051, ge=0, description="weight of the off-diagonal terms")
    block_weight: float = Field(1.0, ge=0, description="DeLoRes-M: weight of each block's Barlow Twins term "
                                "(METHODS.md: a plain sum; the authors' code scales them down, e.g. 1/32)")
    instance_head: Literal["linear", "mlp"] = Field(
        "linear", description="DeLoRes-M: the instance head; linear: Linear d->128 (the reference code); mlp: "
        "MoCo v2's Linear d->d-ReLU-Linear d->128, which keeps the instance task's invariances in the head")
    symmetric: bool = Field(False, description="DeLoRes-M: also the reverse direction (student on view 2, teacher "
                            "on view 1) for the instance and block terms, as SLICER does")
    ema: float = Field(0.999, ge=0, lt=1, description="momentum teacher: teacher = ema * teacher + (1 - ema) * student")
    queue_size: int = Field(4096, ge=1, description="negatives kept for the instance loss (MoCo)")
    instance_dim: int = Field(128, gt=0)
    temperature: float = Field(0.07, gt=0, description="instance loss temperature")
    cluster_heads: int = Field(128, ge=2, description="SLICER: K of the cluster head")
    cluster_temperature: float = Field(1.0, gt=0, description="SLICER: cluster-level NT-Xent temperature")
    kmix_clusters: int = Field(4, ge=2, description="SLICER k-mix: spherical k-means clusters of clip means")
    kmix_partner: Literal["farthest", "other"] = Field(
        "farthest", description="SLICER k-mix partner: from the farthest non-empty cluster (reference code) or "
        "from any other cluster (the paper's text)")
    kmix_sample: int = Field(1000, ge=2, description="SLICER k-mix: clips whose time-averaged log-mel fit the "
                             "centroids")
    # optimisation
    batch_size: int = Field(64, ge=2)
    optimiser: Literal["adamw", "lars"] = Field(
        "adamw", description="adamw: AdamW; lars: the paper-era LARS (momentum 0.9, trust coefficient 0.001; "
        "biases and norms at 0.024 x lr, undecayed, as Barlow Twins: model/optimisers.py)")
    lr: float = Field(1e-3, gt=0, description="base learning rate (lars: the weights'; Barlow Twins used 0.2 x "
                      "batch_size / 256)")
    weight_decay: float = Field(1e-6, ge=0)
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: linear warm-up over warmup_epochs, then cosine decay to lr / 1000 at "
        "schedule_epochs, by global step (a resumed run continues the same curve)")
    warmup_epochs: float = Field(0.0, ge=0, description="cosine: warm-up length (Barlow Twins: 10)")
    schedule_epochs: int | None = Field(None, ge=1, description="cosine: the epoch the decay ends at; the flows "
                                        "fill in their `epochs` when this is None")
    samples_per_epoch: int | None = Field(None, ge=1, description="clips per epoch; None = number of clips")

    @model_validator(mode="after")
    def _check_schedule(self):
        if self.schedule == "cosine" and self.schedule_epochs is not None \
                and self.warmup_epochs >= self.schedule_epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below schedule_epochs "
                             f"({self.schedule_epochs})")
        return self

    def planned_for(self, epochs: int) -> "InstanceConfig":
        """This config for a run of `epochs` epochs: a cosine schedule without an end decays over them."""
        if self.schedule != "cosine" or self.schedule_epochs is not None:
            return self
        return InstanceConfig(**{**self.model_dump(), "schedule_epochs": epochs})


class InstanceRunConfig(_Config):
    """run.json of an instance-method run (pretrain-delores-s, -delores-m, -slicer)."""

    features: str = Field(description="where the feature store was last found (not part of the identity)")
    feature_key: str = Field(description="the feature store's content key: what identifies the store")
    method: InstanceConfig
    seed: int = 0

    def identity(self) -> dict:
        return self.model_dump(mode="json", exclude={"features"})
