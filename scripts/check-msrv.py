#!/usr/bin/env python3
"""Checks that the declared minimum Rust version is true.

Every workspace crate must inherit the workspace's `rust-version`, and no package in
the locked dependency graph (normal, build and dev dependencies) may declare a newer
one. Our own code is checked against the same version by clippy's
`incompatible_msrv` lint (on by default; `-D warnings` in scripts/test.sh), which
refuses standard-library items stabilised after it.
"""
import json
import subprocess
import sys


def key(v):
    parts = [int(x) for x in v.split("+")[0].split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
members = set(meta["workspace_members"])
ours = [p for p in meta["packages"] if p["id"] in members]
declared = {p["rust_version"] for p in ours}
problems = []
if None in declared or len(declared) != 1:
    problems.append(
        "workspace crates must all set rust-version.workspace = true: "
        + ", ".join(f"{p['name']}={p['rust_version']}" for p in ours)
    )
msrv = max((v for v in declared if v), key=key, default=None)
if msrv is None:
    sys.exit("no rust-version declared in the workspace")
for p in meta["packages"]:
    rv = p.get("rust_version")
    if p["id"] not in members and rv and key(rv) > key(msrv):
        problems.append(f"{p['name']} {p['version']} needs Rust {rv} > declared {msrv}")
if problems:
    print("MSRV check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"MSRV {msrv}: {len(ours)} workspace crates inherit it; "
      f"{len(meta['packages']) - len(ours)} dependencies need no newer Rust")
