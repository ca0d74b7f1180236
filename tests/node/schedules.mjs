// The console's schedules, in a real browser: headless Chromium opens the console of a
// server whose folder declares a schedule, sees its next tick, then its latest tick and the
// run it started; a schedule added through the API shows too, and its Remove button
// removes it. Behind `weir serve --redis` the ticks fire on the fleet's workers.
//
// Usage: node schedules.mjs URL SCREENSHOT   (CHROMIUM names the browser, default
// /usr/bin/chromium). Prints `schedules ok` on success; exits non-zero otherwise.
import { launch, openPage } from "./browser.mjs";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node schedules.mjs URL SCREENSHOT");
  process.exit(2);
}
const browser = await launch();
try {
  const { page, errors } = await openPage(browser);
  await page.goto(url);
  const beat = page.locator('#schedules tr[data-schedule="beat"]');
  await beat.waitFor({ timeout: 30000 });
  // Its next tick is a time, and once a tick has come, the latest names its run.
  await beat.locator("td.next").filter({ hasNotText: "–" }).waitFor({ timeout: 30000 });
  await beat.locator("td.last").filter({ hasText: "run " }).waitFor({ timeout: 30000 });
  const from = await beat.locator("td").nth(7).textContent();
  if (from !== "folder") throw new Error("the folder's schedule says it is from " + from);
  // One added through the API shows, and its Remove button removes it.
  const added = await page.evaluate(async () => {
    const response = await fetch("/v1/schedules/added", {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ run: "increment", cron: "0 0 1 1 *", input: { count: 1 } }),
    });
    return response.status;
  });
  if (added !== 200) throw new Error("PUT /v1/schedules/added answered " + added);
  const row = page.locator('#schedules tr[data-schedule="added"]');
  await row.waitFor({ timeout: 30000 });
  await page.locator("#schedules-title").scrollIntoViewIfNeeded();
  await page.screenshot({ path: screenshot });
  await row.locator("button.remove").click();
  await row.waitFor({ state: "detached", timeout: 30000 });
  if (errors.length) throw new Error("the page threw: " + errors.join("; "));
  console.log("schedules ok");
} finally {
  await browser.close();
}
