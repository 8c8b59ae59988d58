//! The output of `doctor`: one line per check as soon as it is known
//! (coloured marks on a terminal, words otherwise), secrets scrubbed, and
//! the counts for the summary.

use anstyle::Style;

use crate::cli::out;
use crate::cli::text::{DIM, GREEN, RED, YELLOW, paint};
use crate::ledger::PgUrl;
use crate::secret::ApiKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// The checks so far; each is printed as soon as it is known.
pub(super) struct Report {
    pub(super) tty: bool,
    /// Keys to scrub from every line (never printed, only compared).
    pub(super) secrets: Vec<ApiKey>,
    /// The ledger's URL: its password is scrubbed from every line too.
    pub(super) ledger_url: Option<PgUrl>,
    pub(super) counts: [usize; 4],
}

impl Report {
    fn line(&mut self, status: Status, name: &str, detail: &str, fix: Option<&str>) {
        self.counts[status as usize] += 1;
        let mut text = format!("{} {name}: {detail}", mark(status, self.tty));
        if let Some(fix) = fix {
            text.push_str(" — fix: ");
            text.push_str(fix);
        }
        for key in &self.secrets {
            // A key this short would blank ordinary text; none is.
            if key.expose().len() >= 4 {
                text = text.replace(key.expose(), "<redacted>");
            }
        }
        // URLs are shown redacted already; this is for a driver message
        // that might quote one. A password this short would blank ordinary
        // text.
        if let Some(url) = &self.ledger_url
            && url_password(url.expose()).is_some_and(|p| p.len() >= 4)
        {
            text = url.redact_text(&text);
        }
        out(&text);
    }

    pub(super) fn ok(&mut self, name: &str, detail: &str) {
        self.line(Status::Ok, name, detail, None);
    }

    pub(super) fn warn(&mut self, name: &str, detail: &str, fix: &str) {
        self.line(Status::Warn, name, detail, Some(fix));
    }

    pub(super) fn fail(&mut self, name: &str, detail: &str, fix: &str) {
        self.line(Status::Fail, name, detail, Some(fix));
    }

    pub(super) fn skip(&mut self, name: &str, detail: &str) {
        self.line(Status::Skip, name, detail, None);
    }
}

/// A check's mark: a coloured sign on a terminal, a word otherwise.
fn mark(status: Status, tty: bool) -> String {
    let (sign, style, word): (&str, Style, &str) = match status {
        Status::Ok => ("✓", GREEN, "OK  "),
        Status::Warn => ("!", YELLOW, "WARN"),
        Status::Fail => ("✗", RED, "FAIL"),
        Status::Skip => ("-", DIM, "SKIP"),
    };
    if tty {
        paint(sign, style)
    } else {
        word.to_string()
    }
}

/// The password written in a `postgres://` URL, if any.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let (_, password) = userinfo.split_once(':')?;
    Some(password).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_coloured_on_a_terminal_only() {
        assert_eq!(mark(Status::Ok, true), "\x1b[32m✓\x1b[0m");
        assert_eq!(mark(Status::Warn, true), "\x1b[33m!\x1b[0m");
        assert_eq!(mark(Status::Fail, true), "\x1b[31m✗\x1b[0m");
        assert_eq!(mark(Status::Skip, true), "\x1b[2m-\x1b[0m");
        for (status, word) in [
            (Status::Ok, "OK  "),
            (Status::Warn, "WARN"),
            (Status::Fail, "FAIL"),
            (Status::Skip, "SKIP"),
        ] {
            assert_eq!(mark(status, false), word);
        }
    }
}
