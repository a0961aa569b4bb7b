//! [`SimServer`] helpers that tell tests whose token made which requests, so
//! a proxy's use of per-user credentials (and its caching of reviews) can be
//! asserted from the server side.

use crate::SimServer;

impl SimServer {
    /// Authenticated resource requests (any verb, allowed or denied) made
    /// with `user`'s token. Discovery, `/version`, `/metrics` and `/_sim/`
    /// are not counted. With authentication disabled every request is
    /// counted under [`crate::auth::ADMIN_USER`].
    pub fn requests_by(&self, user: &str) -> u64 {
        self.metrics().requests_by(user)
    }

    /// Requests by `user` with `verb` on `resource` (plural).
    pub fn requests_by_verb(&self, user: &str, verb: &str, resource: &str) -> u64 {
        self.metrics().requests_by_verb(user, verb, resource)
    }

    /// WATCH requests on `resource` made with `user`'s token.
    pub fn watch_requests_by(&self, user: &str, resource: &str) -> u64 {
        self.requests_by_verb(user, "watch", resource)
    }

    /// LIST requests on `resource` made with `user`'s token.
    pub fn list_requests_by(&self, user: &str, resource: &str) -> u64 {
        self.requests_by_verb(user, "list", resource)
    }

    /// Watch streams on `resource` currently open for `user`.
    pub fn active_watches_by(&self, user: &str, resource: &str) -> i64 {
        self.metrics().active_watches_by(user, resource)
    }

    /// TokenReview / SubjectAccessReview requests received (authenticated,
    /// allowed or not). `kind` is the plural (`tokenreviews`) or the kind
    /// (`TokenReview`).
    pub fn review_requests(&self, kind: &str) -> u64 {
        let plural = match kind {
            "TokenReview" => "tokenreviews",
            "SubjectAccessReview" => "subjectaccessreviews",
            other => other,
        };
        self.metrics().review_requests(plural)
    }
}
