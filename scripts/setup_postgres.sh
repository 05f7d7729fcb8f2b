#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres) when missing.
# Only the PostgreSQL tests, the PostgreSQL benchmark and a self-hosted Prefect server need them, so plain
# `scripts/setup.sh` does not call this; flows/local_services.py does, on first use.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "[setup_postgres] no apt-get: install the PostgreSQL server (initdb, pg_ctl) by hand" >&2
    exit 2
fi
echo "[setup_postgres] installing postgresql from the system package manager" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
# The project starts its own server in a temporary directory; Debian's default cluster is not used.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
