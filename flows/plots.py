"""Plots of a run (matplotlib, no display): PNG bytes for the UI's markdown artifacts and for
runs/<run>/plots/. Pure formatting: no Prefect, no file layout beyond the caller's paths."""
from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Fixed colours: the UI screenshot test looks for them (tests/test_ui_screenshot.py).
COLORS = {"loss": "#1f77b4", "chance": "#7f7f7f", "nmi": "#ff7f0e", "decar": "#2ca02c",
          "random-init": "#9467bd", "random-init-bn": "#c5b0d5", "logmel-stats": "#8c564b", "paper": "#d62728"}
SIZE, DPI = (6.0, 3.0), 80


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def data_uri(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def loss_nmi(history: list[dict]) -> bytes:
    """Training loss per epoch with ln k (chance) dashed, and NMI(t, t-1) per epoch."""
    epochs = [m["epoch"] for m in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=SIZE)
    left.plot(epochs, [m["loss"] for m in history], "o-", color=COLORS["loss"], lw=2, label="loss")
    left.plot(epochs, [math.log(m["clusters"]) if m["clusters"] > 1 else np.nan for m in history], "--",
              color=COLORS["chance"], label="ln k (chance)")
    left.set(title="training loss", xlabel="epoch")
    left.legend(fontsize=8)
    scored = [m for m in history if m["nmi"] is not None]
    right.plot([m["epoch"] for m in scored], [m["nmi"] for m in scored], "o-", color=COLORS["nmi"], lw=2)
    right.set(title="NMI(t, t-1)", xlabel="epoch", ylim=(0, 1), xlim=left.get_xlim())
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def cluster_sizes(sizes, epoch: int) -> bytes:
    """Histogram of cluster sizes (log-spaced bins, log counts)."""
    sizes = np.asarray(sizes)
    fig, ax = plt.subplots(figsize=SIZE)
    bins = np.unique(np.geomspace(1, max(2, sizes.max()) + 1, 30).astype(int))
    ax.hist(sizes, bins=bins, color=COLORS["loss"])
    ax.set(xscale="log", xlabel="clips per cluster (log bins)", ylabel="clusters",
           title=f"cluster sizes, epoch {epoch} ({len(sizes)} clusters)")
    ax.axvline(sizes.sum() / len(sizes), color=COLORS["chance"], ls="--", label="uniform")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def health(history: list[dict]) -> bytes:
    """Embedding spread and effective rank, cluster-size entropy / ln C, head accuracy vs chance."""
    epochs = [m["epoch"] for m in history]
    h = [m["health"] for m in history]
    fig, axes = plt.subplots(1, 4, figsize=(9.0, 2.6))
    series = [("embedding spread", [x["embedding"]["relative_spread"] for x in h], None),
              ("effective rank", [x["embedding"]["effective_rank"] for x in h], None),
              ("size entropy / ln C", [x["clusters"]["size_entropy_ratio"] for x in h], (0, 1.05)),
              ("pseudo-label accuracy", [x["training"]["pseudo_label_accuracy"] for x in h], (0, 1.05))]
    for ax, (title, values, ylim) in zip(axes, series):
        ax.plot(epochs, values, "o-", color=COLORS["loss"])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        if ylim:
            ax.set_ylim(*ylim)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    chance = [x["training"].get("chance_accuracy") for x in h]
    axes[3].plot(epochs, chance, "--", color=COLORS["chance"], label="chance")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def instance_curves(history: list[dict]) -> bytes:
    """An instance method's loss (and its terms), embedding spread and effective rank per epoch."""
    epochs = [m["epoch"] for m in history]
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 2.6))
    axes[0].plot(epochs, [m["loss"] for m in history], "o-", color=COLORS["loss"], lw=2, label="loss")
    for name in history[-1]["terms"]:
        axes[0].plot(epochs, [m["terms"].get(name, np.nan) for m in history], ".--", lw=1, label=name)
    axes[0].legend(fontsize=7)
    series = [("training loss", None), ("embedding spread", "relative_spread"), ("effective rank", "effective_rank")]
    for ax, (title, key) in zip(axes, series):
        if key:
            ax.plot(epochs, [m["health"][key] for m in history], "o-", color=COLORS["loss"])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def benchmark_bars(rows: list[dict], models: tuple[str, ...], paper: dict[tuple[str, str, str], float]) -> bytes:
    """Test accuracy per task (and mode) for every model side by side; the paper's numbers as markers."""
    groups = list(dict.fromkeys((r["task"], r["mode"]) for r in rows))
    models = [m for m in models if any(r["model"] == m for r in rows)]
    score = {(r["task"], r["mode"], r["model"]): 100 * r["accuracy"] for r in rows}
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(groups) + 2), 3.2))
    x = np.arange(len(groups))
    for i, model in enumerate(models):
        offset = x - 0.4 + width * (i + 0.5)
        ax.bar(offset, [score.get((*g, model), np.nan) for g in groups], width, label=model,
               color=COLORS.get(model))
        marks = [paper.get((*g, model), np.nan) for g in groups]
        if not np.all(np.isnan(marks)):
            ax.plot(offset, marks, "D", color=COLORS["paper"], ms=6,
                    label="paper (Table 2)" if "paper (Table 2)" not in ax.get_legend_handles_labels()[1] else None)
    ax.set_xticks(x, [f"{short(t)}\n{m}" for t, m in groups], fontsize=8)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), title="downstream accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png(fig)


def short(task: str) -> str:
    """folder:/long/path/name -> folder:name (the axis has room for a name, not a path)."""
    kind, sep, where = task.partition(":")
    return f"{kind}:{where.rstrip('/').rsplit('/', 1)[-1]}" if sep and "/" in where else task
