// kordon web console. Plain JavaScript, no dependencies. Every value from
// the server is put in the page with textContent, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const maxAlerts = 200;
let lastAlertID = "";
let mode = "";

// api calls a kordon HTTP API with the bearer token, if one is set.
function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  const token = sessionStorage.getItem("kordon-token");
  if (token) headers["Authorization"] = "Bearer " + token;
  return fetch(path, Object.assign({}, opts, { headers, cache: "no-store" }));
}

async function getJSON(path) {
  const r = await api(path);
  if (r.status === 404) return { missing: true };
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()).trim());
  return r.json();
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function td(text, cls) { return el("td", text, cls); }

function fill(tableSel, rows, emptyText) {
  const body = $(tableSel + " tbody");
  body.replaceChildren(...rows);
  if (!rows.length && emptyText) {
    const tr = row([td(emptyText, "empty")]);
    tr.firstChild.colSpan = $(tableSel + " thead tr").children.length;
    body.appendChild(tr);
  }
}

function setStatus(sel, text, isError) {
  const s = $(sel);
  s.textContent = text || "";
  s.classList.toggle("error", !!isError);
}

function fmtTime(t) {
  const d = new Date(t);
  if (isNaN(d)) return t || "";
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function fmtBytes(n) {
  n = Number(n) || 0;
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}

function workloadOf(a) {
  if (a.pod) return a.namespace + "/" + a.pod;
  return a.clientIp || "";
}

// ---- alert feed (Server-Sent Events over fetch, so a token can be sent) ----

function addAlert(a) {
  const body = $("#alerts tbody");
  const tr = row([
    td(fmtTime(a.time), "nowrap"),
    td(a.severity, "nowrap sev sev-" + a.severity),
    td(a.kind, "nowrap"),
    td(workloadOf(a)),
    td(a.domain),
    td(a.action, "nowrap"),
    td(a.message),
  ]);
  tr.className = "fresh";
  tr.dataset.id = a.id;
  tr.dataset.kind = a.kind;
  body.insertBefore(tr, body.firstChild);
  while (body.children.length > maxAlerts) body.removeChild(body.lastChild);
  $("#alert-count").textContent = String(body.children.length);
  $("#alerts-empty").hidden = true;
  if (a.kind === "quarantine" || a.action === "quarantined") scheduleRefresh(refreshQuarantines);
  scheduleRefresh(refreshEgress);
}

function setFeedState(state, text) {
  const p = $("#feed-state");
  p.dataset.state = state;
  p.textContent = text;
}

async function followAlerts() {
  for (;;) {
    try {
      let url = "/v1/alerts?follow=1&limit=" + maxAlerts;
      if (lastAlertID) url += "&after=" + encodeURIComponent(lastAlertID);
      const r = await api(url, { headers: { Accept: "text/event-stream" } });
      if (r.status === 401 || r.status === 403) {
        setFeedState("error", "feed: " + r.status + " (set a token)");
      } else if (!r.ok) {
        setFeedState("error", "feed: " + r.status);
      } else {
        setFeedState("live", "live");
        await readEvents(r.body);
        setFeedState("connecting", "reconnecting");
      }
    } catch (e) {
      setFeedState("error", "feed: " + e.message);
    }
    await new Promise((res) => setTimeout(res, 2000));
  }
}

// readEvents parses a text/event-stream body until it ends.
async function readEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ev = { id: "", event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i).replace(/\r$/, "");
      buf = buf.slice(i + 1);
      if (line === "") {
        if (ev.data.length && ev.event === "alert") {
          try { addAlert(JSON.parse(ev.data.join("\n"))); } catch (e) { console.error(e); }
          if (ev.id) lastAlertID = ev.id;
        }
        ev = { id: "", event: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const c = line.indexOf(":");
      const field = c < 0 ? line : line.slice(0, c);
      const val = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
      if (field === "data") ev.data.push(val);
      else if (field === "id") ev.id = val;
      else if (field === "event") ev.event = val;
    }
  }
}

// ---- quarantines ----

async function refreshQuarantines() {
  const rows = [];
  const notes = [];
  try {
    const names = await getJSON("/v1/quarantines");
    if (names.missing) notes.push("name quarantines are not served here");
    for (const q of names.quarantines || []) {
      const b = el("button", "lift", "lift");
      b.dataset.kind = "name";
      b.dataset.id = q.id;
      b.dataset.domain = q.domain;
      b.dataset.workload = q.workload;
      // The controller's are Quarantine objects, lifted by namespace/name
      // (deleting the object); dev mode's by id.
      const path = q.name
        ? "/v1/quarantines/" + encodeURIComponent(q.namespace) + "/" + encodeURIComponent(q.name)
        : "/v1/quarantines/" + encodeURIComponent(q.id);
      b.addEventListener("click", () => lift(b, path));
      const cell = td("");
      cell.appendChild(b);
      rows.push(row([td(fmtTime(q.since), "nowrap"), td(q.workload), td(q.domain), td(q.reason), cell]));
    }
    const addrs = await getJSON("/v1/egress/quarantines");
    for (const q of addrs.quarantines || []) {
      const b = el("button", "lift", "lift");
      b.dataset.kind = "address";
      b.dataset.client = q.client;
      b.dataset.destination = q.destination;
      b.addEventListener("click", () => lift(b, "/v1/egress/quarantines/" + encodeURIComponent(q.client) + "/" + encodeURIComponent(q.destination)));
      const cell = td("");
      cell.appendChild(b);
      rows.push(row([td(""), td(q.client), td(q.destination), td("address quarantine (egress firewall)"), cell]));
    }
    setStatus("#quarantines-status", notes.join("; "));
  } catch (e) {
    setStatus("#quarantines-status", e.message, true);
  }
  fill("#quarantines", rows);
  $("#quarantines-empty").hidden = rows.length > 0;
}

async function lift(button, path) {
  button.disabled = true;
  let msg = "", failed = false;
  try {
    const r = await api(path, { method: "DELETE" });
    // 404: already lifted (by someone else, or a second click).
    if (!r.ok && r.status !== 404) throw new Error("lift: " + r.status + " " + (await r.text()).trim());
    msg = "lifted " + (button.dataset.domain || button.dataset.destination) + " for " + (button.dataset.workload || button.dataset.client);
  } catch (e) {
    msg = e.message;
    failed = true;
  }
  await refreshQuarantines();
  setStatus("#quarantines-status", msg, failed);
}

// ---- per-workload egress ----

async function refreshEgress() {
  const notes = [];
  let dns = [], flows = [], direct = [];
  try {
    const [d, f, a] = await Promise.all([
      getJSON("/v1/dns/summary?top=15"),
      getJSON("/v1/egress/flows/summary?top=15"),
      getJSON("/v1/alerts?kind=direct-egress&limit=500"),
    ]);
    if (d.missing) notes.push("no query log here (/v1/dns/summary)");
    if (f.missing) notes.push("no flow log here (the egress firewall is off)");
    dns = d.workloads || [];
    flows = f.workloads || [];
    direct = a.alerts || [];
  } catch (e) {
    setStatus("#egress-status", e.message, true);
    return;
  }
  const sel = $("#workload");
  const current = sel.value;
  const seen = new Set([...dns.map((w) => w.workload), ...flows.map((w) => w.workload), ...direct.map(workloadOf)]);
  const sorted = [...seen].filter(Boolean).sort();
  const opts = sorted.map((n) => { const o = el("option", n); o.value = n; return o; });
  if (!opts.length) { const o = el("option", "(no workload yet)"); o.value = ""; opts.push(o); }
  sel.replaceChildren(...opts);
  sel.value = sorted.includes(current) ? current : (sorted[0] || "");
  const w = sel.value;
  const dw = dns.find((x) => x.workload === w) || { resolved: [], blocked: [] };
  const fw = flows.find((x) => x.workload === w) || { destinations: [], attempts: [] };
  const names = (d) => td(d.names + (d.namesCapped ? "+" : ""), "num");
  fill("#resolved", dw.resolved.map((d) => row([td(d.domain), td(d.queries, "num"), names(d), td(d.lastName, "name"), td(d.verdict, "nowrap verdict-cell v-" + d.verdict)])), "none");
  fill("#blocked", dw.blocked.map((d) => row([td(d.domain), td(d.queries, "num"), names(d), td(d.lastName, "name"), td(d.verdict, "nowrap verdict-cell v-" + d.verdict), td(d.policy)])), "none");
  fill("#destinations", fw.destinations.map((d) => row([td(d.dst + ":" + d.port + "/" + d.proto), td(d.dnsName || ""), td(fmtBytes(d.bytesOut), "num"), td(fmtBytes(d.bytesIn), "num"), td(d.flows, "num")])), "none");
  const attempts = fw.attempts.map((d) => row([td(d.dst + ":" + d.port + "/" + d.proto), td(d.blocked, "num"), td("blocked (" + (d.reason || "policy") + ")")]));
  const byDst = new Map();
  for (const a of direct) {
    if (workloadOf(a) !== w) continue;
    const k = a.domain;
    const e = byDst.get(k) || { n: 0, action: a.action };
    e.n += 1;
    byDst.set(k, e);
  }
  for (const [dst, e] of byDst) attempts.push(row([td(dst), td(e.n, "num"), td("direct-egress alert (" + e.action + ")")]));
  fill("#attempts", attempts, "none");
  setStatus("#egress-status", notes.join("; "));
}

// ---- policy explain ----

async function explain(ev) {
  ev.preventDefault();
  const f = new FormData($("#explain"));
  const req = { namespace: f.get("namespace").trim() };
  const labels = f.get("labels").trim();
  if (labels) {
    req.labels = {};
    for (const kv of labels.split(",")) {
      const i = kv.indexOf("=");
      if (i <= 0) { showDecision(null, "labels: " + JSON.stringify(kv) + " is not k=v"); return; }
      req.labels[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
    }
  }
  for (const k of ["principal", "method", "path", "sourceIP"]) {
    const v = f.get(k).trim();
    if (v) req[k] = v;
  }
  if (f.get("port")) req.port = Number(f.get("port"));
  if (f.get("tcp")) req.tcp = true;
  try {
    const r = await api("/v1/policy/explain", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req) });
    if (!r.ok) { showDecision(null, (await r.text()).trim() || String(r.status)); return; }
    showDecision(await r.json());
  } catch (e) {
    showDecision(null, e.message);
  }
}

function showDecision(d, err) {
  $("#decision").hidden = false;
  const v = $("#decision-verdict");
  const notes = [];
  if (!d) {
    v.textContent = "ERROR";
    v.className = "verdict deny";
    $("#decision-by").textContent = "";
    $("#decision-reason").textContent = err;
  } else {
    v.textContent = d.decision;
    v.className = "verdict " + (d.allowed ? "allow" : "deny");
    $("#decision-by").textContent = d.policy ? "by " + d.policy + " (" + d.rule + ")" : "";
    $("#decision-reason").textContent = d.reason;
    for (const a of d.audited || []) notes.push("audited by " + a);
    for (const n of d.notes || []) notes.push("note: " + n);
    for (const r of d.dryRun || []) notes.push("dry-run " + r.action + " policies would " + r.decision.toLowerCase() + (r.rule ? " (" + r.rule + ")" : ""));
  }
  $("#decision-notes").replaceChildren(...notes.map((n) => el("li", n)));
}

// ---- wiring ----

const pending = new Set();
function scheduleRefresh(fn) {
  if (pending.has(fn)) return;
  pending.add(fn);
  setTimeout(() => { pending.delete(fn); fn(); }, 300);
}

async function start() {
  const tok = $("#token");
  tok.value = sessionStorage.getItem("kordon-token") || "";
  tok.addEventListener("change", () => {
    if (tok.value) sessionStorage.setItem("kordon-token", tok.value);
    else sessionStorage.removeItem("kordon-token");
    refreshQuarantines();
    refreshEgress();
  });
  try {
    const c = await (await fetch("config.json")).json();
    mode = c.mode || "";
    $("#mode").textContent = mode;
  } catch (e) { /* the header just has no mode */ }
  $("#explain").addEventListener("submit", explain);
  $("#refresh-quarantines").addEventListener("click", refreshQuarantines);
  $("#refresh-egress").addEventListener("click", refreshEgress);
  $("#workload").addEventListener("change", refreshEgress);
  refreshQuarantines();
  refreshEgress();
  setInterval(refreshQuarantines, 5000);
  setInterval(refreshEgress, 5000);
  followAlerts();
}

start();
