//! `TokenReview` and `SubjectAccessReview`: create-only virtual resources
//! answered from the same token table and rules that guard every request, so
//! a proxy that delegates authentication/authorization to the cluster sees
//! the same answers the cluster itself would apply.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::http::AppState;
use crate::rbac::{AUTHENTICATED_GROUP, Attributes, Decision, SUPERUSER_GROUP};
use crate::resources::ResourceDef;

/// Answers a POST of a review type (`def.create_only`) with `201 Created`.
pub fn create(app: &AppState, def: &ResourceDef, body: &[u8]) -> Result<Response, ApiError> {
    let review = parse(def, body)?;
    let spec = review
        .get("spec")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let status = match def.plural {
        "tokenreviews" => token_review(app, &spec)?,
        "subjectaccessreviews" => access_review(app, &spec)?,
        _ => return Err(ApiError::method_not_allowed()),
    };
    let answer = json!({
        "kind": def.kind,
        "apiVersion": def.api_version(),
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The body as a JSON object whose kind/apiVersion, if given, match `def`.
fn parse(def: &ResourceDef, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(review) = value else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let mismatch = |field: &str, expected: &str| {
        review
            .get(field)
            .is_some_and(|v| v.as_str() != Some(expected))
    };
    if mismatch("kind", def.kind) || mismatch("apiVersion", &def.api_version()) {
        return Err(ApiError::bad_request(format!(
            "the body must be a {} of apiVersion {}",
            def.kind,
            def.api_version()
        )));
    }
    if review.get("spec").is_some_and(|s| !s.is_object()) {
        return Err(ApiError::bad_request("spec must be an object"));
    }
    Ok(review)
}

fn text<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
    }
}

fn token_review(app: &AppState, spec: &Map<String, Value>) -> Result<Value, ApiError> {
    let token = text(spec, "token")?;
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    Ok(match app.auth.review_token(token) {
        Some(user) => json!({"authenticated": true, "user": user}),
        None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
    })
}

fn access_review(app: &AppState, spec: &Map<String, Value>) -> Result<Value, ApiError> {
    let user = text(spec, "user")?.to_string();
    let groups: Vec<String> = match spec.get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(groups) => serde_json::from_value(groups.clone())
            .map_err(|_| ApiError::bad_request("spec.groups must be a list of strings"))?,
    };
    if user.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid(
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    let attributes = spec.get("resourceAttributes").and_then(Value::as_object);
    let non_resource = spec.get("nonResourceAttributes").and_then(Value::as_object);
    let decision = match (attributes, non_resource) {
        (Some(attributes), None) => {
            let optional = |field| -> Result<Option<String>, ApiError> {
                let value = text(attributes, field)?;
                Ok((!value.is_empty()).then(|| value.to_string()))
            };
            app.auth.review_access(&Attributes {
                user,
                groups,
                verb: text(attributes, "verb")?.to_string(),
                api_group: text(attributes, "group")?.to_string(),
                resource: text(attributes, "resource")?.to_string(),
                subresource: optional("subresource")?,
                namespace: optional("namespace")?,
                name: optional("name")?,
            })
        }
        (None, Some(attributes)) => non_resource_decision(
            &groups,
            text(attributes, "verb")?,
            text(attributes, "path")?,
        ),
        _ => {
            return Err(ApiError::invalid(
                "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
    };
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = decision.reason.into();
    }
    Ok(status)
}

/// Non-resource URLs: superusers may do anything; discovery (`GET` on
/// `/version`, `/api*`, `/apis*`) is open to `system:authenticated`, as the
/// real `system:discovery` binding makes it.
fn non_resource_decision(groups: &[String], verb: &str, path: &str) -> Decision {
    let member = |group: &str| groups.iter().any(|g| g == group);
    let discovery = verb == "get"
        && (path == "/version"
            || path == "/api"
            || path.starts_with("/api/")
            || path == "/apis"
            || path.starts_with("/apis/"));
    let (allowed, reason) = if member(SUPERUSER_GROUP) {
        (true, format!("allowed: member of {SUPERUSER_GROUP}"))
    } else if discovery && member(AUTHENTICATED_GROUP) {
        (
            true,
            "allowed: discovery is open to system:authenticated".into(),
        )
    } else {
        (false, String::new())
    };
    Decision { allowed, reason }
}
