-- Streams a relay holds back: the first event of each it could not decode or publish, with its
-- stored bytes and the reason. The relay publishes nothing later of a parked stream (that would
-- break the stream's order at the broker) until an operator asks for a release: `retry` publishes
-- the parked event and what waits behind it, `skip` leaves the parked event out for good.
CREATE TABLE relay_parked_streams (
    name           text        NOT NULL,
    stream_id      uuid        NOT NULL,
    stream_version bigint      NOT NULL,
    event_id       uuid        NOT NULL,
    commit_key     bigint      NOT NULL,
    position       bigint      NOT NULL,
    reason         text        NOT NULL,
    raw            text        NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    release        text        CHECK (release IN ('retry', 'skip')),
    PRIMARY KEY (name, stream_id)
);

REVOKE ALL ON relay_parked_streams FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON relay_parked_streams TO edupulse_app;
