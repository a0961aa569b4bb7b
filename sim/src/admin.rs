//! `/_sim/` control routes: fault injection, churn and authorization rules
//! over HTTP, for driving the simulator from outside the process
//! (benchmarks, manual testing, revoking access mid-test).
//! Parameters come from the query string or a small JSON object body.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::faults::WatchFailure;
use crate::http::AppState;
use crate::rbac::Rule;

/// Delay before a connection-refusal fault takes effect, so the caller still
/// receives its 200 answer over the connection that is about to be reset.
const REFUSE_APPLY_DELAY: Duration = Duration::from_millis(50);

/// The `/_sim/` routes (all POST).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/drop-watches", post(drop_watches))
        .route("/fail-watches", post(fail_watches))
        .route("/stall", post(stall))
        .route("/resume", post(resume))
        .route("/refuse-connections", post(refuse_connections))
        .route("/compact", post(compact))
        .route("/churn", post(churn))
        .route("/auth/rules", get(auth_rules).post(set_auth_rules))
}

type Params = HashMap<String, String>;

/// Query parameters merged with the fields of a JSON object body.
async fn params(request: Request) -> Result<Params, ApiError> {
    let (parts, body) = request.into_parts();
    let mut params: Params = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let fields: serde_json::Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("body must be a JSON object: {e}")))?;
        for (key, value) in fields {
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            params.insert(key, text);
        }
    }
    Ok(params)
}

fn number<T: std::str::FromStr>(
    params: &Params,
    key: &str,
    default: Option<T>,
) -> Result<T, ApiError> {
    match params.get(key) {
        Some(raw) => raw
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid {key}: {raw:?}"))),
        None => default.ok_or_else(|| ApiError::bad_request(format!("missing parameter {key}"))),
    }
}

fn respond(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(summary) => Json(summary).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn drop_watches(State(app): State<AppState>) -> Response {
    let open = app.faults.drop_watches();
    respond(Ok(json!({"droppedWatches": open})))
}

async fn fail_watches(State(app): State<AppState>, request: Request) -> Response {
    let result = async {
        let params = params(request).await?;
        let count: usize = number(&params, "count", Some(1))?;
        let code: u16 = number(&params, "code", None)?;
        let failure = match code {
            410 => WatchFailure::Expired,
            429 => WatchFailure::TooManyRequests {
                retry_after_secs: number(&params, "retryAfter", Some(1))?,
            },
            500 => WatchFailure::InternalError,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unsupported code {other}; use 410, 429 or 500"
                )));
            }
        };
        app.faults.fail_next_watches(count, failure);
        Ok(json!({"failNextWatches": count, "code": code}))
    }
    .await;
    respond(result)
}

async fn stall(State(app): State<AppState>) -> Response {
    app.faults.stall_watches();
    respond(Ok(json!({"stalled": true})))
}

async fn resume(State(app): State<AppState>) -> Response {
    app.faults.resume_watches();
    respond(Ok(json!({"stalled": false})))
}

async fn refuse_connections(State(app): State<AppState>, request: Request) -> Response {
    let result = async {
        let params = params(request).await?;
        let seconds: f64 = number(&params, "seconds", None)?;
        let duration = Duration::try_from_secs_f64(seconds)
            .map_err(|_| ApiError::bad_request(format!("invalid seconds: {seconds}")))?;
        let faults = app.faults.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REFUSE_APPLY_DELAY).await;
            faults.refuse_connections(duration);
        });
        Ok(json!({"refusingConnectionsForSeconds": seconds}))
    }
    .await;
    respond(result)
}

async fn compact(State(app): State<AppState>) -> Response {
    let rv = app.faults.compact_history();
    respond(Ok(json!({"compactedResourceVersion": rv.to_string()})))
}

async fn churn(State(app): State<AppState>, request: Request) -> Response {
    let result = async {
        let params = params(request).await?;
        let rate: f64 = number(&params, "rate", None)?;
        if !rate.is_finite() || rate < 0.0 {
            return Err(ApiError::bad_request(format!("invalid rate: {rate}")));
        }
        app.churn.set_rate(rate);
        Ok(json!({"churnRate": rate}))
    }
    .await;
    respond(result)
}

async fn auth_rules(State(app): State<AppState>) -> Response {
    respond(Ok(
        json!({"enabled": app.auth.enabled(), "rules": app.auth.rules()}),
    ))
}

/// Replaces the rules: the body is a JSON list of rules (or `{"rules": [...]}`).
async fn set_auth_rules(State(app): State<AppState>, request: Request) -> Response {
    let result = async {
        let body = axum::body::to_bytes(request.into_body(), 1024 * 1024)
            .await
            .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("body must be JSON: {e}")))?;
        let list = match value {
            Value::Object(mut object) => object.remove("rules").unwrap_or(Value::Null),
            other => other,
        };
        let rules: Vec<Rule> = serde_json::from_value(list)
            .map_err(|e| ApiError::bad_request(format!("body must be a list of rules: {e}")))?;
        let count = rules.len();
        app.auth
            .set_rules(rules)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(json!({"enabled": app.auth.enabled(), "rules": count}))
    }
    .await;
    respond(result)
}
