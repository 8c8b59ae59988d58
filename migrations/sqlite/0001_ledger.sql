-- The ledger: one row per file version (or URL), one row per attempt.
-- Times are Unix milliseconds (UTC): compact, indexable, converted to
-- RFC 3339 only for display.

CREATE TABLE files (
    id              INTEGER PRIMARY KEY,
    -- The exact OS path (bytes), used to open the file and as its identity;
    -- `path` is its display form (lossy where the name is not UTF-8).
    path_bytes      BLOB,
    path            TEXT,
    url             TEXT,
    size            INTEGER,
    mtime_ns        INTEGER,
    device          INTEGER,
    inode           INTEGER,
    sha256          TEXT,
    mime            TEXT,
    -- The watch's user_metadata as a JSON object (the sha256 stamp is added
    -- when sending, not stored here).
    user_metadata   TEXT,
    -- Must match src/ledger/state.rs.
    state           TEXT NOT NULL CHECK (state IN ('discovered', 'queued', 'uploading',
                        'processing', 'ready', 'indexing', 'indexed', 'duplicate',
                        'skipped', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    -- 1 when an earlier attempt may have reached the platform (the whole body
    -- was sent but no asset id was committed, or a crash mid-upload): the
    -- platform is searched for the file before it is sent again.
    lookup_first    INTEGER NOT NULL DEFAULT 0,
    asset_id        TEXT,
    duplicate_of    INTEGER REFERENCES files(id) ON DELETE SET NULL,
    discovered_at   INTEGER NOT NULL,
    uploaded_at     INTEGER,
    ready_at        INTEGER,
    updated_at      INTEGER NOT NULL,
    CHECK (path_bytes IS NOT NULL OR url IS NOT NULL)
);

-- Workers claim the oldest due queued record; the poller scans `processing`.
CREATE INDEX files_state_due ON files (state, next_attempt_at);
-- Dedupe by content.
CREATE INDEX files_sha256 ON files (sha256) WHERE sha256 IS NOT NULL;
-- Discovery looks up the newest record of a path.
CREATE INDEX files_path ON files (path_bytes, id);
-- `show` by asset id; duplicates follow their original.
CREATE INDEX files_asset ON files (asset_id) WHERE asset_id IS NOT NULL;
CREATE INDEX files_duplicate_of ON files (duplicate_of) WHERE duplicate_of IS NOT NULL;
-- History, newest first.
CREATE INDEX files_discovered ON files (discovered_at);

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    file_id     INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    -- accepted | found | transient | rate_limited | auth | permanent |
    -- changed | vanished | interrupted
    outcome     TEXT,
    http_status INTEGER,
    bytes_sent  INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);
CREATE INDEX attempts_file ON attempts (file_id);
