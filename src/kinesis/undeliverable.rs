//! The records a writer gives up on: dropped (only with `when_full = "drop"`), over the
//! stream's per-record limit, or refused by Kinesis for good (a record-level error, found by
//! bisecting). Each is logged, counted, and (but the dropped) written to the dead-letter file,
//! to be re-sent with `spool replay` once the operator has fixed the cause. Stream-level
//! refusals are not given up on: see `refusal.rs`.
//!
//! When the dead-letter file cannot take letters (its space is full, or a disk error), they
//! wait in memory, still holding their budget (and a replayed record its place in the spool),
//! and the writer takes no new input until they are written: the stream blocks rather than
//! drops.

use std::time::{Instant, SystemTime};

use super::dead_letter::DeadLetter;
use super::lanes::Queued;
use super::request::MirrorRecord;
use super::spill::spool_entry;
use super::writer::WriterTask;
use crate::telemetry::metrics::MirrorResult;

/// A record given up on, and why, until the dead-letter file holds it.
pub(super) struct Letter {
    queued: Queued,
    code: String,
    message: String,
    /// Found over the size limit on arrival: counted as `oversize` then, and never budgeted.
    /// The others come from a lane: counted as `dead_letter`, and released, once written.
    oversize: bool,
}

impl WriterTask {
    pub(super) fn drop_record(&self, record: &MirrorRecord) {
        tracing::warn!(
            stream = %self.state.stream, topic = %record.topic, partition = record.partition, offset = record.offset,
            "mirror buffer full: record dropped (mirror_buffer.when_full = \"drop\")"
        );
        self.count(&record.topic, MirrorResult::Dropped, 1);
        record.settled();
    }

    pub(super) async fn oversize(&mut self, record: MirrorRecord, size: usize) {
        tracing::warn!(
            topic = %record.topic, partition = record.partition, offset = record.offset, stream = %self.state.stream,
            bytes = size, limit = self.max_record_bytes,
            "record exceeds the stream's per-record limit (data plus partition key); not mirrored, written to the dead-letter file"
        );
        self.count(&record.topic, MirrorResult::Oversize, 1);
        let message = format!("record of {size} bytes exceeds the stream's limit of {} bytes (data plus partition key)", self.max_record_bytes);
        self.letters_waiting.push_back(Letter {
            queued: Queued::new(record, Instant::now()),
            code: "RecordTooLarge".to_owned(),
            message,
            oversize: true,
        });
        self.write_waiting_letters().await;
    }

    pub(super) async fn dead_letter_queued(&mut self, dead: Vec<(Queued, String, String)>) {
        for (queued, code, message) in dead {
            self.letters_waiting.push_back(Letter {
                queued,
                code,
                message,
                oversize: false,
            });
        }
        self.write_waiting_letters().await;
    }

    /// Writes the waiting letters to the dead-letter file; they keep waiting if it cannot
    /// take them. Past the shutdown deadline, letters that still wait go to the spool, to be
    /// refused again (and dead-lettered) by the next run rather than lost.
    pub(super) async fn write_waiting_letters(&mut self) {
        if self.letters_waiting.is_empty() {
            return;
        }
        let written = match self.settings.dead_letters.clone() {
            Some(file) => {
                let now = SystemTime::now();
                let entries: Vec<DeadLetter> = self
                    .letters_waiting
                    .iter()
                    .map(|l| {
                        let entry = spool_entry(&self.state.stream, &l.queued.record);
                        DeadLetter::from_entry(&entry, &l.code, &l.message, now)
                    })
                    .collect();
                tokio::task::spawn_blocking(move || file.append(&entries))
                    .await
                    .expect("dead-letter task")
            }
            // No file configured (no spool dir): the log is all there is.
            None => Ok(()),
        };
        let waiting = self
            .metrics
            .dead_letters_waiting
            .with_label_values(&[&self.state.stream]);
        if let Err(e) = written {
            if waiting.get() == 0 {
                tracing::error!(
                    stream = %self.state.stream, error = %e, letters = self.letters_waiting.len(),
                    "cannot write the dead-letter file: the stream takes no new records until it can"
                );
            }
            waiting.set(self.letters_waiting.len() as i64);
            if self
                .closing
                .as_ref()
                .is_some_and(|c| Instant::now() >= c.deadline)
            {
                self.spool_waiting_letters().await;
            }
            return;
        }
        if waiting.get() > 0 {
            tracing::info!(stream = %self.state.stream, "the dead-letter file takes letters again");
            waiting.set(0);
        }
        for letter in std::mem::take(&mut self.letters_waiting) {
            let record = &letter.queued.record;
            tracing::error!(
                stream = %self.state.stream, topic = %record.topic, partition = record.partition, offset = record.offset,
                code = %letter.code, message = %letter.message, "record cannot be delivered; written to the dead-letter file"
            );
            record.settled();
            // Counted and released once the file holds them, so that an operator (or a
            // test) who sees the count can read the letters.
            if !letter.oversize {
                self.finished_with(&letter.queued);
                self.count(&record.topic, MirrorResult::DeadLetter, 1);
            }
        }
    }

    /// Shutdown with the dead-letter file full: letters from memory go to the spool; those
    /// replayed from it are there still.
    async fn spool_waiting_letters(&mut self) {
        let mut records = Vec::new();
        for letter in std::mem::take(&mut self.letters_waiting) {
            if !letter.oversize {
                self.finished_with(&letter.queued);
            }
            if letter.queued.from_spool.is_none() {
                records.push(letter.queued.record);
            }
        }
        self.metrics
            .dead_letters_waiting
            .with_label_values(&[&self.state.stream])
            .set(0);
        self.spill(records).await;
    }
}
