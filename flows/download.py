"""Flow `download-audioset`: AudioSet segments -> 16 kHz mono FLAC files + a clip manifest.

    read the segments CSV -> pick a deterministic subset -> download batches
    concurrently (yt-dlp for only the segment, or a mirror in any common layout),
    decode and check -> write the manifest

The flow returns the manifest's path: a `str` that also carries `counts`, the
number of clips per outcome ({"ok": 290, "unavailable": 7, "silent": 3}).

Resumable: clips whose FLAC already exists are kept, so a rerun after a crash
redoes only what was missing or in flight. Failed clips stay in the manifest
with their reason; nothing is dropped silently.
"""
from __future__ import annotations

import math
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from storage.layout import DataLayout
from storage.manifest import OK, write_manifest
from storage.mirror import check_pattern
from storage.segments import dataset_name, select_subset
from tasks.download import (
    DEFAULT_URL_TEMPLATE,
    SOURCES,
    DownloadOptions,
    download_batch,
    read_segments,
    remove_stale_temps,
)

BALANCED_TRAIN_CSV = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/balanced_train_segments.csv"
MAX_BATCH = 32


class ManifestPath(str):
    """The manifest's path, carrying the number of clips per outcome: "ok" and each error_kind."""

    counts: dict[str, int]

    def __new__(cls, path: str, counts: dict[str, int]) -> "ManifestPath":
        value = super().__new__(cls, path)
        value.counts = counts
        return value

    def __reduce__(self):
        return ManifestPath, (str(self), self.counts)


def check_parameters(source: str, url_template: str | None, mirror: str | None, limit: int | None,
                     fraction: float, concurrency: int, retries: int, timeout_s: float,
                     mirror_pattern: str | None = None, cookies: str | None = None, min_duration_s: float = 0.5,
                     min_segment_fraction: float = 0.5, rate_limit_s: float = 60.0) -> None:
    """Fail before any work with an error naming the parameter."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
    if source == "mirror":
        if not mirror:
            raise ValueError("mirror is required when source='mirror': a folder or http(s) URL "
                             "holding the segments' audio files")
        if urllib.parse.urlparse(mirror).scheme not in ("http", "https") and not Path(mirror).is_dir():
            raise ValueError(f"mirror must be an http(s) URL or an existing folder; {mirror!r} is neither")
    if mirror_pattern is not None:
        check_pattern(mirror_pattern)
    if cookies is not None and not Path(cookies).is_file():
        raise ValueError(f"cookies must be a cookies.txt file (Netscape format); {cookies!r} does not exist")
    if min_duration_s < 0:
        raise ValueError(f"min_duration_s must be 0 or more; got {min_duration_s}")
    if not 0 <= min_segment_fraction <= 1:
        raise ValueError(f"min_segment_fraction must be in [0, 1]; got {min_segment_fraction}")
    if rate_limit_s < 0:
        raise ValueError(f"rate_limit_s must be 0 or more; got {rate_limit_s}")
    if url_template is not None and "{ytid}" not in url_template:
        raise ValueError(f"url_template must contain '{{ytid}}'; got {url_template!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for all); got {limit}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1; got {concurrency}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more; got {retries}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive; got {timeout_s}")


def _batches(items: list, concurrency: int) -> list[list]:
    """At most MAX_BATCH clips per batch, and at least `concurrency` batches when there is enough work."""
    size = max(1, min(MAX_BATCH, math.ceil(len(items) / concurrency)))
    return [items[i:i + size] for i in range(0, len(items), size)]


def _summary_table(rows: list[dict]) -> list[dict]:
    counts = Counter((r["status"], r["error_kind"]) for r in rows)
    return [{"status": status, "error_kind": kind or "-", "clips": n} for (status, kind), n in sorted(counts.items())]


def outcome_counts(rows: list[dict]) -> dict[str, int]:
    """{"ok": n, <error_kind>: n, ...}, most frequent failure first."""
    failures = Counter(r["error_kind"] for r in rows if r["status"] != OK)
    return {"ok": sum(r["status"] == OK for r in rows), **dict(failures.most_common())}


@flow(name="download-audioset")
def download_audioset(
    segments: str = BALANCED_TRAIN_CSV,
    source: str = "youtube",
    url_template: str | None = None,
    mirror: str | None = None,
    mirror_pattern: str | None = None,
    cookies: str | None = None,
    data_dir: str = "data",
    limit: int | None = None,
    fraction: float = 1.0,
    dataset: str | None = None,
    concurrency: int = 4,
    retries: int = 2,
    timeout_s: float = 30.0,
    segment_only: bool = True,
    min_duration_s: float = 0.5,
    min_segment_fraction: float = 0.5,
    rate_limit_s: float = 60.0,
) -> str:
    """Download AudioSet segments as 16 kHz mono FLAC; returns the manifest's path.

    Every clip gets one manifest row: ok, or failed with its reason (error_kind). Resumable:
    finished clips are kept, transient errors retried with backoff. The returned path's
    `counts` holds the clips per outcome.

    Args:
        segments: a segments CSV (path or URL) in AudioSet's format.
        source: "youtube" (yt-dlp with url_template) or "mirror" (a folder or base URL of audio files).
        url_template: the video URL for yt-dlp, with {ytid} (default: YouTube's watch URL).
        mirror: the mirror's folder or base URL (source="mirror"): files named <ytid>, Y<ytid>,
            <ytid>_<start>[_<end>] (seconds) or <ytid>_<start ms>, at any depth; longer files are cut.
        mirror_pattern: the mirror's file for a segment, for any other layout: a relative path with
            {ytid}, {start}, {end} (seconds) and {clip_id}, e.g. "{ytid}_{start:.3f}.wav".
        cookies: a cookies.txt (Netscape format) for yt-dlp, for "confirm you are not a bot" pages.
        data_dir: root of data/: audio under data/audio/<source>/, the manifest under data/manifests/.
        limit: keep at most this many segments (a deterministic subset).
        fraction: keep this fraction of the segments (a deterministic subset), 0 < fraction <= 1.
        dataset: the manifest's name (default: the CSV's file name without extension).
        concurrency: clips downloaded at the same time.
        retries: further attempts after a transient error (network, rate limit).
        timeout_s: seconds before one download attempt is abandoned.
        segment_only: fetch only the segment from YouTube (byte ranges); the whole audio if that fails.
        min_duration_s: clips with less audio fail as too_short.
        min_segment_fraction: clips with less than this fraction of their segment fail as truncated.
        rate_limit_s: pause of every download after a rate-limit answer (doubles while they go on).
    """
    check_parameters(source, url_template, mirror, limit, fraction, concurrency, retries, timeout_s,
                     mirror_pattern, cookies, min_duration_s, min_segment_fraction, rate_limit_s)
    logger = get_run_logger()
    dataset = dataset or dataset_name(segments)
    options = DownloadOptions(source=source, data_dir=str(data_dir), url_template=url_template or DEFAULT_URL_TEMPLATE,
                              mirror=mirror, mirror_pattern=mirror_pattern, cookies=cookies, segment_only=segment_only,
                              retries=retries, timeout_s=timeout_s, rate_limit_s=rate_limit_s,
                              min_duration_s=min_duration_s, min_segment_fraction=min_segment_fraction,
                              run_token=uuid.uuid4().hex)
    chosen = select_subset(read_segments(segments), fraction, limit)
    if removed := remove_stale_temps(options):
        logger.info("removed %d temporary files left by an interrupted run", removed)
    batches = _batches(chosen, concurrency)
    logger.info("downloading %d clips from %s in %d batches, %d at a time", len(chosen), source, len(batches),
                concurrency)

    progress = create_progress_artifact(0.0, key="download-audioset-progress",
                                        description=f"clips of {dataset} downloaded or failed")
    results: dict[int, list[dict]] = {}
    in_flight, queue, done_clips = {}, list(enumerate(batches)), 0
    while queue or in_flight:
        while queue and len(in_flight) < concurrency:  # bounded: at most `concurrency` batches at once
            index, batch = queue.pop(0)
            in_flight[download_batch.submit(batch, options, index)] = index
        finished = next(as_completed(list(in_flight)))
        index = in_flight.pop(finished)
        results[index] = finished.result()
        done_clips += len(results[index])
        update_progress_artifact(progress, 100.0 * done_clips / max(len(chosen), 1))
    if not chosen:
        update_progress_artifact(progress, 100.0)

    rows = [row for index in sorted(results) for row in results[index]]
    manifest = write_manifest(DataLayout(data_dir).manifest(dataset), rows)
    create_table_artifact(_summary_table(rows), key="download-audioset-summary",
                          description=f"download-audioset: clips of {dataset} by outcome")
    counts = outcome_counts(rows)
    detail = ", ".join(f"{kind} {n}" for kind, n in counts.items() if kind != "ok")
    logger.info("download-audioset: %d of %d clips ok, %d failed%s -> %s", counts["ok"], len(rows),
                len(rows) - counts["ok"], f" ({detail})" if detail else "", manifest)
    return ManifestPath(str(manifest), counts)
