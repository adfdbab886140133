//! Applying a page of remote changes: the page is prepared (each change
//! classified, each upsert turned into the values it binds) on the calling task,
//! then applied in one transaction off the async workers.

use rusqlite::params;
use sync_traits::{
    ApplyReport, ChangeCause, ChangeKind, Mistyped, Page, RecordId, RemoteChange, StoreError,
    Watermark,
};

use super::core::Core;
use super::sql::{
    sql_err, sql_version, stored_u64, to_json, OUTBOX_EXISTS, PARK, SEEN_MARK, VERSION_APPLY,
};
use super::table::{Cell, Rows, Table};
use crate::rules::Holds;

/// A page ready to apply ([`Core::prepared_page`], [`Core::prepare_changes`]).
#[derive(Debug)]
pub(super) struct PreparedPage {
    /// The page's collection names.
    names: Vec<String>,
    /// Record ids, values to bind, parked records' JSON.
    rows: Rows,
    changes: Vec<PreparedChange>,
    /// Values that do not fit their kind, of every upsert in the page.
    mistyped: Vec<Mistyped>,
    watermark: Watermark,
}

#[derive(Debug)]
struct PreparedChange {
    /// Index into [`PreparedPage::names`].
    coll: usize,
    /// The record id ([`Cell::Text`]).
    id: Cell,
    version: i64,
    what: What,
}

/// What applying a change may do, decided before the transaction.
#[derive(Debug)]
enum What {
    /// Skip it: a local-only collection, or a name no collection can have.
    Skip,
    /// Park it (a collection the schema does not declare): its fields as JSON
    /// text, or `None` for a tombstone.
    Park(Option<Cell>),
    /// Upsert the values prepared at `cells`; `mistyped` is its range of
    /// [`PreparedPage::mistyped`].
    Upsert {
        cells: usize,
        mistyped: (usize, usize),
    },
    Delete,
}

impl Core {
    /// An empty [`PreparedPage`] for `page`, with room for its changes; fill it
    /// with [`Core::prepare_changes`].
    pub(super) fn prepared_page(page: &Page) -> PreparedPage {
        let mut p = PreparedPage {
            names: Vec::new(),
            rows: Rows::default(),
            changes: Vec::with_capacity(page.changes.len()),
            mistyped: Vec::new(),
            watermark: page.watermark,
        };
        // Room for the usual record (id and a few short values) up front.
        p.rows.text.reserve(page.changes.len() * 64);
        p.rows.cells.reserve(page.changes.len() * 6);
        p
    }

    /// Makes `changes` (a run of the page, in order) ready for
    /// [`Core::apply_prepared`]: every change classified (held, local-only, parked
    /// or impossible) and every upsert turned into the values it binds, with the
    /// values that do not fit their kind found. Reads no SQLite: this is what
    /// binding did inside the transaction, done before it, so the page's owned
    /// copy is a few allocations rather than one per value.
    pub(super) fn prepare_changes(
        &self,
        p: &mut PreparedPage,
        changes: &[RemoteChange],
    ) -> Result<(), StoreError> {
        // Pages are mostly runs of one collection: look each run's table up once.
        let mut last: Option<(usize, Option<&Table>)> = None;
        for c in changes {
            let (coll, table) = match last {
                Some((i, t)) if p.names[i] == c.collection => (i, t),
                _ => {
                    let i = match p.names.iter().position(|n| *n == c.collection) {
                        Some(i) => i,
                        None => {
                            p.names.push(c.collection.clone());
                            p.names.len() - 1
                        }
                    };
                    let t = self.tables.get(&c.collection);
                    last = Some((i, t));
                    (i, t)
                }
            };
            let id = p.rows.text(c.id.as_str());
            let what = match (
                crate::rules::holds(&c.collection, table.map(|t| &t.schema)),
                table,
            ) {
                (Holds::Skip, _) => What::Skip,
                (Holds::Park, _) | (Holds::Held, None) => What::Park(match &c.state.fields {
                    Some(f) => Some(p.rows.text(&to_json(f)?)),
                    None => None,
                }),
                (Holds::Held, Some(t)) => match &c.state.fields {
                    Some(f) => {
                        let m = p.mistyped.len();
                        let cells = t.prepare_row(&mut p.rows, &c.id, f, &mut p.mistyped);
                        What::Upsert {
                            cells,
                            mistyped: (m, p.mistyped.len()),
                        }
                    }
                    None => What::Delete,
                },
            };
            p.changes.push(PreparedChange {
                coll,
                id,
                version: sql_version(c.state.version.0),
                what,
            });
        }
        Ok(())
    }

    /// [`SyncStore::apply_remote`](sync_traits::SyncStore::apply_remote) of a
    /// prepared page: one IMMEDIATE transaction.
    pub(super) fn apply_prepared(&self, page: &PreparedPage) -> Result<ApplyReport, StoreError> {
        let text = |c: Cell| match c {
            Cell::Text(a, b) => page.rows.str(a, b),
            _ => "",
        };
        self.write_reporting(|tx, feed| {
            // Per collection of the page, once: whether anyone watches it.
            let watched: Vec<bool> = page.names.iter().map(|n| feed.watched(n)).collect();
            if let [name] = &page.names[..] {
                // A page of one collection (the usual one): room for all of it.
                feed.reserve(name, page.changes.len());
            }
            let resyncing = Self::meta_i64(tx, "resyncing")? != 0;
            let outbox_empty: bool = tx
                .query_row(
                    r#"SELECT NOT EXISTS (SELECT 1 FROM "_tidemark_outbox")"#,
                    [],
                    |r| r.get(0),
                )
                .map_err(sql_err)?;
            // Applied changes carry the epoch in their version row; during a resync
            // that is what marks them seen (begin_resync moves the epoch on).
            let epoch = Self::meta_i64(tx, "epoch")?;
            let mut report = ApplyReport::default();
            let mut seen = tx.prepare_cached(SEEN_MARK).map_err(sql_err)?;
            let mut pending = tx.prepare_cached(OUTBOX_EXISTS).map_err(sql_err)?;
            let mut newer = tx.prepare_cached(VERSION_APPLY).map_err(sql_err)?;
            // Per collection of the page: its table, and its upsert once needed.
            let tables: Vec<Option<&Table>> =
                page.names.iter().map(|n| self.tables.get(n)).collect();
            let mut upserts: Vec<Option<rusqlite::CachedStatement<'_>>> =
                page.names.iter().map(|_| None).collect();
            // Visit the page in key order (stable, so repeated keys keep their order
            // and the result is the same): the index inserts then hit neighbouring
            // b-tree pages instead of random ones.
            let key = |c: &PreparedChange| (page.names[c.coll].as_str(), text(c.id));
            let mut order: Vec<&PreparedChange> = page.changes.iter().collect();
            order.sort_by(|a, b| key(a).cmp(&key(b)));
            for c in order {
                let (coll, id) = key(c);
                let (cells, mistyped) = match &c.what {
                    What::Skip => {
                        report.skipped += 1;
                        continue;
                    }
                    What::Park(fields) => {
                        // Not held: skipped. A collection a later schema may
                        // declare keeps the record's newest state until it does.
                        report.skipped += 1;
                        let fields = fields.map(text);
                        tx.prepare_cached(PARK)
                            .and_then(|mut s| s.execute(params![coll, id, c.version, fields]))
                            .map_err(sql_err)?;
                        continue;
                    }
                    What::Upsert { cells, mistyped } => (Some(*cells), *mistyped),
                    What::Delete => (None, (0, 0)),
                };
                let t = tables[c.coll]
                    .ok_or_else(|| StoreError::Backend(format!("no table for {coll:?}").into()))?;
                if !outbox_empty && pending.exists([coll, id]).map_err(sql_err)? {
                    if resyncing {
                        seen.execute([coll, id]).map_err(sql_err)?;
                    }
                    report.deferred += 1;
                    continue;
                }
                // Records the version (and the epoch) unless it is older: one
                // statement reads and writes, and "no row changed" means stale.
                if newer
                    .execute(params![coll, id, c.version, epoch])
                    .map_err(sql_err)?
                    == 0
                {
                    if resyncing {
                        seen.execute([coll, id]).map_err(sql_err)?;
                    }
                    report.stale += 1;
                    continue;
                }
                match cells {
                    Some(start) => {
                        // One prepared upsert per collection for the whole page.
                        let st = match &mut upserts[c.coll] {
                            Some(st) => st,
                            slot => slot.insert(tx.prepare_cached(&t.upsert).map_err(sql_err)?),
                        };
                        t.bind_prepared(st, &page.rows, start)?;
                        st.raw_execute().map_err(sql_err)?;
                        if let Some(m) = page.mistyped.get(mistyped.0..mistyped.1) {
                            report.mistyped.extend(m.iter().cloned());
                        }
                        if watched[c.coll] {
                            feed.push(
                                coll,
                                &RecordId::parse(id)?,
                                ChangeKind::Upserted,
                                ChangeCause::Pull,
                            );
                        }
                    }
                    None => {
                        let removed = tx
                            .prepare_cached(&t.delete)
                            .and_then(|mut s| s.execute([id]))
                            .map_err(sql_err)?;
                        // A deletion of a record the store does not hold changed nothing.
                        if removed > 0 && watched[c.coll] {
                            feed.push(
                                coll,
                                &RecordId::parse(id)?,
                                ChangeKind::Removed,
                                ChangeCause::Pull,
                            );
                        }
                    }
                }
                report.applied += 1;
            }
            let wm = stored_u64(Self::meta_i64(tx, "watermark")?);
            if page.watermark.0 > wm {
                Self::set_meta(tx, "watermark", sql_version(page.watermark.0))?;
            }
            Ok(report)
        })
    }
}
