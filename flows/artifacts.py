"""What the Prefect UI shows: tables, markdown summaries and progress bars (formatting only)."""
from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def slug(text: str) -> str:
    """An artifact key from any name: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


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
        quarter = int(fraction * 4)
        if quarter not in quarters and quarter > 0:
            quarters.add(quarter)
            logger.info("epoch %d: training %d%%, loss %.4f", epoch, 25 * quarter, loss)

    return update


def publish_epoch_table(run_name: str, history: list[dict]) -> None:
    create_table_artifact([epoch_row(m) for m in history], key=f"decar-{slug(run_name)}-epochs",
                          description=f"pretrain-decar {run_name}: one row per epoch")


def epoch_row(m: dict) -> dict:
    return {"epoch": m["epoch"], "loss": round(m["loss"], 4),
            "nmi": None if m["nmi"] is None else round(m["nmi"], 4), "clusters": m["clusters"],
            "largest_cluster_%": round(100 * m["largest_fraction"], 1),
            "loss_vs_ln_k": _round(m["health"]["training"]["loss_vs_chance"], 3),
            "pseudo_label_acc": round(m["health"]["training"]["pseudo_label_accuracy"], 3),
            "spread": float(f"{m['health']['embedding']['relative_spread']:.3g}"),
            "effective_rank": round(m["health"]["embedding"]["effective_rank"], 1),
            "size_entropy_ratio": round(m["health"]["clusters"]["size_entropy_ratio"], 3),
            **{f"{k}_s": round(v, 2) for k, v in m["seconds"].items()}}


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


# ---------------------------------------------------------------- benchmark-downstream

def publish_benchmark(rows: list[dict], name: str, paper: dict[str, dict | None], results: Path,
                      models: tuple[str, ...]) -> None:
    """The score table beside DECAR's Table 2, and a markdown table of the models side by side."""
    table = [{"task": r["task"], "mode": r["mode"], "model": r["model"],
              "accuracy_%": round(100 * r["accuracy"], 1), "macro_f1": round(r["macro_f1"], 3),
              "valid_accuracy_%": round(100 * r["valid_accuracy"], 1), "best_epoch": r["best_epoch"],
              "paper_accuracy_%": paper_score(paper.get(r["task"]), r)} for r in rows]
    create_table_artifact(table, key=f"benchmark-{slug(name)}",
                          description=f"benchmark-downstream {name}: test scores of the model chosen on "
                                      "validation, beside DECAR Table 2 where the task is the paper's")
    lines = [f"# benchmark-downstream `{name}`", "", f"Results: `{results}`", "",
             "| task | mode | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for task_name in dict.fromkeys(r["task"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["task"] == task_name):
            cells = {r["model"]: f"{100 * r['accuracy']:.1f} % (F1 {r['macro_f1']:.2f})"
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
