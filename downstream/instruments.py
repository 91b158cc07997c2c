"""Instrument family: NSynth, 11 families, the official train / valid / test archives.

Each archive unpacks to nsynth-<split>/examples.json (note -> attributes, the
label is `instrument_family_str`) and nsynth-<split>/audio/<note>.wav.
"""
from __future__ import annotations

import json
from pathlib import Path

from downstream.base import Entry, Recipe, RemoteFile, Source

BASE = "http://download.magenta.tensorflow.org/datasets/nsynth"
FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
            "synth_lead", "vocal")
SPLITS = ("train", "valid", "test")


def collect(roots: list[Path], work_dir: Path) -> list[Entry]:
    entries = []
    for split in SPLITS:
        folder = next((r / f"nsynth-{split}" for r in roots if (r / f"nsynth-{split}" / "examples.json").is_file()),
                      None)
        if folder is None:
            raise FileNotFoundError(f"no nsynth-{split}/examples.json in {[str(r) for r in roots]}")
        examples = json.loads((folder / "examples.json").read_text())
        for note in sorted(examples):
            family = examples[note].get("instrument_family_str")
            if family not in FAMILIES:
                raise ValueError(f"{folder}/examples.json: note {note!r} has instrument family {family!r}")
            entries.append(Entry(f"{split}/{note}", folder / "audio" / f"{note}.wav", family, split, "nsynth"))
    return entries


NSYNTH = Recipe(
    name="nsynth-instrument",
    description="Instrument family classification, NSynth, 11 families",
    classes=FAMILIES,
    source=Source(files=tuple(RemoteFile(f"nsynth-{s}.jsonwav.tar.gz", f"{BASE}/nsynth-{s}.jsonwav.tar.gz")
                              for s in SPLITS)),
    collect=collect,
    paper_scores={"random_frozen": 23.6, "random_finetuned": 78.6, "decar_frozen": 59.9, "decar_finetuned": 78.4},
    paper_classes=11,
    split_rule="official nsynth-train / nsynth-valid / nsynth-test archives",
)
