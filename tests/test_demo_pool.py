"""The demo's generated pool and loopback server: deterministic, laid out like AudioSet, faults on demand."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest
import soundfile as sf

from demo.pool import CSV_NAME, FAMILIES, generate_pool
from demo.server import FolderServer, serve_folder
from storage.segments import parse_segments


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    return folder, generate_pool(folder, n_clips=len(FAMILIES) * 2, seconds=1.0, seed=3)


def test_pool_is_deterministic_and_laid_out_like_audioset(pool, tmp_path):
    folder, rows = pool
    again = generate_pool(tmp_path, n_clips=len(rows), seconds=1.0, seed=3)
    assert again == rows
    assert (tmp_path / CSV_NAME).read_text() == (folder / CSV_NAME).read_text()
    assert (tmp_path / rows[0]["video"]).read_bytes() == (folder / rows[0]["video"]).read_bytes()

    segments = parse_segments((folder / CSV_NAME).read_text())
    assert [s.clip_id for s in segments] == [r["clip_id"] for r in rows]
    assert {r["family"] for r in rows} == set(FAMILIES)
    formats = set()
    for row in rows:
        assert len(row["ytid"]) == 11 and row["start_s"] > 0
        video, mirror = sf.info(folder / row["video"]), sf.info(folder / row["mirror"])
        assert video.duration > row["end_s"]  # other audio after the segment too
        assert mirror.duration == pytest.approx(1.0, abs=0.01)
        formats.add((video.format, video.samplerate, video.channels))
    assert len(formats) == 3 and all(rate != 16000 for _, rate, _ in formats)


def test_server_resolves_extensions_ranges_and_faults(pool):
    folder, rows = pool
    ytid = rows[0]["ytid"]
    with serve_folder(folder) as base:
        with urllib.request.urlopen(f"{base}/videos/{ytid}") as r:  # no extension, like YouTube
            body = r.read()
            assert r.headers.get_content_type().startswith("audio/")
        assert body == (folder / rows[0]["video"]).read_bytes()
        request = urllib.request.Request(f"{base}/videos/{ytid}", headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(request) as r:
            assert r.status == 206 and r.read() == body[10:20]
        for path, code in [("/status/410/videos/" + ytid, 410), ("/videos/nothing", 404)]:
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(base + path)
            assert caught.value.code == code
    with FolderServer(folder, slow_s=1.0) as server:
        flaky = f"{server.base_url}/flaky/1/videos/{ytid}"
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(flaky)
        assert urllib.request.urlopen(flaky).read() == body
        with pytest.raises(OSError, match="timed out"):
            urllib.request.urlopen(f"{server.base_url}/slow/videos/{ytid}", timeout=0.2)
