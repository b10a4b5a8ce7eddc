//! Big-endian reader over a `Bytes`, handing out zero-copy slices.

use bytes::{Buf, Bytes};

use super::{RecordsError, Result};

pub(super) struct Cursor {
    buf: Bytes,
}

impl Cursor {
    pub(super) fn new(buf: Bytes) -> Self {
        Cursor { buf }
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn rest(&self) -> &[u8] {
        &self.buf
    }

    pub(super) fn into_rest(self) -> Bytes {
        self.buf
    }

    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        if n > self.buf.len() {
            return Err(RecordsError::Truncated {
                what,
                needed: n,
                remaining: self.buf.len(),
            });
        }
        Ok(self.buf.split_to(n))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let Some(bytes) = self.buf.first_chunk::<N>() else {
            return Err(RecordsError::Truncated {
                what,
                needed: N,
                remaining: self.buf.len(),
            });
        };
        let bytes = *bytes;
        self.buf.advance(N);
        Ok(bytes)
    }

    pub(super) fn i8(&mut self, what: &'static str) -> Result<i8> {
        self.array::<1>(what).map(i8::from_be_bytes)
    }

    pub(super) fn i16(&mut self, what: &'static str) -> Result<i16> {
        self.array(what).map(i16::from_be_bytes)
    }

    pub(super) fn i32(&mut self, what: &'static str) -> Result<i32> {
        self.array(what).map(i32::from_be_bytes)
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub(super) fn i64(&mut self, what: &'static str) -> Result<i64> {
        self.array(what).map(i64::from_be_bytes)
    }

    /// Unsigned LEB128 of at most `max_len` bytes.
    fn uvarint(&mut self, max_len: usize, what: &'static str) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..max_len {
            let Some(&byte) = self.buf.get(i) else {
                return Err(RecordsError::Truncated {
                    what,
                    needed: i + 1,
                    remaining: self.buf.len(),
                });
            };
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf.advance(i + 1);
                return Ok(value);
            }
        }
        Err(RecordsError::BadVarint { what })
    }

    /// Zigzag varint (Kafka `varint`, up to 5 bytes).
    pub(super) fn varint(&mut self, what: &'static str) -> Result<i32> {
        let raw = self.uvarint(5, what)? as u32;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    /// Zigzag varlong (Kafka `varlong`, up to 10 bytes).
    pub(super) fn varlong(&mut self, what: &'static str) -> Result<i64> {
        let raw = self.uvarint(10, what)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn sized_bytes(&mut self, len: i64, what: &'static str) -> Result<Option<Bytes>> {
        match len {
            -1 => Ok(None),
            len if len < -1 => Err(RecordsError::Invalid {
                what,
                reason: format!("negative length {len}"),
            }),
            len => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                self.take(len, what).map(Some)
            }
        }
    }

    /// Varint length (-1 = null) followed by that many bytes.
    pub(super) fn varint_bytes(&mut self, what: &'static str) -> Result<Option<Bytes>> {
        let len = self.varint(what)?;
        self.sized_bytes(i64::from(len), what)
    }

    /// A varint length or count, which must not be negative.
    pub(super) fn varint_len(&mut self, what: &'static str) -> Result<usize> {
        let len = self.varint(what)?;
        usize::try_from(len).map_err(|_| RecordsError::Invalid {
            what,
            reason: format!("negative {len}"),
        })
    }

    /// i32 length (-1 = null) followed by that many bytes.
    pub(super) fn i32_bytes(&mut self, what: &'static str) -> Result<Option<Bytes>> {
        let len = self.i32(what)?;
        self.sized_bytes(i64::from(len), what)
    }
}
