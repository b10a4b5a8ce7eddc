//! Codecs and bounded decompression: output is charged to the decode's [`DecodeBudget`] as it
//! is produced, and a buffer never grows past what the budget still allows, so a small batch
//! that inflates to gigabytes stops at the limit instead of allocating its inflated size.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use bytes::Bytes;

use super::{DecodeBudget, RecordsError, Result, Spending};

/// xerial snappy-java stream magic (followed by version i32 and min-compatible-version i32).
pub(super) const XERIAL_MAGIC: [u8; 8] = *b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
/// LZ4 frame magic number, little endian.
const LZ4_FRAME_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];
/// Bytes asked of a streaming decoder at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Compression codec of a batch (or legacy wrapper message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    pub(super) const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    /// The codec's id in the attributes field (0 = none .. 4 = zstd).
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    /// Lower-case name as Kafka spells it in `compression.type`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    /// The codec for an attributes id, if `magic` allows it (zstd needs magic 2).
    pub(super) fn from_id(id: u8, magic: i8) -> Result<Codec, RecordsError> {
        let codec = match id {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 if magic >= 2 => Codec::Zstd,
            _ => return Err(RecordsError::UnknownCodec { id, magic }),
        };
        Ok(codec)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Codec`]s (bit set). Displays as e.g. `gzip,lz4`; empty displays as `""`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CodecSet(u8);

impl CodecSet {
    pub fn insert(&mut self, codec: Codec) {
        self.0 |= 1 << codec.id();
    }

    pub fn contains(&self, codec: Codec) -> bool {
        self.0 & (1 << codec.id()) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Codecs in the set, in id order.
    pub fn iter(&self) -> impl Iterator<Item = Codec> + '_ {
        Codec::ALL.into_iter().filter(|c| self.contains(*c))
    }
}

impl FromIterator<Codec> for CodecSet {
    fn from_iter<T: IntoIterator<Item = Codec>>(iter: T) -> Self {
        let mut set = CodecSet::default();
        for codec in iter {
            set.insert(codec);
        }
        set
    }
}

impl fmt::Debug for CodecSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for CodecSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, codec) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(codec.name())?;
        }
        Ok(())
    }
}

fn decompression_error(codec: Codec, reason: impl fmt::Display) -> RecordsError {
    RecordsError::Decompression {
        codec,
        reason: reason.to_string(),
    }
}

/// `data` decompressed with `codec`, charged to `budget`. `magic` matters for lz4 only.
pub(super) fn decompress(
    codec: Codec,
    data: &Bytes,
    magic: i8,
    budget: &DecodeBudget,
) -> Result<Bytes> {
    let out = match codec {
        Codec::None => return Ok(data.clone()),
        Codec::Gzip => read_bounded(codec, flate2::read::MultiGzDecoder::new(&data[..]), budget)?,
        Codec::Snappy => snappy_decompress(data, budget)?,
        Codec::Lz4 => lz4_decompress(data, magic, budget)?,
        Codec::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(&data[..])
                .map_err(|e| decompression_error(codec, e))?;
            read_bounded(codec, decoder, budget)?
        }
    };
    Ok(Bytes::from(out))
}

/// Reads `reader` to its end, charging every byte to `budget` before keeping it.
fn read_bounded(codec: Codec, mut reader: impl Read, budget: &DecodeBudget) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(decompression_error(codec, e)),
        };
        budget.charge(Spending::Decompressed(codec), n)?;
        reserve_within(&mut out, n, budget);
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Makes room for `additional` bytes already charged to `budget`: doubling, so growth stays
/// linear, but never reserving more than the budget has left.
fn reserve_within(out: &mut Vec<u8>, additional: usize, budget: &DecodeBudget) {
    let needed = out.len() + additional;
    if out.capacity() >= needed {
        return;
    }
    let target = (out.capacity() * 2).clamp(needed, needed + budget.remaining());
    out.reserve_exact(target - out.len());
}

/// Snappy as Kafka writes it: the xerial snappy-java stream format (Java clients, legacy and
/// v2) or a single raw snappy block (librdkafka v2). Concatenated xerial streams are accepted.
fn snappy_decompress(data: &[u8], budget: &DecodeBudget) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if !data.starts_with(&XERIAL_MAGIC) {
        raw_snappy_append(data, &mut out, budget)?;
        return Ok(out);
    }
    let mut rest = data;
    while !rest.is_empty() {
        if rest.starts_with(&XERIAL_MAGIC) {
            // Header: magic, version i32, min compatible version i32.
            if rest.len() < XERIAL_HEADER_LEN {
                return Err(decompression_error(
                    Codec::Snappy,
                    "truncated xerial stream header",
                ));
            }
            rest = &rest[XERIAL_HEADER_LEN..];
            continue;
        }
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(decompression_error(
                Codec::Snappy,
                "truncated xerial block length",
            ));
        };
        let len = i32::from_be_bytes(*len);
        let block = usize::try_from(len)
            .ok()
            .and_then(|len| tail.get(..len))
            .ok_or_else(|| {
                decompression_error(
                    Codec::Snappy,
                    format!(
                        "xerial block length {len} invalid with {} bytes left",
                        tail.len()
                    ),
                )
            })?;
        raw_snappy_append(block, &mut out, budget)?;
        rest = &tail[block.len()..];
    }
    Ok(out)
}

fn raw_snappy_append(block: &[u8], out: &mut Vec<u8>, budget: &DecodeBudget) -> Result<()> {
    let len =
        snap::raw::decompress_len(block).map_err(|e| decompression_error(Codec::Snappy, e))?;
    // Charge the claimed length before allocating for it.
    budget.charge(Spending::Decompressed(Codec::Snappy), len)?;
    reserve_within(out, len, budget);
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| decompression_error(Codec::Snappy, e))?;
    out.truncate(start + written);
    Ok(())
}

/// LZ4 frame format. Magic 0 messages were written with a wrong frame header checksum
/// (KAFKA-3160: computed over the magic number too), so for magic 0 the checksum is recomputed
/// before decoding instead of trusted.
fn lz4_decompress(data: &[u8], magic: i8, budget: &DecodeBudget) -> Result<Vec<u8>> {
    let input = if magic == 0 {
        fix_lz4_header_checksum(data)
    } else {
        Cow::Borrowed(data)
    };
    let mut decoder =
        lz4::Decoder::new(&input[..]).map_err(|e| decompression_error(Codec::Lz4, e))?;
    let out = read_bounded(Codec::Lz4, &mut decoder, budget)?;
    // The decoder reports a frame cut short as a clean end of stream; `finish` tells them apart.
    let (_, finished) = decoder.finish();
    finished.map_err(|_| decompression_error(Codec::Lz4, "truncated LZ4 frame"))?;
    Ok(out)
}

/// Replace the LZ4 frame descriptor checksum (HC) with the correct one, if the data looks like
/// an LZ4 frame and the checksum differs.
pub(super) fn fix_lz4_header_checksum(data: &[u8]) -> Cow<'_, [u8]> {
    if data.len() < 7 || data[..4] != LZ4_FRAME_MAGIC {
        return Cow::Borrowed(data);
    }
    let flags = data[4];
    let mut hc_pos = 6; // magic(4) FLG BD
    if flags & 0x08 != 0 {
        hc_pos += 8; // content size
    }
    if flags & 0x01 != 0 {
        hc_pos += 4; // dictionary id
    }
    let Some(&stored) = data.get(hc_pos) else {
        return Cow::Borrowed(data);
    };
    let correct = lz4_header_checksum(&data[4..hc_pos]);
    if stored == correct {
        return Cow::Borrowed(data);
    }
    let mut fixed = data.to_vec();
    fixed[hc_pos] = correct;
    Cow::Owned(fixed)
}

/// LZ4 frame header checksum: second byte of xxh32(descriptor, seed 0).
pub(super) fn lz4_header_checksum(descriptor: &[u8]) -> u8 {
    (xxhash_rust::xxh32::xxh32(descriptor, 0) >> 8) as u8
}
