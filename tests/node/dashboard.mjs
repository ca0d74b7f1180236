// The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
// playwright-core) opens weir's page, sees the plugins, runs `hello` with the page's own
// button, and sees the execution complete in the live event list; then runs a load and
// sees the overview's charts follow it; then saves a screenshot.
//
// Then it opens `increment`'s details, uploads a broken file (refused, with the reason, in
// the history) and the component again (reloaded).
//
// Usage: node dashboard.mjs URL SCREENSHOT INCREMENT_WASM   (CHROMIUM names the browser, default
// /usr/bin/chromium). Prints `dashboard ok` on success; exits non-zero otherwise.
import { dirname, join } from "node:path";
import { launch, openPage } from "./browser.mjs";

const [url, screenshot, component] = process.argv.slice(2);
if (!url || !screenshot || !component) {
  console.error("usage: node dashboard.mjs URL SCREENSHOT INCREMENT_WASM");
  process.exit(2);
}
const browser = await launch();
try {
  const { page, errors } = await openPage(browser);
  await page.goto(url);
  // The plugins arrive from the API.
  const hello = page.locator('#plugins tr[data-plugin="hello"]');
  await hello.waitFor({ timeout: 30000 });
  await page.locator('#plugins tr[data-plugin="increment"]').waitFor({ timeout: 30000 });
  await page.locator("#status.ok").waitFor({ timeout: 30000 });
  // Run hello from the page; its completion appears live in the event list.
  await page.fill("#run-input", '{"user": "browser"}');
  await hello.locator("button.run").click();
  await page
    .locator('#events li[data-kind="processor:completed"][data-processor="hello"]')
    .waitFor({ timeout: 30000 });
  await page.locator("#run-result.ok").waitFor({ timeout: 30000 });
  const result = await page.textContent("#run-result");
  if (!result.includes("Hello browser!")) throw new Error("unexpected result: " + result);
  // And the processor's counters show it.
  await page.locator('#stats tr:has-text("hello")').waitFor({ timeout: 30000 });
  // The overview's charts follow a load while it runs: executions per second above 0,
  // and a latency read from the load's own executions.
  const chart = (id, key) => page.getAttribute(id, "data-" + key).then(Number);
  const drawn = await chart("#chart-rate", "points");
  const load = page.evaluate(async () => {
    const until = performance.now() + 8000;
    let done = 0;
    while (performance.now() < until) {
      const response = await fetch("/v1/run/hello", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user: "load" }),
      });
      if (response.ok) done += 1;
    }
    return done;
  });
  await page.waitForFunction(
    (before) => {
      const rate = document.getElementById("chart-rate");
      const latency = document.getElementById("chart-latency");
      const fuel = document.getElementById("chart-fuel");
      const memory = document.getElementById("chart-memory");
      return Number(rate.dataset.points) > before && Number(rate.dataset.last) > 0
        && Number(latency.dataset.last) > 0 && Number(fuel.dataset.last) > 0
        && Number(memory.dataset.last) > 0;
    },
    drawn,
    { timeout: 30000 },
  );
  const executed = await load;
  const rate = await chart("#chart-rate", "peak");
  if (!(executed > 0 && rate > 0)) throw new Error(`the load ran ${executed}; the chart peaked at ${rate}/s`);
  // One processor chosen: its own series.
  await page.selectOption("#overview-processor", "hello");
  if (!((await chart("#chart-rate", "peak")) > 0)) throw new Error("hello's own rate is empty");
  // A page opened afresh starts its charts from the server's readings of the last minutes:
  // the load shows at once, long before the page could have drawn it from its own samples
  // (its third rate needs a fourth sample, 6 s after it opens).
  await page.reload();
  await page.waitForFunction(() => {
    const rate = document.getElementById("chart-rate");
    return Number(rate.dataset.points) >= 3 && Number(rate.dataset.peak) > 0;
  }, null, { timeout: 4000 });
  // The graph workflow is drawn with every node (and the condition on `review`); a run of
  // it from the page lights up the nodes that ran and marks the skipped one.
  await page.locator('#workflows tr[data-workflow="pipeline"] button.graph').click();
  const graph = page.locator('#workflow-graph[data-workflow="pipeline"]');
  await graph.waitFor({ timeout: 30000 });
  for (const node of ["input", "fetch", "parse", "review", "store", "output"]) {
    await graph.locator(`g[data-node="${node}"]`).waitFor({ timeout: 5000 });
  }
  const review = await graph.locator('g[data-node="review"]').textContent();
  if (!review.includes("if /needsReview")) throw new Error("no condition on review: " + review);
  await page.selectOption("#run-name", "pipeline");
  await page.fill("#run-input", '{"count": 1}');
  await page.click("#run-go");
  await page.locator('#workflow-graph[data-ended="ok"]').waitFor({ timeout: 30000 });
  for (const [node, state] of [["fetch", "ok"], ["parse", "ok"], ["store", "ok"], ["review", "skipped"]]) {
    const got = await graph.locator(`g[data-node="${node}"]`).getAttribute("data-state");
    if (got !== state) throw new Error(`${node} is ${got}, not ${state}`);
  }
  // A run in a session; the session's page shows its counts by processor and its state.
  await page.selectOption("#run-name", "increment");
  await page.fill("#run-input", '{"count": 41}');
  await page.fill("#run-session", "tour");
  await page.click("#run-go");
  await page.waitForFunction(() => document.getElementById("run-result").textContent.includes('"count": 42'), null, { timeout: 30000 });
  await page.locator('#sessions tr[data-session="tour"] button.open').click({ timeout: 30000 });
  await page.locator('#session[data-session="tour"] #session-processors tr[data-processor="increment"]').waitFor({ timeout: 30000 });
  const state = await page.textContent("#session-state");
  if (!state.includes('"count": 42')) throw new Error("the session's state is not shown: " + state);
  await page.fill("#run-session", "");
  // A plugin's details; a broken upload is refused with its reason, a good one reloads it,
  // and the history says both.
  await page.locator('#plugins tr[data-plugin="increment"] button.details').click();
  const plugin = page.locator('#plugin[data-plugin="increment"]');
  await plugin.waitFor({ timeout: 30000 });
  await plugin.locator('#plugin-history tr[data-change="loaded"]').waitFor({ timeout: 5000 });
  // The version that served the runs above, with its executions.
  const version = plugin.locator("#plugin-versions tbody tr[data-digest]").first();
  await version.waitFor({ timeout: 5000 });
  const executions = Number(await version.locator("td").nth(2).textContent());
  if (!(executions > 0)) throw new Error("the served version shows no executions: " + executions);
  await page.setInputFiles("#plugin-file", { name: "broken.wasm", mimeType: "application/wasm", buffer: Buffer.from("not a component") });
  await page.click("#plugin-upload");
  await page.locator("#plugin-note.bad").waitFor({ timeout: 30000 });
  await plugin.locator('#plugin-history tr[data-change="rejected"]').waitFor({ timeout: 30000 });
  await page.setInputFiles("#plugin-file", component);
  await page.click("#plugin-upload");
  await page.locator("#plugin-note.ok").waitFor({ timeout: 30000 });
  await plugin.locator('#plugin-history tr[data-change="reloaded"]').waitFor({ timeout: 30000 });
  await page.screenshot({ path: screenshot, fullPage: true });
  // Each part on its own, for the docs.
  const dir = dirname(screenshot);
  await page.locator('section[aria-labelledby="overview-title"]').screenshot({ path: join(dir, "overview.png") });
  await graph.screenshot({ path: join(dir, "workflow-graph.png") });
  await plugin.screenshot({ path: join(dir, "plugin.png") });
  // On a phone: nothing wider than the screen, the page scrolls only down.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.reload();
  await page.locator("#status.ok").waitFor({ timeout: 30000 });
  await page.locator('#plugins tr[data-plugin="hello"]').waitFor({ timeout: 30000 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new Error(`the page is ${overflow} px wider than a phone's screen`);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(dir, "phone.png") });
  if (errors.length) throw new Error("errors on the page: " + errors.join("; "));
  console.log("dashboard ok");
} finally {
  await browser.close();
}
