//! The one read of a multipart upload that is hashed while it is sent
//! (README.md, "Large files"): a blocking thread reads the file once, start
//! to end, feeds sha256, and streams each chunk still to be sent into the
//! body of that chunk's PUT, in pieces.
//!
//! Memory: the pieces read and not yet handed to a connection hold permits
//! of one fixed budget ([`BUDGET`], 16 MiB), whatever the file, the chunk
//! size or the number of PUTs. The parallel PUTs need their ranges at the
//! same time and the read is sequential, so the reader runs ahead of the
//! newest PUT by up to the budget; the older PUTs drain what they hold and
//! free it for the next chunk. Whole-chunk buffers would need one chunk per
//! PUT in flight plus one read ahead (5 × 8 MiB = 40 MiB, measured 36 MiB
//! more peak RSS than range reads), which the 64 MiB target does not leave
//! room for; with the budget, `upload` of 1 or 2 GiB in 8 MiB chunks peaks
//! at 37 MB (release build, unthrottled emulator). A PUT tried again reads its range from the file instead (its
//! pieces went with the failed request); that costs a second read of that
//! one chunk, never of the hash.
//!
//! A session whose chunks are larger than [`MAX_STREAMED_CHUNK`] would get
//! only one or two PUTs going from one sequential read inside the budget:
//! its PUTs read their ranges from the file as with a known hash, and this
//! thread only hashes, alongside them (the page cache then usually serves
//! the second read).
//!
//! A resumed session is hashed from the first byte again: a hash state from
//! before a crash is not trusted (or kept), so the chunks the platform
//! already holds are read for the hash only (RELIABILITY.md, "Multipart
//! sessions").

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::read_count::ContentReads;
use crate::api::ApiError;
use crate::ledger::{Ledger, UploadJob};

/// Bytes per read, and per piece of a chunk's body.
const PIECE: usize = 512 * 1024;
/// Pieces read ahead of the connections, for every PUT of the file.
const BUDGET_PIECES: usize = 32;
/// Bytes read ahead of the connections at most: see the module head.
pub(super) const BUDGET: u64 = (PIECE * BUDGET_PIECES) as u64;
/// Largest chunk streamed from the one read: half the budget, so that a
/// PUT finishing finds the next chunk's first pieces read.
pub(super) const MAX_STREAMED_CHUNK: u64 = BUDGET / 2;

/// A chunk's body: its pieces, as the reader reads them.
pub(super) type Pieces = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A piece read, holding its part of the budget until it is handed on.
struct Piece {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

type PieceRx = mpsc::UnboundedReceiver<std::io::Result<Piece>>;
type PieceTx = mpsc::UnboundedSender<std::io::Result<Piece>>;

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

    fn io(&self) -> std::io::Error {
        std::io::Error::other(self.detail.clone())
    }
}

/// One pass over the file for a session: its chunks to send, and its hash.
#[derive(Debug)]
pub(super) struct Feed {
    /// Each streamed chunk's pieces, once the reader begins it: a slot per
    /// chunk, so that a PUT waiting for its chunk never holds up another's
    /// (one shared inbox did: a PUT waiting for a chunk the budget did not
    /// let the reader begin kept the first PUT from its pieces, for ever).
    slots: std::sync::Mutex<BTreeMap<u64, oneshot::Receiver<PieceRx>>>,
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
    permits: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
    /// Where each streamed chunk's pieces go, taken as it is begun.
    handoff: BTreeMap<u64, oneshot::Sender<PieceRx>>,
    handle: tokio::runtime::Handle,
    /// Where to count the bytes read when the PUTs read them again.
    second_read: Option<Arc<ContentReads>>,
}

impl Feed {
    /// Start reading `path` (`size` bytes, the version `job` recorded) in
    /// chunks of `chunk_size`; the chunks in `to_send` are streamed to
    /// their PUTs. Once the last byte is read the hash is recorded in the
    /// ledger, so that files of this size waiting for it need not wait for
    /// the upload.
    pub fn start(
        (ledger, reads): (&Ledger, &Arc<ContentReads>),
        job: &UploadJob,
        path: &Path,
        size: u64,
        chunk_size: u64,
        to_send: BTreeSet<u64>,
    ) -> Feed {
        // Chunks too large to stream are read again by their PUTs: this
        // read is then a second one, counted as such (see `read_count`).
        let (streamed, second_read) = if chunk_size <= MAX_STREAMED_CHUNK {
            (to_send, None)
        } else {
            (BTreeSet::new(), Some(reads.clone()))
        };
        let permits = Arc::new(Semaphore::new(BUDGET_PIECES));
        let stop = Arc::new(AtomicBool::new(false));
        let (handoff, slots): (BTreeMap<_, _>, BTreeMap<_, _>) = streamed
            .iter()
            .map(|&idx| {
                let (tx, rx) = oneshot::channel();
                ((idx, tx), (idx, rx))
            })
            .unzip();
        let (done_tx, done_rx) = oneshot::channel();
        let reader = Reader {
            path: path.to_path_buf(),
            job: job.clone(),
            size,
            chunk_size: chunk_size.max(1),
            permits: permits.clone(),
            stop: stop.clone(),
            handoff,
            handle: tokio::runtime::Handle::current(),
            second_read,
        };
        tokio::task::spawn_blocking(move || {
            let _ = done_tx.send(reader.read());
        });
        let (ledger, job) = (ledger.clone(), job.clone());
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
            slots: std::sync::Mutex::new(slots),
            permits,
            stop,
            digest,
        }
    }

    /// The body of chunk `idx`, streamed from the read as it goes; `None`
    /// when the PUT is to read its range itself (a chunk too large to
    /// stream). Taken once: a retry reads the range.
    pub async fn take(&self, idx: u64) -> Result<Option<Pieces>, ApiError> {
        // Not streamed, or taken already (a retry): the PUT reads its range.
        let slot = self.slots.lock().ok().and_then(|mut s| s.remove(&idx));
        let Some(slot) = slot else {
            return Ok(None);
        };
        match slot.await {
            Ok(rx) => Ok(Some(pieces(rx))),
            Err(_) => Err(ReadError {
                transient: true,
                detail: format!("the file's reader stopped before chunk {idx}"),
            }
            .api()),
        }
    }

    /// The file's sha256, once the last byte is read. Chunks not taken yet
    /// are no longer wanted (the platform has them all): the reader only
    /// hashes from here on.
    pub async fn finish(mut self) -> Result<String, ApiError> {
        if let Ok(mut slots) = self.slots.lock() {
            slots.clear();
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
        // a wait for budget ends now.
        self.stop.store(true, Ordering::Relaxed);
        self.permits.close();
    }
}

/// A chunk's pieces as a request body; each piece gives its budget back
/// as it is handed to the connection.
fn pieces(rx: PieceRx) -> Pieces {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map(|piece| piece.bytes), rx))
    }))
}

impl Reader {
    /// Read and hash every byte; stream the chunks to send. Once nobody
    /// takes chunks any more (the feed finished), go on hashing.
    fn read(mut self) -> Result<String, ReadError> {
        let mut pass = Pass {
            file: std::fs::File::open(&self.path).map_err(|e| ReadError::of(&e))?,
            hasher: Sha256::new(),
            scratch: Vec::with_capacity(PIECE),
        };
        let total = self.size.div_ceil(self.chunk_size);
        for idx in 1..=total {
            self.chunk(&mut pass, idx)?;
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        self.unchanged()?;
        Ok(hex::encode(pass.hasher.finalize()))
    }

    /// Read chunk `idx`, streaming it to its PUT if it is to be sent.
    fn chunk(&mut self, pass: &mut Pass, idx: u64) -> Result<(), ReadError> {
        let start = (idx - 1) * self.chunk_size;
        let len = self.size.saturating_sub(start).min(self.chunk_size);
        let mut to: Option<PieceTx> = None;
        // A chunk nobody waits for any more (the feed finished) is read for
        // the hash only.
        if let Some(slot) = self.handoff.remove(&idx) {
            let (tx, rx) = mpsc::unbounded_channel();
            if slot.send(rx).is_ok() {
                to = Some(tx);
            }
        }
        let mut left = len;
        while left > 0 {
            if self.stop.load(Ordering::Relaxed) {
                return Err(stopped());
            }
            let want = left.min(PIECE as u64);
            self.piece(pass, &mut to, want)?;
            left -= want;
        }
        Ok(())
    }

    /// Read and hash the next `want` bytes; hand them on through `to`
    /// unless nobody takes them any more.
    fn piece(&self, pass: &mut Pass, to: &mut Option<PieceTx>, want: u64) -> Result<(), ReadError> {
        // Budget only for pieces someone may still take.
        let permit = match to.as_ref().filter(|tx| !tx.is_closed()) {
            Some(_) => match self.handle.block_on(self.permits.clone().acquire_owned()) {
                Ok(p) => Some(p),
                // Closed: the feed finished (hash the rest) or was dropped
                // (the stop flag ends the read).
                Err(_) => {
                    *to = None;
                    None
                }
            },
            None => None,
        };
        // A piece to send gets its own buffer; one only hashed reuses the
        // scratch buffer.
        let mut buf = match permit {
            Some(_) => Vec::with_capacity(PIECE),
            None => std::mem::take(&mut pass.scratch),
        };
        buf.clear();
        let read = (&mut pass.file).take(want).read_to_end(&mut buf);
        if let Err(e) = read.and_then(|n| full(n as u64, want)) {
            let e = ReadError::of(&e);
            if let Some(tx) = to.as_ref() {
                let _ = tx.send(Err(e.io()));
            }
            return Err(e);
        }
        pass.hasher.update(&buf);
        if let Some(reads) = &self.second_read {
            reads.examined(want);
        }
        match (to.as_ref(), permit) {
            // A PUT that failed dropped its body: the rest of its chunk is
            // read for the hash only.
            (Some(tx), Some(permit)) => {
                let _ = tx.send(Ok(Piece {
                    bytes: Bytes::from(buf),
                    _permit: permit,
                }));
            }
            _ => pass.scratch = buf,
        }
        Ok(())
    }

    /// Written to while it was read: the hash is of nothing that lasts.
    fn unchanged(&self) -> Result<(), ReadError> {
        let same = std::fs::metadata(&self.path).is_ok_and(|meta| {
            let now = super::discover::new_file(&self.path, &meta, None);
            super::discover::same_stat(
                &now,
                self.job.size.unwrap_or(-1),
                self.job.mtime_ns.unwrap_or(-1),
                self.job.inode.unwrap_or(-1),
            )
        });
        if same {
            Ok(())
        } else {
            Err(ReadError {
                transient: true,
                detail: "the file changed while it was read".into(),
            })
        }
    }
}

/// The state of the one read.
struct Pass {
    file: std::fs::File,
    hasher: Sha256,
    /// The buffer of pieces that are only hashed.
    scratch: Vec<u8>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// A file of `size` bytes that are not all alike, the job that
    /// recorded it, and a ledger to record hashes in (no such record: the
    /// write changes nothing).
    async fn fixture(size: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>, UploadJob, Ledger) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.mp4");
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        let found = super::super::discover::new_file(&path, &meta, None);
        let job = UploadJob {
            id: 1,
            attempt_id: 0,
            path_bytes: Some(found.path_bytes.clone()),
            path: Some(found.path.clone()),
            url: None,
            size: i64::try_from(found.size).ok(),
            mtime_ns: Some(found.mtime_ns),
            device: i64::try_from(found.device).ok(),
            inode: i64::try_from(found.inode).ok(),
            sha256: None,
            mime: None,
            user_metadata: None,
            attempts: 0,
            lookup_first: false,
            filename: None,
            epoch: 1,
            stamp: None,
        };
        let ledger = Ledger::open(&dir.path().join("ledger.db"))
            .await
            .expect("ledger");
        (dir, path, bytes, job, ledger)
    }

    async fn collect(mut pieces: Pieces) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(piece) = pieces.next().await {
            out.extend_from_slice(&piece.expect("piece"));
        }
        out
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resumed_session_streams_the_missing_chunks_and_hashes_from_the_first_byte() {
        let chunk = 300 * 1024;
        let (_dir, path, bytes, job, ledger) = fixture(chunk * 9 + 1234).await;
        let size = bytes.len() as u64;
        // Chunks 1, 2, 5 and 6 are on the platform already.
        let to_send: BTreeSet<u64> = [3, 4, 7, 8, 9, 10].into();
        let feed = Feed::start(
            (&ledger, &Arc::default()),
            &job,
            &path,
            size,
            chunk as u64,
            to_send.clone(),
        );
        assert!(feed.take(5).await.expect("take").is_none(), "not to send");
        for idx in to_send {
            let pieces = feed.take(idx).await.expect("take").expect("streamed");
            let start = (idx as usize - 1) * chunk;
            let end = (start + chunk).min(bytes.len());
            assert_eq!(collect(pieces).await, &bytes[start..end], "chunk {idx}");
        }
        assert_eq!(feed.finish().await.expect("digest"), sha256_hex(&bytes));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_nobody_takes_are_only_hashed_once_the_feed_finishes() {
        // More than the budget: the reader waits for takers until `finish`.
        let chunk = 1024 * 1024;
        let (_dir, path, bytes, job, ledger) = fixture(chunk * 20 + 5).await;
        let to_send: BTreeSet<u64> = (1..=21).collect();
        let feed = Feed::start(
            (&ledger, &Arc::default()),
            &job,
            &path,
            bytes.len() as u64,
            chunk as u64,
            to_send,
        );
        let first = feed.take(1).await.expect("take").expect("streamed");
        assert_eq!(collect(first).await, &bytes[..chunk]);
        assert_eq!(feed.finish().await.expect("digest"), sha256_hex(&bytes));
    }

    /// PUTs ask for their chunks in any order: one waiting for a chunk the
    /// budget does not let the reader begin yet must not hold up the PUT
    /// of the first chunk, whose draining is what frees the budget (it
    /// did: a 1 GiB upload then sent nothing, for ever).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_put_waiting_for_a_later_chunk_does_not_hold_up_the_first() {
        // Two chunks fill the budget: the fourth waits for the first to drain.
        let chunk = usize::try_from(MAX_STREAMED_CHUNK).expect("small");
        let (_dir, path, bytes, job, ledger) = fixture(chunk * 4).await;
        let feed = Feed::start(
            (&ledger, &Arc::default()),
            &job,
            &path,
            bytes.len() as u64,
            chunk as u64,
            (1..=4).collect(),
        );
        {
            let mut fourth = std::pin::pin!(feed.take(4));
            assert!(
                futures_util::poll!(fourth.as_mut()).is_pending(),
                "the fourth chunk cannot be begun before the first drains"
            );
            // A guard against a hang, not a synchronisation: chunk 1 is read
            // before anything waits.
            let first = tokio::time::timeout(std::time::Duration::from_secs(30), feed.take(1))
                .await
                .expect("the first chunk is handed over while a later one is awaited")
                .expect("take")
                .expect("streamed");
            assert_eq!(collect(first).await, &bytes[..chunk]);
            let fourth = fourth.await.expect("take").expect("streamed");
            for idx in [2usize, 3] {
                let pieces = feed
                    .take(idx as u64)
                    .await
                    .expect("take")
                    .expect("streamed");
                assert_eq!(
                    collect(pieces).await,
                    &bytes[(idx - 1) * chunk..idx * chunk]
                );
            }
            assert_eq!(collect(fourth).await, &bytes[3 * chunk..]);
        }
        assert_eq!(feed.finish().await.expect("digest"), sha256_hex(&bytes));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_larger_than_half_the_budget_are_read_by_their_puts() {
        let chunk = MAX_STREAMED_CHUNK + 1;
        let (_dir, path, bytes, job, ledger) =
            fixture(usize::try_from(chunk).expect("small") + 10).await;
        let reads = Arc::new(ContentReads::default());
        let feed = Feed::start(
            (&ledger, &reads),
            &job,
            &path,
            bytes.len() as u64,
            chunk,
            [1, 2].into(),
        );
        assert!(feed.take(1).await.expect("take").is_none());
        assert!(feed.take(2).await.expect("take").is_none());
        assert_eq!(feed.finish().await.expect("digest"), sha256_hex(&bytes));
        // The PUTs read it again: this read is counted as a second one.
        assert_eq!(reads.snapshot().examined, bytes.len() as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_shorter_than_recorded_fails_the_chunk_and_has_no_hash() {
        let chunk = 64 * 1024;
        let (_dir, path, bytes, job, ledger) = fixture(chunk * 3).await;
        // Recorded as longer than it is.
        let size = bytes.len() as u64 + 10;
        let feed = Feed::start(
            (&ledger, &Arc::default()),
            &job,
            &path,
            size,
            chunk as u64,
            [4].into(),
        );
        let mut last = feed.take(4).await.expect("take").expect("streamed");
        let failed = loop {
            match last.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the short chunk ended without an error"),
            }
        };
        assert!(failed.to_string().contains("shorter"), "{failed}");
        assert!(feed.finish().await.is_err(), "no hash of a short file");
    }
}
