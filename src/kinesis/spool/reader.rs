//! Reading entries back for replay, without removing them.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use super::entry::{decode_payload, MAX_PAYLOAD_BYTES, MIN_PAYLOAD_BYTES};
use super::segment_log::{parse_header, FRAME_HEADER_BYTES};
use super::{io_err, Cursor, Inner, Spool, SpoolEntry, SpoolError, SpoolPosition};

impl Spool {
    /// Reads up to `max` entries from the replay cursor (the first unacknowledged entry), in
    /// append order, without removing them: calling it again returns the same entries until
    /// they are acknowledged.
    pub fn peek(&self, max: usize) -> Result<Vec<(SpoolPosition, SpoolEntry)>, SpoolError> {
        let inner = self.lock();
        let from = inner.ack;
        self.read_from(&inner, from, max)
    }

    /// Reads up to `max` unacknowledged entries after `after` (for pipelining replay: peek the
    /// next batch while the previous one is in flight).
    pub fn peek_after(
        &self,
        after: SpoolPosition,
        max: usize,
    ) -> Result<Vec<(SpoolPosition, SpoolEntry)>, SpoolError> {
        let inner = self.lock();
        let from = after.end().max(inner.ack);
        self.read_from(&inner, from, max)
    }

    fn read_from(
        &self,
        inner: &Inner,
        from: Cursor,
        max: usize,
    ) -> Result<Vec<(SpoolPosition, SpoolEntry)>, SpoolError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        for (&seq, &len) in inner.segments.range(from.segment..) {
            let mut offset = if seq == from.segment { from.offset } else { 0 };
            if offset >= len {
                continue;
            }
            let path = self.segment_files.segment_path(seq);
            let mut file = File::open(&path).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
            let mut reader = BufReader::with_capacity(256 * 1024, file.take(len - offset));
            while offset < len && out.len() < max {
                let corrupt = |reason: String| SpoolError::Corrupt {
                    path: path.clone(),
                    offset,
                    reason,
                };
                let mut header = [0u8; FRAME_HEADER_BYTES as usize];
                read_exact_or(&mut reader, &mut header, &path, offset)?;
                let (plen, crc) = parse_header(&header);
                if !(MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES).contains(&plen)
                    || u64::from(plen) > len - offset - FRAME_HEADER_BYTES
                {
                    return Err(corrupt(format!("bad record length {plen}")));
                }
                let mut payload = vec![0u8; plen as usize];
                read_exact_or(&mut reader, &mut payload, &path, offset)?;
                if crc32c::crc32c(&payload) != crc {
                    return Err(corrupt("CRC mismatch".into()));
                }
                let (entry, _) = decode_payload(&Bytes::from(payload)).map_err(corrupt)?;
                let frame_len = FRAME_HEADER_BYTES + u64::from(plen);
                out.push((
                    SpoolPosition {
                        segment: seq,
                        offset,
                        frame_len,
                    },
                    entry,
                ));
                offset += frame_len;
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

fn read_exact_or(
    reader: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    offset: u64,
) -> Result<(), SpoolError> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SpoolError::Corrupt {
                path: path.to_owned(),
                offset,
                reason: "segment shorter than recorded".into(),
            }
        } else {
            io_err(path)(e)
        }
    })
}
