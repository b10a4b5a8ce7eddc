//! The verdict: counts and examples, printed for a person and written as JSON for scripts.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use aws_sdk_kinesis::Client;
use serde::Serialize;

use super::compare::{Comparison, Counts, KafkaEntry, Problem, ProblemExamples};
use super::kafka_read::{self, Reader};
use super::kinesis_read::{self, StreamRead};
use super::{Target, VerifyError, Window};

/// The JSON report; its top-level keys are a documented interface (README, "verify").
#[derive(Debug, Serialize)]
pub struct Report {
    /// Top-level keys of the JSON, as the comparison counted them.
    #[serde(flatten)]
    pub counts: Counts,
    pub examples: Examples,
}

#[derive(Debug, Default, Serialize)]
pub struct Examples {
    pub missing: Vec<Example>,
    pub unexpected: Vec<Example>,
    pub mismatched: Vec<Example>,
    pub duplicates: Vec<Example>,
    pub order_violations: Vec<Example>,
}

/// One record a problem points at; a field is null where that side is unknown (a missing
/// record has no shard, an unexpected one no offset).
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// The Kinesis partition key.
    pub key: Option<String>,
    pub shard_id: Option<String>,
    pub sequence_number: Option<String>,
}

impl Report {
    pub fn discrepancies(&self) -> u64 {
        let c = &self.counts;
        c.missing + c.unexpected + c.mismatched + c.duplicates + c.order_violations
    }

    /// 0 when Kinesis holds exactly what it should, 1 when anything differs.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(u8::from(self.discrepancies() > 0))
    }

    /// The report of `comparison`, with each example's key read back from whichever side
    /// still has it: only the compared digests were kept.
    pub(super) async fn build(
        comparison: Comparison,
        target: &Target,
        kafka: (&Reader, &[KafkaEntry]),
        kinesis: (&Client, &StreamRead),
    ) -> Result<Report, VerifyError> {
        let describe = Describe {
            target,
            kafka,
            kinesis,
        };
        let ProblemExamples {
            missing,
            unexpected,
            mismatched,
            duplicates,
            order_violations,
        } = comparison.examples;
        let examples = Examples {
            missing: describe.all(&missing).await?,
            unexpected: describe.all(&unexpected).await?,
            mismatched: describe.all(&mismatched).await?,
            duplicates: describe.all(&duplicates).await?,
            order_violations: describe.all(&order_violations).await?,
        };
        Ok(Report {
            counts: comparison.counts,
            examples,
        })
    }

    /// The summary printed to stdout.
    pub(super) fn summary(&self, target: &Target, window: &Window) -> String {
        let mut out = format!(
            "verify `{}` -> `{}` at {}% (partition_key = {}), window {}\n",
            target.topic, target.stream, target.percent, target.partition_key, window
        );
        let c = &self.counts;
        let counts = [
            ("kafka records", c.kafka_records),
            ("expected in Kinesis", c.expected),
            ("outside sample", c.outside_sample),
            ("found", c.found),
            ("matched", c.matched),
            ("missing", c.missing),
            ("unexpected", c.unexpected),
            ("mismatched", c.mismatched),
            ("duplicates", c.duplicates),
            ("order violations", c.order_violations),
        ];
        for (name, count) in counts {
            let _ = writeln!(out, "  {name:<20} {count}");
        }
        let lists = [
            ("missing", c.missing, &self.examples.missing),
            ("unexpected", c.unexpected, &self.examples.unexpected),
            ("mismatched", c.mismatched, &self.examples.mismatched),
            ("duplicates", c.duplicates, &self.examples.duplicates),
            (
                "order violations",
                c.order_violations,
                &self.examples.order_violations,
            ),
        ];
        for (name, count, examples) in lists.into_iter().filter(|(_, n, _)| *n > 0) {
            let _ = writeln!(out, "{name} (first {} of {count}):", examples.len());
            for e in examples {
                let _ = writeln!(out, "  {e}");
            }
        }
        let verdict = match self.discrepancies() {
            0 => "OK: the stream holds exactly the expected records".to_owned(),
            n => format!("FAILED: {n} discrepancies"),
        };
        out + &verdict
    }

    pub(super) fn write_json(&self, path: &Path) -> Result<(), VerifyError> {
        let text = serde_json::to_string_pretty(self).expect("a report serializes");
        std::fs::write(path, text + "\n").map_err(|source| VerifyError::WriteReport {
            path: path.to_owned(),
            source,
        })
    }
}

impl std::fmt::Display for Example {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unknown = || "?".to_owned();
        write!(
            f,
            "topic={} partition={} offset={} key={}",
            self.topic,
            self.partition.map_or_else(unknown, |p| p.to_string()),
            self.offset.map_or_else(unknown, |o| o.to_string()),
            self.key
                .as_deref()
                .map_or_else(unknown, |k| format!("{k:?}")),
        )?;
        if let (Some(shard), Some(sequence)) = (&self.shard_id, &self.sequence_number) {
            write!(f, " shard_id={shard} sequence_number={sequence}")?;
        }
        Ok(())
    }
}

/// Turns the compared entries a problem points at back into named records.
struct Describe<'a> {
    target: &'a Target,
    kafka: (&'a Reader, &'a [KafkaEntry]),
    kinesis: (&'a Client, &'a StreamRead),
}

impl Describe<'_> {
    async fn all(&self, problems: &[Problem]) -> Result<Vec<Example>, VerifyError> {
        let mut examples = Vec::with_capacity(problems.len());
        for problem in problems {
            examples.push(self.one(*problem).await?);
        }
        Ok(examples)
    }

    async fn one(&self, problem: Problem) -> Result<Example, VerifyError> {
        let kafka = problem.kafka.map(|i| self.kafka.1[i]);
        let (client, read) = self.kinesis;
        let kinesis = problem.kinesis.map(|i| {
            let entry = &read.records[i];
            (
                read.shard_ids[entry.shard as usize].as_str(),
                entry.sequence,
            )
        });
        // The stream names the key for both sides when it has the record.
        let key = match (kinesis, kafka) {
            (Some((shard, sequence)), _) => {
                kinesis_read::partition_key_at(client, &self.target.stream, shard, sequence).await?
            }
            (None, Some(entry)) => tokio::task::block_in_place(|| {
                kafka_read::partition_key_at(
                    self.kafka.0,
                    self.target,
                    entry.partition,
                    entry.offset,
                )
            })?,
            (None, None) => None,
        };
        Ok(Example {
            topic: self.target.topic.clone(),
            partition: kafka.map(|e| e.partition),
            offset: kafka.map(|e| e.offset),
            key,
            shard_id: kinesis.map(|(shard, _)| shard.to_owned()),
            sequence_number: kinesis.map(|(_, sequence)| sequence.to_string()),
        })
    }
}
