//! The dashboard at `/`, in headless Chromium: it shows the plugins, runs one with its own
//! button, and shows the execution completing live; its overview's charts follow a load;
//! a graph workflow is drawn with every node, and its run lights them up. The screenshot is kept in
//! `target/screenshots/dashboard.png` (a CI artifact). Needs Debian's `chromium` (CI
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

#[test]
fn the_dashboard_shows_plugins_and_an_execution_completing_live() {
    let browser = chromium();
    let folder = PluginFolder::with(&["hello", "increment", "double", "add-ten"]);
    // A dependency graph whose `review` node runs only when /needsReview is truthy.
    folder.write(
        "workflows.toml",
        br#"[workflow.pipeline]
graph = { fetch = { run = "increment" }, parse = { after = ["fetch"], run = "double" }, review = { after = ["parse"], if = "/needsReview", run = "hello" }, store = { after = ["parse"], run = "add-ten" } }
"#,
    );
    let (_server, url) = WeirProcess::serve(folder.path(), &[]);
    let node = weir_tests::node_project();
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let screenshot = screenshots.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = Command::new("node")
        .arg(node.join("dashboard.mjs"))
        .arg(format!("{url}/"))
        .arg(&screenshot)
        .env("CHROMIUM", &browser)
        .current_dir(&node)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("dashboard ok"),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "no screenshot"
    );
}

#[test]
fn a_failed_runs_page_shows_its_failed_step_and_its_retry_succeeds() {
    let browser = chromium();
    let folder = PluginFolder::with(&["increment", "flaky"]);
    // One attempt only: `flaky` fails its first.
    folder.manifest("flaky", "[retry]\nmax_attempts = 1\n");
    folder.write(
        "workflows.toml",
        b"[workflow.shaky]\nchain = [\"increment\", \"flaky\"]\n",
    );
    let manifest = folder.path().join("flaky.toml");
    assert!(manifest.exists(), "the manifest sits beside the component");
    let (_server, url) = WeirProcess::serve(folder.path(), &[]);
    let node = weir_tests::node_project();
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let screenshot = screenshots.join("run.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = Command::new("node")
        .arg(node.join("runs.mjs"))
        .arg(format!("{url}/"))
        .arg(&screenshot)
        .arg(&manifest)
        .env("CHROMIUM", &browser)
        .current_dir(&node)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("runs ok"),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "no screenshot"
    );
}

#[test]
fn a_tenants_token_shows_only_its_own_jobs_and_counters() {
    use sha2::Digest;
    let browser = chromium();
    let folder = PluginFolder::with(&["hello", "increment"]);
    let sha = |token: &str| hex::encode(sha2::Sha256::digest(token.as_bytes()));
    folder.write(
        "weir.toml",
        format!(
            "[server]\noperator_token_sha256 = [\"{}\"]\n\n\
             [tenants.acme]\ntoken_sha256 = [\"{}\"]\n\n\
             [tenants.beta]\ntoken_sha256 = [\"{}\"]\n",
            sha("operator-secret"),
            sha("acme-secret"),
            sha("beta-secret"),
        )
        .as_bytes(),
    );
    let config = folder.path().join("weir.toml");
    let (_server, url) = WeirProcess::serve(folder.path(), &["--config", config.to_str().unwrap()]);
    let node = weir_tests::node_project();
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let screenshot = screenshots.join("tenant.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = Command::new("node")
        .arg(node.join("tenants.mjs"))
        .arg(format!("{url}/"))
        .arg(&screenshot)
        .env("CHROMIUM", &browser)
        .current_dir(&node)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("tenants ok"),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
}
