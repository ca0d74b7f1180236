// A workflow's graph follows its run live, in a real browser: headless Chromium opens the
// console, draws the graph workflow `pipeline`, runs it from the page and waits until the
// graph says the run ended; the nodes that ran are lit and the one its condition skipped
// is marked. Behind `weir serve --redis` the run's steps run on workers.
//
// Usage: node graph.mjs URL SCREENSHOT   (CHROMIUM names the browser, default
// /usr/bin/chromium). Prints `graph ok` on success; exits non-zero otherwise.
import { launch, openPage } from "./browser.mjs";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node graph.mjs URL SCREENSHOT");
  process.exit(2);
}
const browser = await launch();
try {
  const { page, errors } = await openPage(browser);
  await page.goto(url);
  await page.locator('#workflows tr[data-workflow="pipeline"] button.graph').click({ timeout: 30000 });
  const graph = page.locator('#workflow-graph[data-workflow="pipeline"]');
  await graph.waitFor({ timeout: 30000 });
  await page.selectOption("#run-name", "pipeline");
  await page.fill("#run-input", '{"count": 1}');
  await page.click("#run-go");
  await page.locator('#workflow-graph[data-ended="ok"]').waitFor({ timeout: 30000 });
  for (const [node, state] of [["fetch", "ok"], ["parse", "ok"], ["store", "ok"], ["review", "skipped"]]) {
    const got = await graph.locator(`g[data-node="${node}"]`).getAttribute("data-state");
    if (got !== state) throw new Error(`${node} is ${got}, not ${state}`);
  }
  await page.screenshot({ path: screenshot });
  if (errors.length) throw new Error("the page threw: " + errors.join("; "));
  console.log("graph ok");
} finally {
  await browser.close();
}
