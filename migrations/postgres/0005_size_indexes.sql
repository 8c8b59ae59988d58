-- 0004's plain index on size was chosen by the planner for lookups by path
-- and stat too (there are no statistics to tell it apart from the path
-- index), which turned a start-up scan over many files of one size into a
-- scan of every record per file. These partial indexes serve only the
-- hash stage's questions, whose WHERE clauses repeat theirs word for word
-- (src/ledger/files.rs, SAME_SIZE_SQL): is there any other live record of
-- this size, and is one of them being sent with its hash unknown.
DROP INDEX IF EXISTS files_size;
CREATE INDEX files_live_size ON files (size)
    WHERE path_bytes IS NOT NULL AND state IN
        ('discovered', 'queued', 'uploading', 'processing', 'ready', 'indexing', 'indexed');
CREATE INDEX files_unhashed_size ON files (size)
    WHERE path_bytes IS NOT NULL AND sha256 IS NULL AND state IN
        ('queued', 'uploading', 'processing', 'ready', 'indexing', 'indexed');
