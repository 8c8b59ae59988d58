//! The slow link of `Faults::slow_bytes_per_sec`: a request body read at most that many
//! bytes a second, as a remote API behind a network link reads it (the benchmarks'
//! wire-bound runs, BENCHMARKS.md). Each request is paced on its own.
//!
//! The pacing is a virtual clock: every frame the connection hands over moves the time
//! the body may next be read on by `len / rate`; a frame is passed on only once that
//! time has come, and until then the socket is not read, so the client feels TCP's back
//! pressure, as behind a real link. The frame waiting is the only one held: no extra
//! memory. The clock starts at the first frame and never runs backwards, so `K` bytes
//! take at least `K / rate` from the first byte to the last; after a stall of the
//! client it may catch up by at most [`CATCH_UP`], so timer lateness (a sleep wakes
//! a little late) does not slow the link below its rate.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// How far behind its clock a paced body may fall before the clock is moved up to now.
const CATCH_UP: Duration = Duration::from_millis(20);

/// The request with its body paced at `bytes_per_sec` (0: unchanged).
pub(crate) fn throttle_request(request: Request, bytes_per_sec: u64) -> Request {
    if bytes_per_sec == 0 {
        return request;
    }
    request.map(|body| Body::new(Throttled::new(body, bytes_per_sec)))
}

/// A body read at most `bytes_per_sec` bytes a second.
pub(crate) struct Throttled {
    inner: Body,
    bytes_per_sec: u64,
    /// When the bytes read so far have been paid for; `None` before the first frame.
    paid_until: Option<Instant>,
    /// The frame read from the connection, passed on once `sleep` is over.
    held: Option<Frame<Bytes>>,
    sleep: Pin<Box<Sleep>>,
}

impl Throttled {
    pub(crate) fn new(inner: Body, bytes_per_sec: u64) -> Self {
        Self {
            inner,
            bytes_per_sec: bytes_per_sec.max(1),
            paid_until: None,
            held: None,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Moves the clock on by `len` bytes; returns when they may be passed on.
    fn pay(&mut self, len: usize) -> Instant {
        let now = Instant::now();
        let from = match self.paid_until {
            None => now,
            Some(until) => until.max(now.checked_sub(CATCH_UP).unwrap_or(now)),
        };
        let until = from + Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
        self.paid_until = Some(until);
        until
    }
}

impl HttpBody for Throttled {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.held.is_some() {
            ready!(this.sleep.as_mut().poll(cx));
            return Poll::Ready(this.held.take().map(Ok));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let len = frame.data_ref().map_or(0, Bytes::len);
        if len == 0 {
            return Poll::Ready(Some(Ok(frame)));
        }
        let at = this.pay(len);
        if at <= Instant::now() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.sleep.as_mut().reset(at);
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => {
                this.held = Some(frame);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let held = self
            .held
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |data| data.len() as u64);
        if held > 0 {
            let upper = hint.upper().map(|upper| upper + held);
            hint.set_lower(hint.lower() + held);
            if let Some(upper) = upper {
                hint.set_upper(upper);
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use futures_util::{StreamExt, stream};
    use reqwest::multipart::{Form, Part};

    use super::*;
    use crate::emulator::{Emulator, EmulatorConfig, Faults};

    const LEN: usize = 200 * 1024;
    const RATE: u64 = 1_000_000;

    /// `LEN` bytes at `RATE` may not arrive in less than `LEN / RATE`.
    fn least_time() -> Duration {
        Duration::from_secs_f64(LEN as f64 / RATE as f64)
    }

    #[tokio::test]
    async fn a_body_takes_at_least_its_length_over_the_rate() {
        let frames = (0..LEN / 8192).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![7u8; 8192])));
        let body = Body::from_stream(stream::iter(frames));
        let started = StdInstant::now();
        let mut stream = Body::new(Throttled::new(body, RATE)).into_data_stream();
        let mut read = 0;
        while let Some(frame) = stream.next().await {
            read += frame.expect("a frame").len();
        }
        assert_eq!(read, LEN);
        assert!(started.elapsed() >= least_time(), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_whole_body_in_one_frame_is_held_back_too() {
        let body = Body::from(vec![7u8; LEN]);
        let started = StdInstant::now();
        let bytes = axum::body::to_bytes(Body::new(Throttled::new(body, RATE)), usize::MAX)
            .await
            .expect("the body");
        assert_eq!(bytes.len(), LEN);
        assert!(started.elapsed() >= least_time(), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn the_emulator_reads_uploads_and_chunks_at_the_slow_rate() {
        let emu = Emulator::start(EmulatorConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            multipart_chunk_size: LEN as u64,
            faults: Faults {
                slow_bytes_per_sec: RATE,
                ..Faults::default()
            },
            ..EmulatorConfig::default()
        })
        .await
        .expect("the emulator");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let key = EmulatorConfig::default().api_key;

        let mut file = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
        file.resize(LEN, 1);
        let form = Form::new()
            .text("method", "direct")
            .part("file", Part::bytes(file).file_name("clip.mp4"));
        let started = StdInstant::now();
        let answer = client
            .post(format!("{}/assets", emu.base_url()))
            .header("x-api-key", &key)
            .multipart(form)
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 201);
        assert!(started.elapsed() >= least_time(), "{:?}", started.elapsed());

        let session: serde_json::Value = client
            .post(format!("{}/assets/multipart-uploads", emu.base_url()))
            .header("x-api-key", &key)
            .json(&serde_json::json!({"filename": "big.mp4", "type": "video", "total_size": LEN}))
            .send()
            .await
            .expect("an answer")
            .json()
            .await
            .expect("JSON");
        let url = session["upload_urls"][0]["url"]
            .as_str()
            .expect("a chunk URL");
        let started = StdInstant::now();
        let answer = client
            .put(url)
            .body(vec![2u8; LEN])
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 200);
        assert!(started.elapsed() >= least_time(), "{:?}", started.elapsed());
        let first_byte = emu.stats().first_chunk_byte_ms_by_upload;
        assert_eq!(first_byte.len(), 1, "{first_byte:?}");
    }
}
