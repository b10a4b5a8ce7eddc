//! Reading a client's frames within the listener's limits. Unlike a plain frame decoder, this
//! reads the size prefix first and checks it against the limit in force (smaller before SASL
//! authentication where `listener.sasl_required`), then reserves the frame's bytes in the
//! proxy-wide buffer budget before reading the body: a client cannot make the proxy allocate
//! what it is not allowed, and when the budget is spent the proxy stops reading. Once a frame's
//! first byte has arrived, the rest must follow within `listener.frame_timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::super::buffer_budget::{BufferBudget, Held};
use crate::kafka::frame::SIZE_PREFIX;

/// Read buffer to start with; grown to a frame's size once its prefix says how big it is.
const INITIAL_BUFFER: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientFrameError {
    #[error("frame of {size} bytes exceeds {key} ({max})")]
    TooLarge {
        size: usize,
        max: usize,
        key: &'static str,
    },
    #[error("negative frame size {0}")]
    NegativeSize(i32),
    #[error("frame not complete {} ms after its first byte (listener.frame_timeout_ms)", .0.as_millis())]
    Timeout(Duration),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ClientFrameError {
    /// The `connections_refused_total` reason when a limit cut the connection.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            ClientFrameError::TooLarge { .. } => Some("frame_too_large"),
            ClientFrameError::Timeout(_) => Some("frame_timeout"),
            _ => None,
        }
    }
}

/// The frame size limit in force for the next frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimit {
    pub max: usize,
    pub key: &'static str,
}

pub enum ClientEvent {
    /// A whole frame, size prefix included, and its bytes held in the budget.
    Frame(Bytes, Held),
    /// No byte for `idle` while between frames.
    Idle,
    Closed,
}

pub struct ClientFrames<R> {
    reader: R,
    buffer: BytesMut,
    budget: Arc<BufferBudget>,
    frame_timeout: Duration,
    /// When the first byte of the frame being read arrived.
    started: Option<Instant>,
    /// The frame being read has its bytes reserved.
    reserved: Option<Held>,
}

impl<R: AsyncRead + Unpin> ClientFrames<R> {
    pub fn new(reader: R, budget: Arc<BufferBudget>, frame_timeout: Duration) -> Self {
        ClientFrames {
            reader,
            buffer: BytesMut::with_capacity(INITIAL_BUFFER),
            budget,
            frame_timeout,
            started: None,
            reserved: None,
        }
    }

    /// The next frame, within the limit in force when its size prefix is read. Cancel-safe: a
    /// partial frame and its reservation are kept for the next call.
    pub async fn next(
        &mut self,
        limit: impl Fn() -> FrameLimit,
        idle: Duration,
    ) -> Result<ClientEvent, ClientFrameError> {
        loop {
            if self.buffer.len() >= SIZE_PREFIX {
                let declared = (&self.buffer[..SIZE_PREFIX]).get_i32();
                let size = usize::try_from(declared)
                    .map_err(|_| ClientFrameError::NegativeSize(declared))?;
                let limit = limit();
                if size > limit.max {
                    return Err(ClientFrameError::TooLarge {
                        size,
                        max: limit.max,
                        key: limit.key,
                    });
                }
                let total = SIZE_PREFIX + size;
                if self.reserved.is_none() {
                    let waited_from = Instant::now();
                    self.reserved = Some(self.budget.reserve(total).await);
                    // The proxy's own wait is not the client's slowness.
                    if let Some(started) = &mut self.started {
                        *started += waited_from.elapsed();
                    }
                }
                if self.buffer.len() >= total {
                    let frame = self.buffer.split_to(total).freeze();
                    let held = self.reserved.take().expect("reserved above");
                    self.started = (!self.buffer.is_empty()).then(Instant::now);
                    return Ok(ClientEvent::Frame(frame, held));
                }
                self.buffer.reserve(total - self.buffer.len());
            }
            let deadline = match self.started {
                Some(started) => started + self.frame_timeout,
                None => Instant::now() + idle,
            };
            match tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.buffer)).await {
                Err(_) if self.started.is_some() => {
                    return Err(ClientFrameError::Timeout(self.frame_timeout))
                }
                Err(_) => return Ok(ClientEvent::Idle),
                Ok(Ok(0)) if self.buffer.is_empty() => return Ok(ClientEvent::Closed),
                Ok(Ok(0)) => return Err(ClientFrameError::Truncated),
                Ok(Ok(_)) => {
                    self.started.get_or_insert_with(Instant::now);
                }
                // A reset between frames is how many clients close: not an error.
                Ok(Err(e))
                    if self.buffer.is_empty()
                        && e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Ok(ClientEvent::Closed)
                }
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::IntGauge;
    use tokio::io::AsyncWriteExt;

    const LIMIT: FrameLimit = FrameLimit {
        max: 1024,
        key: "listener.max_frame_bytes",
    };
    const IDLE: Duration = Duration::from_secs(600);

    fn frames(
        frame_timeout: Duration,
    ) -> (
        ClientFrames<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (client, proxy) = tokio::io::duplex(64 * 1024);
        let budget = BufferBudget::new(1 << 20, IntGauge::new("t", "t").unwrap());
        (ClientFrames::new(proxy, budget, frame_timeout), client)
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as i32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_frame_is_cut_off_at_the_deadline() {
        let (mut frames, mut client) = frames(Duration::from_secs(30));
        client.write_all(&frame(b"whole")).await.unwrap();
        client.write_all(&frame(b"half of it")[..7]).await.unwrap();
        let started = Instant::now();
        assert!(matches!(
            frames.next(|| LIMIT, IDLE).await,
            Ok(ClientEvent::Frame(f, _)) if &f[4..] == b"whole"
        ));
        let err = frames.next(|| LIMIT, IDLE).await.err().unwrap();
        assert!(matches!(err, ClientFrameError::Timeout(_)), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_frame_still_gets_its_deadline_and_idle_is_not_a_timeout() {
        let (mut frames, mut client) = frames(Duration::from_secs(30));
        assert!(matches!(
            frames.next(|| LIMIT, Duration::from_secs(5)).await,
            Ok(ClientEvent::Idle)
        ));
        let bytes = frame(&[7u8; 100]);
        let writer = tokio::spawn(async move {
            // One byte a second: every read makes progress, yet the frame takes 104 s.
            for b in bytes {
                client.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            client
        });
        let err = frames.next(|| LIMIT, IDLE).await.err().unwrap();
        assert!(matches!(err, ClientFrameError::Timeout(_)), "{err}");
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_prefix_is_refused_before_the_body_arrives() {
        let (mut frames, mut client) = frames(Duration::from_secs(30));
        client
            .write_all(&(100 * 1024 * 1024i32).to_be_bytes())
            .await
            .unwrap();
        let unauthenticated = || FrameLimit {
            max: 512 * 1024,
            key: "listener.max_unauthenticated_frame_bytes",
        };
        let err = frames.next(unauthenticated, IDLE).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "frame of 104857600 bytes exceeds listener.max_unauthenticated_frame_bytes (524288)"
        );
        assert!(frames.buffer.capacity() < 1024 * 1024, "nothing reserved");
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_is_read_when_the_prefix_arrives_not_when_waiting_starts() {
        let (mut frames, mut client) = frames(Duration::from_secs(30));
        let authenticated = std::sync::atomic::AtomicBool::new(false);
        let limit = || {
            if authenticated.load(std::sync::atomic::Ordering::Acquire) {
                FrameLimit {
                    max: 4096,
                    key: "listener.max_frame_bytes",
                }
            } else {
                LIMIT
            }
        };
        let read = frames.next(limit, IDLE);
        tokio::pin!(read);
        assert!(futures::poll!(&mut read).is_pending());
        authenticated.store(true, std::sync::atomic::Ordering::Release);
        client.write_all(&frame(&[1u8; 2048])).await.unwrap();
        assert!(matches!(read.await, Ok(ClientEvent::Frame(f, _)) if f.len() == 2052));
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_between_frames_is_clean_and_inside_one_is_truncation() {
        let (mut frames, client) = frames(Duration::from_secs(30));
        drop(client);
        assert!(matches!(
            frames.next(|| LIMIT, IDLE).await,
            Ok(ClientEvent::Closed)
        ));
        let (mut frames, mut client) = self::frames(Duration::from_secs(30));
        client.write_all(&frame(b"abc")[..5]).await.unwrap();
        drop(client);
        assert!(matches!(
            frames.next(|| LIMIT, IDLE).await,
            Err(ClientFrameError::Truncated)
        ));
    }
}
