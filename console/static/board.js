// The alert board (events) and the maintenance list (sensor faults): first page from the API,
// then live updates from the feed, rendered at most once per animation frame.
"use strict";
(function () {
  const { api, live, esc, fmtTime, fmtDuration, fmtValue, levelBadge, stateBadge } = window.lifeline;
  const root = document.querySelector(".board");
  const category = root.dataset.category;
  const canAct = root.dataset.role !== "viewer";
  const rowsEl = document.getElementById("rows");
  const filters = document.getElementById("filters");
  let limit = parseInt(root.dataset.rows, 10);
  let cases = new Map();
  let total = 0;
  let serverNow = Date.now();
  let clockSkew = 0;
  let pending = false;
  const arrivals = [];
  // when each case was first on screen (wall clock): the tests and the benchmark read it
  const shownAt = window.lifelineShownAt = {};

  function params() {
    const p = new URLSearchParams({ category, limit: String(limit) });
    for (const [k, v] of new FormData(filters)) if (v) p.set(k, v);
    return p;
  }

  function matches(c) {
    if (c.category !== category) return false;
    const f = Object.fromEntries(new FormData(filters));
    const state = f.state || "open";
    if (state === "open" ? c.state === "closed" : c.state !== state) return false;
    if (f.level && +f.level > 0 && c.level < +f.level) return false;
    if (f.domain && c.domain !== f.domain) return false;
    if (f.district && c.district !== f.district) return false;
    if (f.township && c.township !== f.township) return false;
    if (f.q && !(c.sensor + " " + c.site + " " + c.kind).includes(f.q)) return false;
    return true;
  }

  function order(a, b) {
    if (a.state === "closed" && b.state === "closed") return b.closed_at - a.closed_at;
    return (a.alert_cleared - b.alert_cleared) || (b.level - a.level) || (a.opened_at - b.opened_at) || (a.id - b.id);
  }

  // Redraw at most every MIN_GAP ms (an alert storm must not redraw the table 60 times a second)
  const MIN_GAP = 200;
  let lastRender = 0;
  let shownIds = new Set();
  let cutoff = null;
  let reloading = false; // the last row shown when the table is full: updates sorting after it are off-screen

  function schedule() {
    if (pending) return;
    pending = true;
    const wait = Math.max(0, lastRender + MIN_GAP - performance.now());
    if (wait > 0) setTimeout(() => requestAnimationFrame(render), wait);
    else requestAnimationFrame(render);
  }

  function onScreen(c) {
    return shownIds.has(c.id) || cutoff === null || order(c, cutoff) < 0;
  }

  function row(c, now) {
    const cls = [c.alert_cleared ? "cleared" : "active", c.state === "new" ? "unack" : "", c.fresh ? "fresh" : ""].join(" ");
    const act = canAct && c.state === "new"
      ? `<button type="button" class="small" data-ack="${c.id}" data-version="${c.version}">Acknowledge</button>` : "";
    const esc_ = c.tier !== "township" ? `<span class="tier t-${esc(c.tier)}">${esc(c.tier)}</span>` : esc(c.tier);
    return `<tr class="${cls}" data-id="${c.id}" data-testid="case-row">` +
      `<td><a href="/case/${c.id}">${c.id}</a></td>` +
      `<td>${levelBadge(c.level)}${c.alert_cleared ? ' <span class="muted">cleared</span>' : ""}</td>` +
      `<td>${stateBadge(c.state)}</td>` +
      `<td><a href="/sensor/${encodeURIComponent(c.sensor)}">${esc(c.sensor)}</a></td>` +
      `<td>${esc(c.kind)} · ${esc(c.rule)}</td><td>${esc(c.site)}</td>` +
      `<td>${esc(c.township)}</td><td>${esc(c.district)}</td>` +
      `<td class="num">${fmtValue(c.value)}</td><td>${fmtTime(c.opened_at)}</td>` +
      `<td>${fmtDuration((c.closed_at || now) - c.opened_at)}</td><td>${esc_}</td><td>${act}</td></tr>`;
  }

  function render() {
    pending = false;
    lastRender = performance.now();
    const now = Date.now() - clockSkew;
    const sorted = [...cases.values()].sort(order);
    if (sorted.length > 5 * limit) {
      // a night of live updates must not pile up in the page: keep what can come on screen soon
      for (const c of sorted.slice(2 * limit)) cases.delete(c.id);
    } else if (sorted.length < limit && total > sorted.length && !reloading) {
      // rows went away (closed elsewhere) and the server holds more: fetch the next ones
      reloading = true;
      setTimeout(() => load().finally(() => { reloading = false; }), 500);
    }
    const shown = sorted.slice(0, limit);
    shownIds = new Set(shown.map((c) => c.id));
    cutoff = shown.length >= limit ? shown[shown.length - 1] : null;
    const stamp = Date.now();
    for (const c of shown) if (!(c.id in shownAt)) shownAt[c.id] = stamp;
    rowsEl.innerHTML = shown.length ? shown.map((c) => row(c, now)).join("")
      : `<tr><td colspan="13" class="muted empty">no ${category === "fault" ? "sensor faults" : "alerts"} here</td></tr>`;
    const all = Math.max(total, shown.length);
    document.getElementById("shown").textContent = `${shown.length} of ${all} shown`;
    document.getElementById("more").hidden = all <= shown.length;
  }

  function renderCounts(counts) {
    if (!counts) return;
    const el = document.getElementById("counts");
    if (category === "fault") {
      el.innerHTML = `<span class="count" data-testid="open-count">${counts.fault} open sensor faults</span>`;
      return;
    }
    const levels = [4, 3, 2, 1].map((l) => `<span class="count lvl l${l}">${counts.by_level[l] || 0}</span>`).join("");
    el.innerHTML = `<span class="count" data-testid="open-count">${counts.event} open</span>` +
      `<span class="count unack">${counts.new} not acknowledged</span>${levels}`;
    const state = new FormData(filters).get("state") || "open";
    if (state === "open") total = counts[category];
  }

  function embedded() {
    // the first page, sent with the HTML; afterwards (filters, resync) from the API
    const el = document.getElementById("initial");
    if (!el) return null;
    el.remove();
    return JSON.parse(el.textContent);
  }

  async function load() {
    const data = embedded() || await api("/api/board?" + params());
    serverNow = data.now;
    clockSkew = Date.now() - serverNow;
    cases = new Map(data.cases.map((c) => [c.id, c]));
    total = data.total;
    renderCounts(data.counts);
    render();
    if (window.lifelineFirstRows === undefined && cases.size) {
      // the frame after next: the loaded rows have been painted (read by the benchmark)
      requestAnimationFrame(() => requestAnimationFrame(() => { window.lifelineFirstRows = performance.now(); }));
    }
  }

  function renderArrivals() {
    arrivals.length = Math.min(arrivals.length, 6);
    const box = document.getElementById("arrivals");
    box.hidden = false;
    document.getElementById("arrivals-list").innerHTML = arrivals.map((a) =>
      `<a class="arrival" href="/case/${a.id}" data-testid="arrival">${levelBadge(a.level)} ${esc(a.sensor)} · ${esc(a.rule)} · ${esc(a.township)}</a>`).join("");
  }

  live.on("cases", (list) => {
    let visible = false;
    let arrived = false;
    for (const c of list) {
      const known = cases.get(c.id);
      if (!matches(c)) {
        if (known) { cases.delete(c.id); total = Math.max(0, total - 1); visible = visible || shownIds.has(c.id); }
        continue;
      }
      visible = visible || onScreen(c);
      if (!known && c.state === "new" && c.category === category) {
        c.fresh = true;
        arrivals.unshift(c);
        arrived = true;
        setTimeout(() => { c.fresh = false; if (shownIds.has(c.id)) schedule(); }, 8000);
        total += 1;
      }
      cases.set(c.id, c);
    }
    if (arrived) renderArrivals();
    if (visible) schedule();
    else document.getElementById("shown").textContent = `${shownIds.size} of ${Math.max(total, shownIds.size)} shown`;
  });
  live.on("counts", renderCounts);
  live.on("resync", load);
  live.on("connected", () => { if (cases.size) load(); });

  rowsEl.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-ack]");
    if (btn) {
      btn.disabled = true;
      try {
        const c = await api(`/api/cases/${btn.dataset.ack}/acknowledge`, { version: +btn.dataset.version });
        cases.set(c.id, c);
        schedule();
      } catch (err) {
        btn.disabled = false;
        alert(err.message);
      }
      return;
    }
    const tr = ev.target.closest("tr[data-id]");
    if (tr && !ev.target.closest("a")) location.href = `/case/${tr.dataset.id}`;
  });
  document.getElementById("more-btn").addEventListener("click", () => { limit += parseInt(root.dataset.rows, 10); load(); });
  let debounce = null;
  filters.addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(load, 200); });
  filters.addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  setInterval(schedule, 10000); // ages move on

  // the maintenance list also names agents whose own state needs a visit: offline, a full or
  // damaged outbox (alerts dropped), a large backlog
  async function agentFaults() {
    const el = document.getElementById("agent-faults");
    if (!el) return;
    const { agents } = await api("/api/agents");
    const problems = (a) => [a.state !== "online" ? a.state : "", a.disk_full ? "outbox disk full" : "",
      a.dropped_alerts ? `${a.dropped_alerts} alert(s) dropped by the outbox` : "",
      a.backlog > 1000 ? `backlog ${a.backlog}` : "", a.sensors_gap ? `${a.sensors_gap} sensor(s) silent` : ""].filter(Boolean);
    const rows = agents.map((a) => [a, problems(a)]).filter(([, p]) => p.length);
    el.innerHTML = rows.length ? "<tr><th>agent</th><th>township</th><th>what</th><th>status</th></tr>" + rows.map(([a, p]) =>
      `<tr><td>${esc(a.agent)}</td><td>${esc(a.township)}</td><td class="bad">${p.map(esc).join(" · ")}</td><td>${fmtTime(a.ts)}</td></tr>`).join("")
      : '<tr><td class="muted">every agent online, its outbox healthy</td></tr>';
  }
  let agentTimer = null;
  if (category === "fault") {
    agentFaults();
    live.on("agent", () => { clearTimeout(agentTimer); agentTimer = setTimeout(agentFaults, 1000); });
  }

  for (const [k, v] of new URLSearchParams(location.search)) {
    if (filters.elements[k]) filters.elements[k].value = v; // e.g. the map's "its alerts" link
  }
  live.start();
  load().catch((err) => { rowsEl.innerHTML = `<tr><td colspan="13" class="error">${esc(err.message)}</td></tr>`; });
})();
