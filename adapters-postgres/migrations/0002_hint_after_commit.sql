-- Commit hints of the store's own appends are sent after their commit, not by the trigger.
--
-- A NOTIFY inside a transaction makes its commit take a database-wide lock and hold it through
-- the commit's WAL flush, so every notifying transaction commits one after the other: the group
-- commit writers and lone appenders waited on that lock (wait event Lock:object) for about a
-- seventh of their time at 5k events/s (issue 8). The store's own transactions set
-- `edupulse.hint_after_commit` for themselves (transaction-local) and send one coalesced NOTIFY
-- from a separate, read-only transaction after committing. Everyone else (a caller's own
-- transaction, a manual insert) still gets the hint from the trigger at commit, the only moment
-- that knows the transaction committed.
CREATE OR REPLACE FUNCTION edupulse_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('edupulse.hint_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('edupulse_events', '');
    END IF;
    RETURN NULL;
END
$$;
