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

use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Arguments, Decode, FromRow, Postgres, Sqlite, Type};

/// A connection pool of either engine.
#[derive(Clone, Debug)]
pub(super) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open transaction of either engine.
pub(super) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// The key of the fleet's writer lock on PostgreSQL (`'tlig'`, and 1), in
/// the two-integer space, which never meets sqlx's migration lock.
const WRITER_LOCK: &str = "SELECT pg_advisory_xact_lock(1953262439, 1)";
const SHARED_WRITER_LOCK: &str = "SELECT pg_advisory_xact_lock_shared(1953262439, 1)";

impl Pool {
    pub(super) fn is_postgres(&self) -> bool {
        matches!(self, Pool::Postgres(_))
    }

    /// A writing transaction. SQLite: `BEGIN IMMEDIATE` (the one writer, so
    /// two writers never deadlock on a lock upgrade). PostgreSQL: the
    /// fleet-wide writer lock first, under READ COMMITTED, so each statement
    /// after it sees everything committed before the lock was granted and
    /// every check-then-write holds across hosts as it does on one.
    pub(super) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self {
            Pool::Sqlite(p) => Ok(Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?)),
            Pool::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query(WRITER_LOCK).execute(&mut *tx).await?;
                Ok(Tx::Postgres(tx))
            }
        }
    }

    /// A transaction that only claims rows with `FOR UPDATE SKIP LOCKED`:
    /// on PostgreSQL claims run side by side, but never inside another
    /// transaction's check-then-write. SQLite has one writer anyway.
    pub(super) async fn begin_claim(&self) -> Result<Tx, sqlx::Error> {
        match self {
            Pool::Sqlite(p) => Ok(Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?)),
            Pool::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query(SHARED_WRITER_LOCK).execute(&mut *tx).await?;
                Ok(Tx::Postgres(tx))
            }
        }
    }

    pub(super) async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

impl Tx {
    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }

    pub(super) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.rollback().await,
            Tx::Postgres(t) => t.rollback().await,
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
        match $ex.into() {
            Ex::Pool(Pool::Sqlite(p)) => sqlx::$build(sql, $q.sqlite_args()?)
                .$call(p)
                .await
                .map($map),
            Ex::Tx(Tx::Sqlite(t)) => sqlx::$build(sql, $q.sqlite_args()?)
                .$call(&mut **t)
                .await
                .map($map),
            Ex::Pool(Pool::Postgres(p)) => {
                sqlx::$build(sql, $q.pg_args()?).$call(p).await.map($map)
            }
            Ex::Tx(Tx::Postgres(t)) => sqlx::$build(sql, $q.pg_args()?)
                .$call(&mut **t)
                .await
                .map($map),
        }
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

    /// Append a placeholder for `v`.
    pub(super) fn push_bind(&mut self, v: impl Into<Arg>) -> &mut Self {
        self.args.push(v.into());
        let n = self.args.len();
        self.sql.to_mut().push_str(&format!("${n}"));
        self
    }

    #[cfg(test)]
    fn sql(&self) -> &str {
        &self.sql
    }

    fn sqlite_args(&self) -> Result<SqliteArguments, sqlx::Error> {
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

    pub(super) async fn execute<'e>(self, ex: impl Into<Ex<'e>>) -> Result<Done, sqlx::Error> {
        let rows = on_engine!(self, ex, query_with, execute, |r| r.rows_affected())?;
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
        let pool = Pool::Sqlite(pool);
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
}
