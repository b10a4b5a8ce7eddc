//! `[kinesis]`: the Kinesis client and the writer's batching, retry and ordering settings.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{invalid, positive, Invalid};

/// Ordering guarantee of the Kinesis writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOrdering {
    /// A key's records reach its shard in Kafka order, even across retries.
    PerKey,
    /// Throughput first: retries may reorder records.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KinesisConfig {
    /// `None`: aws-config's region chain (AWS_REGION, profile, IMDS).
    pub region: Option<String>,
    /// `None`: normal AWS endpoint resolution, including AWS_ENDPOINT_URL_KINESIS.
    pub endpoint_url: Option<String>,
    pub linger: Duration,
    pub max_in_flight_requests: usize,
    pub max_attempts: u32,
    pub shard_map_refresh: Duration,
    /// Per-attempt PutRecords timeout.
    pub request_timeout: Duration,
    pub ordering: WriteOrdering,
    /// Scales each shard's 1,000 records/s and 1 MiB/s token bucket.
    pub shard_rate_factor: f64,
    /// After this long in memory a record leaves the memory queue for the spool.
    pub record_ttl: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKinesis {
    region: Option<Spanned<String>>,
    endpoint_url: Option<Spanned<String>>,
    linger_ms: Option<Spanned<u64>>,
    max_in_flight_requests: Option<Spanned<u64>>,
    max_attempts: Option<Spanned<u64>>,
    shard_map_refresh_secs: Option<Spanned<u64>>,
    request_timeout_ms: Option<Spanned<u64>>,
    ordering: Option<Spanned<String>>,
    shard_rate_factor: Option<Spanned<f64>>,
    record_ttl_secs: Option<Spanned<u64>>,
}

pub(super) fn validate_kinesis(raw: Option<RawKinesis>) -> Result<KinesisConfig, Invalid> {
    let raw = raw.unwrap_or(RawKinesis {
        region: None,
        endpoint_url: None,
        linger_ms: None,
        max_in_flight_requests: None,
        max_attempts: None,
        shard_map_refresh_secs: None,
        request_timeout_ms: None,
        ordering: None,
        shard_rate_factor: None,
        record_ttl_secs: None,
    });
    if let Some(url) = &raw.endpoint_url {
        let u = url.get_ref();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return invalid(
                url.span(),
                format!("kinesis.endpoint_url: `{u}` must start with http:// or https://"),
            );
        }
    }
    if let Some(region) = &raw.region {
        if region.get_ref().trim().is_empty() {
            return invalid(region.span(), "kinesis.region: must not be empty");
        }
    }
    let linger_ms = match &raw.linger_ms {
        None => 50,
        Some(v) => *v.get_ref(),
    };
    let ordering = match &raw.ordering {
        None => WriteOrdering::PerKey,
        Some(o) => match o.get_ref().as_str() {
            "per-key" => WriteOrdering::PerKey,
            "none" => WriteOrdering::None,
            other => {
                return invalid(
                    o.span(),
                    format!("kinesis.ordering: `{other}` is not \"per-key\" or \"none\""),
                )
            }
        },
    };
    let shard_rate_factor = match &raw.shard_rate_factor {
        None => 1.0,
        Some(f) if *f.get_ref() > 0.0 && f.get_ref().is_finite() => *f.get_ref(),
        Some(f) => {
            return invalid(
                f.span(),
                "kinesis.shard_rate_factor: must be greater than 0",
            )
        }
    };
    let record_ttl_secs = positive(raw.record_ttl_secs.as_ref(), 600, "kinesis.record_ttl_secs")?;
    Ok(KinesisConfig {
        region: raw.region.map(Spanned::into_inner),
        endpoint_url: raw.endpoint_url.map(Spanned::into_inner),
        linger: Duration::from_millis(linger_ms),
        max_in_flight_requests: positive(
            raw.max_in_flight_requests.as_ref(),
            16,
            "kinesis.max_in_flight_requests",
        )? as usize,
        max_attempts: positive(raw.max_attempts.as_ref(), 10, "kinesis.max_attempts")?
            .min(u64::from(u32::MAX)) as u32,
        shard_map_refresh: Duration::from_secs(positive(
            raw.shard_map_refresh_secs.as_ref(),
            60,
            "kinesis.shard_map_refresh_secs",
        )?),
        ordering,
        shard_rate_factor,
        record_ttl: Duration::from_secs(record_ttl_secs),
        request_timeout: Duration::from_millis(positive(
            raw.request_timeout_ms.as_ref(),
            30_000,
            "kinesis.request_timeout_ms",
        )?),
    })
}
