"""What the Prefect UI shows: tables, markdown summaries with plots, progress bars (formatting only).

A run's per-epoch table and plots are one artifact each that the run updates in place every epoch
(Prefect 3 patches an artifact by id, and the keyed collection follows its latest version), so the
run's Artifacts tab shows each once. Plots are PNGs embedded as data URIs (the UI renders them) and
also written to runs/<run>/plots/.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from uuid import UUID

import numpy as np
from prefect import get_run_logger
from prefect.artifacts import (
    MarkdownArtifact,
    TableArtifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.runtime import flow_run

from flows import plots
from storage.atomic import write_bytes
from storage.labels import read_labels


def slug(text: str) -> str:
    """An artifact key from any name: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def publish_living(kind: str, data, key: str, description: str | None = None) -> UUID:
    """Create artifact `key` the first time this flow run publishes it, update it in place after."""
    run_key = (str(flow_run.id), key)
    if run_key not in _living:
        make = create_table_artifact if kind == "table" else create_markdown_artifact
        _living[run_key] = make(data, key=key, description=description)
    else:
        artifact = (TableArtifact(table=data) if kind == "table" else MarkdownArtifact(markdown=data))
        with get_client(sync_client=True) as client:
            client.update_artifact(_living[run_key],
                                   ArtifactUpdate(data=artifact.format(_sync=True), description=description))
    return _living[run_key]


_living: dict[tuple[str, str], UUID] = {}  # (flow run, key) -> the artifact this run keeps updating


def image(title: str, png: bytes) -> str:
    """A markdown image of PNG bytes (a data URI: the artifact holds the picture itself)."""
    return f"![{title}]({plots.data_uri(png)})"


def save_plots(folder: Path, figures: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        write_bytes(folder / f"{name}.png", png)


# ---------------------------------------------------------------- terminal

_terminal = {"on": False}


def show_terminal_progress(on: bool = True) -> None:
    """Draw long stages as a progress bar on stderr too (the command line turns this on)."""
    _terminal["on"] = on


def terminal_bar(label: str, fraction: float, note: str = "", width: int = 30) -> None:
    if not _terminal["on"]:
        return
    filled = int(round(width * min(max(fraction, 0.0), 1.0)))
    sys.stderr.write(f"\r  {label} [{'#' * filled}{'.' * (width - filled)}] {100 * fraction:3.0f}% {note}  ")
    sys.stderr.write("\n" if fraction >= 1 else "")
    sys.stderr.flush()


# ---------------------------------------------------------------- cache-features

def publish_feature_summary(store: Path, clips: int, summary: dict) -> None:
    create_markdown_artifact(
        f"### Features\n- store: `{store}`\n- clips: {clips}\n- decode failures: "
        f"{summary['decode_failures']}\n- mean / std: {summary['mean']:.3f} / {summary['std']:.3f}\n",
        key=f"features-{slug(Path(store).stem)}")


# ---------------------------------------------------------------- pretrain-decar

def training_progress(epoch: int):
    """A callback for the training stage: a progress artifact in the UI and a log line every quarter."""
    logger = get_run_logger()
    bar, quarters = [], set()  # the artifact is made on first use: a cached epoch makes none

    def update(fraction: float, loss: float) -> None:
        if not bar:
            bar.append(create_progress_artifact(0.0, description=f"epoch {epoch}: training"))
        update_progress_artifact(bar[0], 100 * fraction, description=f"epoch {epoch}: training, loss {loss:.4f}")
        terminal_bar(f"epoch {epoch} training", fraction, f"loss {loss:.4f}")
        quarter = int(fraction * 4)
        if quarter not in quarters and quarter > 0:
            quarters.add(quarter)
            logger.info("epoch %d: training %d%%, loss %.4f", epoch, 25 * quarter, loss)

    return update


def publish_epoch_table(run_name: str, history: list[dict]) -> None:
    """The per-epoch table: one artifact per flow run, updated in place each epoch."""
    publish_living("table", [epoch_row(m) for m in history], key=f"decar-{slug(run_name)}-epochs",
                   description=f"pretrain-decar {run_name}: one row per epoch ('cached': reused, not run now)")


def publish_epoch_plots(run_root: Path, run_name: str, history: list[dict], labels: Path) -> None:
    """Loss (beside ln k) and NMI per epoch, the latest epoch's cluster sizes (from its `labels`) and the
    health measures: PNGs in <run>/plots/ and one markdown artifact, updated in place each epoch."""
    latest = history[-1]["epoch"]
    sizes = np.unique(read_labels(labels)[1], return_counts=True)[1]
    figures = {"loss-nmi": plots.loss_nmi(history), "cluster-sizes": plots.cluster_sizes(sizes, latest),
               "health": plots.health(history)}
    save_plots(Path(run_root) / "plots", figures)
    publish_living("markdown", "\n\n".join([
        f"# pretrain-decar `{run_name}`: {len(history)} epoch{'s' * (len(history) > 1)}",
        "## Loss and NMI(t, t-1)", image("loss and NMI per epoch", figures["loss-nmi"]),
        "The dashed line is ln k, the loss of a head that guesses uniformly.",
        f"## Cluster sizes, epoch {latest}", image("cluster sizes", figures["cluster-sizes"]),
        "## Representation health", image("health", figures["health"]),
        f"PNG files: `{Path(run_root) / 'plots'}`"]) + "\n", key=f"decar-{slug(run_name)}-plots",
        description=f"pretrain-decar {run_name}: curves per epoch")


def epoch_row(m: dict) -> dict:
    return {"epoch": m["epoch"], "loss": round(m["loss"], 4),
            "nmi": None if m["nmi"] is None else round(m["nmi"], 4), "clusters": m["clusters"],
            "largest_cluster_%": round(100 * m["largest_fraction"], 1),
            "loss_vs_ln_k": _round(m["health"]["training"]["loss_vs_chance"], 3),
            "pseudo_label_acc": round(m["health"]["training"]["pseudo_label_accuracy"], 3),
            "spread": float(f"{m['health']['embedding']['relative_spread']:.3g}"),
            "effective_rank": round(m["health"]["embedding"]["effective_rank"], 1),
            "size_entropy_ratio": round(m["health"]["clusters"]["size_entropy_ratio"], 3),
            **{f"{k}_s": "cached" if k in m.get("cached", ()) else seconds(v) for k, v in m["seconds"].items()}}


def seconds(value: float) -> float:
    """Three significant figures: 0.0123 s stays visible, 123.4 s is 123."""
    return float(f"{value:.3g}")


def publish_run_summary(run_name: str, s: dict) -> None:
    create_markdown_artifact(
        f"# pretrain-decar `{run_name}`\n\n"
        f"- epochs run: {s['epochs']}{' (early stop on NMI patience)' if s['stopped_early'] else ''}\n"
        f"- latest checkpoint: `{s['latest_checkpoint']}` (loss {s['final_loss']:.4f})\n"
        f"- best checkpoint (highest epoch-to-epoch NMI, {_round(s['best_nmi'])}): `{s['best_checkpoint']}`\n\n"
        "NMI measures the stability of the assignments, not their quality: "
        "run benchmark-downstream for quality.\n", key=f"decar-{slug(run_name)}-summary")


def _round(value: float | None, digits: int = 4):
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------- pretrain-delores-s, -delores-m, -slicer

def publish_instance_epoch(run_root: Path, method: str, run_name: str, history: list[dict]) -> None:
    """The per-epoch table and curves of an instance-method run, updated in place each epoch."""
    rows = [{"epoch": m["epoch"], "loss": round(m["loss"], 4), "lr": float(f"{m['lr']:.3g}"),
             **{k: round(v, 4) for k, v in m["terms"].items()},
             "spread": float(f"{m['health']['relative_spread']:.3g}"),
             "effective_rank": round(m["health"]["effective_rank"], 1),
             "distinct_rows": m["health"]["distinct_rows"], "train_s": seconds(m["seconds"]["train"])}
            for m in history]
    publish_living("table", rows, key=f"{method}-{slug(run_name)}-epochs",
                   description=f"pretrain-{method} {run_name}: one row per epoch")
    figure = plots.instance_curves(history)
    save_plots(Path(run_root) / "plots", {"loss-health": figure})
    publish_living("markdown", "\n\n".join([
        f"# pretrain-{method} `{run_name}`: {len(history)} epoch{'s' * (len(history) > 1)}",
        "## Loss and representation health", image("loss and health per epoch", figure),
        "Spread and effective rank are those of the encoder's embeddings of the run's fixed sample of "
        "256 clips: a collapsing method shows them falling.",
        f"PNG files: `{Path(run_root) / 'plots'}`"]) + "\n", key=f"{method}-{slug(run_name)}-plots",
        description=f"pretrain-{method} {run_name}: curves per epoch")


# ---------------------------------------------------------------- benchmark-downstream

def publish_benchmark(rows: list[dict], name: str, paper: dict[str, dict | None], results: Path,
                      models: tuple[str, ...], plots_dir: Path | None = None) -> None:
    """The score table beside DECAR's Table 2, and a markdown summary: a bar chart of accuracy per task
    (paper's numbers as markers) and the models side by side; the chart also goes to plots_dir."""
    table = [{"task": r["task"], "mode": r["mode"], "model": r["model"],
              "accuracy_%": round(100 * r["accuracy"], 1), "macro_f1": round(r["macro_f1"], 3),
              "valid_accuracy_%": round(100 * r["valid_accuracy"], 1), "best_epoch": r["best_epoch"],
              "paper_accuracy_%": paper_score(paper.get(r["task"]), r)} for r in rows]
    create_table_artifact(table, key=f"benchmark-{slug(name)}",
                          description=f"benchmark-downstream {name}: test scores of the model chosen on "
                                      "validation, beside DECAR Table 2 where the task is the paper's")
    marks = {(r["task"], r["mode"], r["model"]): paper_score(paper.get(r["task"]), r) for r in rows}
    chart = plots.benchmark_bars(rows, models, {k: v for k, v in marks.items() if v is not None})
    if plots_dir is not None:
        save_plots(Path(plots_dir), {f"benchmark-{slug(name)}": chart})
    legend = "Diamonds: DECAR's Table 2 for the paper's tasks." if any(v is not None for v in marks.values()) else ""
    lines = [f"# benchmark-downstream `{name}`", "", image("accuracy per task", chart), "", legend, "",
             f"Results: `{results}`", "",
             "| task | mode | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for task_name in dict.fromkeys(r["task"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["task"] == task_name):
            cells = {r["model"]: f"{100 * r['accuracy']:.1f} % [{100 * r.get('accuracy_ci_low', float('nan')):.0f}, "
                                 f"{100 * r.get('accuracy_ci_high', float('nan')):.0f}] (F1 {r['macro_f1']:.2f})"
                     for r in rows if r["task"] == task_name and r["mode"] == mode}
            lines.append(f"| {task_name} | {mode} | " + " | ".join(cells.get(m, "-") for m in models) + " |")
    lines += ["", "Test accuracy (macro-F1) of the epoch with the best validation accuracy."]
    create_markdown_artifact("\n".join(lines) + "\n", key=f"benchmark-{slug(name)}-summary")


def paper_score(scores: dict | None, row: dict) -> float | None:
    """DECAR Table 2 (test accuracy %) for this row, where the paper has one."""
    prefix = {"decar": "decar", "random-init": "random"}.get(row["model"])
    if not scores or not prefix:
        return None
    return scores.get(f"{prefix}_{'frozen' if row['mode'] == 'frozen' else 'finetuned'}")
