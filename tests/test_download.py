"""download-audioset against real files and a real HTTP server on loopback (no mocks).

The "videos" are served like YouTube (extension-less URLs) and fetched with
yt-dlp's generic extractor; faults are injected per URL by demo.server.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from demo.pool import CSV_NAME, generate_pool, write_segments_csv
from demo.server import FolderServer, serve_folder
from flows.download import check_parameters, download_audioset
from storage.manifest import read_manifest
from storage.segments import Segment, clip_id, parse_segments, select_subset

SECONDS = 2.0
OFFICIAL = '''# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=22160, num_segs=22160, num_unique_labels=527, num_positive_labels=52882
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
--ZhevVpy1s, 50.000, 60.000, "/m/012xff"
'''


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("pool")
    return folder, generate_pool(folder, n_clips=12, seconds=SECONDS, seed=1)


def _bad_videos(folder: Path) -> dict[str, str]:
    """Extra "videos", one per way a download can go wrong; returns ytid -> expected error_kind."""
    videos = folder / "videos"
    (videos / "htmlpage000.html").write_text("<!doctype html><html><body>Video unavailable</body></html>")
    (videos / "randombytes.wav").write_bytes(np.random.default_rng(0).bytes(20000))
    (videos / "zerolength0.wav").write_bytes(b"")
    sf.write(videos / "silentclip0.wav", np.zeros((44100 * 4, 2)), 44100)
    sf.write(videos / "tooshort000.flac", np.random.default_rng(1).uniform(-.5, .5, 16000), 16000)
    sf.write(videos / "flakyflaky0.flac", np.random.default_rng(2).uniform(-.5, .5, 16000 * 4), 16000)
    return {"missing0000": "unavailable", "error500000": "http_error", "slowslowslo": "timeout",
            "htmlpage000": "not_audio", "randombytes": "corrupt", "zerolength0": "empty",
            "silentclip0": "silent", "tooshort000": "empty"}


def _rows_by_id(manifest: str) -> dict[str, dict]:
    return {row["clip_id"]: row for row in read_manifest(manifest)}


def _check_flac(path: Path, shortfall_s: float = 0.0) -> np.ndarray:
    """16 kHz mono 16-bit FLAC of SECONDS (up to `shortfall_s` less, for lossy sources)."""
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16"), info
    assert (SECONDS - shortfall_s) * 16000 <= info.frames <= SECONDS * 16000, info
    return sf.read(path)[0]


# ---------------------------------------------------------------- segments

def test_parse_official_csv_and_clip_ids():
    first, second = parse_segments(OFFICIAL)
    assert first == Segment("--PJHxphWEs", 30.0, 40.0, ("/m/09x0r", "/t/dd00088"))
    assert second.labels == ("/m/012xff",) and second.duration_s == 10.0
    assert first.clip_id == clip_id("--PJHxphWEs", 30.0) == "--PJHxphWEs_30000"


def test_malformed_line_names_its_number():
    with pytest.raises(ValueError, match=r"line 5: .*start"):
        parse_segments(OFFICIAL.replace("50.000", "fifty"))
    with pytest.raises(ValueError, match=r"line 4: expected YTID"):
        parse_segments(OFFICIAL.replace('--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"', "--PJHxphWEs"))


def test_subset_is_stable_under_reordering():
    segments = [Segment(f"id{i:09d}", 1.0, 2.0) for i in range(200)]
    half = select_subset(segments, fraction=0.5)
    assert 70 < len(half) < 130
    assert select_subset(segments[::-1], fraction=0.5) == half
    assert select_subset(segments[::-1], fraction=0.5, limit=10) == half[:10]
    assert select_subset(segments + segments[:5], 1.0) == select_subset(segments, 1.0)  # duplicates dropped


def test_parameters_are_checked_up_front(tmp_path):
    good = dict(source="youtube", url_template=None, mirror=None, limit=None, fraction=1.0, concurrency=2,
                retries=1, timeout_s=5.0)
    for bad, word in [(dict(source="vimeo"), "source"), (dict(source="mirror"), "mirror"),
                      (dict(url_template="http://x/video"), "url_template"), (dict(fraction=0.0), "fraction"),
                      (dict(fraction=1.5), "fraction"), (dict(limit=0), "limit")]:
        with pytest.raises(ValueError, match=word):
            check_parameters(**{**good, **bad})
    with pytest.raises(ValueError, match="source"):  # and through the real flow
        download_audioset(segments=str(tmp_path / "none.csv"), source="vimeo", data_dir=str(tmp_path))


# ---------------------------------------------------------------- youtube source via yt-dlp

def test_youtube_source_cuts_resamples_and_reports_every_failure(pool, tmp_path):
    folder, rows = pool
    expected_failures = _bad_videos(folder)
    extra = [dict(ytid=y, start_s=5.0 if y == "tooshort000" else 1.0, end_s=(5.0 if y == "tooshort000" else 1.0)
                  + SECONDS, labels=["/m/0"]) for y in [*expected_failures, "flakyflaky0"]]
    csv = write_segments_csv(tmp_path / "yt_segments.csv", rows + extra)
    faults = {"/videos/error500000": "500", "/videos/slowslowslo": "slow", "/videos/flakyflaky0": "flaky:1"}
    with FolderServer(folder, faults, slow_s=3.0) as server:
        manifest = download_audioset(segments=str(csv), url_template=server.base_url + "/videos/{ytid}",
                                     data_dir=str(tmp_path / "data"), concurrency=4, retries=2, timeout_s=0.5)
        hits_500 = server.hits.get("/videos/error500000")

    assert manifest == str(tmp_path / "data" / "manifests" / "yt_segments.parquet")
    by_id = _rows_by_id(manifest)
    assert len(by_id) == len(rows) + len(extra)  # exactly one row per segment
    for row in rows:  # every real clip: ok, cut to the segment, 16 kHz mono
        got = by_id[row["clip_id"]]
        assert got["status"] == "ok" and got["duration_s"] == SECONDS and got["labels"] == row["labels"]
        audio = _check_flac(tmp_path / "data" / got["path"])
        truth, rate = sf.read(folder / row["mirror"])
        if rate == 16000:  # the mirror's 16 kHz copy is the exact segment: the cut is sample-accurate
            assert np.corrcoef(audio, truth)[0, 1] > 0.95, row
    flaky = by_id[clip_id("flakyflaky0", 1.0)]
    assert flaky["status"] == "ok" and flaky["attempts"] == 2
    for ytid, kind in expected_failures.items():
        got = by_id[clip_id(ytid, 5.0 if ytid == "tooshort000" else 1.0)]
        assert (got["status"], got["error_kind"]) == ("failed", kind), got
        assert got["error"] and got["path"] == "" and got["ytid"] == ytid
    assert by_id[clip_id("error500000", 1.0)]["attempts"] == 3 and hits_500 == 3  # transient: retried
    assert by_id[clip_id("slowslowslo", 1.0)]["attempts"] == 3
    assert by_id[clip_id("missing0000", 1.0)]["attempts"] == 1  # permanent: not retried
    audio_files = {p.name for p in (tmp_path / "data" / "audio" / "youtube").iterdir()}
    assert audio_files == {f"{r['clip_id']}.flac" for r in by_id.values() if r["status"] == "ok"}  # no temps
    assert not list((tmp_path / "data" / "downloads").iterdir())


# ---------------------------------------------------------------- mirror source

def test_mirror_source_from_folder_and_http(pool, tmp_path):
    folder, rows = pool
    csv = write_segments_csv(tmp_path / "mirror.csv", rows + [dict(ytid="notmirrored", start_s=0.0, end_s=2.0,
                                                                   labels=[])])
    with serve_folder(folder) as base_url:
        manifests = [download_audioset(segments=str(csv), source="mirror", mirror=mirror, concurrency=2,
                                       data_dir=str(tmp_path / name), timeout_s=5.0)
                     for name, mirror in [("folder", str(folder / "mirror")), ("http", base_url + "/mirror")]]
    for name, manifest in zip(["folder", "http"], manifests):
        by_id = _rows_by_id(manifest)
        assert by_id.pop("notmirrored_0")["error_kind"] == "unavailable"
        assert sorted(by_id) == sorted(r["clip_id"] for r in rows)
        for row in by_id.values():
            assert row["status"] == "ok" and row["source"] == "mirror"
            assert row["path"] == f"audio/mirror/{row['clip_id']}.flac"
            _check_flac(tmp_path / name / row["path"], shortfall_s=0.02)  # see demo.pool on OGG Vorbis

    with get_client(sync_client=True) as client:  # the run's artifacts: progress at 100 %, outcome table
        keys = ["download-audioset-progress", "download-audioset-summary"]
        latest = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=keys)), sort="CREATED_DESC")[::-1]}
    assert float(latest["download-audioset-progress"].data) == 100.0
    assert "unavailable" in str(latest["download-audioset-summary"].data)


# ---------------------------------------------------------------- kill and resume

def test_killed_run_resumes_without_redoing_finished_clips(pool, tmp_path, subprocess_env):
    folder, rows = pool
    csv = str(folder / CSV_NAME)
    data = tmp_path / "data"
    audio = data / "audio" / "youtube"
    with FolderServer(folder) as server:
        template = server.base_url + "/videos/{ytid}"
        reference = download_audioset(segments=csv, url_template=template, data_dir=str(tmp_path / "ref"))

        server.delay_s = 0.3  # slow enough to kill the run half way
        code = (f"from flows.download import download_audioset; download_audioset(segments={csv!r}, "
                f"url_template={template!r}, data_dir={str(data)!r}, concurrency=1)")
        child = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while len(list(audio.glob("*.flac"))) < 3 and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.05)
        finally:
            os.killpg(child.pid, signal.SIGKILL)  # its own session: the flow and its ffmpeg children
            child.wait()
        done_before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in audio.glob("*.flac")}
        assert 3 <= len(done_before) < len(rows), "the run should have been killed half way"
        assert not (data / "manifests").exists()

        server.delay_s = 0.0
        manifest = download_audioset(segments=csv, url_template=template, data_dir=str(data))

    for name, stamp in done_before.items():  # finished clips were kept, not redone
        p = audio / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    ok = {r["clip_id"] for r in read_manifest(manifest) if r["status"] == "ok"}
    assert ok == {r["clip_id"] for r in read_manifest(reference) if r["status"] == "ok"} == {r["clip_id"] for r in rows}
    assert {p.name for p in audio.iterdir()} == {f"{c}.flac" for c in ok}  # stale temporary files removed


# ---------------------------------------------------------------- segment-only downloads, rate limits, cookies

@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 10-minute "video" (16 kHz mono WAV, 19.2 MB) of noise, and its samples."""
    folder = tmp_path_factory.mktemp("long")
    (folder / "videos").mkdir()
    audio = np.random.default_rng(5).uniform(-0.5, 0.5, 600 * 16000)
    sf.write(folder / "videos" / "longvideo00.wav", audio, 16000, subtype="PCM_16")
    return folder, sf.read(folder / "videos" / "longvideo00.wav")[0]


def test_segment_only_download_reads_a_small_fraction_of_the_video(long_video, tmp_path):
    folder, truth = long_video
    csv = write_segments_csv(tmp_path / "long.csv", [dict(ytid="longvideo00", start_s=300.0, end_s=310.0, labels=[])])
    size = (folder / "videos" / "longvideo00.wav").stat().st_size
    sent = {}
    for name, ranges, segment_only in [("segment", "serve", True), ("whole", "serve", False),
                                       ("ignored", "ignore", True), ("refused", "refuse", True)]:
        with FolderServer(folder, ranges=ranges) as server:
            manifest = download_audioset(segments=str(csv), url_template=server.base_url + "/videos/{ytid}",
                                         data_dir=str(tmp_path / name), segment_only=segment_only, timeout_s=10.0)
        row = read_manifest(manifest)[0]
        assert row["status"] == "ok" and row["duration_s"] == 10.0, (name, row)
        audio = sf.read(tmp_path / name / row["path"])[0]
        np.testing.assert_allclose(audio, truth[300 * 16000:310 * 16000], atol=2e-4)  # sample-exact cut
        sent[name] = server.sent.get("/videos/longvideo00", 0) + server.sent.get("/videos/longvideo00.wav", 0)
    print(f"bytes sent for a 10 s segment of a 10 min WAV ({size} bytes): {sent}")
    assert sent["segment"] < 0.1 * size  # byte ranges: a small fraction of the file
    assert sent["whole"] >= size
    assert sent["ignored"] < size  # no ranges: ffmpeg reads up to the segment and stops
    assert sent["refused"] >= size  # ranges refused: the whole file, cut here


def test_rate_limit_pauses_every_download(pool, tmp_path):
    folder, rows = pool
    csv = write_segments_csv(tmp_path / "limited.csv", rows[:6])
    limited = f"/videos/{rows[0]['ytid']}"
    with FolderServer(folder, faults={limited: "ratelimit:1"}) as server:
        manifest = download_audioset(segments=str(csv), url_template=server.base_url + "/videos/{ytid}",
                                     data_dir=str(tmp_path / "data"), concurrency=3, rate_limit_s=3.0)
        log = list(server.log)
    by_id = _rows_by_id(manifest)
    assert all(r["status"] == "ok" for r in by_id.values())
    assert by_id[rows[0]["clip_id"]]["attempts"] == 2
    limited_at = min(t for t, path, _ in log if path == limited)
    first_request = {}
    for t, path, _ in log:
        first_request.setdefault(path, t)
    started_during_pause = [p for p, t in first_request.items() if limited_at + 0.5 < t < limited_at + 2.5]
    assert not started_during_pause  # no new clip started while the shared pause lasted
    assert manifest.counts == {"ok": 6}


def test_cookies_file_is_passed_to_yt_dlp(pool, tmp_path):
    folder, rows = pool
    csv = write_segments_csv(tmp_path / "one.csv", rows[:1])
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t4102444800\tCONSENT\tYES+1\n")
    with pytest.raises(ValueError, match="cookies"):
        download_audioset(segments=str(csv), cookies=str(tmp_path / "missing.txt"), data_dir=str(tmp_path))
    with FolderServer(folder) as server:
        manifest = download_audioset(segments=str(csv), url_template=server.base_url + "/videos/{ytid}",
                                     data_dir=str(tmp_path / "data"), cookies=str(cookies))
        log = list(server.log)
    assert read_manifest(manifest)[0]["status"] == "ok"
    assert any("CONSENT=YES+1" in headers.get("Cookie", "") for _, _, headers in log)


def test_youtube_challenge_solver_is_installed():
    """yt-dlp-ejs (the solver scripts) and the deno wheel (their runtime) come with the project."""
    import yt_dlp_ejs  # noqa: F401
    from yt_dlp.utils._jsruntime import DenoJsRuntime

    info = DenoJsRuntime().info
    assert info is not None and info.supported, info
