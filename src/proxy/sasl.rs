//! SASL as the proxy sees it on one connection: which client frames are bare SASL tokens, and
//! when the broker has authenticated the client.
//!
//! The proxy never reads a mechanism's bytes; it only counts rounds. A mechanism is complete
//! after a known number of successful rounds: one for PLAIN, OAUTHBEARER and AWS_MSK_IAM, two
//! for SCRAM (its first round succeeds without the password). A round is a SaslAuthenticate
//! answered with error code 0, or, after SaslHandshake v0, a bare token the broker answered
//! (with v0 the broker reports a failure only by closing the connection).

use crate::kafka::header::{response_body_offset, HeaderError};
use kafka_protocol::messages::ApiKey;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("SaslHandshake request: mechanism truncated")]
    MechanismTruncated,
    #[error("SaslHandshake request: mechanism is not valid UTF-8")]
    MechanismNotUtf8,
    #[error(
        "SaslHandshake v0 with mechanism {0}: the proxy cannot tell where its bare tokens end; \
         the client must use SaslHandshake v1"
    )]
    UnknownTokenRounds(String),
    #[error("{api:?} response: {reason}")]
    Response { api: ApiKey, reason: HeaderError },
}

/// A SASL mechanism, as far as the proxy needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram,
    OAuthBearer,
    AwsMskIam,
    /// GSSAPI or anything newer: how many rounds it takes is not known.
    Other,
}

impl Mechanism {
    pub fn from_name(name: &str) -> Mechanism {
        match name {
            "PLAIN" => Mechanism::Plain,
            "SCRAM-SHA-256" | "SCRAM-SHA-512" => Mechanism::Scram,
            "OAUTHBEARER" => Mechanism::OAuthBearer,
            "AWS_MSK_IAM" => Mechanism::AwsMskIam,
            _ => Mechanism::Other,
        }
    }

    /// Successful rounds after which the broker has authenticated the client.
    pub fn rounds(self) -> Option<u8> {
        match self {
            Mechanism::Plain | Mechanism::OAuthBearer | Mechanism::AwsMskIam => Some(1),
            Mechanism::Scram => Some(2),
            Mechanism::Other => None,
        }
    }
}

/// The mechanism a SaslHandshake request (v0 or v1: the same non-flexible body) names.
pub fn handshake_mechanism(body: &[u8]) -> Result<&str, SaslError> {
    let len = body.get(..2).ok_or(SaslError::MechanismTruncated)?;
    let len = i16::from_be_bytes([len[0], len[1]]);
    let name = usize::try_from(len)
        .ok()
        .and_then(|len| body.get(2..2 + len))
        .ok_or(SaslError::MechanismTruncated)?;
    std::str::from_utf8(name).map_err(|_| SaslError::MechanismNotUtf8)
}

/// The error code that opens the body of a SaslHandshake or SaslAuthenticate response frame.
pub fn response_error_code(frame: &[u8], api: ApiKey, version: i16) -> Result<i16, SaslError> {
    let failed = |reason| SaslError::Response { api, reason };
    let offset = response_body_offset(frame, api, version).map_err(failed)?;
    let code = frame
        .get(offset..offset + 2)
        .ok_or(failed(HeaderError::Truncated("error_code")))?;
    Ok(i16::from_be_bytes([code[0], code[1]]))
}

/// Where a connection stands with SASL. Shared by the request loop, which sees what the
/// client sends, and the response loop, which sees what the broker answers; the response loop
/// updates it before the client hears the answer, so the client's next request sees it.
#[derive(Debug, Default)]
pub struct SaslSession {
    /// Whether the client ever sent SaslHandshake. Without one, Kafka's own verdicts decide
    /// (a SASL listener closes the connection of a client that skips authentication).
    started: bool,
    authenticated: bool,
    /// The exchange in progress, from SaslHandshake until it completes or fails.
    exchange: Option<Exchange>,
}

#[derive(Debug, Clone, Copy)]
struct Exchange {
    mechanism: Mechanism,
    successes: u8,
}

impl SaslSession {
    /// The client sent SaslHandshake with `body`. For v0, how many bare tokens follow if the
    /// broker takes the mechanism.
    pub fn handshake_request(
        &mut self,
        version: i16,
        body: &[u8],
    ) -> Result<Option<u8>, SaslError> {
        let name = handshake_mechanism(body)?;
        let mechanism = Mechanism::from_name(name);
        let tokens = match (version, mechanism.rounds()) {
            (0, None) => return Err(SaslError::UnknownTokenRounds(name.to_owned())),
            (0, rounds) => rounds,
            _ => None,
        };
        self.handshake_sent(mechanism);
        Ok(tokens)
    }

    /// The broker answered SaslHandshake with `frame`: whether it took the mechanism.
    pub fn handshake_response(&mut self, frame: &[u8], version: i16) -> Result<bool, SaslError> {
        let code = response_error_code(frame, ApiKey::SaslHandshake, version)?;
        self.handshake_answered(code);
        Ok(code == 0)
    }

    /// The broker answered SaslAuthenticate with `frame`.
    pub fn authenticate_response(&mut self, frame: &[u8], version: i16) -> Result<(), SaslError> {
        match response_error_code(frame, ApiKey::SaslAuthenticate, version)? {
            0 => self.round_succeeded(),
            _ => self.round_failed(),
        }
        Ok(())
    }

    /// The client sent SaslHandshake naming `mechanism` (again, for a re-authentication).
    pub fn handshake_sent(&mut self, mechanism: Mechanism) {
        self.started = true;
        self.exchange = Some(Exchange {
            mechanism,
            successes: 0,
        });
    }

    /// The broker answered SaslHandshake; anything but 0 refuses the mechanism.
    pub fn handshake_answered(&mut self, error_code: i16) {
        if error_code != 0 {
            self.exchange = None;
        }
    }

    /// The broker accepted a round: a SaslAuthenticate answered with error code 0, or a bare
    /// token answered after SaslHandshake v0.
    pub fn round_succeeded(&mut self) {
        let Some(exchange) = &mut self.exchange else {
            return;
        };
        exchange.successes = exchange.successes.saturating_add(1);
        if exchange
            .mechanism
            .rounds()
            .is_some_and(|rounds| exchange.successes >= rounds)
        {
            self.authenticated = true;
            self.exchange = None;
        }
    }

    /// The broker refused a round; it closes the connection next.
    pub fn round_failed(&mut self) {
        self.authenticated = false;
        self.exchange = None;
    }

    /// The client sent a request that is not SASL. For a mechanism whose rounds are unknown,
    /// a client that moves on after a successful round considers itself authenticated; were it
    /// not, Kafka closes the connection before answering, and nothing unanswered is mirrored.
    pub fn other_request_sent(&mut self) {
        if let Some(exchange) = self.exchange {
            if exchange.mechanism.rounds().is_none() && exchange.successes > 0 {
                self.authenticated = true;
                self.exchange = None;
            }
        }
    }

    /// Whether records sent now may be mirrored: the connection never started SASL, or it
    /// has authenticated.
    pub fn may_mirror(&self) -> bool {
        !self.started || self.authenticated
    }

    /// Whether the connection has completed SASL authentication.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether the proxy may slip a request of its own onto the connection: not while an
    /// exchange is in progress, where Kafka accepts only the exchange's next request.
    pub fn may_interject(&self) -> bool {
        self.exchange.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_and_their_rounds() {
        for (name, rounds) in [
            ("PLAIN", Some(1)),
            ("OAUTHBEARER", Some(1)),
            ("AWS_MSK_IAM", Some(1)),
            ("SCRAM-SHA-256", Some(2)),
            ("SCRAM-SHA-512", Some(2)),
            ("GSSAPI", None),
        ] {
            assert_eq!(Mechanism::from_name(name).rounds(), rounds, "{name}");
        }
    }

    #[test]
    fn no_sasl_mirrors_and_interjects() {
        let s = SaslSession::default();
        assert!(s.may_mirror());
        assert!(s.may_interject());
    }

    #[test]
    fn plain_is_complete_after_one_successful_round() {
        let mut s = SaslSession::default();
        s.handshake_sent(Mechanism::Plain);
        assert!(!s.may_mirror() && !s.may_interject());
        s.handshake_answered(0);
        assert!(!s.may_mirror());
        s.round_succeeded();
        assert!(s.may_mirror() && s.may_interject());
    }

    #[test]
    fn scram_is_complete_only_after_the_second_round() {
        let mut s = SaslSession::default();
        s.handshake_sent(Mechanism::Scram);
        s.handshake_answered(0);
        s.round_succeeded();
        assert!(
            !s.may_mirror(),
            "SCRAM's first round succeeds without the password"
        );
        s.round_succeeded();
        assert!(s.may_mirror());
    }

    #[test]
    fn refused_handshake_or_round_never_authenticates() {
        let mut s = SaslSession::default();
        s.handshake_sent(Mechanism::Plain);
        s.handshake_answered(33);
        s.round_succeeded();
        assert!(!s.may_mirror());

        let mut s = SaslSession::default();
        s.handshake_sent(Mechanism::Scram);
        s.handshake_answered(0);
        s.round_succeeded();
        s.round_failed();
        s.round_succeeded();
        assert!(!s.may_mirror());
    }

    #[test]
    fn reauthentication_keeps_mirroring_but_blocks_interjections() {
        let mut s = SaslSession::default();
        s.handshake_sent(Mechanism::Plain);
        s.handshake_answered(0);
        s.round_succeeded();
        s.handshake_sent(Mechanism::Plain);
        assert!(s.may_mirror());
        assert!(!s.may_interject());
        s.handshake_answered(0);
        s.round_succeeded();
        assert!(s.may_interject());
        s.handshake_sent(Mechanism::Plain);
        s.handshake_answered(0);
        s.round_failed();
        assert!(!s.may_mirror());
    }

    #[test]
    fn unknown_mechanism_completes_when_the_client_moves_on_after_a_success() {
        let mut s = SaslSession::default();
        s.handshake_sent(Mechanism::Other);
        s.handshake_answered(0);
        s.other_request_sent();
        assert!(!s.may_mirror(), "no round succeeded yet");
        s.round_succeeded();
        s.round_succeeded();
        assert!(!s.may_mirror());
        s.other_request_sent();
        assert!(s.may_mirror() && s.may_interject());
    }

    #[test]
    fn handshake_requests_and_answers() {
        let mut s = SaslSession::default();
        assert_eq!(s.handshake_request(0, b"\0\x0dSCRAM-SHA-512"), Ok(Some(2)));
        assert!(!s.may_interject());
        let refused = [0, 0, 0, 6, 0, 0, 0, 1, 0, 33];
        assert_eq!(s.handshake_response(&refused, 0), Ok(false));
        assert!(s.may_interject());
        assert_eq!(s.handshake_request(1, b"\0\x06GSSAPI"), Ok(None));
        assert_eq!(
            s.handshake_request(0, b"\0\x06GSSAPI"),
            Err(SaslError::UnknownTokenRounds("GSSAPI".into()))
        );
        assert_eq!(s.handshake_request(1, b"\0\x05PLAIN"), Ok(None));
        let accepted = [0, 0, 0, 6, 0, 0, 0, 1, 0, 0];
        assert_eq!(s.handshake_response(&accepted, 1), Ok(true));
        let authenticated = [0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0];
        s.authenticate_response(&authenticated, 2).unwrap();
        assert!(s.may_mirror());
    }

    #[test]
    fn parses_mechanism_and_error_codes() {
        assert_eq!(handshake_mechanism(b"\0\x05PLAINrest").unwrap(), "PLAIN");
        assert_eq!(
            handshake_mechanism(b"\0\x09PLAIN"),
            Err(SaslError::MechanismTruncated)
        );
        assert_eq!(
            handshake_mechanism(b"\xff\xffX"),
            Err(SaslError::MechanismTruncated)
        );
        assert_eq!(
            handshake_mechanism(b"\0"),
            Err(SaslError::MechanismTruncated)
        );
        assert_eq!(
            handshake_mechanism(b"\0\x01\xff"),
            Err(SaslError::MechanismNotUtf8)
        );
        // SaslHandshake v1: header v0 (correlation id only), then the error code.
        let handshake = [0, 0, 0, 8, 0, 0, 0, 7, 0, 33, 0, 0];
        assert_eq!(
            response_error_code(&handshake, ApiKey::SaslHandshake, 1).unwrap(),
            33
        );
        // SaslAuthenticate v2 is flexible: header v1 has tagged fields before the body.
        let authenticate = [0, 0, 0, 7, 0, 0, 0, 7, 0, 0, 58];
        assert_eq!(
            response_error_code(&authenticate, ApiKey::SaslAuthenticate, 2).unwrap(),
            58
        );
        assert!(response_error_code(&authenticate[..9], ApiKey::SaslAuthenticate, 2).is_err());
    }
}
