//! How the writer tells whoever keeps a copy of a record (the mirror's write-ahead log) that
//! it no longer needs it: Kinesis stored it, the spool holds it, the dead-letter file holds it,
//! or `when_full = "drop"` dropped it. A record whose handle is dropped without being settled
//! (its writer stopped at a shutdown deadline, or the process is ending) is still owed, and
//! the keeper delivers it again after a restart.

/// A record's handle in the log that keeps it.
pub trait Settle: Send + Sync + std::fmt::Debug {
    /// The writer is done with the record for good.
    fn settled(&self);

    /// When the record may already be in Kinesis, since a time: it was read again from the
    /// log after a crash, and may have been sent before it (stored there, but not yet settled).
    /// The writer reads the stream back from then before it first sends it. Answered once:
    /// `None` afterwards, and for records never sent before.
    fn maybe_stored_since(&self) -> Option<std::time::SystemTime> {
        None
    }
}
