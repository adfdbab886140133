#!/usr/bin/env bash
# Sets everything up and runs the whole test suite: installs the pinned PocketBase
# into .venv and PostgreSQL 15's server where it is missing, checks formatting and
# lints, then runs every test (unit, conformance, property, crash, end-to-end against
# a real PocketBase and a real PostgreSQL) and the doctests. The declared minimum Rust
# version is checked against every locked dependency (scripts/check-msrv.py) and,
# for our own code, by clippy's incompatible_msrv lint.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export TIDEMARK_POCKETBASE="$(bash scripts/install-pocketbase.sh)"
echo "PocketBase: $("$TIDEMARK_POCKETBASE" --version)"
export TIDEMARK_PG_BINDIR="$(bash postgres-remote/scripts/install-postgres.sh)"
echo "PostgreSQL: $("$TIDEMARK_PG_BINDIR/postgres" --version)"

python3 scripts/check-msrv.py
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The facade's features each build alone (an outside store author needs only testkit).
cargo check -p tidemark --lib --locked --no-default-features --features testkit
cargo check -p tidemark --lib --locked --no-default-features --features sqlite,postgres
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
