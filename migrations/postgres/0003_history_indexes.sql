-- Operator queries on a large ledger.
-- `history --state S`, newest first: one index range per state, already in
-- order (the rowid, last in every index, breaks ties like `id DESC`).
CREATE INDEX files_state_discovered ON files (state, discovered_at);
-- `status`: the last errors, newest first, and how many failed lately. Only
-- records that carry an error are in it. The WHERE must stay exactly as the
-- queries in src/ledger/query.rs write it, or SQLite will not use it.
CREATE INDEX files_errors ON files (updated_at)
    WHERE last_error IS NOT NULL AND state NOT IN ('skipped', 'duplicate');
