"""Download AudioSet segments as 16 kHz mono FLAC, one manifest row per clip.

A segment is one line of an AudioSet segments CSV (ytid, start, end, labels).
Its clip id is `f"{ytid}_{round(start_s * 1000)}"` (start in milliseconds), so
two segments of one video get distinct ids and the id is a valid file name.
The audio goes to `DataLayout(data_dir).audio_dir(source) / f"{clip_id}.flac"`.

Sources:
- `youtube`: yt-dlp fetches `url_template.format(ytid=...)` (bestaudio), then
  ffmpeg cuts [start, end], downmixes to mono and resamples to 16 kHz.
- `mirror`: a folder or http(s) base URL holding `<clip_id>.<ext>` files that
  are already cut to the segment: converted only.

Every failure becomes a failed row with a readable `error` and a short
`error_kind` (unavailable, http_error, timeout, connection, not_audio,
corrupt, empty, silent, ...). Transient ones (5xx, 429, timeouts, resets) are
retried with exponential backoff; permanent ones fail at once. Files are
written under a temporary name and renamed, and a rerun keeps every FLAC that
already exists and verifies, so a killed run loses only its in-flight clips.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import soundfile as sf
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from storage.atomic import atomic_path, remove
from storage.layout import DataLayout
from storage.manifest import FAILED, OK
from storage.segments import Segment, parse_segments

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4  # below this peak (about -80 dBFS) a clip holds no usable sound
SOURCES = ("youtube", "mirror")
DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={ytid}"
MIRROR_EXTENSIONS = ("flac", "wav", "ogg", "mp3", "m4a", "webm")
CONVERT_TIMEOUT_S = 300
TRANSIENT_HTTP = {408, 425, 429} | set(range(500, 600))
UNAVAILABLE_PHRASES = ("video unavailable", "private video", "has been removed", "is not available",
                       "account associated with this video has been terminated", "confirm your age",
                       "members-only", "copyright", "does not exist")


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
                if attempt == retries or _http_status(exc) not in TRANSIENT_HTTP | {None}:
                    raise OSError(f"cannot read segments CSV {path_or_url}: {exc}") from exc
                time.sleep(2 ** attempt)
    else:
        path = Path(path_or_url)
        if not path.is_file():
            raise FileNotFoundError(f"segments CSV not found: {path}")
        text = path.read_text(encoding="utf-8")
    return parse_segments(text, origin=str(path_or_url))


# ---------------------------------------------------------------- errors

class ClipError(Exception):
    """A clip that cannot be downloaded: `kind` is the manifest's error_kind."""

    def __init__(self, kind: str, message: str, transient: bool = False):
        super().__init__(message)
        self.kind, self.transient = kind, transient


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    return status if isinstance(status, int) and 100 <= status < 600 else None


def _causes(exc: BaseException):
    """The exception and everything it wraps (yt-dlp keeps causes in exc_info / cause)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        info = getattr(e, "exc_info", None)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__, info[1] if info else None]


def _clean(message: str) -> str:
    message = re.sub(r"\x1b\[[0-9;]*m", "", message).strip()
    message = re.sub(r"^ERROR:\s*", "", message)
    return message[:400]


def _http_error(status: int, where: str) -> ClipError:
    if status in (404, 410):
        return ClipError("unavailable", f"not found (HTTP {status}) at {where}")
    return ClipError("http_error", f"HTTP {status} from {where}", transient=status in TRANSIENT_HTTP)


def classify(exc: BaseException, where: str) -> ClipError:
    """Turn a network or yt-dlp exception into a ClipError."""
    if isinstance(exc, ClipError):
        return exc
    message = _clean(str(exc)) or type(exc).__name__
    for e in _causes(exc):
        if (status := _http_status(e)) is not None:
            return _http_error(status, where)
        if isinstance(e, (TimeoutError, socket.timeout)):
            return ClipError("timeout", f"timed out reading {where}: {message}", transient=True)
        if isinstance(e, ConnectionError):
            return ClipError("connection", f"connection failed to {where}: {message}", transient=True)
    lower = message.lower()
    if "unsupported url" in lower:
        return ClipError("not_audio", f"no audio or video found at {where} (not a media page)")
    if "did not get any data blocks" in lower or "downloaded file is empty" in lower:
        return ClipError("empty", f"empty download from {where}")
    if "not a bot" in lower:
        return ClipError("blocked", message)
    if any(phrase in lower for phrase in UNAVAILABLE_PHRASES):
        return ClipError("unavailable", message)
    if "timed out" in lower:
        return ClipError("timeout", message, transient=True)
    if isinstance(exc, (urllib.error.URLError, ConnectionError)) or "connection" in lower:
        return ClipError("connection", f"{where}: {message}", transient=True)
    return ClipError("download_error", message)


# ---------------------------------------------------------------- fetching

@dataclass(frozen=True)
class DownloadOptions:
    source: str
    data_dir: str
    url_template: str = DEFAULT_URL_TEMPLATE
    mirror: str | None = None
    retries: int = 2
    timeout_s: float = 30.0
    backoff_s: float = 1.0  # waits backoff_s, 2*backoff_s, 4*backoff_s, ... between attempts

    @property
    def audio_dir(self) -> Path:
        return DataLayout(self.data_dir).audio_dir(self.source)


class _QuietLogger:
    """yt-dlp prints errors to stderr even when quiet; we report them in the manifest instead."""

    def debug(self, msg: str) -> None:
        pass

    info = warning = error = debug


def fetch_youtube(segment: Segment, options: DownloadOptions, workdir: Path) -> Path:
    """Download the whole video's best audio with yt-dlp into workdir."""
    import yt_dlp  # slow to import; only this source needs it

    url = options.url_template.format(ytid=segment.ytid)
    ydl_options = {
        "format": "bestaudio/best", "outtmpl": str(workdir / "source.%(ext)s"), "noplaylist": True,
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": _QuietLogger(),
        "socket_timeout": options.timeout_s, "cachedir": False, "overwrites": True,
        "retries": 0, "fragment_retries": 0, "extractor_retries": 0,  # we retry, with backoff
        "ffmpeg_location": imageio_ffmpeg.get_ffmpeg_exe(),
    }
    try:
        with yt_dlp.YoutubeDL(ydl_options) as ydl:
            ydl.extract_info(url, download=True)
    except Exception as exc:  # yt-dlp wraps everything in DownloadError
        raise classify(exc, url) from None
    files = [p for p in workdir.iterdir() if p.name.startswith("source.") and not p.name.endswith(".part")]
    if not files:
        raise ClipError("empty", f"yt-dlp wrote no file for {url}")
    return files[0]


def fetch_mirror(segment: Segment, options: DownloadOptions, workdir: Path) -> Path:
    """Find `<clip_id>.<ext>` in the mirror folder, or download it from the mirror URL."""
    base = str(options.mirror)
    if urllib.parse.urlparse(base).scheme not in ("http", "https"):
        found = [p for p in Path(base).glob(glob.escape(segment.clip_id) + ".*") if p.is_file()]
        if not found:
            raise ClipError("unavailable", f"no {segment.clip_id}.* in {base}")
        rank = {ext: i for i, ext in enumerate(MIRROR_EXTENSIONS)}  # known extensions first, in this order
        return min(found, key=lambda p: (rank.get(p.suffix[1:].lower(), len(rank)), p.name))
    for ext in MIRROR_EXTENSIONS:
        url = f"{base.rstrip('/')}/{urllib.parse.quote(segment.clip_id)}.{ext}"
        try:
            with urllib.request.urlopen(url, timeout=options.timeout_s) as response:
                if response.headers.get_content_type().startswith("text/"):
                    raise ClipError("not_audio", f"{url} is {response.headers.get_content_type()}, not audio")
                target = workdir / f"source.{ext}"
                with open(target, "wb") as f:
                    shutil.copyfileobj(response, f)
                return target
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise _http_error(exc.code, url) from None
        except (OSError, urllib.error.URLError) as exc:
            raise classify(exc, url) from None
    raise ClipError("unavailable", f"no {segment.clip_id}.{{{','.join(MIRROR_EXTENSIONS)}}} under {base}")


# ---------------------------------------------------------------- converting and checking

def convert(source: Path, target: Path, start_s: float, duration_s: float) -> None:
    """ffmpeg: [start, start + duration] of `source` as 16 kHz mono 16-bit FLAC at `target`."""
    if source.stat().st_size == 0:
        raise ClipError("empty", "downloaded file is empty (0 bytes)")
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               # -t with a margin only stops decoding early: packet timestamps can be off by a packet
               # or more, so atrim (after resampling) makes the length sample-exact
               "-ss", f"{start_s:.3f}", "-t", f"{duration_s + 1:.3f}", "-i", str(source),
               "-vn", "-af", f"aresample={SAMPLE_RATE},atrim=end_sample={round(duration_s * SAMPLE_RATE)}",
               "-ac", "1", "-ar", str(SAMPLE_RATE), "-sample_fmt", "s16", "-c:a", "flac",
               "-f", "flac", str(target)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClipError("convert_timeout", f"ffmpeg took over {CONVERT_TIMEOUT_S} s on {source.name}") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        message = _clean(lines[-1]) if lines else f"exit code {done.returncode}"
        with open(source, "rb") as f:
            head = f.read(512).lstrip().lower()
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
            raise ClipError("not_audio", f"the download is a web page or text, not audio ({message})")
        if "does not contain any stream" in message or "matches no streams" in message:
            raise ClipError("not_audio", f"the download has no audio stream ({message})")
        if "invalid data" in message.lower():
            raise ClipError("corrupt", f"ffmpeg cannot decode the download: {message}")
        raise ClipError("convert_error", f"ffmpeg failed: {message}")


def check_format(path: Path) -> float:
    """Cheap header check (no decoding): 16 kHz, mono, some frames. Returns the duration."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ClipError("corrupt", f"cannot read {path.name}: {exc}") from None
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise ClipError("bad_format", f"{path.name} is {info.samplerate} Hz x {info.channels} channels, "
                                      f"expected {SAMPLE_RATE} Hz mono")
    if not 0 < info.frames < 2 ** 62:  # a FLAC with no samples declares its length unknown (2**63 - 1)
        raise ClipError("empty", "no audio in the segment (0 frames): the video may be shorter than its start")
    return info.frames / SAMPLE_RATE


def verify_audio(path: Path) -> float:
    """Full check of a fresh file: format, and not silent. Returns the duration."""
    duration = check_format(path)
    try:
        audio, _ = sf.read(str(path), dtype="float32")
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ClipError("corrupt", f"cannot decode {path.name}: {exc}") from None
    peak = float(np.abs(audio).max())
    if peak < SILENCE_PEAK:
        raise ClipError("silent", f"the segment is silent (peak {peak:.1e} < {SILENCE_PEAK:.0e})")
    return duration


# ---------------------------------------------------------------- one clip

def _row(segment: Segment, options: DownloadOptions, status: str, path: str = "", duration_s: float = 0.0,
         error: str = "", error_kind: str = "", attempts: int = 0) -> dict:
    return dict(clip_id=segment.clip_id, path=path, duration_s=round(duration_s, 4),
                sample_rate=SAMPLE_RATE if status == OK else 0, status=status, error=error,
                error_kind=error_kind, source=options.source, ytid=segment.ytid, start_s=segment.start_s,
                end_s=segment.end_s, labels=list(segment.labels), attempts=attempts)


def _fetch_and_convert(segment: Segment, options: DownloadOptions, target: Path) -> float:
    workdir = DataLayout(options.data_dir).downloads() / f"tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    try:
        if options.source == "youtube":
            source, start = fetch_youtube(segment, options, workdir), segment.start_s
        else:
            source, start = fetch_mirror(segment, options, workdir), 0.0
        with atomic_path(target) as tmp:
            convert(source, tmp, start, segment.duration_s)
            return verify_audio(tmp)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def download_clip(segment: Segment, options: DownloadOptions) -> dict:
    """Fetch, convert and verify one clip; returns its manifest row. Never raises."""
    target = options.audio_dir / f"{segment.clip_id}.flac"
    relative = target.relative_to(DataLayout(options.data_dir).root).as_posix()
    if target.exists():  # resume: keep a finished file if its header is right
        try:
            return _row(segment, options, OK, relative, check_format(target))
        except ClipError:
            remove(target)
    attempt = 0
    while True:
        attempt += 1
        try:
            duration = _fetch_and_convert(segment, options, target)
            return _row(segment, options, OK, relative, duration, attempts=attempt)
        except ClipError as exc:
            if not exc.transient or attempt > options.retries:
                suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                return _row(segment, options, FAILED, error=f"{exc}{suffix}", error_kind=exc.kind,
                            attempts=attempt)
        except Exception as exc:  # a bug or an unforeseen failure: report it, keep going
            return _row(segment, options, FAILED, error=f"{type(exc).__name__}: {exc}", error_kind="internal",
                        attempts=attempt)
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
