// What the event screen (kiosk.js) and the operator page (admin.js) share: element lookup, query parameters,
// and `api`, a fetch that never throws and always answers {ok, status, doc, retry}.

export const $ = (id) => document.getElementById(id);

/** A number from the page's query string (?attract=2), or `fallback` when absent or not a number >= 0. */
export function param(name, fallback) {
  const text = new URLSearchParams(location.search).get(name);
  const value = text === null || text === "" ? NaN : Number(text);
  return Number.isFinite(value) && value >= 0 ? value : fallback;
}

/** Whole seconds to wait: the JSON `retry_after`, else the Retry-After header, else `fallback`. */
function retryOf(doc, res, fallback) {
  for (const v of [doc && doc.retry_after, res && res.headers.get("retry-after")]) {
    const n = Number(v);
    if (v !== null && v !== undefined && v !== "" && Number.isFinite(n) && n >= 0) return Math.max(1, Math.ceil(n));
  }
  return fallback;
}

/**
 * fetch `url`; `json` is sent as a JSON body, `token` as `Authorization: Bearer TOKEN`, `raw` keeps the body
 * unread (res.blob() for a download). Status 0 means the kiosk could not be reached.
 */
export async function api(url, { method = "GET", body, json, token, raw = false } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  let res;
  try {
    res = await fetch(url, { method, body, headers, cache: "no-store", credentials: "same-origin" });
  } catch (err) {
    return { ok: false, status: 0, doc: { error: String(err) }, retry: null, res: null };
  }
  let doc = {};
  if (!(raw && res.ok) && res.status !== 204) {
    const type = res.headers.get("content-type") || "";
    try {
      doc = type.includes("json") ? await res.json() : { error: (await res.text()).slice(0, 200) };
    } catch (err) {
      doc = { error: "unreadable answer" };
    }
  }
  if (doc === null || typeof doc !== "object") doc = { value: doc };
  return { ok: res.ok, status: res.status, doc, retry: retryOf(doc, res, null), res };
}

/** m:ss (or h:mm:ss) of a number of seconds. */
export function clock(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${r}` : `${m}:${r}`;
}
