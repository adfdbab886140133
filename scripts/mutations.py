#!/usr/bin/env python3
"""Hand-made mutants of the engine and stores: each breaks one rule on purpose and
must make the convergence property test fail. Run from the repo root:

    python3 scripts/mutations.py            # all mutants
    python3 scripts/mutations.py M1 M5      # some

Works on a copy of sync-traits/ and tests/ in a temp dir; the tree is not touched.
"""
import os, shutil, subprocess, sys, tempfile

E = "sync-traits/src/engine.rs"
M = "sync-traits/src/testkit/memory.rs"
F = "sync-traits/src/testkit/fake_remote.rs"

MUTANTS = {
    "M1 watermark advanced before the page is applied": (E,
        "            let applied = self.local.apply_remote(&page).await?;",
        "            let mark = Page { changes: vec![], watermark: page.watermark, more: page.more };\n"
        "            self.local.apply_remote(&mark).await?;\n"
        "            if page.more { self.remote.pull(page.watermark, limit, mode).await?; }\n"
        "            let applied = self.local.apply_remote(&page).await?;"),
    "M2 ack before the push succeeds": (E,
        "        let outcomes = self.push_outcomes(&changes).await?;",
        "        self.local.ack(entries.iter().map(|e| Ack::Applied { collection: e.collection.clone(), id: e.id.clone(), change_id: e.change_id.clone(), version: crate::record::Version(0) }).collect()).await?;\n"
        "        let outcomes = self.push_outcomes(&changes).await?;"),
    "M3 apply_remote overwrites records with unpushed writes": (M,
        "            if g.outbox_index.contains_key(&key) {\n                report.deferred += 1;",
        "            if false {\n                report.deferred += 1;"),
    "M4 conflicts silently re-based (client wins, not reported)": (E,
        "                        report.conflicts += 1;\n                        let resolution = self.policy.resolve(&entry, &current);",
        "                        let resolution = Resolution::KeepLocal;"),
    "M5 a conflict is taken as applied": (E,
        "                    let own = match &current.change_id {",
        "                    let entry = PendingChange { change_id: current.change_id.clone().unwrap_or(entry.change_id.clone()), ..entry };\n"
        "                    let own = match &current.change_id {"),
    "M6 remote forgets applied change ids (no idempotency)": (F,
        "                .and_then(|m| m.get(&c.change_id.n))",
        "                .and_then(|m| m.get(&c.change_id.n)).filter(|_| false)"),
    "M7 resync never removes records the server no longer has": (E,
        "                let removed = self.local.finish_resync(synced.clone()).await?;",
        "                let removed = 0;"),
    "M8 begin_resync clears the outbox": (M,
        "        g.watermark = Watermark(0);\n        g.resyncing = true;",
        "        g.watermark = Watermark(0);\n        g.resyncing = true;\n        g.outbox.clear();\n        g.outbox_index.clear();"),
    "M9 ack removes an entry superseded by a newer write": (M,
        "                    match g.matching(&key, &change_id) {\n                        Some(seq) => g.remove_entry(&key, seq),",
        "                    match g.outbox_index.get(&key).copied() {\n                        Some(seq) => g.remove_entry(&key, seq),"),
    "M10 own earlier write treated as a foreign conflict": (E,
        "                        Some(c) if c != &entry.change_id => self.local.made_here(c).await?,",
        "                        Some(c) if c != &entry.change_id => false && self.local.made_here(c).await?,"),
    "M11 apply_remote does not skip stale versions": (M,
        "            if g.versions.get(&key).is_some_and(|v| *v > c.state.version) {",
        "            if false {"),
    "M12 pull stops after the first page": (E,
        "            if !page.more {\n                return Ok(());\n            }",
        "            return Ok(());"),
    "M14 resync ignores a horizon that moved while it ran": (E,
        "            if after == before {",
        "            if after == before || true {"),
    "M15 an interrupted resync resumes where it stopped": (E,
        "            return self.resync(synced, report).await;\n        }\n        if state.watermark.0 == 0 {",
        "            return self.pull_pages(state.watermark, PullMode::Resync, report).await.and(Ok(())).and_then(|_| Ok(()));\n        }\n        if state.watermark.0 == 0 {"),
    "M16 remote answers applied for any counter at or below the newest (no exact match)": (F,
        "                .and_then(|m| m.get(&c.change_id.n))",
        "                .and_then(|m| m.range(c.change_id.n..).next_back().map(|(_, v)| v))"),
    "M17 a copied or restored store keeps its writer id": (M,
        "        inner.new_writer();",
        "        // no new writer"),
    "M18 changes of an undeclared collection are dropped, not kept": (M,
        "                if newer {",
        "                if newer && false {"),
    "M19 a resync removes records of collections the remote does not sync": (E,
        "                let removed = self.local.finish_resync(synced.clone()).await?;",
        "                let removed = self.local.finish_resync(None).await?;"),
    "M20 conflicts are not persisted": (M,
        "                    g.conflicts.push(LoggedConflict { id, conflict });",
        "                    let _ = (id, conflict);"),
    "M21 the echo of an acked write is skipped (the server's copy never comes back)": (M,
        "            if g.versions.get(&key).is_some_and(|v| *v > c.state.version) {",
        "            if g.versions.get(&key).is_some_and(|v| *v >= c.state.version) {"),
    "M22 a later write of the entry's own writer goes to the policy": (E,
        "                        c.client == entry.change_id.client && c.n > entry.change_id.n",
        "                        false && c.client == entry.change_id.client && c.n > entry.change_id.n"),
    "M23 push batches split transactions (no batch_end)": (E,
        "                entries.truncate(end);",
        "                let _ = end;"),
    "M24 a MemoryStore transaction is applied up to a refused write": (M,
        "        for w in &writes {\n            g.check_held(w.key().0)?;\n        }\n",
        "        let mut ok = 0;\n        for w in &writes {\n            if g.check_held(w.key().0).is_err() { break; }\n            ok += 1;\n        }\n        let failed = ok < writes.len();\n        let writes: Vec<Write> = writes.into_iter().take(ok).collect();\n        if failed { for w in writes { if let Write::Put(r) = w { g.put(r); } } return Err(StoreError::UnknownCollection(\"mutant\".into())); }\n"),
    "M13 fake skips the base-version check": (F,
        "            Some(e) if c.base != Some(e.version) => {",
        "            Some(e) if false && c.base != Some(e.version) => {"),
}

def main():
    root = os.getcwd()
    want = sys.argv[1:]
    work = tempfile.mkdtemp(prefix="tidemark-mut-")
    for d in ["sync-traits", "backends", "pocketbase-remote", "cli", "tests", "src", "benches"]:
        shutil.copytree(os.path.join(root, d), os.path.join(work, d))
    shutil.copy(os.path.join(root, "Cargo.lock"), work)
    shutil.copy(os.path.join(root, "Cargo.toml"), work)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(root, "target", "mutants"),
               PROPTEST_CASES=os.environ.get("PROPTEST_CASES", "256"))
    results = []
    for name, (path, old, new) in MUTANTS.items():
        if want and name.split()[0] not in want:
            continue
        p = os.path.join(work, path)
        orig = open(p).read()
        assert old in orig, f"{name}: pattern not found"
        open(p, "w").write(orig.replace(old, new, 1))
        r = subprocess.run(["cargo", "test", "--release", "--test", "convergence", "--test", "engine_scenarios"],
                           cwd=work, env=env, capture_output=True, text=True)
        if r.returncode == 0 and os.environ.get("PROPERTY_ONLY") != "1":
            # The unit tests and the conformance suite are part of the net too.
            r = subprocess.run(["cargo", "test", "--release", "-p", "sync-traits", "--lib", "--test", "conformance_memory", "--test", "edges", "--test", "transactions"],
                               cwd=work, env=env, capture_output=True, text=True)
        open(p, "w").write(orig)
        out = r.stdout + r.stderr
        if os.environ.get("MUTANT_LOG"):
            open(os.environ["MUTANT_LOG"] + "." + name.split()[0], "w").write(out)
        if "error[" in out or "could not compile" in out or "test result:" not in out:
            verdict = "BUILD ERROR"
        elif r.returncode != 0:
            verdict = "caught"
        else:
            verdict = "MISSED"
        why = ""
        lines = out.splitlines()
        for i, line in enumerate(lines):
            if "Test failed:" in line:
                why = line.strip()[:160]
                break
            if "panicked at" in line and not why:
                why = (line.strip() + " " + (lines[i + 1].strip() if i + 1 < len(lines) else ""))[:200]
        results.append((name, verdict, why))
        print(f"{verdict:12} {name}  {why}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    missed = [r for r in results if r[1] != "caught"]
    print(f"{len(results) - len(missed)} caught, {len(missed)} not caught")

if __name__ == "__main__":
    main()
