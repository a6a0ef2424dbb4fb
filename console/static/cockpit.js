// The cockpit: open cases by domain and level, alerts per hour over 24 h, agents online and
// their backlog, the longest-open cases, and this console's own health.
"use strict";
(function () {
  const { api, live, esc, fmtTime, fmtDuration, levelBadge, stateBadge } = window.lifeline;

  function render(d) {
    const domains = Object.keys(d.counts.by_domain).sort();
    document.getElementById("by-domain").innerHTML = `<tr><th>domain</th>${[4, 3, 2, 1].map((l) => `<th>${levelBadge(l)}</th>`).join("")}<th>all</th></tr>` +
      (domains.map((dom) => {
        const row = d.counts.by_domain[dom];
        const all = Object.values(row).reduce((a, b) => a + b, 0);
        return `<tr><td>${esc(dom)}</td>${[4, 3, 2, 1].map((l) => `<td class="num">${row[l] || 0}</td>`).join("")}<td class="num"><b>${all}</b></td></tr>`;
      }).join("") || '<tr><td colspan="6" class="muted">no open alerts</td></tr>') +
      `<tr><td>sensor faults</td><td colspan="4"></td><td class="num">${d.counts.fault}</td></tr>` +
      `<tr><td>closed in 24 h</td><td colspan="4"></td><td class="num">${d.closed_24h}</td></tr>`;

    const peak = Math.max(1, ...d.hours.map((h) => Object.values(h.by_level).reduce((a, b) => a + b, 0)));
    document.getElementById("hours").innerHTML = d.hours.map((h) => {
      const parts = [1, 2, 3, 4].map((l) => `<span class="l${l}" style="height:${(h.by_level[l] / peak) * 130}px" title="${h.by_level[l]} level ${l}"></span>`).join("");
      return `<div class="bar" title="${fmtTime(h.start)}">${parts}</div>`;
    }).join("");
    document.getElementById("hour-labels").innerHTML = d.hours.map((h, i) =>
      `<span>${i % 3 === 0 ? new Date(h.start).getHours() : ""}</span>`).join("");

    const online = d.agents.filter((a) => a.state === "online").length;
    document.getElementById("agents-summary").textContent = `${online} online, ${d.agents.length - online} offline`;
    document.getElementById("agents").innerHTML = "<tr><th>agent</th><th>state</th><th>township</th><th>backlog</th><th>sensors in gap</th><th>dropped alerts</th><th>status</th></tr>" +
      (d.agents.map((a) => `<tr><td>${esc(a.agent)}</td><td class="${a.state === "online" ? "ok" : "bad"}">${esc(a.state)}${a.disk_full ? ' <span class="bad">disk full</span>' : ""}</td>` +
        `<td>${esc(a.township)}</td><td class="num">${a.backlog ?? "–"}</td><td class="num">${a.sensors_gap ?? "–"} / ${a.sensors ?? "–"}</td>` +
        `<td class="num">${a.dropped_alerts ?? "–"}</td><td>${fmtDuration(Date.now() - a.ts)} ago</td></tr>`).join("") ||
        '<tr><td colspan="7" class="muted">no agent status seen</td></tr>');

    document.getElementById("oldest").innerHTML = "<tr><th>#</th><th>level</th><th>state</th><th>sensor</th><th>township</th><th>open for</th></tr>" +
      (d.oldest.map((c) => `<tr><td><a href="/case/${c.id}">${c.id}</a></td><td>${levelBadge(c.level)}</td><td>${stateBadge(c.state)}</td>` +
        `<td>${esc(c.sensor)}</td><td>${esc(c.township)}</td><td>${fmtDuration(Date.now() - c.opened_at)}</td></tr>`).join("") ||
        '<tr><td colspan="6" class="muted">none</td></tr>');

    const c = d.console;
    document.getElementById("console-status").innerHTML =
      `<tr><th>instance</th><td>${esc(c.instance)}</td></tr>` +
      `<tr><th>broker</th><td class="${c.mqtt_connected ? "ok" : "bad"}">${c.mqtt_connected ? "connected" : "not connected"}</td></tr>` +
      `<tr><th>alerts received</th><td>${c.alerts_received}</td></tr>` +
      `<tr><th>malformed alerts dropped</th><td class="${c.alerts_malformed ? "bad" : ""}">${c.alerts_malformed}</td></tr>` +
      `<tr><th>case events published</th><td>${c.case_events_published}</td></tr>`;
  }

  async function load() {
    try { render(await api("/api/cockpit")); } catch (err) { /* shown on the next try */ }
  }
  let timer = null;
  const soon = () => { clearTimeout(timer); timer = setTimeout(load, 1000); };
  live.on("cases", soon);
  live.on("agent", soon);
  setInterval(load, 15000);
  live.start();
  load();
})();
