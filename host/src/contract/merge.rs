//! The default merge of parallel branches: each branch's changes, relative to the shared
//! input, applied in declared order. Objects merge deeply; an array a branch extended gets
//! the new elements appended (so two branches that each add an item keep both); a value a
//! branch removed is removed; any other change replaces the value (the last branch wins).

use serde_json::{Map, Value};

/// Merges `branches` (each the output of one branch run on `input`) into one state.
pub fn merge_branches<'a>(
    input: &Map<String, Value>,
    branches: impl IntoIterator<Item = &'a Map<String, Value>>,
) -> Map<String, Value> {
    let mut merged = input.clone();
    for branch in branches {
        apply_changes(&mut merged, input, branch);
    }
    merged
}

fn apply_changes(
    target: &mut Map<String, Value>,
    input: &Map<String, Value>,
    branch: &Map<String, Value>,
) {
    for (key, after) in branch {
        if key == "metadata" {
            continue;
        }
        let before = input.get(key);
        if before == Some(after) {
            continue;
        }
        match (before, after, target.get_mut(key)) {
            (Some(Value::Object(before)), Value::Object(after), Some(Value::Object(current))) => {
                apply_changes(current, before, after);
            }
            (Some(Value::Array(before)), Value::Array(after), Some(Value::Array(current)))
                if after.len() > before.len() && after.starts_with(before) =>
            {
                current.extend(after[before.len()..].iter().cloned());
            }
            _ => {
                target.insert(key.clone(), after.clone());
            }
        }
    }
    for key in input.keys() {
        if key != "metadata" && !branch.contains_key(key) {
            target.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn appended_array_items_from_every_branch_are_kept_in_order() {
        let input = obj(json!({"items": [1]}));
        let a = obj(json!({"items": [1, "a"]}));
        let b = obj(json!({"items": [1, "b"]}));
        let c = obj(json!({"items": [1, "c1", "c2"]}));
        let merged = merge_branches(&input, [&a, &b, &c]);
        assert_eq!(
            Value::Object(merged),
            json!({"items": [1, "a", "b", "c1", "c2"]})
        );
    }

    #[test]
    fn objects_merge_deeply_and_scalars_take_the_last_change() {
        let input = obj(json!({"user": {"name": "ada", "age": 36}, "n": 0, "keep": true}));
        let a = obj(json!({"user": {"name": "ada", "age": 37}, "n": 1, "keep": true}));
        let b = obj(
            json!({"user": {"name": "ada", "age": 36, "city": "london"}, "n": 2, "keep": true}),
        );
        let merged = merge_branches(&input, [&a, &b]);
        assert_eq!(
            Value::Object(merged),
            json!({"user": {"name": "ada", "age": 37, "city": "london"}, "n": 2, "keep": true})
        );
    }

    #[test]
    fn unchanged_values_do_not_overwrite_other_branches_changes() {
        let input = obj(json!({"count": 1, "greeting": null}));
        let increment = obj(json!({"count": 2, "greeting": null}));
        let hello = obj(json!({"count": 1, "greeting": "hi"}));
        let merged = merge_branches(&input, [&increment, &hello]);
        assert_eq!(Value::Object(merged), json!({"count": 2, "greeting": "hi"}));
    }

    #[test]
    fn a_removed_field_is_removed_and_metadata_is_left_to_the_host() {
        let input = obj(json!({"a": 1, "b": 2, "metadata": {"version": 3}}));
        let branch = obj(json!({"a": 1, "metadata": {"version": 99}}));
        let merged = merge_branches(&input, [&branch]);
        assert_eq!(
            Value::Object(merged),
            json!({"a": 1, "metadata": {"version": 3}})
        );
    }

    #[test]
    fn a_rewritten_array_replaces_rather_than_appends() {
        let input = obj(json!({"items": [1, 2]}));
        let branch = obj(json!({"items": [3]}));
        let merged = merge_branches(&input, [&branch]);
        assert_eq!(Value::Object(merged), json!({"items": [3]}));
    }
}
