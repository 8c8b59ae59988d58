//! Which I/O errors are worth another try later.

/// Errors a network filesystem gives while its server is away or the mount
/// is stale (and a local disk's EIO, which retrying cannot make worse).
pub fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EIO
                | libc::ESTALE
                | libc::ETIMEDOUT
                | libc::ENOTCONN
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::ECONNRESET
                | libc::ECONNABORTED
                | libc::EAGAIN
        )
    )
}
