-- Roles with one job each, and an events table that keeps its own rules whoever inserts.
--
-- edupulse_writer: what services (the writers) are granted. Reads events and appends them; every
-- row it inserts must follow the rules the relay relies on (checked below), so a hand-written
-- INSERT cannot hide an event from the relay or stall a stream. No access to checkpoints, leases,
-- parked streams or dead letters.
-- edupulse_relay: what the relay is granted. Reads events; owns checkpoints, leases, parked
-- streams and dead letters. Cannot append.
-- edupulse_app (earlier versions' single role): kept for existing deployments as the member of
-- both, with no privilege of its own; grant the two roles above to separate logins instead.
--
-- Both are NOLOGIN: grant them to login roles (`GRANT edupulse_writer TO lessons_service`).
-- Migrations run as the schema's owner, a login nothing else uses at run time.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edupulse_writer') THEN
        CREATE ROLE edupulse_writer NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edupulse_relay') THEN
        CREATE ROLE edupulse_relay NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

GRANT SELECT, INSERT ON events TO edupulse_writer;

GRANT SELECT ON events TO edupulse_relay;
GRANT SELECT, INSERT, UPDATE ON relay_checkpoints TO edupulse_relay;
GRANT SELECT, INSERT ON relay_dead_letters TO edupulse_relay;
GRANT SELECT, INSERT, UPDATE ON leases TO edupulse_relay;
GRANT SELECT, INSERT, UPDATE, DELETE ON relay_parked_streams TO edupulse_relay;

-- Granting role membership needs CREATEROLE (or ADMIN on the roles). An owner without it keeps
-- edupulse_app's own privileges as they were, so existing logins keep working either way.
DO $$
BEGIN
    GRANT edupulse_writer, edupulse_relay TO edupulse_app;
    REVOKE ALL ON events, relay_checkpoints, relay_dead_letters, leases, relay_parked_streams
        FROM edupulse_app;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'edupulse_app keeps its own privileges: granting it edupulse_writer and edupulse_relay needs CREATEROLE';
END
$$;

-- What the relay relies on, checked once per INSERT statement over the rows it inserted (a
-- transition table: one set-based query, not a trigger call per row):
--
-- - stream_version: a stream's versions follow each other. Version v > 1 needs v - 1 already
--   stored (a gap would hold the stream's later events back forever).
-- - commit_key: exactly the inserting transaction's id, raised to the key of the stream's
--   previous event, as the store computes it. A key below the transaction's id could fall below
--   a checkpoint already saved, and the relay would never read the event; a key above it would
--   stay above the read horizon, and the relay would wait for it forever.
--
-- position is an identity column: a value forced with OVERRIDING SYSTEM VALUE cannot reorder
-- anything (events are ordered by commit_key first, and a transaction's rows become readable
-- together), so it is left to the primary key.
--
-- SQLSTATE EP002 (version gap) and EP003 (commit key not the transaction's) are ours alone, so a
-- caller recognises the refusal by code.
CREATE FUNCTION edupulse_events_check_rules() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    xid  bigint := pg_current_xact_id()::text::int8;
    bad  record;
BEGIN
    SELECT n.stream_id, n.stream_version, n.commit_key,
           greatest(xid, p.commit_key) AS expected,
           (n.stream_version > 1 AND p.stream_version IS NULL) AS gap
    INTO bad
    FROM inserted_rows n
    LEFT JOIN events p
        ON p.stream_id = n.stream_id AND p.stream_version = n.stream_version - 1
    WHERE (n.stream_version > 1 AND p.stream_version IS NULL)
       OR n.commit_key IS DISTINCT FROM greatest(xid, p.commit_key)
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF bad.gap THEN
        RAISE EXCEPTION 'version % of stream % follows no version %',
            bad.stream_version, bad.stream_id, bad.stream_version - 1
            USING ERRCODE = 'EP002',
                  HINT = 'append through the store (edupulse-postgres), which numbers versions';
    END IF;
    RAISE EXCEPTION 'commit_key % of stream % version % is not % (the transaction id, raised to the previous version''s key)',
        bad.commit_key, bad.stream_id, bad.stream_version, bad.expected
        USING ERRCODE = 'EP003',
              HINT = 'append through the store (edupulse-postgres), which computes the commit key';
END
$$;

CREATE TRIGGER events_check_rules
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION edupulse_events_check_rules();
