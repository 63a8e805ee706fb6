// The web dashboard in headless Chromium (Debian's, driven by
// playwright-core), run by tests/tests/e2e/dashboard.rs against a live
// devnet: pages load with no console errors, charts render, the numbers on
// the page are the API's, and a builder's key cannot open the operator
// view, and a node's hostile text (its region) stays text. Screenshots go
// to $SCREENSHOT_DIR. Prints OK.
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const root = process.env.SHARENET_ROOT;
const builderKey = process.env.BUILDER_KEY;
const operatorKey = process.env.OPERATOR_KEY;
const shots = process.env.SCREENSHOT_DIR;

const api = async (path, key) => {
  const r = await fetch(`${root}${path}`, { headers: { Authorization: `Bearer ${key}` } });
  assert.equal(r.status, 200, `${path}: ${r.status}`);
  return r.json();
};

// The page's money format, computed here independently (BigInt, exact).
const usd = (nano) => {
  const n = BigInt(nano);
  const dollars = (n / 1000000000n).toLocaleString("en-US");
  return `$${dollars}.${((n % 1000000000n) / 1000n).toString().padStart(6, "0")}`;
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
  let problems = [];
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push(`console ${m.type()}: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
  page.on("dialog", (d) => { problems.push(`a script opened a dialog: ${d.message()}`); d.dismiss(); });

  // ---- the builder view ----
  await page.goto(`${root}/dashboard`);
  assert.ok(await page.isVisible("#sign-in"), "a signed-out page asks for a key");
  await page.fill("#key", builderKey);
  await page.click("#sign-in-form button[type=submit]");
  await page.waitForSelector("#builder-view[data-renders]");
  const b = await api("/v1/dashboard", builderKey);
  assert.equal(await page.textContent("#app-name"), b.app);
  assert.equal(await page.textContent("#balance"), usd(b.balance_nano_usd));
  const monthSpend = b.by_model.reduce((s, r) => s + BigInt(r.charged_nano_usd), 0n);
  assert.ok(monthSpend > 0n, "the test spent money this month");
  assert.equal(await page.textContent("#month-spend"), usd(monthSpend.toString()));
  // The chart: a bar per day, today's the tallest (all spend is today).
  const bars = await page.$$eval("#spend-chart rect.bar", (rs) => rs.map((r) => Number(r.getAttribute("height"))));
  assert.equal(bars.length, 30);
  // (Yesterday's too when the test straddles UTC midnight.)
  assert.ok(bars[29] + bars[28] > 0 && bars.slice(0, 28).every((h) => h === 0), `bars ${bars}`);
  // Tables: the API's rows, in its order, with its numbers.
  const rows = (sel) => page.$$eval(`${sel} tbody tr`, (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
  const recent = await rows("#recent");
  assert.equal(recent.length, b.recent.length);
  b.recent.forEach((r, i) => {
    assert.equal(recent[i][1], r.model);
    assert.equal(recent[i][4], r.input_tokens.toLocaleString("en-US"));
    assert.equal(recent[i][5], r.output_tokens.toLocaleString("en-US"));
    assert.equal(recent[i][6], { coordinator: "coordinator", node: "node's word" }[r.counted_by] ?? "");
    assert.equal(recent[i][9], usd(r.charged_nano_usd));
    assert.equal(recent[i][10], r.verified ? "✓ verified" : "✗ invalid");
    assert.equal(recent[i][11], r.settled_in || "not yet");
  });
  assert.ok(b.recent.every((r) => r.verified), "every receipt verifies");
  assert.ok(b.recent.some((r) => r.settled_in), "some receipts are settled");
  assert.ok(b.recent.some((r) => r.latency_ms !== null && r.ttft_ms !== null), "timings are shown");
  const customers = await rows("#by-customer");
  assert.deepEqual(customers.map((c) => c[0]), b.by_end_customer.map((r) => r.name || "(none)"));
  assert.deepEqual(customers.map((c) => c[4]), b.by_end_customer.map((r) => usd(r.charged_nano_usd)));
  const keys = await rows("#keys");
  assert.deepEqual(keys.map((k) => k[0]), b.keys.map((k) => k.id));
  await page.screenshot({ path: `${shots}/builder.png`, fullPage: true });
  assert.deepEqual(problems, [], "the builder view loads cleanly");

  // ---- the attack: a builder's key asks for the operator view ----
  await page.click("button.tab[data-view=operator]");
  await page.waitForSelector("#error:not([hidden])");
  assert.match(await page.textContent("#error"), /cannot open the operator view \(403/);
  assert.ok(await page.isHidden("#operator-view"), "no operator data shown");
  assert.equal(await page.$$eval("#nodes tbody tr", (trs) => trs.length), 0, "no node rows rendered");
  // The only problems: the refused request, as the browser reports it.
  assert.ok(problems.length > 0 && problems.every((p) => /403/.test(p)), problems.join("\n"));
  await page.screenshot({ path: `${shots}/builder-refused-operator-view.png` });
  problems = [];

  // ---- the operator view ----
  await page.click("#sign-out");
  await page.waitForSelector("#sign-in:not([hidden])");
  await page.fill("#key", operatorKey);
  await page.click("#sign-in-form button[type=submit]");
  await page.waitForSelector("#operator-view[data-renders]");
  const o = await api("/operator/dashboard", operatorKey);
  assert.equal(await page.textContent("#live-nodes"), String(o.nodes.length));
  assert.ok(o.nodes.length >= 2);
  const nodes = await rows("#nodes");
  assert.equal(nodes.length, o.nodes.length);
  o.nodes.forEach((n, i) => {
    assert.ok(nodes[i][2].includes(`${n.models[0].id} (${n.models[0].price_in} / ${n.models[0].price_out})`), nodes[i][2]);
    assert.equal(nodes[i][3], n.trust.toFixed(2));
    assert.equal(nodes[i][4], n.breaker.replace("_", "-"));
  });
  // A node advertised an HTML payload as its region: it shows as text.
  const hostile = nodes.find((n) => n[1] === process.env.XSS_REGION);
  assert.ok(hostile, `the hostile region is shown as text: ${nodes.map((n) => n[1])}`);
  assert.equal(await page.$$eval("#nodes img", (imgs) => imgs.length), 0, "no element from a node's text");
  const hour = o.minutes.reduce((s, m) => s + m.requests, 0);
  assert.ok(hour > 0);
  assert.equal(await page.textContent("#hour-requests"), hour.toLocaleString("en-US"));
  for (const chart of ["#rate-chart", "#error-chart"]) {
    assert.equal(await page.$$eval(`${chart} rect.bar`, (rs) => rs.length), 60, chart);
  }
  const rate = await page.$$eval("#rate-chart rect.bar", (rs) => rs.map((r) => Number(r.dataset.value)));
  assert.deepEqual(rate, o.minutes.map((m) => m.requests));
  assert.ok(await page.$$eval("#ttft-chart circle.dot", (cs) => cs.length) >= 1, "a TTFT point");
  const statements = await rows("#statements");
  assert.deepEqual(statements.map((s) => s[0]), o.statements.map((s) => s.label));
  assert.ok(o.statements.length >= 1);
  assert.equal(statements[0][4], usd(o.statements[0].charged_nano_usd));
  await page.screenshot({ path: `${shots}/operator.png`, fullPage: true });
  assert.deepEqual(problems, [], "the operator view loads cleanly");
} finally {
  await browser.close();
}
console.log("OK");
