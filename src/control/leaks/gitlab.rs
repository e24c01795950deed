//! GitLab's token revocation API (control plane): the two endpoints a GitLab instance calls
//! when its secret detection finds a token, once GitLab is given their URLs and a token.
//!
//! - `GET /v1/revocable_token_types`: 200 `{"types":[...]}`, the finding types revoked here;
//!   GitLab sends only tokens of these types.
//! - `POST /v1/revoke_tokens` with `[{"type","token","location"}]`: 204 once every token is
//!   decided; 400 for a body that is not such a list or names a type not listed (GitLab does
//!   not retry a 400). Revoking is idempotent, so a retried batch changes nothing twice.
//! - Either without the token: 401. GitLab sends its `secret_detection_token_revocation_token`
//!   as the whole `Authorization` value, without a scheme; `Bearer <token>` is taken too.
//!
//! A type is the secret detection rule's id with GitLab's prefix: a custom rule with the id
//! `keygate_api_key` reports `gitleaks_rule_id_keygate_api_key` ([`DEFAULT_TYPE`]).

use std::fmt;

use super::Report;
use crate::core::secret::{Hasher, KeyHash};

pub const TYPES_PATH: &str = "/v1/revocable_token_types";
pub const REVOKE_PATH: &str = "/v1/revoke_tokens";
/// The finding type of a GitLab secret detection rule `keygate_api_key`.
pub const DEFAULT_TYPE: &str = "gitleaks_rule_id_keygate_api_key";
/// Largest request body read: a batch of 1,000 tokens fits.
pub const MAX_BODY: usize = 1024 * 1024;

/// One token GitLab asks to revoke. `Debug` never prints the token.
#[derive(serde::Deserialize)]
pub struct Revocation {
    #[serde(rename = "type")]
    pub token_type: String,
    pub token: String,
    /// Where it was found.
    #[serde(default)]
    pub location: String,
}

impl fmt::Debug for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocation")
            .field("token_type", &self.token_type)
            .field("token", &"<redacted>")
            .field("location", &self.location)
            .finish()
    }
}

impl Revocation {
    /// The token as a report to decide.
    pub fn report(&self) -> Report {
        let url = (!self.location.is_empty()).then(|| self.location.clone());
        Report::new(self.token.clone(), url)
    }
}

/// Why a revocation request is refused with 400.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("the body is not a list of {{type, token, location}}: {0}")]
    Body(#[from] serde_json::Error),
    #[error("token type {0:?} is not revoked here")]
    Type(String),
}

/// The endpoints' settings: the token GitLab presents, and the types revoked.
pub struct Endpoint {
    /// The token's hash, so a comparison takes the same time however close a guess is.
    token: KeyHash,
    types: Vec<String>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("types", &self.types)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn new(token: &str, types: Vec<String>) -> Endpoint {
        Endpoint {
            token: Hasher::unkeyed().hash(token.as_bytes()),
            types,
        }
    }

    /// Whether an `Authorization` header value is GitLab's token, bare or after `Bearer `.
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .unwrap_or(value);
        !token.is_empty() && Hasher::unkeyed().hash(token).ct_eq(&self.token)
    }

    /// The answer to `GET /v1/revocable_token_types`.
    pub fn types_document(&self) -> String {
        serde_json::json!({ "types": self.types }).to_string()
    }

    /// The tokens of a `POST /v1/revoke_tokens` body (bounded by [`MAX_BODY`] before it is
    /// read), all of a listed type.
    pub fn parse_revocations(&self, body: &[u8]) -> Result<Vec<Revocation>, RevokeError> {
        let revocations: Vec<Revocation> = serde_json::from_slice(body)?;
        match revocations.iter().find(|r| !self.types.contains(&r.token_type)) {
            Some(unlisted) => Err(RevokeError::Type(unlisted.token_type.clone())),
            None => Ok(revocations),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::new("MYSECRETTOKEN", vec![DEFAULT_TYPE.to_owned()])
    }

    #[test]
    fn gitlabs_token_is_taken_bare_or_as_a_bearer_token_and_nothing_else_is() {
        let endpoint = endpoint();
        for (header, expected) in [
            (Some(&b"MYSECRETTOKEN"[..]), true),
            (Some(b"Bearer MYSECRETTOKEN"), true),
            (Some(b"bearer MYSECRETTOKEN"), true),
            (Some(b"MYSECRETTOKEN "), false),
            (Some(b"Basic MYSECRETTOKEN"), false),
            (Some(b"MYSECRETTOKE"), false),
            (Some(b"Bearer "), false),
            (Some(b""), false),
            (Some(b"\xff\xfe"), false),
            (None, false),
        ] {
            assert_eq!(endpoint.authorized(header), expected, "{header:?}");
        }
        assert!(!format!("{endpoint:?}").contains("MYSECRET"));
    }

    #[test]
    fn the_types_document_lists_the_configured_types() {
        let answer: serde_json::Value = serde_json::from_str(&endpoint().types_document()).unwrap();
        assert_eq!(answer, serde_json::json!({"types": [DEFAULT_TYPE]}));
    }

    #[test]
    fn gitlabs_example_body_parses_and_an_unlisted_type_or_another_shape_is_refused() {
        let body = format!(
            r#"[{{"type":"{DEFAULT_TYPE}","token":"kg_prod_x","location":"https://example.com/some-repo/blob/abc/f.java"}},
                {{"type":"{DEFAULT_TYPE}","token":"kg_prod_y","location":"","vulnerability":{{"id":1}}}}]"#
        );
        let revocations = endpoint().parse_revocations(body.as_bytes()).unwrap();
        assert_eq!(revocations.len(), 2);
        assert!(!format!("{revocations:?}").contains("kg_prod_"));
        assert!(format!("{:?}", revocations[0].report()).contains("some-repo"));
        assert!(format!("{:?}", revocations[1].report()).contains("url: None"));
        assert!(endpoint().parse_revocations(b"[]").unwrap().is_empty());

        let unlisted = br#"[{"type":"gitleaks_rule_id_gitlab_personal_access_token","token":"glpat-x"}]"#;
        let refused = endpoint().parse_revocations(unlisted);
        assert!(
            matches!(refused, Err(RevokeError::Type(t)) if t == "gitleaks_rule_id_gitlab_personal_access_token")
        );
        for body in [&b"{}"[..], b"", b"[{\"token\":\"x\"}]", b"[{\"type\":\"t\"}]"] {
            assert!(
                matches!(endpoint().parse_revocations(body), Err(RevokeError::Body(_))),
                "{body:?}"
            );
        }
    }
}
