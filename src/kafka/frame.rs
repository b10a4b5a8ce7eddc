//! Length-prefixed Kafka frames.
//!
//! A frame is yielded whole, 4-byte size prefix included, as a `Bytes` split off the read
//! buffer: forwarding it unchanged is then a single write with no copy.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Size of the length prefix that starts every frame.
pub const SIZE_PREFIX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {max} bytes (listener.max_frame_bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("negative frame size {0}")]
    NegativeSize(i32),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into frames no larger than `max_frame_bytes` (not counting the prefix).
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_bytes: usize,
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameCodec { max_frame_bytes }
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < SIZE_PREFIX {
            return Ok(None);
        }
        let declared = (&src[..SIZE_PREFIX]).get_i32();
        let size = usize::try_from(declared).map_err(|_| FrameError::NegativeSize(declared))?;
        // Checked before reserving, so a hostile size prefix allocates nothing.
        if size > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                size,
                max: self.max_frame_bytes,
            });
        }
        let total = SIZE_PREFIX + size;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        Ok(Some(src.split_to(total).freeze()))
    }
}

/// Prepends the size prefix to an encoded message. `encoded` must start with
/// `SIZE_PREFIX` placeholder bytes.
pub fn seal(mut encoded: BytesMut) -> Bytes {
    let size = (encoded.len() - SIZE_PREFIX) as i32;
    encoded[..SIZE_PREFIX].copy_from_slice(&size.to_be_bytes());
    encoded.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut FrameCodec, input: &[u8]) -> Result<Vec<Bytes>, FrameError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn yields_whole_frames_including_prefix() {
        let mut codec = FrameCodec::new(1024);
        let input = [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c', 0, 0];
        let frames = decode_all(&mut codec, &input).unwrap();
        assert_eq!(
            frames,
            vec![
                Bytes::from_static(&[0, 0, 0, 2, b'a', b'b']),
                Bytes::from_static(&[0, 0, 0, 1, b'c'])
            ]
        );
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= 7);
        buf.extend_from_slice(&[2, 3]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 7);
    }

    #[test]
    fn oversized_frame_is_rejected_before_allocation() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        let capacity = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                size: 2147483647,
                max: 1024
            }
        ));
        assert_eq!(
            buf.capacity(),
            capacity,
            "nothing reserved for a rejected frame"
        );
        let err = decode_all(&mut codec, &[0xff, 0xff, 0xff, 0xfe]).unwrap_err();
        assert!(matches!(err, FrameError::NegativeSize(-2)));
    }

    #[test]
    fn seal_writes_the_size() {
        let mut b = BytesMut::from(&[0u8; 4][..]);
        b.extend_from_slice(b"xyz");
        assert_eq!(&seal(b)[..], &[0, 0, 0, 3, b'x', b'y', b'z']);
    }
}
