//! Record data as raw bytes: v2 batches and legacy message sets, straight into `summarize` and
//! `decode_batches` (with a 1 MiB decompression budget). CRCs make random mutations stop early,
//! so `record_codecs` builds valid batches around fuzzer bytes to reach the code behind them.
//!
//! Invariants: no panic; `kkp_fuzz::check_records`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kkp_fuzz::check_records(&Bytes::copy_from_slice(data));
});
