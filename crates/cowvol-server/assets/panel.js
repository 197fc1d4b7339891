// The cowvol snapshot panel. Talks to /api/v1 with the token the user
// logged in with (kept in sessionStorage, so it dies with the tab). Every
// value from the server is put in the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("cowvol-token") || "", cursors: [null], page: 0, total: 0, searchTimer: null };
const STATUS = { ready: "Ready", backed_up: "Backed Up", creating: "In Progress (Creating)", failed: "Failed" };

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + state.token } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch("/api/v1" + path, opts);
  let json = null;
  try { json = await resp.json(); } catch (_) { /* a non-JSON answer is reported below */ }
  if (resp.status === 401) { logout("Your token was not accepted."); throw new Error("unauthorized"); }
  if (!json || !json.success) {
    const msg = json && json.error ? json.error.message : "HTTP " + resp.status;
    throw new Error(msg);
  }
  return json.data;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

// ---- login ----------------------------------------------------------------

async function login(token) {
  state.token = token;
  try {
    await api("GET", "/snapshots?limit=1");
  } catch (e) {
    $("login-error").textContent = e.message === "unauthorized" ? "That token is not valid." : e.message;
    return;
  }
  sessionStorage.setItem("cowvol-token", token);
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = "Logged in";
  resetPaging();
  load();
}

function logout(reason) {
  sessionStorage.removeItem("cowvol-token");
  state.token = "";
  $("main").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = reason || "";
}

// ---- the table ------------------------------------------------------------

function resetPaging() {
  state.cursors = [null];
  state.page = 0;
}

function query() {
  const p = new URLSearchParams();
  const s = $("search").value.trim();
  if (s) p.set("search", s);
  p.set("limit", $("page-size").value);
  const cursor = state.cursors[state.page];
  if (cursor) p.set("cursor", cursor);
  return p.toString();
}

async function load() {
  let page;
  try {
    page = await api("GET", "/snapshots?" + query());
  } catch (e) {
    if (e.message !== "unauthorized") say("Could not load snapshots: " + e.message, true);
    return;
  }
  state.total = page.total;
  state.cursors[state.page + 1] = page.next_cursor || undefined;
  render(page.items);
}

function cell(tr, ...children) {
  const td = document.createElement("td");
  for (const c of children) td.append(c);
  tr.append(td);
  return td;
}

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  return s;
}

function button(cls, text, onClick) {
  const b = document.createElement("button");
  b.className = cls;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

function render(items) {
  const body = document.querySelector("#snapshots tbody");
  body.replaceChildren();
  for (const s of items) {
    const tr = document.createElement("tr");
    tr.dataset.id = s.id;
    tr.dataset.volume = s.volume_id;
    cell(tr, span("name", s.name), span("owner", s.owner || "—"));
    cell(tr, span("kind", s.kind.toUpperCase()));
    cell(tr, span("volname", s.volume_name), span("volid", s.volume_id));
    cell(tr, span("tag " + s.status, STATUS[s.status] || s.status));
    const created = new Date(s.created_at);
    const when = span("created", created.toLocaleString());
    when.title = s.created_at;
    cell(tr, when);
    const ready = s.status === "ready";
    const acts = cell(tr,
      button("act-volume", "Create Volume", () => createVolume(s)),
      button("act-template", "Create Template", () => createTemplate(s)),
      button("act-revert", "Revert to Snapshot", () => revert(s)),
      button("act-delete danger", "Delete", () => remove(s)));
    acts.className = "actions";
    for (const b of acts.querySelectorAll(".act-volume, .act-template, .act-revert")) b.disabled = !ready;
    body.append(tr);
  }
  $("empty").hidden = items.length > 0;
  const size = Number($("page-size").value);
  const first = state.page * size;
  $("range").textContent = state.total === 0 ? "0 of 0" : `${first + 1}–${first + items.length} of ${state.total}`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = !state.cursors[state.page + 1];
}

// ---- actions --------------------------------------------------------------

// Opens the dialog and resolves with {name, safety} on OK, null on cancel.
function ask({ title, text, ok, danger, name, safety }) {
  const d = $("dialog");
  $("dialog-title").textContent = title;
  $("dialog-text").textContent = text;
  $("dialog-ok").textContent = ok;
  $("dialog-ok").className = danger ? "primary danger" : "primary";
  $("dialog-name-row").hidden = name === undefined;
  $("dialog-name").value = name || "";
  $("dialog-safety-row").hidden = !safety;
  $("dialog-safety").checked = true;
  d.returnValue = "";
  return new Promise((resolve) => {
    d.addEventListener("close", () => {
      resolve(d.returnValue === "ok" ? { name: $("dialog-name").value.trim(), safety: $("dialog-safety").checked } : null);
    }, { once: true });
    d.showModal();
    if (name !== undefined) $("dialog-name").focus();
  });
}

async function act(done, fn) {
  try {
    await fn();
    say(done, false);
  } catch (e) {
    if (e.message !== "unauthorized") say(e.message, true);
  }
  await load();
}

async function createVolume(s) {
  const r = await ask({ title: "Create volume", text: `A new volume with the data of snapshot "${s.name}".`, ok: "Create volume", name: `${s.name}-vol` });
  if (!r) return;
  let vol;
  await act("", async () => { vol = await api("POST", "/sandboxvolumes", { name: r.name || undefined, snapshot_id: s.id }); });
  if (vol) say(`Created volume ${vol.name} (${vol.id}) from ${s.name}.`, false);
}

async function createTemplate(s) {
  const r = await ask({ title: "Create template", text: `A read-only base image from snapshot "${s.name}".`, ok: "Create template", name: `${s.name}-template` });
  if (!r) return;
  let t;
  await act("", async () => { t = await api("POST", "/templates", { name: r.name, snapshot_id: s.id }); });
  if (t) say(`Created template ${t.name} (${t.id}).`, false);
}

async function revert(s) {
  const r = await ask({
    title: "Revert to snapshot",
    text: `Volume ${s.volume_name} (${s.volume_id}) will be rolled back to "${s.name}". ` +
      "This cannot be undone: every change made since the snapshot is discarded, unless you keep a safety snapshot.",
    ok: "Revert", danger: true, safety: true,
  });
  if (!r) return;
  await act(`Reverted ${s.volume_name} to ${s.name}.`, () =>
    api("POST", `/sandboxvolumes/${encodeURIComponent(s.volume_id)}/snapshots/${encodeURIComponent(s.id)}/restore`, { safety_snapshot: r.safety }));
}

async function remove(s) {
  const r = await ask({ title: "Delete snapshot", text: `Delete snapshot "${s.name}" of ${s.volume_name}? This cannot be undone.`, ok: "Delete", danger: true });
  if (!r) return;
  await act(`Deleted ${s.name}.`, () => api("DELETE", `/sandboxvolumes/${encodeURIComponent(s.volume_id)}/snapshots/${encodeURIComponent(s.id)}`));
}

// ---- wiring ---------------------------------------------------------------

$("login-form").addEventListener("submit", (e) => { e.preventDefault(); login($("token").value.trim()); });
$("logout").addEventListener("click", () => logout());
$("refresh").addEventListener("click", () => { say("", false); load(); });
$("page-size").addEventListener("change", () => { resetPaging(); load(); });
$("search").addEventListener("input", () => {
  clearTimeout(state.searchTimer);
  state.searchTimer = setTimeout(() => { resetPaging(); load(); }, 250);
});
$("prev").addEventListener("click", () => { if (state.page > 0) { state.page--; load(); } });
$("next").addEventListener("click", () => { if (state.cursors[state.page + 1]) { state.page++; load(); } });

if (state.token) login(state.token); else logout();
