//! Opaque `continue` tokens for chunked LISTs.
//!
//! A token names the snapshot (resourceVersion) the first page was served
//! from and the last key returned, hex-encoded so it is URL-safe and clients
//! cannot rely on its structure.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Where the next page of a LIST starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueToken {
    /// The resourceVersion of the snapshot being paged through.
    pub rv: u64,
    /// Namespace of the last key returned (`""` for cluster-scoped).
    pub namespace: String,
    /// Name of the last key returned.
    pub name: String,
}

impl ContinueToken {
    /// Encodes the token as lowercase hex of its JSON form.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        json.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decodes a token from a request, rejecting anything malformed with
    /// 400 BadRequest.
    pub fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request("continue key is not valid");
        if !token.len().is_multiple_of(2) || !token.is_ascii() {
            return Err(invalid());
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| invalid())?;
        serde_json::from_slice(&bytes).map_err(|_| invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::ContinueToken;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let token = ContinueToken {
            rv: 42,
            namespace: "team-a".into(),
            name: "web-1".into(),
        };
        assert_eq!(ContinueToken::decode(&token.encode()), Ok(token));
        assert!(ContinueToken::decode("zz").is_err());
        assert!(ContinueToken::decode("abc").is_err());
        assert!(ContinueToken::decode("é1").is_err());
    }
}
