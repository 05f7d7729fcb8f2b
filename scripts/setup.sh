#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine: ffmpeg, a venv, the package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
    echo "[setup] installing ffmpeg from the system package manager" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

# Headless Chromium, for the tests only: they open `depthcurate report`'s page in it (skipped without it).
if ! command -v chromium >/dev/null; then
    echo "[setup] installing chromium (headless, for the report tests) from the system package manager" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
        || echo "[setup] no chromium package here: the report's browser tests will be skipped" >&2
fi

# Middlebury's Aloe pair with its ground-truth disparity, for the stereo tests and benchmarks (skipped without it):
# the second real pair after scikit-image's motorcycle; Debian ships it in OpenCV's samples.
if [ ! -f /usr/share/doc/opencv-doc/examples/data/aloeGT.png ]; then
    echo "[setup] installing opencv-doc (a real stereo pair with ground truth) from the system package manager" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends opencv-doc >/dev/null \
        || echo "[setup] no opencv-doc package here: the Aloe stereo tests will be skipped" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.depthcurate-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing Python dependencies" >&2
    "$VENV/bin/pip" install -q --upgrade pip
    # torch and torchvision first, pinned, in the build this machine needs (scripts/torch_index.py: the CPU build
    # without an NVIDIA GPU, PyPI's CUDA build with one); the package's install below then keeps them.
    torch_args=$("$VENV/bin/python" scripts/torch_index.py)  # one pip argument per line, none with spaces
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q $torch_args
    "$VENV/bin/pip" install -q -e ".[test]"
    touch "$stamp"
fi
