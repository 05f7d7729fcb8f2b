"""Which torch build scripts/setup.sh installs: prints the pip arguments, one per line, and says why on stderr.

PyPI's Linux torch wheels are CUDA builds (with about 16 nvidia-* packages). On a Linux machine without an NVIDIA
GPU, torch and torchvision come from PyTorch's CPU wheel index instead (PyPI stays an extra index for their
dependencies); where that index cannot be reached (a machine that reaches PyPI only), the plain pinned install,
after a short probe. With a GPU, or on another system (PyPI's macOS and Windows wheels are CPU builds anyway),
PyPI's default build.

Stdlib only: it runs in a fresh venv before anything is installed. Inputs that tests (and users) can set:
DEPTHCURATE_NVIDIA_GPU=1|0 (instead of looking for nvidia-smi and /proc/driver/nvidia) and
DEPTHCURATE_TORCH_CPU_INDEX (the CPU index's URL, e.g. a mirror; empty: never use one).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

PINS = ("torch==2.13.0", "torchvision==0.28.0")  # the pair pyproject.toml's ranges allow; torchvision pins its torch
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI = "https://pypi.org/simple"
PROBE_TIMEOUT_S = 3.0  # unreachable is usually a failed DNS lookup or a refused connection: both are instant


def pip_args(gpu: bool, linux: bool, cpu_index: str, reachable: bool) -> tuple[list[str], str]:
    """The pip arguments for the torch install, and the one line that says why: the decision table."""
    plain = list(PINS)
    if gpu:
        return plain, "NVIDIA GPU found: torch from PyPI (its CUDA build)"
    if not linux:
        return plain, f"no NVIDIA GPU on {platform.system()}: torch from PyPI (a CPU build there)"
    if not cpu_index:
        return plain, "no NVIDIA GPU, CPU index switched off (DEPTHCURATE_TORCH_CPU_INDEX=''): torch from PyPI"
    if not reachable:
        return plain, (
            f"no NVIDIA GPU, but {cpu_index} is unreachable: the plain pinned torch from PyPI instead "
            "(Linux wheels there are CUDA builds; they run on the CPU too)"
        )
    return [*plain, "--index-url", cpu_index, "--extra-index-url", PYPI], (
        f"no NVIDIA GPU: torch's CPU build from {cpu_index}"
    )


def nvidia_gpu_present(search_path: str | None = None, driver_dir: Path = Path("/proc/driver/nvidia")) -> bool:
    """An NVIDIA driver is loaded here, or its tools are installed (DEPTHCURATE_NVIDIA_GPU overrides both)."""
    forced = os.environ.get("DEPTHCURATE_NVIDIA_GPU")
    if forced in ("0", "1"):
        return forced == "1"
    return shutil.which("nvidia-smi", path=search_path) is not None or driver_dir.exists()


def index_reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the index answers (pip's proxy variables apply: urllib reads the same ones)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/", method="HEAD"), timeout=timeout_s):
            return True
    except (urllib.error.URLError, OSError, ValueError):  # HTTPError (4xx/5xx) is a URLError: pip would fail too
        return False


def main() -> int:
    cpu_index = os.environ.get("DEPTHCURATE_TORCH_CPU_INDEX", CPU_INDEX)
    gpu = nvidia_gpu_present()
    linux = platform.system() == "Linux"
    reachable = bool(cpu_index) and not gpu and linux and index_reachable(cpu_index)
    args, why = pip_args(gpu, linux, cpu_index, reachable)
    print(f"[setup] {why}", file=sys.stderr)
    print("\n".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
