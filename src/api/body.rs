//! A file streamed into a request body by a blocking thread that can hash
//! it on the way: the upload and the sha256 then share one read of the
//! file, and neither the reads nor the hashing run on the async threads.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The reader thread: stops early when the request is dropped.
fn read_into(
    mut file: std::fs::File,
    size: u64,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
    digest: Option<oneshot::Sender<String>>,
) {
    let mut hasher = digest.as_ref().map(|_| Sha256::new());
    let mut left = size;
    while left > 0 {
        let want = left.min(CHUNK as u64);
        // Read into spare capacity: no zeroing of a buffer about to be filled.
        let mut buf = Vec::with_capacity(CHUNK);
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
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return;
        }
    }
    if let (Some(h), Some(done)) = (hasher, digest) {
        let _ = done.send(hex::encode(h.finalize()));
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
