//! SQL for the daemon's folder scans: which of many files on disk the
//! ledger already has, in one query per batch instead of one per file (a
//! restart over 100 000 known files made 100 000 round trips to the SQLite
//! worker thread).

use super::engine::{Q, stmt};
use super::state::{FileState, sql_list};
use super::{Ledger, LedgerError, NewFile};

/// Files per statement: 6 parameters each, well under SQLite's limit of
/// 32 766 bound parameters.
const PER_QUERY: usize = 1000;

/// The ledger's integer form of an unsigned stat field (as stored).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
            let mut q: Q =
                stmt("WITH disk(i, path_bytes, size, mtime_ns, device, inode) AS (VALUES ");
            for (i, f) in chunk.iter().enumerate() {
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
