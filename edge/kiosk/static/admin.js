// The operator page: log in with the admin token (kept in this tab's sessionStorage, sent as a Bearer token),
// then set the prompt, run rounds, moderate (hide, delete, bulk delete, ban), watch the live stats, export.
// ?refresh=S: seconds between stats refreshes (default 3).
import { $, api, clock, param } from "/static/common.js";

const KEY = "dkit-admin-token";
const REFRESH_S = Math.max(1, param("refresh", 3));
const PAGE = 50;
// the kiosk's own event screen reaches the server over loopback: every player at the kiosk shares this client, so
// it is never banned (the server refuses it too); its entries are hidden or deleted instead
const KIOSK_SCREEN = new Set(["127.0.0.1", "::1"]);
const SCREEN_NOTE = "the kiosk's own screen (every player there): hide or delete instead of banning";
const SCREEN_DELETE_NOTE = "the kiosk's own screen (every player there): its entries are deleted, not remembered";
let token = sessionStorage.getItem(KEY) || "";
let timer = null, lastCount = -1, paged = false, currentPrompt = "";
const rows = new Map();   // submission id -> its <li> in the queue

// ---- messages ----------------------------------------------------------------------------------------------
let toastTimer = null;
function toast(text, bad = false) {
  clearTimeout(toastTimer);
  const t = $("toast");
  t.textContent = text; t.classList.toggle("bad", bad); t.hidden = false;
  toastTimer = setTimeout(() => { t.hidden = true; }, bad ? 7000 : 3500);
}
function problem(res) {
  const why = res.doc && res.doc.error ? String(res.doc.error) : "";
  switch (res.status) {
    case 0: return "Can't reach the kiosk — is it running?";
    case 401: return "Wrong token.";
    case 403: return "Admin is off on this kiosk (start dkit serve with DKIT_ADMIN_TOKEN).";
    case 429: return `Too many tries — wait ${res.retry || "a few"} s and try again.`;
    case 503: return `The kiosk is busy — try again in ${res.retry || "a few"} s.`;
    case 404: return `Not found${why ? ": " + why : ""} (already gone?)`;
    default: return `${res.status === 400 ? "Refused" : "Error " + res.status}${why ? ": " + why : ""}`;
  }
}

/** An admin call; a 401 or 403 logs out with the reason, any other failure is toasted. Returns the result. */
async function call(url, options = {}) {
  const res = await api(url, { ...options, token });
  if (res.status === 401 || res.status === 403) logout(problem(res));
  else if (!res.ok && !options.quiet) toast(problem(res), true);
  return res;
}

/** A destructive button acts on its second click within 4 s; the first arms it. */
function confirmed(button) {
  if (button.classList.contains("armed")) {
    button.classList.remove("armed"); button.textContent = button.dataset.label; clearTimeout(button.disarm);
    return true;
  }
  button.dataset.label = button.textContent; button.classList.add("armed"); button.textContent = "Sure? Click again";
  button.disarm = setTimeout(() => { button.classList.remove("armed"); button.textContent = button.dataset.label; }, 4000);
  return false;
}

// ---- login -------------------------------------------------------------------------------------------------
async function login(candidate) {
  $("login-btn").disabled = true; $("login-error").textContent = "";
  try {
    const res = await api("/api/admin/stats", { token: candidate });
    if (!res.ok) {
      $("login-error").textContent = problem(res);
      if (candidate === token) { sessionStorage.removeItem(KEY); token = ""; }
      return;
    }
    token = candidate; sessionStorage.setItem(KEY, token); $("token").value = "";
    $("login-view").hidden = true; $("panel").hidden = false; $("logout").hidden = false;
    showStats(res.doc); lastCount = -1;
    await Promise.all([loadPrompt(), loadQueue(), loadBans(), loadRemoved()]);
    clearInterval(timer); timer = setInterval(tick, REFRESH_S * 1000);
  } finally { $("login-btn").disabled = false; }
}
function logout(reason = "") {
  clearInterval(timer); timer = null;
  sessionStorage.removeItem(KEY); token = "";
  rows.clear(); paged = false; $("queue").replaceChildren(); $("bans").replaceChildren();
  $("panel").hidden = true; $("logout").hidden = true; $("login-view").hidden = false;
  $("login-error").textContent = reason; $("token").focus();
}
$("login").addEventListener("submit", (e) => { e.preventDefault(); const t = $("token").value.trim(); if (t) login(t); });
$("logout").onclick = () => logout("");

// ---- stats -------------------------------------------------------------------------------------------------
function mb(bytes) { const m = bytes / 1048576; return m >= 1024 ? `${(m / 1024).toFixed(2)} GB` : `${m.toFixed(m < 10 ? 1 : 0)} MB`; }
function showStats(doc) {
  const counts = doc.counts || {};
  $("stat-rate").textContent = (Number(doc.per_minute) || 0).toFixed(Number.isInteger(doc.per_minute) ? 0 : 1);
  $("stat-stored").textContent = doc.submissions ?? "–";
  for (const k of ["accepted", "blocked", "rate_limited", "duplicates", "banned", "busy"]) {
    $("stat-" + k).textContent = counts[k] || 0;
  }
  const disk = doc.disk || {}, used = Number(disk.bytes) || 0, quota = Number(disk.quota) || 0;
  $("disk-bar").max = quota || 1; $("disk-bar").value = Math.min(used, quota || 1);
  $("disk-bar").classList.toggle("full", quota > 0 && used / quota > 0.9);
  $("disk-text").textContent = quota
    ? `${mb(used)} of ${mb(quota)} (${Math.round(100 * used / quota)} %)${disk.files !== undefined ? ` · ${disk.files} entries` : ""}`
    : mb(used);
  $("stats-age").textContent = `updated ${new Date().toLocaleTimeString()}`;
  showRound(doc.round || null, doc.prompt);
  const bundle = doc.bundle || {};  // an untrained (random-teacher) bundle: said here, never on the event screen
  $("untrained-banner").hidden = !bundle.untrained;
  $("untrained-banner").textContent = bundle.untrained ? `UNTRAINED bundle (${bundle.name}): ${bundle.warning}` : "";
  return doc;
}
let roundEnd = 0, roundTicker = null, roundPrompt = "";
function showRound(round, prompt) {
  if (prompt !== undefined && prompt !== currentPrompt) {
    currentPrompt = prompt; $("current-prompt").textContent = prompt; $("live-prompt").textContent = prompt;
    document.querySelectorAll("#suggestions button").forEach((b) => b.classList.toggle("on", b.textContent === prompt));
  }
  clearInterval(roundTicker); roundTicker = null;
  const el = $("round-status");
  if (!round) { el.textContent = "free play"; el.className = ""; $("end-round").disabled = true; return; }
  roundPrompt = round.prompt;
  roundEnd = performance.now() + (Number(round.remaining) || 0) * 1000;
  const paint = () => {
    const left = (roundEnd - performance.now()) / 1000;
    el.className = left > 0 ? "running" : "over";
    el.textContent = left > 0 ? `round “${roundPrompt}”: ${clock(left)} left` : `round “${roundPrompt}” is over`;
    $("end-round").disabled = left <= 0;
  };
  paint(); roundTicker = setInterval(paint, 500);
}
async function tick() {
  const res = await call("/api/admin/stats", { quiet: true });
  if (!res.ok) return;
  showStats(res.doc);
  if (res.doc.submissions !== lastCount) { lastCount = res.doc.submissions; loadQueue(); }
}

// ---- prompt and rounds -------------------------------------------------------------------------------------
async function loadPrompt() {
  const res = await api("/api/prompt");
  if (!res.ok) return;
  $("suggestions").replaceChildren(...(res.doc.suggestions || []).map((s) => {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = s; b.classList.toggle("on", s === res.doc.prompt);
    b.onclick = () => { $("prompt-text").value = s; $("prompt-text").focus(); };
    return b;
  }));
  currentPrompt = ""; showRound(res.doc.round || null, res.doc.prompt);
}
$("prompt-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("prompt-text").value.trim();
  if (!text) { toast("Type a prompt or pick a suggestion first.", true); return; }
  const res = await call("/api/prompt", { method: "PUT", json: { prompt: text } });
  if (res.ok) { toast(`Prompt set to “${res.doc.prompt}” (free play).`); showRound(null, res.doc.prompt); }
});
$("round-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const seconds = Math.round(Number($("round-seconds").value));
  if (!(seconds >= 1)) { toast("A round lasts at least 1 second.", true); return; }
  const text = $("prompt-text").value.trim();
  const res = await call("/api/admin/round", { method: "POST", json: text ? { prompt: text, seconds } : { seconds } });
  if (res.ok) {
    const r = res.doc.round || {};
    toast(`Round “${r.prompt}” started: ${clock(seconds)}.`); showRound(r, r.prompt);
  }
});
$("end-round").onclick = async () => {
  if (!confirmed($("end-round"))) return;
  const res = await call("/api/admin/round", { method: "DELETE" });
  if (res.ok) { toast("Round ended."); tick(); }
};

// ---- the moderation queue ----------------------------------------------------------------------------------
function ago(epoch) {
  const s = Math.max(0, Date.now() / 1000 - epoch);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return new Date(epoch * 1000).toLocaleString();
}
function button(label, cls, onclick) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = label; b.className = cls; b.onclick = onclick;
  return b;
}
/**
 * Show the thumbnail at `url` (an admin route: it needs the token, so it is fetched, not linked) in `img`, through a
 * blob: URL that is let go once shown. A newer url for the same img wins.
 */
async function thumbnail(img, url) {
  img.dataset.src = url;
  const res = await api(url, { token, raw: true });
  if (!res.ok || img.dataset.src !== url) return;
  const blobUrl = URL.createObjectURL(await res.res.blob());
  img.addEventListener("load", () => URL.revokeObjectURL(blobUrl), { once: true });
  img.addEventListener("error", () => URL.revokeObjectURL(blobUrl), { once: true });
  img.src = blobUrl;
}
function row(e) {
  const li = document.createElement("li");
  li.dataset.id = e.id;
  const img = document.createElement("img"); img.alt = e.name;
  const meta = document.createElement("div"); meta.className = "meta";
  const sub = document.createElement("div"); sub.className = "sub";
  const actions = document.createElement("div"); actions.className = "actions";
  li.append(img, meta, sub, actions);
  li.update = (doc) => {
    li.entry = doc;
    if (img.dataset.src !== doc.thumb_url) thumbnail(img, doc.thumb_url);
    li.classList.toggle("hidden", !!doc.hidden);
    const who = button(doc.name, "who link", () => { $("bulk-name").value = doc.name; $("bulk-name").focus(); });
    who.title = "delete all by this name…";
    const pts = document.createElement("span"); pts.className = "pts"; pts.textContent = Number(doc.score).toFixed(1);
    const verdict = document.createElement("span"); verdict.className = `badge ${doc.verdict}`; verdict.textContent = doc.verdict;
    const parts = [who, pts, verdict];
    if (doc.hidden) { const h = document.createElement("span"); h.className = "badge off"; h.textContent = "hidden"; parts.push(h); }
    meta.replaceChildren(...parts);
    const client = button(doc.client || "?", "client link", () => {
      $("bulk-client").value = doc.client; $("ban-client").value = KIOSK_SCREEN.has(doc.client) ? "" : doc.client;
      $("bulk-client").focus();
    });
    client.title = "delete all by this client, or ban it…";
    const screen = KIOSK_SCREEN.has(doc.client);
    const where = [`#${doc.id} · “${doc.prompt}” · ${ago(doc.created)} · `, client];
    if (screen) {  // why its Ban button is off, said where the operator looks
      const note = document.createElement("span"); note.className = "screen-note"; note.textContent = ` (${SCREEN_NOTE})`;
      where.push(note);
    }
    sub.replaceChildren(...where);
    if (!actions.children.length) {
      actions.append(
        button("Hide", "hide", () => setHidden(li)),
        button("Delete", "delete danger", (ev) => { if (confirmed(ev.currentTarget)) remove(li); }),
        button("Ban client", "ban danger", (ev) => { if (confirmed(ev.currentTarget)) ban(li.entry.client, `entry #${li.entry.id}`); }));
    }
    actions.querySelector(".hide").textContent = doc.hidden ? "Unhide" : "Hide";
    const banBtn = actions.querySelector(".ban");
    banBtn.disabled = screen;
    banBtn.title = screen ? `Can't ban ${doc.client}: ${SCREEN_NOTE}.` : `ban ${doc.client}: its next drawing is refused`;
  };
  li.update(e);
  return li;
}
function place(entries, { append = false } = {}) {
  const ol = $("queue");
  if (!append && entries.length) {
    // the newest page: entries in its id range that it no longer lists were deleted elsewhere
    const low = entries[entries.length - 1].id, seen = new Set(entries.map((e) => e.id));
    for (const [id, li] of rows) if (id >= low && !seen.has(id)) { li.remove(); rows.delete(id); }
  }
  for (const e of entries) {
    if (rows.has(e.id)) rows.get(e.id).update(e);
    else rows.set(e.id, row(e));
  }
  const order = [...rows.keys()].sort((a, b) => b - a);     // newest first
  ol.replaceChildren(...order.map((id) => rows.get(id)));
  $("queue-empty").hidden = rows.size > 0;
}
async function loadQueue() {
  const res = await call(`/api/admin/submissions?limit=${PAGE}`, { quiet: true });
  if (!res.ok) return;
  const entries = res.doc.entries || [];
  if (!entries.length) { rows.clear(); $("queue").replaceChildren(); }
  place(entries);
  if (!paged) { paged = true; $("more").hidden = entries.length < PAGE; }
}
$("more").onclick = async () => {
  const before = Math.min(...rows.keys());
  const res = await call(`/api/admin/submissions?limit=${PAGE}&before=${before}`);
  if (!res.ok) return;
  const entries = res.doc.entries || [];
  place(entries, { append: true });
  $("more").hidden = entries.length < PAGE;
};
async function setHidden(li) {
  const res = await call(`/api/admin/submissions/${li.entry.id}`, { method: "PATCH", json: { hidden: !li.entry.hidden } });
  if (res.ok) { li.update(res.doc); toast(res.doc.hidden ? `#${res.doc.id} hidden from the board.` : `#${res.doc.id} is back on the board.`); }
}
async function remove(li) {
  const id = li.entry.id;
  const res = await call(`/api/submissions/${id}`, { method: "DELETE" });
  if (res.ok || res.status === 404) { li.remove(); rows.delete(id); $("queue-empty").hidden = rows.size > 0; }
  if (res.ok) { toast(`#${id} deleted: the same drawing stays refused on its prompt.`); loadRemoved(); }
}
async function bulk(field, input, buttonEl) {
  const value = $(input).value.trim();
  if (!value) { toast(`Type a ${field} first (or click one in the queue).`, true); return; }
  if (!confirmed($(buttonEl))) return;
  const res = await call("/api/admin/delete", { method: "POST", json: { [field]: value } });
  if (res.ok) {
    const n = `${res.doc.deleted} entr${res.doc.deleted === 1 ? "y" : "ies"}`;
    toast(res.doc.remembered === false ? `Deleted ${n}. ${res.doc.note}.`
      : `Deleted ${n} by ${field} “${value}”: the same drawings stay refused on their prompts.`);
    loadRemoved();
    for (const [id, li] of rows) if (li.entry[field] === value) { li.remove(); rows.delete(id); }
    $("queue-empty").hidden = rows.size > 0; $(input).value = "";
  }
}

// ---- remembered deletes: a deleted drawing stays refused on its prompt until the operator allows it again ------
const remembered = document.createElement("p");
remembered.className = "hint"; remembered.id = "removed-note";
const rememberedText = document.createElement("span");
const allowAll = button("Allow them again", "allow-again", async (ev) => {
  if (!confirmed(ev.currentTarget)) return;
  const res = await call("/api/admin/removed", { method: "DELETE" });
  if (res.ok) { toast(`${res.doc.forgotten} deleted drawing${res.doc.forgotten === 1 ? "" : "s"} may be drawn again.`); loadRemoved(); }
});
allowAll.hidden = true;  // shown by loadRemoved once the count is known (and not 0)
remembered.append(rememberedText, " ", allowAll);
document.querySelector("#queue-card .bulk").after(remembered);
$("bulk-client").addEventListener("input", () => {
  $("delete-client").title = KIOSK_SCREEN.has($("bulk-client").value.trim()) ? SCREEN_DELETE_NOTE : "";
});
async function loadRemoved() {
  const res = await call("/api/admin/removed?limit=1", { quiet: true });
  if (!res.ok) return;
  const n = res.doc.total;
  rememberedText.textContent = `${n} deleted drawing${n === 1 ? " is" : "s are"} remembered: the same drawing is ` +
    `refused on its prompt. Deleting all by the kiosk screen's client (${[...KIOSK_SCREEN].join(" / ")}) does not ` +
    "remember them: those are every player's drawings.";
  allowAll.hidden = n === 0;
}
$("bulk-name-form").addEventListener("submit", (e) => { e.preventDefault(); bulk("name", "bulk-name", "delete-name"); });
$("bulk-client-form").addEventListener("submit", (e) => { e.preventDefault(); bulk("client", "bulk-client", "delete-client"); });

// ---- bans --------------------------------------------------------------------------------------------------
async function loadBans() {
  const res = await call("/api/admin/bans", { quiet: true });
  if (!res.ok) return;
  const bans = res.doc.bans || [];
  $("bans").replaceChildren(...bans.map((b) => {
    const li = document.createElement("li"); li.dataset.client = b.client;
    const text = document.createElement("span");
    const who = document.createElement("strong"); who.textContent = b.client;
    const sub = document.createElement("span"); sub.className = "sub";
    sub.textContent = ` · ${ago(b.created)}${b.reason ? " · " + b.reason : ""}` +
      (KIOSK_SCREEN.has(b.client) ? " · not applied: the kiosk's own screen is never banned" : "");
    text.append(who, sub);
    li.append(text, button("Unban", "unban", () => unban(b.client)));
    return li;
  }));
  $("bans-empty").hidden = bans.length > 0;
}
async function ban(client, reason = "") {
  if (!client) return;
  if (KIOSK_SCREEN.has(client)) { toast(`Can't ban ${client}: ${SCREEN_NOTE}.`, true); return; }
  const res = await call("/api/admin/bans", { method: "POST", json: { client, reason } });
  if (res.ok) { toast(`${client} is banned: its next submission is refused.`); loadBans(); }
}
async function unban(client) {
  const res = await call(`/api/admin/bans/${encodeURIComponent(client)}`, { method: "DELETE" });
  if (res.ok || res.status === 404) loadBans();
  if (res.ok) toast(`${client} may play again.`);
}
$("ban-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const client = $("ban-client").value.trim();
  if (client && confirmed($("ban-btn"))) { ban(client, $("ban-reason").value.trim()); $("ban-reason").value = ""; }
});

// ---- export ------------------------------------------------------------------------------------------------
$("export").onclick = async () => {
  const only = $("export-current").checked && currentPrompt;
  $("export").disabled = true;
  try {
    const res = await call("/api/admin/export" + (only ? "?prompt=" + encodeURIComponent(currentPrompt) : ""), { raw: true });
    if (!res.ok) return;
    const url = URL.createObjectURL(await res.res.blob());
    const a = document.createElement("a");
    a.href = url; a.download = `leaderboard-${new Date().toISOString().slice(0, 19).replace(/[T:]/g, "-")}.zip`;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    toast("Export downloaded.");
  } finally { $("export").disabled = false; }
};

if (token) login(token); else $("token").focus();
