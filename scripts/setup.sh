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

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.depthcurate-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing Python dependencies" >&2
    "$VENV/bin/pip" install -q --upgrade pip
    # Pin torch first: an unpinned resolve pulls a newer torch with gigabytes of CUDA packages.
    "$VENV/bin/pip" install -q "torch==2.13.0"
    "$VENV/bin/pip" install -q -e ".[test]"
    touch "$stamp"
fi
