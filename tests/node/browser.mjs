// The headless Chromium the console's browser tests drive, and pages that record the
// script errors they throw.
import { chromium } from "playwright-core";

/** Starts headless Chromium: `$CHROMIUM`, else /usr/bin/chromium (Debian's package). */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
}

/** A 1280×1000 page of `browser`, and the uncaught script errors it throws (`errors`). */
export async function openPage(browser) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  return { page, errors };
}
