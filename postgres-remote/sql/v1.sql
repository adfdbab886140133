-- tidemark schema, version 1. Run by PostgresRemote::install() inside one
-- transaction that holds the advisory lock; every statement is idempotent.

CREATE TABLE IF NOT EXISTS tidemark.head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    -- The last seq handed out. Every write to a synced table increments it in the
    -- write's own transaction; the row lock serialises writers, so seq order is
    -- commit order.
    seq bigint NOT NULL DEFAULT 0,
    -- The retention horizon: the oldest watermark an incremental pull may start from.
    horizon bigint NOT NULL DEFAULT 0
);
INSERT INTO tidemark.head DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Hands out the seqs inside a transaction that holds the head row locked (see the
-- write triggers). Users have no privilege on it.
CREATE SEQUENCE IF NOT EXISTS tidemark.counter AS bigint MINVALUE 0 START 0;
REVOKE ALL ON SEQUENCE tidemark.counter FROM PUBLIC;

-- Publishes a transaction's last seq in the head row. Runs as a deferred
-- constraint trigger on every synced table, so at commit (or when a statement
-- ends, under SET CONSTRAINTS ALL IMMEDIATE), while the head row is still locked
-- by this transaction. Only the first firing changes the row.
CREATE OR REPLACE FUNCTION tidemark.publish_head()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v bigint := currval('tidemark.counter');
BEGIN
    UPDATE tidemark.head SET seq = v WHERE seq < v;
    RETURN NULL;
END $fn$;
REVOKE ALL ON FUNCTION tidemark.publish_head() FROM PUBLIC;

-- Registered (synced) tables. The collection name is the table's name.
CREATE TABLE IF NOT EXISTS tidemark.synced (
    collection text PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    owner_column text,
    enabled_at timestamptz NOT NULL DEFAULT now()
);

-- One tombstone per record and owner it was visible to: a delete writes one for the
-- record's owner, an update that changes the owner writes a `moved` one for the old
-- owner (so the record leaves the old owner's stores). '' is "no owner" (shared).
CREATE TABLE IF NOT EXISTS tidemark.tombstones (
    collection text NOT NULL,
    id text NOT NULL,
    owner text NOT NULL DEFAULT '',
    seq bigint NOT NULL,
    change_id text,
    moved boolean NOT NULL DEFAULT false,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, id, owner)
);
CREATE UNIQUE INDEX IF NOT EXISTS tombstones_seq ON tidemark.tombstones (seq);
CREATE INDEX IF NOT EXISTS tombstones_collection_seq ON tidemark.tombstones (collection, seq);
CREATE INDEX IF NOT EXISTS tombstones_at ON tidemark.tombstones (at);

-- The idempotency memory: per record, per writing role and per writer (client id),
-- the newest change counter applied and the version it produced. Scoped by role
-- (row level security below), so no user can read or plant another user's answers.
CREATE TABLE IF NOT EXISTS tidemark.applied (
    collection text NOT NULL,
    id text NOT NULL,
    writer text NOT NULL DEFAULT current_user,
    client text NOT NULL,
    n bigint NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (collection, id, writer, client)
);

ALTER TABLE tidemark.tombstones ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS visible ON tidemark.tombstones;
CREATE POLICY visible ON tidemark.tombstones FOR SELECT
    USING (owner = '' OR owner = current_user::text);

ALTER TABLE tidemark.applied ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own ON tidemark.applied;
CREATE POLICY own ON tidemark.applied
    USING (writer = current_user::text) WITH CHECK (writer = current_user::text);

-- The role every syncing user is granted (GRANT tidemark_sync TO alice).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tidemark_sync') THEN
        CREATE ROLE tidemark_sync NOLOGIN;
    END IF;
END $$;

GRANT USAGE ON SCHEMA tidemark TO tidemark_sync;
GRANT SELECT ON tidemark.head, tidemark.synced, tidemark.schema_version TO tidemark_sync;
GRANT SELECT ON tidemark.tombstones TO tidemark_sync;
GRANT SELECT, INSERT, UPDATE ON tidemark.applied TO tidemark_sync;

-- The pull: every visible change with since < seq <= head, at most p_limit + 1 rows
-- from each source (each synced table and its tombstones), in seq order. Runs as the
-- caller, so row level security decides what it returns. Every seq <= head is
-- committed (its writer held the head row until it committed), and a compaction
-- either precedes the snapshot (its horizon is seen) or follows it (its deleted
-- tombstones are still seen), so no page misses a compacted tombstone silently.
-- STABLE: every statement sees the calling query's snapshot, so head, data and
-- horizon are one consistent cut. Rows are turned into JSON after the LIMIT (in the
-- outer query), so a plan that sorts does not convert rows it then drops. One extra row is a header: collection NULL,
-- seq = head, change_id = horizon.
CREATE OR REPLACE FUNCTION tidemark.pull(p_proto int, p_since bigint, p_limit int)
RETURNS TABLE (seq bigint, collection text, id text, fields jsonb, change_id text, tomb boolean)
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_head bigint;
    v_horizon bigint;
    t record;
    q text := '';
BEGIN
    IF p_proto <> 1 THEN
        RAISE EXCEPTION 'tidemark protocol % is not supported by this server (1)', p_proto
            USING ERRCODE = 'TM001';
    END IF;
    SELECT h.seq INTO v_head FROM tidemark.head h;
    IF p_since < v_head THEN
        FOR t IN
            SELECT s.* FROM tidemark.synced s
            WHERE coalesce(has_table_privilege(to_regclass(format('%I.%I', s.schema_name, s.table_name)), 'SELECT'), false)
            ORDER BY s.collection
        LOOP
            q := q || format(
                $q$(SELECT r.tm_seq, %1$L::text, r.id::text,
                           to_jsonb(r) - 'id' - 'tm_seq' - 'tm_cid', r.tm_cid, false
                    FROM (SELECT * FROM %2$I.%3$I x
                          WHERE x.tm_seq > $1 AND x.tm_seq <= $2
                          ORDER BY x.tm_seq LIMIT $3) r)
                   UNION ALL
                   (SELECT b.seq, %1$L::text, b.id, NULL::jsonb, b.change_id, true
                    FROM tidemark.tombstones b
                    WHERE b.collection = %1$L AND b.seq > $1 AND b.seq <= $2
                      AND (NOT b.moved OR NOT EXISTS
                           (SELECT 1 FROM %2$I.%3$I l WHERE l.id::text = b.id))
                    ORDER BY b.seq LIMIT $3)
                   UNION ALL $q$,
                t.collection, t.schema_name, t.table_name);
        END LOOP;
    END IF;
    IF q <> '' THEN
        q := left(q, length(q) - length('UNION ALL '));
        RETURN QUERY EXECUTE q USING p_since, v_head, p_limit + 1;
    END IF;
    SELECT h.horizon INTO v_horizon FROM tidemark.head h;
    -- The header row comes last (the client sorts the rows by seq).
    RETURN QUERY SELECT v_head, NULL::text, NULL::text, NULL::jsonb, v_horizon::text, false;
END $fn$;

-- The push: one outcome per change, in order, all decided in the caller's
-- transaction. Runs as the caller, so row level security and the caller's grants
-- decide what it may write. Each change runs in its own subtransaction (an
-- EXCEPTION block): a change the server refuses (constraint, type, permission,
-- an application trigger's RAISE) is rolled back alone and answered as rejected.
-- Errors that are not about the change (serialisation, deadlock, lock or statement
-- timeout, resources, shutdown) fail the whole call, which then commits nothing.
--
-- Input: [{"cid": "<client>.<n>", "cl": client, "n": n, "c": collection, "id": id,
--          "b": base or null, "d": true for a delete, "f": {fields}}]
-- Output: [{"k":"a","v":version} | {"k":"c","v":version,"f":fields|null,"cid":..}
--          | {"k":"r","m":message,"fields":{name: message}}]
-- One change of a push (see tidemark.push). `p_safe`: the caller runs it in a
-- subtransaction of its own, so a create that loses a race on the primary key can
-- be caught and answered as a conflict. `cols` caches each table's columns.
CREATE OR REPLACE FUNCTION tidemark.push_one(ch jsonb, v_horizon bigint, p_safe boolean,
                                             INOUT cols jsonb, OUT res jsonb)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_coll text; v_id text; v_client text; v_n bigint; v_base bigint; v_del boolean;
    v_f jsonb; v_me text := current_user::text;
    m record; t record; v_cseq bigint; v_ccid text; v_cj jsonb; v_tseq bigint; v_tcid text;
    v_ver bigint; v_bad jsonb; v_set text; v_ins text; v_sel text; k text;
    found_live boolean; found_tomb boolean; v_rows bigint; v_key text; v_sql text;
BEGIN
    v_coll := ch->>'c'; v_id := ch->>'id'; v_client := ch->>'cl';
    v_n := (ch->>'n')::bigint; v_base := (ch->>'b')::bigint;
    v_del := coalesce((ch->>'d')::boolean, false); v_f := ch->'f';
    res := NULL;
    v_cseq := NULL; v_ccid := NULL; v_cj := NULL;
            -- Idempotency: only the exact change id this writer applied last.
            SELECT a.n, a.version INTO m FROM tidemark.applied a
            WHERE a.collection = v_coll AND a.id = v_id AND a.writer = v_me
              AND a.client = v_client;
            IF FOUND AND m.n = v_n THEN
                res := jsonb_build_object('k', 'a', 'v', m.version);
            END IF;
            IF res IS NULL THEN
                SELECT s.* INTO t FROM tidemark.synced s WHERE s.collection = v_coll
                  AND to_regclass(format('%I.%I', s.schema_name, s.table_name)) IS NOT NULL;
                IF NOT FOUND THEN
                    res := jsonb_build_object('k', 'r', 'm',
                        format('collection %s is not synced by this server', v_coll),
                        'fields', '{}'::jsonb);
                END IF;
            END IF;
            IF res IS NULL THEN
                -- The record as the caller sees it, locked until commit. A create
                -- skips this: if the record exists, its INSERT fails on the primary
                -- key and the change is decided again with a savepoint (below).
                IF v_base IS NULL AND NOT v_del AND NOT p_safe THEN
                    found_live := false;
                ELSE
                    EXECUTE format('SELECT r.tm_seq, r.tm_cid, to_jsonb(r) - ''id'' - ''tm_seq'' - ''tm_cid'' AS j
                                    FROM %I.%I r WHERE r.id = $1 FOR UPDATE', t.schema_name, t.table_name)
                        INTO v_cseq, v_ccid, v_cj USING v_id;
                    found_live := v_cseq IS NOT NULL;
                END IF;
                found_tomb := false;
                v_tseq := NULL;
                v_tcid := NULL;
                IF NOT found_live THEN
                    SELECT b.seq, b.change_id INTO v_tseq, v_tcid FROM tidemark.tombstones b
                    WHERE b.collection = v_coll AND b.id = v_id
                    ORDER BY b.seq DESC LIMIT 1;
                    found_tomb := FOUND;
                END IF;
                IF found_live AND v_base IS DISTINCT FROM v_cseq THEN
                    res := jsonb_build_object('k', 'c', 'v', v_cseq, 'f', v_cj, 'cid', v_ccid);
                ELSIF found_tomb AND v_base IS DISTINCT FROM v_tseq THEN
                    res := jsonb_build_object('k', 'c', 'v', v_tseq, 'f', NULL, 'cid', v_tcid);
                ELSIF NOT found_live AND NOT found_tomb AND v_base IS NOT NULL
                      AND v_base <> v_horizon THEN
                    -- Unknown here: deleted and compacted (or never visible).
                    res := jsonb_build_object('k', 'c', 'v', v_horizon, 'f', NULL, 'cid', NULL);
                END IF;
            END IF;
            IF res IS NULL AND v_del THEN
                IF found_live THEN
                    PERFORM set_config('tidemark.cid', ch->>'cid', true);
                    EXECUTE format('DELETE FROM %I.%I r WHERE r.id = $1', t.schema_name, t.table_name)
                        USING v_id;
                    GET DIAGNOSTICS v_rows = ROW_COUNT;
                    IF v_rows = 1 THEN
                        -- The delete trigger left its seq in tidemark.seq.
                        v_ver := nullif(current_setting('tidemark.seq', true), '')::bigint;
                    END IF;
                ELSIF found_tomb THEN
                    v_ver := v_tseq;
                ELSE
                    SELECT h.seq INTO v_ver FROM tidemark.head h;
                END IF;
            ELSIF res IS NULL THEN
                IF jsonb_typeof(v_f) IS DISTINCT FROM 'object' THEN
                    RAISE EXCEPTION 'an upsert needs a JSON object of fields' USING ERRCODE = '22023';
                END IF;
                IF NOT cols ? v_coll THEN
                    cols := cols || jsonb_build_object(v_coll, (
                        SELECT coalesce(jsonb_agg(a.attname::text ORDER BY a.attnum), '[]'::jsonb)
                        FROM pg_attribute a
                        WHERE a.attrelid = format('%I.%I', t.schema_name, t.table_name)::regclass
                          AND a.attnum > 0 AND NOT a.attisdropped
                          AND a.attname NOT IN ('id', 'tm_seq', 'tm_cid')
                          AND a.attgenerated = ''));
                END IF;
                v_bad := '{}';
                v_key := v_coll || chr(1) || found_live::text;
                FOR k IN SELECT jsonb_object_keys(v_f) LOOP
                    v_key := v_key || chr(1) || k;
                    IF k IN ('id', 'tm_seq', 'tm_cid') THEN
                        v_bad := v_bad || jsonb_build_object(k, 'reserved by tidemark');
                    ELSIF NOT (cols->v_coll) ? k THEN
                        v_bad := v_bad || jsonb_build_object(k, 'no such column');
                    END IF;
                END LOOP;
                IF v_bad <> '{}' THEN
                    res := jsonb_build_object('k', 'r', 'm',
                        format('fields that %s cannot hold', v_coll), 'fields', v_bad);
                ELSE
                    PERFORM set_config('tidemark.cid', ch->>'cid', true);
                    v_sql := cols->'#sql'->>v_key;
                    IF v_sql IS NULL AND found_live THEN
                        SELECT string_agg(format('%I = %s', c,
                                   CASE WHEN v_f ? c THEN format('x.%I', c) ELSE 'DEFAULT' END), ', ')
                          INTO v_set FROM jsonb_array_elements_text(cols->v_coll) c;
                        IF v_set IS NULL THEN
                            v_set := 'id = r.id';
                        END IF;
                        v_sql := format('UPDATE %I.%I r SET %s FROM jsonb_populate_record(NULL::%I.%I, $1) x
                                         WHERE r.id = $2 RETURNING r.tm_seq',
                                        t.schema_name, t.table_name, v_set, t.schema_name, t.table_name);
                        -- Cached for the rest of the batch (same table, same fields).
                        cols := jsonb_set(cols, ARRAY['#sql'],
                                          coalesce(cols->'#sql', '{}') || jsonb_build_object(v_key, v_sql));
                    ELSIF v_sql IS NULL THEN
                        SELECT string_agg(format('%I', c), ', '), string_agg(format('x.%I', c), ', ')
                          INTO v_ins, v_sel
                          FROM jsonb_array_elements_text(cols->v_coll) c WHERE v_f ? c;
                        v_sql := format('INSERT INTO %I.%I AS r (id%s) SELECT $2%s
                                         FROM jsonb_populate_record(NULL::%I.%I, $1) x RETURNING r.tm_seq',
                                        t.schema_name, t.table_name,
                                        coalesce(', ' || v_ins, ''), coalesce(', ' || v_sel, ''),
                                        t.schema_name, t.table_name);
                        -- Cached for the rest of the batch (same table, same fields).
                        cols := jsonb_set(cols, ARRAY['#sql'],
                                          coalesce(cols->'#sql', '{}') || jsonb_build_object(v_key, v_sql));
                    END IF;
                    IF found_live THEN
                        EXECUTE v_sql INTO v_ver USING v_f, v_id;
                    ELSE
                        IF NOT p_safe THEN
                            EXECUTE v_sql INTO v_ver USING v_f, v_id;
                        ELSE
                        BEGIN
                            EXECUTE v_sql INTO v_ver USING v_f, v_id;
                        EXCEPTION WHEN unique_violation THEN
                            -- Created meanwhile by another transaction (now committed),
                            -- or it exists and the caller may not see it.
                            EXECUTE format('SELECT r.tm_seq, r.tm_cid, to_jsonb(r) - ''id'' - ''tm_seq'' - ''tm_cid'' AS j
                                            FROM %I.%I r WHERE r.id = $1', t.schema_name, t.table_name)
                                INTO v_cseq, v_ccid, v_cj USING v_id;
                            IF v_cseq IS NOT NULL THEN
                                res := jsonb_build_object('k', 'c', 'v', v_cseq, 'f', v_cj, 'cid', v_ccid);
                            ELSE
                                res := jsonb_build_object('k', 'r', 'm',
                                    format('record %s/%s exists and is not yours to write', v_coll, v_id),
                                    'fields', '{}'::jsonb);
                            END IF;
                        END;
                        END IF;
                    END IF;
                    PERFORM set_config('tidemark.cid', '', true);
                END IF;
            END IF;
            IF res IS NULL THEN
                IF v_ver IS NULL THEN
                    RAISE EXCEPTION 'record %/% was not written (not visible to %)', v_coll, v_id, v_me
                        USING ERRCODE = '42501';
                END IF;
                INSERT INTO tidemark.applied AS a (collection, id, writer, client, n, version)
                VALUES (v_coll, v_id, v_me, v_client, v_n, v_ver)
                ON CONFLICT (collection, id, writer, client)
                DO UPDATE SET n = EXCLUDED.n, version = EXCLUDED.version;
                res := jsonb_build_object('k', 'a', 'v', v_ver);
            END IF;
END $fn$;

CREATE OR REPLACE FUNCTION tidemark.push(p_proto int, p jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ch jsonb;
    outs jsonb[] := '{}';
    r record;
    cols jsonb := '{}';
    v_horizon bigint;
BEGIN
    IF p_proto <> 1 THEN
        RAISE EXCEPTION 'tidemark protocol % is not supported by this server (1)', p_proto
            USING ERRCODE = 'TM001';
    END IF;
    IF jsonb_typeof(p) <> 'array' THEN
        RAISE EXCEPTION 'push expects a JSON array' USING ERRCODE = '22023';
    END IF;
    SELECT h.horizon INTO v_horizon FROM tidemark.head h;
    -- Optimistic pass: the whole batch in one subtransaction (a subtransaction per
    -- change costs, and past 64 of them PostgreSQL's snapshots overflow to
    -- pg_subtrans, which slows every session). If any change raises, all of it
    -- is undone and the second pass decides each change in its own subtransaction.
    BEGIN
        FOR ch IN SELECT value FROM jsonb_array_elements(p) LOOP
            SELECT * INTO r FROM tidemark.push_one(ch, v_horizon, false, cols);
            cols := r.cols;
            outs := array_append(outs, r.res);
        END LOOP;
        PERFORM set_config('tidemark.cid', '', true);
        RETURN to_jsonb(outs);
    EXCEPTION
        WHEN data_exception OR integrity_constraint_violation OR with_check_option_violation
             OR raise_exception OR insufficient_privilege OR datatype_mismatch
             OR undefined_column THEN
            outs := '{}';
    END;
    FOR ch IN SELECT value FROM jsonb_array_elements(p) LOOP
        BEGIN
            SELECT * INTO r FROM tidemark.push_one(ch, v_horizon, true, cols);
            cols := r.cols;
            outs := array_append(outs, r.res);
        EXCEPTION
            WHEN data_exception OR integrity_constraint_violation OR with_check_option_violation
                 OR raise_exception OR insufficient_privilege OR datatype_mismatch
                 OR undefined_column THEN
                outs := array_append(outs, jsonb_build_object('k', 'r', 'm', SQLERRM,
                    'state', SQLSTATE, 'fields', '{}'::jsonb));
        END;
    END LOOP;
    PERFORM set_config('tidemark.cid', '', true);
    RETURN to_jsonb(outs);
END $fn$;

-- Compaction: drops the tombstones older than p_older_than (and every tombstone
-- with a lower seq) and raises the horizon to the highest seq dropped, in one
-- transaction. Returns the horizon.
CREATE OR REPLACE FUNCTION tidemark.compact(p_older_than interval)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_cut bigint;
    v_horizon bigint;
BEGIN
    -- Lock the head first: no write commits a seq while the horizon moves.
    SELECT h.horizon INTO v_horizon FROM tidemark.head h FOR UPDATE;
    SELECT max(b.seq) INTO v_cut FROM tidemark.tombstones b WHERE b.at < now() - p_older_than;
    IF v_cut IS NOT NULL AND v_cut > v_horizon THEN
        DELETE FROM tidemark.tombstones b WHERE b.seq <= v_cut;
        UPDATE tidemark.head SET horizon = v_cut RETURNING horizon INTO v_horizon;
    END IF;
    RETURN v_horizon;
END $fn$;

REVOKE ALL ON FUNCTION tidemark.compact(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tidemark.pull(int, bigint, int) TO tidemark_sync;
GRANT EXECUTE ON FUNCTION tidemark.push(int, jsonb) TO tidemark_sync;
GRANT EXECUTE ON FUNCTION tidemark.push_one(jsonb, bigint, boolean, jsonb) TO tidemark_sync;

-- One record as the caller sees it (no row if missing or not visible).
CREATE OR REPLACE FUNCTION tidemark.fetch(p_proto int, p_collection text, p_id text)
RETURNS TABLE (seq bigint, fields jsonb, change_id text)
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t record;
BEGIN
    IF p_proto <> 1 THEN
        RAISE EXCEPTION 'tidemark protocol % is not supported by this server (1)', p_proto
            USING ERRCODE = 'TM001';
    END IF;
    SELECT s.* INTO t FROM tidemark.synced s WHERE s.collection = p_collection
      AND coalesce(has_table_privilege(to_regclass(format('%I.%I', s.schema_name, s.table_name)), 'SELECT'), false);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT r.tm_seq, to_jsonb(r) - ''id'' - ''tm_seq'' - ''tm_cid'', r.tm_cid FROM %I.%I r WHERE r.id = $1',
        t.schema_name, t.table_name) USING p_id;
END $fn$;

-- Live records per synced table the caller may read, as row level security counts them.
CREATE OR REPLACE FUNCTION tidemark.counts(p_proto int)
RETURNS TABLE (collection text, n bigint)
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t record;
    v_n bigint;
BEGIN
    IF p_proto <> 1 THEN
        RAISE EXCEPTION 'tidemark protocol % is not supported by this server (1)', p_proto
            USING ERRCODE = 'TM001';
    END IF;
    FOR t IN SELECT s.* FROM tidemark.synced s
             WHERE coalesce(has_table_privilege(to_regclass(format('%I.%I', s.schema_name, s.table_name)), 'SELECT'), false)
             ORDER BY s.collection
    LOOP
        EXECUTE format('SELECT count(*) FROM %I.%I', t.schema_name, t.table_name) INTO v_n;
        collection := t.collection;
        n := v_n;
        RETURN NEXT;
    END LOOP;
END $fn$;

-- Synced tables refuse TRUNCATE: it removes rows without tombstones, so clients
-- would keep them. DELETE the rows instead (each leaves a tombstone).
CREATE OR REPLACE FUNCTION tidemark.refuse_truncate()
RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of synced table % leaves no tombstones; DELETE the rows instead',
        TG_TABLE_NAME USING ERRCODE = '0A000';
END $fn$;

GRANT EXECUTE ON FUNCTION tidemark.fetch(int, text, text) TO tidemark_sync;
GRANT EXECUTE ON FUNCTION tidemark.counts(int) TO tidemark_sync;
