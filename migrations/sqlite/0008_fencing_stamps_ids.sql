-- Fencing per attempt: every claim of a record takes a new epoch, and every
-- write an attempt makes (state changes, multipart sessions and chunks)
-- must name the current one, so that a worker that outlived its claim (its
-- lease ran out, or its own daemon took the record back) cannot land a
-- stale answer.
ALTER TABLE files ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
-- URL records have no content hash: each carries a random stamp of its
-- own, sent in user_metadata, by which an upload whose answer was lost is
-- found on the platform before the URL is sent again.
ALTER TABLE files ADD COLUMN stamp TEXT;
UPDATE files SET stamp = lower(hex(randomblob(16))) WHERE url IS NOT NULL AND stamp IS NULL;
-- Each daemon's own lease (ms): `status` judges a daemon stale by it.
ALTER TABLE daemons ADD COLUMN lease_ms INTEGER;
-- Record ids are never reused after `forget` or `prune` (an id in an old
-- log line must never name another file). SQLite reuses the highest rowid
-- once its row is gone, and AUTOINCREMENT would take a rebuild of `files`
-- (whose DROP cascades into every attempt while foreign keys are on): the
-- highest id ever given is kept here instead, and new records take the
-- next one (src/ledger/files.rs).
CREATE TABLE id_high_water (
    name TEXT PRIMARY KEY,
    high INTEGER NOT NULL
);
INSERT INTO id_high_water (name, high) SELECT 'files', coalesce(max(id), 0) FROM files;
CREATE TRIGGER files_high_water AFTER INSERT ON files
BEGIN
    UPDATE id_high_water SET high = max(high, NEW.id) WHERE name = 'files';
END;
