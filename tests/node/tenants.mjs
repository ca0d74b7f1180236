// The dashboard's tenant view in a real browser (headless Chromium, driven by
// playwright-core): two tenants each submit a job; with one tenant's token typed into the
// page, its jobs list, its job's page and its counters show its own work only, and the
// other tenant's job is not found; the operator's token shows both.
//
// Usage: node tenants.mjs URL SCREENSHOT   (CHROMIUM names the browser).
// Prints `tenants ok` on success; exits non-zero otherwise.
import { launch, openPage } from "./browser.mjs";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node tenants.mjs URL SCREENSHOT");
  process.exit(2);
}
const TOKENS = { acme: "acme-secret", beta: "beta-secret", operator: "operator-secret" };

async function submit(token, processor, input) {
  const response = await fetch(new URL("/v1/jobs", url), {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: "Bearer " + token },
    body: JSON.stringify({ processor, input }),
  });
  if (response.status !== 202) throw new Error("submit: " + response.status + " " + (await response.text()));
  const job = await response.json();
  const done = await fetch(new URL(`/v1/jobs/${job.id}?waitMs=20000`, url), {
    headers: { Authorization: "Bearer " + token },
  }).then((r) => r.json());
  if (done.status !== "completed") throw new Error("job did not complete: " + JSON.stringify(done));
  return job.id;
}

const acmeJob = await submit(TOKENS.acme, "hello", { user: "acme" });
const betaJob = await submit(TOKENS.beta, "increment", { count: 1 });

const browser = await launch();
try {
  const { page, errors } = await openPage(browser);
  await page.goto(url);
  const login = async (token) => {
    await page.fill("#token", token);
    await page.dispatchEvent("#token", "change");
    await page.locator("#status.ok").waitFor({ timeout: 30000 });
  };
  // beta sees its own job and counters only.
  await login(TOKENS.beta);
  await page.locator(`#jobs tr[data-job="${betaJob}"]`).waitFor({ timeout: 30000 });
  await page.locator('#stats tr:has-text("increment")').waitFor({ timeout: 30000 });
  const rows = await page.locator("#jobs tbody tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.job));
  if (rows.includes(acmeJob)) throw new Error("beta's list shows acme's job");
  const tenants = await page.locator("#jobs tbody tr td:nth-child(4)").allTextContents();
  if (tenants.some((t) => t !== "beta")) throw new Error("beta's list shows other tenants: " + tenants);
  const stats = await page.textContent("#stats");
  if (stats.includes("hello")) throw new Error("beta's counters show acme's processor: " + stats);
  if (!(await page.locator("#overview-tenant-label").isHidden())) throw new Error("a tenant is offered other tenants");
  await page.locator(`#jobs tr[data-job="${betaJob}"] button.open`).click();
  await page.locator(`#run[data-job="${betaJob}"][data-status="completed"]`).waitFor({ timeout: 30000 });
  const status = await page.evaluate(async ([id, token]) => {
    const response = await fetch("/v1/jobs/" + id, { headers: { Authorization: "Bearer " + token } });
    return response.status;
  }, [acmeJob, TOKENS.beta]);
  if (status !== 404) throw new Error("beta read acme's job: " + status);
  await page.screenshot({ path: screenshot, fullPage: true });
  // The operator sees both tenants' jobs.
  await login(TOKENS.operator);
  await page.locator(`#jobs tr[data-job="${acmeJob}"]`).waitFor({ timeout: 30000 });
  await page.locator(`#jobs tr[data-job="${betaJob}"]`).waitFor({ timeout: 30000 });
  if (errors.length) throw new Error("errors on the page: " + errors.join("; "));
  console.log("tenants ok");
} finally {
  await browser.close();
}
