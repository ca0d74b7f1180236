//! The dashboard at `/`, in headless Chromium: it shows the plugins, runs one with its own
//! button, and shows the execution completing live; its overview's charts follow a load;
//! a graph workflow is drawn with every node, and its run lights them up. The screenshot is kept in
//! `target/screenshots/dashboard.png` (a CI artifact). Behind `serve --redis`, the graph
//! follows a run whose steps run on a worker. Needs Debian's `chromium` (CI
//! installs it; `WEIR_CHROMIUM` names another) and the Node packages of `tests/node`.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_tests::{PluginFolder, WeirProcess};

fn chromium() -> PathBuf {
    let path = std::env::var_os("WEIR_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "no Chromium at {} (Debian: apt-get install chromium; or set WEIR_CHROMIUM)",
        path.display()
    );
    path
}

/// Runs `tests/node/SCRIPT` on the dashboard at `url` with the screenshot path
/// `target/screenshots/SHOT` and `extra` arguments; asserts that it printed `ok` (e.g.
/// `dashboard ok`) and saved a screenshot.
fn browser_test(script: &str, url: &str, shot: &str, extra: &[&Path], ok: &str) {
    let browser = chromium();
    let node = weir_tests::node_project();
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let screenshot = screenshots.join(shot);
    let _ = std::fs::remove_file(&screenshot);
    let output = Command::new("node")
        .arg(node.join(script))
        .arg(format!("{url}/"))
        .arg(&screenshot)
        .args(extra)
        .env("CHROMIUM", &browser)
        .current_dir(&node)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(ok),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "no screenshot"
    );
}

/// A dependency graph whose `review` node runs only when /needsReview is truthy.
const PIPELINE: &[u8] = br#"[workflow.pipeline]
graph = { fetch = { run = "increment" }, parse = { after = ["fetch"], run = "double" }, review = { after = ["parse"], if = "/needsReview", run = "hello" }, store = { after = ["parse"], run = "add-ten" } }
"#;

#[test]
fn the_dashboard_shows_plugins_and_an_execution_completing_live() {
    let folder = PluginFolder::with(&["hello", "increment", "double", "add-ten"]);
    folder.write("workflows.toml", PIPELINE);
    let (_server, url) = WeirProcess::serve(folder.path(), &["--allow-plugin-install"]);
    let component = weir_tests::plugin_path("increment");
    browser_test(
        "dashboard.mjs",
        &url,
        "dashboard.png",
        &[&component],
        "dashboard ok",
    );
}

#[test]
fn a_failed_runs_page_shows_its_failed_step_and_its_retry_succeeds() {
    let folder = PluginFolder::with(&["increment", "flaky"]);
    // One attempt only: `flaky` fails its first.
    folder.manifest("flaky", "[retry]\nmax_attempts = 1\n");
    folder.write(
        "workflows.toml",
        b"[workflow.shaky]\nchain = [\"increment\", \"flaky\"]\n\n\
          [workflow.tolerant]\nparallel = [\"increment\", \"flaky\"]\n\
          on_failure = { flaky = \"ignore\" }\n",
    );
    let manifest = folder.path().join("flaky.toml");
    assert!(manifest.exists(), "the manifest sits beside the component");
    let (_server, url) = WeirProcess::serve(folder.path(), &[]);
    browser_test("runs.mjs", &url, "run.png", &[&manifest], "runs ok");
}

#[test]
fn a_tenants_token_shows_only_its_own_jobs_and_counters() {
    let folder = PluginFolder::with(&["hello", "increment"]);
    let config = crate::fleet::two_tenants(&folder);
    let (_server, url) = WeirProcess::serve(folder.path(), &["--config", &config]);
    browser_test("tenants.mjs", &url, "tenant.png", &[], "tenants ok");
}

/// Behind `serve --redis` the workflow's steps run on a worker, and the console's graph
/// follows the run all the same: the run's own start and end reach the server's events.
#[test]
fn the_graph_follows_a_run_whose_steps_run_on_the_fleet() {
    let redis = weir_tests::RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["hello", "increment", "double", "add-ten"]);
    folder.write("workflows.toml", PIPELINE);
    let _worker = weir_tests::WorkerProcess::start(&url, folder.path(), &[]);
    let (_server, api) = WeirProcess::serve(folder.path(), &["--redis", &url]);
    browser_test("graph.mjs", &api, "fleet-graph.png", &[], "graph ok");
}

/// The console's schedules: behind `serve --redis`, a schedule the folder declares shows
/// its next tick, then its latest tick and the run the fleet's worker started for it; one
/// added through the API shows and its Remove button removes it.
#[test]
fn the_console_shows_each_schedules_next_and_latest_ticks() {
    let redis = weir_tests::RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["tally", "increment"]);
    folder.write(
        "workflows.toml",
        b"[schedule.beat]\nrun = \"tally\"\nsession = \"beats\"\nevery_ms = 1000\n",
    );
    let _worker = weir_tests::WorkerProcess::start(&url, folder.path(), &[]);
    let (_server, api) = WeirProcess::serve(folder.path(), &["--redis", &url]);
    browser_test("schedules.mjs", &api, "schedules.png", &[], "schedules ok");
}
