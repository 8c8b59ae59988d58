//! A PostgreSQL URL that may carry a password, which is never shown: read
//! from the configuration (`ledger.url`), handed to the ledger. Here, below
//! both, so that the configuration need not know the ledger to check and
//! redact it.

use std::fmt;

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

    /// The secrets written in the URL (percent-encoded as written): the
    /// password of its user part, and any `password=` parameter. Read
    /// generously: an unencoded `?` or `/` in a password must not let its
    /// tail through, so the user part runs to the URL's last `@`.
    fn secrets(&self) -> Vec<&str> {
        let mut found = Vec::new();
        let Some((_, rest)) = self.0.split_once("://") else {
            return found;
        };
        if let Some((userinfo, _)) = rest.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
            && !password.is_empty()
        {
            found.push(password);
        }
        let mut tail = rest;
        while let Some(at) = tail.find("password=") {
            let value = &tail[at + "password=".len()..];
            let value = value.split('&').next().unwrap_or(value);
            if !value.is_empty() {
                found.push(value);
            }
            tail = &tail[at + "password=".len()..];
        }
        found
    }

    /// `text` with this URL's secrets (if any) replaced by `***`: for error
    /// messages from the driver, which may quote the URL.
    pub fn redact_text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        // Longest first, so that one secret inside another goes whole.
        let mut secrets = self.secrets();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for secret in secrets {
            text = text.replace(secret, "***");
        }
        text
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
    fn passwords_in_parameters_or_with_odd_characters_are_hidden_too() {
        for (url, secret) in [
            (
                "postgres://ingest@db.example/tl?password=hunter2secret",
                "hunter2secret",
            ),
            (
                "postgres://ingest@db/tl?sslmode=require&password=hunter2&x=1",
                "hunter2",
            ),
            ("postgres://ingest:pa?ss/word@db.example/tl", "pa?ss/word"),
            ("postgres://ingest:p@ss@db.example/tl", "p@ss"),
        ] {
            let u = PgUrl::parse(url).expect("url");
            for shown in [
                u.to_string(),
                format!("{u:?}"),
                u.redact_text(&format!("error: {url}")),
            ] {
                assert!(!shown.contains(secret), "{secret} shown in {shown}");
            }
        }
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(PgUrl::parse("mysql://x").is_err());
        assert!(PgUrl::parse("/var/lib/x.db").is_err());
    }
}
