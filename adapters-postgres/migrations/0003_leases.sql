-- Leases that expire unless their holder renews them (one active relay per checkpoint).
--
-- They replace session advisory locks: such a lock lives as long as the server keeps the
-- holder's session, which, when the holder's host dies or its network silently drops, is until
-- TCP gives up (about two hours), or never when a proxy (docker-proxy, PgBouncer, a cloud load
-- balancer) keeps the server's side of the connection alive. A row with an expiry ends on time
-- whatever happens to the holder, its connections and anything between them.
--
-- name:       the lease (the relay's checkpoint name).
-- holder:     who took it, as shown by `status`.
-- epoch:      incremented at every takeover, never reset (a release keeps the row): a fencing
--             token, so a holder's tenure is (name, epoch) and a stale holder can be told apart.
-- expires_at: the lease is free from then on, on the server's clock. A takeover or a renewal
--             sets it to clock_timestamp() + ttl; a release sets it to clock_timestamp().
CREATE TABLE leases (
    name        text        PRIMARY KEY CHECK (name <> ''),
    holder      text        NOT NULL,
    epoch       bigint      NOT NULL CHECK (epoch >= 1),
    acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz NOT NULL
);

REVOKE ALL ON leases FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON leases TO edupulse_app;
