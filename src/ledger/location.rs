//! Where a ledger lives: a SQLite file, or a PostgreSQL database named by a
//! URL that may carry a password, which is never shown.

use std::fmt;
use std::path::PathBuf;

pub use crate::pg_url::PgUrl;

/// The ledger's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(PgUrl),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(u) => u.fmt(f),
        }
    }
}

impl Location {
    /// The ledger the settings name: the PostgreSQL URL when one is set
    /// (`ledger.url`), else the SQLite file at `path` (`ledger.path`,
    /// already resolved against `$STATE_DIRECTORY`).
    pub fn from_settings(path: PathBuf, url: Option<&str>) -> Location {
        match url.map(PgUrl::parse) {
            Some(Ok(url)) => Location::Postgres(url),
            // Refused by the configuration's validation; a file is the
            // safe reading otherwise.
            _ => Location::Sqlite(path),
        }
    }
}
