//! Browsers' tokens (PRODUCT.md §6): a JWT signed with the configured HS256 secret or the
//! private half of the configured RS256/ES256 public key, sent in the Socket.IO handshake as
//! `auth: {token}`.
//!
//! Only the configured algorithm is accepted, so that a token cannot pick a weaker one (`none`,
//! or HS256 keyed with the RSA public key). `exp`, `aud` and `sub` are required; `nbf` and `iss`
//! are checked when present (and `iss` required when configured). The `herald` claim's patterns
//! are parsed here, so a token carrying a bad pattern is refused at the handshake rather than
//! failing later at a join.

use std::sync::Once;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{JWT_SECRET_BYTES_MIN, JwtAlgorithm, JwtConfig};
use crate::realtime::BrowserGrants;

/// Tokens longer than this are refused before any parsing: a real one is well under 4 KiB, and
/// signature checks cost time proportional to the length.
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// What a valid token says about the browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The user id: the socket joins `user:<sub>`.
    pub sub: String,
    pub grants: BrowserGrants,
}

/// Why `[realtime.jwt]` cannot be used. Never quotes the secret.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("realtime.jwt.secret is required for HS256")]
    MissingSecret,
    #[error(
        "realtime.jwt.secret has {bytes} bytes, fewer than the {min} HS256 needs (RFC 7518 §3.2)"
    )]
    SecretTooShort { bytes: usize, min: usize },
    #[error("realtime.jwt.public_key_file is required for {algorithm}")]
    MissingPublicKey { algorithm: JwtAlgorithm },
    #[error(
        "realtime.jwt.{field} does not belong with {algorithm} (HS256 takes a secret; RS256 and \
         ES256 take public_key_file)"
    )]
    ExtraKey {
        field: &'static str,
        algorithm: JwtAlgorithm,
    },
    #[error("realtime.jwt.public_key_file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("realtime.jwt.public_key_file {path} is not a PEM {algorithm} public key: {message}")]
    InvalidKey {
        path: String,
        algorithm: JwtAlgorithm,
        message: String,
    },
    #[error("realtime.jwt.audience is empty")]
    EmptyAudience,
}

/// Why a token is refused. Messages go back to the browser in `connect_error`; they say what is
/// wrong without quoting the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token's audience (aud) is not {expected:?}")]
    WrongAudience { expected: String },
    #[error("the token's issuer (iss) is not {expected:?}")]
    WrongIssuer { expected: String },
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token is signed with another algorithm than the {expected} this server takes")]
    WrongAlgorithm { expected: JwtAlgorithm },
    #[error("the token lacks the {0:?} claim")]
    MissingClaim(String),
    #[error("the token's claims are invalid: {0}")]
    InvalidClaims(String),
    #[error("the token is malformed (expected a JWT: three base64url parts separated by dots)")]
    Malformed,
}

/// The `herald` claim: patterns of what the browser may do. Unknown members are ignored, since
/// issuers may add their own.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HeraldClaim {
    rooms: Vec<String>,
    subscribe: Vec<String>,
    publish: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct TokenClaims {
    sub: String,
    #[serde(default)]
    herald: Option<HeraldClaim>,
}

/// Checks tokens against one key. Cheap to share behind the gateway's `Arc`.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    config: JwtConfig,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// jsonwebtoken panics at the first verification unless exactly one crypto backend is chosen;
/// the workspace compiles only `rust_crypto`, and installing it explicitly keeps that true
/// even if feature unification ever brings in a second one.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means one is installed already, which is as good.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    });
}

impl JwtVerifier {
    /// Reads the key (the public key file for RS256/ES256) and fixes the checks.
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, JwtConfigError> {
        install_crypto_provider();
        if config.audience.is_empty() {
            return Err(JwtConfigError::EmptyAudience);
        }
        let algorithm = config.algorithm;
        let key = match algorithm {
            JwtAlgorithm::Hs256 => {
                if config.public_key_file.is_some() {
                    return Err(JwtConfigError::ExtraKey {
                        field: "public_key_file",
                        algorithm,
                    });
                }
                let secret = config
                    .secret
                    .as_deref()
                    .ok_or(JwtConfigError::MissingSecret)?;
                if secret.len() < JWT_SECRET_BYTES_MIN {
                    return Err(JwtConfigError::SecretTooShort {
                        bytes: secret.len(),
                        min: JWT_SECRET_BYTES_MIN,
                    });
                }
                DecodingKey::from_secret(secret.as_bytes())
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                if config.secret.is_some() {
                    return Err(JwtConfigError::ExtraKey {
                        field: "secret",
                        algorithm,
                    });
                }
                let path = config
                    .public_key_file
                    .as_ref()
                    .ok_or(JwtConfigError::MissingPublicKey { algorithm })?;
                let pem = std::fs::read(path).map_err(|source| JwtConfigError::KeyFile {
                    path: path.display().to_string(),
                    source,
                })?;
                let key = if algorithm == JwtAlgorithm::Rs256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                key.map_err(|error| JwtConfigError::InvalidKey {
                    path: path.display().to_string(),
                    algorithm,
                    message: error.to_string(),
                })?
            }
        };
        let mut validation = Validation::new(match algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        });
        validation.leeway = config.leeway.0.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&[config.audience.as_str()]);
        let mut required = vec!["exp", "aud", "sub"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer.as_str()]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtVerifier {
            key,
            validation,
            config: config.clone(),
        })
    }

    /// The token's user and grants, once its signature, algorithm, times and audience check.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(JwtError::TooLong {
                max: TOKEN_BYTES_MAX,
            });
        }
        // A header that does not decode is a malformed token, not bad claims.
        jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let data = jsonwebtoken::decode::<TokenClaims>(token, &self.key, &self.validation)
            .map_err(|error| self.refusal(error.into_kind()))?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(JwtError::InvalidClaims("sub is empty".into()));
        }
        if claims.sub.len() > herald_core::event::USER_ID_BYTES_MAX {
            return Err(JwtError::InvalidClaims(format!(
                "sub is longer than {} bytes",
                herald_core::event::USER_ID_BYTES_MAX
            )));
        }
        let herald = claims.herald.unwrap_or_default();
        let grants = BrowserGrants::parse(&crate::config::BrowserGrantsConfig {
            rooms: herald.rooms,
            subscribe: herald.subscribe,
            publish: herald.publish,
        })
        .map_err(|error| JwtError::InvalidClaims(format!("herald: {error}")))?;
        Ok(Claims {
            sub: claims.sub,
            grants,
        })
    }

    fn refusal(&self, kind: ErrorKind) -> JwtError {
        match kind {
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidAudience => JwtError::WrongAudience {
                expected: self.config.audience.clone(),
            },
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer {
                expected: self.config.issuer.clone().unwrap_or_default(),
            },
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => JwtError::WrongAlgorithm {
                expected: self.config.algorithm,
            },
            ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim),
            ErrorKind::InvalidClaimFormat(claim) => {
                JwtError::InvalidClaims(format!("{claim} has the wrong type"))
            }
            ErrorKind::Json(error) => JwtError::InvalidClaims(error.to_string()),
            // A key that does not fit the token (an RSA token on an EC key) is a bad signature
            // as far as the browser can tell.
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => JwtError::BadSignature,
            _ => JwtError::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;
    use crate::config::ConfigDuration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
    const AUDIENCE: &str = "herald";

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/realtime/testdata")
            .join(name)
    }

    fn config(algorithm: JwtAlgorithm) -> JwtConfig {
        let (secret, public_key_file) = match algorithm {
            JwtAlgorithm::Hs256 => (Some(SECRET.to_owned()), None),
            JwtAlgorithm::Rs256 => (None, Some(testdata("rsa_public.pem"))),
            JwtAlgorithm::Es256 => (None, Some(testdata("ec_public.pem"))),
        };
        JwtConfig {
            algorithm,
            secret,
            public_key_file,
            audience: AUDIENCE.to_owned(),
            issuer: None,
            leeway: ConfigDuration(Duration::from_secs(5)),
        }
    }

    /// A key that signs as the verifier of `algorithm` expects, or (`other`) one it does not
    /// know.
    fn signing_key(algorithm: JwtAlgorithm, other: bool) -> (Algorithm, EncodingKey) {
        let read = |name: &str| std::fs::read(testdata(name)).unwrap();
        match (algorithm, other) {
            (JwtAlgorithm::Hs256, false) => (
                Algorithm::HS256,
                EncodingKey::from_secret(SECRET.as_bytes()),
            ),
            (JwtAlgorithm::Hs256, true) => (
                Algorithm::HS256,
                EncodingKey::from_secret(b"another-secret-another-secret-xyz"),
            ),
            (JwtAlgorithm::Rs256, false) => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&read("rsa_private.pem")).unwrap(),
            ),
            (JwtAlgorithm::Rs256, true) => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&read("rsa_other_private.pem")).unwrap(),
            ),
            (JwtAlgorithm::Es256, false) => (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&read("ec_private.pem")).unwrap(),
            ),
            (JwtAlgorithm::Es256, true) => unreachable!("no second EC key in testdata"),
        }
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn sign(algorithm: JwtAlgorithm, other_key: bool, claims: serde_json::Value) -> String {
        let (alg, key) = signing_key(algorithm, other_key);
        encode(&Header::new(alg), &claims, &key).unwrap()
    }

    fn valid_claims() -> serde_json::Value {
        json!({
            "sub": "u1",
            "aud": AUDIENCE,
            "exp": now() + 3600,
            "herald": {"rooms": ["chat.*"], "subscribe": ["photo.>"], "publish": ["chat.message"]},
        })
    }

    fn with(
        mut claims: serde_json::Value,
        key: &str,
        value: serde_json::Value,
    ) -> serde_json::Value {
        claims[key] = value;
        claims
    }

    fn check(algorithm: JwtAlgorithm, token: &str, expect: Result<&str, JwtError>) {
        let verifier = JwtVerifier::new(&config(algorithm)).unwrap();
        match (verifier.verify(token), expect) {
            (Ok(claims), Ok(sub)) => assert_eq!(claims.sub, sub),
            (Err(error), Err(want)) => assert_eq!(error, want, "{algorithm}"),
            (got, want) => panic!("{algorithm}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn every_algorithm_accepts_and_refuses() {
        for algorithm in [
            JwtAlgorithm::Hs256,
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
        ] {
            let token = |claims| sign(algorithm, false, claims);
            check(algorithm, &token(valid_claims()), Ok("u1"));
            check(
                algorithm,
                &token(with(valid_claims(), "exp", json!(now() - 3600))),
                Err(JwtError::Expired),
            );
            check(
                algorithm,
                &token(with(valid_claims(), "nbf", json!(now() + 3600))),
                Err(JwtError::NotYetValid),
            );
            check(
                algorithm,
                &token(with(valid_claims(), "nbf", json!(now() - 10))),
                Ok("u1"),
            );
            check(
                algorithm,
                &token(with(valid_claims(), "aud", json!("someone-else"))),
                Err(JwtError::WrongAudience {
                    expected: AUDIENCE.into(),
                }),
            );
            check(
                algorithm,
                &token(with(
                    valid_claims(),
                    "aud",
                    json!(["someone-else", AUDIENCE]),
                )),
                Ok("u1"),
            );
            let mut no_exp = valid_claims();
            no_exp.as_object_mut().unwrap().remove("exp");
            check(
                algorithm,
                &token(no_exp),
                Err(JwtError::MissingClaim("exp".into())),
            );
            let mut no_aud = valid_claims();
            no_aud.as_object_mut().unwrap().remove("aud");
            check(
                algorithm,
                &token(no_aud),
                Err(JwtError::MissingClaim("aud".into())),
            );
            check(
                algorithm,
                &token(with(
                    valid_claims(),
                    "herald",
                    json!({"rooms": ["chat..x"]}),
                )),
                Err(JwtError::InvalidClaims(
                    "herald: rooms pattern \"chat..x\": token 2 of room name \"chat..x\" is \
                     empty (tokens are separated by a single '.' or ':', with none leading or \
                     trailing)"
                        .into(),
                )),
            );
            // The signature covers header and claims: a changed claim breaks it.
            let good = token(valid_claims());
            let forged_claims = token(with(valid_claims(), "sub", json!("admin")));
            let mut parts: Vec<&str> = good.split('.').collect();
            parts[1] = forged_claims.split('.').nth(1).unwrap();
            check(algorithm, &parts.join("."), Err(JwtError::BadSignature));
            check(algorithm, "not-a-token", Err(JwtError::Malformed));
        }
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        check(
            JwtAlgorithm::Hs256,
            &sign(JwtAlgorithm::Hs256, true, valid_claims()),
            Err(JwtError::BadSignature),
        );
        check(
            JwtAlgorithm::Rs256,
            &sign(JwtAlgorithm::Rs256, true, valid_claims()),
            Err(JwtError::BadSignature),
        );
    }

    #[test]
    fn only_the_configured_algorithm_is_accepted() {
        // An RS256 token presented to an HS256 server, and the reverse: both refused whatever
        // their signatures.
        check(
            JwtAlgorithm::Hs256,
            &sign(JwtAlgorithm::Rs256, false, valid_claims()),
            Err(JwtError::WrongAlgorithm {
                expected: JwtAlgorithm::Hs256,
            }),
        );
        check(
            JwtAlgorithm::Rs256,
            &sign(JwtAlgorithm::Hs256, false, valid_claims()),
            Err(JwtError::WrongAlgorithm {
                expected: JwtAlgorithm::Rs256,
            }),
        );
        check(
            JwtAlgorithm::Es256,
            &sign(JwtAlgorithm::Rs256, false, valid_claims()),
            Err(JwtError::WrongAlgorithm {
                expected: JwtAlgorithm::Es256,
            }),
        );
        // alg "none": header {"alg":"none"}, no signature.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let claims = sign(JwtAlgorithm::Hs256, false, valid_claims());
        let body = claims.split('.').nth(1).unwrap();
        let verifier = JwtVerifier::new(&config(JwtAlgorithm::Hs256)).unwrap();
        assert!(verifier.verify(&format!("{header}.{body}.")).is_err());
    }

    #[test]
    fn grants_come_from_the_herald_claim() {
        let verifier = JwtVerifier::new(&config(JwtAlgorithm::Hs256)).unwrap();
        let claims = verifier
            .verify(&sign(JwtAlgorithm::Hs256, false, valid_claims()))
            .unwrap();
        let room = |name: &str| herald_core::RoomName::new(name).unwrap();
        assert!(claims.grants.may_join(&room("chat.general")));
        assert!(!claims.grants.may_join(&room("admin.general")));
        let mut plain = valid_claims();
        plain.as_object_mut().unwrap().remove("herald");
        let claims = verifier
            .verify(&sign(JwtAlgorithm::Hs256, false, plain))
            .unwrap();
        assert_eq!(claims.grants, BrowserGrants::default());
    }

    #[test]
    fn issuer_is_checked_when_configured() {
        let mut with_issuer = config(JwtAlgorithm::Hs256);
        with_issuer.issuer = Some("auth.example".into());
        let verifier = JwtVerifier::new(&with_issuer).unwrap();
        let token = |claims| sign(JwtAlgorithm::Hs256, false, claims);
        assert_eq!(
            verifier.verify(&token(valid_claims())),
            Err(JwtError::MissingClaim("iss".into()))
        );
        assert_eq!(
            verifier.verify(&token(with(valid_claims(), "iss", json!("evil")))),
            Err(JwtError::WrongIssuer {
                expected: "auth.example".into()
            })
        );
        assert!(
            verifier
                .verify(&token(with(valid_claims(), "iss", json!("auth.example"))))
                .is_ok()
        );
    }

    #[test]
    fn configurations() {
        let check_config =
            |config: JwtConfig, want: Option<&str>| match (JwtVerifier::new(&config), want) {
                (Ok(_), None) => {}
                (Err(error), Some(part)) => {
                    let text = error.to_string();
                    assert!(text.contains(part), "{text:?} lacks {part:?}");
                    assert!(!text.contains(SECRET), "{text:?} quotes the secret");
                }
                (got, want) => panic!("got {got:?}, want {want:?}"),
            };
        check_config(config(JwtAlgorithm::Hs256), None);
        check_config(config(JwtAlgorithm::Rs256), None);
        check_config(config(JwtAlgorithm::Es256), None);
        check_config(
            JwtConfig {
                secret: None,
                ..config(JwtAlgorithm::Hs256)
            },
            Some("secret is required"),
        );
        check_config(
            JwtConfig {
                secret: Some("short".into()),
                ..config(JwtAlgorithm::Hs256)
            },
            Some("fewer than the 32"),
        );
        check_config(
            JwtConfig {
                public_key_file: None,
                ..config(JwtAlgorithm::Rs256)
            },
            Some("public_key_file is required for RS256"),
        );
        check_config(
            JwtConfig {
                secret: Some(SECRET.into()),
                ..config(JwtAlgorithm::Es256)
            },
            Some("realtime.jwt.secret does not belong with ES256"),
        );
        check_config(
            JwtConfig {
                public_key_file: Some(testdata("missing.pem")),
                ..config(JwtAlgorithm::Rs256)
            },
            Some("missing.pem"),
        );
        check_config(
            JwtConfig {
                public_key_file: Some(testdata("ec_public.pem")),
                ..config(JwtAlgorithm::Rs256)
            },
            Some("is not a PEM RS256 public key"),
        );
        check_config(
            JwtConfig {
                audience: String::new(),
                ..config(JwtAlgorithm::Hs256)
            },
            Some("audience is empty"),
        );
        let debug = format!("{:?}", config(JwtAlgorithm::Hs256));
        assert!(!debug.contains(SECRET), "{debug}");
    }
}
