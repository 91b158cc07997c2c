"""Download AudioSet segments as 16 kHz mono FLAC, one manifest row per clip.

A segment is one line of an AudioSet segments CSV (ytid, start, end, labels).
Its clip id is `f"{ytid}_{round(start_s * 1000)}"` (start in milliseconds), so
two segments of one video get distinct ids and the id is a valid file name.
The audio goes to `DataLayout(data_dir).audio_dir(source) / f"{clip_id}.flac"`.

Per clip: fetch (tasks/fetch.py: yt-dlp for only the segment, or the mirror's
file in whatever layout) -> decode to float and check (tasks/audio.py) ->
write FLAC. Every failure becomes a failed row with a readable `error` and a
short `error_kind`. Transient ones (5xx, 429, timeouts, resets) are retried
with exponential backoff; rate-limit answers pause every download (a shared
backoff); permanent ones fail at once. Files are written under a temporary
name and renamed, and a rerun keeps every FLAC that already exists and
verifies, so a killed run loses only its in-flight clips.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from storage.atomic import atomic_path, remove
from storage.layout import DataLayout
from storage.manifest import FAILED, OK
from storage.segments import Segment, parse_segments
from tasks.audio import (
    SAMPLE_RATE,
    ClipError,
    check_audio,
    check_format,
    decode,
    expected_seconds,
    flac_origin,
    write_flac,
)
from tasks.fetch import (  # noqa: F401  (re-exported for flows/download.py)
    DEFAULT_URL_TEMPLATE,
    TRANSIENT_HTTP,
    DownloadOptions,
    SharedBackoff,
    fetch_mirror,
    fetch_youtube,
    http_status,
)

SOURCES = ("youtube", "mirror")


# ---------------------------------------------------------------- segments

def read_segments(path_or_url: str, timeout_s: float = 60.0, retries: int = 2) -> list[Segment]:
    """Read a segments CSV from a local path or an http(s) URL."""
    if urllib.parse.urlparse(str(path_or_url)).scheme in ("http", "https"):
        for attempt in range(retries + 1):
            try:
                with urllib.request.urlopen(path_or_url, timeout=timeout_s) as response:
                    text = response.read().decode("utf-8")
                break
            except OSError as exc:
                if attempt == retries or http_status(exc) not in TRANSIENT_HTTP | {None}:
                    raise OSError(f"cannot read segments CSV {path_or_url}: {exc}") from exc
                time.sleep(2 ** attempt)
    else:
        path = Path(path_or_url)
        if not path.is_file():
            raise FileNotFoundError(f"segments CSV not found: {path}")
        text = path.read_text(encoding="utf-8")
    return parse_segments(text, origin=str(path_or_url))


# ---------------------------------------------------------------- one clip

def _row(segment: Segment, options: DownloadOptions, status: str, path: str = "", duration_s: float = 0.0,
         error: str = "", error_kind: str = "", attempts: int = 0, source_file: str = "") -> dict:
    return dict(clip_id=segment.clip_id, path=path, duration_s=round(duration_s, 4),
                sample_rate=SAMPLE_RATE if status == OK else 0, status=status, error=error,
                error_kind=error_kind, source=options.source, ytid=segment.ytid, start_s=segment.start_s,
                end_s=segment.end_s, labels=list(segment.labels), attempts=attempts, source_file=source_file)


def _fetch_and_convert(segment: Segment, options: DownloadOptions, target: Path) -> tuple[float, str]:
    """Returns the clip's duration and the file of the source it came from."""
    workdir = DataLayout(options.data_dir).downloads() / f"tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    try:
        fetch = fetch_youtube if options.source == "youtube" else fetch_mirror
        fetched = fetch(segment, options, workdir)
        try:
            audio = decode(fetched.path, fetched.start_s, segment.duration_s)
            duration = check_audio(audio, expected_seconds(fetched.path, fetched.start_s, segment.duration_s),
                                   segment.duration_s, options.min_duration_s, options.min_segment_fraction)
        except ClipError as exc:
            raise ClipError(exc.kind, f"{exc} ({fetched.origin})", exc.transient) from None
        with atomic_path(target) as tmp:
            write_flac(tmp, audio, fetched.origin)
        return duration, fetched.origin
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def download_clip(segment: Segment, options: DownloadOptions) -> dict:
    """Fetch, convert and verify one clip; returns its manifest row. Never raises."""
    target = options.audio_dir / f"{segment.clip_id}.flac"
    relative = target.relative_to(DataLayout(options.data_dir).root).as_posix()
    if target.exists():  # resume: keep a finished file if its header is right
        try:
            return _row(segment, options, OK, relative, check_format(target), source_file=flac_origin(target))
        except ClipError:
            remove(target)
    backoff = SharedBackoff(options)
    attempt = 0
    while True:
        attempt += 1
        backoff.wait()
        try:
            duration, origin = _fetch_and_convert(segment, options, target)
            return _row(segment, options, OK, relative, duration, attempts=attempt, source_file=origin)
        except ClipError as exc:
            rate_limited = exc.kind == "rate_limited"
            if rate_limited:
                backoff.hit()
            if not exc.transient or attempt > options.retries:
                suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                return _row(segment, options, FAILED, error=f"{exc}{suffix}", error_kind=exc.kind,
                            attempts=attempt)
        except Exception as exc:  # a bug or an unforeseen failure: report it, keep going
            return _row(segment, options, FAILED, error=f"{type(exc).__name__}: {exc}", error_kind="internal",
                        attempts=attempt)
        if not rate_limited:  # the shared pause already waits for those
            time.sleep(options.backoff_s * 2 ** (attempt - 1))


# ---------------------------------------------------------------- the Prefect task

@task(name="download-batch", task_run_name="download-batch-{index}", cache_policy=NO_CACHE,
      persist_result=False)
def download_batch(segments: list[Segment], options: DownloadOptions, index: int = 0) -> list[dict]:
    """Download a batch of clips one after the other; one manifest row each."""
    logger = get_run_logger()
    rows = []
    for segment in segments:
        row = download_clip(segment, options)
        if row["status"] == FAILED:
            logger.debug("%s failed (%s): %s", row["clip_id"], row["error_kind"], row["error"])
        rows.append(row)
    failed = sum(r["status"] == FAILED for r in rows)
    logger.info("batch %d: %d ok, %d failed", index, len(rows) - failed, failed)
    return rows


def remove_stale_temps(options: DownloadOptions) -> int:
    """Remove temporary files and folders left by killed runs (their process is gone)."""
    candidates = list(options.audio_dir.glob(".*.tmp-*")) + list(DataLayout(options.data_dir).downloads().glob("tmp-*"))
    removed = 0
    for path in candidates:
        match = re.search(r"tmp-(\d+)-", path.name)
        if match and not _process_alive(int(match.group(1))):
            remove(path)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
