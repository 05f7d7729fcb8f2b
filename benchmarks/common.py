"""What the benchmarks share: the `meta` block of every result, the --out / --workdir arguments, writing the JSON,
a stopwatch, and /proc readers for CPU time and memory.

Light on purpose (standard library only at import time): bench_semdedup's measuring children and the Prefect
benchmarks import it too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

# Libraries whose versions move the figures: name in `meta` -> (module, distributions that may provide it).
LIBRARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "numpy": ("numpy", ("numpy",)),
    "pyarrow": ("pyarrow", ("pyarrow",)),
    "opencv": (
        "cv2",
        ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    ),
    "torch": ("torch", ("torch",)),
}


# ---------------------------------------------------------------- meta


def meta(*extra_libraries: str) -> dict[str, Any]:
    """Where and with what a result was measured: git commit (and whether the tree was dirty), UTC time, Python,
    platform, CPU count, library versions (None when not installed) and ffmpeg's version line.

    `extra_libraries`: more distributions to report (e.g. "prefect"). Call it when the benchmark starts, so a
    commit made during a long run does not end up in its result."""
    libraries = {name: _version(module, distributions) for name, (module, distributions) in LIBRARIES.items()}
    libraries.update({name: _version(None, (name,)) for name in extra_libraries})
    return {
        "git": _git(),
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "libraries": libraries,
        "ffmpeg": _ffmpeg_version(),
    }


def _git() -> dict[str, Any]:
    """HEAD's commit and whether tracked files differ from it (untracked files do not count, as `git describe
    --dirty`). --no-optional-locks: reading the state must not take index.lock from someone committing."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def _version(module: str | None, distributions: tuple[str, ...]) -> str | None:
    """The installed version: the imported module's own when already imported, else the distribution's metadata
    (no import of torch just to ask), else an import of the module; None when it is not installed."""
    if module is not None and hasattr(sys.modules.get(module), "__version__"):
        return str(sys.modules[module].__version__)
    for distribution in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(distribution)
    if module is None or importlib.util.find_spec(module) is None:
        return None
    try:
        return str(getattr(importlib.import_module(module), "__version__", None))
    except Exception:  # noqa: BLE001 - a library that is there but does not import is reported as missing
        return None


def _ffmpeg_version() -> str | None:
    try:
        result = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


# ---------------------------------------------------------------- arguments and output


def add_out_argument(parser: argparse.ArgumentParser, default: Path | None = None) -> None:
    """--out PATH: where the JSON result is written (it is printed to stdout as well)."""
    parser.add_argument(
        "--out",
        type=Path,
        default=default,
        help="also write the JSON result here (e.g. benchmarks/results/NAME.json)"
        + (f"; default {default.relative_to(REPO) if default.is_relative_to(REPO) else default}" if default else ""),
    )


def add_workdir_argument(parser: argparse.ArgumentParser, what: str = "the inputs") -> None:
    """--workdir DIR: keep `what` there between runs instead of in a temporary directory."""
    parser.add_argument("--workdir", type=Path, help=f"keep {what} here between runs (default: a temp dir)")


@contextlib.contextmanager
def work_directory(path: Path | None, prefix: str = "bench-") -> Iterator[Path]:
    """`path` (created if missing, kept afterwards), or a temporary directory removed on exit."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def emit(result: dict[str, Any], out: Path | None, run_meta: dict[str, Any] | None = None) -> str:
    """Print `result` with its `meta` block (`run_meta`, or taken now) as JSON, and write it to `out` when given
    (whole or not at all: a temporary next to it, then a rename). Returns the text."""
    text = json.dumps({**result, "meta": run_meta if run_meta is not None else meta()}, indent=2)
    print(text, flush=True)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        partial.write_text(text + "\n")
        os.replace(partial, out)
    return text


# ---------------------------------------------------------------- timing


class Stopwatch:
    """Wall-clock seconds (time.perf_counter) from creation or `with` entry; `.s` is the running total until
    the block ends, then the block's time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.end: float | None = None

    def __enter__(self) -> Stopwatch:
        self.start, self.end = time.perf_counter(), None
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = time.perf_counter()

    @property
    def s(self) -> float:
        return (self.end if self.end is not None else time.perf_counter()) - self.start


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The shortest wall time of `repeats` calls: on a shared machine, slower runs measure the neighbours."""
    times = []
    for _ in range(repeats):
        with Stopwatch() as watch:
            fn()
        times.append(watch.s)
    return min(times)


# ---------------------------------------------------------------- /proc (Linux)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (fields[1] is the parent pid, [11:15] utime, stime,
    cutime, cstime in clock ticks); None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu_s(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process (with `children`: plus those of its reaped children); 0 if gone."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    return sum(int(f) for f in fields[11 : 15 if children else 13]) / CLOCK_TICKS


def proc_kb(path: str | Path, key: str, default: float = 0) -> float:
    """A `key: value kB` line of a /proc file (status: VmRSS, VmHWM; smaps_rollup: Pss); `default` if absent."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return default
