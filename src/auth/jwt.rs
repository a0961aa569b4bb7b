//! JWT verification for the console dialect (seed 003): its clients prove
//! who they are with a token issued by the platform, not with a Kubernetes
//! credential. The verified user and groups are then authorised against the
//! cluster with SubjectAccessReviews (see [`super::review`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::review::User;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Where the verification key comes from, and which claims mean what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwtSettings {
    /// The claim naming the user.
    pub user_claim: String,
    /// A file holding the HS256 shared secret (a trailing newline is ignored).
    pub hs256_secret_file: Option<PathBuf>,
    /// A PEM public key; RSA keys verify RS256, EC P-256 keys ES256.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// The claim listing the user's groups (absent = no groups).
    pub groups_claim: String,
}

/// The verification key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwtKeyError {
    /// Both a secret and a public key were given.
    #[error("set only one of jwt_hs256_secret_file and jwt_public_key_file")]
    Ambiguous,
    /// The key file could not be read.
    #[error("cannot read JWT key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file holds no usable key.
    #[error("JWT key file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Why a token was rejected. The messages go back to the client, so they
/// say what is wrong without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a JWT at all, or not signed with the configured algorithm.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not match the configured key.
    #[error("invalid signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// The token has no `exp`: kubemux accepts only tokens that expire.
    #[error("claim \"exp\" is missing: the token must say when it expires")]
    MissingExpiry,
    /// `exp` or `nbf` is not a whole number of seconds in the accepted range.
    #[error(
        "claim {claim:?} must be whole seconds since 1970, 0 to 253402300799 (9999-12-31), got {got}"
    )]
    TimeOutOfRange {
        /// `exp` or `nbf`.
        claim: &'static str,
        /// The value's number, or its kind.
        got: String,
    },
    /// A required claim is missing or of the wrong type.
    #[error("claim {0:?} is missing or not a string")]
    MissingClaim(String),
    /// The groups claim is not a list of strings.
    #[error("claim {0:?} must be a list of strings")]
    BadGroups(String),
}

/// A verified token: who it names and until when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The user and groups from the configured claims.
    pub user: User,
    /// `exp`, after which a connection authenticated by it must end.
    pub expires: Option<SystemTime>,
}

/// Verifies tokens with one key and fixed claim rules.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    user_claim: String,
    groups_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, JwtKeyError> {
    std::fs::read(path).map_err(|source| JwtKeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl JwtVerifier {
    /// The verifier these settings describe; `None` when no key is set.
    pub fn from_settings(settings: &JwtSettings) -> Result<Option<JwtVerifier>, JwtKeyError> {
        let (key, algorithm) = match (&settings.hs256_secret_file, &settings.public_key_file) {
            (Some(_), Some(_)) => return Err(JwtKeyError::Ambiguous),
            (None, None) => return Ok(None),
            (Some(path), None) => {
                let mut secret = read(path)?;
                while matches!(secret.last(), Some(b'\n' | b'\r')) {
                    secret.pop();
                }
                if secret.is_empty() {
                    return Err(JwtKeyError::Invalid {
                        path: path.display().to_string(),
                        message: "the secret is empty".into(),
                    });
                }
                (DecodingKey::from_secret(&secret), Algorithm::HS256)
            }
            (None, Some(path)) => {
                let pem = read(path)?;
                match DecodingKey::from_rsa_pem(&pem) {
                    Ok(key) => (key, Algorithm::RS256),
                    Err(_) => match DecodingKey::from_ec_pem(&pem) {
                        Ok(key) => (key, Algorithm::ES256),
                        Err(e) => {
                            return Err(JwtKeyError::Invalid {
                                path: path.display().to_string(),
                                message: format!("not an RSA or EC public key in PEM format ({e})"),
                            });
                        }
                    },
                }
            }
        };
        Ok(Some(Self::new(key, algorithm, settings)))
    }

    /// A verifier of HS256 tokens signed with `secret`, held in memory:
    /// `kubemux demo --print-demo-token` generates one that never touches
    /// a file. `settings`' key files are not read.
    pub fn hs256(secret: &[u8], settings: &JwtSettings) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256, settings)
    }

    fn new(key: DecodingKey, algorithm: Algorithm, settings: &JwtSettings) -> Self {
        let mut validation = Validation::new(algorithm);
        // `exp` and `nbf` are checked by `verify` itself: the library reports
        // an `exp` it cannot read as a u64 (1e30, a string) as "missing", lets
        // an unreadable `nbf` through when not validating it, and takes any
        // u64, which `SystemTime` cannot hold.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        if let Some(issuer) = &settings.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &settings.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        JwtVerifier {
            key,
            validation,
            user_claim: settings.user_claim.clone(),
            groups_claim: settings.groups_claim.clone(),
        }
    }

    /// The user a token names, once its signature and claims check out.
    pub fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
            _ => JwtError::Malformed(e.to_string()),
        })?;
        let claims = data.claims;
        let expires = time_claim(&claims, "exp")?.ok_or(JwtError::MissingExpiry)?;
        let not_before = time_claim(&claims, "nbf")?;
        let now = SystemTime::now();
        let leeway = Duration::from_secs(LEEWAY_SECS);
        if expires + leeway < now {
            return Err(JwtError::Expired);
        }
        if not_before.is_some_and(|nbf| nbf > now + leeway) {
            return Err(JwtError::NotYetValid);
        }
        let name = claims
            .get(&self.user_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| JwtError::MissingClaim(self.user_claim.clone()))?
            .to_string();
        let groups = match claims.get(&self.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| g.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| JwtError::BadGroups(self.groups_claim.clone()))?,
            Some(_) => return Err(JwtError::BadGroups(self.groups_claim.clone())),
        };
        Ok(Verified {
            user: User {
                name,
                uid: None,
                groups,
            },
            expires: Some(expires),
        })
    }
}

/// The latest `exp` or `nbf` accepted, 9999-12-31T23:59:59Z: later than any
/// real token, and far enough inside `SystemTime`'s range that adding the
/// leeway cannot overflow (a bare u64 of seconds can, and would panic).
const MAX_TIME_CLAIM: u64 = 253_402_300_799;

/// A NumericDate claim (`exp`, `nbf`) as a time, `None` when absent.
fn time_claim(
    claims: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<SystemTime>, JwtError> {
    let Some(value) = claims.get(claim) else {
        return Ok(None);
    };
    let out_of_range = || JwtError::TimeOutOfRange {
        claim,
        got: match value {
            Value::Number(n) => n.to_string(),
            Value::String(_) => "a string".into(),
            _ => "not a number".into(),
        },
    };
    let secs = value
        .as_u64()
        .filter(|&secs| secs <= MAX_TIME_CLAIM)
        .ok_or_else(out_of_range)?;
    Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn verifier(secret: &[u8], issuer: Option<&str>, audience: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
            &JwtSettings {
                issuer: issuer.map(str::to_string),
                audience: audience.map(str::to_string),
                user_claim: "sub".into(),
                groups_claim: "groups".into(),
                ..JwtSettings::default()
            },
        )
    }

    fn token(secret: &[u8], claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn claims_are_checked() {
        let v = verifier(b"s3cret", Some("iss"), Some("console"));
        let good = json!({"sub": "alice", "groups": ["dev"], "exp": now() + 600, "iss": "iss", "aud": "console"});
        let verified = v.verify(&token(b"s3cret", good.clone())).unwrap();
        assert!(verified.expires.is_some());
        let user = verified.user;
        assert_eq!(
            (user.name.as_str(), user.groups),
            ("alice", vec!["dev".to_string()])
        );
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 3600);
        assert_eq!(v.verify(&token(b"s3cret", expired)), Err(JwtError::Expired));
        let mut early = good.clone();
        early["nbf"] = json!(now() + 3600);
        assert_eq!(
            v.verify(&token(b"s3cret", early)),
            Err(JwtError::NotYetValid)
        );
        let mut aud = good.clone();
        aud["aud"] = json!("other");
        assert_eq!(
            v.verify(&token(b"s3cret", aud)),
            Err(JwtError::WrongAudience)
        );
        let mut iss = good.clone();
        iss["iss"] = json!("other");
        assert_eq!(v.verify(&token(b"s3cret", iss)), Err(JwtError::WrongIssuer));
        assert_eq!(
            v.verify(&token(b"wrong", good.clone())),
            Err(JwtError::BadSignature)
        );
        let mut groups = good.clone();
        groups["groups"] = json!("dev");
        assert!(matches!(
            v.verify(&token(b"s3cret", groups)),
            Err(JwtError::BadGroups(_))
        ));
        assert!(matches!(v.verify("not a jwt"), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn exp_and_nbf_out_of_range_are_named_not_missing() {
        let v = verifier(b"s3cret", None, None);
        let good = json!({"sub": "alice", "exp": now() + 600});
        for (claim, value, shown) in [
            ("exp", json!(1e30), "1e+30"),
            ("exp", json!(u64::MAX), "18446744073709551615"),
            ("exp", json!(-5), "-5"),
            ("exp", json!(now() as f64 + 600.5), "."),
            ("exp", json!("soon"), "a string"),
            ("nbf", json!(1e30), "1e+30"),
            ("nbf", json!(u64::MAX), "18446744073709551615"),
            ("nbf", json!(true), "not a number"),
        ] {
            let mut claims = good.clone();
            claims[claim] = value;
            let err = v.verify(&token(b"s3cret", claims)).unwrap_err();
            assert!(
                matches!(&err, JwtError::TimeOutOfRange { claim: c, .. } if *c == claim),
                "{claim}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(claim) && text.contains("253402300799") && text.contains(shown),
                "{text}"
            );
            assert!(!text.contains("missing"), "{text}");
        }
        let mut latest = good.clone();
        latest["exp"] = json!(MAX_TIME_CLAIM);
        assert!(v.verify(&token(b"s3cret", latest)).is_ok());
        let mut none = good.clone();
        none.as_object_mut().unwrap().remove("exp");
        let err = v.verify(&token(b"s3cret", none)).unwrap_err();
        assert_eq!(err, JwtError::MissingExpiry);
        assert!(err.to_string().contains("exp"), "{err}");
    }
}
