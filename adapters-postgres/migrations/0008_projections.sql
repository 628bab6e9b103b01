-- Projections: progress, parked events and state, per projection and generation.
--
-- A projection is driven bucket by bucket (the broker's partitioned copy of the event stream).
-- A unit of work is one transaction that locks its bucket's row, applies a batch of events and
-- commits the projection's writes, each aggregate's applied version and the bucket's new
-- position together: that is what makes effects exactly once. A rebuild is a new generation
-- beside the old one, with rows of its own; `projection_generations` says which one readers use.

-- One row per bucket: where its next unit reads from. The row lock serialises units on a bucket,
-- and a unit commits only if the position is the one it read from.
--   position: the last feed sequence applied (0: none).
--   pending:  messages of the bucket not read yet, as the last unit saw it (the lag).
--   applied:  events applied or skipped so far through this bucket.
CREATE TABLE projection_buckets (
    projection text        NOT NULL,
    generation integer     NOT NULL CHECK (generation >= 0),
    bucket     integer     NOT NULL CHECK (bucket >= 0),
    position   bigint      NOT NULL DEFAULT 0 CHECK (position >= 0),
    pending    bigint      NOT NULL DEFAULT 0 CHECK (pending >= 0),
    applied    bigint      NOT NULL DEFAULT 0 CHECK (applied >= 0),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (projection, generation, bucket)
);

-- One row per aggregate the projection has seen: its last applied (or skipped) version, whether
-- it is parked (later events wait behind its first parked one), and whether an operator asked
-- for its parked events to be applied again.
CREATE TABLE projection_aggregates (
    projection text    NOT NULL,
    generation integer NOT NULL,
    stream_id  uuid    NOT NULL,
    applied    bigint  NOT NULL CHECK (applied >= 0),
    parked     boolean NOT NULL DEFAULT false,
    retry      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (projection, generation, stream_id)
);

-- The sequenced dead letter: parked events by aggregate and version, with the message's bytes
-- as the broker delivered them (not necessarily valid UTF-8, hence bytea) and why.
CREATE TABLE projection_parked (
    projection     text        NOT NULL,
    generation     integer     NOT NULL,
    stream_id      uuid        NOT NULL,
    stream_version bigint      NOT NULL,
    bucket         integer     NOT NULL,
    body           bytea       NOT NULL,
    reason         text        NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (projection, generation, stream_id, stream_version)
);

CREATE INDEX projection_parked_bucket ON projection_parked (projection, generation, bucket);

-- The state of projections that keep documents (key → JSON), committed with their progress.
CREATE TABLE projection_documents (
    projection text    NOT NULL,
    generation integer NOT NULL,
    key        text    NOT NULL,
    document   jsonb   NOT NULL,
    PRIMARY KEY (projection, generation, key)
);

-- Workers alive, each until its expiry (server clock): the buckets are shared among those.
CREATE TABLE projection_workers (
    projection text        NOT NULL,
    generation integer     NOT NULL,
    worker     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (projection, generation, worker)
);

-- The generation readers use, per projection name.
CREATE TABLE projection_generations (
    name        text        PRIMARY KEY,
    generation  integer     NOT NULL CHECK (generation >= 0),
    switched_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- What readers query: the documents of the generation switched to.
CREATE VIEW projection_active_documents AS
SELECT d.projection, d.key, d.document
FROM projection_documents d
JOIN projection_generations g ON g.name = d.projection AND g.generation = d.generation;

-- edupulse_projector: what projection workers are granted. Their tables; the leases that share
-- the buckets; and reading and appending events, for projections that emit events caused by
-- events (the events table checks every inserted row, whoever inserts it).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edupulse_projector') THEN
        CREATE ROLE edupulse_projector NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

REVOKE ALL ON projection_buckets, projection_aggregates, projection_parked, projection_documents,
    projection_workers, projection_generations, projection_active_documents FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON projection_buckets, projection_aggregates, projection_documents,
    projection_workers, projection_generations TO edupulse_projector;
GRANT DELETE ON projection_workers TO edupulse_projector;
GRANT SELECT, INSERT, DELETE ON projection_parked TO edupulse_projector;
GRANT SELECT ON projection_active_documents TO edupulse_projector;
GRANT SELECT, INSERT, UPDATE ON leases TO edupulse_projector;
GRANT SELECT, INSERT ON events TO edupulse_projector;

-- Readers of the projections (an API serving the catalogue) need only the view.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edupulse_reader') THEN
        CREATE ROLE edupulse_reader NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

GRANT SELECT ON projection_active_documents TO edupulse_reader;

-- edupulse_app (the all-in-one role of earlier versions) gets the projector's job too, where
-- the owner may grant roles.
DO $$
BEGIN
    GRANT edupulse_projector TO edupulse_app;
EXCEPTION
    WHEN insufficient_privilege OR undefined_object THEN
        RAISE NOTICE 'edupulse_app is not granted edupulse_projector: granting roles needs CREATEROLE';
END
$$;
