"""Start a local Prefect API server as a child process (demo, tests).

Dask worker processes and killed-and-rerun subprocesses must all talk to one
API; ephemeral mode would start a temporary server per process.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def quiet_prefect_env(env: dict | None = None) -> dict:
    env = dict(os.environ if env is None else env)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def wait_healthy(api_url: str, timeout: float = 90.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {process.returncode} before becoming healthy")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout:.0f} s")


def start_local_server(home: str | Path, port: int | None = None, log_path: str | Path | None = None,
                       extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start `prefect server start` with PREFECT_HOME=home; return (process, api_url).

    The UI is told its API's address (PREFECT_UI_API_URL): on any port but 4200 it would otherwise
    call 127.0.0.1:4200 ("Can't connect to Server API", or another server's data)."""
    port = port or free_port()
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = quiet_prefect_env()
    env["PREFECT_HOME"] = str(home)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    env.update(extra_env or {})
    log = open(log_path or home / "server.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(api_url, process=process)
    except Exception:
        process.kill()
        raise
    return process, api_url


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_ui(home: str | Path, port: int = 4200) -> None:
    """`decar ui` / `make ui`: the UI on the database in `home`, on `port` or a free port when it is
    taken, with the UI's API URL to match; prints the URL and serves until interrupted."""
    home = Path(home).resolve()
    port = port if port_free(port) else free_port()
    process, api_url = start_local_server(home, port=port, log_path=home / "ui-server.log")
    print(f"Prefect UI: {api_url.removesuffix('/api')}  (database in {home}; Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a terminated `decar ui` stops its server too
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_process(process)


@contextmanager
def local_prefect_api(home: Path):
    """A local Prefect server for this process, its Dask workers and its children: PREFECT_API_URL
    and PREFECT_HOME are set (before Prefect is imported, as Prefect reads them at import) and the
    server is stopped on exit. Used by the benchmark scripts."""
    server, api_url = start_local_server(home)
    os.environ.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home))
    try:
        yield api_url
    finally:
        stop_process(server)
