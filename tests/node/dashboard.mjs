// The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
// playwright-core) opens weir's page, sees the plugins, runs `hello` with the page's own
// button, and sees the execution complete in the live event list; then saves a screenshot.
//
// Usage: node dashboard.mjs URL SCREENSHOT   (CHROMIUM names the browser, default
// /usr/bin/chromium). Prints `dashboard ok` on success; exits non-zero otherwise.
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node dashboard.mjs URL SCREENSHOT");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
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
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) throw new Error("errors on the page: " + errors.join("; "));
  console.log("dashboard ok");
} finally {
  await browser.close();
}
