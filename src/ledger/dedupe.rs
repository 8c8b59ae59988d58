//! What counts as "already uploaded" when a record's hash is stored: the
//! ledger's own copy of the `upload.dedupe` setting, which the pipeline
//! hands to [`super::Ledger::record_hash`] (the ledger does not read the
//! configuration).

/// How [`super::Ledger::record_hash`] looks for an original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// The same sha256 anywhere in the ledger is uploaded once.
    Content,
    /// A path that was uploaded once is not uploaded again, whatever its content.
    Path,
    /// Every new version of every file is uploaded.
    Off,
}
