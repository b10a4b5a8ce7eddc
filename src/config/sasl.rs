//! `[kafka.sasl]`: the credentials of the proxy's own Kafka connections (discovery).
//!
//! Clients' SASL passes through untouched; these credentials are only for the connections the
//! proxy opens itself. The password is never in the config file: the config names where it is
//! (`password_env` or `password_file`), and it is read each time a connection authenticates, so
//! a rotated file takes effect without a restart. The password never reaches a log line,
//! `check-config` output or `Debug` output: [`Password`] prints as `<redacted>`.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{invalid, Invalid};

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: PasswordSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// The name Kafka uses in SaslHandshake.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Where the password is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum PasswordSource {
    /// The name of an environment variable.
    Env(String),
    /// A file holding the password; one trailing line break is not part of it.
    File(PathBuf),
}

/// A password, kept out of every `Debug` and `Display`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("kafka.sasl.password_env: environment variable {0} is not set")]
    EnvMissing(String),
    #[error("kafka.sasl.password_env: environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("kafka.sasl.password_file: cannot read {path}: {source}")]
    FileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kafka.sasl.password_file: {0} is empty")]
    FileEmpty(PathBuf),
}

impl PasswordSource {
    pub fn read(&self) -> Result<Password, PasswordError> {
        match self {
            PasswordSource::Env(name) => match std::env::var(name) {
                Ok(value) if value.is_empty() => Err(PasswordError::EnvEmpty(name.clone())),
                Ok(value) => Ok(Password(value)),
                Err(_) => Err(PasswordError::EnvMissing(name.clone())),
            },
            PasswordSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    PasswordError::FileUnreadable {
                        path: path.clone(),
                        source,
                    }
                })?;
                // Editors and `echo` end files with a line break that is not part of the secret.
                let value = text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text);
                if value.is_empty() {
                    return Err(PasswordError::FileEmpty(path.clone()));
                }
                Ok(Password(value.to_owned()))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafkaSasl {
    mechanism: Spanned<String>,
    username: Spanned<String>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    /// Accepted only to refuse it with a message that says where a password goes instead.
    password: Option<Spanned<toml::Value>>,
}

pub(super) fn validate_kafka_sasl(
    raw: RawKafkaSasl,
    table: std::ops::Range<usize>,
) -> Result<KafkaSaslConfig, Invalid> {
    if let Some(inline) = raw.password {
        return invalid(
            inline.span(),
            "kafka.sasl.password: passwords are never written in the config; set kafka.sasl.password_env (an environment variable's name) or kafka.sasl.password_file",
        );
    }
    let mechanism = match raw.mechanism.get_ref().to_ascii_uppercase().as_str() {
        "PLAIN" => SaslMechanism::Plain,
        "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
        "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
        other => {
            return invalid(
                raw.mechanism.span(),
                format!(
                    "kafka.sasl.mechanism: `{other}` is not supported; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                ),
            )
        }
    };
    if raw.username.get_ref().is_empty() {
        return invalid(
            raw.username.span(),
            "kafka.sasl.username: must not be empty",
        );
    }
    let password = match (raw.password_env, raw.password_file) {
        (Some(env), None) => {
            if env.get_ref().trim().is_empty() {
                return invalid(env.span(), "kafka.sasl.password_env: must not be empty");
            }
            PasswordSource::Env(env.into_inner())
        }
        (None, Some(file)) => {
            if file.get_ref().trim().is_empty() {
                return invalid(file.span(), "kafka.sasl.password_file: must not be empty");
            }
            PasswordSource::File(PathBuf::from(file.into_inner()))
        }
        (Some(env), Some(_)) => {
            return invalid(
                env.span(),
                "kafka.sasl: set exactly one of password_env or password_file, not both",
            )
        }
        (None, None) => {
            return invalid(
                table,
                "kafka.sasl: set kafka.sasl.password_env (an environment variable's name) or kafka.sasl.password_file",
            )
        }
    };
    Ok(KafkaSaslConfig {
        mechanism,
        username: raw.username.into_inner(),
        password,
    })
}

/// `check-config`'s lines for `[kafka.sasl]`: where the password comes from, never the password.
impl fmt::Display for KafkaSaslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  sasl mechanism    {}", self.mechanism.name())?;
        writeln!(f, "  sasl username     {}", self.username)?;
        match &self.password {
            PasswordSource::Env(name) => {
                let state = match std::env::var_os(name) {
                    Some(v) if !v.is_empty() => "set",
                    _ => "NOT SET",
                };
                writeln!(f, "  sasl password     from environment {name} ({state})")
            }
            PasswordSource::File(path) => {
                writeln!(f, "  sasl password     from file {}", path.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{parse, BASE};

    #[test]
    fn scram_with_password_file() {
        let c = parse(&format!(
            "{BASE}[kafka.sasl]\nmechanism = \"scram-sha-512\"\nusername = \"proxy\"\npassword_file = \"/run/secrets/kafka\"\n"
        ))
        .unwrap();
        let sasl = c.kafka.unwrap().sasl.unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(sasl.username, "proxy");
        assert_eq!(
            sasl.password,
            PasswordSource::File(PathBuf::from("/run/secrets/kafka"))
        );
    }

    #[test]
    fn inline_password_is_refused_without_echoing_it() {
        let err = parse(&format!(
            "{BASE}[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"proxy\"\npassword = \"hunter2\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("kafka.sasl.password_env"), "{err}");
        assert!(err.contains("proxy.toml:7"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn exactly_one_password_source() {
        let both = parse(&format!(
            "{BASE}[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword_env = \"P\"\npassword_file = \"/p\"\n"
        ))
        .unwrap_err();
        assert!(both.contains("exactly one"), "{both}");
        let neither = parse(&format!(
            "{BASE}[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\n"
        ))
        .unwrap_err();
        assert!(neither.contains("kafka.sasl.password_env"), "{neither}");
    }

    #[test]
    fn unknown_mechanism_names_the_supported_ones() {
        let err = parse(&format!(
            "{BASE}[kafka.sasl]\nmechanism = \"GSSAPI\"\nusername = \"u\"\npassword_env = \"P\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("kafka.sasl.mechanism"), "{err}");
        assert!(err.contains("SCRAM-SHA-512"), "{err}");
    }

    #[test]
    fn password_file_loses_one_trailing_line_break_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let password = PasswordSource::File(file).read().unwrap();
        assert_eq!(password.expose(), "s3cret");
        assert_eq!(format!("{password:?}"), "<redacted>");
    }

    #[test]
    fn check_config_names_the_source_not_the_password() {
        let c = parse(&format!(
            "{BASE}[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword_env = \"KKP_TEST_UNSET_PASSWORD\"\n"
        ))
        .unwrap();
        let text = c.to_string();
        assert!(
            text.contains("from environment KKP_TEST_UNSET_PASSWORD (NOT SET)"),
            "{text}"
        );
    }
}
