// One sensor: its trend from the store (min/mean/max bands, thresholds as lines, alerts as marks),
// its detection state per rule, its agent, its recent summary windows and cases.
"use strict";
(function () {
  const { api, live, esc, fmtTime, fmtDuration, fmtValue, levelBadge, stateBadge } = window.lifeline;
  const root = document.getElementById("sensor");
  const sensor = root.dataset.sensor;
  const COLOURS = { 0: "#3fae6a", 1: "#3a7bd5", 2: "#e0c030", 3: "#f08a24", 4: "#e5383b" };
  let plot = null;
  let info = null;

  function renderInfo(data) {
    info = data;
    const s = data.sensor;
    document.getElementById("sensor-place").textContent =
      `${s.kind} · site ${s.site} · ${s.township}, ${s.district}${data.coords ? ` · ${data.coords[0].toFixed(4)}, ${data.coords[1].toFixed(4)}` : ""}`;
    document.getElementById("levels").innerHTML = "<tr><th>rule</th><th>level</th><th>value</th><th>limit</th><th>since</th></tr>" +
      (data.levels.map((l) => `<tr><td>${esc(l.rule)}</td><td>${levelBadge(l.level)}</td><td class="num">${fmtValue(l.value)}</td>` +
        `<td class="num">${fmtValue(l.limit)}</td><td>${fmtTime(l.ts)}</td></tr>`).join("") || '<tr><td colspan="5" class="muted">no alerts seen</td></tr>');
    const a = data.agent;
    document.getElementById("agent").innerHTML = a
      ? `<p><b>${esc(a.agent)}</b> <span class="${a.state === "online" ? "ok" : "bad"}">${esc(a.state)}</span> · status ${fmtTime(a.ts)}</p>` +
        `<p>backlog ${a.backlog ?? "–"} · sensors ${a.sensors ?? "–"} (in gap ${a.sensors_gap ?? "–"}) · dropped alerts ${a.dropped_alerts ?? "–"}${a.disk_full ? ' · <span class="bad">disk full</span>' : ""}</p>`
      : `<p class="muted">agent ${esc(s.agent)}: no status seen</p>`;
    document.getElementById("sensor-cases").innerHTML = "<tr><th>#</th><th>level</th><th>state</th><th>rule</th><th>opened</th><th>open for</th></tr>" +
      data.cases.map((c) => `<tr><td><a href="/case/${c.id}">${c.id}</a></td><td>${levelBadge(c.max_level)}</td><td>${stateBadge(c.state)}</td>` +
        `<td>${esc(c.rule)}</td><td>${fmtTime(c.opened_at)}</td><td>${fmtDuration((c.closed_at || Date.now()) - c.opened_at)}</td></tr>`).join("");
  }

  function thresholds() {
    // the agent's configured limits if its status carried them, else the limits alerts crossed
    const out = [];
    const limits = info.limits || {};
    for (const rule of ["high", "low"]) (limits[rule] || []).forEach((v, i) => out.push({ rule, level: i + 1, value: v }));
    if (!out.length) for (const l of info.seen_limits) if (l.rule === "high" || l.rule === "low") out.push({ rule: l.rule, level: l.level, value: l.limit });
    return out;
  }

  function marksPlugin(marks) {
    return {
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx;
          ctx.save();
          for (const m of marks) {
            const x = u.valToPos(m.t / 1000, "x", true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.strokeStyle = COLOURS[m.level] || "#888";
            ctx.lineWidth = 2 * devicePixelRatio;
            ctx.setLineDash(m.level === 0 ? [4, 4] : []);
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        }],
      },
    };
  }

  async function renderTrend() {
    const hours = document.getElementById("range").value;
    const note = document.getElementById("chart-note");
    let t;
    try {
      t = await api(`/api/sensors/${encodeURIComponent(sensor)}/trend?hours=${hours}`);
    } catch (err) {
      note.textContent = err.message;
      return;
    }
    const lines = thresholds();
    const xs = t.t.map((ms) => ms / 1000);
    const data = [xs, t.min, t.mean, t.max, ...lines.map((l) => xs.map(() => l.value))];
    const series = [{}, { label: "min", stroke: "#5d8fc7", width: 1 }, { label: "mean", stroke: "#d8dee6", width: 2 },
      { label: "max", stroke: "#5d8fc7", width: 1 },
      ...lines.map((l) => ({ label: `${l.rule} ${l.level}`, stroke: COLOURS[l.level], dash: [6, 4], width: 1, points: { show: false } }))];
    const el = document.getElementById("chart");
    if (plot) plot.destroy();
    plot = new uPlot({
      width: el.clientWidth - 12, height: 320, series, bands: [{ series: [3, 1], fill: "rgba(93,143,199,0.25)" }],
      axes: [{ stroke: "#8593a3", grid: { stroke: "#2a333d" } }, { stroke: "#8593a3", grid: { stroke: "#2a333d" } }],
      plugins: [marksPlugin(t.alerts)],
    }, data, el);
    el.dataset.points = String(xs.length);
    note.textContent = `${xs.length} steps of ${t.step_s} s from the store; ${t.alerts.length} alert mark(s); dashed lines: thresholds`;
    const cols = new Set();
    t.windows.forEach((w) => Object.keys(w).forEach((k) => cols.add(k)));
    const order = ["t1", "n", "min", "mean", "max", "last", ...[...cols].filter((c) => !["t1", "n", "min", "mean", "max", "last"].includes(c)).sort()]
      .filter((c) => cols.has(c));
    document.getElementById("windows").innerHTML = t.windows.length
      ? `<tr>${order.map((c) => `<th>${c === "t1" ? "window end" : esc(c)}</th>`).join("")}</tr>` +
        t.windows.map((w) => `<tr>${order.map((c) => c === "t1" ? `<td>${fmtTime(w.t1)}</td>` : `<td class="num">${fmtValue(w[c])}</td>`).join("")}</tr>`).join("")
      : '<tr><td class="muted">no summary windows in the store for the last 6 h</td></tr>';
  }

  async function load() {
    try {
      renderInfo(await api(`/api/sensors/${encodeURIComponent(sensor)}`));
    } catch (err) {
      root.innerHTML = `<p class="error" role="alert">${esc(err.message)}</p>`;
      return;
    }
    renderTrend();
  }
  document.getElementById("range").addEventListener("change", renderTrend);
  live.on("cases", (list) => { if (list.some((c) => c.sensor === sensor)) load(); });
  live.start();
  load();
})();
