//! The AWS clients (one per region and role) and the stream facts the writer depends on.

use aws_config::sts::AssumeRoleProvider;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kinesis::types::Shard;
use aws_sdk_kinesis::Client;
use std::collections::HashMap;
use std::time::Duration;

use super::shard_map::{ShardMap, ShardMapError};
use crate::config::{stream_of_label, KinesisConfig, StreamTarget};

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

/// The region and role a client works with; `None`: `[kinesis].region`, and the default
/// credential chain.
type Scope = (Option<String>, Option<String>);

/// Builds a client from aws-config's default chain (env, profile, SSO, web identity, IMDS), in
/// the scope's region, else `[kinesis].region`; with a role, the credentials of that role,
/// assumed through STS with the default chain's and refreshed before they expire. SDK retries
/// are off: the writer retries itself, so that it can resend only failed entries and count
/// every retry.
async fn build_client(config: &KinesisConfig, (region, role_arn): &Scope) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region.as_ref().or(config.region.as_ref()) {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    // The endpoint is Kinesis' alone: set on the shared config, STS would be sent there too.
    let shared = loader.load().await;
    let mut kinesis_config = aws_sdk_kinesis::config::Builder::from(&shared);
    if let Some(role_arn) = role_arn {
        let mut role = AssumeRoleProvider::builder(role_arn)
            .session_name(ROLE_SESSION_NAME)
            .configure(&shared);
        if let Some(region) = shared.region() {
            role = role.region(region.clone());
        }
        kinesis_config = kinesis_config.credentials_provider(role.build().await);
    }
    if let Some(url) = &config.endpoint_url {
        kinesis_config = kinesis_config.endpoint_url(url);
    }
    let kinesis_config = kinesis_config
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

/// The session name of assumed roles, which CloudTrail shows in the stream's account.
const ROLE_SESSION_NAME: &str = "kafka-kinesis-proxy";

/// One client per region and role, built on first use: the routes that share them share its
/// connections and its role's credentials.
pub struct Clients {
    config: KinesisConfig,
    by_scope: tokio::sync::Mutex<HashMap<Scope, Client>>,
}

impl Clients {
    pub fn new(config: KinesisConfig) -> Clients {
        Clients {
            config,
            by_scope: tokio::sync::Mutex::default(),
        }
    }

    /// Clients whose default scope is served by `client`.
    #[cfg(test)]
    pub(crate) fn serving(config: KinesisConfig, client: Client) -> Clients {
        Clients {
            config,
            by_scope: tokio::sync::Mutex::new(HashMap::from([(Scope::default(), client)])),
        }
    }

    /// The client that reaches `target`.
    pub async fn client(&self, target: &StreamTarget) -> Client {
        self.client_in(scope_of(target)).await
    }

    /// The client that reaches the stream a label names (as spool entries and dead letters
    /// name theirs); a label no target made names a stream of the default scope.
    pub async fn client_for_label(&self, label: &str) -> Client {
        let scope = label
            .parse::<StreamTarget>()
            .map_or_else(|_| Scope::default(), |target| scope_of(&target));
        self.client_in(scope).await
    }

    async fn client_in(&self, scope: Scope) -> Client {
        let mut clients = self.by_scope.lock().await;
        if let Some(client) = clients.get(&scope) {
            return client.clone();
        }
        let client = build_client(&self.config, &scope).await;
        clients.insert(scope, client.clone());
        client
    }
}

fn scope_of(target: &StreamTarget) -> Scope {
    (
        target.region().map(str::to_owned),
        target.role_arn().map(str::to_owned),
    )
}

/// Requests that name their stream, by name or by ARN.
pub(crate) trait NamesStream: Sized {
    fn by_name(self, name: &str) -> Self;
    fn by_arn(self, arn: &str) -> Self;

    /// Names the stream of `label` (a [`StreamTarget`]'s label, or a plain name) the way it
    /// was given: the ARN of a stream named by ARN, which may belong to another account.
    fn stream(self, label: &str) -> Self {
        let stream = stream_of_label(label);
        if stream.starts_with("arn:") {
            self.by_arn(stream)
        } else {
            self.by_name(stream)
        }
    }
}

macro_rules! names_stream {
    ($($builder:ty),*) => {$(
        impl NamesStream for $builder {
            fn by_name(self, name: &str) -> Self {
                self.stream_name(name)
            }
            fn by_arn(self, arn: &str) -> Self {
                self.stream_arn(arn)
            }
        }
    )*};
}

names_stream!(
    aws_sdk_kinesis::operation::put_records::builders::PutRecordsFluentBuilder,
    aws_sdk_kinesis::operation::describe_stream_summary::builders::DescribeStreamSummaryFluentBuilder,
    aws_sdk_kinesis::operation::list_shards::builders::ListShardsFluentBuilder,
    aws_sdk_kinesis::operation::get_shard_iterator::builders::GetShardIteratorFluentBuilder
);

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
        .stream(stream)
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
            None => client.list_shards().stream(stream),
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
