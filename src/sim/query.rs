//! Query parameters of LIST and WATCH requests, parsed and validated the way
//! the real server does (bad values are 400 BadRequest).

use std::time::Duration;

use crate::sim::error::ApiError;

/// The query parameters the simulator understands; others are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// `watch=1|true`: stream events instead of listing.
    pub watch: bool,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch` (`Exact`, `NotOlderThan`).
    pub resource_version_match: Option<String>,
    /// `allowWatchBookmarks`.
    pub allow_bookmarks: bool,
    /// `sendInitialEvents`.
    pub send_initial_events: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `limit` (0 means no limit).
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<String>,
}

impl ListQuery {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = ListQuery::default();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let value = value.into_owned();
            let non_empty = (!value.is_empty()).then(|| value.clone());
            match key.as_ref() {
                "watch" => q.watch = parse_bool(&key, &value)?,
                "resourceVersion" => q.resource_version = non_empty,
                "resourceVersionMatch" => q.resource_version_match = non_empty,
                "allowWatchBookmarks" => q.allow_bookmarks = parse_bool(&key, &value)?,
                "sendInitialEvents" => q.send_initial_events = parse_bool(&key, &value)?,
                "timeoutSeconds" => q.timeout = Some(Duration::from_secs(parse_num(&key, &value)?)),
                "labelSelector" => q.label_selector = non_empty,
                "fieldSelector" => q.field_selector = non_empty,
                "limit" => q.limit = Some(parse_num(&key, &value)?),
                "continue" => q.continue_token = non_empty,
                _ => {}
            }
        }
        Ok(q)
    }

    /// `resourceVersion` as a number; `None` when unset or `"0"`.
    pub fn resource_version_number(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(None),
            Some(rv) => rv
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}"))),
        }
    }
}

/// Go's `strconv.ParseBool`, which the real server uses; empty means false.
fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "invalid value for {key}: {value:?}"
        ))),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watch_parameters() {
        let q = ListQuery::parse(Some(
            "watch=1&resourceVersion=12&allowWatchBookmarks=true&timeoutSeconds=5&labelSelector=app%3Dweb",
        ))
        .expect("parse");
        assert!(q.watch && q.allow_bookmarks);
        assert_eq!(q.resource_version_number(), Ok(Some(12)));
        assert_eq!(q.timeout, Some(Duration::from_secs(5)));
        assert_eq!(q.label_selector.as_deref(), Some("app=web"));
        assert!(ListQuery::parse(Some("watch=yes")).is_err());
        assert!(ListQuery::parse(Some("limit=-1")).is_err());
        let zero = ListQuery::parse(Some("resourceVersion=0")).expect("parse");
        assert_eq!(zero.resource_version_number(), Ok(None));
    }
}
