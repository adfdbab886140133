#!/usr/bin/env bash
# Sets everything up and runs the main job: installs the pinned PocketBase into
# .venv, builds tidemark, starts a local PocketBase with the tidemark hooks and
# migrations, and syncs two offline clients (an SQLite file and a sled database)
# through it. Extra arguments go to `tidemark demo` (try --db FILE, --force).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export TIDEMARK_POCKETBASE="$(bash scripts/install-pocketbase.sh)"
cargo run --quiet --release --locked -p tidemark-cli -- demo "$@"
