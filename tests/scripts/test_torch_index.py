"""scripts/torch_index.py: which torch build setup installs, decided from the GPU and the CPU index's reachability."""

from __future__ import annotations

import importlib.util
import os
import platform
import socket
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pipeline.synthetic.demo import serve_directory

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "torch_index.py"
_spec = importlib.util.spec_from_file_location("torch_index", SCRIPT)
assert _spec is not None and _spec.loader is not None
torch_index = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_index)

PLAIN = ["torch==2.13.0", "torchvision==0.28.0"]
CPU = [*PLAIN, "--index-url", torch_index.CPU_INDEX, "--extra-index-url", "https://pypi.org/simple"]


@pytest.mark.parametrize(
    "gpu, linux, cpu_index, reachable, expected, why",
    [
        (False, True, torch_index.CPU_INDEX, True, CPU, "CPU build"),
        (False, True, torch_index.CPU_INDEX, False, PLAIN, "unreachable"),
        (False, True, "", False, PLAIN, "switched off"),
        (True, True, torch_index.CPU_INDEX, True, PLAIN, "CUDA build"),
        (True, True, torch_index.CPU_INDEX, False, PLAIN, "CUDA build"),
        (False, False, torch_index.CPU_INDEX, True, PLAIN, "PyPI"),
    ],
)
def test_the_decision_table(gpu, linux, cpu_index, reachable, expected, why):
    args, reason = torch_index.pip_args(gpu, linux, cpu_index, reachable)
    assert args == expected and why in reason


def test_the_pins_are_what_pyproject_allows():
    installed = map(Requirement, metadata.requires("depthcurate") or [])  # pyproject.toml's, as installed
    ranges = {r.name: r.specifier for r in installed if r.marker is None}
    for pin in map(Requirement, torch_index.PINS):
        (version,) = (s.version for s in pin.specifier)
        assert ranges[pin.name].contains(version), (pin, ranges[pin.name])


def test_a_gpu_is_found_by_nvidia_smi_or_the_driver(tmp_path, monkeypatch):
    monkeypatch.delenv("DEPTHCURATE_NVIDIA_GPU", raising=False)
    tools, driver = tmp_path / "bin", tmp_path / "proc_driver_nvidia"
    tools.mkdir()
    assert not torch_index.nvidia_gpu_present(str(tools), driver)
    smi = tools / "nvidia-smi"
    smi.write_text("#!/bin/sh\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    assert torch_index.nvidia_gpu_present(str(tools), driver)
    smi.unlink()
    driver.mkdir()
    assert torch_index.nvidia_gpu_present(str(tools), driver)
    monkeypatch.setenv("DEPTHCURATE_NVIDIA_GPU", "0")
    assert not torch_index.nvidia_gpu_present(str(tools), driver)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/whl/cpu"  # nothing listens there now: connection refused


def test_reachability_is_probed_for_real(tmp_path):
    (tmp_path / "whl" / "cpu").mkdir(parents=True)
    (tmp_path / "whl" / "cpu" / "index.html").write_text("<a href='torch/'>torch</a>")
    with serve_directory(tmp_path) as base:
        assert torch_index.index_reachable(f"{base}/whl/cpu")
        assert not torch_index.index_reachable(f"{base}/whl/cu999")  # a 404 is no index either
    assert not torch_index.index_reachable(_closed_port_url())


@pytest.mark.skipif(platform.system() != "Linux", reason="the CPU index is used on Linux only")
def test_the_script_prints_the_pip_arguments_and_says_why(tmp_path):
    (tmp_path / "whl" / "cpu").mkdir(parents=True)
    (tmp_path / "whl" / "cpu" / "index.html").write_text("")
    env = {**os.environ, "DEPTHCURATE_NVIDIA_GPU": "0"}
    with serve_directory(tmp_path) as base:
        index = f"{base}/whl/cpu"
        run = subprocess.run(
            [sys.executable, str(SCRIPT)],
            env={**env, "DEPTHCURATE_TORCH_CPU_INDEX": index},
            capture_output=True,
            text=True,
        )
    assert run.returncode == 0 and run.stdout.split() == [*PLAIN, "--index-url", index, "--extra-index-url", CPU[-1]]
    assert run.stderr.startswith("[setup] no NVIDIA GPU: torch's CPU build")
    closed = _closed_port_url()
    run = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env={**env, "DEPTHCURATE_TORCH_CPU_INDEX": closed},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and run.stdout.split() == PLAIN
    assert run.stderr.startswith(f"[setup] no NVIDIA GPU, but {closed} is unreachable")


def test_setup_installs_what_the_script_prints():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'torch_args=$("$VENV/bin/python" scripts/torch_index.py)' in setup
    assert '"$VENV/bin/pip" install -q $torch_args' in setup
