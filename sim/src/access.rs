//! Per-request identity and authorization: the authentication middleware
//! (bearer token → [`Identity`] request extension, or 401) and the
//! request-info resolver that turns a resource request into RBAC
//! [`Attributes`] and checks them (403), counting every request under its
//! user so tests can see whose token a client used.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::UserInfo;
use crate::error::ApiError;
use crate::http::AppState;
use crate::path::ApiPath;
use crate::query::ListQuery;
use crate::rbac::Attributes;
use crate::resources::ResourceDef;

/// The authenticated user of a request, inserted by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Identity(pub Arc<UserInfo>);

/// Middleware: resolves the bearer token to an [`Identity`] or answers 401.
/// `/metrics` and the `/_sim/` controls are test tooling and stay open.
pub async fn authenticate(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/metrics" || path == "/_sim" || path.starts_with("/_sim/") {
        return next.run(request).await;
    }
    match app.auth.authenticate(bearer(request.headers())) {
        Some(user) => {
            request.extensions_mut().insert(Identity(Arc::new(user)));
            next.run(request).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The RBAC attributes of a resource request; `None` for discovery, which
/// every authenticated user may read.
pub fn attributes(
    user: &UserInfo,
    path: &ApiPath,
    method: &Method,
    query: Option<&ListQuery>,
) -> Option<(&'static ResourceDef, Attributes)> {
    let (def, namespace, name, verb) = match path {
        ApiPath::Group(_) | ApiPath::Resources { .. } => return None,
        ApiPath::Collection { def, namespace } => {
            let verb = match *method {
                Method::GET if query.is_some_and(|q| q.watch) => "watch",
                Method::GET => "list",
                _ => verb_of(method)?,
            };
            let name = match verb {
                "list" | "watch" => query.and_then(selected_name),
                _ => None,
            };
            (*def, namespace.clone(), name, verb)
        }
        ApiPath::Object {
            def,
            namespace,
            name,
        } => (
            *def,
            own_namespace(def, namespace, Some(name)),
            Some(name.clone()),
            verb_of(method)?,
        ),
        // The legacy `/watch/` prefix is the verb itself; the path's name (not
        // a field selector) names the object, as in the real resolver.
        ApiPath::Watch {
            def,
            namespace,
            name,
        } => (
            *def,
            own_namespace(def, namespace, name.as_ref()),
            name.clone(),
            "watch",
        ),
    };
    Some((
        def,
        Attributes {
            user: user.username.clone(),
            groups: user.groups.clone(),
            verb: verb.to_string(),
            api_group: def.group.to_string(),
            resource: def.plural.to_string(),
            subresource: None,
            namespace,
            name,
        },
    ))
}

/// The namespace of a request: the real resolver treats a namespace object
/// as living in itself.
fn own_namespace(
    def: &ResourceDef,
    namespace: &Option<String>,
    name: Option<&String>,
) -> Option<String> {
    match (def.plural, name) {
        ("namespaces", Some(name)) => Some(name.clone()),
        _ => namespace.clone(),
    }
}

fn verb_of(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => return None,
    })
}

/// `fieldSelector=metadata.name=X` names the object for RBAC, as on the
/// real server, so `resourceNames` rules can allow single-object watches.
fn selected_name(query: &ListQuery) -> Option<String> {
    query
        .field_selector
        .as_deref()?
        .split(',')
        .find_map(|term| {
            let term = term.trim();
            term.strip_prefix("metadata.name==")
                .or_else(|| term.strip_prefix("metadata.name="))
                .map(str::to_string)
        })
}

/// Counts the request under its user and checks it against the rules;
/// discovery paths always pass.
pub fn authorize(
    app: &AppState,
    user: &UserInfo,
    path: &ApiPath,
    method: &Method,
    query: Option<&ListQuery>,
) -> Result<(), ApiError> {
    let Some((def, attrs)) = attributes(user, path, method, query) else {
        return Ok(());
    };
    app.metrics
        .user_request(&attrs.user, &attrs.verb, &attrs.resource);
    if def.create_only && attrs.verb == "create" {
        app.metrics.review_requested(def.plural);
    }
    if app.auth.authorize(&attrs).allowed {
        Ok(())
    } else {
        tracing::debug!(user = %attrs.user, verb = %attrs.verb, resource = %attrs.resource, "forbidden");
        Err(ApiError::forbidden(def, &attrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::parse;

    fn attrs(path: &str, method: Method, query: Option<&str>) -> Option<Attributes> {
        let path = parse(true, path).expect("path");
        let query = query.map(|q| ListQuery::parse(Some(q)).expect("query"));
        attributes(
            &UserInfo::new("u", "", ["g"]),
            &path,
            &method,
            query.as_ref(),
        )
        .map(|(_, a)| a)
    }

    #[test]
    fn resolves_request_info() {
        let a = attrs("v1/namespaces/a/pods", Method::GET, Some("watch=1")).expect("a");
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_deref()),
            ("watch", Some("a"))
        );
        let a = attrs(
            "v1/pods",
            Method::GET,
            Some("fieldSelector=metadata.name%3Dp1"),
        )
        .expect("a");
        assert_eq!((a.verb.as_str(), a.name.as_deref()), ("list", Some("p1")));
        assert_eq!(a.namespace, None);
        let a = attrs("v1/namespaces/x", Method::DELETE, None).expect("a");
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_deref()),
            ("delete", Some("x"))
        );
        assert!(attrs("v1", Method::GET, None).is_none());
        let a = attrs("v1/watch/namespaces/a/pods/p1", Method::GET, None).expect("a");
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_deref(), a.name.as_deref()),
            ("watch", Some("a"), Some("p1"))
        );
        let a = attrs(
            "v1/watch/pods",
            Method::GET,
            Some("fieldSelector=metadata.name%3Dp1"),
        )
        .expect("a");
        assert_eq!((a.verb.as_str(), a.name.as_deref()), ("watch", None));
    }

    #[test]
    fn parses_bearer() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("hv"));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().expect("hv"));
        assert_eq!(bearer(&headers), None);
    }
}
