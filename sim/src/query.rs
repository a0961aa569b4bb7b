//! Query parameters of LIST and WATCH requests, parsed and validated the way
//! the real server does: values that do not decode are 400 BadRequest,
//! combinations apimachinery's `ValidateListOptions` forbids are 422 Invalid,
//! and a `resourceVersion` that is not a `uint64` is the storage layer's 500.

use std::time::Duration;

use crate::error::{ApiError, FieldError};

/// `resourceVersionMatch=Exact`.
pub const MATCH_EXACT: &str = "Exact";
/// `resourceVersionMatch=NotOlderThan`.
pub const MATCH_NOT_OLDER_THAN: &str = "NotOlderThan";

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
    /// `sendInitialEvents`; `Some(false)` when given as false, because the
    /// real server's field is a `*bool` and validation asks whether it was
    /// given at all.
    pub send_initial_events: Option<bool>,
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
                "sendInitialEvents" => q.send_initial_events = Some(parse_bool(&key, &value)?),
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

    /// `resourceVersion` as a number (`Some(0)` for `"0"`, "any"); `None`
    /// when unset. Parsed like Go's `strconv.ParseUint(rv, 10, 64)`: ASCII
    /// digits only (no sign), the first offending character or overflow
    /// decides the error, which is the real server's 500.
    pub fn resource_version_number(&self) -> Result<Option<u64>, ApiError> {
        let Some(raw) = self.resource_version.as_deref() else {
            return Ok(None);
        };
        let mut value: u64 = 0;
        for byte in raw.bytes() {
            if !byte.is_ascii_digit() {
                return Err(ApiError::invalid_resource_version(raw, "invalid syntax"));
            }
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                .ok_or_else(|| ApiError::invalid_resource_version(raw, "value out of range"))?;
        }
        Ok(Some(value))
    }

    /// apimachinery's `ValidateListOptions`: the watch rules when `watch` is
    /// set in the query (also on a legacy `/watch/` path, where the handler
    /// forces a watch only after validating), the list rules otherwise.
    pub fn validate(&self) -> Result<(), ApiError> {
        let errors = if self.watch {
            self.watch_errors()
        } else {
            self.list_errors()
        };
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_list_options(errors))
        }
    }

    fn list_errors(&self) -> Vec<FieldError> {
        const FIELD: &str = "resourceVersionMatch";
        let mut errors = Vec::new();
        if let Some(rv_match) = self.resource_version_match.as_deref() {
            if self.resource_version.is_none() {
                errors.push(FieldError::forbidden(
                    FIELD,
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if self.continue_token.is_some() {
                errors.push(FieldError::forbidden(
                    FIELD,
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if rv_match != MATCH_EXACT && rv_match != MATCH_NOT_OLDER_THAN {
                errors.push(FieldError::not_supported(
                    FIELD,
                    rv_match,
                    &[MATCH_EXACT, MATCH_NOT_OLDER_THAN, ""],
                ));
            }
            if rv_match == MATCH_EXACT && self.resource_version.as_deref() == Some("0") {
                errors.push(FieldError::forbidden(
                    FIELD,
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if self.send_initial_events.is_some() {
            errors.push(FieldError::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            ));
        }
        errors
    }

    fn watch_errors(&self) -> Vec<FieldError> {
        const FIELD: &str = "resourceVersionMatch";
        let mut errors = Vec::new();
        let rv_match = self.resource_version_match.as_deref();
        if self.send_initial_events.is_some() && rv_match != Some(MATCH_NOT_OLDER_THAN) {
            errors.push(FieldError::forbidden(
                FIELD,
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if let Some(rv_match) = rv_match {
            if self.send_initial_events.is_none() {
                errors.push(FieldError::forbidden(
                    FIELD,
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if rv_match != MATCH_NOT_OLDER_THAN {
                errors.push(FieldError::not_supported(
                    FIELD,
                    rv_match,
                    &[MATCH_NOT_OLDER_THAN],
                ));
            }
            if self.continue_token.is_some() {
                errors.push(FieldError::forbidden(
                    FIELD,
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
        errors
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
        assert_eq!(q.send_initial_events, None);
        assert_eq!(q.resource_version_number(), Ok(Some(12)));
        assert_eq!(q.timeout, Some(Duration::from_secs(5)));
        assert_eq!(q.label_selector.as_deref(), Some("app=web"));
        assert!(ListQuery::parse(Some("watch=yes")).is_err());
        assert!(ListQuery::parse(Some("limit=-1")).is_err());
        let zero = ListQuery::parse(Some("resourceVersion=0")).expect("parse");
        assert_eq!(zero.resource_version_number(), Ok(Some(0)));
        let unset = ListQuery::parse(Some("resourceVersion=")).expect("parse");
        assert_eq!(unset.resource_version_number(), Ok(None));
        let given = ListQuery::parse(Some("sendInitialEvents=false")).expect("parse");
        assert_eq!(given.send_initial_events, Some(false));
    }

    #[test]
    fn resource_versions_parse_like_go_parse_uint() {
        let rv = |raw: &str| {
            ListQuery {
                resource_version: Some(raw.into()),
                ..ListQuery::default()
            }
            .resource_version_number()
        };
        assert_eq!(rv("007"), Ok(Some(7)));
        assert_eq!(rv("18446744073709551615"), Ok(Some(u64::MAX)));
        for (raw, problem) in [
            ("abc", "invalid syntax"),
            ("-1", "invalid syntax"),
            ("+1", "invalid syntax"),
            ("1 ", "invalid syntax"),
            ("18446744073709551616", "value out of range"),
            ("99999999999999999999x", "value out of range"),
            ("1x99999999999999999999", "invalid syntax"),
        ] {
            let err = rv(raw).expect_err(raw);
            assert_eq!((err.code, err.reason), (500, ""), "{raw}");
            assert!(err.message.ends_with(problem), "{raw}: {}", err.message);
        }
    }

    #[test]
    fn validation_follows_validate_list_options() {
        let causes = |raw: &str| -> Vec<String> {
            match ListQuery::parse(Some(raw)).expect("parse").validate() {
                Ok(()) => Vec::new(),
                Err(err) => {
                    assert_eq!((err.code, err.reason), (422, "Invalid"), "{raw}");
                    err.details
                        .map(|d| d.causes.into_iter().map(|c| c.message).collect())
                        .unwrap_or_default()
                }
            }
        };
        assert!(
            causes("watch=1&sendInitialEvents=false&resourceVersionMatch=NotOlderThan").is_empty()
        );
        assert!(causes("resourceVersion=5&resourceVersionMatch=Exact&limit=2").is_empty());
        assert!(causes("resourceVersion=0&resourceVersionMatch=NotOlderThan").is_empty());
        assert_eq!(
            causes("watch=1&resourceVersionMatch=Exact"),
            [
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                "Unsupported value: \"Exact\": supported values: \"NotOlderThan\"",
            ]
        );
        assert_eq!(
            causes("resourceVersionMatch=X&continue=t"),
            [
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                "Forbidden: resourceVersionMatch is forbidden when continue is provided",
                "Unsupported value: \"X\": supported values: \"Exact\", \"NotOlderThan\", \"\"",
            ]
        );
    }
}
