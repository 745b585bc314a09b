// console.mjs -- loads the ripple console in Debian's headless chromium
// (playwright-core drives it; no browser is downloaded) and reports what the
// page shows, as one JSON object on stdout, for tests/e2e/test_console_browser.py
// to check:
//   node console.mjs --url http://127.0.0.1:PORT --confirmed ID --cancelled ID --out DIR
// It opens "/" (waits for the services, streams with numbers, dead letters and
// orders), then each order's saga page (waits for the final diagram), saves a
// full-page screenshot of each in DIR, and records every request that left
// 127.0.0.1 and every JavaScript error or console error. Exits 0 when it
// could look at everything (the caller judges), 1 otherwise. Bounded: every
// wait has a deadline, and the whole run stops after --deadline-ms.
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

function args(argv) {
  const out = { deadlineMs: 90000, chromium: process.env.CHROMIUM || "/usr/bin/chromium" };
  for (let i = 2; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    out[k] = argv[i + 1];
  }
  for (const need of ["url", "confirmed", "cancelled", "out"])
    if (!out[need]) throw new Error(`--${need} is required`);
  out.deadlineMs = Number(out.deadlineMs);
  return out;
}

function watch(page, report) {
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
}

async function overview(page, opts) {
  await page.goto(opts.url + "/", { waitUntil: "load" });
  await page.waitForFunction(() => {
    const rows = document.querySelectorAll("#streams tbody tr[data-stream]");
    return document.querySelectorAll("#services tbody tr[data-service]").length >= 4 &&
      rows.length >= 6 && document.querySelectorAll("#orders tbody tr[data-order]").length >= 2 &&
      document.querySelectorAll("#dlq .letter").length >= 1;
  }, null, { timeout: 30000, polling: 200 });
  // A second scrape gives the HTTP rates; best effort, for the screenshot.
  await page.waitForFunction(() => [...document.querySelectorAll("#services tbody tr")]
    .some((tr) => tr.cells.length > 7 && tr.cells[7].textContent !== "\u2014"), null,
  { timeout: 10000, polling: 200 }).catch(() => {});
  const shot = join(opts.out, "console.png");
  await page.screenshot({ path: shot, fullPage: true });
  return page.evaluate(() => ({
    status: document.getElementById("status").textContent,
    services: [...document.querySelectorAll("#services tbody tr[data-service]")].map((tr) => ({
      name: tr.dataset.service, cells: [...tr.cells].map((td) => td.textContent) })),
    streams: [...document.querySelectorAll("#streams tbody tr[data-stream]")].map((tr) => ({
      stream: tr.dataset.stream, group: tr.dataset.group,
      cells: [...tr.cells].map((td) => td.textContent) })),
    letters: [...document.querySelectorAll("#dlq .letter")].map((d) => ({
      id: d.dataset.dlqId, text: d.textContent })),
    orders: [...document.querySelectorAll("#orders tbody tr[data-order]")].map(
      (tr) => tr.dataset.order),
  }));
}

async function saga(page, opts, id, name) {
  await page.goto(opts.url + "/orders/" + id, { waitUntil: "load" });
  await page.waitForFunction(() => /final/.test(document.getElementById("status").textContent) &&
    document.querySelectorAll("#saga svg g.step").length > 0, null,
  { timeout: 30000, polling: 200 });
  await page.screenshot({ path: join(opts.out, name + ".png"), fullPage: true });
  return page.evaluate(() => ({
    status: document.getElementById("order-status").textContent,
    trace: document.getElementById("trace-id").textContent,
    lanes: [...document.querySelectorAll("#saga svg g.lane")].map((g) => g.dataset.lane),
    steps: [...document.querySelectorAll("#saga svg g.step")].map((g) => ({
      step: g.dataset.step, type: g.dataset.eventType, from: g.dataset.from, to: g.dataset.to,
      text: g.textContent })),
    rows: document.querySelectorAll("#steps tbody tr").length,
  }));
}

async function main() {
  const opts = args(process.argv);
  const profile = mkdtempSync(join(opts.out, "chromium-profile-"));
  const report = { requests: 0, offhost: [], errors: [] };
  const timer = setTimeout(() => {
    console.error(`console.mjs: gave up after ${opts.deadlineMs} ms`);
    process.exit(1);
  }, opts.deadlineMs);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium, headless: true, args: FLAGS, timeout: 60000,
    viewport: { width: 1400, height: 900 },
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    watch(page, report);
    report.overview = await overview(page, opts);
    report.confirmed = await saga(page, opts, opts.confirmed, "saga-confirmed");
    report.cancelled = await saga(page, opts, opts.cancelled, "saga-cancelled");
  } finally {
    await context.close();
    clearTimeout(timer);
    rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(report) + "\n");
}

main().catch((err) => {
  console.error("console.mjs: " + (err && err.stack ? err.stack : err));
  process.exit(1);
});
