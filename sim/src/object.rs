//! Small helpers over JSON objects: reading and writing `metadata` fields and
//! RFC 7386 merge patches. Objects stay `serde_json::Value` so any resource
//! type can be stored without a schema.

use serde_json::{Map, Value};

/// `metadata.<field>` as a string, if present.
pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// The object's `metadata` map, created if missing; `None` if the object or
/// its metadata is not a JSON object.
pub fn metadata_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    object
        .as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
}

/// Writes `metadata.resourceVersion` (a decimal string, as etcd-backed
/// servers do).
pub fn set_resource_version(object: &mut Value, rv: u64) {
    if let Some(meta) = metadata_mut(object) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// Applies an RFC 7386 JSON merge patch to `target` in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Serialises an object without its `kind` and `apiVersion`, as the real
/// server writes the items of a LIST.
pub struct WithoutTypeMeta<'a>(pub &'a Value);

impl serde::Serialize for WithoutTypeMeta<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0 {
            Value::Object(map) => {
                let mut out = serializer.serialize_map(None)?;
                for (k, v) in map
                    .iter()
                    .filter(|(k, _)| *k != "kind" && *k != "apiVersion")
                {
                    out.serialize_entry(k, v)?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
        let mut scalar = json!("x");
        merge_patch(&mut scalar, &json!({"a": null, "b": 1}));
        assert_eq!(scalar, json!({"b": 1}));
    }

    #[test]
    fn strips_type_meta() {
        let obj = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "a"}});
        let text = serde_json::to_string(&WithoutTypeMeta(&obj)).expect("serialise");
        assert_eq!(text, r#"{"metadata":{"name":"a"}}"#);
    }
}
