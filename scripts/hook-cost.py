#!/usr/bin/env python3
"""What the tidemark hooks cost PocketBase, next to the floors any JS hook pays.

Starts one real PocketBase per variant (same binary, migrations and data shape, on
127.0.0.1), then sends them 1000-record `/api/batch` requests *interleaved* (variant
after variant, round after round), as a superuser and as a user under the owner
rule, and prints median records/s and the ratio to the first variant.

Variants:
  none       tidemark's hooks loaded but bound to no collection (the baseline)
  empty      one JS onRecordCreateExecute hook that only calls e.next()
  one_query  a minimal seq hook: read tm_push, one UPDATE .. RETURNING into a
             reused DynamicModel, three record.set calls
  trigger    no JS hook at all, one SQLite trigger on songs that never runs
             (AFTER INSERT .. WHEN 0): what any trigger costs, as PocketBase
             prepares every INSERT anew and SQLite compiles its triggers into it
  triggers   tidemark's SQLite triggers and receipt route with no JS write hook: the
             floor of this design for --push, --update and --delete (what the
             JS hooks add is the difference to tidemark; plain creates get no seq
             here, so it means nothing without one of those flags)
  tidemark   pocketbase-remote/server/pb_hooks as shipped
  NAME=DIR   the hooks in DIR (for example an older copy of pb_hooks, to compare)

  python3 scripts/hook-cost.py [--push | --update | --delete] [--rounds N]

--push sends what the tidemark client sends for new records (PUT upserts with
tm_push, and for the tidemark variants the receipt that reads their seqs); without
it, plain POST creates. --update times what the client sends for edits: 1000
records are pushed first (not timed), then updated on the versions they got (PUT
with tm_push "<base>:<change id>", plus the receipt); the create-hook floors do not
apply, so the default variants are none and tidemark. --delete likewise times
tidemark deletes (DELETE ?tm=<base>:<change id>, answered with the tombstone's seq).
Needs the binary from scripts/install-pocketbase.sh.
"""
import argparse
import json
import os
import random
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PB = os.environ.get("TIDEMARK_POCKETBASE") or os.path.join(ROOT, ".venv", "bin", "pocketbase")
SERVER = os.path.join(ROOT, "pocketbase-remote", "server")

EMPTY = 'onRecordCreateExecute((e) => { e.next(); }, "songs", "friends");\n'
ONE_QUERY = """onRecordCreateExecute((e) => {
  const p = e.record.getString("tm_push");
  e.record.set("tm_push", "");
  const m = globalThis.__m || (globalThis.__m = new DynamicModel({ seq: 0 }));
  e.app.db().newQuery("UPDATE _tm_state SET seq = seq + 1 WHERE id = 1 RETURNING seq").one(m);
  e.record.set("tm_seq", m.seq);
  e.record.set("tm_cid", p.slice(p.indexOf(":") + 1));
  e.next();
}, "songs", "friends");
"""


TRIGGER = """onBootstrap((e) => {
  e.next();
  try {
    e.app.findCollectionByNameOrId("songs");
  } catch (_) {
    return; // `superuser upsert` boots with these hooks before the migrations ran
  }
  e.app.db().newQuery("CREATE TRIGGER IF NOT EXISTS floor_songs AFTER INSERT ON songs WHEN 0 " +
    "BEGIN UPDATE _tm_state SET seq = seq + 1 WHERE id = 1; END").execute();
});
"""

# tidemark.pb.js reduced to the triggers (created with the collections, when `serve`
# runs the migrations) and the receipt route.
TRIGGERS_ONLY = """onBootstrap((e) => {
  e.next();
  const r = require(`${__hooks}/tidemark/registry.js`);
  if (r.tableExists(e.app, r.TABLE)) r.activate(e.app); else r.publish(e.app);
});
routerAdd("POST", "/api/tidemark/receipt", (e) => {
  return e.json(200, require(`${__hooks}/tidemark/routes.js`).receipt(e));
}, $apis.requireAuth());
"""


def rid():
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(15))


def call(url, method="GET", body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(url, data=data, method=method)
    r.add_header("Content-Type", "application/json")
    if token:
        r.add_header("Authorization", token)
    with urllib.request.urlopen(r, timeout=120) as resp:
        return json.loads(resp.read() or b"null")


def start(work, name):
    hooks = os.path.join(work, name.split("=")[0], "pb_hooks")
    env = dict(os.environ)
    # Users' batches as large as the runs ask (the extension bounds them to 200).
    env["TIDEMARK_USER_BATCH_MAX"] = "1000"
    if "=" in name:
        shutil.copytree(name.split("=", 1)[1], hooks)
    elif name in ("none", "tidemark", "triggers"):
        shutil.copytree(os.path.join(SERVER, "pb_hooks"), hooks)
        if name == "triggers":
            with open(os.path.join(hooks, "tidemark.pb.js"), "w") as f:
                f.write(TRIGGERS_ONLY)
    else:
        os.makedirs(hooks)
        with open(os.path.join(hooks, "x.pb.js"), "w") as f:
            f.write({"empty": EMPTY, "one_query": ONE_QUERY, "trigger": TRIGGER}[name])
    data = os.path.join(work, name.split("=")[0], "pb_data")
    # The shipped migrations plus the songs/friends fixture; the hook-less variant
    # leaves the fixture unsynced (no triggers, no hooks bound).
    migr = os.path.join(work, name.split("=")[0], "pb_migrations")
    if not os.path.isdir(migr):
        os.makedirs(migr)
        fixture = os.path.join(SERVER, "examples", "fixture", "pb_migrations")
        for d in (os.path.join(SERVER, "pb_migrations"), fixture):
            for f in sorted(os.listdir(d)):
                if name == "none" and f == "1764000005_tidemark_fixture_sync.js":
                    continue
                shutil.copy(os.path.join(d, f), migr)
    subprocess.run([PB, "superuser", "upsert", "a@t.io", "password123", "--dir", data,
                    "--migrationsDir", migr], check=True, capture_output=True)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen([PB, "serve", "--http", f"127.0.0.1:{port}", "--hooksWatch=false",
                          "--automigrate=false", "--dir", data, "--hooksDir", hooks,
                          "--migrationsDir", migr],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            call(url + "/api/health")
            break
        except Exception:
            time.sleep(0.05)
    else:
        p.kill()
        sys.exit(f"PocketBase ({name}) did not start")
    admin = call(url + "/api/collections/_superusers/auth-with-password", "POST",
                 {"identity": "a@t.io", "password": "password123"})["token"]
    u = call(url + "/api/collections/users/records", "POST",
             {"email": "u@t.io", "password": "password123", "passwordConfirm": "password123"}, admin)
    user = call(url + "/api/collections/users/auth-with-password", "POST",
                {"identity": "u@t.io", "password": "password123"})["token"]
    return p, url, admin, user, u["id"]


# Variants without tidemark's receipt route.
FLOORS = ("none", "empty", "one_query", "trigger")


def send(url, token, reqs, receipts, strict=True):
    out = call(url + "/api/batch", "POST", {"requests": reqs}, token)
    if not receipts:
        return {}
    # Writes numbered by the triggers answer with their own tm_push; their seqs come
    # from one receipt, as the client asks for them.
    # (Deletes answer with no body unless tidemark's delete hook runs.)
    bodies = [r.get("body") or {} for r in out]
    ask = [[b["id"], b["tm_push"].split(":", 1)[1]] for b in bodies
           if ":" in b.get("tm_push", "")]
    seqs = call(url + "/api/tidemark/receipt", "POST", {"songs": ask}, token)["songs"] if ask else {}
    # (The triggers variant's update trigger leaves tm_cid to the JS hook it lacks, so
    # its receipts of updates find nothing: they still run, a little slower.)
    assert len(seqs) == len(ask) or not strict, "receipt incomplete"
    return seqs


def batch(url, token, owner, mode, receipts, n=1000, strict=True):
    """Records/s of one timed batch (plus its receipt) in the given mode."""
    client = rid()
    recs = [{"id": rid(), "title": f"s{i}", "artist": "b", "order": i, "owner": owner}
            for i in range(n)]
    tag = lambda base, i: f"{base}:{client}.{i + 1}"
    put = lambda body: {"method": "PUT", "url": "/api/collections/songs/records", "body": body}
    if mode == "create":
        reqs = [{"method": "POST", "url": "/api/collections/songs/records", "body": r}
                for r in recs]
    else:
        reqs = [put(dict(r, tm_push=tag(0, i))) for i, r in enumerate(recs)]
    if mode in ("update", "delete"):
        seqs = send(url, token, reqs, receipts, strict)
        base = lambda r: seqs.get(r["id"], 0)
        if mode == "update":
            reqs = [put(dict(r, title=f"u{i}", tm_push=tag(base(r), n + i)))
                    for i, r in enumerate(recs)]
        else:
            reqs = [{"method": "DELETE", "url": "/api/collections/songs/records/"
                     f"{r['id']}?tm={tag(base(r), n + i)}"} for i, r in enumerate(recs)]
    t = time.perf_counter()
    send(url, token, reqs, receipts, strict)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--push", action="store_true")
    ap.add_argument("--update", action="store_true")
    ap.add_argument("--delete", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("variants", nargs="*")
    a = ap.parse_args()
    mode = "delete" if a.delete else "update" if a.update else "push" if a.push else "create"
    if not a.variants:
        a.variants = (["none", "tidemark"] if mode in ("update", "delete")
                      else ["none", "empty", "one_query", "tidemark"])
    if not os.path.exists(PB):
        sys.exit(f"{PB} missing: run scripts/install-pocketbase.sh")
    work = tempfile.mkdtemp(prefix="tidemark-hook-cost-")
    servers = {}
    # Per variant: whether it asks for receipts, and whether they must name every change.
    how = {v: (mode != "create" and v not in FLOORS, v != "triggers") for v in a.variants}
    try:
        for v in a.variants:
            servers[v] = start(work, v)
            _, url, admin, user, owner = servers[v]
            rc, st = how[v]
            batch(url, admin, owner, mode, rc, strict=st)  # warm up
            batch(url, user, owner, mode, rc, strict=st)
        res = {v: ([], []) for v in a.variants}
        for _ in range(a.rounds):
            for v in a.variants:
                _, url, admin, user, owner = servers[v]
                rc, st = how[v]
                res[v][0].append(batch(url, admin, owner, mode, rc, strict=st))
                res[v][1].append(batch(url, user, owner, mode, rc, strict=st))
        med = lambda xs: sorted(xs)[len(xs) // 2]
        base = res[a.variants[0]]
        kind = {"create": "plain POST creates",
                "push": "tidemark pushes of new records (PUT + tm_push)",
                "update": "tidemark pushes of updates (PUT + tm_push on the current version)",
                "delete": "tidemark deletes (DELETE ?tm=<base>:<change id>)"}[mode]
        print(f"1000-record batches of {kind}, medians of {a.rounds} interleaved rounds")
        print("(in brackets: the middle half of the per-round ratios, each round paired with"
              " the same round of the first variant)")

        def spread(v, k):
            r = sorted(b / x for b, x in zip(base[k], res[v][k]))
            return f"{r[len(r) // 4]:.2f}-{r[(3 * len(r)) // 4]:.2f}"

        for v in a.variants:
            su, us = med(res[v][0]), med(res[v][1])
            print(f"{v.split('=')[0]:10s} superuser {su:6.0f}/s ({med(base[0]) / su:.2f}x"
                  f" [{spread(v, 0)}])   user {us:6.0f}/s ({med(base[1]) / us:.2f}x"
                  f" [{spread(v, 1)}])")
    finally:
        for p, *_ in servers.values():
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
