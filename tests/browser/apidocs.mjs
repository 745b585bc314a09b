// apidocs.mjs -- loads a ripple service's docs page (GET /api/docs) in
// Debian's headless chromium (playwright-core drives it; no browser is
// downloaded) and reports, as one JSON object on stdout, what it shows, for
// tests/e2e/test_openapi.py to check:
//   node apidocs.mjs --url http://127.0.0.1:PORT --out shot.png
// It waits for the renderer to list the operations, then records each one
// ("GET /api/v1/users/{id}"), the document's title, every request that left
// 127.0.0.1 and every JavaScript or console error, and saves a full-page
// screenshot. Exits 0 when it could look (the caller judges), 1 otherwise.
// Bounded: every wait has a deadline, and the run stops after --deadline-ms.
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { chromium } from "playwright-core";

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

function args(argv) {
  const out = { deadlineMs: 60000, chromium: process.env.CHROMIUM || "/usr/bin/chromium" };
  for (let i = 2; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    out[k] = argv[i + 1];
  }
  for (const need of ["url", "out"])
    if (!out[need]) throw new Error(`--${need} is required`);
  out.deadlineMs = Number(out.deadlineMs);
  return out;
}

async function main() {
  const opts = args(process.argv);
  const report = { requests: 0, offhost: [], errors: [], operations: [], title: null };
  const profile = mkdtempSync(join(tmpdir(), "ripple-apidocs-"));
  const timer = setTimeout(() => {
    console.error(`apidocs.mjs: still running after ${opts.deadlineMs} ms`);
    process.exit(1);
  }, opts.deadlineMs);
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium, headless: true, args: FLAGS,
    viewport: { width: 1280, height: 900 },
  });
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    page.on("request", (req) => {
      const u = new URL(req.url());
      if (["data:", "blob:", "about:"].includes(u.protocol)) return;
      report.requests++;
      if (u.hostname !== "127.0.0.1") report.offhost.push(req.url());
    });
    page.on("pageerror", (err) => report.errors.push("pageerror: " + err.message));
    page.on("console", (msg) => {
      if (msg.type() === "error") report.errors.push("console.error: " + msg.text());
    });
    await page.goto(opts.url + "/api/docs", { waitUntil: "load" });
    await page.waitForFunction(() => document.querySelectorAll(".opblock").length > 0 &&
      document.querySelector(".info .title") !== null, null, { timeout: 30000, polling: 200 });
    Object.assign(report, await page.evaluate(() => ({
      title: document.querySelector(".info .title").childNodes[0].textContent.trim(),
      operations: [...document.querySelectorAll(".opblock")].map((op) =>
        op.querySelector(".opblock-summary-method").textContent.trim() + " " +
        op.querySelector(".opblock-summary-path").dataset.path),
    })));
    await page.screenshot({ path: opts.out, fullPage: true });
  } finally {
    await ctx.close();
    rmSync(profile, { recursive: true, force: true });
    clearTimeout(timer);
  }
  console.log(JSON.stringify(report));
}

main().catch((err) => {
  console.error("apidocs.mjs: " + (err && err.stack || err));
  process.exit(1);
});
