-- The highest broker sequence the relay had seen acknowledged when it saved its checkpoint.
-- `status` compares it with the broker's last sequence: a broker holding less than it once
-- acknowledged lost acknowledged messages (acknowledged before an fsync, or the stream was
-- recreated), and the events between need a replay.
ALTER TABLE relay_checkpoints
    ADD COLUMN broker_sequence bigint NOT NULL DEFAULT 0 CHECK (broker_sequence >= 0);
