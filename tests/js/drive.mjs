// A line-based remote control of Debian's Chromium for pytest (tests/browser/driver.py).
// stdin: one JSON command per line; stdout: one JSON reply per line ({ok, value} or
// {ok: false, error}). Commands: open {url}, eval {js}, wait {js, timeout}, click
// {selector}, reload, requests {contains}, close.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const userDataDir = mkdtempSync(join(tmpdir(), "agentstream-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  bypassCSP: true, // the test drives the page with evaluated strings; the page itself has none
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = context.pages()[0] || (await context.newPage());
const requests = [];
const consoleLines = [];
page.on("request", (r) => requests.push(r.url()));
page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));

async function handle(cmd) {
  switch (cmd.cmd) {
    case "open": await page.goto(cmd.url); return null;
    case "eval": return await page.evaluate(cmd.js);
    case "wait": {
      const handle = await page.waitForFunction(cmd.js, null, { timeout: cmd.timeout ?? 20000, polling: 50 });
      return await handle.jsonValue();
    }
    case "click": await page.click(cmd.selector); return null;
    case "reload": await page.reload(); return null;
    case "requests": return requests.filter((u) => u.includes(cmd.contains)).length;
    case "console": return consoleLines;
    case "close": return "bye";
    default: throw new Error(`unknown command ${cmd.cmd}`);
  }
}

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
out({ ok: true, value: "ready" });
for await (const line of createInterface({ input: process.stdin })) {
  let cmd;
  try {
    cmd = JSON.parse(line);
    out({ ok: true, value: (await handle(cmd)) ?? null });
  } catch (err) {
    out({ ok: false, error: String(err && err.stack || err), console: consoleLines.slice(-20) });
  }
  if (cmd && cmd.cmd === "close") break;
}
await context.close();
rmSync(userDataDir, { recursive: true, force: true });
