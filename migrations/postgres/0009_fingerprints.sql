-- A cheap fingerprint of every file's content (sha256 over 64 KiB from its
-- start, its middle and its end; the whole file up to 192 KiB), taken when
-- it is examined (src/pipeline/hasher.rs). Records of the same size are
-- told apart by it before anyone reads a whole file: only a same-size
-- record whose fingerprint matches makes the full hash necessary before
-- sending. Records from before this migration have none and count as a
-- match (README.md, "What happens to a file").
ALTER TABLE files ADD COLUMN fingerprint TEXT;
-- 0005's size indexes, now on (size, fingerprint), with their WHERE clauses
-- unchanged word for word (src/ledger/files/hashing.rs, SAME_SIZE_SQL and
-- SAME_PRINT_SQL): a size question and a size-and-fingerprint question
-- are each one index probe, however many files share the size.
DROP INDEX IF EXISTS files_live_size;
CREATE INDEX files_live_size ON files (size, fingerprint)
    WHERE path_bytes IS NOT NULL AND state IN
        ('discovered', 'queued', 'uploading', 'processing', 'ready', 'indexing', 'indexed');
DROP INDEX IF EXISTS files_unhashed_size;
CREATE INDEX files_unhashed_size ON files (size, fingerprint)
    WHERE path_bytes IS NOT NULL AND sha256 IS NULL AND state IN
        ('queued', 'uploading', 'processing', 'ready', 'indexing', 'indexed');
-- Records holding an asset without a fingerprint (from before this
-- migration, or queued by an older daemon on a shared ledger): each counts
-- as a match for any file of its size.
CREATE INDEX files_unprinted_size ON files (size)
    WHERE path_bytes IS NOT NULL AND fingerprint IS NULL AND state IN
        ('queued', 'uploading', 'processing', 'ready', 'indexing', 'indexed');
