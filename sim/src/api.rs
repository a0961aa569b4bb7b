//! Handlers for resource requests: LIST/WATCH/create on collections and
//! get/update/patch/delete on objects, answering exactly like the real server.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::access;
use crate::auth::UserInfo;
use crate::discovery;
use crate::error::ApiError;
use crate::http::AppState;
use crate::object::{WithoutTypeMeta, meta_str};
use crate::pagination::ContinueToken;
use crate::path::{self, ApiPath};
use crate::query::{ListQuery, MATCH_EXACT};
use crate::resources::ResourceDef;
use crate::review;
use crate::selector::Filter;
use crate::store::{FRESHNESS_WAIT, ListAt, WatchFrom};
use crate::watch::{self, WatchSpec, WatchStart};

/// A request under `/api/...` or `/apis/...`, already split up by axum.
#[derive(Debug)]
pub struct ApiRequest {
    /// `true` for `/api/...` (core group), `false` for `/apis/...`.
    pub core: bool,
    /// The path after `/api` or `/apis`.
    pub rest: String,
    /// The raw query string.
    pub query: Option<String>,
    /// HTTP method.
    pub method: Method,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// Who is asking (from the bearer token, see [`crate::access`]).
    pub user: Arc<UserInfo>,
}

/// Routes an API request and renders any failure as a `Status`.
pub async fn handle(app: &AppState, request: ApiRequest) -> Response {
    dispatch(app, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn dispatch(app: &AppState, request: ApiRequest) -> Result<Response, ApiError> {
    let get_only = |doc: Result<Value, ApiError>| match request.method {
        Method::GET => doc.map(|d| Json(d).into_response()),
        _ => Err(ApiError::method_not_allowed()),
    };
    let api_path = path::parse(request.core, &request.rest)?;
    let query = match (&api_path, &request.method) {
        (ApiPath::Collection { .. } | ApiPath::Watch { .. }, &Method::GET) => {
            Some(ListQuery::parse(request.query.as_deref())?)
        }
        _ => None,
    };
    access::authorize(
        app,
        &request.user,
        &api_path,
        &request.method,
        query.as_ref(),
    )?;
    match api_path {
        ApiPath::Group(group) => get_only(discovery::api_group(&group)),
        ApiPath::Resources { group, version } => {
            get_only(discovery::api_resource_list(&group, &version))
        }
        ApiPath::Collection { def, .. } if def.create_only => match request.method {
            Method::POST => review::create(app, def, &request.body),
            _ => Err(ApiError::method_not_allowed()),
        },
        ApiPath::Object { def, .. } if def.create_only => Err(ApiError::method_not_allowed()),
        ApiPath::Watch {
            def,
            namespace,
            name,
        } => match query {
            Some(query) => {
                let target = Target {
                    def,
                    namespace,
                    name,
                };
                collection_get(app, target, &query, true, &request.user.username).await
            }
            None => Err(ApiError::method_not_allowed()),
        },
        ApiPath::Collection { def, namespace } => match (request.method.clone(), query) {
            (Method::GET, Some(query)) => {
                let target = Target {
                    def,
                    namespace,
                    name: None,
                };
                collection_get(app, target, &query, false, &request.user.username).await
            }
            (Method::POST, _) if namespace.is_some() || !def.namespaced => {
                let object = parse_body(&request.body)?;
                let created = app.store.create(def.plural, namespace.as_deref(), object)?;
                Ok((StatusCode::CREATED, Json(created)).into_response())
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        ApiPath::Object {
            def,
            namespace,
            name,
        } => {
            let ns = namespace.as_deref();
            let object = match request.method {
                Method::GET => app.store.get(def.plural, ns, &name)?,
                Method::PUT => {
                    let object = named_body(&request.body, &name)?;
                    app.store.update(def.plural, ns, object)?
                }
                Method::PATCH => {
                    check_patch_type(&request.headers)?;
                    let patch = parse_body(&request.body)?;
                    app.store.merge_patch(def.plural, ns, &name, &patch)?
                }
                Method::DELETE => {
                    let deleted = app.store.delete(def.plural, ns, &name)?;
                    if !def.delete_returns_object {
                        return Ok(Json(DeleteStatus::new(def, &deleted, &name)).into_response());
                    }
                    deleted
                }
                _ => return Err(ApiError::method_not_allowed()),
            };
            Ok(Json(object).into_response())
        }
    }
}

/// What a LIST or WATCH reads: a type, a namespace scope and, for a legacy
/// `/watch/.../{name}` path, one object.
struct Target {
    def: &'static ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
}

/// A GET on a collection (or a legacy watch path, `force_watch`), in the
/// real handler's order: selectors (400), `ValidateListOptions` (422), then
/// the storage layer (resourceVersion 500, 410, 504).
async fn collection_get(
    app: &AppState,
    target: Target,
    query: &ListQuery,
    force_watch: bool,
    user: &str,
) -> Result<Response, ApiError> {
    let mut filter = filter(target.def, target.namespace, query)?;
    if let Some(name) = target.name {
        filter = filter.with_name(name);
    }
    query.validate()?;
    if query.watch || force_watch {
        start_watch(app, target.def, filter, query, user).await
    } else {
        list(app, target.def, &filter, query).await
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// A PUT body, whose name must match the URL's.
fn named_body(body: &[u8], name: &str) -> Result<Value, ApiError> {
    let mut object = parse_body(body)?;
    match meta_str(&object, "name") {
        Some(body_name) if body_name != name => Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        ))),
        Some(_) => Ok(object),
        None => {
            if let Some(meta) = crate::object::metadata_mut(&mut object) {
                meta.insert("name".into(), name.into());
            }
            Ok(object)
        }
    }
}

/// Merge patches are implemented; strategic merge patches are applied as
/// merge patches (identical except for lists with merge keys).
fn check_patch_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => Ok(()),
        _ => Err(ApiError::unsupported_media_type(content_type)),
    }
}

/// A LIST, with the real server's resourceVersion semantics: unset or `0`
/// is the current state; `R` (match unset or `NotOlderThan`) is the current
/// state once the store has reached `R`; `Exact`, or `R` with a `limit` and
/// no match (the legacy rule), is the state exactly at `R`, paginated at
/// `R`. A version not reached yet is waited for up to [`FRESHNESS_WAIT`]
/// (then 504); a compacted exact version is 410.
async fn list(
    app: &AppState,
    def: &'static ResourceDef,
    filter: &Filter,
    query: &ListQuery,
) -> Result<Response, ApiError> {
    app.metrics.list_requested(def.plural);
    let token = query
        .continue_token
        .as_deref()
        .map(ContinueToken::decode)
        .transpose()?;
    let at = match &token {
        Some(token) => {
            if query
                .resource_version
                .as_deref()
                .is_some_and(|rv| rv != "0")
            {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            ListAt::Continue(token)
        }
        None => match query.resource_version_number()? {
            None | Some(0) => ListAt::Current,
            Some(rv) => {
                app.store
                    .wait_for_resource_version(rv, FRESHNESS_WAIT)
                    .await?;
                let exact = match query.resource_version_match.as_deref() {
                    Some(rv_match) => rv_match == MATCH_EXACT,
                    None => query.limit.is_some_and(|limit| limit > 0),
                };
                if exact {
                    ListAt::Exact(rv)
                } else {
                    ListAt::Current
                }
            }
        },
    };
    let page = app.store.list_page(def, filter, query.limit, at)?;
    let remaining =
        (page.continue_token.is_some() && !filter.has_selectors()).then_some(page.remaining);
    let body = ListBody {
        kind: format!("{}List", def.kind),
        api_version: def.api_version(),
        metadata: ListMeta {
            resource_version: page.rv.to_string(),
            continue_token: page.continue_token,
            remaining_item_count: remaining,
        },
        items: page.items.iter().map(|o| WithoutTypeMeta(o)).collect(),
    };
    Ok(Json(body).into_response())
}

fn filter(
    def: &'static ResourceDef,
    namespace: Option<String>,
    query: &ListQuery,
) -> Result<Filter, ApiError> {
    Filter::new(
        def,
        namespace.as_deref(),
        query.label_selector.as_deref(),
        query.field_selector.as_deref(),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A WATCH. Without `sendInitialEvents`: unset or `0` starts with the
/// current state, `R` replays the events after `R` (waiting, stream open,
/// for a future `R`). `sendInitialEvents=true` sends the state at a version
/// not older than `R` (waited for up to [`FRESHNESS_WAIT`], then a 504
/// Status as an in-band ERROR, as the watch cache does) and the
/// initial-events-end bookmark; `sendInitialEvents=false` with unset or
/// `0` sends only what happens from now on.
async fn start_watch(
    app: &AppState,
    def: &'static ResourceDef,
    filter: Filter,
    query: &ListQuery,
    user: &str,
) -> Result<Response, ApiError> {
    app.metrics.watch_requested(def.plural);
    if let Some(failure) = app.faults.take_watch_failure() {
        tracing::debug!(resource = def.plural, ?failure, "injected watch failure");
        return Err(failure.error());
    }
    let rv = query.resource_version_number()?.filter(|rv| *rv > 0);
    let start = match (query.send_initial_events, rv) {
        (Some(true), rv) => {
            if let Some(rv) = rv
                && let Err(too_large) = app
                    .store
                    .wait_for_resource_version(rv, FRESHNESS_WAIT)
                    .await
            {
                return Ok(watch::error_response(&too_large));
            }
            WatchStart {
                from: WatchFrom::CurrentState,
                min_rv: 0,
                initial_events_end: true,
            }
        }
        (Some(false), None) => WatchStart {
            from: WatchFrom::Latest,
            min_rv: 0,
            initial_events_end: false,
        },
        (None, None) => WatchStart {
            from: WatchFrom::CurrentState,
            min_rv: 0,
            initial_events_end: false,
        },
        (_, Some(rv)) => WatchStart {
            from: WatchFrom::After(rv),
            min_rv: rv,
            initial_events_end: false,
        },
    };
    let timeout = match query.timeout {
        Some(t) if !t.is_zero() => t.min(app.settings.watch_timeout),
        _ => app.settings.watch_timeout,
    };
    Ok(watch::response(WatchSpec {
        store: Arc::clone(&app.store),
        def,
        filter,
        start,
        deadline: tokio::time::Instant::now() + timeout,
        bookmark_interval: query
            .allow_bookmarks
            .then_some(app.settings.bookmark_interval),
        cancel: app.faults.watch_token(),
        stall: app.faults.stall_receiver(),
        guard: app.metrics.watch_opened_by(def.plural, user),
    }))
}

#[derive(Serialize)]
struct ListBody<'a> {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
    metadata: ListMeta,
    items: Vec<WithoutTypeMeta<'a>>,
}

#[derive(Serialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: String,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    continue_token: Option<String>,
    #[serde(rename = "remainingItemCount", skip_serializing_if = "Option::is_none")]
    remaining_item_count: Option<usize>,
}

/// The `Status` of `Success` some types answer DELETE with.
#[derive(Serialize)]
struct DeleteStatus {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Map<String, Value>,
    status: &'static str,
    details: Map<String, Value>,
}

impl DeleteStatus {
    fn new(def: &ResourceDef, deleted: &Value, name: &str) -> Self {
        let mut details = Map::new();
        details.insert("name".into(), name.into());
        if !def.group.is_empty() {
            details.insert("group".into(), def.group.into());
        }
        details.insert("kind".into(), def.plural.into());
        if let Some(uid) = meta_str(deleted, "uid") {
            details.insert("uid".into(), uid.into());
        }
        DeleteStatus {
            kind: "Status",
            api_version: "v1",
            metadata: Map::new(),
            status: "Success",
            details,
        }
    }
}
