//! This host's name in a fleet of daemons sharing one ledger: what the
//! pipeline records as a file's finder, `status` compares, and every
//! metric carries as its `host` label (see README.md, "a name of its own").

/// The variable that names this host in a fleet, where `uname -n` does not
/// (containers whose host names change with every start).
pub const HOST_ENV: &str = "TL_INGEST_HOST";

/// This host's name in the fleet: `$TL_INGEST_HOST`, else `uname -n`.
pub fn host_name() -> String {
    if let Ok(name) = std::env::var(HOST_ENV)
        && !name.trim().is_empty()
    {
        return name.trim().to_owned();
    }
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}
