// The dashboard: reads /routes, /certs, /events and /insight every 5 s and draws them.
// Every value from the agent goes in as text (textContent), never as HTML.
"use strict";

const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// On a narrow screen a row shows as a card (dashboard.css): its first cell a heading, every
// other cell labelled with its column's name (data-label). The roles keep it a table for
// screen readers, which drop a table's meaning once its parts are shown as blocks.
function table(headers, rows) {
  const head = el("tr", { role: "row" }, ...headers.map(([name, cls]) => el("th", { class: cls, role: "columnheader" }, name)));
  for (const row of rows) {
    row.setAttribute("role", "row");
    [...row.cells].forEach((cell, i) => {
      cell.setAttribute("role", "cell");
      if (i > 0 && headers[i] && headers[i][0]) cell.dataset.label = headers[i][0];
    });
  }
  return el("table", { role: "table" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function replace(id, ...nodes) {
  $(id).replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}

class Unauthorized extends Error {}

// null when the agent has no such endpoint (404) or nothing yet (503).
async function getJSON(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) throw new Unauthorized(await r.text());
  if (r.status === 404 || r.status === 503) return null;
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

function fmt(n, digits) {
  return n === null || n === undefined ? "-" : Number(n).toFixed(digits);
}

function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const w = 90, h = 24;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? w / (values.length - 1) : w;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 1 - (v / max) * (h - 2)).toFixed(1)}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(line);
  const title = document.createElementNS(ns, "title");
  title.textContent = `requests per minute, last hour; peak ${Math.max(0, ...values)}`;
  svg.append(title);
  return svg;
}

function flag(a) {
  const f = (x) => (a.kind === "error_ratio" ? `${(x * 100).toFixed(1)} %` : a.kind === "latency" ? `${x.toFixed(0)} ms` : `${x.toFixed(2)} req/s`);
  const r = a.raised || {};
  const text = `${a.kind}: ${f(r.observed || 0)} vs baseline ${f(r.baseline || 0)} (${r.requests || 0} requests)`;
  return el("span", { class: "flag", "data-kind": a.kind }, text);
}

function drawTraffic(insight) {
  if (!insight) return;
  const rows = insight.domains.map((d) => {
    const w = d.last_minute || {};
    const p = w.request_time_ms || {};
    return el("tr", { "data-domain": d.domain },
      el("td", { class: "domain" }, d.domain, (d.anomalies || []).length ? el("div", { class: "flags" }, ...d.anomalies.map(flag)) : null),
      el("td", {}, sparkline(d.requests_per_minute || [])),
      el("td", { class: "num rps" }, fmt(w.requests_per_second, 2)),
      el("td", { class: "num requests hide-narrow" }, w.requests || 0),
      el("td", { class: "num errors" + (w.error_ratio > 0 ? " bad" : "") }, `${fmt((w.error_ratio || 0) * 100, 1)} %`),
      el("td", { class: "num p95" }, fmt(p.p95, 0)));
  });
  const dropped = insight.dropped || {};
  replace("traffic",
    table([["Domain"], ["Last hour"], ["req/s", "num"], ["Requests", "num hide-narrow"], ["5xx", "num"], ["p95 ms", "num"]], rows),
    el("p", { class: "muted" }, `dropped log lines: ${dropped.malformed || 0} malformed, ${dropped.oversized || 0} oversized, ${dropped.unrouted || 0} unrouted`));
}

function drawRoutes(routes) {
  if (!routes) {
    replace("routes", el("p", { class: "muted" }, "no config applied yet"));
    replace("left-out");
    return;
  }
  const rows = routes.routes.map((r) => {
    const servers = r.redirect ? [el("div", {}, `redirect: ${r.redirect}`)]
      : r.servers.map((s) => el("div", { class: s.state === "up" ? "" : "warn" }, s.state === "up" ? s.address : `${s.address} (${s.state})`));
    return el("tr", { "data-domain": r.domain },
      el("td", { class: "domain" }, r.domain + (r.path && r.path !== "/" ? r.path : "")),
      el("td", {}, ...servers),
      el("td", {}, r.health || "/health"),
      el("td", { class: "hide-narrow" }, r.tls),
      el("td", { class: "source" }, r.source));
  });
  replace("routes", rows.length ? table([["Domain"], ["Servers"], ["Health"], ["TLS", "hide-narrow"], ["Source"]], rows)
    : el("p", { class: "muted" }, "no route"));
  const left = routes.left_out.map((d) => el("tr", { "data-domain": d.domain },
    el("td", { class: "domain" }, d.domain), el("td", {}, d.sources.join(", ")), el("td", { class: "bad" }, d.reason)));
  const problems = [...routes.errors, ...routes.warnings].map((d) => el("li", { class: d.severity === "error" ? "bad" : "warn" }, `${d.severity}: ${d.origin}: ${d.message}`));
  replace("left-out",
    left.length ? table([["Domain"], ["Source"], ["nginx's reason"]], left) : el("p", { class: "muted" }, "nothing left out"),
    problems.length ? el("ul", {}, ...problems) : null);
}

function drawCerts(certs) {
  if (!certs) return;
  const rows = certs.certificates.map((c) => el("tr", { "data-domain": c.domain },
    el("td", { class: "domain" }, c.domain),
    el("td", { class: "num days" + (c.days_left !== null && c.days_left < 14 ? " bad" : "") }, c.days_left === null ? "-" : c.days_left),
    el("td", { class: c.status === "valid" ? "ok" : c.status === "failing" || c.status === "missing" ? "bad" : "warn" }, c.status),
    el("td", { class: "hide-narrow" }, c.issuer || "-"),
    el("td", { class: "bad" }, c.last_error || "")));
  replace("certs", rows.length ? table([["Domain"], ["Days left", "num"], ["Status"], ["Issuer", "hide-narrow"], [""]], rows)
    : el("p", { class: "muted" }, "no TLS domain"));
}

// /followers: shown only when the agent has followers enabled (FOLLOWER_KEY_FILE).
function drawFollowers(f) {
  if (!f || !f.followers) return;
  $("followers-section").hidden = false;
  const rows = f.followers.map((n) => el("tr", { "data-node": n.node },
    el("td", { class: "domain" }, n.node),
    el("td", { class: n.current ? "ok" : "warn" }, n.current ? "current" : `behind (${n.revision})`),
    el("td", { class: "num" + (n.age_s > 90 ? " bad" : "") }, `${n.age_s} s`),
    el("td", { class: "bad" }, n.error || "")));
  replace("followers", rows.length ? table([["Node"], ["Revision"], ["Last poll", "num"], [""]], rows)
    : el("p", { class: "muted" }, `no follower yet (revision ${f.revision})`));
}

function drawEvents(events) {
  if (!events) return;
  const items = events.events.slice().reverse().map((e) => {
    const at = new Date(e.at_ms);
    return el("li", { "data-kind": e.kind },
      el("time", { datetime: at.toISOString() }, at.toLocaleTimeString()),
      el("span", { class: "kind" + (["apply_failed", "anomaly", "left_out", "restart"].includes(e.kind) ? " bad" : "") }, e.kind.replace("_", " ")),
      e.text);
  });
  replace("events", ...(items.length ? items : [el("li", { class: "muted" }, "nothing yet")]));
}

// /healthz: "ok", or the one line saying what is wrong.
async function drawHealth() {
  try {
    const r = await fetch("/healthz", { cache: "no-store" });
    const text = (await r.text()).trim();
    $("health").textContent = r.ok ? "healthy" : `unhealthy: ${text}`;
    $("health").className = r.ok ? "ok" : "bad";
  } catch (e) {
    $("health").textContent = "";
  }
}

function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("updated").textContent = "";
}

async function refresh() {
  const [routes, certs, events, insight] = await Promise.allSettled(
    ["/routes", "/certs", "/events", "/insight"].map(getJSON));
  const all = [routes, certs, events, insight];
  const denied = all.find((r) => r.status === "rejected" && r.reason instanceof Unauthorized);
  if (denied) {
    showLogin($("login").hidden ? "" : denied.reason.message);
    return;
  }
  $("login").hidden = true;
  $("main").hidden = false;
  const failed = all.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  $("trouble").hidden = failed.length === 0;
  $("trouble").textContent = failed.join("; ");
  const ok = (r) => (r.status === "fulfilled" ? r.value : undefined);
  if (routes.status === "fulfilled") drawRoutes(routes.value);
  if (ok(certs)) drawCerts(ok(certs));
  if (ok(events)) drawEvents(ok(events));
  if (ok(insight)) drawTraffic(ok(insight));
  // An agent without followers (or an older one) is no trouble: the section stays hidden.
  drawFollowers(await getJSON("/followers").catch(() => undefined));
  await drawHealth();
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.loaded = "true";
}

async function login(event) {
  event.preventDefault();
  const token = $("token").value;
  const r = await fetch("/login", { headers: { Authorization: `Bearer ${token}` }, credentials: "same-origin", cache: "no-store" });
  $("token").value = "";
  if (!r.ok) {
    $("login-error").textContent = await r.text();
    return;
  }
  await refresh();
}

function tick() {
  refresh().catch((e) => {
    $("trouble").hidden = false;
    $("trouble").textContent = `cannot reach the agent: ${e.message}`;
  }).finally(() => setTimeout(tick, REFRESH_MS));
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  tick();
});
