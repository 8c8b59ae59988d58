//! The ledger as plain SQL, on either engine: for tests that stage rows,
//! times and states the pipeline would take too long to reach, and read
//! back what no ledger method shows.

use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tl_ingest::ledger::Location;

/// A plain connection pool to a test's ledger.
pub enum Sql {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Sql {
    /// Connect to the ledger at `location` (it must exist, with its schema).
    pub async fn connect(location: &Location) -> Sql {
        match location {
            Location::Sqlite(path) => Sql::Sqlite(
                SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
                    .await
                    .expect("open the ledger file"),
            ),
            Location::Postgres(url) => Sql::Postgres(
                PgPool::connect(url.expose())
                    .await
                    .expect("connect to the ledger database"),
            ),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Sql::Postgres(_))
    }

    /// Run `statement`, SQL both engines accept with `$N` placeholders,
    /// binding `binds` as integers.
    pub async fn exec(&self, statement: &'static str, binds: &[i64]) {
        match self {
            Sql::Sqlite(pool) => {
                let mut q = sqlx::query(statement);
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(pool).await.expect(statement);
            }
            Sql::Postgres(pool) => {
                let mut q = sqlx::query(statement);
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(pool).await.expect(statement);
            }
        }
    }

    /// Run `sqlite` on SQLite, `postgres` on PostgreSQL: one step written
    /// in each dialect where they differ.
    pub async fn exec_either(&self, sqlite: &'static str, postgres: &'static str, binds: &[i64]) {
        let statement = if self.is_postgres() { postgres } else { sqlite };
        self.exec(statement, binds).await
    }

    /// One boolean from `query` (`$N` placeholders, integer `binds`).
    pub async fn fetch_bool(&self, query: &'static str, binds: &[i64]) -> bool {
        match self {
            Sql::Sqlite(pool) => {
                let mut q = sqlx::query_scalar(query);
                for b in binds {
                    q = q.bind(*b);
                }
                q.fetch_one(pool).await.expect(query)
            }
            Sql::Postgres(pool) => {
                let mut q = sqlx::query_scalar(query);
                for b in binds {
                    q = q.bind(*b);
                }
                q.fetch_one(pool).await.expect(query)
            }
        }
    }

    /// PostgreSQL: every row of every table of the ledger's schema, as
    /// text (bytea as hex and as UTF-8 text, so a secret stored either way
    /// shows): what "nowhere in the ledger" is checked against where there
    /// is no file to read.
    pub async fn postgres_rows_text(&self) -> String {
        let Sql::Postgres(pool) = self else {
            panic!("a SQLite ledger is checked through its files");
        };
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
        )
        .fetch_all(pool)
        .await
        .expect("list tables");
        assert!(
            tables.iter().any(|t| t == "files"),
            "no ledger schema: {tables:?}"
        );
        let mut all = String::new();
        for table in tables {
            let rows: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT string_agg(t::text, E'\\n') FROM \"{table}\" t"
            )))
            .fetch_one(pool)
            .await
            .expect("read a table");
            all.push_str(&rows.unwrap_or_default());
            all.push('\n');
        }
        let paths: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT path_bytes FROM files WHERE path_bytes IS NOT NULL")
                .fetch_all(pool)
                .await
                .expect("path bytes");
        for p in paths {
            all.push_str(&String::from_utf8_lossy(&p));
            all.push('\n');
        }
        all
    }

    pub async fn close(self) {
        match self {
            Sql::Sqlite(pool) => pool.close().await,
            Sql::Postgres(pool) => pool.close().await,
        }
    }
}
