//! The two database engines behind the ledger, SQLite (one host) and
//! PostgreSQL (a fleet), and the one way the ledger's SQL reaches them.
//!
//! Every statement is written once, with `$N` placeholders, which both
//! engines bind by number (sqlx-sqlite reads the parameter's name), and
//! built as a [`Q`]: its text plus owned arguments. Running it picks the
//! engine's native driver, so rows decode natively (no `sqlx::Any`, which
//! cannot decode SQLite booleans and writes `?` placeholders) and each
//! ledger method is compiled once, not once per engine. Where the engines
//! really differ (locks, claims, pattern matching, housekeeping) the ledger
//! asks [`Pool::is_postgres`] at that one spot.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Arguments, Decode, FromRow, Postgres, Sqlite, Type};

use super::health::Health;

/// A connection pool of either engine, and what its writes have shown of
/// the ledger's health.
#[derive(Clone, Debug)]
pub(super) struct Pool {
    db: Db,
    health: Arc<Health>,
    /// SQLite: this process's writing transactions, one at a time. Without
    /// it the pool's connections queue for SQLite's write lock in its busy
    /// handler, which polls with sleeps: a sleep and a retry per transaction
    /// that meets another, and wake-ups for nothing.
    ///
    /// It holds the connection the last transaction committed on, for the
    /// next one: a connection whose cache another connection's write made
    /// stale reads every page it needs again, and its prepared statements
    /// are its own. So the writes go on one connection, the reads on the
    /// pool's others. Not with a pool of one connection, whose reads would
    /// then wait for a connection that never comes back.
    writer: Arc<tokio::sync::Mutex<WriterSlot>>,
    keep_writer: bool,
}

/// See [`Pool::writer`].
type WriterSlot = Option<PoolConnection<Sqlite>>;

#[derive(Clone, Debug)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open transaction of either engine, on a connection taken from the
/// pool for it alone.
///
/// sqlx's own `Transaction` hands its connection back to the pool whatever
/// happened; after a `COMMIT` that failed (SQLITE_FULL, SQLITE_IOERR, a
/// PostgreSQL connection lost mid-transaction) SQLite may have rolled back
/// already, the queued `ROLLBACK` fails, and the connection goes back
/// believing it is still in a transaction: every later `BEGIN` on it fails
/// until a restart. Here a connection whose commit or rollback failed is
/// closed, never returned; the next transaction gets a fresh one.
pub(super) struct Tx {
    /// `None` once committed, rolled back or closed.
    conn: Option<Conn>,
    /// SQLite: [`Pool::writer`], held until the transaction has ended.
    writer: Option<tokio::sync::OwnedMutexGuard<WriterSlot>>,
    /// [`Pool::keep_writer`].
    keep_writer: bool,
    health: Arc<Health>,
    /// A statement changed rows: a commit proves the ledger writable.
    wrote: bool,
    /// SQLite: `BEGIN IMMEDIATE` not sent yet. It goes ahead of the first
    /// statement that returns rows, in the same round trip to the
    /// connection's thread (sqlx-sqlite runs the statements of one query
    /// in turn; sqlx has deprecated that, issue 3108: should it go, every
    /// transaction fails in the tests and `BEGIN` goes on its own again).
    /// Every round trip costs two thread switches, and over many small
    /// files those are most of the client's CPU (BENCHMARKS.md, S1).
    /// Nothing runs on the connection in between, so the lock is taken as
    /// early as far as any statement can tell.
    begin_pending: bool,
}

pub(super) enum Conn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

/// The key of the fleet's writer lock on PostgreSQL (`'tlig'`, and 1), in
/// the two-integer space, which never meets sqlx's migration lock.
const WRITER_LOCK: &str = "SELECT pg_advisory_xact_lock(1953262439, 1)";
const SHARED_WRITER_LOCK: &str = "SELECT pg_advisory_xact_lock_shared(1953262439, 1)";

/// SQLite's busy timeout (set where the ledger connects).
pub(super) const BUSY_WAIT: Duration = Duration::from_secs(10);

/// How long closing a broken connection may take before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Pool {
    pub(super) fn sqlite(pool: SqlitePool) -> Pool {
        Pool {
            keep_writer: pool.options().get_max_connections() > 1,
            db: Db::Sqlite(pool),
            health: Arc::default(),
            writer: Arc::default(),
        }
    }

    pub(super) fn postgres(pool: PgPool) -> Pool {
        Pool {
            db: Db::Postgres(pool),
            health: Arc::default(),
            writer: Arc::default(),
            keep_writer: false,
        }
    }

    pub(super) fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// `column` as a term only checked, never used to find rows: on SQLite
    /// with a unary `+`. For statements that find their rows by id and
    /// check their state: SQLite's planner otherwise walks every record in
    /// that state through a state index to test each against the ids (a
    /// claim cost as much as the queue was long).
    pub(super) fn checked_only(&self, column: &str) -> String {
        match self.db {
            Db::Sqlite(_) => format!("+{column}"),
            Db::Postgres(_) => column.to_owned(),
        }
    }

    pub(super) fn health(&self) -> &Health {
        &self.health
    }

    /// A writing transaction. SQLite: `BEGIN IMMEDIATE` (the one writer, so
    /// two writers never deadlock on a lock upgrade). PostgreSQL: the
    /// fleet-wide writer lock first, under READ COMMITTED, so each statement
    /// after it sees everything committed before the lock was granted and
    /// every check-then-write holds across hosts as it does on one.
    pub(super) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.begin_locked(WRITER_LOCK).await
    }

    /// A transaction that only claims rows with `FOR UPDATE SKIP LOCKED`:
    /// on PostgreSQL claims run side by side, but never inside another
    /// transaction's check-then-write. SQLite has one writer anyway.
    pub(super) async fn begin_claim(&self) -> Result<Tx, sqlx::Error> {
        self.begin_locked(SHARED_WRITER_LOCK).await
    }

    async fn begin_locked(&self, pg_lock: &'static str) -> Result<Tx, sqlx::Error> {
        let started = self.start(pg_lock).await;
        if let Err(e) = &started {
            self.health.saw(e);
        }
        started
    }

    async fn start(&self, pg_lock: &'static str) -> Result<Tx, sqlx::Error> {
        self.health.fault()?;
        let mut writer = None;
        let conn = match &self.db {
            Db::Sqlite(p) => {
                // Waited for as long as SQLite's busy handler would wait;
                // past that (a transaction of this process that does not
                // end), SQLite's own lock decides, as without it.
                writer = self.writer_turn().await;
                let kept = writer.as_mut().and_then(|slot| slot.take());
                let c = match kept {
                    Some(c) => c,
                    None => p.acquire().await?,
                };
                Conn::Sqlite(c)
            }
            Db::Postgres(p) => {
                let mut c = p.acquire().await?;
                if let Err(e) = sqlx::query("BEGIN").execute(&mut *c).await {
                    Conn::Postgres(c).close().await;
                    return Err(e);
                }
                Conn::Postgres(c)
            }
        };
        let begin_pending = matches!(conn, Conn::Sqlite(_));
        let mut tx = Tx {
            conn: Some(conn),
            writer,
            keep_writer: self.keep_writer,
            health: self.health.clone(),
            wrote: false,
            begin_pending,
        };
        if let Some(Conn::Postgres(c)) = tx.conn.as_mut()
            && let Err(e) = sqlx::query(pg_lock).execute(&mut **c).await
        {
            // lock_timeout: roll back (and close the connection if even
            // that fails).
            let _ = tx.rollback().await;
            return Err(e);
        }
        Ok(tx)
    }

    /// SQLite: this process's turn to write (see [`Pool::writer`]), waited
    /// for at most [`BUSY_WAIT`]. PostgreSQL: none (its own locks order
    /// writers).
    async fn writer_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<WriterSlot>> {
        match self.db {
            Db::Sqlite(_) => tokio::time::timeout(BUSY_WAIT, self.writer.clone().lock_owned())
                .await
                .ok(),
            Db::Postgres(_) => None,
        }
    }

    pub(super) async fn close(&self) {
        match &self.db {
            Db::Sqlite(p) => {
                // The pool's close waits for every connection to come back,
                // the writer's too.
                if let Ok(mut slot) = tokio::time::timeout(BUSY_WAIT, self.writer.lock()).await {
                    slot.take();
                }
                p.close().await
            }
            Db::Postgres(p) => p.close().await,
        }
    }
}

impl Conn {
    /// Close the connection instead of handing it back to the pool (which
    /// then opens a new one when it needs it).
    async fn close(self) {
        let closing = async {
            let _ = match self {
                Conn::Sqlite(c) => c.close().await,
                Conn::Postgres(c) => c.close().await,
            };
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }

    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        match self {
            Conn::Sqlite(c) => sqlx::query(sql).execute(&mut **c).await.map(drop),
            Conn::Postgres(c) => sqlx::query(sql).execute(&mut **c).await.map(drop),
        }
    }

    /// Roll back; closed if the rollback fails.
    async fn roll_back(mut self) -> Result<Conn, sqlx::Error> {
        match self.run("ROLLBACK").await {
            Ok(()) => Ok(self),
            Err(e) => {
                self.close().await;
                Err(e)
            }
        }
    }
}

impl Tx {
    fn conn(&mut self) -> Result<&mut Conn, sqlx::Error> {
        // Only `commit`, `rollback` and `drop` take it, and they consume
        // the transaction.
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// The connection for the next statement, and whether `BEGIN
    /// IMMEDIATE` must go ahead of it (see [`Tx::begin_pending`]).
    fn conn_for_statement(&mut self) -> Result<(&mut Conn, bool), sqlx::Error> {
        let begin = std::mem::take(&mut self.begin_pending);
        Ok((self.conn()?, begin))
    }

    /// Send a pending `BEGIN IMMEDIATE` on its own.
    async fn begin_now(&mut self) -> Result<(), sqlx::Error> {
        if let (Conn::Sqlite(c), true) = self.conn_for_statement()?
            && let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut **c).await
        {
            self.health.saw(&e);
            return Err(e);
        }
        Ok(())
    }

    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let Some(mut conn) = self.conn.take() else {
            return Err(sqlx::Error::PoolClosed);
        };
        if self.begin_pending {
            // Nothing ran: nothing to commit.
            self.keep(conn);
            return Ok(());
        }
        let done = match self.health.fault() {
            Ok(()) => conn.run("COMMIT").await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                if self.wrote {
                    self.health.wrote();
                }
                self.keep(conn);
                Ok(())
            }
            Err(e) => {
                self.health.saw(&e);
                // Whether the transaction is still open is the engine's
                // guess: the connection is not trusted again.
                conn.close().await;
                Err(e)
            }
        }
    }

    pub(super) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        if let Some(conn) = self.conn.take() {
            if self.begin_pending {
                self.keep(conn);
                return Ok(());
            }
            let conn = conn.roll_back().await?;
            self.keep(conn);
        }
        Ok(())
    }

    /// A connection out of a transaction that ended cleanly: SQLite's is
    /// kept for the next writer (see [`Pool::writer`]), any other goes back
    /// to the pool.
    fn keep(&mut self, conn: Conn) {
        if let (Some(slot), Conn::Sqlite(c), true) = (self.writer.as_mut(), conn, self.keep_writer)
        {
            **slot = Some(c);
        }
    }
}

impl Drop for Tx {
    /// A transaction left without commit or rollback (an error returned
    /// with `?`, a cancelled future): roll it back off to the side, and
    /// close the connection if that fails.
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.begin_pending {
            self.keep(conn);
            return;
        }
        // The next writer waits for the rollback.
        let writer = self.writer.take();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = conn.roll_back().await;
                    drop(writer);
                });
            }
            // No runtime to roll back on: closing rolls back too.
            Err(_) => match conn {
                Conn::Sqlite(mut c) => c.close_on_drop(),
                Conn::Postgres(mut c) => c.close_on_drop(),
            },
        }
    }
}

/// Where a statement runs: the pool (one statement, autocommit) or an open
/// transaction.
pub(super) enum Ex<'a> {
    Pool(&'a Pool),
    Tx(&'a mut Tx),
}

impl<'a> From<&'a Pool> for Ex<'a> {
    fn from(p: &'a Pool) -> Self {
        Ex::Pool(p)
    }
}

impl Ex<'_> {
    fn health(&self) -> Arc<Health> {
        match self {
            Ex::Pool(p) => p.health.clone(),
            Ex::Tx(t) => t.health.clone(),
        }
    }
}

impl<'a> From<&'a mut Tx> for Ex<'a> {
    fn from(t: &'a mut Tx) -> Self {
        Ex::Tx(t)
    }
}

/// A bound value, owned so that a statement can be built before the engine
/// is known.
#[derive(Debug, Clone)]
pub(super) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
}

macro_rules! arg_from {
    ($($t:ty => |$v:ident| $e:expr;)*) => {
        $(impl From<$t> for Arg {
            fn from($v: $t) -> Arg {
                $e
            }
        })*
    };
}

arg_from! {
    i64 => |v| Arg::Int(Some(v));
    &i64 => |v| Arg::Int(Some(*v));
    Option<i64> => |v| Arg::Int(v);
    i32 => |v| Arg::Int(Some(i64::from(v)));
    u32 => |v| Arg::Int(Some(i64::from(v)));
    bool => |v| Arg::Bool(Some(v));
    Option<bool> => |v| Arg::Bool(v);
    &str => |v| Arg::Text(Some(v.to_owned()));
    String => |v| Arg::Text(Some(v));
    &String => |v| Arg::Text(Some(v.clone()));
    Option<String> => |v| Arg::Text(v);
    Option<&str> => |v| Arg::Text(v.map(str::to_owned));
    &Option<String> => |v| Arg::Text(v.clone());
    Option<&String> => |v| Arg::Text(v.cloned());
    &[u8] => |v| Arg::Bytes(Some(v.to_vec()));
    &Vec<u8> => |v| Arg::Bytes(Some(v.clone()));
    Vec<u8> => |v| Arg::Bytes(Some(v));
}

/// The first bound value in `sql` that SQLite's planner would look at (see
/// [`stmt`]): a bound `LIMIT` or `OFFSET`, or a state compared with a bound
/// value in a `WHERE` that does not begin with `id = $N` (`+state` is only
/// checked, never planned with). Assignments (`SET state = $3`) are not.
fn plan_shaping_bind(sql: &str) -> Option<&str> {
    for limit in ["LIMIT $", "OFFSET $"] {
        if let Some(at) = sql.find(limit) {
            return Some(&sql[at..at + limit.len()]);
        }
    }
    for pattern in ["state = $", "state IN ($"] {
        for (at, hit) in sql.match_indices(pattern) {
            let before = sql[..at].trim_end();
            let compared = ["WHERE", "AND", "OR", "("]
                .iter()
                .any(|w| before.ends_with(w));
            let by_id = before
                .rfind("WHERE")
                .map(|w| &sql[w..at])
                .is_some_and(|clause| {
                    clause.starts_with("WHERE id = $") && !clause.contains(" OR ")
                });
            if compared && !by_id {
                return Some(hit);
            }
        }
    }
    None
}

/// What an `UPDATE`/`DELETE` did.
pub(super) struct Done(u64);

impl Done {
    pub(super) fn rows_affected(&self) -> u64 {
        self.0
    }
}

/// A row type both drivers can decode.
pub(super) trait Row:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

/// A single column type both drivers can decode.
pub(super) trait Scalar:
    for<'r> Decode<'r, Sqlite>
    + Type<Sqlite>
    + for<'r> Decode<'r, Postgres>
    + Type<Postgres>
    + Send
    + Unpin
{
}
impl<T> Scalar for T where
    T: for<'r> Decode<'r, Sqlite>
        + Type<Sqlite>
        + for<'r> Decode<'r, Postgres>
        + Type<Postgres>
        + Send
        + Unpin
{
}

/// A statement: its SQL with `$N` placeholders and the values for them.
#[derive(Debug, Clone)]
pub(super) struct Q {
    sql: Cow<'static, str>,
    args: Vec<Arg>,
}

/// A statement whose placeholders are written in its text.
///
/// A value SQLite's planner looks at is written into the text, not bound:
/// a `LIMIT`, and a state compared in a `WHERE` that is not a lookup by
/// `id` (`WHERE id = $1 AND state = $2` is planned without the indexes). A
/// bound one makes SQLite prepare the statement again on every run, in
/// case the value changes the plan (a state may match a partial index's
/// `WHERE state = 'uploading'`): a claim and an acceptance were each parsed
/// and planned anew every time (BENCHMARKS.md, S1). Tests check every
/// statement they run on SQLite ([`plan_shaping_bind`]).
pub(super) fn stmt(sql: impl Into<Cow<'static, str>>) -> Q {
    Q {
        sql: sql.into(),
        args: Vec::new(),
    }
}

/// Run `$q` on whichever engine `$ex` is: build the engine's query with
/// `sqlx::$build` and its arguments, call `$call` on the pool or the open
/// transaction, and map the engine's own answer with `$map` (written once,
/// expanded per engine).
macro_rules! on_engine {
    ($q:ident, $ex:expr, $build:ident, $call:ident, $map:expr) => {{
        let sql = sqlx::AssertSqlSafe($q.sql.clone().into_owned());
        let ex: Ex<'_> = $ex.into();
        let health = ex.health();
        let done = match ex {
            Ex::Pool(Pool {
                db: Db::Sqlite(p), ..
            }) => sqlx::$build(sql, $q.sqlite_args()?)
                .$call(p)
                .await
                .map($map),
            Ex::Pool(Pool {
                db: Db::Postgres(p),
                ..
            }) => sqlx::$build(sql, $q.pg_args()?).$call(p).await.map($map),
            Ex::Tx(t) => match t.conn_for_statement()? {
                (Conn::Sqlite(c), begin) => {
                    let sql = match begin {
                        true => sqlx::AssertSqlSafe(format!("BEGIN IMMEDIATE; {}", sql.0)),
                        false => sql,
                    };
                    sqlx::$build(sql, $q.sqlite_args()?)
                        .$call(&mut **c)
                        .await
                        .map($map)
                }
                (Conn::Postgres(c), _) => sqlx::$build(sql, $q.pg_args()?)
                    .$call(&mut **c)
                    .await
                    .map($map),
            },
        };
        if let Err(e) = &done {
            health.saw(e);
        }
        done
    }};
}

impl Q {
    /// The value for the next `$N` (in argument order, as sqlx's `bind`).
    pub(super) fn bind(mut self, v: impl Into<Arg>) -> Self {
        self.args.push(v.into());
        self
    }

    /// Append SQL text (a statement built piece by piece).
    pub(super) fn push(&mut self, sql: impl AsRef<str>) -> &mut Self {
        self.sql.to_mut().push_str(sql.as_ref());
        self
    }

    /// Append placeholders for `ids`, comma-separated (an `IN` list).
    pub(super) fn push_ids(&mut self, ids: impl IntoIterator<Item = i64>) -> &mut Self {
        for (i, id) in ids.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_bind(id);
        }
        self
    }

    /// Append a placeholder for `v`.
    pub(super) fn push_bind(&mut self, v: impl Into<Arg>) -> &mut Self {
        self.args.push(v.into());
        let n = self.args.len();
        self.sql.to_mut().push_str(&format!("${n}"));
        self
    }

    /// This statement, then `next`, in one query (`next`'s placeholders
    /// numbered on after this one's). For SQLite only, where it is one
    /// round trip to the connection's thread instead of two (see
    /// [`Tx::begin_pending`] for what that relies on); PostgreSQL takes one
    /// statement per query with arguments.
    pub(super) fn then(mut self, next: Q) -> Q {
        let offset = self.args.len();
        let sql = self.sql.to_mut();
        sql.push_str("; ");
        let mut rest = next.sql.as_ref();
        while let Some(at) = rest.find('$') {
            sql.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            match rest[..digits].parse::<usize>() {
                Ok(n) => sql.push_str(&(n + offset).to_string()),
                Err(_) => sql.push_str(&rest[..digits]),
            }
            rest = &rest[digits..];
        }
        sql.push_str(rest);
        self.args.extend(next.args);
        self
    }

    /// [`Q::fetch_all`] of a write in `tx` (`… RETURNING`): rows back
    /// mean it changed rows, which its commit then shows.
    pub(super) async fn fetch_all_written<T: Row>(
        self,
        tx: &mut Tx,
    ) -> Result<Vec<T>, sqlx::Error> {
        let rows: Vec<T> = self.fetch_all(&mut *tx).await?;
        tx.wrote |= !rows.is_empty();
        Ok(rows)
    }

    /// SQLite's plan for this statement, one line per step.
    #[cfg(test)]
    pub(super) async fn explain(mut self, pool: &Pool) -> String {
        self.sql = format!("EXPLAIN QUERY PLAN {}", self.sql).into();
        let rows: Vec<(i64, i64, i64, String)> = self.fetch_all(pool).await.expect("explain");
        rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
    }

    #[cfg(test)]
    fn sql(&self) -> &str {
        &self.sql
    }

    fn sqlite_args(&self) -> Result<SqliteArguments, sqlx::Error> {
        debug_assert!(
            plan_shaping_bind(&self.sql).is_none(),
            "bound where SQLite's planner looks (write it in, see `stmt`): {:?} in {}",
            plan_shaping_bind(&self.sql),
            self.sql
        );
        let mut a = SqliteArguments::default();
        for arg in &self.args {
            let added = match arg {
                Arg::Int(v) => a.add(*v),
                Arg::Text(v) => a.add(v.clone()),
                Arg::Bytes(v) => a.add(v.clone()),
                Arg::Bool(v) => a.add(*v),
            };
            added.map_err(sqlx::Error::Encode)?;
        }
        Ok(a)
    }

    fn pg_args(&self) -> Result<PgArguments, sqlx::Error> {
        let mut a = PgArguments::default();
        for arg in &self.args {
            let added = match arg {
                Arg::Int(v) => a.add(*v),
                Arg::Text(v) => a.add(v.clone()),
                Arg::Bytes(v) => a.add(v.clone()),
                Arg::Bool(v) => a.add(*v),
            };
            added.map_err(sqlx::Error::Encode)?;
        }
        Ok(a)
    }

    /// A write. One that changed rows on the pool (committed at once), or
    /// in a transaction that then commits, shows that the ledger can write:
    /// a statement that changed nothing writes nothing, even on a full disk.
    pub(super) async fn execute<'e>(self, ex: impl Into<Ex<'e>>) -> Result<Done, sqlx::Error> {
        let rows = match ex.into() {
            Ex::Pool(p) => {
                if let Err(e) = p.health.fault() {
                    p.health.saw(&e);
                    return Err(e);
                }
                // A write of its own waits for this process's writing
                // transaction like another one (see `Pool::writer`).
                let _writer = p.writer_turn().await;
                let rows = on_engine!(self, Ex::Pool(p), query_with, execute, |r| r
                    .rows_affected())?;
                if rows > 0 {
                    p.health.wrote();
                }
                rows
            }
            Ex::Tx(t) => {
                // Not merged into `BEGIN`'s round trip: sqlx-sqlite counts a
                // `BEGIN`'s "changes" as the connection's previous write's.
                t.begin_now().await?;
                let rows = on_engine!(self, Ex::Tx(&mut *t), query_with, execute, |r| r
                    .rows_affected())?;
                t.wrote |= rows > 0;
                rows
            }
        };
        Ok(Done(rows))
    }

    pub(super) async fn fetch_all<'e, T: Row>(
        self,
        ex: impl Into<Ex<'e>>,
    ) -> Result<Vec<T>, sqlx::Error> {
        on_engine!(self, ex, query_as_with, fetch_all, |rows| rows)
    }

    pub(super) async fn fetch_optional<'e, T: Row>(
        self,
        ex: impl Into<Ex<'e>>,
    ) -> Result<Option<T>, sqlx::Error> {
        on_engine!(self, ex, query_as_with, fetch_optional, |row| row)
    }

    pub(super) async fn fetch_one<'e, T: Row>(
        self,
        ex: impl Into<Ex<'e>>,
    ) -> Result<T, sqlx::Error> {
        self.fetch_optional(ex)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    pub(super) async fn scalar_all<'e, T: Scalar>(
        self,
        ex: impl Into<Ex<'e>>,
    ) -> Result<Vec<T>, sqlx::Error> {
        let rows: Vec<(T,)> = self.fetch_all(ex).await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    pub(super) async fn scalar_optional<'e, T: Scalar>(
        self,
        ex: impl Into<Ex<'e>>,
    ) -> Result<Option<T>, sqlx::Error> {
        let row: Option<(T,)> = self.fetch_optional(ex).await?;
        Ok(row.map(|(v,)| v))
    }

    pub(super) async fn scalar_one<'e, T: Scalar>(
        self,
        ex: impl Into<Ex<'e>>,
    ) -> Result<T, sqlx::Error> {
        let (v,): (T,) = self.fetch_one(ex).await?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn then_numbers_the_next_statement_after_this_ones_arguments() {
        let q = stmt("UPDATE a SET x = $2 WHERE id = $1")
            .bind(1)
            .bind("x")
            .then(
                stmt("UPDATE b SET y = $1, z = $1 WHERE w = $2 AND v = '$'")
                    .bind(7)
                    .bind(8),
            );
        assert_eq!(
            q.sql(),
            "UPDATE a SET x = $2 WHERE id = $1; UPDATE b SET y = $3, z = $3 WHERE w = $4 AND v = '$'"
        );
        assert_eq!(q.args.len(), 4);
    }

    #[test]
    fn push_bind_numbers_placeholders_after_bound_ones() {
        let mut s = stmt("SELECT 1 WHERE a = $1").bind(5_i64);
        s.push(" AND b = ")
            .push_bind("x")
            .push(" AND c = ")
            .push_bind(true);
        assert_eq!(s.sql(), "SELECT 1 WHERE a = $1 AND b = $2 AND c = $3");
        assert_eq!(s.args.len(), 3);
    }

    #[tokio::test]
    async fn sqlite_binds_dollar_placeholders_by_number_reused_and_reordered() {
        let pool = SqlitePool::connect("sqlite::memory:").await.expect("pool");
        let pool = Pool::sqlite(pool);
        let row: (String, String, String) = stmt("SELECT $2, $1, $2")
            .bind("one")
            .bind("two")
            .fetch_one(&pool)
            .await
            .expect("select");
        assert_eq!(row, ("two".into(), "one".into(), "two".into()));
        let none: Option<i64> = stmt("SELECT $1")
            .bind(None::<i64>)
            .scalar_one(&pool)
            .await
            .expect("null");
        assert_eq!(none, None);
        let yes: bool = stmt("SELECT $1")
            .bind(true)
            .scalar_one(&pool)
            .await
            .expect("bool");
        assert!(yes);
    }

    async fn one_connection_pool(dir: &tempfile::TempDir) -> SqlitePool {
        pool_of(dir, 1).await
    }

    /// A pool of `connections` on a new file with one table, `t`.
    async fn pool_of(dir: &tempfile::TempDir, connections: u32) -> SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let p = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(options)
            .await
            .expect("pool");
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&p)
            .await
            .expect("create");
        p
    }

    /// The transaction SQLite ended by itself (as it does after SQLITE_FULL
    /// or SQLITE_IOERR at commit): the commit fails, and the connection
    /// must not come back believing it is still in a transaction.
    async fn commit_after_engine_rolled_back(tx: &mut Tx) {
        stmt("INSERT INTO t VALUES (1)")
            .execute(&mut *tx)
            .await
            .expect("insert");
        stmt("ROLLBACK").execute(&mut *tx).await.expect("rollback");
    }

    #[tokio::test]
    async fn a_connection_whose_commit_failed_is_closed_not_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = one_connection_pool(&dir).await;
        // What sqlx's own transaction does here: the one connection comes
        // back at transaction depth 1, and every later BEGIN fails.
        {
            let mut tx = raw.begin_with("BEGIN IMMEDIATE").await.expect("begin");
            sqlx::query("ROLLBACK")
                .execute(&mut *tx)
                .await
                .expect("rollback");
            assert!(tx.commit().await.is_err());
            let again = raw.begin_with("BEGIN IMMEDIATE").await;
            assert!(
                again
                    .as_ref()
                    .err()
                    .is_some_and(|e| e.to_string().contains("depth")),
                "sqlx poisons the connection: {:?}",
                again.map(drop)
            );
        }
        raw.close().await;

        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::sqlite(one_connection_pool(&dir).await);
        for _ in 0..3 {
            let mut tx = pool.begin().await.expect("begin after a failed commit");
            commit_after_engine_rolled_back(&mut tx).await;
            assert!(tx.commit().await.is_err(), "nothing to commit");
        }
        let mut tx = pool.begin().await.expect("a fresh connection");
        stmt("INSERT INTO t VALUES (2)")
            .execute(&mut tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        let rows: Vec<i64> = stmt("SELECT x FROM t")
            .scalar_all(&pool)
            .await
            .expect("read");
        assert_eq!(rows, vec![2]);
    }

    /// What SQLite would plan anew on every run is found; lookups by id,
    /// assignments and `+state` are not.
    #[test]
    fn binds_the_planner_looks_at_are_found() {
        for shaping in [
            "SELECT id FROM files WHERE state = 'queued' ORDER BY id LIMIT $1",
            "SELECT id FROM files ORDER BY id LIMIT 10 OFFSET $2",
            "UPDATE files SET state = $2 WHERE state = $1",
            "SELECT id FROM files WHERE size = $1 AND state IN ($2, $3)",
            "UPDATE files SET x = 1 WHERE (id = $1 AND state = $2) OR duplicate_of = $1",
            "UPDATE files SET x = 1 WHERE id IN (SELECT id FROM files WHERE state = $1)",
        ] {
            assert!(plan_shaping_bind(shaping).is_some(), "{shaping}");
        }
        for fine in [
            "UPDATE files SET state = $3, updated_at = $4 WHERE id = $1 AND state = $2",
            "UPDATE files SET state = $2 WHERE +state = $1 AND id IN ($3, $4)",
            "SELECT id FROM files WHERE state = 'queued' ORDER BY id LIMIT 16",
            "UPDATE files SET x = 1 WHERE (id = $1 AND state = 'uploading') OR duplicate_of = $1",
        ] {
            assert_eq!(plan_shaping_bind(fine), None, "{fine}");
        }
    }

    /// SQLite's `BEGIN IMMEDIATE` rides with a transaction's first
    /// statement that returns rows (or goes ahead of a first write on its
    /// own): either way the write lock is held from that statement on, a
    /// write's count of changed rows is its own, and a transaction that ran
    /// nothing ends without a `COMMIT` or `ROLLBACK` (which would fail).
    #[tokio::test]
    async fn the_deferred_begin_takes_the_lock_with_the_first_statement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::sqlite(pool_of(&dir, 2).await);
        let other = pool_of_same(&dir).await;
        let locked = || async {
            // Without waiting: `BEGIN IMMEDIATE` fails while a writer holds the lock.
            let mut c = other.acquire().await.expect("conn");
            sqlx::query("PRAGMA busy_timeout = 0")
                .execute(&mut *c)
                .await
                .expect("pragma");
            let begun = sqlx::query("BEGIN IMMEDIATE").execute(&mut *c).await;
            if begun.is_ok() {
                sqlx::query("ROLLBACK")
                    .execute(&mut *c)
                    .await
                    .expect("rollback");
            }
            begun.is_err()
        };
        for first_returns_rows in [true, false] {
            let mut tx = pool.begin().await.expect("begin");
            assert!(!locked().await, "nothing ran yet");
            if first_returns_rows {
                let n: i64 = stmt("SELECT count(*) FROM t")
                    .scalar_one(&mut tx)
                    .await
                    .expect("count");
                assert_eq!(n, 0);
            } else {
                // The connection's previous write changed a row; this one none.
                let done = stmt("UPDATE t SET x = 0 WHERE x < 0")
                    .execute(&mut tx)
                    .await
                    .expect("update");
                assert_eq!(done.rows_affected(), 0);
            }
            assert!(locked().await, "the first statement took the lock");
            stmt("INSERT INTO t VALUES (1)")
                .execute(&mut tx)
                .await
                .expect("insert");
            tx.commit().await.expect("commit");
            assert!(!locked().await, "the commit let it go");
        }
        let idle = pool.begin().await.expect("begin");
        idle.commit()
            .await
            .expect("a transaction that ran nothing commits");
        let idle = pool.begin().await.expect("begin");
        idle.rollback().await.expect("and rolls back");
        let rows: Vec<i64> = stmt("SELECT x FROM t")
            .scalar_all(&pool)
            .await
            .expect("read");
        assert_eq!(rows, vec![1, 1]);
    }

    /// Another pool on [`pool_of`]'s file.
    async fn pool_of_same(dir: &tempfile::TempDir) -> SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("t.db"));
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("pool")
    }

    /// The writes go on one connection, kept between transactions (a temp
    /// table, which only its connection sees, shows it), while reads use
    /// the others; a connection whose commit failed is not kept; and
    /// closing the pool does not wait for the kept one.
    #[tokio::test]
    async fn writes_keep_their_connection_and_reads_use_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::sqlite(pool_of(&dir, 2).await);
        let mut tx = pool.begin().await.expect("begin");
        stmt("CREATE TEMP TABLE mine (x INTEGER)")
            .execute(&mut tx)
            .await
            .expect("temp table");
        tx.commit().await.expect("commit");
        for x in 0..3i64 {
            let mut tx = pool.begin().await.expect("begin");
            stmt("INSERT INTO mine VALUES ($1)")
                .bind(x)
                .execute(&mut tx)
                .await
                .expect("the same connection");
            tx.commit().await.expect("commit");
            let n: i64 = stmt("SELECT count(*) FROM sqlite_temp_master WHERE name = 'mine'")
                .scalar_one(&pool)
                .await
                .expect("a read");
            assert_eq!(n, 0, "the read was not on the writer's connection");
        }
        let mut tx = pool.begin().await.expect("begin");
        commit_after_engine_rolled_back(&mut tx).await;
        assert!(tx.commit().await.is_err());
        let mut tx = pool.begin().await.expect("begin");
        let gone = stmt("INSERT INTO mine VALUES (9)").execute(&mut tx).await;
        assert!(
            gone.is_err(),
            "a connection whose commit failed is not kept"
        );
        tx.rollback().await.expect("rollback");
        tokio::time::timeout(Duration::from_secs(10), pool.close())
            .await
            .expect("the pool closes");
    }

    #[tokio::test]
    async fn a_transaction_dropped_midway_is_rolled_back_and_its_connection_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::sqlite(one_connection_pool(&dir).await);
        {
            let mut tx = pool.begin().await.expect("begin");
            stmt("INSERT INTO t VALUES (1)")
                .execute(&mut tx)
                .await
                .expect("insert");
            // Dropped: an error returned with `?` in the middle.
        }
        let mut tx = pool.begin().await.expect("begin again");
        stmt("INSERT INTO t VALUES (2)")
            .execute(&mut tx)
            .await
            .expect("insert");
        tx.rollback().await.expect("rollback");
        let n: i64 = stmt("SELECT count(*) FROM t")
            .scalar_one(&pool)
            .await
            .expect("count");
        assert_eq!(n, 0, "both rolled back");
    }

    #[tokio::test]
    async fn an_injected_full_disk_fails_writes_not_reads_and_its_end_is_seen() {
        use super::super::error::{ErrorClass, classify};
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::sqlite(one_connection_pool(&dir).await);
        let mut recoveries = pool.health().recoveries();
        pool.health().inject_disk_full(Duration::from_secs(3600));
        let e = pool.begin().await.map(drop).expect_err("full");
        assert_eq!(classify(&e), ErrorClass::DiskFull);
        let e = stmt("INSERT INTO t VALUES (1)")
            .execute(&pool)
            .await
            .map(drop)
            .expect_err("full");
        assert_eq!(classify(&e), ErrorClass::DiskFull);
        let outage = pool.health().outage().expect("an outage");
        assert_eq!(outage.class, ErrorClass::DiskFull);
        assert!(
            outage
                .describe()
                .starts_with("the ledger's disk is full since ")
        );
        let n: i64 = stmt("SELECT count(*) FROM t")
            .scalar_one(&pool)
            .await
            .expect("reads work");
        assert_eq!(n, 0);
        // A statement that changes nothing proves nothing.
        stmt("DELETE FROM t")
            .execute(&pool)
            .await
            .map(drop)
            .expect_err("still full");
        pool.health().inject_disk_full(Duration::ZERO);
        stmt("DELETE FROM t").execute(&pool).await.expect("delete");
        assert!(pool.health().outage().is_some(), "nothing was written yet");
        let mut tx = pool.begin().await.expect("begin");
        stmt("INSERT INTO t VALUES (1)")
            .execute(&mut tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        assert!(pool.health().outage().is_none());
        assert!(recoveries.has_changed().expect("open"));
        assert_eq!(*recoveries.borrow_and_update(), 1);
    }
}
