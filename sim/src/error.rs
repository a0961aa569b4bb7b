//! Errors: [`ApiError`] is what the Kubernetes API returns as a `Status`
//! object; [`SimError`] is what can go wrong running the simulator itself.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::rbac::Attributes;
use crate::resources::ResourceDef;

/// A Kubernetes API failure, rendered as a `Status` object with the matching
/// HTTP code so that clients (notably `kube`) decode it exactly as they would
/// a real API server's error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status code, also written as `code` in the Status body.
    pub code: u16,
    /// Machine-readable `reason` (`NotFound`, `Conflict`, `Expired`, ...);
    /// empty for errors the real server reports without one (a storage
    /// error it turns into a bare 500), and then left out of the body.
    pub reason: &'static str,
    /// Human-readable message, worded like the real server's.
    pub message: String,
    /// Optional `details` (name, group, kind, causes, retryAfterSeconds),
    /// boxed so the common `Result<_, ApiError>` stays small.
    pub details: Option<Box<StatusDetails>>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: StatusDetails) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// 400: the request could not be understood (bad selector, bad body).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 for a missing or unknown bearer token, worded as the real server.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 when no rule allows the request, with the real server's message:
    /// `pods is forbidden: User "alice" cannot list resource "pods" in API
    /// group "" in the namespace "default"`.
    pub fn forbidden(def: &ResourceDef, attrs: &Attributes) -> Self {
        let subject = match &attrs.name {
            Some(name) => format!("{} \"{name}\"", def.qualified_name()),
            None => def.qualified_name(),
        };
        let resource = match &attrs.subresource {
            Some(sub) => format!("{}/{sub}", attrs.resource),
            None => attrs.resource.clone(),
        };
        let scope = match &attrs.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
                attrs.user, attrs.verb, attrs.api_group
            ),
        )
        .with_details(StatusDetails {
            name: attrs.name.clone(),
            group: (!def.group.is_empty()).then_some(def.group),
            kind: Some(def.plural),
            ..StatusDetails::default()
        })
    }

    /// 404 for a path or resource type the server does not serve.
    pub fn unknown_resource() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 404 for a named object that does not exist.
    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", def.qualified_name()),
        )
        .with_details(object_details(def, name))
    }

    /// 409 when creating an object whose name is taken.
    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", def.qualified_name()),
        )
        .with_details(object_details(def, name))
    }

    /// 409 when an update's resourceVersion precondition fails.
    pub fn conflict(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                def.qualified_name()
            ),
        )
        .with_details(object_details(def, name))
    }

    /// 410 when a watch starts before the retained history. `compacted` is
    /// the newest compacted resourceVersion, the number kube's watch cache
    /// prints (`oldest-1`, its oldest event's version minus one): the oldest
    /// version a watch may still start from.
    pub fn too_old(requested: u64, compacted: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({compacted})"),
        )
    }

    /// 410 for a `resourceVersionMatch=Exact` LIST at a compacted version,
    /// worded as the etcd storage layer words it.
    pub fn list_expired() -> Self {
        Self::new(
            410,
            "Expired",
            "The resourceVersion for the provided list is too old.",
        )
    }

    /// 500 for a `resourceVersion` that is not a decimal `uint64`: the real
    /// server's storage layer returns a plain error (no `reason`) carrying
    /// Go's `strconv.ParseUint` message, e.g. `resourceVersion: Invalid
    /// value: "abc": strconv.ParseUint: parsing "abc": invalid syntax`.
    pub fn invalid_resource_version(raw: &str, problem: &str) -> Self {
        let quoted = go_quote(raw);
        Self::new(
            500,
            "",
            format!(
                "resourceVersion: Invalid value: {quoted}: strconv.ParseUint: parsing {quoted}: {problem}"
            ),
        )
    }

    /// 504 when a request needs a resourceVersion the store has not reached
    /// within the watch cache's freshness wait (`NewTooLargeResourceVersionError`:
    /// a Timeout error, so the message starts with `Timeout: `).
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {requested}, current: {current}"),
        )
        .with_details(StatusDetails {
            causes: vec![StatusCause {
                reason: "ResourceVersionTooLarge",
                message: "Too large resource version".into(),
                field: None,
            }],
            retry_after_seconds: Some(1),
            ..StatusDetails::default()
        })
    }

    /// 422 for query parameters apimachinery's `ValidateListOptions`
    /// rejects: `ListOptions.meta.k8s.io "" is invalid: <errors>`, one cause
    /// per field error, several errors aggregated as `[a, b]` like Go's
    /// `utilerrors.NewAggregate`.
    pub fn invalid_list_options(errors: Vec<FieldError>) -> Self {
        let mut seen: Vec<String> = Vec::new();
        for error in &errors {
            let text = format!("{}: {}", error.field, error.body());
            if !seen.contains(&text) {
                seen.push(text);
            }
        }
        let aggregate = match seen.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes = errors
            .iter()
            .map(|error| StatusCause {
                reason: error.kind.cause_type(),
                message: error.body(),
                field: Some(error.field),
            })
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {aggregate}"),
        )
        .with_details(StatusDetails {
            group: Some("meta.k8s.io"),
            kind: Some("ListOptions"),
            causes,
            ..StatusDetails::default()
        })
    }

    /// 410 Expired with a custom message (injected faults).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 410 when a continue token's snapshot has been compacted away.
    pub fn continue_expired() -> Self {
        Self::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        )
    }

    /// 405 for a verb the path does not support.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 415 for a PATCH content type the simulator does not implement.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// 422 for a semantically invalid request or object.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 429 with a retry hint, as priority-and-fairness throttling answers.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        )
        .with_details(StatusDetails {
            retry_after_seconds: Some(retry_after_secs),
            ..StatusDetails::default()
        })
    }

    /// 500 for an injected or unexpected server failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// The `Status` object, fields in the order the real API server writes
    /// them.
    pub fn status(&self) -> StatusBody<'_> {
        StatusBody {
            kind: "Status",
            api_version: "v1",
            metadata: Map::new(),
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details: self.details.as_deref(),
            code: self.code,
        }
    }

    /// The `Retry-After` seconds to send as a header, if any.
    fn retry_after(&self) -> Option<u64> {
        self.details.as_ref().and_then(|d| d.retry_after_seconds)
    }
}

/// Serialised form of a failure `Status` (see [`ApiError::status`]).
#[derive(Debug, serde::Serialize)]
pub struct StatusBody<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Map<String, Value>,
    status: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a StatusDetails>,
    code: u16,
}

fn object_details(def: &ResourceDef, name: &str) -> StatusDetails {
    StatusDetails {
        name: Some(name.to_string()),
        group: (!def.group.is_empty()).then_some(def.group),
        kind: Some(def.plural),
        ..StatusDetails::default()
    }
}

/// `Status.details`, fields in the real server's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatusDetails {
    /// Name of the object concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// API group of the object, if not core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'static str>,
    /// Resource (plural) of the object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Individual causes (field errors, the too-large-version marker).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    /// Seconds to wait before retrying.
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

/// One `Status.details.causes` entry, fields in the real server's order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusCause {
    /// The cause type (`FieldValueForbidden`, `ResourceVersionTooLarge`, ...).
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
    /// The offending field, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

/// The kinds of apimachinery `field.Error` the simulator produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// `field.Forbidden`: the detail explains why.
    Forbidden,
    /// `field.NotSupported`: the rejected value and the supported ones.
    NotSupported {
        /// The value that was given.
        value: String,
        /// The values that would have been accepted.
        supported: &'static [&'static str],
    },
}

impl FieldErrorKind {
    fn cause_type(&self) -> &'static str {
        match self {
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
        }
    }
}

/// One apimachinery `field.Error`, rendered as Go's `ErrorBody` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path (`resourceVersionMatch`, `sendInitialEvents`).
    pub field: &'static str,
    /// What is wrong.
    pub kind: FieldErrorKind,
    /// Extra detail (the reason for a `Forbidden`).
    pub detail: String,
}

impl FieldError {
    /// `field.Forbidden(path, detail)`.
    pub fn forbidden(field: &'static str, detail: impl Into<String>) -> Self {
        FieldError {
            field,
            kind: FieldErrorKind::Forbidden,
            detail: detail.into(),
        }
    }

    /// `field.NotSupported(path, value, supported)`.
    pub fn not_supported(
        field: &'static str,
        value: &str,
        supported: &'static [&'static str],
    ) -> Self {
        FieldError {
            field,
            kind: FieldErrorKind::NotSupported {
                value: value.to_string(),
                supported,
            },
            detail: String::new(),
        }
    }

    /// Go's `(*field.Error).ErrorBody`: `Forbidden: <detail>` or
    /// `Unsupported value: "X": supported values: "A", "B"`.
    fn body(&self) -> String {
        match &self.kind {
            FieldErrorKind::Forbidden => format!("Forbidden: {}", self.detail),
            FieldErrorKind::NotSupported { value, supported } => {
                let values: Vec<String> = supported.iter().map(|v| go_quote(v)).collect();
                format!(
                    "Unsupported value: {}: supported values: {}",
                    go_quote(value),
                    values.join(", ")
                )
            }
        }
    }
}

/// Go's `strconv.Quote`, which the real server's messages use for values:
/// double quotes, with backslash escapes for quotes, backslashes and
/// control characters (`\n`, `\x01`, `\u0085`).
pub fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (code, axum::Json(self.status())).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Failures starting or running the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address that was requested.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Seeding the initial population failed (a bug in the population table).
    #[error("seeding the initial population: {0}")]
    Populate(#[from] ApiError),
    /// `SimConfig::auth` has an invalid token entry or rule.
    #[error("authentication settings: {0}")]
    Auth(#[from] crate::auth::AuthError),
}
