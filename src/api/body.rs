//! A file streamed into a request body by a blocking thread that can hash
//! it on the way: the upload and the sha256 then share one read of the
//! file, and neither the reads nor the hashing run on the async threads.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// Bytes per read, and per chunk handed to the connection.
const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the connection: bounds memory per upload to
/// about `CHUNK * (AHEAD + 1)` whatever the file's size.
const AHEAD: usize = 4;

/// Stream exactly `size` bytes of `file`. Bytes handed to the connection
/// are added to `sent`. With `digest`, the sha256 (hex) of those bytes is
/// sent there once the last one is read; it is dropped instead if the file
/// ends early or cannot be read (the stream then ends with that error).
pub(crate) fn stream(
    file: std::fs::File,
    size: u64,
    sent: Arc<AtomicU64>,
    digest: Option<oneshot::Sender<String>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(AHEAD);
    tokio::task::spawn_blocking(move || read_into(file, size, &tx, digest));
    futures_util::stream::unfold((rx, sent), |(mut rx, sent)| async move {
        let item = rx.recv().await?;
        if let Ok(chunk) = &item {
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Some((item, (rx, sent)))
    })
}

/// Bytes already read, as a body of one chunk: counted in `sent` when the
/// connection takes them.
pub(crate) fn once(
    bytes: Bytes,
    sent: Arc<AtomicU64>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::once(async move {
        sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    })
}

/// The reader thread: stops early when the request is dropped.
fn read_into(
    mut file: std::fs::File,
    size: u64,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
    digest: Option<oneshot::Sender<String>>,
) {
    let mut hasher = digest.as_ref().map(|_| Sha256::new());
    let buffers = Buffers::default();
    let mut left = size;
    while left > 0 {
        let want = left.min(CHUNK as u64);
        // Read into spare capacity: no zeroing of a buffer about to be filled.
        let mut buf = buffers.take();
        if let Err(e) = (&mut file).take(want).read_to_end(&mut buf) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        if buf.is_empty() {
            let _ = tx.blocking_send(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file is shorter than when it was examined",
            )));
            return;
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf);
        }
        left -= buf.len() as u64;
        if tx.blocking_send(Ok(buffers.lend(buf))).is_err() {
            return;
        }
    }
    if let (Some(h), Some(done)) = (hasher, digest) {
        let _ = done.send(hex::encode(h.finalize()));
    }
}

/// One upload's read buffers: each comes back when the connection has sent
/// and dropped it, for the next read. A fresh allocation of [`CHUNK`] bytes
/// for every read is, with glibc, a new mapping and a page fault for each
/// of its pages: about 6 % of an upload's CPU.
#[derive(Clone, Default)]
struct Buffers(Arc<Mutex<Vec<Vec<u8>>>>);

impl Buffers {
    /// An empty buffer of [`CHUNK`] bytes' capacity.
    fn take(&self) -> Vec<u8> {
        let kept = self.0.lock().ok().and_then(|mut free| free.pop());
        kept.unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    /// `buf`'s bytes, for the connection; the buffer comes back on drop.
    fn lend(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent {
            buf,
            home: self.clone(),
        })
    }
}

/// A buffer lent to the connection.
struct Lent {
    buf: Vec<u8>,
    home: Buffers,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        // No more than can be in flight at once are kept.
        if let Ok(mut free) = self.home.0.lock()
            && free.len() <= AHEAD + 1
        {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn collect(
        s: impl Stream<Item = std::io::Result<Bytes>>,
    ) -> (Vec<u8>, Option<std::io::Error>) {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::fs::File) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).expect("write");
        let f = std::fs::File::open(&p).expect("open");
        (dir, f)
    }

    #[tokio::test]
    async fn streams_the_bytes_and_their_hash_in_one_pass() {
        let data: Vec<u8> = (0..(CHUNK * 3 + 17)).map(|i| (i % 251) as u8).collect();
        let (_dir, f) = file_with(&data);
        let sent = Arc::new(AtomicU64::new(0));
        let (tx, rx) = oneshot::channel();
        let (out, err) = collect(stream(f, data.len() as u64, sent.clone(), Some(tx))).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out, data);
        assert_eq!(sent.load(Ordering::Relaxed), data.len() as u64);
        assert_eq!(
            rx.await.expect("digest"),
            hex::encode(Sha256::digest(&data))
        );
    }

    #[test]
    fn a_buffer_comes_back_once_the_connection_drops_it() {
        let buffers = Buffers::default();
        let mut buf = buffers.take();
        buf.extend_from_slice(b"abc");
        let at = buf.as_ptr();
        let lent = buffers.lend(buf);
        assert_eq!(&lent[..], b"abc");
        let other = buffers.take();
        assert_ne!(other.as_ptr(), at, "not while it is lent");
        drop(lent);
        let again = buffers.take();
        assert_eq!(again.as_ptr(), at, "the same allocation");
        assert!(again.is_empty() && again.capacity() >= CHUNK);
    }

    #[tokio::test]
    async fn sends_no_more_than_size() {
        let (_dir, f) = file_with(b"0123456789");
        let (tx, rx) = oneshot::channel();
        let (out, err) = collect(stream(f, 4, Arc::default(), Some(tx))).await;
        assert!(err.is_none());
        assert_eq!(out, b"0123");
        assert_eq!(
            rx.await.expect("digest"),
            hex::encode(Sha256::digest(b"0123"))
        );
    }

    #[tokio::test]
    async fn a_short_file_ends_in_an_error_and_no_digest() {
        let (_dir, f) = file_with(b"abc");
        let (tx, rx) = oneshot::channel();
        let (out, err) = collect(stream(f, 10, Arc::default(), Some(tx))).await;
        assert_eq!(out, b"abc");
        assert_eq!(
            err.map(|e| e.kind()),
            Some(std::io::ErrorKind::UnexpectedEof)
        );
        assert!(rx.await.is_err(), "no digest for a short file");
    }
}
