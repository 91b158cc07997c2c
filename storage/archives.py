"""Resumable downloads and safe archive extraction (no Prefect, no shell).

download_file: bytes go to `<dest>.part`; a rerun continues it with an HTTP
Range request (a server that ignores Range restarts it cleanly); the complete
file is checked (size, sha256) and renamed onto `dest`, so a file under its
final name is always whole.

safe_extract: every member is checked before anything is written (absolute
paths, `..` escapes, links pointing outside, device files are refused with
UnsafeArchiveError naming the member); members go into a temporary sibling of
the target, which is renamed into place with a marker file, so a rerun skips a
finished extraction and a killed one leaves no half-filled target.
"""
from __future__ import annotations

import http.client
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from storage.atomic import atomic_path, fsync_dir, read_json, write_json
from storage.records import file_sha256

CHUNK = 1 << 20
MARKER = ".extracted.json"


class DownloadError(RuntimeError):
    pass


class UnsafeArchiveError(RuntimeError):
    pass


# ---------------------------------------------------------------- download

def download_file(url: str, dest: str | Path, timeout: float = 60, retries: int = 3,
                  sha256: str | None = None, size: int | None = None) -> Path:
    """Fetch `url` (http(s)://, file:// or a local path) to `dest`, resuming a partial download."""
    dest = Path(dest)
    if dest.exists():
        _verify(dest, url, sha256, size, remove_bad=False)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    fetch = _fetch_http if urlparse(url).scheme in ("http", "https") else _fetch_local
    for attempt in range(retries + 1):
        try:
            fetch(url, part, timeout)
            break
        except _Permanent as exc:
            raise DownloadError(f"cannot download {url}: {exc}") from None
        except (OSError, http.client.HTTPException, _Incomplete) as exc:  # network trouble: resume later
            if attempt == retries:
                raise DownloadError(f"cannot download {url} after {retries + 1} attempts: {exc}; "
                                    f"the partial file {part} is kept and a rerun resumes it") from exc
            time.sleep(min(2 ** attempt, 10))
    _verify(part, url, sha256, size, remove_bad=True)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


class _Permanent(Exception):
    """An error retrying will not fix (404, bad local path)."""


class _Incomplete(Exception):
    pass


def _fetch_http(url: str, part: Path, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "decar-pipeline"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # Range past the end: the part is complete if its size is the total, else start over.
            total = _total_from_content_range(exc.headers.get("Content-Range", ""))
            if total == have:
                return
            part.unlink()
            raise _Incomplete(f"server refused to resume at byte {have}; restarting") from None
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise _Permanent(f"HTTP {exc.code} {exc.reason}") from None
        raise
    with response:
        if have and response.status == 206:
            start = _start_from_content_range(response.headers.get("Content-Range", ""))
            if start != have:  # a confused server: start over rather than splice wrong bytes
                part.unlink()
                raise _Incomplete(f"asked to resume at byte {have}, server answered "
                                  f"Content-Range {response.headers.get('Content-Range')!r}; restarting")
            mode, offset = "ab", have
        else:  # 200: the server ignores Range (or there was nothing to resume): start from zero
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        expected_total = offset + int(length) if length is not None else None
        with open(part, mode) as out:
            shutil.copyfileobj(response, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
    got = part.stat().st_size
    if expected_total is not None and got != expected_total:
        raise _Incomplete(f"connection closed at byte {got} of {expected_total}")


def _fetch_local(url: str, part: Path, timeout: float) -> None:
    parsed = urlparse(url)
    source = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
    if not source.is_file():
        raise _Permanent(f"no such file: {source}")
    have = part.stat().st_size if part.exists() else 0
    if have > source.stat().st_size:
        have = 0
    with open(source, "rb") as src, open(part, "r+b" if have else "wb") as out:
        src.seek(have)
        out.seek(have)
        shutil.copyfileobj(src, out, CHUNK)
        out.truncate()
        out.flush()
        os.fsync(out.fileno())


def _start_from_content_range(value: str) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _total_from_content_range(value: str) -> int | None:
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _verify(path: Path, url: str, sha256: str | None, size: int | None, remove_bad: bool) -> None:
    problem = None
    if size is not None and path.stat().st_size != size:
        problem = f"size {path.stat().st_size} bytes, expected {size}"
    elif sha256 and file_sha256(path) != sha256.lower():
        problem = f"sha256 {file_sha256(path)}, expected {sha256}"
    if problem:
        if remove_bad:
            path.unlink(missing_ok=True)
        raise DownloadError(f"{path} (from {url}) has {problem}"
                            + ("; removed, rerun to download again" if remove_bad else "; delete it to download again"))


# ---------------------------------------------------------------- extraction

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2")


def is_archive(name: str | Path) -> bool:
    return str(name).lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(name: str | Path) -> str:
    """'a.tar.gz' -> 'a', 'b.zip' -> 'b'."""
    name = Path(name).name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_extracted(archive: str | Path, target: str | Path) -> bool:
    marker = Path(target) / MARKER
    if not marker.exists():
        return False
    try:
        info = read_json(marker)
    except (OSError, ValueError):
        return False
    return info == _archive_identity(Path(archive))


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a .zip / .tar / .tar.gz / .tgz / .tar.bz2 into `target`; skip if already done."""
    archive, target = Path(archive), Path(target)
    if is_extracted(archive, target):
        return target
    name = archive.name.lower()
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        if name.endswith(".zip"):
            _extract_zip(archive, tmp)
        elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2")):
            _extract_tar(archive, tmp)
        else:
            raise ValueError(f"{archive}: unsupported archive type (expected one of {ARCHIVE_SUFFIXES})")
        write_json(tmp / MARKER, _archive_identity(archive))
    return target


def _archive_identity(archive: Path) -> dict:
    st = archive.stat()
    return {"archive": archive.name, "size": st.st_size}


def _inside(member: str, relative_to: PurePosixPath = PurePosixPath(".")) -> bool:
    """Whether `member` (posix, relative to the folder `relative_to`) stays inside the root, lexically."""
    parts: list[str] = []
    for part in (relative_to / member).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return False
            parts.pop()
        else:
            parts.append(part)
    return True


def _check_name(archive: Path, name: str) -> str:
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if not _inside(clean):
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the extraction folder")
    return clean


def _check_link(archive: Path, name: str, link: str, symbolic: bool) -> None:
    if link.startswith("/"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} links to the absolute path {link!r}")
    # a symlink is relative to its own folder, a hard link to the archive root
    base = PurePosixPath(name).parent if symbolic else PurePosixPath(".")
    if not _inside(link, base):
        raise UnsafeArchiveError(f"{archive}: member {name!r} links outside the extraction folder ({link!r})")


def _check_resolved(archive: Path, name: str, root: Path, path: Path) -> None:
    """Lexical checks miss links chained through links already extracted: check the real path too."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside the extraction folder")


def _extract_tar(archive: Path, tmp: Path) -> None:
    root = Path(os.path.realpath(tmp))
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # one pass: a .tar.gz is decompressed once
            _check_name(archive, member.name)
            if member.ischr() or member.isblk() or member.isfifo() or not (
                    member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device or special file")
            if member.issym() or member.islnk():
                _check_link(archive, member.name, member.linkname, symbolic=member.issym())
            _check_resolved(archive, member.name, root, root / member.name)
            if member.islnk():
                _check_resolved(archive, member.name, root, root / member.linkname)
            try:  # the stdlib 'data' filter re-checks real paths and drops odd permission bits
                tar.extract(member, tmp, filter="data")
            except tarfile.FilterError as exc:
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} refused: {exc}") from None


def _extract_zip(archive: Path, tmp: Path) -> None:
    root = Path(os.path.realpath(tmp))
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = _check_name(archive, info.filename)
            mode = info.external_attr >> 16
            dest = root / name
            _check_resolved(archive, info.filename, root, dest)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode()
                _check_link(archive, name, link, symbolic=True)
                _check_resolved(archive, info.filename, root, dest.parent / link)
                os.symlink(link, dest)
                continue
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: made by a tool that stores no file type
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a device or special file")
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
