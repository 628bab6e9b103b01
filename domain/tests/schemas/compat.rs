//! Whether a new schema of an existing event version could break a consumer or a stored event.
//!
//! An event version is a contract: events of that version are stored forever and consumers
//! were written against its schema. So a version's schema may only gain documentation and new
//! optional fields. Everything else is reported: a removed (or renamed) field, a field that
//! became required, a changed type (narrowed: stored events no longer validate; widened:
//! consumers get values they cannot handle), a changed constraint, constant or format. The way
//! to make such a change is a new version with an upcaster (`edupulse_domain::upcast`).
//!
//! The comparison walks the two documents side by side, following local `$ref`s into each
//! document's own `$defs` (the only references the generated schemas hold).

use serde_json::{Map, Value};

/// Keywords that only document: changing them breaks nobody.
const DOCUMENTATION: &[&str] = &[
    "$schema",
    "$id",
    "title",
    "description",
    "examples",
    "$comment",
    "$defs",
    "deprecated",
];

/// Keywords compared structurally below; every other keyword must stay equal.
const STRUCTURAL: &[&str] = &["properties", "required", "$ref", "items"];

/// The changes from `old` to `new` that could break a consumer or a stored event, each as a
/// sentence naming where it is (a JSON pointer into the schema). Empty: compatible.
pub(crate) fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut changes = Vec::new();
    compare(
        Side { root: old, at: old },
        Side { root: new, at: new },
        "",
        &mut changes,
    );
    changes
}

/// A schema, with the document it belongs to (for `$ref`).
#[derive(Clone, Copy)]
struct Side<'a> {
    root: &'a Value,
    at: &'a Value,
}

impl<'a> Side<'a> {
    /// Follows a local `$ref` (`#/$defs/Name`), as many times as it takes.
    fn resolved(self) -> Side<'a> {
        let mut at = self.at;
        for _ in 0..16 {
            let Some(pointer) = at.get("$ref").and_then(Value::as_str) else {
                break;
            };
            match pointer.strip_prefix('#').and_then(|p| self.root.pointer(p)) {
                Some(target) => at = target,
                None => break,
            }
        }
        Side {
            root: self.root,
            at,
        }
    }

    fn object(self) -> Option<&'a Map<String, Value>> {
        self.at.as_object()
    }

    fn get(self, key: &str) -> Option<Side<'a>> {
        self.at.get(key).map(|at| Side {
            root: self.root,
            at,
        })
    }
}

fn compare(old: Side<'_>, new: Side<'_>, path: &str, changes: &mut Vec<String>) {
    let (old, new) = (old.resolved(), new.resolved());
    let (Some(old_map), Some(new_map)) = (old.object(), new.object()) else {
        if old.at != new.at {
            changes.push(format!(
                "{path}: the schema changed from {} to {}",
                old.at, new.at
            ));
        }
        return;
    };

    // Types: any change is breaking, and worth a precise word.
    let types = |m: &Map<String, Value>| -> Vec<String> {
        match m.get("type") {
            Some(Value::String(t)) => vec![t.clone()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    };
    let (old_types, new_types) = (types(old_map), types(new_map));
    if old_types != new_types {
        let narrowed = old_types.iter().any(|t| {
            !(new_types.contains(t) || t == "integer" && new_types.iter().any(|n| n == "number"))
        });
        let how = if new_types.is_empty() || !narrowed {
            "widened"
        } else {
            "narrowed"
        };
        changes.push(format!(
            "{path}: type {how} from {old_types:?} to {new_types:?}"
        ));
    }

    // Every other constraint keyword must be unchanged (added, removed or changed).
    let keys: std::collections::BTreeSet<&String> = old_map.keys().chain(new_map.keys()).collect();
    for key in keys {
        let key = key.as_str();
        if key == "type" || DOCUMENTATION.contains(&key) || STRUCTURAL.contains(&key) {
            continue;
        }
        match (old_map.get(key), new_map.get(key)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => changes.push(format!("{path}: `{key}` changed from {a} to {b}")),
            (Some(a), None) => changes.push(format!("{path}: `{key}` ({a}) removed")),
            (None, Some(b)) => changes.push(format!("{path}: `{key}` ({b}) added")),
            (None, None) => {}
        }
    }

    // Required fields: none may be added (stored events lack it), none may become optional
    // (consumers rely on it).
    let required = |m: &Map<String, Value>| -> Vec<String> {
        m.get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (old_required, new_required) = (required(old_map), required(new_map));
    for field in &new_required {
        if !old_required.contains(field) {
            changes.push(format!("{path}: new required field `{field}`"));
        }
    }
    for field in &old_required {
        if !new_required.contains(field) {
            changes.push(format!("{path}: field `{field}` no longer required"));
        }
    }

    // Properties: none may be removed; the common ones compare recursively. New ones (optional,
    // as checked above) are the one allowed extension.
    let empty = Map::new();
    let old_properties = old
        .get("properties")
        .and_then(Side::object)
        .unwrap_or(&empty);
    for name in old_properties.keys() {
        let (Some(a), Some(b)) = (
            old.get("properties").and_then(|p| p.get(name)),
            new.get("properties").and_then(|p| p.get(name)),
        ) else {
            changes.push(format!("{path}: field `{name}` removed (or renamed)"));
            continue;
        };
        compare(a, b, &format!("{path}/properties/{name}"), changes);
    }

    match (old.get("items"), new.get("items")) {
        (Some(a), Some(b)) => compare(a, b, &format!("{path}/items"), changes),
        (None, None) => {}
        _ => changes.push(format!("{path}: `items` added or removed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(properties: Value, required: Value) -> Value {
        json!({
            "type": "object",
            "properties": { "event": { "type": "object", "properties": {
                "payload": { "$ref": "#/$defs/P" } } } },
            "$defs": { "P": { "type": "object", "properties": properties, "required": required } }
        })
    }

    fn base() -> Value {
        payload(
            json!({
                "id": { "type": "string", "format": "uuid" },
                "score": { "type": "number", "minimum": 0 },
                "note": { "type": ["string", "null"] }
            }),
            json!(["id", "score"]),
        )
    }

    #[test]
    fn documentation_and_new_optional_fields_are_compatible() {
        let mut new = base();
        new["$defs"]["P"]["properties"]["id"]["description"] = json!("the id");
        new["$defs"]["P"]["properties"]["extra"] = json!({ "type": "string" });
        assert_eq!(breaking_changes(&base(), &new), Vec::<String>::new());
    }

    #[test]
    fn removed_or_renamed_fields_break() {
        let new = payload(
            json!({
                "identifier": { "type": "string", "format": "uuid" },
                "score": { "type": "number", "minimum": 0 },
                "note": { "type": ["string", "null"] }
            }),
            json!(["score"]),
        );
        let changes = breaking_changes(&base(), &new);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            changes.iter().any(|c| c.contains("field `id` removed")),
            "{changes:?}"
        );
        assert!(
            changes
                .iter()
                .any(|c| c.contains("`id` no longer required")),
            "{changes:?}"
        );
    }

    #[test]
    fn new_required_fields_break() {
        let mut new = base();
        new["$defs"]["P"]["required"] = json!(["id", "score", "note"]);
        let changes = breaking_changes(&base(), &new);
        assert_eq!(
            changes,
            vec!["/properties/event/properties/payload: new required field `note`"]
        );
    }

    #[test]
    fn narrowed_and_widened_types_break() {
        let mut narrowed = base();
        narrowed["$defs"]["P"]["properties"]["score"]["type"] = json!("integer");
        narrowed["$defs"]["P"]["properties"]["note"]["type"] = json!("string");
        let changes = breaking_changes(&base(), &narrowed);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            changes.iter().all(|c| c.contains("narrowed")),
            "{changes:?}"
        );

        let mut widened = base();
        widened["$defs"]["P"]["properties"]["note"]["type"] = json!(["string", "null", "number"]);
        let changes = breaking_changes(&base(), &widened);
        assert!(changes[0].contains("widened"), "{changes:?}");
    }

    #[test]
    fn changed_constraints_break() {
        let mut new = base();
        new["$defs"]["P"]["properties"]["score"]["minimum"] = json!(1);
        new["$defs"]["P"]["properties"]["id"]["format"] = json!("uri");
        assert_eq!(breaking_changes(&base(), &new).len(), 2);
    }
}
