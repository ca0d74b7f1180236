// A failed run's page in a real browser (headless Chromium, driven by playwright-core): a job
// of the `shaky` chain submitted from the page fails in its `flaky` step; its page shows that
// step failed in the timeline, with the error; the operator raises `flaky`'s attempts in its
// manifest (the folder reloads it), and the page's Retry button makes a new job that
// succeeds, whose timeline shows the retried attempts. Before that, a job of the `tolerant`
// parallel, whose `flaky` branch fails and is ignored (`on_failure`), completes and its page
// lists the failure it went on past. Then saves a screenshot.
//
// Usage: node runs.mjs URL SCREENSHOT FLAKY_MANIFEST   (CHROMIUM names the browser).
// Prints `runs ok` on success; exits non-zero otherwise.
import { renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { launch, openPage } from "./browser.mjs";

const [url, screenshot, manifest] = process.argv.slice(2);
if (!url || !screenshot || !manifest) {
  console.error("usage: node runs.mjs URL SCREENSHOT FLAKY_MANIFEST");
  process.exit(2);
}
const browser = await launch();
let page;
try {
  const opened = await openPage(browser);
  page = opened.page;
  const errors = opened.errors;
  await page.goto(url);
  await page.locator("#status.ok").waitFor({ timeout: 30000 });
  await page.locator('#workflows tr[data-workflow="shaky"]').waitFor({ timeout: 30000 });
  // A parallel that goes on past its failed branch: completed, and its page says what failed.
  await page.selectOption("#run-name", "tolerant");
  await page.fill("#run-input", '{"count": 1}');
  await page.click("#run-job");
  const tolerant = page.locator('#jobs tr[data-status="completed"][data-processor="tolerant"]');
  await tolerant.waitFor({ timeout: 30000 });
  const tolerantId = await tolerant.getAttribute("data-job");
  await tolerant.locator("button.open").click();
  await page.locator(`#run[data-job="${tolerantId}"]`).waitFor({ timeout: 30000 });
  await page.locator("#run-failures-box:not([hidden])").waitFor({ timeout: 10000 });
  const wentPast = await page.textContent("#run-failures");
  if (!wentPast.includes("branch:1 (flaky)") || !wentPast.includes("failed on purpose")) {
    throw new Error("the failure gone past is not shown: " + wentPast);
  }
  const summary = await page.textContent("#run-summary");
  if (!summary.includes("went on past 1 failure(s)")) throw new Error("no count in the summary: " + summary);
  // Submitted as a job from the page: it fails in its second step.
  await page.selectOption("#run-name", "shaky");
  await page.fill("#run-input", '{"count": 1}');
  await page.click("#run-job");
  const failed = page.locator('#jobs tr[data-status="failed"][data-processor="shaky"]');
  await failed.waitFor({ timeout: 30000 });
  const firstId = await failed.getAttribute("data-job");
  await failed.locator("button.open").click();
  const run = page.locator(`#run[data-job="${firstId}"]`);
  await run.waitFor({ timeout: 30000 });
  if (!(await page.locator("#run-failures-box").isHidden())) throw new Error("a failed job lists failures gone past");
  await run.waitFor({ timeout: 30000 });
  const step = run.locator('#timeline g[data-processor="flaky"][data-status="failed"]');
  await step.waitFor({ timeout: 30000 });
  await run.locator('#timeline g[data-processor="increment"][data-status="completed"]').waitFor({ timeout: 5000 });
  const error = await run.locator("#run-error").textContent();
  if (!error.includes("attempt 1 failed on purpose")) throw new Error("no step error: " + error);
  const tip = await step.textContent();
  if (!tip.includes("failed on purpose")) throw new Error("the step does not say why: " + tip);
  // The job shown in its workflow's graph: the step that failed, and the one before it.
  await run.locator("#run-graph").click();
  const graph = page.locator(`#workflow-graph[data-run="${firstId}"]`);
  await graph.locator('g[data-node="flaky"][data-state="failed"]').waitFor({ timeout: 10000 });
  await graph.locator('g[data-node="increment"][data-state="ok"]').waitFor({ timeout: 10000 });
  // The operator allows more attempts (writing the file whole, by a rename); the folder
  // reloads the manifest.
  writeFileSync(manifest + ".new", '[retry]\nmax_attempts = 5\nbackoff = "fixed"\nbackoff_ms = 5\n');
  renameSync(manifest + ".new", manifest);
  // (Polled from here: a predicate that returns a promise would count as true at once.)
  const reloadBy = Date.now() + 30000;
  for (;;) {
    const attempts = await page.evaluate(async () => {
      const plugin = await (await fetch("/v1/plugins/flaky")).json();
      return plugin.retry && plugin.retry.maxAttempts;
    });
    if (attempts === 5) break;
    if (Date.now() > reloadBy) throw new Error("flaky was not reloaded: " + attempts);
    await page.waitForTimeout(100);
  }
  await page.locator('#events li[data-kind="plugin:reloaded"][data-processor="flaky"]').waitFor({ timeout: 30000 });
  // Retry: a new job, with the same input, that succeeds.
  await run.locator("#run-retry").click();
  const retried = page.locator('#run[data-status="completed"]');
  await retried.waitFor({ timeout: 30000 });
  const secondId = await retried.getAttribute("data-job");
  if (!secondId || secondId === firstId) throw new Error("the retry is not a new job: " + secondId);
  await page.locator('#timeline g[data-processor="flaky"][data-status="completed"][data-retries="2"]').waitFor({ timeout: 30000 });
  const output = await page.textContent("#run-output");
  if (!output.includes('"succeededOn": 3')) throw new Error("unexpected output: " + output);
  const curl = await page.getAttribute("#run-copy-curl", "data-command");
  if (!curl.includes("/v1/jobs") || !curl.includes("shaky")) throw new Error("no curl command: " + curl);
  await page.screenshot({ path: screenshot, fullPage: true });
  await page.locator("#run").screenshot({ path: join(dirname(screenshot), "job.png") });
  if (errors.length) throw new Error("errors on the page: " + errors.join("; "));
  console.log("runs ok");
} catch (error) {
  // What the page showed, to tell why.
  if (page) {
    for (const id of ["#run-summary", "#run-note", "#run-error"]) {
      console.error(id, await page.textContent(id).catch(() => "?"));
    }
    const shown = await page.getAttribute("#run", "data-job").catch(() => null);
    console.error("job", shown, await page.evaluate(async (id) => {
      const job = await (await fetch("/v1/jobs/" + id)).json();
      return JSON.stringify(job.steps);
    }, shown).catch((e) => String(e)));
  }
  throw error;
} finally {
  await browser.close();
}
