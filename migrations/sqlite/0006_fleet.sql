-- Daemons sharing a ledger (a fleet on PostgreSQL; on SQLite the one
-- daemon, so that `status` reads the same table on both engines).
CREATE TABLE daemons (
    id           INTEGER PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    -- Unix ms of the last heartbeat; a daemon whose heartbeat is older than
    -- a few intervals is stale, and its claims expire with their leases.
    heartbeat_at INTEGER NOT NULL,
    stopped_at   INTEGER
);
-- The daemon (daemons.id) whose worker holds an `uploading` record, and
-- until when (Unix ms): another daemon takes the record over after that.
ALTER TABLE files ADD COLUMN claimed_by INTEGER;
ALTER TABLE files ADD COLUMN lease_until INTEGER;
-- Which daemon made each attempt.
ALTER TABLE attempts ADD COLUMN daemon_id INTEGER;
CREATE INDEX files_claims ON files (claimed_by) WHERE state = 'uploading';
-- The fleet's request pacing and shared 429 pause, one row updated
-- atomically (used on PostgreSQL; one process paces itself on SQLite).
CREATE TABLE fleet_gate (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    next_slot_ms    INTEGER NOT NULL DEFAULT 0,
    paused_until_ms INTEGER NOT NULL DEFAULT 0
);
INSERT INTO fleet_gate (id) VALUES (1);
-- The host that found a file: only daemons that can see the file claim it
-- (its host, or one watching the same folder, `daemon_roots`).
ALTER TABLE files ADD COLUMN origin_host TEXT;
CREATE TABLE daemon_roots (
    daemon_id INTEGER NOT NULL REFERENCES daemons(id) ON DELETE CASCADE,
    root      TEXT    NOT NULL,
    PRIMARY KEY (daemon_id, root)
);
