//! Where a route's records go: a Kinesis stream, by name or by ARN, in a region, reached with
//! the default credentials or those of an assumed role.
//!
//! A target's label (its `Display`) names it completely: `STREAM[ in REGION][ as ROLE_ARN]`,
//! where STREAM is the name or ARN the route gives and the region is shown only when the
//! stream is named by name (an ARN says its region). Metrics, logs, spool entries and dead
//! letters call the stream by its label, and `FromStr` reads it back, so that spools and dead
//! letters left by any route can be delivered to the same stream with the same credentials.
//! Names, ARNs and regions hold no space, so the label parses without ambiguity.

use std::fmt;

use md5::{Digest, Md5};

/// A Kinesis stream and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamTarget {
    /// The stream's name, or its ARN.
    stream: String,
    /// The route's region, else the ARN's; `None`: `[kinesis].region` (or aws-config's chain).
    region: Option<String>,
    /// The IAM role assumed to reach the stream; `None`: the default credential chain.
    role_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}` is not a Kinesis stream name (1-128 of a-z A-Z 0-9 _ . -) or stream ARN")]
    NotAStreamName(String),
    #[error("`{0}` is not a Kinesis stream ARN (arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME, ACCOUNT 12 digits)")]
    NotAStreamArn(String),
    #[error("`{0}` is not an AWS region (such as us-east-1)")]
    NotARegion(String),
    #[error("`{0}` is not an IAM role ARN (arn:PARTITION:iam::ACCOUNT:role/NAME)")]
    NotARoleArn(String),
    #[error("`{region}` conflicts with the stream ARN's region `{arn_region}`; the ARN decides the region, so leave `region` out or make it the same")]
    RegionConflict { region: String, arn_region: String },
}

/// The words between the parts of a label.
const IN: &str = " in ";
const AS: &str = " as ";

impl StreamTarget {
    /// A stream named by name (or ARN), in the default region, with the default credentials.
    pub fn new(
        stream: &str,
        region: Option<&str>,
        role_arn: Option<&str>,
    ) -> Result<StreamTarget, TargetError> {
        let arn_region = if stream.starts_with("arn:") {
            Some(parse_stream_arn(stream)?.region)
        } else if is_stream_name(stream) {
            None
        } else {
            return Err(TargetError::NotAStreamName(stream.to_owned()));
        };
        if let Some(region) = region.filter(|r| !is_region(r)) {
            return Err(TargetError::NotARegion(region.to_owned()));
        }
        if let Some(role) = role_arn.filter(|r| !is_role_arn(r)) {
            return Err(TargetError::NotARoleArn(role.to_owned()));
        }
        let region = match (region, arn_region) {
            (Some(region), Some(arn_region)) if region != arn_region => {
                return Err(TargetError::RegionConflict {
                    region: region.to_owned(),
                    arn_region: arn_region.to_owned(),
                })
            }
            (region, arn_region) => region.or(arn_region),
        };
        Ok(StreamTarget {
            stream: stream.to_owned(),
            region: region.map(str::to_owned),
            role_arn: role_arn.map(str::to_owned),
        })
    }

    /// The stream as Kinesis requests name it: its name, or its ARN.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The stream's ARN, when the route named it by ARN.
    pub fn arn(&self) -> Option<&str> {
        self.stream
            .starts_with("arn:")
            .then_some(self.stream.as_str())
    }

    /// The stream's name (the last part of its ARN).
    pub fn name(&self) -> &str {
        self.stream
            .rsplit_once(":stream/")
            .map_or(self.stream.as_str(), |(_, name)| name)
    }

    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    pub fn role_arn(&self) -> Option<&str> {
        self.role_arn.as_deref()
    }

    /// The stream's directory under `spool.dir`: its name when the default region and
    /// credentials reach it (as before routes could say otherwise), else its name and a digest
    /// of its label, since two accounts or regions may each have a stream of that name.
    pub fn spool_dir_name(&self) -> String {
        if self.region.is_none() && self.role_arn.is_none() {
            return self.stream.clone();
        }
        let digest = hex::encode(Md5::digest(self.to_string().as_bytes()));
        // '@' is in no stream name, so no plain stream's directory can look like this.
        format!("{}@{}", self.name(), &digest[..16])
    }
}

impl fmt::Display for StreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.stream)?;
        if let (Some(region), None) = (&self.region, self.arn()) {
            write!(f, "{IN}{region}")?;
        }
        if let Some(role) = &self.role_arn {
            write!(f, "{AS}{role}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for StreamTarget {
    type Err = TargetError;

    /// Reads a label back.
    fn from_str(label: &str) -> Result<StreamTarget, TargetError> {
        let (rest, role_arn) = match label.split_once(AS) {
            Some((rest, role)) => (rest, Some(role)),
            None => (label, None),
        };
        let (stream, region) = match rest.split_once(IN) {
            Some((stream, region)) => (stream, Some(region)),
            None => (rest, None),
        };
        StreamTarget::new(stream, region, role_arn)
    }
}

/// The address a label names: the stream's name or ARN, what Kinesis requests carry.
pub fn stream_of_label(label: &str) -> &str {
    label.split_once(' ').map_or(label, |(stream, _)| stream)
}

/// The spool directory of the stream `label` names (see [`StreamTarget::spool_dir_name`]).
/// A label no target made (a bare name in a test, say) is a directory name itself.
pub fn spool_dir_of_label(label: &str) -> String {
    label
        .parse::<StreamTarget>()
        .map_or_else(|_| label.to_owned(), |target| target.spool_dir_name())
}

fn is_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_region(region: &str) -> bool {
    (1..=32).contains(&region.len())
        && region.starts_with(|c: char| c.is_ascii_lowercase())
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_partition(partition: &str) -> bool {
    !partition.is_empty()
        && partition
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '-')
}

fn is_account(account: &str) -> bool {
    account.len() == 12 && account.chars().all(|c| c.is_ascii_digit())
}

struct StreamArn<'a> {
    region: &'a str,
}

fn parse_stream_arn(arn: &str) -> Result<StreamArn<'_>, TargetError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "kinesis", region, account, resource]
            if is_partition(partition)
                && is_region(region)
                && is_account(account)
                && resource.strip_prefix("stream/").is_some_and(is_stream_name) =>
        {
            Ok(StreamArn { region })
        }
        _ => Err(TargetError::NotAStreamArn(arn.to_owned())),
    }
}

/// IAM's shape of a role ARN: a path and name of printable characters, no spaces.
fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "iam", "", account, resource] => {
            is_partition(partition)
                && is_account(account)
                && arn.len() <= 2048
                && resource.strip_prefix("role/").is_some_and(|name| {
                    !name.is_empty()
                        && !name.ends_with('/')
                        && name.chars().all(|c| c.is_ascii_graphic())
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders";
    const ROLE: &str = "arn:aws:iam::210987654321:role/mirror/kinesis-writer";

    #[test]
    fn an_arn_names_its_region_and_its_stream() {
        let target = StreamTarget::new(ARN, None, None).unwrap();
        assert_eq!(target.region(), Some("eu-west-1"));
        assert_eq!((target.name(), target.arn()), ("orders", Some(ARN)));
        assert_eq!(
            StreamTarget::new(ARN, Some("eu-west-1"), None).unwrap(),
            target
        );
        assert_eq!(
            StreamTarget::new(ARN, Some("us-east-1"), None),
            Err(TargetError::RegionConflict {
                region: "us-east-1".into(),
                arn_region: "eu-west-1".into()
            })
        );
    }

    #[test]
    fn malformed_parts_are_refused() {
        for arn in [
            "arn:aws:kinesis:eu-west-1:12345:stream/orders",
            "arn:aws:kinesis:eu-west-1:123456789012:orders",
            "arn:aws:sqs:eu-west-1:123456789012:stream/orders",
            "arn:aws:kinesis::123456789012:stream/orders",
            "arn:aws:kinesis:eu-west-1:123456789012:stream/bad name",
        ] {
            assert_eq!(
                StreamTarget::new(arn, None, None),
                Err(TargetError::NotAStreamArn(arn.into())),
                "{arn}"
            );
        }
        assert!(matches!(
            StreamTarget::new("arn:b", None, None),
            Err(TargetError::NotAStreamArn(_))
        ));
        assert!(matches!(
            StreamTarget::new("a:b", None, None),
            Err(TargetError::NotAStreamName(_))
        ));
        assert!(matches!(
            StreamTarget::new("bad name", None, None),
            Err(TargetError::NotAStreamName(_))
        ));
        assert!(matches!(
            StreamTarget::new("s", Some("EU West"), None),
            Err(TargetError::NotARegion(_))
        ));
        for role in [
            "arn:aws:iam::123456789012:user/alice",
            "arn:aws:iam::12:role/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:sts::123456789012:role/x",
            "arn:aws:iam::123456789012:role/has space",
        ] {
            assert_eq!(
                StreamTarget::new("s", None, Some(role)),
                Err(TargetError::NotARoleArn(role.into())),
                "{role}"
            );
        }
    }

    #[test]
    fn labels_read_back_and_name_the_requests_stream() {
        let targets = [
            StreamTarget::new("orders", None, None).unwrap(),
            StreamTarget::new("orders", Some("us-west-2"), None).unwrap(),
            StreamTarget::new("orders", Some("us-west-2"), Some(ROLE)).unwrap(),
            StreamTarget::new("orders", None, Some(ROLE)).unwrap(),
            StreamTarget::new(ARN, None, None).unwrap(),
            StreamTarget::new(ARN, None, Some(ROLE)).unwrap(),
        ];
        let labels: Vec<String> = targets.iter().map(ToString::to_string).collect();
        assert_eq!(
            labels,
            [
                "orders".to_owned(),
                "orders in us-west-2".into(),
                format!("orders in us-west-2 as {ROLE}"),
                format!("orders as {ROLE}"),
                ARN.into(),
                format!("{ARN} as {ROLE}"),
            ]
        );
        for (target, label) in targets.iter().zip(&labels) {
            assert_eq!(&label.parse::<StreamTarget>().unwrap(), target);
            assert_eq!(stream_of_label(label), target.stream());
        }
    }

    #[test]
    fn spool_directories_tell_same_named_streams_apart() {
        let plain = StreamTarget::new("orders", None, None).unwrap();
        assert_eq!(
            plain.spool_dir_name(),
            "orders",
            "the directory of old spools"
        );
        let dirs: std::collections::HashSet<String> = [
            plain,
            StreamTarget::new("orders", Some("us-west-2"), None).unwrap(),
            StreamTarget::new("orders", None, Some(ROLE)).unwrap(),
            StreamTarget::new(ARN, None, None).unwrap(),
            StreamTarget::new(&ARN.replace("123456789012", "123456789013"), None, None).unwrap(),
        ]
        .iter()
        .map(StreamTarget::spool_dir_name)
        .collect();
        assert_eq!(dirs.len(), 5, "{dirs:?}");
        for dir in dirs {
            assert!(!dir.contains(['/', ':', ' ']), "{dir}");
            assert!(dir.starts_with("orders"), "{dir}");
        }
    }
}
