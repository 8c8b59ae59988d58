//! Read queries for the operator commands (`history`, `status`).
//!
//! Every query here is backed by an index (see the tests at the bottom,
//! which ask SQLite for its plan), so that they stay fast on a ledger of
//! millions of records.

use std::sync::LazyLock;

use sqlx::FromRow;

use super::engine::{Q, stmt};
use super::files::RECORD_COLUMNS;
use super::state::{FileState, sql_list};
use super::{Ledger, LedgerError, Record};

/// What `history` selects. Times are Unix ms and apply to `discovered_at`.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Any of these states; empty: every state.
    pub states: Vec<FileState>,
    /// Discovered at or after this.
    pub since: Option<i64>,
    /// Discovered before this.
    pub until: Option<i64>,
    /// A glob (SQLite's GLOB: `*`, `?`, `[...]`, case-sensitive) over the
    /// display path (the path, else the URL).
    pub path_glob: Option<String>,
    pub limit: Option<u32>,
}

/// A record being uploaded, with its open attempt.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub record: Record,
    /// Attempts made for this record so far, this one included.
    pub attempt: i64,
    /// When the open attempt started (Unix ms), if one is open.
    pub started_at: Option<i64>,
    /// Bytes the platform holds so far, where that is known (multipart
    /// chunks already accepted); `None` for a direct upload.
    pub bytes_sent: Option<i64>,
}

#[derive(FromRow)]
struct InFlightRow {
    #[sqlx(flatten)]
    record: Record,
    attempt_count: i64,
    attempt_started_at: Option<i64>,
    chunk_bytes: Option<i64>,
}

/// One attempt with what its record is now.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct RecentAttempt {
    pub id: i64,
    pub file_id: i64,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub file_state: String,
    pub next_attempt_at: i64,
    pub path: Option<String>,
    pub url: Option<String>,
}

/// Rows per page of `history`: each page is one short statement, so a
/// slow reader (`| less`) never holds a read snapshot open on the ledger.
const PAGE: u64 = 2000;

/// The history query (with `prefix`, e.g. `EXPLAIN QUERY PLAN `): records
/// after `after` (a `(discovered_at, id)` already handed out), newest
/// first, at most `limit`. Several states are one SELECT each, merged in
/// order by a compound SELECT: each is one range of
/// `files_state_discovered`, already newest first, so nothing is sorted.
/// PostgreSQL has no GLOB: there the glob is matched as a regex (`~`).
fn history_query(
    prefix: &str,
    filter: &HistoryFilter,
    after: Option<(i64, i64)>,
    limit: u64,
    postgres: bool,
) -> Q {
    let mut q = stmt(prefix.to_owned());
    let arms: Vec<Option<FileState>> = if filter.states.is_empty() {
        vec![None]
    } else {
        let mut states = filter.states.clone();
        states.sort();
        states.dedup();
        states.into_iter().map(Some).collect()
    };
    for (i, state) in arms.iter().enumerate() {
        if i > 0 {
            q.push(" UNION ALL ");
        }
        q.push(format!("SELECT {RECORD_COLUMNS} FROM files WHERE TRUE"));
        if let Some(state) = state {
            // Written in, as the limit below (see `engine::stmt`).
            q.push(" AND state = ").push(sql_list(&[*state]));
        }
        if let Some(since) = filter.since {
            q.push(" AND discovered_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            q.push(" AND discovered_at < ").push_bind(until);
        }
        if let Some((at, id)) = after {
            q.push(" AND (discovered_at, id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        if let Some(glob) = &filter.path_glob {
            if !postgres {
                q.push(" AND coalesce(path, url) GLOB ")
                    .push_bind(glob.clone());
            } else if let Some(regex) = glob_to_regex(glob) {
                q.push(" AND coalesce(path, url) ~ ").push_bind(regex);
            } else {
                q.push(" AND FALSE");
            }
        }
    }
    q.push(format!(
        " ORDER BY discovered_at DESC, id DESC LIMIT {}",
        i64::try_from(limit).unwrap_or(i64::MAX)
    ));
    q
}

/// SQLite's GLOB `glob` as an anchored PostgreSQL regex matching the same
/// strings: `*` any run of characters, `?` one character, `[...]` a set
/// (`[^...]` its complement, `]` first in a set is itself, `a-z` a range),
/// every other character itself. `None` for a set never closed, which
/// GLOB matches against nothing.
fn glob_to_regex(glob: &str) -> Option<String> {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '[' => {
                re.push('[');
                if chars.peek() == Some(&'^') {
                    chars.next();
                    re.push('^');
                }
                let mut first = true;
                loop {
                    match chars.next()? {
                        ']' if !first => break,
                        // Special inside a bracket expression too: taken literally.
                        c @ ('\\' | '[' | ']') => {
                            re.push('\\');
                            re.push(c);
                        }
                        c => re.push(c),
                    }
                    first = false;
                }
                re.push(']');
            }
            // `\` before a non-alphanumeric character is that character.
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => {
                re.push('\\');
                re.push(c);
            }
            c => re.push(c),
        }
    }
    re.push('$');
    Some(re)
}

fn last_errors_sql(limit: u32) -> String {
    format!(
        "SELECT id, path, url, state, asset_id, sha256, size, mime, \
         attempts, last_error, duplicate_of, next_attempt_at, discovered_at, uploaded_at, ready_at, \
         updated_at, file_action FROM files \
         WHERE last_error IS NOT NULL AND state NOT IN ({}) \
         ORDER BY updated_at DESC, id DESC LIMIT {limit}",
        sql_list(FileState::QUIET_ERRORS)
    )
}

/// `(state || '')` keeps SQLite on `files_errors` (a short range by time) rather
/// than every failed record ever.
static FAILED_SINCE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT count(*) FROM files \
         WHERE last_error IS NOT NULL AND state NOT IN ({}) \
         AND (state || '') = 'failed' AND updated_at >= $1",
        sql_list(FileState::QUIET_ERRORS)
    )
});

const IN_FLIGHT_SQL: &str = "SELECT id, path, url, state, asset_id, sha256, size, mime, \
     attempts, last_error, duplicate_of, next_attempt_at, discovered_at, uploaded_at, ready_at, \
     updated_at, file_action, \
     (SELECT count(*) FROM attempts WHERE attempts.file_id = files.id) AS attempt_count, \
     (SELECT max(started_at) FROM attempts \
        WHERE attempts.file_id = files.id AND attempts.ended_at IS NULL) AS attempt_started_at, \
     (SELECT CAST(sum(size) AS BIGINT) FROM multipart_chunks \
        WHERE multipart_chunks.file_id = files.id) AS chunk_bytes \
     FROM files WHERE state = 'uploading' ORDER BY updated_at, id";

fn recent_attempts_sql(limit: u32) -> String {
    format!(
        "SELECT a.id, a.file_id, a.started_at, a.ended_at, a.outcome, \
         a.http_status, a.error, f.state AS file_state, f.next_attempt_at, f.path, f.url \
         FROM attempts a JOIN files f ON f.id = a.file_id ORDER BY a.id DESC LIMIT {limit}"
    )
}

impl Ledger {
    /// Records matching `filter`, newest first, handed to `each` one at a
    /// time, read a page at a time (memory does not grow with the ledger);
    /// `each` returns false to stop early. Returns how many were handed.
    pub async fn history_each<F>(
        &self,
        filter: &HistoryFilter,
        mut each: F,
    ) -> Result<u64, LedgerError>
    where
        F: FnMut(Record) -> bool,
    {
        let mut handed: u64 = 0;
        let mut after = None;
        loop {
            let want = match filter.limit {
                Some(limit) => (u64::from(limit) - handed).min(PAGE),
                None => PAGE,
            };
            if want == 0 {
                return Ok(handed);
            }
            let q = history_query("", filter, after, want, self.pool.is_postgres());
            let page: Vec<Record> = q.fetch_all(&self.pool).await?;
            let full = page.len() as u64 == want;
            for r in page {
                after = Some((r.discovered_at, r.id));
                handed += 1;
                if !each(r) {
                    return Ok(handed);
                }
            }
            if !full {
                return Ok(handed);
            }
        }
    }

    /// Records matching `filter`, newest first, all at once.
    pub async fn history_filtered(
        &self,
        filter: &HistoryFilter,
    ) -> Result<Vec<Record>, LedgerError> {
        let mut out = Vec::new();
        self.history_each(filter, |r| {
            out.push(r);
            true
        })
        .await?;
        Ok(out)
    }

    /// The highest record id (0 for an empty ledger), to size a column.
    pub async fn max_record_id(&self) -> Result<i64, LedgerError> {
        let max: Option<i64> = stmt("SELECT max(id) FROM files")
            .scalar_one(&self.pool)
            .await?;
        Ok(max.unwrap_or(0))
    }

    /// Records being uploaded, longest-running first, with their attempt.
    pub async fn in_flight_detail(&self) -> Result<Vec<InFlight>, LedgerError> {
        let rows: Vec<InFlightRow> = stmt(IN_FLIGHT_SQL).fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|row| InFlight {
                record: row.record,
                attempt: row.attempt_count,
                started_at: row.attempt_started_at,
                bytes_sent: row.chunk_bytes,
            })
            .collect())
    }

    /// The records whose errors are newest, newest first (skipped and
    /// duplicate records carry a reason, not an error: left out).
    pub async fn last_errors(&self, limit: u32) -> Result<Vec<Record>, LedgerError> {
        Ok(stmt(last_errors_sql(limit)).fetch_all(&self.pool).await?)
    }

    /// How many records failed (last changed to `failed`) at or after `since_ms`.
    pub async fn failed_since(&self, since_ms: i64) -> Result<i64, LedgerError> {
        Ok(stmt(FAILED_SINCE_SQL.as_str())
            .bind(since_ms)
            .scalar_one(&self.pool)
            .await?)
    }

    /// The newest `limit` attempts (by when they started), newest first.
    pub async fn recent_attempts(&self, limit: u32) -> Result<Vec<RecentAttempt>, LedgerError> {
        Ok(stmt(recent_attempts_sql(limit))
            .fetch_all(&self.pool)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::now_ms;

    /// The WHERE of the partial index `files_errors` (migrations/0003):
    /// SQLite uses it only for queries that repeat it word for word.
    const HAS_ERROR: &str = "last_error IS NOT NULL AND state NOT IN ('skipped', 'duplicate')";

    async fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        (dir, ledger)
    }

    /// SQLite's plan for `sql` with `binds` (all integers or text), one
    /// detail line per step.
    async fn plan_of(ledger: &Ledger, q: Q) -> String {
        let rows: Vec<(i64, i64, i64, String)> = q.fetch_all(&ledger.pool).await.expect("explain");
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    fn assert_indexed(plan: &str, what: &str) {
        assert!(
            plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"),
            "{what}: no index used:\n{plan}"
        );
        for line in plan.lines() {
            let line = line.trim();
            assert!(
                !line.starts_with("SCAN files") || line.contains("INDEX"),
                "{what}: a full table scan:\n{plan}"
            );
        }
    }

    #[tokio::test]
    async fn history_queries_use_an_index() {
        let (_dir, ledger) = ledger().await;
        let cases = [
            (
                "--state failed --limit 100",
                HistoryFilter {
                    states: vec![FileState::Failed],
                    limit: Some(100),
                    ..HistoryFilter::default()
                },
            ),
            (
                "--since 1d",
                HistoryFilter {
                    since: Some(now_ms() - 86_400_000),
                    ..HistoryFilter::default()
                },
            ),
            (
                "--since 1d --until 1h --state ready",
                HistoryFilter {
                    states: vec![FileState::Ready],
                    since: Some(now_ms() - 86_400_000),
                    until: Some(now_ms() - 3_600_000),
                    ..HistoryFilter::default()
                },
            ),
            (
                "--state failed --state queued --limit 10",
                HistoryFilter {
                    states: vec![FileState::Failed, FileState::Queued],
                    limit: Some(10),
                    ..HistoryFilter::default()
                },
            ),
            (
                "--path '*.mp4' --limit 10",
                HistoryFilter {
                    path_glob: Some("*.mp4".into()),
                    limit: Some(10),
                    ..HistoryFilter::default()
                },
            ),
            ("(everything)", HistoryFilter::default()),
        ];
        for (what, filter) in &cases {
            for after in [None, Some((now_ms(), 1000))] {
                let q = history_query("EXPLAIN QUERY PLAN ", filter, after, PAGE, false);
                let plan = plan_of(&ledger, q).await;
                assert_indexed(&plan, what);
                // Newest first straight from the index: no sort.
                assert!(!plan.contains("TEMP B-TREE"), "{what}: sorts:\n{plan}");
            }
        }
        let plan = plan_of(
            &ledger,
            history_query(
                "EXPLAIN QUERY PLAN ",
                &HistoryFilter {
                    states: vec![FileState::Failed],
                    ..HistoryFilter::default()
                },
                None,
                100,
                false,
            ),
        )
        .await;
        assert!(plan.contains("files_state_discovered"), "{plan}");
        ledger.close().await;
    }

    #[test]
    fn globs_become_anchored_regexes() {
        for (glob, regex) in [
            ("*.mp4", "^.*\\.mp4$"),
            ("*/sub/*", "^.*\\/sub\\/.*$"),
            ("clip-?.mov", "^clip\\-.\\.mov$"),
            ("[a-c]*", "^[a-c].*$"),
            ("[^x]y", "^[^x]y$"),
            ("[]]", "^[\\]]$"),
            ("a(1)+b\\$", "^a\\(1\\)\\+b\\\\\\$$"),
            ("vidéo", "^vidéo$"),
        ] {
            assert_eq!(glob_to_regex(glob).as_deref(), Some(regex), "{glob}");
        }
        assert_eq!(glob_to_regex("[abc"), None, "a set never closed");
    }

    #[tokio::test]
    async fn status_queries_use_an_index() {
        assert!(last_errors_sql(20).contains(HAS_ERROR));
        assert!(FAILED_SINCE_SQL.contains(HAS_ERROR));
        let (_dir, ledger) = ledger().await;
        for (what, sql) in [
            ("last errors", last_errors_sql(20)),
            ("failed since", FAILED_SINCE_SQL.to_string()),
            ("in flight", IN_FLIGHT_SQL.to_owned()),
        ] {
            let q = stmt(format!("EXPLAIN QUERY PLAN {sql}"));
            let plan = plan_of(&ledger, q).await;
            assert_indexed(&plan, what);
            // In flight sorts its handful of `uploading` rows.
            if what != "in flight" {
                assert!(!plan.contains("TEMP B-TREE"), "{what}: sorts:\n{plan}");
            }
        }
        // The newest attempts: the rowid backwards, stopping at the limit.
        let q = stmt(format!("EXPLAIN QUERY PLAN {}", recent_attempts_sql(20)));
        let plan = plan_of(&ledger, q).await;
        assert!(
            !plan.contains("TEMP B-TREE") && plan.contains("PRIMARY KEY"),
            "recent attempts:\n{plan}"
        );
        let q = stmt(format!("EXPLAIN QUERY PLAN {}", last_errors_sql(20)));
        assert!(plan_of(&ledger, q).await.contains("files_errors"));
        let q = stmt(format!("EXPLAIN QUERY PLAN {}", *FAILED_SINCE_SQL));
        assert!(plan_of(&ledger, q).await.contains("files_errors"));
        ledger.close().await;
    }

    #[tokio::test]
    async fn pages_join_up_across_ties() {
        let (_dir, ledger) = ledger().await;
        // Three records per millisecond: page boundaries fall inside ties.
        let n = i64::try_from(2 * PAGE).expect("small") + 5;
        stmt(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO files (id, path_bytes, path, state, discovered_at, updated_at) \
             SELECT i, CAST('/p/' || i AS BLOB), '/p/' || i, \
             CASE WHEN i % 2 = 0 THEN 'ready' ELSE 'failed' END, 1000 + i / 3, 0 FROM n",
        )
        .bind(n)
        .execute(&ledger.pool)
        .await
        .expect("insert");
        let keys = |rs: &[Record]| {
            rs.iter()
                .map(|r| (r.discovered_at, r.id))
                .collect::<Vec<_>>()
        };
        let all = ledger
            .history_filtered(&HistoryFilter::default())
            .await
            .expect("all");
        let mut expected = keys(&all);
        expected.sort_by(|a, b| b.cmp(a));
        expected.dedup();
        assert_eq!(all.len(), usize::try_from(n).expect("small"));
        assert_eq!(keys(&all), expected, "newest first, each once");

        let f = HistoryFilter {
            limit: Some(2100),
            ..HistoryFilter::default()
        };
        let some = ledger.history_filtered(&f).await.expect("limited");
        assert_eq!(keys(&some), expected[..2100]);

        let f = HistoryFilter {
            states: vec![FileState::Ready, FileState::Failed],
            ..HistoryFilter::default()
        };
        let merged = ledger.history_filtered(&f).await.expect("merged");
        assert_eq!(keys(&merged), expected, "two states merge in order");
        ledger.close().await;
    }

    #[tokio::test]
    async fn filters_and_order() {
        let (_dir, ledger) = ledger().await;
        // Records straight in SQL: discovered 3 h, 2 h and 1 h ago.
        let now = now_ms();
        for (i, (state, path, ago_h)) in [
            ("ready", "/in/a.mp4", 3),
            ("failed", "/in/sub/b.mov", 2),
            ("queued", "/in/c.mp4", 1),
        ]
        .iter()
        .enumerate()
        {
            let at = now - ago_h * 3_600_000;
            stmt(
                "INSERT INTO files (id, path_bytes, path, state, last_error, discovered_at, \
                 updated_at) VALUES ($1, $2, $2, $3, $4, $5, $6)",
            )
            .bind(i64::try_from(i).expect("small") + 1)
            .bind(*path)
            .bind(*state)
            .bind((*state == "failed").then_some("boom"))
            .bind(at)
            .bind(now)
            .execute(&ledger.pool)
            .await
            .expect("insert");
        }
        let ids = |rs: Vec<Record>| rs.iter().map(|r| r.id).collect::<Vec<_>>();
        let all = ledger
            .history_filtered(&HistoryFilter::default())
            .await
            .expect("all");
        assert_eq!(ids(all), [3, 2, 1]);
        let f = HistoryFilter {
            states: vec![FileState::Ready, FileState::Queued],
            ..HistoryFilter::default()
        };
        assert_eq!(ids(ledger.history_filtered(&f).await.expect("q")), [3, 1]);
        let f = HistoryFilter {
            since: Some(now - 2 * 3_600_000 - 1000),
            until: Some(now - 3_600_000 - 1000),
            ..HistoryFilter::default()
        };
        assert_eq!(ids(ledger.history_filtered(&f).await.expect("q")), [2]);
        let f = HistoryFilter {
            path_glob: Some("*.mp4".into()),
            limit: Some(1),
            ..HistoryFilter::default()
        };
        assert_eq!(ids(ledger.history_filtered(&f).await.expect("q")), [3]);
        let mut seen = 0;
        ledger
            .history_each(&HistoryFilter::default(), |_| {
                seen += 1;
                false
            })
            .await
            .expect("stops");
        assert_eq!(seen, 1);
        assert_eq!(ledger.max_record_id().await.expect("max"), 3);
        assert_eq!(ledger.failed_since(now - 10_000).await.expect("n"), 1);
        let errors = ledger.last_errors(5).await.expect("errors");
        assert_eq!(ids(errors), [2]);
        ledger.close().await;
    }
}
