// The audit log (supervisors): every login, logout and case step, allowed or refused.
"use strict";
(async function () {
  const { api, esc, fmtTime } = window.lifeline;
  const tbody = document.querySelector("#audit tbody");
  try {
    const data = await api("/api/audit");
    tbody.innerHTML = data.entries.map((e) => `<tr class="${e.outcome === "ok" ? "" : "bad"}"><td>${fmtTime(e.at)}</td><td>${esc(e.username || "")}</td><td>${esc(e.action)}</td><td>${esc(e.target)}</td><td>${esc(e.outcome)}</td><td>${esc(e.address)}</td><td>${esc(e.detail)}</td></tr>`).join("");
  } catch (err) { tbody.innerHTML = `<tr><td colspan="7" class="error">${esc(err.message)}</td></tr>`; }
})();
