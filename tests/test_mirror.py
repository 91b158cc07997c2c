"""download-audioset from AudioSet mirrors laid out as people keep them, and bad audio that must
end as failed rows: real files, the loopback HTTP server (with and without index pages), no mocks."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demo.pool import generate_pool, write_segments_csv
from demo.server import FolderServer
from flows.download import download_audioset
from storage.manifest import read_manifest
from storage.mirror import MirrorIndex, check_pattern
from storage.segments import Segment, clip_id

SECONDS = 2.0


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("pool")
    return folder, generate_pool(folder, n_clips=8, seconds=SECONDS, seed=2)


def _rows_by_id(manifest: str) -> dict[str, dict]:
    return {row["clip_id"]: row for row in read_manifest(manifest)}


def _segment_of(video: Path, start: float, end: float) -> tuple[np.ndarray, int]:
    info = sf.info(video)
    audio, rate = sf.read(video, start=round(start * info.samplerate), stop=round(end * info.samplerate))
    return audio, rate


# ---------------------------------------------------------------- names (pure)

def test_mirror_names_are_matched_by_ytid_and_start():
    index = MirrorIndex([
        "balanced_train_segments/abc_def-123.wav",      # <ytid>
        "eval_segments/00/Yzzz_zzz-zzz.flac",           # Y<ytid>, sharded
        "two/vid2vid2vid_30.000_40.000.flac",           # <ytid>_<start>_<end>, two segments of one video
        "two/vid2vid2vid_50.000_60.000.flac",
        "x/a_b_c_d_1_5.ogg",                             # a ytid with '_' and digits, <start>
        "ms/msmsmsmsmsm_12500.wav",                      # the project's own clip id (start in ms)
        "README.txt", "abc_def-123.json",                # not audio
    ])
    assert [e.path for e in index.find(Segment("abc_def-123", 10.0, 20.0))] == [
        "balanced_train_segments/abc_def-123.wav"]
    found = index.find(Segment("zzz_zzz-zzz", 0.0, 10.0))
    assert [e.path for e in found] == ["eval_segments/00/Yzzz_zzz-zzz.flac"] and found[0].start_s is None
    assert [e.path for e in index.find(Segment("vid2vid2vid", 50.0, 60.0))] == ["two/vid2vid2vid_50.000_60.000.flac"]
    assert index.find(Segment("vid2vid2vid", 50.0, 55.0)) == []  # the end must agree when it is named
    assert [e.path for e in index.find(Segment("a_b_c_d_1", 5.0, 15.0))] == ["x/a_b_c_d_1_5.ogg"]
    assert [e.path for e in index.find(Segment("msmsmsmsmsm", 12.5, 22.5))] == ["ms/msmsmsmsmsm_12500.wav"]
    message = index.not_found(Segment("vid2vid2vid", 70.0, 80.0), "/m")
    assert "<ytid>_<start s>_<end s>" in message and "vid2vid2vid_30.000_40.000.flac" in message
    message = index.not_found(Segment("nothere0000", 0.0, 10.0), "/m")
    assert "Y<ytid>" in message and "abc_def-123.wav" in message and "mirror_pattern" in message
    for bad in ["{video}.wav", "{start}.wav", "{ytid.wav"]:
        with pytest.raises(ValueError, match="mirror_pattern"):
            check_pattern(bad)
    check_pattern("{ytid}/{start:.3f}_{end:.3f}.wav")


# ---------------------------------------------------------------- layouts on a folder and over HTTP

def _mirror_of_every_layout(pool: tuple[Path, list[dict]], root: Path) -> tuple[list[dict], dict[str, tuple]]:
    """A mirror whose clips each use another layout (nested), two videos with two segments each;
    returns the segments and clip id -> (truth audio, rate, expected file)."""
    folder, rows = pool
    root.mkdir()
    layouts = ["balanced_train_segments/{ytid}", "Y{ytid}", "00/{ytid}_{start:g}", "01/{ytid}_{start:.3f}",
               "{ytid}_{start:.3f}_{end:.3f}", "eval_segments/{clip_id}"]
    truth, segments = {}, []
    for row, layout in zip(rows, layouts):
        source = folder / row["mirror"]
        name = layout.format(ytid=row["ytid"], start=row["start_s"], end=row["end_s"], clip_id=row["clip_id"])
        target = root / f"{name}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        truth[row["clip_id"]] = (*sf.read(source), target.relative_to(root).as_posix())
        segments.append(row)
    whole, parts = rows[6], rows[7]  # two segments of one video each: a whole video, and a file per segment
    (root / "videos").mkdir()
    video = root / "videos" / Path(whole["video"]).name
    shutil.copyfile(folder / whole["video"], video)
    for start in (whole["start_s"], 0.0):
        segment = dict(whole, start_s=start, end_s=start + SECONDS, clip_id=clip_id(whole["ytid"], start))
        truth[segment["clip_id"]] = (*_segment_of(video, start, start + SECONDS), f"videos/{video.name}")
        segments.append(segment)
    for start in (parts["start_s"], parts["start_s"] + 1.0):
        audio, rate = _segment_of(folder / parts["video"], start, start + SECONDS)
        name = f"{parts['ytid']}_{start:.3f}_{start + SECONDS:.3f}.flac"
        sf.write(root / name, audio, rate)
        segment = dict(parts, start_s=start, end_s=start + SECONDS, clip_id=clip_id(parts["ytid"], start))
        truth[segment["clip_id"]] = (audio, rate, name)
        segments.append(segment)
    return segments, truth


def _check_against_truth(manifest: str, data: Path, truth: dict[str, tuple]) -> None:
    by_id = _rows_by_id(manifest)
    assert set(by_id) == set(truth)
    for cid, (expected, rate, file) in truth.items():
        row = by_id[cid]
        assert row["status"] == "ok", row
        assert row["source_file"] == file and row["duration_s"] == pytest.approx(SECONDS, abs=0.02)
        audio, got_rate = sf.read(data / row["path"])
        assert got_rate == 16000
        if expected.ndim == 2:
            expected = expected.mean(axis=1)
        if rate == 16000:  # same rate: the cut is sample-accurate
            n = min(len(audio), len(expected))
            assert np.corrcoef(audio[:n], expected[:n])[0, 1] > 0.95, (cid, file)


def test_every_mirror_layout_on_a_folder_and_over_http(pool, tmp_path):
    segments, truth = _mirror_of_every_layout(pool, tmp_path / "mirror")
    csv = write_segments_csv(tmp_path / "layouts.csv", segments)
    with FolderServer(tmp_path) as server:
        for name, mirror in [("folder", str(tmp_path / "mirror")), ("http", server.base_url + "/mirror")]:
            manifest = download_audioset(segments=str(csv), source="mirror", mirror=mirror,
                                         data_dir=str(tmp_path / name), concurrency=2, timeout_s=5.0)
            assert manifest.counts == {"ok": len(truth)}
            _check_against_truth(manifest, tmp_path / name, truth)
    two = [cid for cid in truth if truth[cid][2].startswith("videos/")]  # one video, two different segments
    a, b = (sf.read(tmp_path / "folder" / "audio" / "mirror" / f"{cid}.flac")[0] for cid in two)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.5


def test_mirror_pattern_and_a_server_without_index_pages(pool, tmp_path):
    folder, rows = pool
    custom, flat = tmp_path / "custom", tmp_path / "flat"
    for row in rows[:3]:
        source = folder / row["mirror"]
        target = custom / "by-video" / row["ytid"] / f"seg-{row['start_s']:.1f}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        flat.mkdir(exist_ok=True)
        shutil.copyfile(source, flat / f"Y{row['ytid']}{source.suffix}")
    lost = dict(ytid="lostlostlos", start_s=0.0, end_s=SECONDS, labels=[])
    csv = write_segments_csv(tmp_path / "custom.csv", rows[:3] + [lost])

    manifest = download_audioset(segments=str(csv), source="mirror", mirror=str(custom), data_dir=str(tmp_path / "a"))
    assert manifest.counts == {"ok": 0, "unavailable": 4}
    error = _rows_by_id(manifest)[rows[0]["clip_id"]]["error"]  # says what it tried and what it saw
    assert "Y<ytid>" in error and "by-video/" in error and "mirror_pattern" in error

    pattern = "by-video/{ytid}/seg-{start:.1f}.{ext}"
    with pytest.raises(ValueError, match="unknown fields"):
        download_audioset(segments=str(csv), source="mirror", mirror=str(custom), mirror_pattern=pattern,
                          data_dir=str(tmp_path / "b"))
    for ext in ("flac", "wav", "ogg"):  # the pool's mirror cycles through these
        pattern = "by-video/{ytid}/seg-{start:.1f}." + ext
        manifest = download_audioset(segments=str(csv), source="mirror", mirror=str(custom), mirror_pattern=pattern,
                                     data_dir=str(tmp_path / "b"))
    by_id = _rows_by_id(manifest)
    assert manifest.counts == {"ok": 3, "unavailable": 1}
    assert "lostlostlos/seg-0.0" in by_id["lostlostlos_0"]["error"]

    with FolderServer(tmp_path, listing=False) as server:  # no index pages: the flat layouts are probed
        manifest = download_audioset(segments=str(csv), source="mirror", mirror=server.base_url + "/flat",
                                     data_dir=str(tmp_path / "c"), timeout_s=5.0)
    by_id = _rows_by_id(manifest)
    assert manifest.counts == {"ok": 3, "unavailable": 1}
    assert {by_id[r["clip_id"]]["source_file"] for r in rows[:3]} == {f"Y{r['ytid']}{Path(r['mirror']).suffix}"
                                                                      for r in rows[:3]}
    assert "index pages" in by_id["lostlostlos_0"]["error"]


# ---------------------------------------------------------------- bad audio

def test_bad_audio_ends_as_failed_rows_with_their_kind(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    noise = lambda seconds, rate=16000: rng.uniform(-0.5, 0.5, round(seconds * rate)).astype(np.float32)  # noqa: E731
    sf.write(mirror / "nannannanan.wav", np.full(3 * 44100, np.nan, np.float32), 44100, subtype="FLOAT")
    sf.write(mirror / "fewnanfewna.wav", np.where(np.arange(48000) == 100, np.inf, noise(3)), 16000, subtype="FLOAT")
    sf.write(mirror / "tinytinytin.wav", noise(0.05), 16000)
    sf.write(mirror / "fullfullful.flac", noise(3, 22050), 22050)
    data = (mirror / "fullfullful.flac").read_bytes()
    (mirror / "cutcutcutcu.flac").write_bytes(data[:int(len(data) * 0.3)])  # the header still says 3 s
    sf.write(mirror / "dcdcdcdcdcd.wav", np.full(3 * 16000, 0.3), 16000)
    sf.write(mirror / "silentsilen.wav", np.zeros(3 * 16000), 16000)
    sf.write(mirror / "partpartpar.wav", noise(1.2), 16000)  # 1.2 of 3 s: below half the segment
    sf.write(mirror / "mostmostmos.wav", noise(2.0), 16000)  # 2 of 3 s: kept, with its duration
    expected = {"nannannanan": "non_finite", "fewnanfewna": "non_finite", "tinytinytin": "too_short",
                "cutcutcutcu": "corrupt", "dcdcdcdcdcd": "silent", "silentsilen": "silent",
                "partpartpar": "truncated", "fullfullful": "", "mostmostmos": ""}
    csv = write_segments_csv(tmp_path / "bad.csv", [dict(ytid=y, start_s=10.0, end_s=13.0, labels=[])
                                                    for y in expected])
    manifest = download_audioset(segments=str(csv), source="mirror", mirror=str(mirror), data_dir=str(tmp_path / "d"))
    by_id = _rows_by_id(manifest)
    for ytid, kind in expected.items():
        row = by_id[clip_id(ytid, 10.0)]
        assert (row["status"], row["error_kind"]) == ("failed" if kind else "ok", kind), row
        assert bool(row["error"]) == bool(kind)
    assert by_id[clip_id("mostmostmos", 10.0)]["duration_s"] == 2.0
    assert manifest.counts == {"ok": 2, "non_finite": 2, "silent": 2, "corrupt": 1, "too_short": 1, "truncated": 1}
    assert {p.name for p in (tmp_path / "d" / "audio" / "mirror").iterdir()} == {
        f"{clip_id(y, 10.0)}.flac" for y in ("fullfullful", "mostmostmos")}

    manifest = download_audioset(segments=str(csv), source="mirror", mirror=str(mirror), data_dir=str(tmp_path / "e"),
                                 min_duration_s=0.01, min_segment_fraction=0.3)  # the limits are parameters
    assert manifest.counts == {"ok": 3, "non_finite": 2, "silent": 2, "corrupt": 1, "truncated": 1}
