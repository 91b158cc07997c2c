"""Speech emotion: IEMOCAP, the usual 4 classes (neu, hap = happy + excited, ang, sad).

Labels come from the evaluators' consensus lines of
Session<k>/dialog/EmoEvaluation/*.txt ("[start - end]<TAB>turn<TAB>emotion<TAB>[v, a, d]");
turns with other labels (frustrated, surprised, xxx, ...) are left out.
Split: session 5 = test (as in the paper); 10 % of the session 1-4 turns, per
class, by a hash of the turn name = valid; the rest train. IEMOCAP needs a
licence, so it takes a local folder.
"""
from __future__ import annotations

from pathlib import Path

from downstream.base import Entry, Recipe, Source, assign_splits, find_dir

LABELS = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}


def collect(roots: list[Path], work_dir: Path) -> list[Entry]:
    root = find_dir(roots, ".", "IEMOCAP_full_release", containing="Session1")
    if root is None:
        raise FileNotFoundError(f"no Session1..5 folders in {[str(r) for r in roots]}. {IEMOCAP.source.instructions}")
    turns = []  # (turn, session, label)
    for session in range(1, 6):
        for evaluation in sorted((root / f"Session{session}" / "dialog" / "EmoEvaluation").glob("*.txt")):
            for line in evaluation.read_text(errors="replace").splitlines():
                fields = line.split("\t")
                if line.startswith("[") and len(fields) >= 3 and fields[2] in LABELS:
                    turns.append((fields[1], session, LABELS[fields[2]]))
    held_out = assign_splits([(t, label) for t, s, label in turns if s != 5], valid=0.1, test=0.0)
    entries = []
    for turn, session, label in turns:
        dialog = turn.rsplit("_", 1)[0]
        wav = root / f"Session{session}" / "sentences" / "wav" / dialog / f"{turn}.wav"
        entries.append(Entry(turn, wav, label, "test" if session == 5 else held_out[turn], "iemocap"))
    return entries


IEMOCAP = Recipe(
    name="iemocap-emotion",
    description="Speech emotion recognition, IEMOCAP, 4 classes (neutral, happy+excited, angry, sad)",
    classes=("neu", "hap", "ang", "sad"),
    source=Source(needs_local_path=True, instructions=(
        "IEMOCAP needs a licence (https://sail.usc.edu/iemocap/). Pass the IEMOCAP_full_release folder (or its "
        "parent): Session<k>/dialog/EmoEvaluation/*.txt and Session<k>/sentences/wav/<dialog>/<turn>.wav.")),
    collect=collect,
    paper_scores={"random_frozen": 52.3, "random_finetuned": 61.8, "decar_frozen": 60.5, "decar_finetuned": 62.4},
    paper_classes=4,
    split_rule="session 5 = test; 10 % of sessions 1-4 per class (hash of turn name) = valid; rest train",
)
