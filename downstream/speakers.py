"""Speaker identification: LibriSpeech train-clean-100 and VoxCeleb1.

LibriSpeech: the paper states 585 speakers for its "100 h subset", but
train-clean-100 has 251 (585 matches no LibriSpeech subset; the count here is
the data's). No official per-speaker split exists: each speaker's utterances
are split 80/10/10 by a hash of the utterance id (deterministic, stratified).

VoxCeleb1: the official identification split iden_split.txt (1 = train,
2 = valid, 3 = test), 1251 speakers (the paper's 1211 is the verification
development set's count). Download needs registration, so it takes a local
folder.
"""
from __future__ import annotations

from pathlib import Path

from downstream.base import Entry, Recipe, RemoteFile, Source, assign_splits, find_dir

LIBRISPEECH_URL = "https://www.openslr.org/resources/12/train-clean-100.tar.gz"


def collect_librispeech(roots: list[Path], work_dir: Path) -> list[Entry]:
    subset = None
    for root in roots:
        for candidate in (root / "LibriSpeech" / "train-clean-100", root / "train-clean-100", root):
            if candidate.is_dir() and any(d.is_dir() and d.name.isdigit() for d in candidate.iterdir()):
                subset = candidate
                break
        if subset:
            break
    if subset is None:
        raise FileNotFoundError(f"no LibriSpeech/train-clean-100/<speaker>/ folders in {[str(r) for r in roots]}")
    files = sorted(subset.glob("*/*/*.flac"))  # <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    pairs = [(f.stem, f.parent.parent.name) for f in files]
    splits = assign_splits(pairs)
    return [Entry(stem, f, speaker, splits[stem], "librispeech") for f, (stem, speaker) in zip(files, pairs)]


def collect_voxceleb(roots: list[Path], work_dir: Path) -> list[Entry]:
    root = find_dir(roots, ".", "vox1", "voxceleb1", containing="wav")
    split_file = None
    for folder in ([root, root / "meta", root.parent] if root else []) + roots:
        if (folder / "iden_split.txt").is_file():
            split_file = folder / "iden_split.txt"
            break
    if root is None or split_file is None:
        raise FileNotFoundError(f"VoxCeleb1 needs wav/ and iden_split.txt in {[str(r) for r in roots]}. "
                                + VOXCELEB.source.instructions)
    names = {"1": "train", "2": "valid", "3": "test"}
    entries = []
    for number, line in enumerate(split_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in names:
            raise ValueError(f"{split_file} line {number}: expected '<1|2|3> <id>/<video>/<n>.wav', got {line!r}")
        rel = fields[1]
        entries.append(Entry(rel.rsplit(".", 1)[0], root / "wav" / rel, rel.split("/")[0], names[fields[0]],
                             "voxceleb1"))
    return entries


LIBRISPEECH = Recipe(
    name="librispeech-speaker",
    description="Speaker identification, LibriSpeech train-clean-100 (251 speakers; the paper states 585)",
    classes=(),
    source=Source(files=(RemoteFile("train-clean-100.tar.gz", LIBRISPEECH_URL),)),
    collect=collect_librispeech,
    paper_scores={"random_frozen": 4.2, "random_finetuned": 94.6, "decar_frozen": 62.5, "decar_finetuned": 97.0},
    paper_classes=585,
    split_rule="per speaker, utterances ordered by a hash of their id: 80 % train / 10 % valid / 10 % test",
)

VOXCELEB = Recipe(
    name="voxceleb1-speaker",
    description="Speaker identification, VoxCeleb1 (1251 speakers in the official identification split)",
    classes=(),
    source=Source(needs_local_path=True, instructions=(
        "VoxCeleb1 needs registration (https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html). Pass a folder "
        "holding wav/<speaker id>/<video id>/<n>.wav (the dev and test archives unpacked into one wav/) and "
        "iden_split.txt (in the folder or its meta/ subfolder).")),
    collect=collect_voxceleb,
    paper_scores={"random_frozen": 0.2, "random_finetuned": 57.6, "decar_frozen": 2.5, "decar_finetuned": 57.5},
    paper_classes=1211,
    split_rule="official iden_split.txt: 1 = train, 2 = valid, 3 = test",
)
