//! A LIST answered from a shared watch's store, as the API server would
//! answer it: which requests the store may answer, and the list's JSON.

use super::key::ListParams;
use super::store::Snapshot;

/// A LIST answered from a shared watch's store.
#[derive(Clone, Debug)]
pub struct CachedList {
    /// Kind of the items (`Pod`).
    pub item_kind: String,
    /// Their apiVersion.
    pub api_version: String,
    /// The version the store is at.
    pub resource_version: String,
    /// Each object's raw JSON.
    pub items: Vec<bytes::Bytes>,
}

impl CachedList {
    /// The list as the API server writes it (`{"kind":"PodList",…}`): its
    /// items without their own `kind` and `apiVersion`, which the list's
    /// carry (the watch events they came from have them).
    pub fn to_json(&self) -> Vec<u8> {
        let head = serde_json::json!({
            "kind": format!("{}List", self.item_kind),
            "apiVersion": self.api_version,
            "metadata": {"resourceVersion": self.resource_version},
        })
        .to_string();
        let mut out = Vec::with_capacity(
            head.len() + self.items.iter().map(|i| i.len() + 1).sum::<usize>() + 16,
        );
        out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        out.extend_from_slice(b",\"items\":[");
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match without_type_meta(item) {
                Some(stripped) => out.extend_from_slice(&stripped),
                None => out.extend_from_slice(item),
            }
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// An object's JSON without its top-level `kind` and `apiVersion`; the
/// other fields are copied as they are, unparsed.
fn without_type_meta(object: &[u8]) -> Option<Vec<u8>> {
    let raw: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(object).ok()?;
    let mut out = Vec::with_capacity(object.len());
    out.push(b'{');
    let mut first = true;
    for (name, value) in raw {
        if name == "kind" || name == "apiVersion" {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut out, &name).ok()?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Some(out)
}

/// The answer to a LIST with `params` from `snapshot`, when it is the one
/// the API server would give (see [`super::Hub::cached_list`]); `None`
/// when only the cluster can answer.
pub(super) fn answer(params: &ListParams, snapshot: Snapshot) -> Option<CachedList> {
    if params.limit.is_some_and(|limit| limit > 0) || params.continue_token.is_some() {
        return None;
    }
    if let Some(asked) = params.resource_version.as_deref().filter(|rv| *rv != "0") {
        let (Ok(asked), Ok(have)) = (
            asked.parse::<u64>(),
            snapshot.resource_version.parse::<u64>(),
        ) else {
            return None;
        };
        let answers = match params.resource_version_match.as_deref() {
            Some("Exact") => have == asked,
            _ => have >= asked,
        };
        if !answers {
            return None;
        }
    }
    Some(CachedList {
        item_kind: snapshot.item_kind,
        api_version: snapshot.api_version,
        resource_version: snapshot.resource_version,
        items: snapshot
            .objects
            .iter()
            .map(|event| event.object().clone())
            .collect(),
    })
}
