"""Spoken language identification: VoxForge, 6 languages (en, de, fr, es, it, ru).

VoxForge is published as thousands of per-speaker tarballs, so this recipe
takes a local folder: <root>/<language code>/... audio files, usually one
sub-folder per submission (<root>/de/anonymous-20080504-xyz/wav/de-0001.wav).
Other top-level folders are ignored. Split: 80/10/10 per language by a hash of
the submission folder (the first folder below the language), so one
speaker's submission stays in one split; files directly under the language
folder are split one by one.
"""
from __future__ import annotations

from pathlib import Path

from downstream.base import Entry, Recipe, Source, assign_splits, audio_files, clip_id_of

LANGUAGES = ("en", "de", "fr", "es", "it", "ru")


def collect(roots: list[Path], work_dir: Path) -> list[Entry]:
    root = roots[0]
    files = [(lang, f) for lang in LANGUAGES if (root / lang).is_dir() for f in audio_files(root / lang)]
    if not files:
        raise FileNotFoundError(f"no audio under {root}/<{'|'.join(LANGUAGES)}>/. {VOXFORGE.source.instructions}")

    def group(lang: str, f: Path) -> str:
        return f"{lang}/{f.relative_to(root / lang).parts[0]}"

    splits = assign_splits([(group(lang, f), lang) for lang, f in files])
    return [Entry(clip_id_of(f, root), f, lang, splits[group(lang, f)], "voxforge") for lang, f in files]


VOXFORGE = Recipe(
    name="voxforge-language",
    description="Spoken language identification, VoxForge, 6 languages",
    classes=LANGUAGES,
    source=Source(needs_local_path=True, instructions=(
        "Download VoxForge submissions (http://www.voxforge.org/, per-language 'Trunk/Audio/Main/16kHz_16bit' "
        "tarballs) and unpack them into <root>/<en|de|fr|es|it|ru>/<submission>/.../*.wav, then pass <root>.")),
    collect=collect,
    paper_scores={"random_frozen": 26.3, "random_finetuned": 73.4, "decar_frozen": 46.0, "decar_finetuned": 76.5},
    paper_classes=6,
    split_rule="80/10/10 per language by a hash of the submission folder (speaker-disjoint splits)",
)
