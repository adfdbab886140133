#!/usr/bin/env python3
"""How much faster than one request per record can writes reach PocketBase 0.40.6?

The push target (batched >= 5x one request per record) assumes batching removes most
of a write's cost. This measures, on one real PocketBase with tidemark's hooks, the
same records created three ways, interleaved round after round, as a superuser and as
a user under the owner rule:

  single  one POST per record on a keep-alive connection (the seed's way)
  batch   /api/batch with 1000 POSTs (what the tidemark client uses)
  route   a JS route, not shipped, that saves the 1000 records one by one in one
          transaction (`tx.save`, plus `canAccessRecord` with the create rule for a
          user): the fastest path that still runs PocketBase's validation, rules and
          hooks, i.e. the ceiling for any server-side bulk push

  python3 scripts/push-ceiling.py [--rounds N] [--no-hooks]

--no-hooks leaves tidemark's hooks out (only the route is loaded; the migrations
still run): what PocketBase itself allows, with no hook cost on either side.

Needs the binary from scripts/install-pocketbase.sh.
"""
import argparse
import http.client
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("hook_cost", os.path.join(HERE, "hook-cost.py"))
hc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hc)

ROUTE = """routerAdd("POST", "/api/ceiling/{coll}", (e) => {
  const info = e.requestInfo();
  const records = info.body.records;
  const c = e.app.findCollectionByNameOrId(e.request.pathValue("coll"));
  const check = !e.hasSuperuserAuth() && c.createRule !== null;
  e.app.runInTransaction((tx) => {
    for (const b of records) {
      const r = new Record(c);
      r.load(b);
      tx.save(r);
      info.body = b;
      if (check && !tx.canAccessRecord(r, info, c.createRule)) {
        throw new BadRequestError("refused " + r.id);
      }
    }
  });
  return e.json(200, { saved: records.length });
}, $apis.requireAuth());
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-hooks", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(hc.PB):
        sys.exit(f"{hc.PB} missing: run scripts/install-pocketbase.sh")
    work = tempfile.mkdtemp(prefix="tidemark-push-ceiling-")
    hooks = os.path.join(work, "hooks")
    if a.no_hooks:
        os.makedirs(hooks)
    else:
        shutil.copytree(os.path.join(hc.SERVER, "pb_hooks"), hooks)
    with open(os.path.join(hooks, "ceiling.pb.js"), "w") as f:
        f.write(ROUTE)
    p, url, admin, user, owner = hc.start(work, "server=" + hooks)
    host, port = url[len("http://"):].split(":")
    conn = http.client.HTTPConnection(host, int(port))

    def req(path, body, token):
        conn.request("POST", path, json.dumps(body),
                     {"Content-Type": "application/json", "Authorization": token})
        r = conn.getresponse()
        data = r.read()
        if r.status >= 300:
            raise SystemExit(f"{path}: {r.status} {data[:300]!r}")

    def recs(n):
        return [{"id": hc.rid(), "title": f"s{i}", "artist": "b", "order": i, "owner": owner}
                for i in range(n)]

    def rate(n, fn):
        t = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t)

    try:
        res = {}
        for who, token in (("superuser", admin), ("user", user)):
            for rnd in range(a.rounds + 1):  # the first round warms up
                single = recs(300)
                batch = recs(1000)
                route = recs(1000)
                got = {
                    "single": rate(300, lambda: [req("/api/collections/songs/records", r, token)
                                                 for r in single]),
                    "batch": rate(1000, lambda: req("/api/batch", {"requests": [
                        {"method": "POST", "url": "/api/collections/songs/records", "body": r}
                        for r in batch]}, token)),
                    "route": rate(1000, lambda: req("/api/ceiling/songs", {"records": route}, token)),
                }
                if rnd:
                    for k, v in got.items():
                        res.setdefault((who, k), []).append(v)
        med = lambda xs: sorted(xs)[len(xs) // 2]
        hooks_said = "no hooks" if a.no_hooks else "tidemark's hooks"
        print(f"plain creates with {hooks_said}, medians of {a.rounds} interleaved rounds")
        for who in ("superuser", "user"):
            s = med(res[(who, "single")])
            print(f"{who:9s} single {s:5.0f}/s   batch {med(res[(who, 'batch')]):5.0f}/s"
                  f" ({med(res[(who, 'batch')]) / s:.2f}x)   route {med(res[(who, 'route')]):5.0f}/s"
                  f" ({med(res[(who, 'route')]) / s:.2f}x)")
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
