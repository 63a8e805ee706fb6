// The sharenet dashboard: reads /v1/dashboard (builder key) or
// /operator/dashboard (operator key) and draws tables and SVG charts.
// No dependencies, no build step. Every string from the server goes into
// the page as text (textContent), never as HTML: model names, regions and
// GPU names come from untrusted nodes.
"use strict";

const KEY = "sharenet.key";
const VIEW = "sharenet.view";
const REFRESH_MS = 10000;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (selector) => document.querySelector(selector);
let timer = null;

// ---- formatting (money is integer nano-USD in decimal strings) ----

const NANO = 1000000000n;

/** "$1,234.567890" from a nano-USD decimal string (exact, BigInt). */
function usd(nano) {
  const n = BigInt(nano);
  const sign = n < 0n ? "-" : "";
  const a = n < 0n ? -n : n;
  const dollars = (a / NANO).toLocaleString("en-US");
  const micro = ((a % NANO) / 1000n).toString().padStart(6, "0");
  return `${sign}$${dollars}.${micro}`;
}

const count = (n) => Number(n).toLocaleString("en-US");
const ms = (v) => (v === null || v === undefined ? "–" : `${Math.round(v).toLocaleString("en-US")} ms`);
const time = (t) => new Date(t).toISOString().replace("T", " ").slice(0, 19);
const day = (t) => new Date(t).toISOString().slice(0, 10);
const short = (id) => (id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id);

// ---- DOM helpers ----

function cell(value, className) {
  const td = document.createElement("td");
  td.textContent = value;
  if (className) td.className = className;
  return td;
}

/** Replaces `table`'s body with one row per item; `columns` maps an item
 * to its cells: a string, or [text, className]. */
function fill(table, items, columns) {
  const body = table.querySelector("tbody");
  body.replaceChildren(
    ...items.map((item) => {
      const tr = document.createElement("tr");
      for (const c of columns(item)) {
        tr.append(Array.isArray(c) ? cell(c[0], c[1]) : cell(c));
      }
      return tr;
    }),
  );
  if (items.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("none yet", "empty");
    td.colSpan = table.querySelectorAll("thead th").length;
    tr.append(td);
    body.append(tr);
  }
}

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

const H = 180;
const PAD = { left: 56, right: 8, top: 10, bottom: 22 };

/** Clears `chart`, sizes it to its box, draws the axis; returns its width. */
function frame(chart, max, format) {
  const W = Math.max(chart.clientWidth, 200);
  chart.replaceChildren();
  chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
  chart.append(svg("line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, class: "axis" }));
  chart.append(svg("text", { x: PAD.left - 4, y: PAD.top + 8, class: "tick", "text-anchor": "end" }, format(max)));
  chart.append(svg("text", { x: PAD.left - 4, y: H - PAD.bottom, class: "tick", "text-anchor": "end" }, format(0)));
  return W;
}

/** Bars for `points` ({label, value, title}); `value` is a Number. */
function bars(chart, points, format, className) {
  const max = Math.max(0, ...points.map((p) => p.value));
  const W = frame(chart, max, format);
  const step = (W - PAD.left - PAD.right) / Math.max(points.length, 1);
  const height = H - PAD.top - PAD.bottom;
  points.forEach((p, i) => {
    const h = max > 0 ? (p.value / max) * height : 0;
    const rect = svg("rect", {
      x: PAD.left + i * step + 1,
      y: H - PAD.bottom - h,
      width: Math.max(step - 2, 1),
      height: h,
      class: `bar ${className || ""}`,
      "data-value": p.value,
    });
    rect.append(svg("title", {}, p.title));
    chart.append(rect);
  });
  labels(chart, points, step);
  chart.dataset.points = String(points.length);
}

/** A line through the points with a value (gaps where there is none). */
function line(chart, points, format) {
  const values = points.map((p) => p.value).filter((v) => v !== null);
  const max = Math.max(0, ...values);
  const W = frame(chart, max, format);
  const step = (W - PAD.left - PAD.right) / Math.max(points.length, 1);
  const height = H - PAD.top - PAD.bottom;
  let path = "";
  points.forEach((p, i) => {
    if (p.value === null) return;
    const x = PAD.left + i * step + step / 2;
    const y = H - PAD.bottom - (max > 0 ? (p.value / max) * height : 0);
    path += `${path ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    const dot = svg("circle", { cx: x, cy: y, r: 3, class: "dot", "data-value": p.value });
    dot.append(svg("title", {}, p.title));
    chart.append(dot);
  });
  if (path) chart.append(svg("path", { d: path, class: "line" }));
  labels(chart, points, step);
  chart.dataset.points = String(points.length);
}

/** About six x labels, the last one (the newest) always, kept inside. */
function labels(chart, points, step) {
  const every = Math.max(1, Math.ceil(points.length / 6));
  const last = points.length - 1;
  points.forEach((p, i) => {
    if ((i % every !== 0 || last - i < every / 2) && i !== last) return;
    const x = PAD.left + i * step + step / 2;
    const anchor = i === last ? "end" : "middle";
    chart.append(svg("text", { x: i === last ? x + step / 2 : x, y: H - 6, class: "tick", "text-anchor": anchor }, p.label));
  });
}

// ---- the two views ----

function renderBuilder(d) {
  $("#app-name").textContent = d.app;
  $("#balance").textContent = usd(d.balance_nano_usd);
  const monthSpend = d.by_model.reduce((sum, r) => sum + BigInt(r.charged_nano_usd), 0n);
  $("#month-spend").textContent = usd(monthSpend.toString());
  $("#month-requests").textContent = count(d.by_model.reduce((sum, r) => sum + r.requests, 0));
  bars(
    $("#spend-chart"),
    d.spend_by_day.map((p) => ({
      label: day(p.start_ms).slice(5),
      value: Number(BigInt(p.charged_nano_usd)) / 1e9,
      title: `${day(p.start_ms)}: ${usd(p.charged_nano_usd)}, ${count(p.requests)} requests`,
    })),
    (v) => `$${v.toFixed(v >= 1 ? 2 : 6)}`,
  );
  const usage = (r) => [r.name || "(none)", count(r.requests), count(r.input_tokens), count(r.output_tokens), [usd(r.charged_nano_usd), "money"]];
  fill($("#by-model"), d.by_model, usage);
  fill($("#by-customer"), d.by_end_customer, usage);
  fill($("#recent"), d.recent, (r) => [
    time(r.recorded_at_ms),
    r.model,
    [short(r.provider), "mono"],
    r.end_customer || "",
    count(r.input_tokens),
    count(r.output_tokens),
    counter(r.counted_by),
    ms(r.latency_ms),
    ms(r.ttft_ms),
    [usd(r.charged_nano_usd), "money"],
    r.verified ? ["✓ verified", "ok"] : ["✗ invalid", "bad"],
    r.settled_in || "not yet",
  ]);
  fill($("#keys"), d.keys, (k) => [[k.id, "mono"], time(k.created_at_ms), k.revoked_at_ms ? ["revoked", "bad"] : ["active", "ok"]]);
}

// Who counted a job's tokens: the coordinator with the model's tokenizer
// (the node's signed counts had to match), or the node alone.
function counter(by) {
  if (by === "coordinator") return ["coordinator", "ok"];
  if (by === "node") return ["node's word", "muted"];
  return "";
}

function renderOperator(d) {
  $("#live-nodes").textContent = count(d.nodes.length);
  $("#open-breakers").textContent = count(d.nodes.filter((n) => n.breaker === "open").length);
  $("#hour-requests").textContent = count(d.minutes.reduce((s, m) => s + m.requests, 0));
  $("#hour-errors").textContent = count(d.minutes.reduce((s, m) => s + m.client_errors + m.server_errors, 0));
  const minute = (m) => time(m.start_ms).slice(11, 16);
  bars(
    $("#rate-chart"),
    d.minutes.map((m) => ({ label: minute(m), value: m.requests, title: `${minute(m)}: ${m.requests} requests` })),
    (v) => count(Math.round(v)),
  );
  line(
    $("#ttft-chart"),
    d.minutes.map((m) => ({ label: minute(m), value: m.ttft_ms, title: `${minute(m)}: ${ms(m.ttft_ms)}` })),
    (v) => `${Math.round(v)}`,
  );
  bars(
    $("#error-chart"),
    d.minutes.map((m) => ({
      label: minute(m),
      value: m.client_errors + m.server_errors,
      title: `${minute(m)}: ${m.server_errors} server errors, ${m.client_errors} refused requests`,
    })),
    (v) => count(Math.round(v)),
    "error",
  );
  fill($("#nodes"), d.nodes, (n) => [
    [short(n.peer_id), "mono"],
    n.region || "–",
    n.models.map((m) => `${m.id} (${m.price_in} / ${m.price_out})`).join(", "),
    n.trust.toFixed(2),
    [n.breaker.replace("_", "-"), n.breaker === "closed" ? "ok" : "bad"],
    ms(n.ttft_ms),
    n.tokens_per_sec === null ? "–" : `${n.tokens_per_sec.toFixed(1)} tok/s`,
    `${n.in_flight} ours, ${n.queue_depth} / ${n.max_concurrency}`,
    n.gpus.length ? n.gpus.join(", ") : "CPU",
  ]);
  fill($("#statements"), d.statements, (s) => [
    s.label,
    time(s.start_ms),
    time(s.end_ms),
    count(s.jobs),
    [usd(s.charged_nano_usd), "money"],
    [usd(s.provider_nano_usd), "money"],
    [usd(s.network_fee_nano_usd), "money"],
    [short(s.merkle_root), "mono"],
  ]);
}

const VIEWS = {
  builder: { path: "/v1/dashboard", render: renderBuilder, section: "#builder-view" },
  operator: { path: "/operator/dashboard", render: renderOperator, section: "#operator-view" },
};

// ---- loading, errors, navigation ----

function showError(message) {
  const el = $("#error");
  el.textContent = message;
  el.hidden = !message;
}

async function load() {
  const key = sessionStorage.getItem(KEY);
  const name = sessionStorage.getItem(VIEW) || "builder";
  const view = VIEWS[name];
  for (const [n, v] of Object.entries(VIEWS)) {
    if (n !== name) $(v.section).hidden = true;
  }
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.view === name));
  $("#sign-in").hidden = Boolean(key);
  $("#sign-out").hidden = !key;
  if (!key) {
    $(view.section).hidden = true;
    return;
  }
  let response;
  try {
    response = await fetch(view.path, { headers: { Authorization: `Bearer ${key}` }, cache: "no-store" });
  } catch (e) {
    showError(`The coordinator did not answer: ${e.message}`);
    return;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    $(view.section).hidden = true;
    const reason = body && body.error ? body.error.message : response.statusText;
    showError(
      response.status === 401 || response.status === 403
        ? `This key cannot open the ${name} view (${response.status}: ${reason}).`
        : `The ${name} view failed to load (${response.status}: ${reason}).`,
    );
    return;
  }
  showError("");
  // Shown before drawing: the charts size themselves to their box.
  const section = $(view.section);
  section.hidden = false;
  view.render(body);
  section.dataset.renders = String(Number(section.dataset.renders || 0) + 1);
  $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function refresh() {
  clearTimeout(timer);
  load().finally(() => {
    timer = setTimeout(refresh, REFRESH_MS);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("#key").value.trim());
    $("#key").value = "";
    refresh();
  });
  $("#sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showError("");
    refresh();
  });
  document.querySelectorAll(".tab").forEach((button) =>
    button.addEventListener("click", () => {
      sessionStorage.setItem(VIEW, button.dataset.view);
      refresh();
    }),
  );
  refresh();
});
