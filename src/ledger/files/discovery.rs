//! A file seen on disk or a URL queued: the record that starts its life,
//! or what a known record makes of a file seen again.

use std::collections::HashMap;

use sqlx::FromRow;

use super::{expect_one, new_stamp, release_duplicates_tx, to_i64};
use crate::ledger::engine::{Q, Tx, stmt};
use crate::ledger::state::{Event, FileState};
use crate::ledger::{Ledger, LedgerError, now_ms};

/// A file seen on disk.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path_bytes: Vec<u8>,
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub device: u64,
    pub inode: u64,
    /// The watch's metadata, a JSON object.
    pub user_metadata: Option<String>,
    /// What the watch asked for (the daemon); `None` for `upload`.
    pub origin: Option<Origin>,
}

/// Where a record came from and what its watch wants done with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The watched folder (for `move_to`, which keeps the relative path).
    pub root: String,
    pub index_id: Option<String>,
    /// JSON of the watch's `after_upload` / `on_failure` (absent: keep).
    pub after_upload: Option<String>,
    pub on_failure: Option<String>,
}

/// What discovery made of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// First sight of this path, or a new version of an uploaded file.
    New(i64),
    /// The newest record of this path has the same size, mtime and inode.
    Known { id: i64, state: FileState },
    /// A record not yet uploaded saw its file change; it will be hashed again.
    Changed(i64),
}

/// The newest record of a path, as discovery compares it.
#[derive(FromRow, Clone)]
struct StatRow {
    id: i64,
    state: String,
    size: Option<i64>,
    mtime_ns: Option<i64>,
    device: Option<i64>,
    inode: Option<i64>,
}

/// A [`StatRow`] with the position of its file in a batch.
#[derive(FromRow)]
struct IndexedStatRow {
    i: i64,
    id: i64,
    state: String,
    size: Option<i64>,
    mtime_ns: Option<i64>,
    device: Option<i64>,
    inode: Option<i64>,
}

const NEWEST_STAT_SQL: &str = "SELECT id, state, size, mtime_ns, device, inode FROM files \
     WHERE path_bytes = $1 ORDER BY id DESC LIMIT 1";

/// What discovering a file comes to in its transaction.
enum Step {
    Done(Discovery, Announce),
    /// A new record, to be inserted (with the batch's others).
    Insert,
}

/// The stat a file's record has once discovery wrote it, `discovered`.
fn stat_row(id: i64, f: &NewFile) -> StatRow {
    StatRow {
        id,
        state: FileState::Discovered.as_str().to_owned(),
        size: Some(to_i64(f.size)),
        mtime_ns: Some(f.mtime_ns),
        device: Some(to_i64(f.device)),
        inode: Some(to_i64(f.inode)),
    }
}

/// The records [`Ledger::discover_many`] wrote for `files[n]`: its answers,
/// and what it announces once committed.
fn note_new(
    written: Vec<(usize, i64)>,
    files: &[NewFile],
    found: &mut [Option<Discovery>],
    announces: &mut Vec<Announce>,
) {
    for (n, id) in written {
        found[n] = Some(Discovery::New(id));
        let path = files[n].path.clone();
        announces.push(Announce::New { id, path });
    }
}

/// What a committed discovery announces.
enum Announce {
    Nothing,
    New {
        id: i64,
        path: String,
    },
    Changed {
        id: i64,
        path: String,
        to: FileState,
        released: Vec<(i64, Option<String>)>,
    },
}

/// Files per batched lookup in [`Ledger::discover_many`] (two parameters
/// each), and new records per INSERT (15 each): few, for the reason
/// `ledger/scan.rs` gives for its own `PER_QUERY`.
const PER_QUERY: usize = 256;
const NEW_PER_QUERY: usize = 16;

impl Ledger {
    /// Record a file seen on disk (see [`Discovery`]).
    pub async fn discover(&self, f: &NewFile) -> Result<Discovery, LedgerError> {
        let mut tx = self.begin().await?;
        let newest: Option<StatRow> = stmt(NEWEST_STAT_SQL)
            .bind(&f.path_bytes)
            .fetch_optional(&mut tx)
            .await?;
        let (found, announce) = match self.discover_tx(&mut tx, f, newest).await? {
            Step::Done(found, announce) => (found, announce),
            Step::Insert => {
                let id = self.insert_new(&mut tx, &[f]).await?[0];
                let path = f.path.clone();
                (Discovery::New(id), Announce::New { id, path })
            }
        };
        tx.commit().await?;
        self.announce_discovery(announce);
        Ok(found)
    }

    /// [`Ledger::discover`] for many files, in order, with one read for
    /// the files the ledger already has as they are (which cost no write
    /// transaction: a second `upload` over 100 000 unchanged files) and one
    /// transaction for the rest. The answer is in the order of `files`.
    pub async fn discover_many(&self, files: &[NewFile]) -> Result<Vec<Discovery>, LedgerError> {
        let mut found: Vec<Option<Discovery>> = self
            .known_among(files)
            .await?
            .into_iter()
            .map(|k| k.map(|(id, state)| Discovery::Known { id, state }))
            .collect();
        let rest: Vec<usize> = (0..files.len()).filter(|&i| found[i].is_none()).collect();
        if !rest.is_empty() {
            let mut tx = self.begin().await?;
            let mut newest = self.newest_stats_tx(&mut tx, files, &rest).await?;
            let mut announces = Vec::new();
            // New records wait to be written together (one statement);
            // a path seen again in the batch must first meet its record.
            let mut new: Vec<usize> = Vec::new();
            for &i in &rest {
                let f = &files[i];
                if new.iter().any(|&n| files[n].path_bytes == f.path_bytes) {
                    let written = self
                        .write_new(&mut tx, files, &mut new, &mut newest)
                        .await?;
                    note_new(written, files, &mut found, &mut announces);
                }
                let row = newest.remove(&f.path_bytes);
                let (d, announce) = match self.discover_tx(&mut tx, f, row.clone()).await? {
                    Step::Done(d, announce) => (d, announce),
                    Step::Insert => {
                        new.push(i);
                        continue;
                    }
                };
                // A file changed in place keeps its record, now `discovered`.
                let row = match &d {
                    Discovery::Changed(id) => Some(stat_row(*id, f)),
                    _ => row,
                };
                if let Some(row) = row {
                    newest.insert(f.path_bytes.clone(), row);
                }
                announces.push(announce);
                found[i] = Some(d);
            }
            let written = self
                .write_new(&mut tx, files, &mut new, &mut newest)
                .await?;
            note_new(written, files, &mut found, &mut announces);
            tx.commit().await?;
            for a in announces {
                self.announce_discovery(a);
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// The newest record of each path of `files[at]`, read inside `tx`.
    async fn newest_stats_tx(
        &self,
        tx: &mut Tx,
        files: &[NewFile],
        at: &[usize],
    ) -> Result<HashMap<Vec<u8>, StatRow>, LedgerError> {
        let mut newest = HashMap::with_capacity(at.len());
        for chunk in at.chunks(PER_QUERY) {
            let mut q: Q = stmt("WITH disk(i, path_bytes) AS (VALUES ");
            for (n, &i) in chunk.iter().enumerate() {
                q.push(if n == 0 { "(" } else { ", (" })
                    .push_bind(i64::try_from(i).unwrap_or(i64::MAX))
                    .push(", ")
                    .push_bind(files[i].path_bytes.as_slice())
                    .push(")");
            }
            // `files_path (path_bytes, id)` serves each lookup.
            q.push(
                ") SELECT disk.i, f.id, f.state, f.size, f.mtime_ns, f.device, f.inode \
                 FROM disk JOIN files f ON f.id = (SELECT id FROM files \
                 WHERE files.path_bytes = disk.path_bytes ORDER BY id DESC LIMIT 1)",
            );
            let rows: Vec<IndexedStatRow> = q.fetch_all(&mut *tx).await?;
            for r in rows {
                if let Some(f) = usize::try_from(r.i).ok().and_then(|i| files.get(i)) {
                    newest.insert(
                        f.path_bytes.clone(),
                        StatRow {
                            id: r.id,
                            state: r.state,
                            size: r.size,
                            mtime_ns: r.mtime_ns,
                            device: r.device,
                            inode: r.inode,
                        },
                    );
                }
            }
        }
        Ok(newest)
    }

    /// What discovering `f` makes of its path's `newest` record, written in
    /// `tx`; announced once `tx` commits.
    async fn discover_tx(
        &self,
        tx: &mut Tx,
        f: &NewFile,
        newest: Option<StatRow>,
    ) -> Result<Step, LedgerError> {
        let now = now_ms();
        let (size, dev, ino) = (to_i64(f.size), to_i64(f.device), to_i64(f.inode));
        if let Some(StatRow {
            id,
            state,
            size: old_size,
            mtime_ns: old_mtime,
            device: old_dev,
            inode: old_ino,
        }) = newest
        {
            let state = FileState::parse(&state)
                .ok_or_else(|| LedgerError::Corrupt(format!("unknown state {state:?}")))?;
            let same = old_size == Some(size)
                && old_mtime == Some(f.mtime_ns)
                && (self.stat_ignores_device() || old_dev == Some(dev))
                && old_ino == Some(ino);
            if same {
                return Ok(Step::Done(
                    Discovery::Known { id, state },
                    Announce::Nothing,
                ));
            }
            match state {
                // Not sent yet: this record simply follows the file.
                FileState::Discovered | FileState::Queued => {
                    let to = state.on(Event::Changed)?;
                    let done = stmt(
                        "UPDATE files SET state = $3, size = $4, mtime_ns = $5, device = $6, \
                         inode = $7, sha256 = NULL, mime = NULL, next_attempt_at = 0, \
                         updated_at = $8 WHERE id = $1 AND state = $2",
                    )
                    .bind(id)
                    .bind(state.as_str())
                    .bind(to.as_str())
                    .bind(size)
                    .bind(f.mtime_ns)
                    .bind(dev)
                    .bind(ino)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    expect_one(done, id, state)?;
                    let released = release_duplicates_tx(tx, id).await?;
                    let announce = Announce::Changed {
                        id,
                        path: f.path.clone(),
                        to,
                        released,
                    };
                    return Ok(Step::Done(Discovery::Changed(id), announce));
                }
                // The worker sending it notices the change when it is done.
                FileState::Uploading => {
                    return Ok(Step::Done(
                        Discovery::Known { id, state },
                        Announce::Nothing,
                    ));
                }
                _ => {}
            }
        }
        Ok(Step::Insert)
    }

    /// Write the records of `files[new]` (emptied) in one statement per
    /// [`NEW_PER_QUERY`] of them, and put them in `newest`: their ids, in
    /// the order of `new`.
    async fn write_new(
        &self,
        tx: &mut Tx,
        files: &[NewFile],
        new: &mut Vec<usize>,
        newest: &mut HashMap<Vec<u8>, StatRow>,
    ) -> Result<Vec<(usize, i64)>, LedgerError> {
        let mut written = Vec::with_capacity(new.len());
        for chunk in new.chunks(NEW_PER_QUERY) {
            let rows: Vec<&NewFile> = chunk.iter().map(|&i| &files[i]).collect();
            let ids = self.insert_new(tx, &rows).await?;
            for (&i, id) in chunk.iter().zip(ids) {
                newest.insert(files[i].path_bytes.clone(), stat_row(id, &files[i]));
                written.push((i, id));
            }
        }
        new.clear();
        Ok(written)
    }

    /// Insert a `discovered` record for each of `new` (paths all
    /// different) in one statement: each statement is a round trip to the
    /// connection (BENCHMARKS.md, S1). Their ids, in order.
    async fn insert_new(&self, tx: &mut Tx, new: &[&NewFile]) -> Result<Vec<i64>, LedgerError> {
        let now = now_ms();
        // SQLite: ids above every id ever given (migration 0008 keeps the
        // high-water mark; `new_id`); one record reads it in its INSERT.
        let first_id = match (self.pool.is_postgres(), new.len()) {
            (true, _) | (false, 0 | 1) => None,
            (false, _) => Some(
                stmt("SELECT high + 1 FROM id_high_water WHERE name = 'files'")
                    .scalar_one::<i64>(&mut *tx)
                    .await?,
            ),
        };
        let (id_col, id_val) = self.new_id();
        let mut q = stmt(format!(
            "INSERT INTO files ({id_col}path_bytes, path, size, mtime_ns, device, inode, \
             user_metadata, state, discovered_at, updated_at, root, index_id, after_upload, \
             on_failure, origin_host) VALUES "
        ));
        for (k, f) in new.iter().enumerate() {
            let origin = f.origin.clone().unwrap_or_default();
            q.push(if k == 0 { "(" } else { ", (" });
            match first_id {
                Some(first) => {
                    q.push_bind(first + i64::try_from(k).unwrap_or(i64::MAX))
                        .push(", ");
                }
                None => {
                    q.push(id_val);
                }
            }
            q.push_bind(&f.path_bytes).push(", ");
            q.push_bind(&f.path).push(", ");
            q.push_bind(to_i64(f.size)).push(", ");
            q.push_bind(f.mtime_ns).push(", ");
            q.push_bind(to_i64(f.device)).push(", ");
            q.push_bind(to_i64(f.inode)).push(", ");
            q.push_bind(&f.user_metadata).push(", ");
            q.push_bind(FileState::Discovered.as_str()).push(", ");
            q.push_bind(now).push(", ");
            q.push_bind(now).push(", ");
            q.push_bind(f.origin.as_ref().map(|o| o.root.clone()))
                .push(", ");
            q.push_bind(&origin.index_id).push(", ");
            q.push_bind(&origin.after_upload).push(", ");
            q.push_bind(&origin.on_failure).push(", ");
            q.push_bind(self.me_host()).push(")");
        }
        q.push(" RETURNING id, path_bytes");
        let rows: Vec<(i64, Vec<u8>)> = q.fetch_all_written(tx).await?;
        // By path, not by position: PostgreSQL does not promise the order.
        let by_path: HashMap<Vec<u8>, i64> = rows.into_iter().map(|(id, p)| (p, id)).collect();
        new.iter()
            .map(|f| {
                by_path.get(&f.path_bytes).copied().ok_or_else(|| {
                    LedgerError::Corrupt(format!("no record came back for {}", f.path))
                })
            })
            .collect()
    }

    fn announce_discovery(&self, announce: Announce) {
        match announce {
            Announce::Nothing => {}
            Announce::New { id, path } => self.changed(id, path, FileState::Discovered, None),
            Announce::Changed {
                id,
                path,
                to,
                released,
            } => {
                self.changed(id, path, to, Some("file changed".into()));
                self.announce_requeued(released);
            }
        }
    }

    /// Whether a record of this path has exactly this size, mtime and
    /// inode: a file the ledger already knows, which a scan passes over
    /// without waiting for it to settle or hashing it.
    pub async fn is_current(&self, f: &NewFile) -> Result<bool, LedgerError> {
        // Any record of the path, not only the newest: a file put back to
        // an older version was merged into that version's record.
        let known: Option<i64> = stmt(
            "SELECT id FROM files WHERE path_bytes = $1 AND size = $2 AND mtime_ns = $3 \
             AND (device = $4 OR $6) AND inode = $5 LIMIT 1",
        )
        .bind(&f.path_bytes)
        .bind(to_i64(f.size))
        .bind(f.mtime_ns)
        .bind(to_i64(f.device))
        .bind(to_i64(f.inode))
        .bind(self.stat_ignores_device())
        .scalar_optional(&self.pool)
        .await?;
        Ok(known.is_some())
    }

    /// Whether "the same file" leaves the device number out: on a shared
    /// ledger hosts mount the same share under device numbers of their own,
    /// and each would take the others' records for changed files.
    pub(in crate::ledger) fn stat_ignores_device(&self) -> bool {
        self.pool.is_postgres()
    }

    /// On SQLite, the id column and the value that give a new record an id
    /// above every id ever used (migration 0008 keeps the high-water mark);
    /// PostgreSQL's identity sequence never goes back by itself.
    fn new_id(&self) -> (&'static str, &'static str) {
        if self.pool.is_postgres() {
            ("", "")
        } else {
            (
                "id, ",
                "(SELECT high + 1 FROM id_high_water WHERE name = 'files'), ",
            )
        }
    }

    /// Queue a URL for `method=url`, once: a URL that already has a record
    /// (other than a failed one) is not queued again. Returns the record
    /// and whether it is new.
    pub async fn add_url(
        &self,
        url: &str,
        filename: Option<&str>,
        user_metadata: Option<&str>,
        origin: Option<&Origin>,
    ) -> Result<(i64, bool), LedgerError> {
        let mut tx = self.begin().await?;
        let known: Option<i64> = stmt(
            "SELECT id FROM files WHERE url = $1 AND state != 'failed' ORDER BY id DESC LIMIT 1",
        )
        .bind(url)
        .scalar_optional(&mut tx)
        .await?;
        if let Some(id) = known {
            tx.commit().await?;
            return Ok((id, false));
        }
        // Nothing to hash: a URL goes straight to the queue.
        let state = FileState::Discovered.on(Event::Hashed)?;
        let now = now_ms();
        let (id_col, id_val) = self.new_id();
        let id: i64 = stmt(format!(
            "INSERT INTO files ({id_col}url, filename, user_metadata, state, discovered_at, \
             updated_at, root, index_id, after_upload, on_failure, stamp) \
             VALUES ({id_val}$1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10) RETURNING id",
        ))
        .bind(url)
        .bind(filename)
        .bind(user_metadata)
        .bind(state.as_str())
        .bind(now)
        .bind(origin.map(|o| o.root.clone()))
        .bind(origin.and_then(|o| o.index_id.clone()))
        .bind(origin.and_then(|o| o.after_upload.clone()))
        .bind(origin.and_then(|o| o.on_failure.clone()))
        .bind(new_stamp())
        .scalar_one(&mut tx)
        .await?;
        tx.commit().await?;
        self.changed(id, url.to_string(), state, None);
        Ok((id, true))
    }
}
