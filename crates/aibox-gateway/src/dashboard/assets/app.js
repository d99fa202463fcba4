// The aibox admin dashboard. Plain JavaScript, no dependencies, loaded as an
// external script so that the CSP needs no 'unsafe-inline'. Every value from
// the server is put into the page with textContent, never as markup.
"use strict";

const state = { csrf: null, page: "traffic", timer: null, auditBefore: null, auditOlder: null };

function $(id) { return document.getElementById(id); }

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, items, render) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const item of items) {
    const tr = document.createElement("tr");
    render(tr, item);
    body.appendChild(tr);
  }
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.method && opts.method !== "GET" && state.csrf) opts.headers["X-CSRF-Token"] = state.csrf;
  const r = await fetch(path, opts);
  if (r.status === 401) { showLogin(""); throw new Error("login required"); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || ("HTTP " + r.status));
  return body;
}

// Why an SSO login came back refused; the server sends only these codes.
const SSO_ERRORS = {
  no_login_in_progress: "SSO login expired or was already used; start again",
  state_mismatch: "SSO login refused: the answer does not belong to this browser's login",
  issuer_mismatch: "SSO login refused: the answer came from another identity provider",
  provider_refused: "the identity provider refused the login",
  no_code: "SSO login refused: the provider sent no code",
  code_exchange_failed: "SSO login failed: the code could not be exchanged (see aibox's log)",
  id_token_refused: "SSO login refused: the ID token is not valid for this dashboard",
  not_admin: "SSO login refused: your account lacks the admin role",
  sso_unavailable: "SSO login is not available right now",
};

function showLogin(message) {
  state.csrf = null;
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  $("nav").hidden = true;
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  fetch("/api/login/methods", { credentials: "same-origin" })
    .then(r => r.json())
    .then(m => {
      $("sso").hidden = !m.sso;
      // With SSO only, there is no secret to type.
      $("login-form").hidden = !(m.token || m.password) && m.sso;
    })
    .catch(() => {});
}

async function login(event) {
  event.preventDefault();
  const method = $("login-method").value;
  const secret = $("login-secret").value;
  const body = method === "token" ? { token: secret } : { password: secret };
  const r = await fetch("/api/login", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    $("login-error").textContent = (data.error && data.error.message) || ("login failed: HTTP " + r.status);
    return;
  }
  $("login-secret").value = "";
  state.csrf = data.csrf;
  start();
}

async function logout() {
  try { await api("/api/logout", { method: "POST" }); } catch (e) { /* already out */ }
  showLogin("logged out");
}

function start() {
  $("login").hidden = true;
  $("nav").hidden = false;
  show(state.page);
}

function show(page) {
  state.page = page;
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + page;
  for (const b of document.querySelectorAll("nav button[data-page]")) b.classList.toggle("active", b.dataset.page === page);
  const loaders = { traffic: loadTraffic, audit: loadAudit, guardrail: loadGuardrail, mcp: loadMcp, keys: loadKeys, doctor: loadDoctor };
  loaders[page]().catch(err => console.warn(err));
  if (page === "traffic") state.timer = setInterval(() => loadTraffic().catch(() => {}), 2000);
}

async function loadTraffic() {
  const t = await api("/api/traffic");
  $("inflight").textContent = String(t.inflight);
  fill("traffic-table", t.rows, (tr, r) => {
    cell(tr, r.tenant || "(none)");
    cell(tr, r.model || "(none)");
    cell(tr, r.requests);
    cell(tr, r.errors);
    cell(tr, r.latency_count ? (1000 * r.latency_sum_s / r.latency_count).toFixed(2) : "");
    cell(tr, r.prompt_tokens);
    cell(tr, r.completion_tokens);
  });
}

async function tenantOptions(selectId) {
  const select = $(selectId);
  const current = select.value;
  const tenants = await api("/api/tenants");
  select.replaceChildren();
  for (const t of tenants) {
    const o = document.createElement("option");
    o.value = t; o.textContent = t;
    select.appendChild(o);
  }
  if (tenants.includes(current)) select.value = current;
  else if (tenants.includes("default")) select.value = "default";
  return select.value;
}

function details(ev) {
  const skip = new Set(["type", "tenant", "turn", "at_ms"]);
  const parts = [];
  for (const [k, v] of Object.entries(ev)) {
    if (skip.has(k) || v === null) continue;
    parts.push(k + "=" + (typeof v === "object" ? JSON.stringify(v) : String(v)));
  }
  return parts.join(" ");
}

// One page of the log, newest first; `before` pages back by sequence number.
async function loadAudit(before) {
  const tenant = await tenantOptions("audit-tenant");
  $("verify-result").textContent = "";
  if (!tenant) { fill("audit-table", [], () => {}); return; }
  state.auditBefore = before || null;
  const query = before ? "?before=" + encodeURIComponent(before) : "";
  const data = await api("/api/audit/" + encodeURIComponent(tenant) + query);
  state.auditOlder = data.older || null;
  $("audit-older").disabled = !state.auditOlder;
  $("audit-newest").disabled = !before;
  $("audit-range").textContent = data.rows.length
    ? "seq " + data.rows[data.rows.length - 1].seq + " to " + data.rows[0].seq + " of " + data.total
    : "no rows";
  fill("audit-table", data.rows, (tr, r) => {
    cell(tr, r.seq);
    cell(tr, r.turn || "", "mono");
    cell(tr, r.event.type);
    cell(tr, details(r.event), "mono");
    const td = cell(tr, "");
    if (r.turn && r.event.type === "turn_end") {
      const a = document.createElement("a");
      a.href = "/api/receipts/" + encodeURIComponent(r.turn);
      a.textContent = "receipt";
      a.setAttribute("download", "receipt-" + r.turn + ".json");
      a.className = "receipt";
      td.appendChild(a);
    }
  });
}

async function verify() {
  const tenant = $("audit-tenant").value;
  const out = $("verify-result");
  out.className = ""; out.textContent = "verifying " + tenant + "...";
  try {
    const r = await api("/api/audit/" + encodeURIComponent(tenant) + "/verify", { method: "POST" });
    out.className = r.ok ? "ok" : "bad";
    out.textContent = r.ok
      ? "verified: " + r.rows + " rows, " + r.envelopes + " envelopes, tree size " + r.tree_size
      : "NOT verified: first bad seq " + r.first_bad_seq + ": " + r.problem;
  } catch (e) {
    out.className = "bad"; out.textContent = "verify failed: " + e.message;
  }
}

async function loadGuardrail() {
  const g = await api("/api/guardrail");
  $("gr-source").textContent = g.constitution || "(built-in)";
  $("gr-profile").textContent = g.profile;
  fill("gr-counts", g.verdicts, (tr, v) => { cell(tr, v.stage); cell(tr, v.action); cell(tr, v.count); });
  const tenant = await tenantOptions("gr-tenant");
  if (!tenant) return;
  const data = await api("/api/audit/" + encodeURIComponent(tenant) + "?kind=guardrail_verdict");
  fill("gr-recent", data.rows, (tr, r) => {
    cell(tr, r.seq); cell(tr, r.turn || "", "mono"); cell(tr, r.event.stage); cell(tr, r.event.action);
    cell(tr, r.event.profile); cell(tr, JSON.stringify(r.event.findings || []), "mono");
  });
}

async function loadMcp() {
  const servers = await api("/api/mcp");
  fill("mcp-table", servers, (tr, s) => {
    cell(tr, s.health.name); cell(tr, s.health.transport); cell(tr, s.health.state); cell(tr, s.health.restarts);
    cell(tr, s.allow_clients.join(", ") || "(nobody)");
    cell(tr, s.allow_tools === null ? "(all)" : s.allow_tools.join(", "));
    cell(tr, s.deny_tools.join(", ")); cell(tr, s.tools.join(", "));
  });
}

async function loadKeys() {
  const k = await api("/api/keys");
  fill("keys-table", k.keyrings, (tr, e) => {
    cell(tr, e.keyring); cell(tr, e.id, "mono"); cell(tr, e.fingerprint, "mono");
    cell(tr, e.current ? "current" : "verify/decrypt only");
  });
  const rows = [];
  for (const t of k.audit) for (const key of t.keys) rows.push([t.tenant, key.version, key.checkpoint_key]);
  fill("audit-keys-table", rows, (tr, r) => { cell(tr, r[0]); cell(tr, r[1]); cell(tr, r[2], "mono"); });
}

async function loadDoctor() {
  const d = await api("/api/doctor");
  const findings = d.findings || [];
  $("doctor-summary").textContent = d.summary ? JSON.stringify(d.summary) : findings.length + " findings";
  fill("doctor-table", findings, (tr, f) => {
    cell(tr, f.severity); cell(tr, f.id); cell(tr, f.title + (f.evidence ? ": " + f.evidence : "")); cell(tr, f.fix);
  });
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("audit-refresh").addEventListener("click", () => loadAudit(state.auditBefore).catch(() => {}));
  $("audit-tenant").addEventListener("change", () => loadAudit().catch(() => {}));
  $("audit-newest").addEventListener("click", () => loadAudit().catch(() => {}));
  $("audit-older").addEventListener("click", () => { if (state.auditOlder) loadAudit(state.auditOlder).catch(() => {}); });
  $("gr-tenant").addEventListener("change", () => loadGuardrail().catch(() => {}));
  $("audit-verify").addEventListener("click", verify);
  for (const b of document.querySelectorAll("nav button[data-page]")) b.addEventListener("click", () => show(b.dataset.page));
  const ssoError = new URLSearchParams(location.search).get("sso_error");
  if (ssoError) history.replaceState(null, "", "/");
  try {
    const s = await api("/api/session");
    state.csrf = s.csrf || null;
    start();
  } catch (e) {
    showLogin(ssoError ? (SSO_ERRORS[ssoError] || "SSO login failed") : "");
  }
});
