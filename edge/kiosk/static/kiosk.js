// The event screen: draw (mouse, pen, touch) or show the camera, submit, see the score revealed, the leaderboard,
// the round's countdown; an attract loop of the best drawings when nobody has touched the screen for a while.
// The prompt is shown whole however long (an operator may type 300 characters): it wraps and shrinks to fit.
// Query parameters (for tests and odd screens): ?attract=S seconds idle before the attract loop (0: never),
// ?slide=S seconds per attract slide, ?poll=S seconds between prompt/leaderboard refreshes.
import { $, api, clock, param } from "/static/common.js";

const IDLE_S = param("attract", 45);
const SLIDE_S = Math.max(1, param("slide", 5));
const POLL_S = Math.max(1, param("poll", 5));
const REVEAL_S = 20;        // the score reveal closes by itself after this
const COUNT_MS = 1200;      // the score's count-up
const BOARD_LIMIT = 10;    // entries the leaderboard asks for (fewer may fit on a small screen)
const LONG_PROMPT = 60;     // characters: a longer prompt is not repeated inside the result's sentences
const COLORS = ["#111111", "#e4572e", "#2e86de", "#17a34a", "#f5b700", "#8e44ad", "#8b5a2b", "#ffffff"];

const canvas = $("canvas"), ctx = canvas.getContext("2d");
const reduced = matchMedia("(prefers-reduced-motion: reduce)").matches;
let color = COLORS[0], strokes = [], current = null, camera = null, liveTimer = null;
let prompt = "", round = null, boardKey = "", busy = false, coolUntil = 0;

// ---- drawing -----------------------------------------------------------------------------------------------
function paper() { ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
function drawStroke(s) {
  ctx.strokeStyle = s.color; ctx.lineWidth = s.size; ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.beginPath();
  s.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  if (s.points.length === 1) ctx.lineTo(s.points[0][0] + 0.01, s.points[0][1]);
  ctx.stroke();
}
function redraw() { paper(); strokes.forEach(drawStroke); }
function point(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}
canvas.addEventListener("pointerdown", (e) => {          // mouse, touch and pen alike
  if (camera) return;
  e.preventDefault();
  try { canvas.setPointerCapture(e.pointerId); } catch (err) { /* a pointer the browser no longer tracks */ }
  const pressure = e.pointerType === "pen" && e.pressure ? 0.5 + e.pressure : 1;
  current = { color, size: +$("size").value * pressure, points: [point(e)] };
  strokes.push(current); drawStroke(current);
});
canvas.addEventListener("pointermove", (e) => {
  if (!current) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
  (events.length ? events : [e]).forEach((ev) => current.points.push(point(ev)));
  redraw();
});
["pointerup", "pointercancel", "pointerleave"].forEach((t) => canvas.addEventListener(t, () => { current = null; }));
canvas.addEventListener("contextmenu", (e) => e.preventDefault());  // a long press draws, it opens no menu

COLORS.forEach((c, i) => {
  const b = document.createElement("button");
  b.type = "button"; b.className = "swatch" + (i ? "" : " on"); b.style.background = c; b.title = c;
  b.setAttribute("aria-label", c);
  b.onclick = () => {
    color = c; document.querySelectorAll(".swatch").forEach((s) => s.classList.remove("on")); b.classList.add("on");
  };
  $("colors").appendChild(b);
});
$("undo").onclick = () => { strokes.pop(); redraw(); };
$("clear").onclick = () => { strokes = []; redraw(); };

// ---- the prompt as people read it -----------------------------------------------------------------------------
// A prompt is often phrased as a template ("a drawing of an apple", "a photo of a cat"): under the screen's own
// "Draw" heading that would read "Draw a drawing of an apple", so the framing words go, here and only here.
const FRAMING = /^\s*(?:an?|the)\s+(?:(?:quick|simple|black and white|hand-drawn|rough|small|cartoon)\s+)*(?:drawing|photo|photograph|picture|image|sketch|doodle|painting|illustration|rendering)\s+of\s+/i;
export function shown(text) {
  const rest = String(text || "").replace(FRAMING, "");
  return rest.trim() ? rest : String(text || "");
}

/** Shrink `el`'s font (from its style sheet's size down to `minPx`) until its box is at most `maxHeight` px tall;
 *  it wraps, so the whole text stays readable and nothing is cut. Returns the height it takes. */
function shrinkToFit(el, maxHeight, minPx) {
  el.style.removeProperty("font-size");
  let size = parseFloat(getComputedStyle(el).fontSize);
  while (el.scrollHeight > maxHeight && size > minPx) {
    size = Math.max(minPx, size * 0.92);
    el.style.fontSize = `${size}px`;
  }
  return el.scrollHeight;
}

/** Fit the header's prompt, every word shown: wrapped at full size while that fits a third of the screen (the bar
 *  grows to hold it), else smaller, down to a readable least size at which the bar grows as far as the text needs.
 *  The attract loop's title likewise, within a fifth of the screen. */
function fitPrompt() {
  const root = document.documentElement, top = $("top"), ask = $("ask");
  root.style.removeProperty("--hdr");
  const bar = top.clientHeight, pad = bar * 0.12;
  const minPx = Math.max(14, Math.min(innerWidth, innerHeight) * 0.03);
  const need = shrinkToFit(ask, Math.max(bar - 2 * pad, innerHeight / 3 - 2 * pad), minPx) + 2 * pad;
  if (need > bar) root.style.setProperty("--hdr", `${Math.ceil(need)}px`);
  shrinkToFit($("attract-title"), innerHeight * 0.22, Math.max(14, minPx));
}
addEventListener("resize", fitPrompt);

// ---- messages ----------------------------------------------------------------------------------------------
let noticeTimer = null;
function notice(text, { seconds = 6, info = false } = {}) {
  clearTimeout(noticeTimer);
  const n = $("notice");
  n.textContent = text; n.classList.toggle("info", info); n.hidden = !text;
  if (text && seconds) noticeTimer = setTimeout(() => { n.hidden = true; }, seconds * 1000);
}

/** Submit is off for `seconds`; the notice counts them down with `say(n)`. */
function cooldown(seconds, say) {
  coolUntil = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.ceil((coolUntil - Date.now()) / 1000);
    if (left <= 0) { notice(""); setBusy(false); return; }
    notice(say(left), { seconds: 0 }); setTimeout(tick, 250);
  };
  setBusy(busy); tick();
}
function setBusy(on) {
  busy = on;
  $("submit").disabled = on || Date.now() < coolUntil;
  $("submit").textContent = on ? "Judging…" : "Submit";
}

/** A failed submission in plain words. */
function trouble(res) {
  const error = String(res.doc.error || "");
  switch (res.status) {
    case 0: return notice("Can't reach the judge right now — check the kiosk's network and try again.");
    case 429: return cooldown(res.retry || 5, (n) => `Slow down — try again in ${n} s`);
    case 503: return cooldown(res.retry || 3, (n) => `The judge is busy — try again in ${n} s`);
    case 409:
      if (/round/i.test(error)) { refreshPrompt(); return notice("This round is over — watch for the next one!"); }
      return notice(duplicateNotice(res.doc));
    case 403: return notice("Sorry — this kiosk isn't taking drawings from this device any more.", { seconds: 10 });
    case 413: return notice("That picture is too big for the judge — try a simpler one.");
    case 408: return notice("The connection is too slow right now — please try again.");
    case 404: refreshPrompt(); return notice("The prompt just changed — have a look and draw again!");
    case 507: return notice("The kiosk is out of space — please tell the staff.", { seconds: 10 });
    case 400: case 415:
      if (/name/i.test(error)) return notice("That name isn't allowed here — please choose another one.");
      return notice("The judge couldn't read that picture — please try again.");
    default: return notice(`Something went wrong (error ${res.status}) — please try again.`);
  }
}

// ---- submitting and the score reveal -----------------------------------------------------------------------
function blobOf(source) {
  return new Promise((resolve) => {
    if (source === canvas) return canvas.toBlob(resolve, "image/png");
    const c = document.createElement("canvas");
    c.width = source.videoWidth || 640; c.height = source.videoHeight || 480;
    c.getContext("2d").drawImage(source, 0, 0, c.width, c.height);
    c.toBlob(resolve, "image/jpeg", 0.85);
  });
}
async function post(url, source, extra = {}) {
  const form = new FormData();
  form.append("image", await blobOf(source), source === canvas ? "drawing.png" : "frame.jpg");
  form.append("prompt", prompt);
  Object.entries(extra).forEach(([k, v]) => form.append(k, v));
  return api(url, { method: "POST", body: form });
}

/** The near-duplicate refusal in plain words: it names the entry it copies only when that one is on screen. */
function duplicateNotice(doc) {
  const id = doc.duplicate_of ?? (doc.duplicate && doc.duplicate.id);
  const rank = id === undefined || id === null ? 0 : onScreenRank(id);
  return rank
    ? `That's almost the same as #${rank} on the board — make it your own!`
    : "That's almost the same as a drawing already entered — make it your own!";
}

export function sentence(doc) {
  const full = shown(doc.prompt || prompt), score = Math.round(doc.score || 0);
  const p = full.length > LONG_PROMPT ? "the prompt" : full;   // a long prompt is on the header, not repeated here
  switch (doc.verdict) {
    case "ok":
      if (score >= 80) return `Brilliant — that's ${p} for sure!`;
      if (score >= 50) return `Nice — the judge can see ${p} in that!`;
      return `Not bad — the judge can just about see ${p}.`;
    case "text": return "That looks like writing — draw it instead!";
    case "no_match":
      return doc.looks_like && doc.looks_like !== p
        ? `Hmm, that doesn't look much like ${p} — more like ${doc.looks_like}!`
        : `Hmm, that doesn't look much like ${p}. Give it another go!`;
    case "blocked": return "We can't show that one — try drawing something else!";
    default: return "";
  }
}
/** What the stored entry's rank means on this screen: "on the leaderboard" only when its row is one shown. */
function afterword(doc) {
  if (doc.verdict === "blocked" || !doc.stored) return "It wasn't saved.";
  const seen = doc.rank >= 1 && doc.rank <= boardCapacity();
  const where = !(doc.rank >= 1) ? "It's saved."
    : !seen ? `Rank ${doc.rank} of ${doc.total} — the screen shows the top ${boardCapacity()}.`
    : doc.rank === 1 ? "You're top of the leaderboard!" : "You're on the leaderboard!";
  return doc.verdict === "text" ? `Writing scores less than drawing. ${where}` : where;
}

let revealTimer = null;
function reveal(doc) {
  const r = $("result"), blocked = doc.score === null || doc.score === undefined;
  const target = blocked ? 0 : Math.max(0, Math.min(100, Math.round(doc.score)));
  r.dataset.verdict = doc.verdict || ""; r.dataset.state = "counting";
  $("verdict").textContent = sentence(doc); $("verdict").dataset.verdict = doc.verdict || "";
  $("rank").textContent = doc.rank ? `#${doc.rank} of ${doc.total}` : "";
  $("reason").textContent = afterword(doc);
  $("score").textContent = blocked ? "–" : "0";
  $("ring").style.setProperty("--p", "0");
  r.classList.remove("leaving"); r.hidden = false;
  clearTimeout(revealTimer); revealTimer = setTimeout(closeReveal, REVEAL_S * 1000);
  const done = () => {
    $("score").textContent = blocked ? "–" : String(target);
    $("ring").style.setProperty("--p", String(target)); r.dataset.state = "done";
  };
  if (blocked || reduced || target === 0) return done();
  const t0 = performance.now();
  const step = (t) => {
    if (r.dataset.state !== "counting") return;
    const k = Math.min(1, (t - t0) / COUNT_MS), eased = 1 - (1 - k) ** 3, v = Math.round(target * eased);
    $("score").textContent = String(v); $("ring").style.setProperty("--p", String(v));
    if (k < 1) requestAnimationFrame(step); else done();
  };
  requestAnimationFrame(step);
}
function closeReveal() {
  clearTimeout(revealTimer);
  if ($("result").hidden) return;
  hide($("result"));
  $("name").value = "";   // their turn is over: the next player does not play under their name
}
function hide(overlay) {
  if (overlay.hidden || overlay.classList.contains("leaving")) return;
  overlay.classList.add("leaving");                 // it still takes the tap's pointerup and click while it fades
  setTimeout(() => { overlay.hidden = true; overlay.classList.remove("leaving"); }, reduced ? 0 : 300);
}
$("again").onclick = () => { closeReveal(); strokes = []; redraw(); };
$("result").addEventListener("pointerdown", (e) => { if (e.target === $("result")) closeReveal(); });

async function submit() {
  if (busy || Date.now() < coolUntil) return;
  if (!camera && !strokes.length) { notice("Draw something first!", { info: true, seconds: 3 }); return; }
  setBusy(true); notice("");
  try {
    const res = await post("/api/submissions", camera ? $("video") : canvas, { name: $("name").value });
    if (res.ok) { reveal(res.doc); board(); } else trouble(res);
  } finally { setBusy(false); }
}
$("entry").addEventListener("submit", (e) => { e.preventDefault(); submit(); });

// ---- camera mode -------------------------------------------------------------------------------------------
function stopCamera() {
  if (!camera) return;
  camera.getTracks().forEach((t) => t.stop()); camera = null; clearInterval(liveTimer);
  $("video").srcObject = null; $("video").hidden = true; $("live").textContent = "";
  $("camera").textContent = "Camera mode";
}
$("camera").onclick = async () => {
  if (camera) { stopCamera(); return; }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    notice("The camera works only on the kiosk's own screen (localhost) or over https."); return;
  }
  try {
    camera = await navigator.mediaDevices.getUserMedia({ video: true });
  } catch (err) { notice("No camera here: " + err.message); return; }
  $("video").srcObject = camera; $("video").hidden = false; $("camera").textContent = "Drawing mode";
  let scoring = false;
  let pausedUntil = 0;                           // a spent scoring budget (429 with a long Retry-After): wait it out
  liveTimer = setInterval(async () => {           // a live score of the webcam frame, nothing stored
    if (scoring || !camera || Date.now() < pausedUntil) return;
    scoring = true;
    try {
      const res = await post("/api/score", $("video"));
      if (!camera) return;                        // stopped meanwhile
      if (res.status === 429 && (res.doc.retry_after || 0) > 10) {
        pausedUntil = Date.now() + res.doc.retry_after * 1000;
        $("live").textContent = `live score back in ${Math.ceil(res.doc.retry_after / 60)} min — you can still submit`;
        return;
      }
      if (!res.ok) return;                        // refused (busy, too fast): next second
      $("live").textContent = res.doc.score === null ? "blocked" : `live: ${Math.round(res.doc.score)}`;
    } finally { scoring = false; }
  }, 1000);
};
$("video").hidden = true;

// ---- leaderboard, prompt and round -------------------------------------------------------------------------
/** How many leaderboard rows this screen shows: the board's grid keeps only the rows that fit (columns x rows). */
function boardCapacity() {
  const style = getComputedStyle($("board"));
  const tracks = (list) => list.split(" ").filter((t) => parseFloat(t) > 0).length;
  const columns = Math.max(1, tracks(style.gridTemplateColumns)), rows = tracks(style.gridTemplateRows);
  return Math.min(BOARD_LIMIT, columns * rows);
}
/** The rank of entry `id` on the leaderboard as shown (1-based), or 0 when it is not on screen. */
function onScreenRank(id) {
  const rows = [...$("board").children];
  const i = rows.findIndex((li) => li.dataset.id === String(id));
  return i >= 0 && i < boardCapacity() && rows[i].getBoundingClientRect().height > 0 ? i + 1 : 0;
}
async function board() {
  const res = await api(`/api/leaderboard?limit=${BOARD_LIMIT}&prompt=` + encodeURIComponent(prompt));
  if (!res.ok) return;
  const entries = res.doc.entries || [];
  const key = JSON.stringify(entries.map((e) => [e.id, e.score, e.name]));
  if (key === boardKey) return;                   // unchanged: no flicker, no refetched thumbnails
  boardKey = key;
  const ol = $("board");
  ol.replaceChildren(...entries.map((e) => {
    const li = document.createElement("li"); li.dataset.id = e.id;
    const img = document.createElement("img"); img.src = e.thumb_url; img.alt = e.name; img.decoding = "async";
    const who = document.createElement("span"); who.className = "who"; who.textContent = e.name;
    const pts = document.createElement("span"); pts.className = "pts"; pts.textContent = Math.round(e.score);
    li.append(img, who, pts); li.title = `${Math.round(e.score)} — ${e.name}`;
    return li;
  }));
}

let roundEnd = 0, roundTicker = null;
function showRound(doc) {
  round = doc.round || null;
  const el = $("round");
  if (!round) {
    el.hidden = true; $("attract-round").textContent = ""; clearInterval(roundTicker); roundTicker = null; return;
  }
  roundEnd = performance.now() + Math.max(0, Number(round.remaining) || 0) * 1000;
  el.hidden = false;
  const tick = () => {
    const left = (roundEnd - performance.now()) / 1000;
    el.classList.toggle("urgent", left > 0 && left <= 10); el.classList.toggle("over", left <= 0);
    $("round-label").textContent = left > 0 ? "Round ends in" : "Round over";
    $("countdown").textContent = left > 0 ? clock(left) : "";
    $("attract-round").textContent = left > 0 ? `Round ends in ${clock(left)}` : "";
  };
  tick();
  if (!roundTicker) roundTicker = setInterval(tick, 250);
}
async function refreshPrompt() {
  const res = await api("/api/prompt");
  if (!res.ok) return;
  const doc = res.doc, hadRound = !!round;
  showRound(doc);
  if (doc.prompt !== prompt) {
    prompt = doc.prompt; boardKey = "";
    $("prompt").textContent = shown(prompt); $("attract-prompt").textContent = shown(prompt);
    fitPrompt();
  } else if (hadRound !== !!round) fitPrompt();   // the countdown came or went: the prompt's room changed
  await board();
}

// ---- the attract loop --------------------------------------------------------------------------------------
let idleTimer = null, slideTimer = null, slides = [], slide = 0;
function poke() {
  clearTimeout(idleTimer);
  if (IDLE_S > 0) idleTimer = setTimeout(attract, IDLE_S * 1000);
}
["pointerdown", "pointermove", "keydown", "input", "wheel"].forEach((t) =>
  document.addEventListener(t, poke, { capture: true, passive: true }));

async function attract() {
  if (camera || busy) { poke(); return; }         // someone is in front of the camera, or a drawing is judged
  closeReveal(); notice("");
  strokes = []; redraw(); $("name").value = "";   // the next player starts afresh
  await loadSlides();
  slide = 0;
  const a = $("attract");
  a.classList.remove("leaving"); a.hidden = false;
  fitPrompt();                                    // the overlay's title is measured now that it shows
  showSlide();
  clearInterval(slideTimer);
  slideTimer = setInterval(async () => {
    slide += 1;
    if (slides.length && slide % slides.length === 0) { await loadSlides(); slide = 0; }  // a new round of the best
    showSlide();
  }, SLIDE_S * 1000);
}
async function loadSlides() {
  const res = await api(`/api/leaderboard?limit=${BOARD_LIMIT}&prompt=` + encodeURIComponent(prompt));
  if (res.ok) slides = res.doc.entries || [];
}
function showSlide() {
  const fig = $("attract-slide"), img = $("attract-img"), cap = $("attract-caption");
  if (!slides.length) {
    img.hidden = true; cap.textContent = "Nobody's on the board yet — be the first!";
  } else {
    const e = slides[slide % slides.length];
    img.hidden = false; img.src = e.thumb_url; img.alt = e.name;
    cap.textContent = `#${(slide % slides.length) + 1} · ${Math.round(e.score)} · ${e.name}`;
  }
  fig.classList.remove("in"); void fig.offsetWidth; fig.classList.add("in");   // replay the slide-in
}
function dismiss() {
  clearInterval(slideTimer);
  hide($("attract"));
  poke();
}
$("attract").addEventListener("pointerdown", dismiss);
document.addEventListener("keydown", () => { if (!$("attract").hidden) dismiss(); });

paper(); setBusy(false); refreshPrompt(); setInterval(refreshPrompt, POLL_S * 1000); poke();
