//! The client side of SCRAM (RFC 5802, with SHA-256 / SHA-512 as Kafka uses them), for the
//! proxy's own connections. Pure message building and checking; the bytes travel in
//! SaslAuthenticate requests (`own_sasl`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{KeyInit, Mac};
use rand::distr::{Alphanumeric, SampleString};
use sha2::Digest;

use crate::config::Password;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

/// A reply from the server that breaks the exchange. Never holds the password or a key.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("the server's first SCRAM message is malformed: {0}")]
    MalformedServerFirst(&'static str),
    #[error("the server's nonce does not extend ours")]
    NonceMismatch,
    #[error("the server refused the proof: {0}")]
    ServerError(String),
    #[error("the server's final SCRAM message is malformed")]
    MalformedServerFinal,
    #[error("the server's signature is wrong: it does not know this user's credentials")]
    BadServerSignature,
}

/// After `client_first`: waits for the server's first message.
pub struct ScramClient {
    hash: ScramHash,
    client_nonce: String,
    client_first_bare: String,
}

/// After `client_final`: checks the server's signature, which proves the server knows the
/// credentials (mutual authentication).
pub struct ScramVerifier {
    expected_server_signature: Vec<u8>,
}

impl ScramClient {
    pub fn new(hash: ScramHash, username: &str) -> ScramClient {
        // Alphanumeric: printable and free of ',' as the nonce attribute requires.
        let nonce = Alphanumeric.sample_string(&mut rand::rng(), 24);
        ScramClient::with_nonce(hash, username, nonce)
    }

    fn with_nonce(hash: ScramHash, username: &str, client_nonce: String) -> ScramClient {
        let name = username.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            hash,
            client_first_bare: format!("n={name},r={client_nonce}"),
            client_nonce,
        }
    }

    /// `n,,` is the GS2 header: no channel binding, no authorization identity.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    pub fn client_final(
        self,
        server_first: &[u8],
        password: &Password,
    ) -> Result<(String, ScramVerifier), ScramError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::MalformedServerFirst("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attribute in server_first.split(',') {
            match attribute.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("m", _)) => {
                    return Err(ScramError::MalformedServerFirst(
                        "it requires an extension this client does not know",
                    ))
                }
                _ => {}
            }
        }
        let nonce = nonce.ok_or(ScramError::MalformedServerFirst("no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = BASE64
            .decode(salt.ok_or(ScramError::MalformedServerFirst("no salt"))?)
            .map_err(|_| ScramError::MalformedServerFirst("salt is not base64"))?;
        let iterations: u32 = iterations
            .ok_or(ScramError::MalformedServerFirst("no iteration count"))?
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or(ScramError::MalformedServerFirst("bad iteration count"))?;

        let hash = self.hash;
        let salted = salted_password(hash, password.expose().as_bytes(), &salt, iterations);
        let client_key = hmac(hash, &salted, b"Client Key");
        let stored_key = digest(hash, &client_key);
        // "biws" is base64 of the GS2 header "n,,".
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac(hash, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(hash, &salted, b"Server Key");
        let verifier = ScramVerifier {
            expected_server_signature: hmac(hash, &server_key, auth_message.as_bytes()),
        };
        Ok((
            format!("{without_proof},p={}", BASE64.encode(proof)),
            verifier,
        ))
    }
}

impl ScramVerifier {
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::MalformedServerFinal)?;
        for attribute in text.split(',') {
            match attribute.split_once('=') {
                Some(("e", error)) => return Err(ScramError::ServerError(error.to_owned())),
                Some(("v", signature)) => {
                    let signature = BASE64
                        .decode(signature)
                        .map_err(|_| ScramError::MalformedServerFinal)?;
                    return if signature == self.expected_server_signature {
                        Ok(())
                    } else {
                        Err(ScramError::BadServerSignature)
                    };
                }
                _ => {}
            }
        }
        Err(ScramError::MalformedServerFinal)
    }
}

fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha256 => {
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha512 => {
            let mut mac =
                hmac::Hmac::<sha2::Sha512>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

fn digest(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        ScramHash::Sha512 => sha2::Sha512::digest(data).to_vec(),
    }
}

/// RFC 5802's Hi(): PBKDF2 with HMAC as the PRF and one output block, which is all SCRAM needs.
fn salted_password(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut first_input = salt.to_vec();
    first_input.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(hash, password, &first_input);
    let mut result = u.clone();
    for _ in 1..iterations {
        u = hmac(hash, password, &u);
        for (r, x) in result.iter_mut().zip(&u) {
            *r ^= x;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PasswordSource;

    fn password(value: &str) -> Password {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, value).unwrap();
        PasswordSource::File(file).read().unwrap()
    }

    /// RFC 7677, section 3: the SCRAM-SHA-256 example exchange.
    #[test]
    fn rfc7677_sha256_example() {
        let client =
            ScramClient::with_nonce(ScramHash::Sha256, "user", "rOprNGfwEbeRWgbNEkqO".to_owned());
        assert_eq!(client.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, verifier) = client
            .client_final(server_first.as_bytes(), &password("pencil"))
            .unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        verifier
            .verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(matches!(
            verifier.verify(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::BadServerSignature)
        ));
        assert!(matches!(
            verifier.verify(b"e=invalid-proof"),
            Err(ScramError::ServerError(e)) if e == "invalid-proof"
        ));
    }

    #[test]
    fn server_nonce_must_extend_the_client_nonce() {
        let client = ScramClient::with_nonce(ScramHash::Sha512, "u", "abc".to_owned());
        let err = client
            .client_final(b"r=xyz123,s=AAAA,i=4096", &password("p"))
            .err()
            .unwrap();
        assert!(matches!(err, ScramError::NonceMismatch));
    }

    #[test]
    fn usernames_escape_comma_and_equals() {
        let client = ScramClient::with_nonce(ScramHash::Sha512, "a=b,c", "n".to_owned());
        assert_eq!(client.client_first(), "n,,n=a=3Db=2Cc,r=n");
    }
}
