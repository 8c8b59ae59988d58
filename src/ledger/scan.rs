//! SQL for the daemon's folder scans: which of many files on disk the
//! ledger already has, in one query per batch instead of one per file (a
//! restart over 100 000 known files made 100 000 round trips to the SQLite
//! worker thread).

use super::engine::{Q, stmt};
use super::state::{FileState, sql_list};
use super::{Ledger, LedgerError, NewFile};

/// Files per statement: 6 parameters each. Few, because sqlx-sqlite looks
/// each parameter's name up in a list SQLite walks from the start, which
/// costs the square of a statement's parameters: at 1000 files a query,
/// 9 000 steps a file; at 128, 1 150 (and a round trip per 128 files).
const PER_QUERY: usize = 128;

/// The ledger's integer form of an unsigned stat field (as stored).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The start of a statement over a batch of files on disk: the CTE
/// `disk(i, path_bytes, size, mtime_ns, device, inode)`, `i` counting from
/// `base`, left open for the query after it (which starts with `)`).
fn disk_values(base: usize, files: &[NewFile]) -> Q {
    let mut q: Q = stmt("WITH disk(i, path_bytes, size, mtime_ns, device, inode) AS (VALUES ");
    for (i, f) in files.iter().enumerate() {
        q.push(if i == 0 { "(" } else { ", (" })
            .push_bind(i64::try_from(base + i).unwrap_or(i64::MAX))
            .push(", ")
            .push_bind(f.path_bytes.as_slice())
            .push(", ")
            .push_bind(to_i64(f.size))
            .push(", ")
            .push_bind(f.mtime_ns)
            .push(", ")
            .push_bind(to_i64(f.device))
            .push(", ")
            .push_bind(to_i64(f.inode))
            .push(")");
    }
    q
}

impl Ledger {
    /// For each file, whether some record of its path has the same size,
    /// mtime, device and inode: the batch form of [`Ledger::is_current`]
    /// (any record of the path counts, not only the newest). The answer is
    /// in the order of `files`.
    pub async fn current_among(&self, files: &[NewFile]) -> Result<Vec<bool>, LedgerError> {
        let mut current = vec![false; files.len()];
        for (chunk_no, chunk) in files.chunks(PER_QUERY).enumerate() {
            let base = chunk_no * PER_QUERY;
            let mut q = disk_values(base, chunk);
            // `files_path (path_bytes, id)` serves each lookup.
            q.push(
                ") SELECT disk.i FROM disk WHERE EXISTS (SELECT 1 FROM files \
                 WHERE files.path_bytes = disk.path_bytes AND files.size = disk.size \
                 AND files.mtime_ns = disk.mtime_ns AND files.inode = disk.inode",
            );
            // A shared ledger's hosts see one share under different devices.
            if !self.stat_ignores_device() {
                q.push(" AND files.device = disk.device");
            }
            q.push(")");
            let known: Vec<i64> = q.scalar_all(&self.pool).await?;
            for i in known {
                if let Some(slot) = usize::try_from(i).ok().and_then(|i| current.get_mut(i)) {
                    *slot = true;
                }
            }
        }
        Ok(current)
    }

    /// For each file, the newest record of its path and that record's
    /// state when it has the same size, mtime, inode (and device, on one
    /// host): what [`Ledger::discover`] answers as
    /// [`Discovery::Known`](super::Discovery::Known) without writing, read
    /// for a whole batch in one query per [`PER_QUERY`] files. In the order
    /// of `files`.
    pub async fn known_among(
        &self,
        files: &[NewFile],
    ) -> Result<Vec<Option<(i64, FileState)>>, LedgerError> {
        let mut known = vec![None; files.len()];
        for (chunk_no, chunk) in files.chunks(PER_QUERY).enumerate() {
            let base = chunk_no * PER_QUERY;
            let mut q = disk_values(base, chunk);
            // `files_path (path_bytes, id)` serves each lookup.
            q.push(
                ") SELECT disk.i, f.id, f.state FROM disk JOIN files f ON f.id = \
                 (SELECT id FROM files WHERE files.path_bytes = disk.path_bytes \
                 ORDER BY id DESC LIMIT 1) \
                 WHERE f.size = disk.size AND f.mtime_ns = disk.mtime_ns AND f.inode = disk.inode",
            );
            if !self.stat_ignores_device() {
                q.push(" AND f.device = disk.device");
            }
            let rows: Vec<(i64, i64, String)> = q.fetch_all(&self.pool).await?;
            for (i, id, state) in rows {
                let state = FileState::parse(&state)
                    .ok_or_else(|| LedgerError::Corrupt(format!("unknown state {state:?}")))?;
                if let Some(slot) = usize::try_from(i).ok().and_then(|i| known.get_mut(i)) {
                    *slot = Some((id, state));
                }
            }
        }
        Ok(known)
    }

    /// The state of the newest record of each path (`None`: no record), in
    /// the order of `paths`, in one query per [`PER_QUERY`] paths: what
    /// `upload` sums up at the end of a run.
    pub async fn newest_states(
        &self,
        paths: &[&[u8]],
    ) -> Result<Vec<Option<FileState>>, LedgerError> {
        let mut states = vec![None; paths.len()];
        for (chunk_no, chunk) in paths.chunks(PER_QUERY).enumerate() {
            let base = chunk_no * PER_QUERY;
            let mut q: Q = stmt("WITH disk(i, path_bytes) AS (VALUES ");
            for (i, p) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" })
                    .push_bind(i64::try_from(base + i).unwrap_or(i64::MAX))
                    .push(", ")
                    .push_bind(*p)
                    .push(")");
            }
            q.push(
                ") SELECT disk.i, f.state FROM disk JOIN files f ON f.id = \
                 (SELECT id FROM files WHERE files.path_bytes = disk.path_bytes \
                 ORDER BY id DESC LIMIT 1)",
            );
            let rows: Vec<(i64, String)> = q.fetch_all(&self.pool).await?;
            for (i, state) in rows {
                let state = FileState::parse(&state)
                    .ok_or_else(|| LedgerError::Corrupt(format!("unknown state {state:?}")))?;
                if let Some(slot) = usize::try_from(i).ok().and_then(|i| states.get_mut(i)) {
                    *slot = Some(state);
                }
            }
        }
        Ok(states)
    }

    /// Files found again once their watched folder came back, re-created
    /// or remounted under new device and inode numbers (README.md,
    /// "Watched folders that go away"): a file whose path's newest record
    /// has the same size and mtime is taken to be that record's file, which
    /// takes the new numbers instead of becoming a new version to hash and
    /// send. A failed record is left alone (a failed file found again is
    /// sent as a new version), and so is one being sent (its worker checks
    /// the file itself). For each file, in order: whether it was adopted.
    pub async fn adopt_found_again(&self, files: &[NewFile]) -> Result<Vec<bool>, LedgerError> {
        let sql = format!(
            "UPDATE files SET device = $4, inode = $5, updated_at = $6 \
             WHERE id = (SELECT id FROM files WHERE path_bytes = $1 ORDER BY id DESC LIMIT 1) \
             AND size = $2 AND mtime_ns = $3 AND state NOT IN ({})",
            sql_list(&[FileState::Failed, FileState::Uploading])
        );
        let mut adopted = Vec::with_capacity(files.len());
        for f in files {
            let done = stmt(sql.clone())
                .bind(f.path_bytes.as_slice())
                .bind(to_i64(f.size))
                .bind(f.mtime_ns)
                .bind(to_i64(f.device))
                .bind(to_i64(f.inode))
                .bind(super::now_ms())
                .execute(&self.pool)
                .await?;
            adopted.push(done.rows_affected() == 1);
        }
        Ok(adopted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Discovery;

    fn file(path: &str, size: u64, mtime_ns: i64, inode: u64) -> NewFile {
        NewFile {
            path_bytes: path.as_bytes().to_vec(),
            path: path.into(),
            size,
            mtime_ns,
            device: 7,
            inode,
            user_metadata: None,
            origin: None,
        }
    }

    /// Batches over several statements answer each file in its place, and
    /// a batch's new records (written 16 to an INSERT) are all there.
    #[tokio::test]
    async fn a_batch_larger_than_one_statement_is_answered_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        let n = 2 * PER_QUERY + 37;
        let batch: Vec<NewFile> = (0..n)
            .map(|i| file(&format!("/in/f{i:04}.mp4"), 10, 1, i as u64))
            .collect();
        let known: Vec<NewFile> = batch.iter().step_by(3).cloned().collect();
        let first = ledger.discover_many(&known).await.expect("discover");
        assert!(first.iter().all(|d| matches!(d, Discovery::New(_))));
        let found = ledger.discover_many(&batch).await.expect("discover");
        let mut ids = Vec::new();
        for (i, d) in found.iter().enumerate() {
            match d {
                Discovery::Known { id, .. } if i % 3 == 0 => {
                    assert_eq!(Discovery::New(*id), first[i / 3])
                }
                Discovery::New(id) if i % 3 != 0 => ids.push(*id),
                other => panic!("file {i}: {other:?}"),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n - known.len());
        let current = ledger.current_among(&batch).await.expect("query");
        assert!(current.iter().all(|c| *c), "every file now has its record");
        ledger.close().await;
    }

    #[tokio::test]
    async fn only_files_matching_a_record_in_every_stat_field_are_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        let known = file("/in/a.mp4", 10, 1_000, 5);
        ledger.discover(&known).await.expect("discover");
        let other_device = NewFile {
            device: 8,
            ..file("/in/a.mp4", 10, 1_000, 5)
        };
        let asked = [
            file("/in/a.mp4", 10, 1_000, 5),
            file("/in/a.mp4", 11, 1_000, 5),
            file("/in/a.mp4", 10, 1_001, 5),
            file("/in/a.mp4", 10, 1_000, 6),
            other_device,
            file("/in/b.mp4", 10, 1_000, 5),
        ];
        assert_eq!(
            ledger.current_among(&asked).await.expect("query"),
            [true, false, false, false, false, false]
        );
        assert!(ledger.current_among(&[]).await.expect("query").is_empty());
        ledger.close().await;
    }

    #[tokio::test]
    async fn a_file_found_again_with_its_size_and_mtime_is_adopted_not_a_new_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        ledger
            .discover(&file("/in/a.mp4", 10, 1_000, 5))
            .await
            .expect("discover");
        let failed = file("/in/f.mp4", 10, 1_000, 6);
        let d = ledger.discover(&failed).await.expect("discover");
        let crate::ledger::Discovery::New(failed_id) = d else {
            panic!("{d:?}")
        };
        ledger
            .fail(failed_id, crate::ledger::FileState::Discovered, "test")
            .await
            .expect("fail");
        // Back on another device, with other inodes.
        let again = |path, size, mtime, inode| NewFile {
            device: 9,
            ..file(path, size, mtime, inode)
        };
        let found = [
            again("/in/a.mp4", 10, 1_000, 50),
            again("/in/f.mp4", 10, 1_000, 60),
            again("/in/new.mp4", 10, 1_000, 70),
        ];
        let adopted = ledger.adopt_found_again(&found).await.expect("adopt");
        assert_eq!(adopted, [true, false, false]);
        assert_eq!(
            ledger.current_among(&found).await.expect("query"),
            [true, false, false],
            "the adopted record now has the new numbers"
        );
        // Another size or mtime is another version.
        let changed = [again("/in/a.mp4", 11, 1_000, 51)];
        assert_eq!(
            ledger.adopt_found_again(&changed).await.expect("adopt"),
            [false]
        );
        ledger.close().await;
    }

    #[tokio::test]
    async fn answers_stay_in_order_across_statements() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        let files: Vec<NewFile> = (0..PER_QUERY as u64 * 2 + 10)
            .map(|i| file(&format!("/in/{i}.mp4"), i, 1, i))
            .collect();
        // Known: one in each statement, and the very last.
        let known = [3, PER_QUERY + 1, 2 * PER_QUERY + 9];
        for &i in &known {
            ledger.discover(&files[i]).await.expect("discover");
        }
        let current = ledger.current_among(&files).await.expect("query");
        let found: Vec<usize> = (0..files.len()).filter(|&i| current[i]).collect();
        assert_eq!(found, known);
        ledger.close().await;
    }

    #[tokio::test]
    async fn a_batch_is_discovered_as_one_file_at_a_time_would_be() {
        use crate::ledger::Discovery;
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        let Discovery::New(known) = ledger
            .discover(&file("/in/known.mp4", 10, 1, 1))
            .await
            .expect("discover")
        else {
            panic!("new")
        };
        let Discovery::New(changing) = ledger
            .discover(&file("/in/changing.mp4", 10, 1, 2))
            .await
            .expect("discover")
        else {
            panic!("new")
        };
        let batch = [
            file("/in/known.mp4", 10, 1, 1),
            file("/in/changing.mp4", 11, 2, 2),
            file("/in/new.mp4", 10, 1, 3),
            // Named twice: the second meets the record the first made.
            file("/in/new.mp4", 10, 1, 3),
            // And a new version of it in the same batch follows it.
            file("/in/new.mp4", 12, 2, 3),
        ];
        assert_eq!(
            ledger.known_among(&batch).await.expect("known"),
            [Some((known, FileState::Discovered)), None, None, None, None]
        );
        let mut changes = ledger.subscribe();
        let found = ledger.discover_many(&batch).await.expect("discover");
        assert_eq!(found.len(), batch.len());
        assert_eq!(
            found[0],
            Discovery::Known {
                id: known,
                state: FileState::Discovered
            }
        );
        assert_eq!(found[1], Discovery::Changed(changing));
        let Discovery::New(new) = found[2] else {
            panic!("{:?}", found[2])
        };
        assert_eq!(
            found[3],
            Discovery::Known {
                id: new,
                state: FileState::Discovered
            }
        );
        assert_eq!(found[4], Discovery::Changed(new));
        // Announced once committed, in order.
        let announced: Vec<i64> = std::iter::from_fn(|| changes.try_recv().ok())
            .map(|c| c.id)
            .collect();
        assert_eq!(announced, [changing, new, new]);
        // Every one is now known as it is.
        let again = ledger
            .known_among(&[
                file("/in/changing.mp4", 11, 2, 2),
                file("/in/new.mp4", 12, 2, 3),
            ])
            .await
            .expect("known");
        assert_eq!(
            again,
            [
                Some((changing, FileState::Discovered)),
                Some((new, FileState::Discovered))
            ]
        );
        let paths: [&[u8]; 3] = [b"/in/new.mp4", b"/in/none.mp4", b"/in/known.mp4"];
        assert_eq!(
            ledger.newest_states(&paths).await.expect("states"),
            [
                Some(FileState::Discovered),
                None,
                Some(FileState::Discovered)
            ]
        );
        assert!(ledger.discover_many(&[]).await.expect("empty").is_empty());
        ledger.close().await;
    }

    async fn plan(ledger: &Ledger, sql: &str) -> String {
        let rows: Vec<(i64, i64, i64, String)> = stmt(format!("EXPLAIN QUERY PLAN {sql}"))
            .bind(1i64)
            .bind(2i64)
            .bind(3i64)
            .bind(4i64)
            .bind(5i64)
            .fetch_all(&ledger.pool)
            .await
            .expect("explain");
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    /// Many files of one size must not turn a lookup by path into a pass
    /// over every record of that size (0004's plain size index did).
    #[tokio::test]
    async fn path_lookups_use_the_path_index_and_size_questions_the_size_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        let by_path = plan(
            &ledger,
            "SELECT 1 FROM files WHERE path_bytes = $1 AND size = $2 AND mtime_ns = $3 \
             AND device = $4 AND inode = $5",
        )
        .await;
        assert!(by_path.contains("files_path"), "{by_path}");
        let same_size = plan(&ledger, &super::super::files::SAME_SIZE_SQL).await;
        assert!(same_size.contains("files_live_size"), "{same_size}");
        assert!(same_size.contains("files_unhashed_size"), "{same_size}");
        ledger.close().await;
    }
}
