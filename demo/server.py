"""A tiny threaded HTTP server on 127.0.0.1 that serves a folder, with injectable faults.

It stands in for YouTube and for an AudioSet mirror in the demo and tests:

- `/videos/<ytid>` with no extension serves the one file `videos/<ytid>.*`
  (YouTube URLs carry no extension; the content type comes from the file's).
- `Range: bytes=a-b` requests get a 206 partial response.
- `ranges="ignore"` answers Range requests with the whole file (a server without range
  support), `ranges="refuse"` with 416; `listing=False` hides folder index pages (403).
- Faults, either as a path prefix or per path via `faults={"/videos/<ytid>": spec}`:
    /status/<code>/...   answer with that HTTP status
    /slow/...            sleep `slow_s` seconds first (past a client's timeout)
    /flaky/<n>/...       answer 503 the first n times a path is asked for, then serve
    /ratelimit/<n>/...   answer 429 (Too Many Requests) the first n times, then serve
  spec is "404", "500", "slow", "flaky:2" or "ratelimit:1".
- `FolderServer.delay_s` delays every response (a slow network, for kill-and-resume tests);
  `FolderServer.hits` counts requests per path, `FolderServer.sent` the bytes sent per path
  (the send buffer is kept small, as on a real network, so bytes a client hangs up on are not
  counted as sent), `FolderServer.log` holds (time, path, headers) of every request.
"""
from __future__ import annotations

import glob
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

_PREFIX = re.compile(r"^/(?:status/(?P<code>\d{3})|(?P<slow>slow)|flaky/(?P<flaky>\d+)|ratelimit/(?P<limit>\d+))"
                     r"(?P<rest>/.*)$")
SEND_BUFFER = 16384  # bytes: what a client that hangs up may leave unread
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class FolderServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: str | Path, faults: dict[str, str] | None = None, slow_s: float = 5.0,
                 ranges: str = "serve", listing: bool = True):
        self.folder = Path(folder)
        self.ranges, self.listing = ranges, listing
        self.sent: dict[str, int] = {}
        self.log: list[tuple[float, str, dict]] = []
        self.faults = faults if faults is not None else {}  # kept by reference: callers may edit it
        self.slow_s = slow_s
        self.delay_s = 0.0
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), partial(_Handler, directory=str(self.folder)))

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out and hang up are expected here, not worth a traceback

    def count(self, path: str, headers: dict) -> int:
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            self.log.append((time.time(), path, headers))
            return self.hits[path]

    def add_sent(self, path: str, n: int) -> None:
        with self.lock:
            self.sent[path] = self.sent.get(path, 0) + n

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "FolderServer":
        threading.Thread(target=self.serve_forever, name="demo-folder-server", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Handler(SimpleHTTPRequestHandler):
    server: FolderServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        super().setup()

    def copyfile(self, source, outputfile) -> None:
        path, server = self.path.split("?", 1)[0], self.server

        class Counted:
            def write(self, data) -> int:
                written = outputfile.write(data)
                server.add_sent(path, len(data))
                return written

        super().copyfile(source, Counted())

    def list_directory(self, path):
        if not self.server.listing:
            self.send_error(403, "no index pages here")
            return None
        return super().list_directory(path)

    def send_head(self):
        path = self.path.split("?", 1)[0]
        hits = self.server.count(path, dict(self.headers))
        time.sleep(self.server.delay_s)
        spec, path = _fault_of(path, self.server.faults)
        if spec and not self._apply_fault(spec, hits):
            return None
        self.path = _resolve_extension(self.server.folder, path)
        return self._send_file()

    def _apply_fault(self, spec: str, hits: int) -> bool:
        """Returns True when the request should be served after all."""
        if spec == "slow":
            time.sleep(self.server.slow_s)
            return True
        if spec.startswith(("flaky:", "ratelimit:")):
            if hits > int(spec.split(":")[1]):
                return True
            code = 503 if spec.startswith("flaky:") else 429
        else:
            code = int(spec)
        self.send_error(code)
        return False

    def _send_file(self):
        """SimpleHTTPRequestHandler.send_head plus single byte ranges."""
        match = _RANGE.match(self.headers.get("Range", "").strip())
        fs_path = self.translate_path(self.path)
        if match and self.server.ranges == "refuse":
            self.send_error(416)
            return None
        if not match or not os.path.isfile(fs_path) or self.server.ranges == "ignore":
            return super().send_head()
        size = os.path.getsize(fs_path)
        first, last = match.groups()
        start = int(first) if first else max(size - int(last or 0), 0)
        stop = min(int(last), size - 1) if first and last else size - 1
        if start >= size:
            self.send_error(416)
            return None
        f = open(fs_path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(fs_path))
        self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
        self.send_header("Content-Length", str(stop - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return _Limited(f, stop - start + 1)


class _Limited:
    """A file object that stops after n bytes (copyfile reads until EOF)."""

    def __init__(self, f, n: int):
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.f.read(size)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


def _fault_of(path: str, faults: dict[str, str]) -> tuple[str | None, str]:
    match = _PREFIX.match(path)
    if match:
        code, slow, flaky, limit, rest = match.group("code", "slow", "flaky", "limit", "rest")
        return (code or (slow and "slow") or (flaky and f"flaky:{flaky}") or f"ratelimit:{limit}"), rest
    return faults.get(path), path


def _resolve_extension(folder: Path, path: str) -> str:
    """Map an extension-less path to the single file that has it as stem."""
    target = folder / path.lstrip("/")
    if target.exists() or not target.parent.is_dir():
        return path
    matches = sorted(p for p in target.parent.glob(glob.escape(target.name) + ".*") if p.is_file())
    return "/" + matches[0].relative_to(folder).as_posix() if len(matches) == 1 else path


@contextmanager
def serve_folder(folder: str | Path, faults: dict[str, str] | None = None,
                 slow_s: float = 5.0) -> Iterator[str]:
    """Serve `folder` on a random loopback port; yields its base URL.

    Use `FolderServer(folder, faults, slow_s)` as a context manager instead to
    change `delay_s` or read `hits` while it runs.
    """
    with FolderServer(Path(folder), faults, slow_s) as server:
        yield server.base_url
