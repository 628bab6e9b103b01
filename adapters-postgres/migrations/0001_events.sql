-- The EduPulse event store: one append-only table that is also the relay's outbox, the relay's
-- checkpoints and dead letters, and the role applications connect as. See the crate docs of
-- edupulse-postgres for the reasoning behind each choice.

-- Events, in commit-safe order by (commit_key, position).
--
-- commit_key: the appending transaction's id (pg_current_xact_id), raised to the commit_key of the
-- stream's previous event when that one is higher, so per-stream order always holds in the global
-- order. A reader only reads below the snapshot horizon (pg_snapshot_xmin), under which every
-- transaction is finished, so no event can later appear below a cursor already read.
CREATE TABLE events (
    position       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    commit_key     bigint      NOT NULL CHECK (commit_key >= 0),
    event_id       uuid        NOT NULL,
    stream_id      uuid        NOT NULL,
    stream_version bigint      NOT NULL CHECK (stream_version >= 1),
    -- NULL for a standalone event, whose stream is its own id.
    aggregate_id   uuid        NULL,
    event_type     text        NOT NULL CHECK (event_type <> ''),
    schema_version integer     NOT NULL CHECK (schema_version BETWEEN 0 AND 65535),
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    metadata       jsonb       NOT NULL DEFAULT '{}',
    payload        jsonb       NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    -- Also the index for reading one stream forward and for finding its head.
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_stream_matches_aggregate CHECK (
        (aggregate_id IS NOT NULL AND aggregate_id = stream_id)
        OR (aggregate_id IS NULL AND stream_id = event_id)
    )
);

-- read_all: all events in commit-safe order.
CREATE INDEX events_commit_order_idx ON events (commit_key, position);

-- Append-only, enforced by the database itself, whoever connects (the table owner included).
-- SQLSTATE EP001 is ours alone, so callers can recognise the refusal by code.
CREATE FUNCTION edupulse_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'EP001',
              HINT = 'events are immutable facts; append a compensating event instead';
END
$$;

CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION edupulse_events_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION edupulse_events_append_only();

-- Wake-up hint for the relay. NOTIFY is delivered at commit (never for a rolled-back transaction,
-- including the transactions of callers appending inside their own), and identical notifications
-- of one transaction are folded into one, so the payload is empty on purpose.
CREATE FUNCTION edupulse_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('edupulse_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION edupulse_events_notify();

-- Named relay checkpoints; the cursor never moves backwards (enforced by the upsert).
CREATE TABLE relay_checkpoints (
    name       text        PRIMARY KEY,
    commit_key bigint      NOT NULL CHECK (commit_key >= 0),
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Events a relay gave up on (for example refused for good by the broker).
CREATE TABLE relay_dead_letters (
    name        text        NOT NULL,
    event_id    uuid        NOT NULL,
    position    bigint      NOT NULL,
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (name, event_id)
);

-- The role applications and the relay run as: it can read and append events, and nothing else
-- on them. Roles are cluster-wide, so creation is idempotent (and tolerant of a concurrent
-- migration of another database of the same cluster creating it at the same moment).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edupulse_app') THEN
        CREATE ROLE edupulse_app NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

REVOKE ALL ON events, relay_checkpoints, relay_dead_letters FROM PUBLIC;
GRANT SELECT, INSERT ON events TO edupulse_app;
GRANT SELECT, INSERT, UPDATE ON relay_checkpoints TO edupulse_app;
GRANT SELECT, INSERT ON relay_dead_letters TO edupulse_app;
