//! The one read of a multipart upload that is hashed while it is sent
//! (README.md, "Large files"): a blocking thread reads the file once, start
//! to end, feeds sha256, and hands the chunks still to be sent to the chunk
//! PUTs as whole buffers through a bounded queue.
//!
//! Memory: at most [`BUFFERS`] chunk buffers exist at once (the PUTs in
//! flight plus one read ahead), each released when its PUT ends. With the
//! usual chunk sizes (5–8 MiB) that is 25–40 MiB whatever the file's size.
//! Whole buffers, rather than each PUT streaming its part of one sequential
//! read, because the parallel PUTs need their ranges at the same time: a
//! sequential reader can only serve them from memory, and a whole buffer
//! is also what a retried PUT sends again without reading the disk. A
//! session whose chunks are larger than [`MAX_BUFFERED_CHUNK`] gets no
//! buffers: its PUTs read their ranges from the file as with a known hash,
//! and this thread only hashes, in small reads, alongside them (the page
//! cache then usually serves the second read).
//!
//! A resumed session is hashed from the first byte again: a hash state from
//! before a crash is not trusted (or kept), so the chunks the platform
//! already holds are read for the hash only (RELIABILITY.md, "Multipart
//! sessions").

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::Shared;
use crate::api::ApiError;
use crate::ledger::UploadJob;

/// Chunk buffers alive at once: one per PUT in flight, and one read ahead
/// so that a PUT that ends finds its successor's bytes ready.
const BUFFERS: usize = super::chunked_upload::PARALLEL_CHUNKS + 1;
/// Largest chunk kept in memory (see the module head): `BUFFERS` of these
/// is the most the buffers take.
pub(super) const MAX_BUFFERED_CHUNK: u64 = 16 * 1024 * 1024;
/// Read size for chunks that are only hashed.
const HASH_READ: usize = 1024 * 1024;

/// A chunk read for sending; its buffer counts against [`BUFFERS`] until
/// this is dropped.
#[derive(Debug)]
pub(super) struct Taken {
    pub bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

type Item = Result<(u64, Taken), ReadError>;

/// Why the read stopped before the end.
#[derive(Debug, Clone)]
struct ReadError {
    transient: bool,
    detail: String,
}

impl ReadError {
    fn of(e: &std::io::Error) -> Self {
        ReadError {
            transient: e.kind() == std::io::ErrorKind::UnexpectedEof
                || crate::io_error::is_transient(e),
            detail: e.to_string(),
        }
    }

    fn api(&self) -> ApiError {
        if self.transient {
            ApiError::Transport {
                what: "reading the file",
                detail: self.detail.clone(),
                body_sent: false,
            }
        } else {
            ApiError::LocalRead(self.detail.clone())
        }
    }
}

#[derive(Debug)]
struct Inbox {
    rx: mpsc::Receiver<Item>,
    /// Chunks received for a PUT that has not asked yet.
    early: BTreeMap<u64, Taken>,
    failed: Option<ReadError>,
}

/// One pass over the file for a session: its chunks to send, and its hash.
#[derive(Debug)]
pub(super) struct Feed {
    /// The chunks handed over as buffers (empty: the PUTs read their ranges).
    buffered: BTreeSet<u64>,
    inbox: Mutex<Inbox>,
    permits: Arc<Semaphore>,
    /// Set when the attempt drops the feed: the thread stops.
    stop: Arc<AtomicBool>,
    /// The hash, once the last byte is read (and recorded in the ledger).
    digest: tokio::task::JoinHandle<Result<String, ReadError>>,
}

/// What the reader thread needs.
struct Reader {
    path: PathBuf,
    job: UploadJob,
    size: u64,
    chunk_size: u64,
    buffered: BTreeSet<u64>,
    permits: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Item>,
    handle: tokio::runtime::Handle,
}

impl Feed {
    /// Start reading `path` (`size` bytes, the version `job` recorded) in
    /// chunks of `chunk_size`; the chunks in `to_send` are handed over.
    /// Once the last byte is read the hash is recorded in the ledger, so
    /// that files of this size waiting for it need not wait for the upload.
    pub fn start(
        shared: &Shared,
        job: &UploadJob,
        path: &Path,
        size: u64,
        chunk_size: u64,
        to_send: BTreeSet<u64>,
    ) -> Feed {
        let buffered = if chunk_size <= MAX_BUFFERED_CHUNK {
            to_send
        } else {
            BTreeSet::new()
        };
        let permits = Arc::new(Semaphore::new(BUFFERS));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(BUFFERS);
        let (done_tx, done_rx) = oneshot::channel();
        let reader = Reader {
            path: path.to_path_buf(),
            job: job.clone(),
            size,
            chunk_size: chunk_size.max(1),
            buffered: buffered.clone(),
            permits: permits.clone(),
            stop: stop.clone(),
            tx,
            handle: tokio::runtime::Handle::current(),
        };
        tokio::task::spawn_blocking(move || {
            let _ = done_tx.send(reader.read());
        });
        let (ledger, job) = (shared.ledger.clone(), job.clone());
        let digest = tokio::spawn(async move {
            let sha256 = done_rx.await.map_err(|_| ReadError {
                transient: true,
                detail: "the reading thread ended without a result".into(),
            })??;
            if let Err(e) = ledger.set_sha256(&job, &sha256).await {
                tracing::debug!(file_id = job.id, error = %e, "could not record the hash");
            }
            Ok(sha256)
        });
        Feed {
            buffered,
            inbox: Mutex::new(Inbox {
                rx,
                early: BTreeMap::new(),
                failed: None,
            }),
            permits,
            stop,
            digest,
        }
    }

    /// The bytes of chunk `idx`, read and hashed; `None` when the PUT is to
    /// read its range itself (a chunk too large to buffer).
    pub async fn take(&self, idx: u64) -> Result<Option<Taken>, ApiError> {
        if !self.buffered.contains(&idx) {
            return Ok(None);
        }
        // The lock is let go after each chunk received, so that the PUT it
        // is for is not kept waiting for the one asking.
        loop {
            let mut inbox = self.inbox.lock().await;
            if let Some(taken) = inbox.early.remove(&idx) {
                return Ok(Some(taken));
            }
            if let Some(e) = &inbox.failed {
                return Err(e.api());
            }
            match inbox.rx.recv().await {
                Some(Ok((i, taken))) => {
                    inbox.early.insert(i, taken);
                }
                Some(Err(e)) => inbox.failed = Some(e),
                None => {
                    inbox.failed = Some(ReadError {
                        transient: true,
                        detail: format!("the file's reader stopped before chunk {idx}"),
                    });
                }
            }
        }
    }

    /// The file's sha256, once the last byte is read. Chunks not taken yet
    /// are no longer wanted (the platform has them all): the reader only
    /// hashes from here on.
    pub async fn finish(mut self) -> Result<String, ApiError> {
        {
            let mut inbox = self.inbox.lock().await;
            inbox.early.clear();
            inbox.rx.close();
            // Buffers already queued give their permits back.
            while inbox.rx.try_recv().is_ok() {}
        }
        self.permits.close();
        match (&mut self.digest).await {
            Ok(Ok(sha256)) => Ok(sha256),
            Ok(Err(e)) => Err(e.api()),
            Err(e) => Err(ApiError::Transport {
                what: "reading the file",
                detail: format!("the hashing task failed: {e}"),
                body_sent: false,
            }),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // The attempt is over (finished, failed or replaced): the thread
        // stops at its next read (after `finish` it has already ended), and
        // a wait for a buffer ends now.
        self.stop.store(true, Ordering::Relaxed);
        self.permits.close();
    }
}

impl Reader {
    /// Read and hash every byte; hand the buffered chunks over. Once
    /// nobody takes chunks any more (the feed finished), go on hashing.
    fn read(self) -> Result<String, ReadError> {
        let mut file = std::fs::File::open(&self.path).map_err(|e| ReadError::of(&e))?;
        let mut hasher = Sha256::new();
        let mut scratch = Vec::new();
        let mut handing = true;
        let total = self.size.div_ceil(self.chunk_size);
        for idx in 1..=total {
            if self.stop.load(Ordering::Relaxed) {
                return Err(stopped());
            }
            let start = (idx - 1) * self.chunk_size;
            let len = self.size.saturating_sub(start).min(self.chunk_size);
            if !(handing && self.buffered.contains(&idx)) {
                self.hash_only(&mut file, len, &mut hasher, &mut scratch)?;
                continue;
            }
            let permit = match self.handle.block_on(self.permits.clone().acquire_owned()) {
                Ok(p) => p,
                // Closed: the feed finished (hash the rest) or was dropped.
                Err(_) => {
                    handing = false;
                    self.hash_only(&mut file, len, &mut hasher, &mut scratch)?;
                    continue;
                }
            };
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(usize::MAX));
            let read = (&mut file).take(len).read_to_end(&mut buf);
            if let Err(e) = read.and_then(|n| full(n as u64, len)) {
                let e = ReadError::of(&e);
                let _ = self.tx.blocking_send(Err(e.clone()));
                return Err(e);
            }
            hasher.update(&buf);
            let taken = Taken {
                bytes: Bytes::from(buf),
                _permit: permit,
            };
            if self.tx.blocking_send(Ok((idx, taken))).is_err() {
                handing = false;
            }
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        // Written to while it was read: the hash is of nothing that lasts.
        let same = std::fs::metadata(&self.path).is_ok_and(|meta| {
            let now = super::discover::new_file(&self.path, &meta, None);
            super::discover::same_stat(
                &now,
                self.job.size.unwrap_or(-1),
                self.job.mtime_ns.unwrap_or(-1),
                self.job.inode.unwrap_or(-1),
            )
        });
        if !same {
            return Err(ReadError {
                transient: true,
                detail: "the file changed while it was read".into(),
            });
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Hash `len` bytes without keeping them.
    fn hash_only(
        &self,
        file: &mut std::fs::File,
        len: u64,
        hasher: &mut Sha256,
        scratch: &mut Vec<u8>,
    ) -> Result<(), ReadError> {
        let mut left = len;
        while left > 0 {
            if self.stop.load(Ordering::Relaxed) {
                return Err(stopped());
            }
            scratch.clear();
            let want = left.min(HASH_READ as u64);
            let read = (&mut *file).take(want).read_to_end(scratch);
            if let Err(e) = read.and_then(|n| full(n as u64, want)) {
                let e = ReadError::of(&e);
                let _ = self.tx.blocking_send(Err(e.clone()));
                return Err(e);
            }
            hasher.update(&scratch[..]);
            left -= want;
        }
        Ok(())
    }
}

/// A short read: the file is shorter than it was when examined.
fn full(got: u64, want: u64) -> std::io::Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file is shorter than when it was examined",
        ))
    }
}

fn stopped() -> ReadError {
    ReadError {
        transient: true,
        detail: "the upload stopped".into(),
    }
}
