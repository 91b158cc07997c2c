"""docker-compose.yml, checked two ways (no Docker engine on these machines):

1. parsed: services, database URL, auth, published ports, shared volume,
   healthchecks and restart policies;
2. run: the same services as plain processes on 127.0.0.1 (PostgreSQL from
   Debian's packages, `prefect server start` on it with basic auth, a process
   worker on the `decar-compose` pool, `dask scheduler` and two `dask worker`),
   `prefect deploy` of prefect.yaml's `compose` deployment and
   `prefect deployment run pretrain-decar/compose` for one epoch.

The process commands and environment variable names below are the compose
file's, with host names and ports swapped for local ones: test 1 checks that.
"""
from __future__ import annotations

import base64
import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from demo.prefect_server import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
POOL = "decar-compose"

# What the process test runs, in the compose file's words ({...}: local host/port).
PROCESS_COMMANDS = {
    "prefect-server": ["prefect", "server", "start", "--host", "{host}", "--port", "{api_port}"],
    "prefect-worker": ["prefect", "worker", "start", "--pool", POOL, "--type", "process"],
    "dask-scheduler": ["dask", "scheduler", "--host", "{host}", "--port", "{scheduler_port}",
                       "--dashboard-address", "{host}:{dashboard_port}"],
    "dask-worker": ["dask", "worker", "{scheduler}", "--nworkers", "1", "--nthreads", "1",
                    "--dashboard-address", "{host}:{worker_dashboard_port}"],
}
SERVER_ENV = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_SERVER_API_AUTH_STRING")
CLIENT_ENV = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "DECAR_APP_DIR")
COMPOSE_PORTS = {"host": "0.0.0.0", "api_port": "4200", "scheduler_port": "8786", "dashboard_port": "8787",
                 "scheduler": "tcp://dask-scheduler:8786", "worker_dashboard_port": "8788"}


def fill(command: list[str], values: dict) -> list[str]:
    return [part.format(**values) for part in command]


def compose_deployment() -> dict:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = [d for d in config["deployments"]
             if d["name"] == "compose" and d["entrypoint"] == "flows/pretrain.py:pretrain_decar"]
    assert len(found) == 1, "prefect.yaml needs exactly one `compose` deployment of pretrain-decar"
    return found[0]


# ------------------------------------------------------------------------- 1. the file itself

def test_compose_services_match_the_process_topology():
    assert set(SERVICES) == {"postgres", "prefect-server", "prefect-worker", "dask-scheduler", "dask-worker"}
    for name, service in SERVICES.items():
        assert service.get("restart") in ("unless-stopped", "always"), f"{name}: no restart policy"
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"

    # The commands are the ones the process test runs, modulo host and port.
    for name, command in PROCESS_COMMANDS.items():
        assert SERVICES[name]["command"] == fill(command, COMPOSE_PORTS), name

    # Prefect server: PostgreSQL through asyncpg, basic auth from the env file, UI on localhost only.
    server = SERVICES["prefect-server"]
    env = server["environment"]
    assert set(SERVER_ENV) <= set(env)
    assert re.fullmatch(r"postgresql\+asyncpg://\$\{POSTGRES_USER[^}]*\}:\$\{POSTGRES_PASSWORD[^}]*\}"
                        r"@postgres:5432/\$\{POSTGRES_DB[^}]*\}", env["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    assert env["PREFECT_SERVER_API_AUTH_STRING"].startswith("${DECAR_AUTH_STRING:?")  # required, no default
    assert server["ports"] == ["127.0.0.1:4200:4200"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/api/health" in " ".join(server["healthcheck"]["test"])  # stays open with auth on
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert not SERVICES["postgres"].get("ports"), "the database must not be published"

    # Dask: dashboard published on localhost only; workers scalable (no fixed name or host port).
    assert SERVICES["dask-scheduler"]["ports"] == ["127.0.0.1:8787:8787"]
    worker = SERVICES["dask-worker"]
    assert "container_name" not in worker and not worker.get("ports")
    assert worker["deploy"]["replicas"] >= 2

    # One shared volume, at the same path in the Prefect worker and every Dask worker; clients
    # talk to the server with the same credentials and share result storage on it.
    for name in ("prefect-worker", "dask-worker"):
        service = SERVICES[name]
        assert service["volumes"] == ["shared:/shared"], name
        env = service["environment"]
        assert set(CLIENT_ENV) <= set(env), name
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["PREFECT_API_AUTH_STRING"] == server["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
        assert env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"].startswith("/shared/")
        assert env["DECAR_APP_DIR"] == "/app"
    assert set(COMPOSE["volumes"]) == {"postgres", "shared"}

    # The compose deployment attaches to the compose scheduler and runs the image's /app code.
    deployment = compose_deployment()
    assert deployment["work_pool"]["name"] == POOL == SERVICES["prefect-worker"]["command"][4]
    assert deployment["parameters"]["dask_address"] == COMPOSE_PORTS["scheduler"]
    assert deployment["parameters"]["runs_dir"].startswith("/shared/")
    assert deployment["pull"] == [{"prefect.deployments.steps.set_working_directory":
                                   {"directory": "{{ $DECAR_APP_DIR }}"}}]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M) and "DECAR_APP_DIR=/app" in dockerfile
    assert "ln -s /shared/data /app/data" in dockerfile and "ln -s /shared/runs /app/runs" in dockerfile


def test_no_credentials_in_the_repository():
    example = (ROOT / "deploy" / ".env.example").read_text()
    values = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    assert {"POSTGRES_PASSWORD", "DECAR_AUTH_STRING"} <= set(values)
    assert "change-me" in values["POSTGRES_PASSWORD"] and "change-me" in values["DECAR_AUTH_STRING"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"^\s*\w*(PASSWORD|AUTH_STRING)\w*:\s+[^$\s]", text, re.M)  # all from .env


# ------------------------------------------------------------------------- 2. the processes

def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class Processes:
    """Child processes (never through a shell), stopped in reverse order."""

    def __init__(self, logs: Path):
        self.logs, self.items = logs, []

    def start(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, **kwargs)
        self.items.append((name, process))
        return process

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for _, process in reversed(self.items):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self.items):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Postgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (run as `postgres` when we are root)."""

    def __init__(self, bindir: Path, base: Path, processes: Processes):
        self.bindir, self.base, self.processes = bindir, base, processes
        self.port, self.user, self.password, self.db = free_port(), "prefect", "pg-secret-for-tests", "prefect"
        self.as_user = {}
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
            self.as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(base, entry.pw_uid, entry.pw_gid)
        base.chmod(0o700)

    @property
    def env(self) -> dict:
        return {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "5"}

    def start(self) -> None:
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            os.chown(pwfile, self.as_user["user"], self.as_user["group"])
        data = self.base / "data"
        subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
                        "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, cwd=self.base, **self.as_user)
        self.processes.start("postgres", [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port),
                                          "-h", "127.0.0.1", "-k", str(self.base), "-c", "fsync=off"],
                             cwd=self.base, **self.as_user)
        deadline = time.monotonic() + 60
        while subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "PostgreSQL did not start:\n" + self.processes.log("postgres")
            time.sleep(0.3)
        self.psql("postgres", f"CREATE DATABASE {self.db}")

    def psql(self, db: str, sql: str) -> str:
        out = subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                              "-d", db, "-tAc", sql], check=True, capture_output=True, text=True, env=self.env)
        return out.stdout.strip()

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.db}"


def api(url: str, auth: str | None, method: str = "GET", body: dict | None = None):
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_process_topology(tmp_path, dask_address):
    """The compose stack as processes: deploy prefect.yaml's `compose` and run one epoch on it."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (`.ci/run` installs Debian's `postgresql` package as root)")
    from distributed import Client

    from flows.features import cache_features
    from tests.helpers import tone_manifest

    # Features first, on the session's server: 300 clips = two embedding shards of 256 (one per worker).
    shared = tmp_path / "shared"
    manifest = tone_manifest(shared / "data", n=300, seconds=0.5)
    features = cache_features(str(manifest), data_dir=str(shared / "data"), shard_size=128,
                              dask_address=dask_address)

    base = Path(tempfile.mkdtemp(prefix="decar-pg-", dir="/tmp"))  # readable by the postgres user
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = Processes(logs)
    try:
        pg = Postgres(bindir, base, processes)
        pg.start()

        auth = "decar:api-secret-for-tests"
        local = {"host": "127.0.0.1", "api_port": str(free_port()), "scheduler_port": str(free_port()),
                 "dashboard_port": str(free_port())}
        local["scheduler"] = f"tcp://127.0.0.1:{local['scheduler_port']}"
        api_url = f"http://127.0.0.1:{local['api_port']}/api"
        quiet = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        server_env = {**inherited, **quiet, "PREFECT_HOME": str(tmp_path / "server-home"),
                      "PREFECT_SERVER_DATABASE_CONNECTION_URL": pg.url,
                      "PREFECT_SERVER_API_AUTH_STRING": auth}
        client_env = {**inherited, **quiet, "PREFECT_HOME": str(tmp_path / "client-home"),
                      "PREFECT_API_URL": api_url, "PREFECT_API_AUTH_STRING": auth,
                      "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(shared / "prefect-results"),
                      "DECAR_APP_DIR": str(ROOT), "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "INFO"}
        assert set(SERVER_ENV) <= set(server_env) and set(CLIENT_ENV) <= set(client_env)

        def argv(name: str, **extra) -> list[str]:
            command = fill(PROCESS_COMMANDS[name], {**local, **extra})
            return [str(BIN / command[0])] + command[1:]

        server = processes.start("prefect-server", argv("prefect-server"), env=server_env, cwd=tmp_path)
        processes.start("dask-scheduler", argv("dask-scheduler"), env=client_env, cwd=ROOT)
        for i in range(2):
            processes.start(f"dask-worker-{i}", argv("dask-worker", worker_dashboard_port=free_port()),
                            env=client_env, cwd=ROOT)
        try:
            wait_healthy(api_url, timeout=180, process=server)
        except Exception:
            pytest.fail("prefect server on PostgreSQL did not start:\n" + processes.log("prefect-server"))

        # Basic auth is on: no credentials, no API (the health endpoint stays open).
        with pytest.raises(urllib.error.HTTPError) as refused:
            api(f"{api_url}/flows/filter", None, "POST", {})
        assert refused.value.code == 401
        processes.start("prefect-worker", argv("prefect-worker"), env=client_env, cwd=tmp_path)

        with Client(local["scheduler"], timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            worker_pids = set(client.run(os.getpid).values())

        # Deploy prefect.yaml's `compose` deployment; DECAR_APP_DIR is left to the worker's side.
        deploy_env = {k: v for k, v in client_env.items() if k != "DECAR_APP_DIR"}
        deadline = time.monotonic() + 90
        while True:  # the worker creates the pool when it starts
            deployed = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name",
                                       "pretrain-decar/compose"], cwd=ROOT, env=deploy_env,
                                      capture_output=True, text=True, timeout=180)
            if deployed.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        runs = shared / "runs"
        params = {"features": features, "run_name": "compose-e2e", "runs_dir": str(runs), "epochs": 1,
                  "clusters": 4, "width_mult": 0.25, "batch_size": 8, "samples_per_epoch": 32, "allow_degenerate": True,
                  "dask_address": local["scheduler"], "device": "cpu"}
        command = [str(BIN / "prefect"), "deployment", "run", "pretrain-decar/compose"]
        for key, value in params.items():
            command += ["--param", f"{key}={json.dumps(value)}"]
        started = subprocess.run(command, cwd=tmp_path, env=client_env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout).group(1)

        deadline, state = time.monotonic() + 600, None
        while time.monotonic() < deadline:
            state = api(f"{api_url}/flow_runs/{flow_run_id}", auth)["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert state == "COMPLETED", (f"flow run {flow_run_id} ended {state}\n--- worker:\n"
                                      + processes.log("prefect-worker"))

        # Completed in PostgreSQL itself, with the deployment and pool of the compose stack.
        row = pg.psql(pg.db, "SELECT fr.state_type, d.name, wp.name FROM flow_run fr "
                             "JOIN deployment d ON d.id = fr.deployment_id "
                             "JOIN work_queue wq ON wq.id = d.work_queue_id "
                             "JOIN work_pool wp ON wp.id = wq.work_pool_id "
                             f"WHERE fr.id = '{flow_run_id}'")
        assert row == f"COMPLETED|compose|{POOL}"
        deployment = api(f"{api_url}/deployments/name/pretrain-decar/compose", auth)
        assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] \
            == "{{ $DECAR_APP_DIR }}"

        # Both Dask workers computed embedding shards (each shard record names its writer).
        records = [json.loads(p.read_text()) for p in
                   sorted((runs / "compose-e2e" / "epoch-000" / "embeddings.zarr" / "shards").glob("*.done.json"))]
        assert len(records) == 2
        writers = {int(r["worker"].rsplit(":", 1)[1]) for r in records}
        assert writers == worker_pids, (writers, worker_pids)
        assert (runs / "compose-e2e" / "epoch-000" / "checkpoint.pt").exists()
    finally:
        processes.stop()
        shutil.rmtree(base, ignore_errors=True)
