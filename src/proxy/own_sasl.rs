//! SASL for the proxy's own connections, with the credentials of `[kafka.sasl]`:
//! SaslHandshake, then SaslAuthenticate rounds (one for PLAIN, two for SCRAM).
//!
//! Nothing here logs, and no error carries the password or a key derived from it.

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestKind, ResponseKind, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::own_connection::{common_version, OwnConnection, OwnRequestError};
use super::scram::{ScramClient, ScramError, ScramHash};
use crate::config::{KafkaSaslConfig, PasswordError, SaslMechanism};

#[derive(Debug, thiserror::Error)]
pub enum OwnSaslError {
    #[error(transparent)]
    Request(#[from] OwnRequestError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("{server}: the broker does not offer {api:?}, which SASL needs")]
    NoSaslApi { server: String, api: ApiKey },
    #[error("{server}: this listener does not use SASL; remove [kafka.sasl], or point kafka.bootstrap_servers at a SASL listener")]
    ListenerWithoutSasl { server: String },
    #[error("{server}: the broker does not enable {mechanism} (it offers {offered}); set kafka.sasl.mechanism to one of those")]
    MechanismNotOffered {
        server: String,
        mechanism: &'static str,
        offered: String,
    },
    #[error("{server}: authentication as `{username}` with {mechanism} refused: {message} (check kafka.sasl.username and its password)")]
    Refused {
        server: String,
        username: String,
        mechanism: &'static str,
        message: String,
    },
    #[error("{server}: {mechanism} exchange failed: {source}")]
    Scram {
        server: String,
        mechanism: &'static str,
        source: ScramError,
    },
}

/// Authenticates `conn` as `sasl.username`. `versions` is the broker's ApiVersions answer.
pub async fn authenticate(
    conn: &mut OwnConnection,
    versions: &ApiVersionsResponse,
    sasl: &KafkaSaslConfig,
) -> Result<(), OwnSaslError> {
    let server = conn.server().to_owned();
    let no_api = |api| OwnSaslError::NoSaslApi {
        server: server.clone(),
        api,
    };
    // v1+ handshakes carry the tokens in SaslAuthenticate requests, which have Kafka headers.
    let handshake_version = common_version(versions, ApiKey::SaslHandshake)
        .filter(|v| *v >= 1)
        .ok_or_else(|| no_api(ApiKey::SaslHandshake))?;
    let authenticate_version = common_version(versions, ApiKey::SaslAuthenticate)
        .ok_or_else(|| no_api(ApiKey::SaslAuthenticate))?;
    // Read before any byte is sent, so a missing secret is reported as such.
    let password = sasl.password.read()?;
    let mechanism = sasl.mechanism.name();

    let request =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
    let ResponseKind::SaslHandshake(handshake) = conn
        .call(
            ApiKey::SaslHandshake,
            handshake_version,
            RequestKind::SaslHandshake(request),
        )
        .await?
    else {
        unreachable!("decoded as SaslHandshake")
    };
    // ILLEGAL_SASL_STATE: a listener without SASL has authenticated the connection already.
    if handshake.error_code == ResponseError::IllegalSaslState.code() {
        return Err(OwnSaslError::ListenerWithoutSasl { server });
    }
    if handshake.error_code != 0 {
        return Err(OwnSaslError::MechanismNotOffered {
            server,
            mechanism,
            offered: handshake
                .mechanisms
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }

    let mut round = Round {
        conn,
        version: authenticate_version,
        server: &server,
        username: &sasl.username,
        mechanism,
    };
    let scram_failed = |source| OwnSaslError::Scram {
        server: server.clone(),
        mechanism,
        source,
    };
    match sasl.mechanism {
        SaslMechanism::Plain => {
            // RFC 4616: authzid NUL authcid NUL passwd, with an empty authzid.
            let mut token = Vec::new();
            token.push(0);
            token.extend_from_slice(sasl.username.as_bytes());
            token.push(0);
            token.extend_from_slice(password.expose().as_bytes());
            round.send(token).await?;
        }
        SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
            let hash = if sasl.mechanism == SaslMechanism::ScramSha256 {
                ScramHash::Sha256
            } else {
                ScramHash::Sha512
            };
            let client = ScramClient::new(hash, &sasl.username);
            let server_first = round.send(client.client_first().into_bytes()).await?;
            let (client_final, verifier) = client
                .client_final(&server_first, &password)
                .map_err(scram_failed)?;
            let server_final = round.send(client_final.into_bytes()).await?;
            verifier.verify(&server_final).map_err(scram_failed)?;
        }
    }
    Ok(())
}

/// One SaslAuthenticate request and its answer.
struct Round<'a> {
    conn: &'a mut OwnConnection,
    version: i16,
    server: &'a str,
    username: &'a str,
    mechanism: &'static str,
}

impl Round<'_> {
    async fn send(&mut self, token: Vec<u8>) -> Result<Bytes, OwnSaslError> {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
        let ResponseKind::SaslAuthenticate(response) = self
            .conn
            .call(
                ApiKey::SaslAuthenticate,
                self.version,
                RequestKind::SaslAuthenticate(request),
            )
            .await?
        else {
            unreachable!("decoded as SaslAuthenticate")
        };
        if response.error_code != 0 {
            return Err(OwnSaslError::Refused {
                server: self.server.to_owned(),
                username: self.username.to_owned(),
                mechanism: self.mechanism,
                message: response
                    .error_message
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| format!("error code {}", response.error_code)),
            });
        }
        Ok(response.auth_bytes)
    }
}
