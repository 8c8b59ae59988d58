-- Multipart upload sessions, persisted as they go so that a restart resumes
-- the same session and sends only what is missing.
CREATE TABLE multipart_sessions (
    file_id      BIGINT PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
    upload_id    TEXT NOT NULL,
    asset_id     TEXT NOT NULL,
    chunk_size   BIGINT NOT NULL,
    total_chunks BIGINT NOT NULL,
    -- Unix ms; a session past this is replaced by a new one.
    expires_at   BIGINT,
    created_at   BIGINT NOT NULL
);

-- One row per chunk whose PUT succeeded, written as soon as it does, with
-- the ETag that proves it; `reported` once the platform has accepted that.
CREATE TABLE multipart_chunks (
    file_id     BIGINT NOT NULL REFERENCES multipart_sessions(file_id) ON DELETE CASCADE,
    chunk_index BIGINT NOT NULL,
    etag        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    reported    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (file_id, chunk_index)
);

-- What the watch asked for, recorded with the file at discovery so that a
-- reload cannot change what happens to files already in flight.
ALTER TABLE files ADD COLUMN root TEXT;            -- the watched folder it came from
ALTER TABLE files ADD COLUMN filename TEXT;        -- the name to give it (URL records)
ALTER TABLE files ADD COLUMN index_id TEXT;
ALTER TABLE files ADD COLUMN after_upload TEXT;    -- JSON of the watch's after_upload
ALTER TABLE files ADD COLUMN on_failure TEXT;      -- JSON of the watch's on_failure
-- Set by indexing.
ALTER TABLE files ADD COLUMN indexed_asset_id TEXT;
-- What was done with the file after it finished ("moved to …", "deleted",
-- "moved to … with …error.json"), or NULL while something is still to do.
ALTER TABLE files ADD COLUMN file_action TEXT;

-- URLs are queued once.
CREATE INDEX files_url ON files (url) WHERE url IS NOT NULL;
