//! The records a writer gives up on: dropped (only with `when_full = "drop"`), over the
//! stream's per-record limit, or refused by Kinesis for good. Each is logged, counted, and
//! (but the dropped) written to the dead-letter file, to be re-sent with `spool replay` once
//! the operator has fixed the cause.

use std::time::{Instant, SystemTime};

use super::dead_letter::DeadLetter;
use super::lanes::Queued;
use super::request::MirrorRecord;
use super::spill::spool_entry;
use super::writer::WriterTask;
use crate::telemetry::metrics::MirrorResult;

impl WriterTask {
    pub(super) fn drop_record(&self, record: &MirrorRecord) {
        tracing::warn!(
            stream = %self.state.stream, topic = %record.topic, partition = record.partition, offset = record.offset,
            "mirror buffer full: record dropped (mirror_buffer.when_full = \"drop\")"
        );
        self.count(&record.topic, MirrorResult::Dropped, 1);
    }

    pub(super) async fn oversize(&mut self, record: MirrorRecord, size: usize) {
        tracing::warn!(
            topic = %record.topic, partition = record.partition, offset = record.offset, stream = %self.state.stream,
            bytes = size, limit = self.max_record_bytes,
            "record exceeds the stream's per-record limit (data plus partition key); not mirrored, written to the dead-letter file"
        );
        self.count(&record.topic, MirrorResult::Oversize, 1);
        let message = format!("record of {size} bytes exceeds the stream's limit of {} bytes (data plus partition key)", self.max_record_bytes);
        self.write_dead_letters(vec![(record, "RecordTooLarge".to_owned(), message)], false)
            .await;
    }

    pub(super) async fn dead_letter_queued(&mut self, dead: Vec<(Queued, String, String)>) {
        let mut letters = Vec::new();
        for (queued, code, message) in dead {
            self.finished_with(&queued);
            letters.push((queued.record, code, message));
        }
        self.write_dead_letters(letters, true).await;
    }

    async fn write_dead_letters(
        &mut self,
        letters: Vec<(MirrorRecord, String, String)>,
        count: bool,
    ) {
        let now = SystemTime::now();
        for (record, code, message) in &letters {
            tracing::error!(
                stream = %self.state.stream, topic = %record.topic, partition = record.partition, offset = record.offset,
                code = %code, %message, "record cannot be delivered; written to the dead-letter file"
            );
        }
        if let Some(file) = self.settings.dead_letters.clone() {
            let entries: Vec<DeadLetter> = letters
                .iter()
                .map(|(record, code, message)| {
                    DeadLetter::from_entry(
                        &spool_entry(&self.state.stream, record),
                        code,
                        message,
                        now,
                    )
                })
                .collect();
            let written = tokio::task::spawn_blocking(move || file.append(&entries))
                .await
                .expect("dead-letter task");
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot write the dead-letter file; the records above are only in this log");
            }
        }
        // Counted once the file holds them, so that an operator (or a test) who sees the
        // count can read the letters.
        if count {
            for (record, _, _) in &letters {
                self.count(&record.topic, MirrorResult::DeadLetter, 1);
            }
        }
    }

    /// A stream that is missing, or that we may not write to, will not accept records by
    /// retrying: they go to the dead-letter file, to be re-sent with `spool replay` once the
    /// operator has fixed the cause.
    pub(super) async fn dead_letter_if_undeliverable(&mut self) {
        let Some(code) = self.state.permanent_error() else {
            return;
        };
        let message = self.state.last_error().unwrap_or_default();
        let mut dead: Vec<(Queued, String, String)> = self
            .lanes
            .drain_queued()
            .into_iter()
            .map(|q| (q, code.clone(), message.clone()))
            .collect();
        let now = Instant::now();
        for record in self.held.drain(..) {
            self.settings
                .budget
                .force_reserve(record.memory_bytes() as u64);
            dead.push((Queued::new(record, now), code.clone(), message.clone()));
        }
        if !dead.is_empty() {
            self.dead_letter_queued(dead).await;
        }
    }
}
