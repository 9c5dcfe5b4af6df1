#!/usr/bin/env bash
# Installs what the benchmarks need beside the project: the Python `bench` extra
# (matplotlib, psutil, uvloop, py-spy, picows), Debian's redis-server, and the
# Socket.IO peer's npm packages (pinned by bench/socketio/package-lock.json).
# Run as root on a fresh machine (apt-get); `make bench-setup` calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"

"$PY" -m pip install --quiet -e '.[test,bench]'

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get install -y -q redis-server >/dev/null || { apt-get update -q && apt-get install -y -q redis-server; }
    else
        sudo apt-get install -y -q redis-server
    fi
fi
# The benchmark starts its own redis-server on a free port; the Debian service is not needed.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    systemctl stop redis-server || true
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt-get install -y -q nodejs npm
fi
(cd bench/socketio && npm ci --no-audit --no-fund --loglevel=error)

echo "bench setup done: $("$PY" --version), node $(node --version), $(redis-server --version | cut -d' ' -f1-3)"
