//! The AWS client and the stream facts the writer depends on.

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kinesis::types::Shard;
use aws_sdk_kinesis::Client;
use std::time::Duration;

use super::shard_map::{ShardMap, ShardMapError};
use crate::config::KinesisConfig;

/// Kinesis' default per-record limit (data plus partition key) when the stream does not say.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream `{stream}`: {operation} failed: {code}: {message}")]
    Api {
        stream: String,
        operation: &'static str,
        code: String,
        message: String,
    },
    #[error("stream `{stream}`: {source}")]
    ShardMap {
        stream: String,
        source: ShardMapError,
    },
}

impl StreamError {
    /// The AWS error code, when the failure came from the API.
    pub fn code(&self) -> Option<&str> {
        match self {
            StreamError::Api { code, .. } => Some(code),
            StreamError::ShardMap { .. } => None,
        }
    }

    pub(crate) fn api<E: ProvideErrorMetadata + std::error::Error + 'static>(
        stream: &str,
        operation: &'static str,
        err: aws_sdk_kinesis::error::SdkError<E>,
    ) -> StreamError {
        let code = err.code().unwrap_or("NoErrorCode").to_owned();
        StreamError::Api {
            stream: stream.to_owned(),
            operation,
            code,
            message: DisplayErrorContext(&err).to_string(),
        }
    }
}

/// Builds a client from aws-config's default chain (env, profile, SSO, web identity, IMDS),
/// with the region and endpoint from config when set. SDK retries are off: the writer retries
/// itself, so that it can resend only failed entries and count every retry.
pub async fn build_client(config: &KinesisConfig) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let shared = loader.load().await;
    let kinesis_config = aws_sdk_kinesis::config::Builder::from(&shared)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(config.request_timeout)
                .build(),
        )
        .build();
    Client::from_conf(kinesis_config)
}

/// What DescribeStreamSummary says about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub status: String,
    pub open_shards: usize,
    pub max_record_bytes: usize,
}

pub async fn describe(client: &Client, stream: &str) -> Result<StreamInfo, StreamError> {
    let out = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| StreamError::api(stream, "DescribeStreamSummary", e))?;
    let summary = out.stream_description_summary();
    let max_record_bytes = summary
        .and_then(|s| s.max_record_size_in_kib())
        .and_then(|kib| usize::try_from(kib).ok())
        .map_or(DEFAULT_MAX_RECORD_BYTES, |kib| kib * 1024);
    Ok(StreamInfo {
        status: summary
            .map(|s| s.stream_status().as_str().to_owned())
            .unwrap_or_default(),
        open_shards: summary.map_or(0, |s| s.open_shard_count().max(0) as usize),
        max_record_bytes,
    })
}

/// Every shard of `stream` that ListShards still knows, open and closed, across its pages.
pub async fn list_all_shards(client: &Client, stream: &str) -> Result<Vec<Shard>, StreamError> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        // With a NextToken, ListShards refuses a StreamName.
        let request = match &next_token {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let out = request
            .send()
            .await
            .map_err(|e| StreamError::api(stream, "ListShards", e))?;
        shards.extend_from_slice(out.shards());
        match out.next_token() {
            Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
            _ => break,
        }
    }
    Ok(shards)
}

/// The open shards of `stream`. Closed shards (those with an ending sequence number, such as
/// the parent of a split) are left out.
pub async fn load_shard_map(client: &Client, stream: &str) -> Result<ShardMap, StreamError> {
    let shards = list_all_shards(client, stream).await?;
    let open: Vec<(&str, &str, &str)> = shards
        .iter()
        .filter(|shard| {
            shard
                .sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .filter_map(|shard| {
            let range = shard.hash_key_range()?;
            Some((
                shard.shard_id(),
                range.starting_hash_key(),
                range.ending_hash_key(),
            ))
        })
        .collect();
    ShardMap::from_ranges(open).map_err(|source| StreamError::ShardMap {
        stream: stream.to_owned(),
        source,
    })
}
