"""Loopback services for the tests and benchmarks: PostgreSQL in a temporary directory, a Prefect server
(SQLite or PostgreSQL), and deployment runs taken by a real process worker.

Everything binds to 127.0.0.1 and lives in temporary directories; every process is stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
SETUP_POSTGRES = REPO / "scripts" / "setup_postgres.sh"
PG_USER = "depthcurate"
# Lines of a server log that mean the database misbehaved (driver errors, SQLite locking, pool exhaustion).
DATABASE_TROUBLE = re.compile(
    r"sqlalchemy\.exc|asyncpg\.exceptions|sqlite3\.|database is locked|deadlock detected"
    r"|OperationalError|InterfaceError|QueuePool limit|too many clients",
    re.IGNORECASE,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL server's bin directory (/usr/lib/postgresql/<major>/bin), if installed."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0) if found else None


def install_postgres() -> Path:
    """Install PostgreSQL with scripts/setup_postgres.sh when missing; returns its bin directory."""
    if (found := postgres_bin_dir()) is not None:
        return found
    result = subprocess.run(["bash", str(SETUP_POSTGRES)], capture_output=True, text=True)
    if result.returncode != 0 or (found := postgres_bin_dir()) is None:
        raise RuntimeError(f"installing PostgreSQL failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return found


@dataclass(frozen=True)
class Postgres:
    url: str  # SQLAlchemy URL for Prefect (asyncpg driver); carries the generated password
    port: int
    data_dir: Path

    def pid(self) -> int:
        """The postmaster's process id."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def postgres_server(bin_dir: Path, database: str = "prefect") -> Iterator[Postgres]:
    """A throw-away PostgreSQL on 127.0.0.1 (free port, password auth, no Unix socket) with one database."""
    base = Path(tempfile.mkdtemp(prefix="depthcurate-pg-"))
    data, log, pwfile = base / "data", base / "postgres.log", base / "password"
    password = secrets.token_hex(16)
    pwfile.write_text(password + "\n")
    as_owner = _postgres_owner(base)
    port = free_port()
    try:
        _run(
            [
                *as_owner,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ]
        )
        with open(data / "postgresql.conf", "a") as conf:
            # No Unix socket: nothing to clash with the system's /var/run/postgresql, and TCP needs the password.
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n")
        _run([*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"], log=log)
        _run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, database],
            env={**os.environ, "PGPASSWORD": password},
        )
        yield Postgres(f"postgresql+asyncpg://{PG_USER}:{password}@127.0.0.1:{port}/{database}", port, data)
    finally:
        if (data / "postmaster.pid").exists():  # also after a start that timed out
            subprocess.run(
                [*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True
            )
        shutil.rmtree(base, ignore_errors=True)


def _postgres_owner(base: Path) -> list[str]:
    """Command prefix that runs PostgreSQL's tools as a non-root user (initdb refuses root); chowns `base`."""
    if os.geteuid() != 0:
        return []
    user = next((name for name in ("postgres", "nobody") if _user_exists(name)), None)
    if user is None:
        raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists for initdb")
    entry = pwd.getpwnam(user)
    for path in (base, *base.rglob("*")):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return ["runuser", "-u", user, "--"]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _run(command: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        server_log = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(
            f"{' '.join(command[:4])} ... failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}\n{server_log}"
        )


# ---------------------------------------------------------------- Prefect server


@dataclass(frozen=True)
class PrefectServer:
    env: dict[str, str]  # environment for clients (CLI, workers): API URL and PREFECT_HOME, no database secret
    port: int
    pid: int
    log: Path


@contextlib.contextmanager
def prefect_server(home: Path, database_url: str | None = None, cwd: Path = REPO) -> Iterator[PrefectServer]:
    """`prefect server start` on 127.0.0.1 (no UI); SQLite under `home` unless `database_url` is given."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PWD": str(cwd),
    }
    server_env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else env
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env=server_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
        try:
            wait_healthy(port, proc, log)
            yield PrefectServer(env, port, proc.pid, log)
        finally:
            stop(proc)


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"prefect server did not become healthy within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGINT (Prefect workers ignore SIGTERM), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def database_trouble(log: Path) -> list[str]:
    """Lines of a server log that report database errors."""
    return [line for line in log.read_text(errors="replace").splitlines() if DATABASE_TROUBLE.search(line)]


# ---------------------------------------------------------------- deployments


def prefect_cli(
    env: dict[str, str], *args: str, timeout: float = 300, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run the prefect CLI; fail with its output unless it exits 0."""
    result = subprocess.run([PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def deploy_all(env: dict[str, str], pool: str = "depthcurate") -> None:
    """Create the process work pool and register every deployment of prefect.yaml."""
    prefect_cli(env, "work-pool", "create", pool, "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "--all")


def create_flow_run(env: dict[str, str], name: str, *params: str) -> str:
    """Schedule a run of deployment `name` (params as key=value); returns its id."""
    created = prefect_cli(env, "deployment", "run", name, *[arg for p in params for arg in ("--param", p)]).stdout
    match = re.search(r"UUID: ([0-9a-f-]{36})", created)
    assert match is not None, f"prefect deployment run {name} printed no flow-run id:\n{created[-3000:]}"
    return match.group(1)


def run_flow_runs(
    env: dict[str, str], cwd: Path, run_ids: list[str], timeout: float = 420, pool: str = "depthcurate"
) -> Path:
    """One --run-once process worker takes every scheduled run; fail unless all of them complete.

    Returns the worker's log (`cwd`/worker.log: a file, since a full pipe would stall the worker)."""
    log = cwd / "worker.log"
    # The runs exist before the worker starts: a --run-once worker polls once and exits when it finds nothing.
    with open(log, "ab") as out:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--run-once"],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            for run_id in run_ids:
                result = subprocess.run(
                    [PREFECT, "flow-run", "watch", run_id],
                    env=env,
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
                assert result.returncode == 0, (
                    f"flow run {run_id} did not complete:\n{result.stdout[-2000:]}\n"
                    f"worker log:\n{log.read_text(errors='replace')[-4000:]}"
                )
            worker.wait(timeout=60)
        finally:
            stop(worker)
    return log


def run_deployment(env: dict[str, str], cwd: Path, name: str, *params: str) -> str:
    """Run deployment `name` with a process worker that takes one run and exits; fail unless it completes.

    Returns the flow run's id."""
    run_id = create_flow_run(env, name, *params)
    run_flow_runs(env, cwd, [run_id])
    return run_id


# ---------------------------------------------------------------- a load of small videos

# Curate settings for 1-second videos: no trims, decimation or split gap; `run.workers` videos in flight.
LOAD_CONFIG: dict[str, Any] = {
    "download": {"attempts": 1, "backoff_s": 0, "parallel": 4},
    "sample": {"fps": 5, "max_height": None, "trim": {"head_s": 0, "tail_s": 0}, "decimate": None},
    "split": {"gap_frames": 0},
    "run": {"workers": 4},
}


def build_load_sources(directory: Path, count: int, distinct: int = 4) -> list[str]:
    """`count` 1-second 64x36 videos (copies of `distinct` rendered and ffmpeg-encoded ones); returns file names."""
    from pipeline.io.storage import write_bytes_atomic
    from pipeline.synthetic.renderer import SceneSpec, render_video

    directory.mkdir(parents=True, exist_ok=True)
    encoded = [
        render_video(
            SceneSpec(width=64, height=36, fps=10.0, duration_s=1.0, seed=seed), directory / f"source_{seed}.mp4"
        ).read_bytes()
        for seed in range(distinct)
    ]
    names = [f"clip_{i:04d}.mp4" for i in range(count)]
    for i, name in enumerate(names):
        write_bytes_atomic(directory / name, encoded[i % distinct])
    return names


def write_load_catalog(path: Path, base_url: str, names: list[str], dataset: str) -> Path:
    """A catalog of the served files `names`, one entry each, ids from the file stems."""
    from pipeline.sources.catalog import CatalogEntry, write_catalog

    entries = [
        CatalogEntry(video_id=Path(name).stem, url=f"{base_url}/{name}", dataset=dataset, category="natural", seq=i)
        for i, name in enumerate(names)
    ]
    return write_catalog(entries, path)


def write_load_config(path: Path, workers: int = LOAD_CONFIG["run"]["workers"]) -> Path:
    """LOAD_CONFIG as a YAML file (JSON is YAML) with `run.workers` set."""
    import json

    path.write_text(json.dumps({**LOAD_CONFIG, "run": {"workers": workers}}))
    return path
