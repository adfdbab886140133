//! The SQL tidemark installs, versioned, and table registration.

use tokio_postgres::Client;

use crate::error::PgError;

/// The schema version this client installs and speaks.
pub const VERSION: i32 = 1;

/// The protocol version the client passes to the server's functions, which refuse
/// any other (SQLSTATE `TM001`).
pub(crate) const PROTOCOL: i32 = 1;

/// Key of the advisory lock that serialises install and enable_sync (`"tidemark"`
/// as ASCII, truncated to 8 bytes).
const LOCK_KEY: i64 = 0x7469_6465_6d61_726b;

/// Migrations: `MIGRATIONS[i]` brings a schema at version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[include_str!("../sql/v1.sql")];

pub(crate) async fn install(c: &mut Client) -> Result<i32, PgError> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS tidemark;
         CREATE TABLE IF NOT EXISTS tidemark.schema_version (
             component text PRIMARY KEY,
             version int NOT NULL,
             installed_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let current: i32 = match tx
        .query_opt(
            "SELECT version FROM tidemark.schema_version WHERE component = 'tidemark'",
            &[],
        )
        .await?
    {
        Some(r) => r.try_get(0)?,
        None => 0,
    };
    if current > VERSION {
        return Err(PgError::Schema(format!(
            "the server's tidemark schema is version {current}, newer than this client ({VERSION})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        tx.batch_execute(sql).await?;
        let v = i as i32 + 1;
        tx.execute(
            "INSERT INTO tidemark.schema_version (component, version) VALUES ('tidemark', $1)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, installed_at = now()",
            &[&v],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(VERSION)
}

/// A plain SQL identifier (letters, digits, `_`, starting with a letter or `_`,
/// at most 50 bytes so derived names fit PostgreSQL's 63).
fn identifier(s: &str) -> Result<&str, PgError> {
    let ok = !s.is_empty()
        && s.len() <= 50
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(s)
    } else {
        Err(PgError::Invalid(format!(
            "{s:?} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*, at most 50 bytes)"
        )))
    }
}

fn q(id: &str) -> String {
    format!("\"{}\"", id.replace('"', "\"\""))
}

pub(crate) async fn enable_sync(
    c: &mut Client,
    table: &str,
    owner: Option<&str>,
) -> Result<(), PgError> {
    let (schema, name) = match table.split_once('.') {
        Some((s, t)) => (identifier(s)?, identifier(t)?),
        None => ("public", identifier(table)?),
    };
    if let Some(o) = owner {
        identifier(o)?;
    }
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    let installed: bool = tx
        .query_one("SELECT to_regclass('tidemark.synced') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !installed {
        return Err(PgError::Schema(
            "tidemark is not installed; run install() first".into(),
        ));
    }
    let fq = format!("{}.{}", q(schema), q(name));
    let cols = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&fq],
        )
        .await?;
    if cols.is_empty() {
        return Err(PgError::Invalid(format!("no table {schema}.{name}")));
    }
    let type_of = |col: &str| -> Option<String> {
        cols.iter().find_map(|r| {
            let n: String = r.get(0);
            (n == col).then(|| r.get::<_, String>(1))
        })
    };
    match type_of("id").as_deref() {
        Some(t) if t == "text" || t.starts_with("character varying") => {}
        Some(t) => {
            return Err(PgError::Invalid(format!(
                "{schema}.{name}.id is {t}; tidemark record ids need a text or varchar id"
            )))
        }
        None => {
            return Err(PgError::Invalid(format!(
                "{schema}.{name} has no id column"
            )))
        }
    }
    if let Some(o) = owner {
        match type_of(o).as_deref() {
            Some(t) if t == "text" || t.starts_with("character varying") || t == "name" => {}
            Some(t) => {
                return Err(PgError::Invalid(format!(
                    "owner column {o} is {t}; it must hold role names (text)"
                )))
            }
            None => {
                return Err(PgError::Invalid(format!(
                    "{schema}.{name} has no column {o}"
                )))
            }
        }
    }
    let func = q(&format!("write_{name}"));
    let coll_lit = literal(name);
    let old_owner = match owner {
        Some(o) => format!("coalesce(OLD.{}::text, '')", q(o)),
        None => "''".into(),
    };
    let new_owner = match owner {
        Some(o) => format!("coalesce(NEW.{}::text, '')", q(o)),
        None => "''".into(),
    };
    let trg_fn = format!(
        r#"
CREATE OR REPLACE FUNCTION tidemark.{func}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    s bigint;
    h bigint;
    me text;
    cid text := nullif(current_setting('tidemark.cid', true), '');
BEGIN
    -- Lock the head row until this transaction ends: writers take seqs one
    -- transaction at a time, so seq order is commit order. `h` is the last
    -- published seq (this transaction publishes its own only at commit).
    SELECT seq INTO h FROM tidemark.head FOR UPDATE;
    me := pg_current_xact_id()::text || ':' || h;
    IF current_setting('tidemark.txn', true) IS DISTINCT FROM me THEN
        -- First write of this transaction: seqs taken by transactions that rolled
        -- back are handed out again (gap-free).
        PERFORM setval('tidemark.counter', h);
        PERFORM set_config('tidemark.txn', me, true);
    END IF;
    s := nextval('tidemark.counter');
    IF s <= h THEN
        -- Only if the marker above was forged: never hand out a published seq.
        PERFORM setval('tidemark.counter', h);
        s := nextval('tidemark.counter');
    END IF;
    PERFORM set_config('tidemark.seq', s::text, true);
    IF TG_OP = 'DELETE' THEN
        INSERT INTO tidemark.tombstones AS b (collection, id, owner, seq, change_id, moved, at)
        VALUES ({coll_lit}, OLD.id, {old_owner}, s, cid, false, now())
        ON CONFLICT (collection, id, owner) DO UPDATE
            SET seq = EXCLUDED.seq, change_id = EXCLUDED.change_id, moved = false, at = EXCLUDED.at;
        PERFORM pg_notify('tidemark', '');
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id IS DISTINCT FROM OLD.id THEN
            INSERT INTO tidemark.tombstones AS b (collection, id, owner, seq, change_id, moved, at)
            VALUES ({coll_lit}, OLD.id, {old_owner}, s, cid, false, now())
            ON CONFLICT (collection, id, owner) DO UPDATE
                SET seq = EXCLUDED.seq, change_id = EXCLUDED.change_id, moved = false, at = EXCLUDED.at;
        ELSIF {new_owner} <> {old_owner} THEN
            INSERT INTO tidemark.tombstones AS b (collection, id, owner, seq, change_id, moved, at)
            VALUES ({coll_lit}, OLD.id, {old_owner}, s, cid, true, now())
            ON CONFLICT (collection, id, owner) DO UPDATE
                SET seq = EXCLUDED.seq, change_id = EXCLUDED.change_id, moved = true, at = EXCLUDED.at;
        END IF;
    END IF;
    NEW.tm_seq := s;
    NEW.tm_cid := cid;
    PERFORM pg_notify('tidemark', '');
    RETURN NEW;
END $fn$;
REVOKE ALL ON FUNCTION tidemark.{func}() FROM PUBLIC;
"#
    );
    let idx_seq = q(&format!("{name}_tm_seq"));
    let idx_owner = q(&format!("{name}_tm_owner_seq"));
    let mut sql = format!(
        "LOCK TABLE {fq} IN ACCESS EXCLUSIVE MODE;
         ALTER TABLE {fq} ADD COLUMN IF NOT EXISTS tm_seq bigint, ADD COLUMN IF NOT EXISTS tm_cid text;
         DROP TRIGGER IF EXISTS zz_tidemark_write ON {fq};
         DROP TRIGGER IF EXISTS zz_tidemark_delete ON {fq};
         DROP TRIGGER IF EXISTS zz_tidemark_truncate ON {fq};
         DROP TRIGGER IF EXISTS zz_tidemark_publish ON {fq};
         WITH n AS (SELECT count(*) AS c FROM {fq} WHERE tm_seq IS NULL),
              h AS (UPDATE tidemark.head SET seq = seq + (SELECT c FROM n)
                    RETURNING seq - (SELECT c FROM n) AS base)
         UPDATE {fq} AS t SET tm_seq = h.base + r.rn
         FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM {fq} WHERE tm_seq IS NULL) r, h
         WHERE t.id = r.id;
         ALTER TABLE {fq} ALTER COLUMN tm_seq SET NOT NULL;
         CREATE UNIQUE INDEX IF NOT EXISTS {idx_seq} ON {fq} (tm_seq);
         {trg_fn}
         CREATE TRIGGER zz_tidemark_write BEFORE INSERT OR UPDATE ON {fq}
             FOR EACH ROW EXECUTE FUNCTION tidemark.{func}();
         CREATE TRIGGER zz_tidemark_delete AFTER DELETE ON {fq}
             FOR EACH ROW EXECUTE FUNCTION tidemark.{func}();
         CREATE CONSTRAINT TRIGGER zz_tidemark_publish AFTER INSERT OR UPDATE OR DELETE ON {fq}
             DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION tidemark.publish_head();
         CREATE TRIGGER zz_tidemark_truncate BEFORE TRUNCATE ON {fq}
             FOR EACH STATEMENT EXECUTE FUNCTION tidemark.refuse_truncate();
         GRANT SELECT, INSERT, UPDATE, DELETE ON {fq} TO tidemark_sync;
         DROP POLICY IF EXISTS tidemark_owner ON {fq};
        "
    );
    match owner {
        Some(o) => {
            let oc = q(o);
            sql.push_str(&format!(
                "CREATE INDEX IF NOT EXISTS {idx_owner} ON {fq} ({oc}, tm_seq);
                 ALTER TABLE {fq} ENABLE ROW LEVEL SECURITY;
                 CREATE POLICY tidemark_owner ON {fq}
                     USING ({oc} IS NULL OR {oc}::text = '' OR {oc}::text = current_user::text)
                     WITH CHECK ({oc} IS NULL OR {oc}::text = '' OR {oc}::text = current_user::text);"
            ));
        }
        None => sql.push_str(&format!("ALTER TABLE {fq} DISABLE ROW LEVEL SECURITY;")),
    }
    tx.batch_execute(&sql).await?;
    tx.execute(
        "INSERT INTO tidemark.synced (collection, schema_name, table_name, owner_column)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (collection) DO UPDATE
             SET schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
                 owner_column = EXCLUDED.owner_column",
        &[&name, &schema, &name, &owner],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
