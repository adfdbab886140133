//! What to do when a pushed change meets a newer server version.

use crate::record::{Fields, Op, PendingChange, RemoteState};

/// The decision for one conflict.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Resolution {
    /// Drop the local change; the local record takes the server's state.
    TakeServer,
    /// Keep the local change and push it again on top of the server's version.
    KeepLocal,
    /// Push this op instead (for example a merge of both sides) on top of the
    /// server's version; the local record becomes it too.
    Replace(Op),
}

/// Decides conflicts. Called by the engine when the remote answers `Conflict` for a
/// change that is not the client's own earlier write. The engine reports every call
/// as a [`crate::SyncEvent::Conflict`], whatever the resolution.
pub trait ConflictPolicy: Send + Sync {
    /// Resolves `local` (the unpushed change) against `server` (current state).
    fn resolve(&self, local: &PendingChange, server: &RemoteState) -> Resolution;
}

impl<F> ConflictPolicy for F
where
    F: Fn(&PendingChange, &RemoteState) -> Resolution + Send + Sync,
{
    fn resolve(&self, local: &PendingChange, server: &RemoteState) -> Resolution {
        self(local, server)
    }
}

/// The server's version wins; the local change is reported and dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerWins;

impl ConflictPolicy for ServerWins {
    fn resolve(&self, _: &PendingChange, _: &RemoteState) -> Resolution {
        Resolution::TakeServer
    }
}

/// The local change wins (last writer wins), including deletes and resurrections.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientWins;

impl ConflictPolicy for ClientWins {
    fn resolve(&self, _: &PendingChange, _: &RemoteState) -> Resolution {
        Resolution::KeepLocal
    }
}

/// Field-level merge: start from the server's record and overlay the fields the
/// local writes changed, so edits to different fields both survive (for the same
/// field, the local edit wins).
///
/// Deletes: a local delete of a record the server edited since is dropped (the edit
/// survives); a local edit of a record the server deleted recreates it with the
/// local data (the edit survives). Both are reported as conflicts.
#[derive(Clone, Copy, Debug, Default)]
pub struct FieldMerge;

impl ConflictPolicy for FieldMerge {
    fn resolve(&self, local: &PendingChange, server: &RemoteState) -> Resolution {
        match (&local.op, &server.fields) {
            (Op::Delete, None) => Resolution::TakeServer,
            (Op::Delete, Some(_)) => Resolution::TakeServer,
            (Op::Upsert(_), None) => Resolution::KeepLocal,
            (Op::Upsert(mine), Some(theirs)) => {
                let mut merged: Fields = theirs.clone();
                for name in &local.changed {
                    match mine.get(name) {
                        Some(v) => {
                            merged.insert(name.clone(), v.clone());
                        }
                        None => {
                            merged.remove(name);
                        }
                    }
                }
                Resolution::Replace(Op::Upsert(merged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{new_id, ChangeId};
    use crate::record::Version;
    use serde_json::json;

    fn fields(v: serde_json::Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    fn change(op: Op, changed: &[&str]) -> PendingChange {
        PendingChange {
            seq: 1,
            change_id: ChangeId {
                client: new_id(),
                n: 1,
            },
            collection: "c".into(),
            id: new_id(),
            base: Some(Version(1)),
            op,
            changed: changed.iter().map(|s| s.to_string()).collect(),
            tx: None,
        }
    }

    #[test]
    fn merge_keeps_both_sides_of_disjoint_edits() {
        let local = change(Op::Upsert(fields(json!({"a": 2, "b": 1}))), &["a"]);
        let server = RemoteState {
            version: Version(5),
            fields: Some(fields(json!({"a": 1, "b": 9}))),
            change_id: None,
        };
        assert_eq!(
            FieldMerge.resolve(&local, &server),
            Resolution::Replace(Op::Upsert(fields(json!({"a": 2, "b": 9}))))
        );
    }

    #[test]
    fn merge_removes_locally_removed_field() {
        let local = change(Op::Upsert(fields(json!({"b": 1}))), &["a"]);
        let server = RemoteState {
            version: Version(5),
            fields: Some(fields(json!({"a": 1, "b": 9}))),
            change_id: None,
        };
        assert_eq!(
            FieldMerge.resolve(&local, &server),
            Resolution::Replace(Op::Upsert(fields(json!({"b": 9}))))
        );
    }

    #[test]
    fn delete_vs_edit_policies() {
        let del = change(Op::Delete, &[]);
        let edited = RemoteState {
            version: Version(5),
            fields: Some(fields(json!({"a": 1}))),
            change_id: None,
        };
        assert_eq!(FieldMerge.resolve(&del, &edited), Resolution::TakeServer);
        assert_eq!(ClientWins.resolve(&del, &edited), Resolution::KeepLocal);
        assert_eq!(ServerWins.resolve(&del, &edited), Resolution::TakeServer);
        let edit = change(Op::Upsert(fields(json!({"a": 3}))), &["a"]);
        let gone = RemoteState {
            version: Version(6),
            fields: None,
            change_id: None,
        };
        assert_eq!(FieldMerge.resolve(&edit, &gone), Resolution::KeepLocal);
        let custom = |_: &PendingChange, _: &RemoteState| Resolution::TakeServer;
        assert_eq!(custom.resolve(&edit, &gone), Resolution::TakeServer);
    }
}
