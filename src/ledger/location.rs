//! Where a ledger lives: a SQLite file, or a PostgreSQL database named by a
//! URL that may carry a password, which is never shown.

use std::fmt;
use std::path::PathBuf;

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

/// A `postgres://` URL. `Display` and `Debug` show it with the password
/// replaced by `***`; only [`PgUrl::expose`] gives the real text, to the
/// driver.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl(String);

impl PgUrl {
    /// Accept `postgres://` and `postgresql://` URLs.
    pub fn parse(url: &str) -> Result<PgUrl, String> {
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(
                "must start with postgres:// (e.g. postgres://tl_ingest@db.example/tl_ingest)"
                    .into(),
            );
        }
        Ok(PgUrl(url.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The password in the URL, if any (percent-encoded as written).
    fn password(&self) -> Option<&str> {
        let rest = self.0.split_once("://")?.1;
        let authority = rest.split(['/', '?']).next()?;
        let userinfo = authority.rsplit_once('@')?.0;
        let (_, password) = userinfo.split_once(':')?;
        Some(password).filter(|p| !p.is_empty())
    }

    /// `text` with this URL's password (if any) replaced by `***`: for error
    /// messages from the driver, which may quote the URL.
    pub fn redact_text(&self, text: &str) -> String {
        match self.password() {
            Some(p) => text.replace(p, "***"),
            None => text.to_owned(),
        }
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redact_text(&self.0))
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_never_shown() {
        let u = PgUrl::parse("postgres://ingest:s3cr%2Ft@db.example:5432/tl?sslmode=verify-full")
            .expect("url");
        assert_eq!(
            u.to_string(),
            "postgres://ingest:***@db.example:5432/tl?sslmode=verify-full"
        );
        assert!(!format!("{u:?}").contains("s3cr"));
        assert_eq!(
            u.redact_text("bad url postgres://ingest:s3cr%2Ft@db"),
            "bad url postgres://ingest:***@db"
        );
        let plain = PgUrl::parse("postgresql://ingest@db/tl").expect("url");
        assert_eq!(plain.to_string(), "postgresql://ingest@db/tl");
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(PgUrl::parse("mysql://x").is_err());
        assert!(PgUrl::parse("/var/lib/x.db").is_err());
    }
}
