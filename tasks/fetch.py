"""Getting one segment's audio file: from YouTube (yt-dlp) or from a mirror (folder or HTTP).

- `youtube`: yt-dlp fetches only [start, end] of `url_template.format(ytid=...)`
  (its `download_ranges`: ffmpeg asks the server for byte ranges and cuts
  sample-exactly); when that fails (a server refusing ranges), the whole audio
  is downloaded and cut locally. `cookies` (a Netscape cookies.txt) is passed
  to yt-dlp for "confirm you are not a bot" pages, recorded as `blocked`.
- `mirror`: storage/mirror.py finds the file holding a segment under the
  layouts people use; a file longer than the segment (a whole video) is cut.

Every failure is a ClipError with the manifest's `error_kind`. Rate-limit
answers (HTTP 429) pause every download of the data folder (SharedBackoff),
not only the clip that got them.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

from storage.atomic import read_json, write_json
from storage.layout import DataLayout
from storage.mirror import MIRROR_EXTENSIONS, Entry, MirrorIndex, index_links, list_folder, pattern_path
from storage.segments import Segment
from tasks.audio import ClipError, probe_duration

DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={ytid}"
TRANSIENT_HTTP = {408, 425, 429} | set(range(500, 600))
UNAVAILABLE_PHRASES = ("video unavailable", "private video", "has been removed", "is not available",
                       "account associated with this video has been terminated", "confirm your age",
                       "members-only", "copyright", "does not exist")
RATE_LIMIT_PHRASES = ("429", "too many requests", "rate-limit", "rate limit", "rate-limited")
SECTION_FALLBACK = ("download_error", "empty", "corrupt")  # section failed: try the whole file
LONGER_BY_S = 1.0  # a mirror file longer than its segment by more than this is a whole video: cut it


@dataclass(frozen=True)
class DownloadOptions:
    source: str
    data_dir: str
    url_template: str = DEFAULT_URL_TEMPLATE
    mirror: str | None = None
    mirror_pattern: str | None = None
    cookies: str | None = None
    segment_only: bool = True
    retries: int = 2
    timeout_s: float = 30.0
    backoff_s: float = 1.0  # waits backoff_s, 2*backoff_s, 4*backoff_s, ... between attempts
    rate_limit_s: float = 60.0  # first shared pause after a rate-limit answer; doubles while they go on
    min_duration_s: float = 0.5
    min_segment_fraction: float = 0.5
    run_token: str = ""  # one per flow run: a mirror is listed once per run

    @property
    def audio_dir(self) -> Path:
        return DataLayout(self.data_dir).audio_dir(self.source)


@dataclass(frozen=True)
class Fetched:
    """A downloaded file, where the segment starts in it, and which file of the source it was."""

    path: Path
    start_s: float
    origin: str


# ---------------------------------------------------------------- errors

def http_status(exc: BaseException) -> int | None:
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


def clean(message: str) -> str:
    message = re.sub(r"\x1b\[[0-9;]*m", "", message).strip()
    message = re.sub(r"^ERROR:\s*", "", message)
    return message[:400]


def http_error(status: int, where: str) -> ClipError:
    if status in (404, 410):
        return ClipError("unavailable", f"not found (HTTP {status}) at {where}")
    if status == 429:
        return ClipError("rate_limited", f"rate-limited (HTTP 429) by {where}", transient=True)
    return ClipError("http_error", f"HTTP {status} from {where}", transient=status in TRANSIENT_HTTP)


def classify(exc: BaseException, where: str) -> ClipError:
    """Turn a network or yt-dlp exception into a ClipError."""
    if isinstance(exc, ClipError):
        return exc
    message = clean(str(exc)) or type(exc).__name__
    for e in _causes(exc):
        if (status := http_status(e)) is not None:
            return http_error(status, where)
        if isinstance(e, (TimeoutError, socket.timeout)):
            return ClipError("timeout", f"timed out reading {where}: {message}", transient=True)
        if isinstance(e, ConnectionError):
            return ClipError("connection", f"connection failed to {where}: {message}", transient=True)
    lower = message.lower()
    if "unsupported url" in lower:
        return ClipError("not_audio", f"no audio or video found at {where} (not a media page)")
    if "did not get any data blocks" in lower or "downloaded file is empty" in lower:
        return ClipError("empty", f"empty download from {where}")
    if "not a bot" in lower or "sign in to confirm" in lower:
        return ClipError("blocked", f"{message} (pass cookies=<cookies.txt> to download-audioset)")
    if any(phrase in lower for phrase in RATE_LIMIT_PHRASES):
        return ClipError("rate_limited", message, transient=True)
    if any(phrase in lower for phrase in UNAVAILABLE_PHRASES):
        return ClipError("unavailable", message)
    if "timed out" in lower:
        return ClipError("timeout", message, transient=True)
    if isinstance(exc, (urllib.error.URLError, ConnectionError)) or "connection" in lower:
        return ClipError("connection", f"{where}: {message}", transient=True)
    return ClipError("download_error", message)


# ---------------------------------------------------------------- shared backoff

class SharedBackoff:
    """A pause shared by every download of one data folder (threads, processes, machines on shared
    storage): a rate-limit answer sets it, every fetch waits for it first."""

    _lock = threading.Lock()

    def __init__(self, options: DownloadOptions):
        self.path = DataLayout(options.data_dir).downloads() / "rate-limit.json"
        self.first_s = options.rate_limit_s

    def _state(self) -> dict:
        try:
            return read_json(self.path)
        except (OSError, ValueError):
            return {"until": 0.0, "strikes": 0}

    def wait(self) -> float:
        """Sleep until the shared pause is over; returns the seconds waited."""
        waited = 0.0
        while (left := self._state()["until"] - time.time()) > 0:
            time.sleep(min(left, 1.0))
            waited += min(left, 1.0)
        return waited

    def hit(self) -> float:
        """A rate-limit answer: pause everyone, twice as long as last time while they go on."""
        with self._lock:
            state, now = self._state(), time.time()
            strikes = state["strikes"] + 1 if state["until"] > now - 10 * self.first_s else 1
            pause = min(self.first_s * 2 ** (strikes - 1), 3600.0)
            if now + pause > state["until"]:
                write_json(self.path, {"until": now + pause, "strikes": strikes})
            return pause


# ---------------------------------------------------------------- youtube

class _QuietLogger:
    """yt-dlp prints errors to stderr even when quiet; we report them in the manifest instead."""

    def debug(self, msg: str) -> None:
        pass

    info = warning = error = debug


def _yt_dlp(url: str, options: DownloadOptions, workdir: Path, section: tuple[float, float] | None) -> Path:
    import yt_dlp  # slow to import; only this source needs it
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
    from yt_dlp.utils import download_range_func

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    FFmpegPostProcessor._ffmpeg_location.set(ffmpeg)  # yt-dlp's "is ffmpeg there" check reads only this
    ydl_options = {
        "format": "bestaudio/best", "outtmpl": str(workdir / "source.%(ext)s"), "noplaylist": True,
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": _QuietLogger(),
        "socket_timeout": options.timeout_s, "cachedir": False, "overwrites": True,
        "retries": 0, "fragment_retries": 0, "extractor_retries": 0,  # we retry, with backoff
        "ffmpeg_location": ffmpeg,
    }
    if options.cookies:
        ydl_options["cookiefile"] = options.cookies
    if section:  # ffmpeg reads only the byte ranges it needs; re-encoding makes the cut sample-exact
        ydl_options.update(download_ranges=download_range_func(None, [section]), force_keyframes_at_cuts=True)
    try:
        with yt_dlp.YoutubeDL(ydl_options) as ydl:
            ydl.extract_info(url, download=True)
    except Exception as exc:  # yt-dlp wraps everything in DownloadError
        raise classify(exc, url) from None
    files = [p for p in workdir.iterdir() if p.name.startswith("source.") and not p.name.endswith(".part")]
    if not files or files[0].stat().st_size == 0:
        raise ClipError("empty", f"yt-dlp wrote no audio for {url}")
    return files[0]


def fetch_youtube(segment: Segment, options: DownloadOptions, workdir: Path) -> Fetched:
    """Only the segment with yt-dlp's download ranges; the whole audio when that fails."""
    url = options.url_template.format(ytid=segment.ytid)
    if options.segment_only:
        try:
            return Fetched(_yt_dlp(url, options, workdir, (segment.start_s, segment.end_s)), 0.0, url)
        except ClipError as exc:
            if exc.kind not in SECTION_FALLBACK:
                raise
            clear(workdir)
    return Fetched(_yt_dlp(url, options, workdir, None), segment.start_s, url)


# ---------------------------------------------------------------- mirror

_indexes: dict[tuple[str, str], MirrorIndex | None] = {}
_index_lock = threading.Lock()
_preferred: dict[str, str] = {}  # probing an HTTP mirror: the layout that worked last


def _is_url(base: str) -> bool:
    return urllib.parse.urlparse(base).scheme in ("http", "https")


def mirror_index(options: DownloadOptions) -> MirrorIndex | None:
    """The mirror's files, listed once per flow run; None for an HTTP mirror without index pages."""
    base = str(options.mirror)
    with _index_lock:
        if (base, options.run_token) not in _indexes:
            for key in [k for k in _indexes if k[0] == base]:
                del _indexes[key]
            files = _list_http(base.rstrip("/") + "/", options.timeout_s) if _is_url(base) else list_folder(base)
            _indexes[base, options.run_token] = None if files is None else MirrorIndex(files)
        return _indexes[base, options.run_token]


def _list_http(base: str, timeout_s: float, max_pages: int = 10000) -> list[str] | None:
    """Crawl an HTTP directory index below `base`; None when the server shows no index."""
    files, todo, seen = [], [base], set()
    while todo and len(seen) < max_pages:
        page_url = todo.pop(0)
        seen.add(page_url)
        try:
            with urllib.request.urlopen(page_url, timeout=timeout_s) as response:
                if response.headers.get_content_type() != "text/html":
                    return None if page_url == base else files
                page = response.read(20_000_000).decode("utf-8", errors="replace")
        except (OSError, urllib.error.URLError):
            if page_url == base:
                return None
            continue
        found, folders = index_links(page, page_url, base)
        if page_url == base and not found and not folders:
            return None
        files += [urllib.parse.unquote(u[len(base):]) for u in found]
        todo += [f for f in folders if f not in seen and f not in todo]
    return files


def _probe_names(segment: Segment) -> list[tuple[str, Entry]]:
    """(layout, file) pairs to try on an HTTP mirror without index pages (flat layouts only)."""
    y, start, end = segment.ytid, segment.start_s, segment.end_s
    stems = {"{ytid}": (y, None), "Y{ytid}": (f"Y{y}", None), "{clip_id}": (segment.clip_id, start)}
    for fmt in ("{:g}", "{:.1f}", "{:.3f}"):
        a, b = fmt.format(start), fmt.format(end)
        stems.update({f"{{ytid}}_{fmt}": (f"{y}_{a}", start), f"{{ytid}}_{fmt}_{fmt}": (f"{y}_{a}_{b}", start),
                      f"Y{{ytid}}_{fmt}_{fmt}": (f"Y{y}_{a}_{b}", start)})
    pairs = [(f"{layout}.{ext}", Entry(f"{stem}.{ext}", named)) for layout, (stem, named) in stems.items()
             for ext in MIRROR_EXTENSIONS]
    return list({entry.path: (layout, entry) for layout, entry in pairs}.values())


def _download(url: str, target: Path, timeout_s: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        if response.headers.get_content_type().startswith("text/"):
            raise ClipError("not_audio", f"{url} is {response.headers.get_content_type()}, not audio")
        with open(target, "wb") as f:
            shutil.copyfileobj(response, f)


def fetch_mirror(segment: Segment, options: DownloadOptions, workdir: Path) -> Fetched:
    """The mirror's file for `segment` (pattern, index or probing): in the mirror folder, or downloaded
    into workdir."""
    base = str(options.mirror).rstrip("/")
    layouts: dict[str, str] = {}
    if options.mirror_pattern:
        relative = pattern_path(options.mirror_pattern, segment)
        whole = "{start" not in options.mirror_pattern and "{clip_id" not in options.mirror_pattern
        candidates = [Entry(relative, None if whole else segment.start_s)]
    elif (index := mirror_index(options)) is not None:
        candidates = index.find(segment)
        if not candidates:
            raise ClipError("unavailable", index.not_found(segment, base))
    else:  # an HTTP mirror without index pages: try the flat layouts, first the one that worked last
        pairs = _probe_names(segment)
        pairs.sort(key=lambda pair: pair[0] != _preferred.get(base))
        layouts = dict((entry.path, layout) for layout, entry in pairs)
        candidates = [entry for _, entry in pairs]
    for entry in candidates:
        target = workdir / f"source{Path(entry.path).suffix or '.audio'}"
        if not _is_url(base):  # a folder: decoded where it lies, never copied
            target = Path(base) / entry.path
            if not target.is_file():
                continue
        else:
            url = f"{base}/{urllib.parse.quote(entry.path)}"
            try:
                _download(url, target, options.timeout_s)
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 404, 410) and len(candidates) > 1:
                    continue
                raise http_error(exc.code, url) from None
            except (OSError, urllib.error.URLError) as exc:
                raise classify(exc, url) from None
            if entry.path in layouts:
                _preferred[base] = layouts[entry.path]
        return Fetched(target, segment_start_in(target, entry, segment), entry.path)
    if options.mirror_pattern:
        raise ClipError("unavailable", f"no {pattern_path(options.mirror_pattern, segment)} under {base} "
                                       f"(mirror_pattern {options.mirror_pattern!r})")
    raise ClipError("unavailable", f"no file for segment {segment.ytid} [{segment.start_s:g}, {segment.end_s:g}] s "
                                   f"under {base}: tried {len(candidates)} names of the flat layouts "
                                   f"({candidates[0].path}, ...); the server shows no index pages for nested folders. "
                                   "Set mirror_pattern for another layout")


def segment_start_in(path: Path, entry: Entry, segment: Segment) -> float:
    """Where the segment starts in a mirror file: 0 for a file of the segment, its start for a
    whole video (a file named by the video alone and longer than the segment)."""
    if entry.start_s is not None:
        return 0.0
    duration = probe_duration(path)
    return segment.start_s if duration is not None and duration > segment.duration_s + LONGER_BY_S else 0.0


def clear(workdir: Path) -> None:
    for p in workdir.iterdir():
        shutil.rmtree(p) if p.is_dir() else os.remove(p)
