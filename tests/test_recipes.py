"""Each task recipe against a miniature copy of its dataset with the real layout,
served from a loopback HTTP server (never the internet) or laid out as a local folder."""
from __future__ import annotations

import io
import json
import tarfile
import threading
import zipfile
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from downstream import GENERATED_RECIPES, PAPER_RECIPES, RECIPES, get_recipe
from storage.layout import DataLayout
from storage.manifest import read_manifest


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def served(tmp_path):
    """(folder, base URL): files put in the folder are served over loopback HTTP."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    httpd.requests = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    httpd.shutdown()
    httpd.server_close()


def wav_bytes(seconds: float = 0.05, rate: int = 16000, channels: int = 1, fmt: str = "WAV",
              subtype: str = "PCM_16") -> bytes:
    rng = np.random.default_rng(int(seconds * 1000) + channels)
    buffer = io.BytesIO()
    sf.write(buffer, (rng.standard_normal((int(seconds * rate), channels)) * 0.1).astype("float32"), rate,
             format=fmt, subtype=subtype)
    return buffer.getvalue()


def write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def manifest(data_dir: Path, recipe_name: str) -> dict[str, dict]:
    return {r["clip_id"]: r for r in read_manifest(DataLayout(data_dir).manifest(f"task-{recipe_name}"))}


def by_split(rows: dict[str, dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"train": set(), "valid": set(), "test": set()}
    for clip_id, row in rows.items():
        out[row["split"]].add(clip_id)
    return out


# ---------------------------------------------------------------- paper tasks

@pytest.mark.parametrize("name, archive", [("speech-commands-v1", "speech_commands_v0.01.tar.gz"),
                                           ("speech-commands-v2", "speech_commands_v0.02.tar.gz")])
def test_speech_commands(served, tmp_path, name, archive):
    folder, base, requests = served
    clip = wav_bytes()
    files = {f"./{word}/{speaker}_nohash_0.wav": clip for word in ("yes", "no", "cat", "marvin")
             for speaker in ("aa11", "bb22", "cc33")}
    files["./yes/dd44_nohash_0.wav"] = b"RIFF not really a wave file"
    files["./_background_noise_/white_noise.wav"] = wav_bytes(10.0)
    files["./_background_noise_/README.md"] = b"noise"
    files["./validation_list.txt"] = b"yes/bb22_nohash_0.wav\ncat/bb22_nohash_0.wav\n"
    files["./testing_list.txt"] = b"yes/cc33_nohash_0.wav\nno/cc33_nohash_0.wav\nmarvin/cc33_nohash_0.wav\n"
    files["./LICENSE"] = b"CC-BY"
    write_tar(folder / archive, files)
    data = tmp_path / "data"

    recipe = get_recipe(name)
    path = recipe.prepare(data, source_override=base)

    assert path == DataLayout(data).manifest(f"task-{name}")
    rows = manifest(data, name)
    assert rows["yes/aa11_nohash_0"]["label"] == "yes" and rows["cat/aa11_nohash_0"]["label"] == "_unknown_"
    assert rows["marvin/cc33_nohash_0"]["label"] == "_unknown_"
    splits = by_split(rows)
    assert {c for c in splits["test"] if not c.startswith("_silence_")} == {
        "yes/cc33_nohash_0", "no/cc33_nohash_0", "marvin/cc33_nohash_0"}
    assert {c for c in splits["valid"] if not c.startswith("_silence_")} == {"yes/bb22_nohash_0", "cat/bb22_nohash_0"}
    silence = {c: r for c, r in rows.items() if r["label"] == "_silence_"}
    assert len(silence) == 10
    assert Counter(r["split"] for r in silence.values()) == {"train": 8, "valid": 1, "test": 1}
    assert all(r["duration_s"] == pytest.approx(1.0) and r["status"] == "ok" for r in silence.values())
    bad = rows["yes/dd44_nohash_0"]
    assert bad["status"] == "failed" and bad["error_kind"] == "unreadable"
    ok = rows["no/aa11_nohash_0"]
    assert ok["sample_rate"] == 16000 and ok["duration_s"] == pytest.approx(0.05)
    assert ok["path"] == f"audio/task-{name}/{archive[:-7]}/no/aa11_nohash_0.wav"  # relative to data dir
    assert {r["label"] for r in rows.values()} <= set(recipe.classes)
    assert recipe.paper_scores["decar_frozen"] > recipe.paper_scores["random_frozen"]

    downloads = len(requests)
    recipe.prepare(data, source_override=base)  # rerun: no download, no extraction, same manifest
    assert len(requests) == downloads and manifest(data, name) == rows


def test_librispeech(served, tmp_path):
    folder, base, _ = served
    files = {"LibriSpeech/SPEAKERS.TXT": b";ID|SEX|SUBSET|MINUTES|NAME\n"}
    for speaker, chapter in (("19", "198"), ("26", "495"), ("103", "1240")):
        prefix = f"LibriSpeech/train-clean-100/{speaker}/{chapter}"
        files[f"{prefix}/{speaker}-{chapter}.trans.txt"] = b"..."
        for utt in range(10):
            files[f"{prefix}/{speaker}-{chapter}-{utt:04d}.flac"] = wav_bytes(fmt="FLAC")
    write_tar(folder / "train-clean-100.tar.gz", files)

    get_recipe("librispeech-speaker").prepare(tmp_path / "data", source_override=base)

    rows = manifest(tmp_path / "data", "librispeech-speaker")
    assert len(rows) == 30 and rows["26-495-0003"]["label"] == "26"
    for speaker in ("19", "26", "103"):
        counts = Counter(r["split"] for r in rows.values() if r["label"] == speaker)
        assert counts == {"train": 8, "valid": 1, "test": 1}
    assert all(r["status"] == "ok" for r in rows.values())


def test_voxceleb_local_folder(tmp_path):
    files, lines = {}, []
    for speaker in ("id10001", "id10002"):
        for n, split in enumerate("11123", 1):
            rel = f"{speaker}/vid{n % 2}/{n:05d}.wav"
            files[f"wav/{rel}"] = wav_bytes()
            lines.append(f"{split} {rel}")
    lines.append("3 id10002/gone/00009.wav")
    files["iden_split.txt"] = "\n".join(lines).encode()
    source = write_tree(tmp_path / "vox1", files)
    recipe = get_recipe("voxceleb1-speaker")

    with pytest.raises(ValueError, match="registration"):
        recipe.prepare(tmp_path / "data")
    recipe.prepare(tmp_path / "data", source_override=source)

    rows = manifest(tmp_path / "data", "voxceleb1-speaker")
    assert rows["id10001/vid1/00001"]["split"] == "train" and rows["id10001/vid0/00004"]["split"] == "valid"
    assert rows["id10002/vid1/00005"]["split"] == "test" and rows["id10002/vid1/00005"]["label"] == "id10002"
    assert rows["id10002/gone/00009"]["status"] == "failed" and rows["id10002/gone/00009"]["error_kind"] == "missing"
    assert Path(rows["id10001/vid1/00001"]["path"]).is_absolute()  # outside the data dir: kept where it is


def test_iemocap_local_folder(tmp_path):
    files = {}
    emotions = ["neu", "hap", "exc", "ang", "sad", "fru", "xxx"]
    for session in range(1, 6):
        dialog = f"Ses0{session}F_impro01"
        lines = ["% header", ""]
        for k, emotion in enumerate(emotions):
            turn = f"{dialog}_F{k:03d}"
            lines.append(f"[{k}.0 - {k}.9]\t{turn}\t{emotion}\t[2.5, 2.5, 2.5]")
            lines.append(f"C-E1:\t{emotion};\t()")
            files[f"IEMOCAP_full_release/Session{session}/sentences/wav/{dialog}/{turn}.wav"] = wav_bytes()
        files[f"IEMOCAP_full_release/Session{session}/dialog/EmoEvaluation/{dialog}.txt"] = "\n".join(lines).encode()
        files[f"IEMOCAP_full_release/Session{session}/dialog/EmoEvaluation/Categorical/{dialog}_e1_cat.txt"] = b"x"
    source = write_tree(tmp_path / "iemocap", files)

    get_recipe("iemocap-emotion").prepare(tmp_path / "data", source_override=source)

    rows = manifest(tmp_path / "data", "iemocap-emotion")
    assert len(rows) == 5 * 5  # fru and xxx left out
    assert rows["Ses01F_impro01_F002"]["label"] == "hap"  # excited merges into happy
    assert {r["split"] for c, r in rows.items() if c.startswith("Ses05")} == {"test"}
    assert all(r["split"] in ("train", "valid") for c, r in rows.items() if not c.startswith("Ses05"))
    for label in ("neu", "hap", "ang", "sad"):  # 4 (hap: 8) session 1-4 turns per class: 10 % rounds to 0 or 1
        assert Counter(r["split"] for r in rows.values() if r["label"] == label)["train"] >= 3
    assert by_split(rows)["valid"]


def test_tut_urban(served, tmp_path):
    folder, base, _ = served
    dataset = "TUT-urban-acoustic-scenes-2018-development"
    recipe = get_recipe("tut-urban-2018")
    clip = wav_bytes(0.02, rate=48000, channels=2, subtype="PCM_24")
    meta, train, evaluate, audio = ["filename\tscene_label\tidentifier\tsource_label"], [], [], []
    for scene in recipe.classes:
        for location in range(6):
            for segment in range(2):
                name = f"audio/{scene}-barcelona-{location}-{segment}-a.wav"
                meta.append(f"{name}\t{scene}\tbarcelona-{location}\ta")
                (evaluate if location == 5 else train).append(f"{name}\t{scene}")
                audio.append(name)
    for i in range(1, 14):  # the 13 audio zips each carry a share of audio/
        write_zip(folder / f"{dataset}.audio.{i}.zip", {f"{dataset}/{name}": clip for name in audio[i - 1::13]})
    write_zip(folder / f"{dataset}.meta.zip", {
        f"{dataset}/meta.csv": "\n".join(meta).encode(),
        f"{dataset}/evaluation_setup/fold1_train.txt": "\n".join(train).encode(),
        f"{dataset}/evaluation_setup/fold1_evaluate.txt": "\n".join(evaluate).encode(),
        f"{dataset}/evaluation_setup/fold1_test.txt": "\n".join(e.split("\t")[0] for e in evaluate).encode(),
    })

    recipe.prepare(tmp_path / "data", source_override=base)

    rows = manifest(tmp_path / "data", "tut-urban-2018")
    assert len(rows) == 120 and all(r["status"] == "ok" and r["sample_rate"] == 48000 for r in rows.values())
    splits = by_split(rows)
    assert splits["test"] == {Path(e.split("\t")[0]).stem for e in evaluate}
    locations = {s: {c.rsplit("-", 2)[0] for c in splits[s]} for s in splits}
    assert not locations["train"] & locations["valid"]  # both segments of a location stay together
    for scene in recipe.classes:  # 5 train locations per scene: 1 held out as valid
        assert sum(1 for c in splits["valid"] if rows[c]["label"] == scene) == 2


def test_bird_song(served, tmp_path):
    folder, base, _ = served
    ff = {f"{1000 + i}": str(i % 2) for i in range(20)}
    warblr = {f"0a1b2c3d-{i:04d}": str(int(i < 10)) for i in range(20)}
    write_zip(folder / "ff1010bird_wav.zip", {f"wav/{i}.wav": wav_bytes(rate=44100) for i in ff})
    write_zip(folder / "warblrb10k_public_wav.zip", {f"wav/{i}.wav": wav_bytes(rate=44100) for i in warblr})
    for filename, items, dataset in (("ff1010bird_metadata.csv", ff, "ff1010bird"),
                                     ("warblrb10k_public_metadata.csv", warblr, "warblrb10k")):
        (folder / filename).write_text("itemid,datasetid,hasbird\n"
                                       + "".join(f"{i},{dataset},{label}\n" for i, label in items.items()))

    get_recipe("bird-song").prepare(tmp_path / "data", source_override=base)

    rows = manifest(tmp_path / "data", "bird-song")
    assert len(rows) == 40 and all(r["status"] == "ok" for r in rows.values())
    assert rows["ff1010bird/1003"]["label"] == "1" and rows["warblrb10k/0a1b2c3d-0017"]["label"] == "0"
    assert rows["warblrb10k/0a1b2c3d-0007"]["source"] == "warblrb10k"
    for label, n in Counter(r["label"] for r in rows.values()).items():  # stratified 80/10/10
        counts = Counter(r["split"] for r in rows.values() if r["label"] == label)
        assert counts["valid"] == counts["test"] == round(n / 10)


def test_voxforge_local_folder(tmp_path):
    files = {}
    for lang in ("en", "de", "fr", "es", "it", "ru"):
        for submission in range(10):
            for k in range(2):
                files[f"{lang}/user{submission}-2008/wav/{lang}-{k}.wav"] = wav_bytes()
    files["nl/user0/wav/nl-0.wav"] = wav_bytes()  # not one of the six: ignored
    source = write_tree(tmp_path / "voxforge", files)

    get_recipe("voxforge-language").prepare(tmp_path / "data", source_override=source)

    rows = manifest(tmp_path / "data", "voxforge-language")
    assert len(rows) == 120 and {r["label"] for r in rows.values()} == {"en", "de", "fr", "es", "it", "ru"}
    for lang in ("en", "ru"):
        counts = Counter(r["split"] for r in rows.values() if r["label"] == lang)
        assert counts == {"train": 16, "valid": 2, "test": 2}
    submission_splits = {}
    for clip_id, row in rows.items():  # a submission (speaker) never straddles splits
        submission_splits.setdefault(clip_id.rsplit("/", 2)[0], set()).add(row["split"])
    assert all(len(s) == 1 for s in submission_splits.values())


def test_nsynth_over_http_from_a_folder_of_archives_and_from_an_extracted_copy(served, tmp_path):
    archives, base, requests = served
    families = {"train": ["bass", "organ", "vocal"], "valid": ["bass", "guitar"], "test": ["mallet"]}
    for split, names in families.items():
        examples = {f"{family}_acoustic_{i:03d}-060-100": {"instrument_family_str": family, "pitch": 60}
                    for i, family in enumerate(names)}
        files = {f"nsynth-{split}/examples.json": json.dumps(examples).encode()}
        files.update({f"nsynth-{split}/audio/{note}.wav": wav_bytes() for note in examples})
        write_tar(archives / f"nsynth-{split}.jsonwav.tar.gz", files)
    recipe = get_recipe("nsynth-instrument")

    recipe.prepare(tmp_path / "data", source_override=base)

    rows = manifest(tmp_path / "data", "nsynth-instrument")
    assert rows["train/organ_acoustic_001-060-100"]["label"] == "organ"
    assert {c: r["split"] for c, r in rows.items()} == {f"{s}/{f}_acoustic_{i:03d}-060-100": s
                                                         for s, names in families.items()
                                                         for i, f in enumerate(names)}
    labels = {c: r["label"] for c, r in rows.items()}
    served_requests = len(requests)
    recipe.prepare(tmp_path / "local", source_override=archives)  # the archives in a local folder
    assert len(requests) == served_requests
    assert {c: r["label"] for c, r in manifest(tmp_path / "local", "nsynth-instrument").items()} == labels

    extracted = DataLayout(tmp_path / "data").audio_dir("task-nsynth-instrument")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for split in families:  # a user's own extracted copy works too
        (extracted / f"nsynth-{split}.jsonwav" / f"nsynth-{split}").rename(mirror / f"nsynth-{split}")
    recipe.prepare(tmp_path / "other", source_override=mirror)
    assert {c: r["label"] for c, r in manifest(tmp_path / "other", "nsynth-instrument").items()} == labels


# ---------------------------------------------------------------- generic tasks

def test_folder_recipe_with_and_without_split_folders(tmp_path):
    flat = write_tree(tmp_path / "flat", {f"{label}/{i}.wav": wav_bytes() for label in ("cat", "dog")
                                          for i in range(10)})
    recipe = get_recipe(f"folder:{flat}")
    recipe.prepare(tmp_path / "data")
    rows = manifest(tmp_path / "data", recipe.name)
    assert rows["cat/3"]["label"] == "cat"
    for label in ("cat", "dog"):
        assert Counter(r["split"] for r in rows.values() if r["label"] == label) == {"train": 8, "valid": 1, "test": 1}

    split = write_tree(tmp_path / "split", {
        **{f"train/{label}/{i}.wav": wav_bytes() for label in ("a", "b") for i in range(10)},
        **{f"test/{label}/{i}.wav": wav_bytes() for label in ("a", "b") for i in range(2)}})
    recipe = get_recipe(f"folder:{split}")
    recipe.prepare(tmp_path / "data")
    rows = manifest(tmp_path / "data", recipe.name)
    assert {c for c, r in rows.items() if r["split"] == "test"} == {"test/a/0", "test/a/1", "test/b/0", "test/b/1"}
    assert Counter(r["split"] for c, r in rows.items() if c.startswith("train/a/")) == {"train": 9, "valid": 1}


def test_csv_recipe_and_its_errors(tmp_path):
    write_tree(tmp_path / "clips", {f"{i}.wav": wav_bytes() for i in range(3)})
    table = tmp_path / "clips" / "task.csv"
    table.write_text("path,label,split\n0.wav,on,train\n1.wav,off,valid\n2.wav,on,test\nmissing.wav,off,train\n")
    recipe = get_recipe(f"csv:{table}")
    recipe.prepare(tmp_path / "data")
    rows = manifest(tmp_path / "data", recipe.name)
    assert [(rows[c]["label"], rows[c]["split"]) for c in ("0", "1", "2")] == [
        ("on", "train"), ("off", "valid"), ("on", "test")]
    assert rows["missing"]["status"] == "failed"

    for content, message in (("path,label\n0.wav,on\n", r"lacks columns \['split'\]"),
                             ("path,label,split\n0.wav,on,train\n1.wav,on,dev\n", "line 3: split 'dev'"),
                             ("path,label,split\n0.wav,,train\n", "line 2: empty path or label"),
                             ("path,label,split\n0.wav,on,train\n0.wav,on,test\n", "line 3: '0.wav' repeats line 2")):
        table.write_text(content)
        with pytest.raises(ValueError, match=message):
            get_recipe(f"csv:{table}").prepare(tmp_path / "data")


def test_get_recipe_names():
    assert set(PAPER_RECIPES) == {"speech-commands-v1", "speech-commands-v2", "librispeech-speaker",
                                  "voxceleb1-speaker", "iemocap-emotion", "tut-urban-2018", "bird-song",
                                  "voxforge-language", "nsynth-instrument"}
    assert all(r.paper_scores and set(r.paper_scores) == {"random_frozen", "random_finetuned", "decar_frozen",
                                                          "decar_finetuned"} for r in PAPER_RECIPES.values())
    assert set(RECIPES) == set(PAPER_RECIPES) | set(GENERATED_RECIPES)
    assert set(GENERATED_RECIPES) == {"synth-speaker", "synth-keyword", "synth-instrument", "synth-scene"}
    with pytest.raises(ValueError, match="known tasks: .*speech-commands-v1"):
        get_recipe("speech-commands-v3")
    assert get_recipe("folder:/a/x").name != get_recipe("folder:/b/x").name
