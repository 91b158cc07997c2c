"""Resumable downloads over real loopback HTTP, and refusal of unsafe archive members."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from storage.archives import DownloadError, UnsafeArchiveError, download_file, safe_extract


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files; honours `Range: bytes=N-` unless the server says not to; can cut the first reply short."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.ranges.append(self.headers.get("Range"))
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        requested = self.headers.get("Range")
        if requested and self.server.supports_range:
            start = int(requested.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:  # simulate a dropped connection once
            body, self.server.cut_after = body[: self.server.cut_after], None
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: RangeHandler(*a, directory=str(root)))
    httpd.ranges, httpd.supports_range, httpd.cut_after = [], True, None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _payload(size: int = 300_000) -> bytes:
    return os.urandom(size)


def test_partial_download_is_completed_with_a_range_request(server, tmp_path):
    httpd, root, base = server
    data = _payload()
    (root / "big.bin").write_bytes(data)
    dest = tmp_path / "out" / "big.bin"
    dest.parent.mkdir()
    dest.with_name("big.bin.part").write_bytes(data[:100_000])

    download_file(f"{base}/big.bin", dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    assert dest.read_bytes() == data
    assert httpd.ranges == ["bytes=100000-"]
    assert not dest.with_name("big.bin.part").exists()
    download_file(f"{base}/big.bin", dest)  # complete: no request at all
    assert len(httpd.ranges) == 1


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    httpd, root, base = server
    httpd.supports_range = False
    data = _payload()
    (root / "big.bin").write_bytes(data)
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(b"stale bytes from another version" * 100)

    download_file(f"{base}/big.bin", dest)

    assert dest.read_bytes() == data
    assert httpd.ranges == ["bytes=3200-"]


def test_dropped_connection_is_resumed_on_retry(server, tmp_path):
    httpd, root, base = server
    data = _payload()
    (root / "big.bin").write_bytes(data)
    httpd.cut_after = 120_000

    dest = download_file(f"{base}/big.bin", tmp_path / "big.bin", retries=2)

    assert dest.read_bytes() == data
    assert httpd.ranges == [None, "bytes=120000-"]


def test_bad_checksum_and_missing_file_are_errors(server, tmp_path):
    httpd, root, base = server
    (root / "f.bin").write_bytes(b"abc")
    with pytest.raises(DownloadError, match="sha256"):
        download_file(f"{base}/f.bin", tmp_path / "f.bin", sha256="0" * 64)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{base}/nope.bin", tmp_path / "nope.bin")
    assert len(httpd.ranges) == 2  # a 404 is not retried


def test_local_paths_and_file_urls(tmp_path):
    source = tmp_path / "src.bin"
    data = _payload(50_000)
    source.write_bytes(data)
    part = tmp_path / "a.bin.part"
    part.write_bytes(data[:1000])
    assert download_file(str(source), tmp_path / "a.bin").read_bytes() == data
    assert download_file(source.as_uri(), tmp_path / "b.bin").read_bytes() == data


# ---------------------------------------------------------------- extraction

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _untouched(tmp_path: Path, archive: Path) -> None:
    """Nothing but the archive is left beside the target, and the target does not exist."""
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]


@pytest.mark.parametrize("members, culprit", [
    ([_file("ok.txt"), _file("../evil.txt")], "../evil.txt"),
    ([_file("a/../../evil.txt")], "a/../../evil.txt"),
    ([_file("/tmp/decar-abs-evil.txt")], "/tmp/decar-abs-evil.txt"),
    ([_link("up", "../../outside")], "up"),
    ([_link("etc", "/etc")], "etc"),
    ([_file("ok.txt"), _link("hard", "../ok.txt", tarfile.LNKTYPE)], "hard"),
    ([_link("d/a", ".."), _link("d/a/b", "..")], "d/a/b"),  # link chained through an extracted link
])
def test_unsafe_tar_members_are_refused(tmp_path, members, culprit):
    archive = _tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(UnsafeArchiveError) as error:
        safe_extract(archive, tmp_path / "target")
    assert repr(culprit) in str(error.value)
    _untouched(tmp_path, archive)
    assert not Path("/tmp/decar-abs-evil.txt").exists()


def test_device_files_are_refused(tmp_path):
    device = tarfile.TarInfo("dev/null")
    device.type = tarfile.CHRTYPE
    archive = _tar(tmp_path / "dev.tar", [(device, None)], mode="w")
    with pytest.raises(UnsafeArchiveError, match="device"):
        safe_extract(archive, tmp_path / "target")
    _untouched(tmp_path, archive)


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize("members, culprit", [
    ([("ok.txt", b"x"), ("../evil.txt", b"x")], "../evil.txt"),
    ([(zipfile.ZipInfo("/tmp/decar-abs-evil.txt"), b"x")], "/tmp/decar-abs-evil.txt"),
    ([_zip_symlink("up", "../../outside")], "up"),
])
def test_unsafe_zip_members_are_refused(tmp_path, members, culprit):
    archive = _zip(tmp_path / "bad.zip", members)
    with pytest.raises(UnsafeArchiveError) as error:
        safe_extract(archive, tmp_path / "target")
    assert repr(culprit) in str(error.value)
    _untouched(tmp_path, archive)


@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar.bz2", "w:bz2"),
                                          (".tar", "w"), (".zip", None)])
def test_safe_archives_extract_once(tmp_path, suffix, mode):
    archive = tmp_path / f"good{suffix}"
    if mode is None:
        _zip(archive, [("top/a.txt", b"alpha"), ("top/sub/b.txt", b"beta"), _zip_symlink("top/link", "a.txt")])
    else:
        _tar(archive, [_file("top/a.txt", b"alpha"), _file("top/sub/b.txt", b"beta"), _link("top/link", "a.txt")],
             mode)
    target = safe_extract(archive, tmp_path / "target")
    assert (target / "top" / "a.txt").read_bytes() == b"alpha"
    assert (target / "top" / "sub" / "b.txt").read_bytes() == b"beta"
    assert (target / "top" / "link").read_bytes() == b"alpha"

    (target / "top" / "a.txt").unlink()  # a rerun sees the marker and does not extract again
    safe_extract(archive, tmp_path / "target")
    assert not (target / "top" / "a.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "target"])
