// The console's weight and its time to first render with many jobs in the list: fills a
// `weir serve` with JOBS jobs of `hello` (default 10,000; open mode), then opens the
// dashboard in headless Chromium five times and reports what the page loads (bytes and
// requests, and whether any leaves the server's origin), when it first paints, and when its
// jobs list and charts are filled. A measurement, not a test.
//
// Usage: node console-weight.mjs URL [JOBS]   (CHROMIUM names the browser).
import { launch } from "./browser.mjs";

const [url, count = "10000"] = process.argv.slice(2);
if (!url) {
  console.error("usage: node console-weight.mjs URL [JOBS]");
  process.exit(2);
}
const jobs = Number(count);
const started = performance.now();
let next = 0;
async function submitter() {
  while (next < jobs) {
    next += 1;
    const response = await fetch(new URL("/v1/jobs", url), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ processor: "hello", input: { user: "job" + next } }),
    });
    if (response.status !== 202) throw new Error("submit: " + response.status + " " + (await response.text()));
  }
}
await Promise.all(Array.from({ length: 16 }, submitter));
const listed = await fetch(new URL("/v1/jobs?limit=1", url)).then((r) => r.json());
console.log(`submitted ${jobs} jobs in ${((performance.now() - started) / 1000).toFixed(1)} s`);

const browser = await launch();
const runs = [];
try {
  for (let i = 0; i < 5; i++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
    const page = await context.newPage();
    const requests = [];
    page.on("requestfinished", async (request) => {
      const sizes = await request.sizes().catch(() => null);
      requests.push({ url: request.url(), bytes: sizes ? sizes.responseBodySize + sizes.responseHeadersSize : 0 });
    });
    const t0 = Date.now();
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.locator("#jobs tbody tr").first().waitFor({ timeout: 30000 });
    const jobsAt = Date.now() - t0;
    await page.waitForFunction(() => Number(document.getElementById("chart-running").dataset.points) >= 1);
    const chartsAt = Date.now() - t0;
    const paint = await page.evaluate(() => {
      const entry = performance.getEntriesByName("first-contentful-paint")[0];
      const nav = performance.getEntriesByType("navigation")[0];
      return { fcp: entry ? entry.startTime : null, html: nav ? nav.transferSize : null };
    });
    const origin = new URL(url).origin;
    runs.push({
      fcp: paint.fcp,
      jobsAt,
      chartsAt,
      html: paint.html,
      requests: requests.length,
      bytes: requests.reduce((sum, r) => sum + r.bytes, 0),
      foreign: requests.filter((r) => !r.url.startsWith(origin)).length,
    });
    await context.close();
  }
} finally {
  await browser.close();
}
const median = (key) => runs.map((r) => r[key]).sort((a, b) => a - b)[Math.floor(runs.length / 2)];
console.log(`jobs listed: ${listed.jobs.length ? "yes" : "no"}; five loads, medians:`);
console.log(`  page (HTML with its inline script and style): ${median("html")} bytes transferred`);
console.log(`  requests during the load: ${median("requests")} (${median("bytes")} bytes), to other origins: ${Math.max(...runs.map((r) => r.foreign))}`);
console.log(`  first contentful paint: ${median("fcp").toFixed(0)} ms`);
console.log(`  jobs list filled: ${median("jobsAt")} ms; charts drawn: ${median("chartsAt")} ms`);
