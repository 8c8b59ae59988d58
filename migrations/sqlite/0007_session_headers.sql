-- The headers the platform asked every chunk PUT to carry (a JSON object),
-- saved with the session so that a resumed session sends them too: a store
-- that signed its presigned URLs with them refuses chunks without them.
-- NULL for sessions saved before this column existed.
ALTER TABLE multipart_sessions ADD COLUMN upload_headers TEXT;

-- Every multipart session a file has had, kept after it ends (the session
-- row above is dropped once the file is done), so that `show` can list
-- them and a replaced session stays accountable.
CREATE TABLE multipart_session_log (
    file_id      INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    upload_id    TEXT    NOT NULL,
    asset_id     TEXT    NOT NULL,
    total_chunks INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    -- Unix ms; NULL while the session is in use.
    ended_at     INTEGER,
    -- "completed", or why the session was given up ("expired", "gone",
    -- "the store refused chunk 3 of 9 …"); NULL while in use.
    outcome      TEXT,
    PRIMARY KEY (file_id, upload_id)
);
