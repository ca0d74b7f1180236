//! The JSON shapes of plugin and workflow listings: one definition shared by `weir plugins`,
//! `weir workflows` and the HTTP API, so every surface describes them alike.

use serde_json::{Value, json};

use crate::execution::registry::{Catalog, Rejection};
use crate::sandbox::plugin::Plugin;

impl Plugin {
    /// One row of a plugin listing: `{name, status: "loaded", version, digest, warm}`.
    pub fn summary_json(&self) -> Value {
        json!({
            "name": self.name(),
            "status": "loaded",
            "version": self.version(),
            "digest": self.digest(),
            "warm": self.manifest().warm.is_some(),
        })
    }

    /// Everything about the plugin: its summary plus description, path, size, world,
    /// resolved limits, what it declared, its retry policy, the operator manifest and how
    /// it was compiled.
    pub fn detail_json(&self) -> Value {
        let mut doc = self.summary_json();
        let d = self.description();
        doc["description"] = json!(d.description);
        doc["path"] = json!(self.path());
        doc["sizeBytes"] = json!(self.size_bytes());
        doc["world"] = json!(self.world());
        doc["limits"] = json!(self.limits());
        doc["declared"] = json!({ "limits": d.limits, "retry": d.retry, "queue": d.queue });
        doc["retry"] = json!(self.retry());
        doc["manifest"] = json!(self.manifest());
        doc["compile"] = json!({
            "fromCache": self.compiled_from_cache(),
            "ms": self.compile_time().as_secs_f64() * 1000.0,
        });
        doc
    }
}

impl Rejection {
    /// A rejected file as a listing row: `{name, status: "rejected", path, reason}`.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "status": "rejected",
            "path": self.path,
            "reason": self.reason,
        })
    }
}

impl Catalog {
    /// Every loaded plugin and every rejected file, sorted by name.
    pub fn plugin_listing(&self) -> Vec<Value> {
        let mut rows: Vec<Value> = self.plugins.values().map(|p| p.summary_json()).collect();
        rows.extend(self.rejected.values().map(Rejection::to_json));
        sort_by_name(&mut rows);
        rows
    }

    /// Every workflow, valid (`{name, status: "valid", kind, definition, digest,
    /// location}`) or not (`{name, status: "invalid", reason}`), sorted by name.
    pub fn workflow_listing(&self) -> Vec<Value> {
        let mut rows: Vec<Value> = self
            .workflows
            .values()
            .map(|w| {
                json!({
                    "name": w.name(),
                    "status": "valid",
                    "kind": w.kind(),
                    "definition": w.as_ref(),
                    "digest": w.digest(),
                    "location": w.location(),
                })
            })
            .collect();
        rows.extend(
            self.invalid_workflows
                .values()
                .map(|w| json!({ "name": w.name, "status": "invalid", "reason": w.reason })),
        );
        sort_by_name(&mut rows);
        rows
    }
}

fn sort_by_name(rows: &mut [Value]) {
    rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
}
