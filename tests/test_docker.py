"""docker/: the compose file's wiring and the Dockerfiles' inputs, checked without a Docker daemon."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _defaults(text: str, given: dict[str, str] | None = None) -> str:
    """Compose's interpolation as a user without a .env sees it: ${VAR:-default} -> default, ${VAR:?err} -> given."""
    given = given or {}

    def value(match: re.Match) -> str:
        name, kind, rest = match.groups()
        if name in given:
            return given[name]
        assert kind == "-", f"${{{name}}} has no default and is not required with :?"
        return rest

    return _VARIABLE.sub(value, text)


def test_compose_runs_server_on_postgres_with_a_worker_and_an_optional_gpu_trainer(compose):
    services = compose["services"]
    assert {"postgres", "server", "worker", "trainer"} <= set(services)
    assert "prefect server start" in " ".join(services["server"]["command"])
    assert services["server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://server:4200/api"
    assert services["worker"]["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["server"]["image"] == services["worker"]["image"]  # server and worker: one Prefect release
    trainer = services["trainer"]
    assert trainer["profiles"] == ["gpu"]  # `up` without --profile gpu works on machines without a GPU
    device = trainer["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_the_server_database_url_names_the_postgres_service_and_its_credentials(compose):
    postgres, server = compose["services"]["postgres"]["environment"], compose["services"]["server"]["environment"]
    given = {"POSTGRES_PASSWORD": "s3cret"}
    url = _defaults(server["PREFECT_API_DATABASE_CONNECTION_URL"], given)
    user, password, database = (
        _defaults(postgres[k], given) for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    )
    assert url == f"postgresql+asyncpg://{user}:{password}@postgres:5432/{database}"


def test_no_credentials_are_written_into_the_compose_file(compose):
    password = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?")  # required from docker/.env or the shell; no default
    assert (
        "${POSTGRES_PASSWORD:?" in compose["services"]["server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    example = (DOCKER / "env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.MULTILINE)  # documented, left empty
    assert "docker/.env" in (REPO / ".gitignore").read_text().splitlines()


def test_published_ports_bind_to_loopback_by_default(compose):
    published = [(name, port) for name, service in compose["services"].items() for port in service.get("ports", [])]
    assert published, "the server's port should be published"
    for name, port in published:
        parts = _defaults(port).split(":")
        host_ip = parts[0] if len(parts) == 3 else ""  # HOST_IP:HOST_PORT:CONTAINER_PORT
        assert host_ip == "127.0.0.1", f"{name} publishes {port} on {host_ip or 'every interface'}"
    assert "ports" not in compose["services"]["postgres"]  # only the server talks to the database


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_every_copied_file_exists_and_is_in_the_build_context(dockerfile):
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = [
        src
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
        if not src.startswith("--")
    ]
    assert sources and {".git", ".venv", "data"} <= ignored  # local state stays out of the build context
    for src in sources:
        assert (REPO / src).exists(), f"{dockerfile.name} copies {src}, which is not in the repository"
        assert src.split("/")[0] not in ignored, f"{dockerfile.name} copies {src}, which .dockerignore excludes"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_images_pin_the_torch_that_setup_installs_and_ship_ffmpeg(dockerfile):
    text = dockerfile.read_text()
    # setup.sh installs the pins scripts/torch_index.py gives.
    pins = re.findall(r'"((?:torch|torchvision)==[\d.]+)"', (REPO / "scripts" / "torch_index.py").read_text())
    assert len(pins) == 2 and all(f'"{pin}"' in text for pin in pins)
    assert "ffmpeg" in text and "pip install --no-cache-dir -e ." in text


def test_the_worker_serves_the_work_pool_of_the_deployments():
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    command = (DOCKER / "worker.Dockerfile").read_text()
    assert pools == {"depthcurate"} and "--pool depthcurate" in command and "deploy --all" in command


def test_trainer_image_has_a_cuda_base_and_runs_the_trainer_cli():
    text = (DOCKER / "trainer.Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+", text, re.MULTILINE) and "FROM ${CUDA_IMAGE}" in text
    assert 'ENTRYPOINT ["python", "-m", "trainer"]' in text


def _has_compose() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(not _has_compose(), reason="the docker compose plugin is not installed")
def test_docker_compose_accepts_the_file():
    env = {**os.environ, "POSTGRES_PASSWORD": "s3cret"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "--profile", "gpu", "config", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
