//! Warm instances, granted by `[warm]` in a plugin's manifest: reused within one tenant,
//! never across tenants, discarded after their allowance or anything abnormal. The hostile
//! `secret-keeper` plugin reports whether its static was already set and which other
//! executions' secrets it finds in its memory, so it shows exactly what a reused instance
//! carries.

use serde_json::{Value, json};
use weir::{ErrorKind, ExecutionRequest, LimitOverrides};
use weir_tests::{PluginFolder, runtime};

/// Runs `secret-keeper` for `tenant` with `secret`, and returns its report.
async fn keep(rt: &weir::Runtime, tenant: &str, secret: &str) -> Value {
    let request =
        ExecutionRequest::new("secret-keeper", json!({ "secret": secret })).tenant(tenant);
    let result = rt.execute(request).await.unwrap();
    assert!(result.ok, "{result:?}");
    assert_eq!(result.state["foundOwn"], true, "the scan works");
    result.state
}

fn warm_folder(manifest: &str) -> PluginFolder {
    let folder = PluginFolder::with(&["secret-keeper"]);
    folder.manifest("secret-keeper", manifest);
    folder
}

#[tokio::test]
async fn a_warm_instance_serves_the_same_tenant_again_and_keeps_its_memory() {
    let folder = warm_folder("[warm]\n");
    let rt = runtime(folder.path()).await;
    let first = keep(&rt, "acme", "aaaa0001").await;
    assert_eq!(first["staticWasSet"], false, "the first instance is new");
    let second = keep(&rt, "acme", "aaaa0002").await;
    // The documented trade: within one tenant, a reused instance still holds what the
    // previous execution left in its memory.
    assert_eq!(second["staticWasSet"], true, "the instance was reused");
    assert!(
        second["found"]
            .as_array()
            .unwrap()
            .contains(&json!("aaaa0001")),
        "{second}"
    );
}

#[tokio::test]
async fn a_warm_instance_never_serves_another_tenant() {
    let folder = warm_folder("[warm]\nmax_idle = 4\n");
    let rt = runtime(folder.path()).await;
    // Several tenants at once, several executions each at once, over many rounds: each
    // tenant's executions may see its own earlier secrets, never another tenant's.
    let tenants: [&'static str; 3] = ["acme", "globex", "initech"];
    let mut runs = tokio::task::JoinSet::new();
    for round in 0..12 {
        for (t, tenant) in tenants.into_iter().enumerate() {
            for i in 0..2 {
                let rt = rt.clone();
                runs.spawn(async move {
                    let secret = format!("t{t}r{round:02}i{i}x");
                    (t, keep(&rt, tenant, &secret).await)
                });
            }
        }
    }
    let mut reused = 0;
    for (t, report) in runs.join_all().await {
        let own_prefix = format!("t{t}");
        for found in report["found"].as_array().unwrap() {
            let found = found.as_str().unwrap();
            assert!(
                found.starts_with(&own_prefix),
                "tenant {} read another tenant's secret {found}",
                tenants[t]
            );
        }
        if report["staticWasSet"] == true {
            reused += 1;
        }
    }
    assert!(reused > 0, "no instance was ever reused");
}

#[tokio::test]
async fn a_warm_instance_is_dropped_after_its_allowance_of_executions() {
    let folder = warm_folder("[warm]\nmax_executions = 3\n");
    let rt = runtime(folder.path()).await;
    let mut reused = Vec::new();
    for i in 0..7 {
        let report = keep(&rt, "acme", &format!("allow{i:03}")).await;
        reused.push(report["staticWasSet"] == true);
    }
    // Three executions per instance: new, reused, reused; then a new instance.
    assert_eq!(reused, [false, true, true, false, true, true, false]);
}

#[tokio::test]
async fn a_trap_discards_the_warm_instance_it_happened_in() {
    let folder = warm_folder("[warm]\n");
    let rt = runtime(folder.path()).await;
    keep(&rt, "acme", "before01").await;
    // Too little fuel: the guest traps in the instance it took from the pool.
    let starved = ExecutionRequest::new("secret-keeper", json!({ "secret": "starved1" }))
        .tenant("acme")
        .limits(LimitOverrides {
            fuel: Some(10_000),
            ..LimitOverrides::default()
        });
    let result = rt.execute(starved).await.unwrap();
    let error = result.error.expect("it ran out of fuel");
    assert_eq!(error.kind, ErrorKind::Resource, "{error:?}");
    let after = keep(&rt, "acme", "after001").await;
    assert_eq!(
        after["staticWasSet"], false,
        "the instance that trapped was reused"
    );
    assert_eq!(after["found"], json!([]), "{after}");
}

#[tokio::test]
async fn without_the_grant_every_execution_gets_a_fresh_instance() {
    let folder = PluginFolder::with(&["secret-keeper"]);
    let rt = runtime(folder.path()).await;
    for i in 0..5 {
        let report = keep(&rt, "acme", &format!("fresh{i:03}")).await;
        assert_eq!(report["staticWasSet"], false);
        assert_eq!(report["found"], json!([]));
    }
}

#[tokio::test]
async fn a_bad_warm_section_rejects_the_plugin_with_the_reason() {
    let folder = warm_folder("[warm]\nmax_executions = 0\n");
    let rt = runtime(folder.path()).await;
    let error = rt
        .run("secret-keeper", json!({ "secret": "whatever" }))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("max_executions"), "{message}");
}
