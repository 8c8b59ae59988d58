//! Which I/O errors are worth another try later.

use rustix::io::Errno;

/// Errors a network filesystem gives while its server is away or the mount
/// is stale (and a local disk's EIO, which retrying cannot make worse).
pub fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(
            Errno::IO
                | Errno::STALE
                | Errno::TIMEDOUT
                | Errno::NOTCONN
                | Errno::HOSTDOWN
                | Errno::HOSTUNREACH
                | Errno::NETDOWN
                | Errno::NETUNREACH
                | Errno::CONNRESET
                | Errno::CONNABORTED
                | Errno::AGAIN
        )
    )
}
