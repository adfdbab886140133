//! `tidemark demo` as built: the two-client story through a throwaway PocketBase,
//! and its refusal to replace existing stores without `--force`.

mod support;

use std::process::Stdio;

#[test]
fn demo_converges_and_replaces_its_stores_only_with_force() {
    let work = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        support::tidemark(work.path())
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tidemark demo")
    };
    let first = run(&[]);
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(out.contains("done: 4 records on each client"), "{out}");
    assert!(out.contains("merged field by field"), "{out}");
    let own = work.path().join(".tidemark/demo.sqlite");
    assert!(own.exists());
    // Its own default files are started again at every run.
    let again = run(&[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A path given with --db that exists is refused, and left as it was.
    let db = work.path().join("mine.sqlite");
    let db_arg = db.to_str().expect("utf-8 path");
    let first = run(&["--db", db_arg]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let before = std::fs::metadata(&db).expect("metadata").len();
    let second = run(&["--db", db_arg]);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("pass --force"), "{err}");
    assert_eq!(std::fs::metadata(&db).expect("still there").len(), before);

    let forced = run(&["--db", db_arg, "--force"]);
    let out = String::from_utf8_lossy(&forced.stdout);
    assert!(forced.status.success(), "{out}");
    assert!(out.contains("done: 4 records on each client"), "{out}");
}
