-- Fencing per attempt: every claim of a record takes a new epoch, and every
-- write an attempt makes (state changes, multipart sessions and chunks)
-- must name the current one, so that a worker that outlived its claim (its
-- lease ran out, or its own daemon took the record back) cannot land a
-- stale answer.
ALTER TABLE files ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
-- URL records have no content hash: each carries a random stamp of its
-- own, sent in user_metadata, by which an upload whose answer was lost is
-- found on the platform before the URL is sent again.
ALTER TABLE files ADD COLUMN stamp TEXT;
UPDATE files SET stamp = replace(gen_random_uuid()::text, '-', '')
    WHERE url IS NOT NULL AND stamp IS NULL;
-- Each daemon's own lease (ms): `status` judges a daemon stale by it.
ALTER TABLE daemons ADD COLUMN lease_ms BIGINT;
-- Record ids are never reused: the identity's sequence never goes back
-- (SQLite needs a high-water mark for that, see its 0008).
