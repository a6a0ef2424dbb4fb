// lifeline ops console: shared helpers (API calls, live feed, formatting). No framework.
"use strict";

const LEVELS = { 0: "normal", 1: "blue", 2: "yellow", 3: "orange", 4: "red" };
const STATE_LABEL = {
  new: "not acknowledged", acknowledged: "acknowledged", dispatched: "crew sent",
  resolved: "resolved", closed: "closed",
};

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf"]');
  return meta ? meta.content : "";
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// GET or POST JSON; an error answer becomes an ApiError carrying the server's message.
async function api(path, body) {
  const options = { headers: { "Accept": "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.headers["X-CSRF-Token"] = csrfToken();
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(0, "the console cannot be reached (network); nothing was changed, try again");
  }
  if (response.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    throw new ApiError(401, "session expired");
  }
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

// The live feed (server-sent events): handlers by event name; the badge shows its state.
const live = {
  handlers: {},
  source: null,
  on(name, fn) { (this.handlers[name] = this.handlers[name] || []).push(fn); },
  emit(name, data) { (this.handlers[name] || []).forEach((fn) => fn(data)); },
  start() {
    const badge = document.getElementById("live");
    const source = new EventSource("/api/stream");
    this.source = source;
    const setState = (on) => {
      if (!badge) return;
      badge.classList.toggle("off", !on);
      badge.textContent = on ? "live" : "reconnecting…";
    };
    source.addEventListener("hello", () => { setState(true); this.emit("connected", {}); });
    source.onerror = () => setState(false);
    for (const name of ["cases", "counts", "agent"]) {
      source.addEventListener(name, (ev) => this.emit(name, JSON.parse(ev.data)));
    }
    source.addEventListener("resync", () => { this.emit("resync", {}); });
    source.addEventListener("expired", () => {
      source.close();
      location.href = "/login?next=" + encodeURIComponent(location.pathname);
    });
  },
};

function esc(value) {
  return String(value == null ? "" : value).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
function fmtTime(ms) { return ms ? timeFormat.format(new Date(ms)) : ""; }

function fmtDuration(ms) {
  if (ms == null) return "";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function fmtValue(v) {
  if (v == null) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 0.01 || a >= 1e5) ? v.toExponential(2) : String(+v.toPrecision(4));
}

function levelBadge(level) {
  return `<span class="lvl l${level}" title="${esc(LEVELS[level] || level)}">${level} ${esc(LEVELS[level] || "")}</span>`;
}

function stateBadge(state) {
  return `<span class="state s-${esc(state)}">${esc(STATE_LABEL[state] || state)}</span>`;
}

window.lifeline = { api, ApiError, live, esc, fmtTime, fmtDuration, fmtValue, levelBadge, stateBadge, LEVELS, STATE_LABEL };
