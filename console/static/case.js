// One case: what happened, its whole history, and the steps the user may take next.
"use strict";
(function () {
  const { api, live, esc, fmtTime, fmtDuration, fmtValue, levelBadge, stateBadge } = window.lifeline;
  const root = document.getElementById("case");
  const caseId = +root.dataset.case;
  const role = root.dataset.role;
  const maxText = +root.dataset.maxText;
  let current = null;

  const CAUSES = ["real event, handled", "false alarm", "sensor fault, repaired", "planned works", "duplicate", "other"];
  const ACTION_LABEL = {
    raised: "raised", level: "level changed", cleared: "sensor cleared", late_alert: "late alert",
    acknowledge: "acknowledged", assign: "crew assigned", escalate: "escalated", note: "note", photo: "photo",
    resolve: "crew reported back", close: "closed", reopen: "reopened", review: "reviewed",
  };

  function eventText(e) {
    const d = e.detail || {};
    switch (e.action) {
      case "raised": return `${levelBadge(d.level)} value ${fmtValue(d.value)}${d.limit != null ? ` (limit ${fmtValue(d.limit)})` : ""}`;
      case "level": return `${d.prev} → ${levelBadge(d.level)} value ${fmtValue(d.value)}`;
      case "cleared": return `back to normal, value ${fmtValue(d.value)}${d.after_close ? " (after the case was closed)" : ""}`;
      case "late_alert": return `an older alert (level ${d.level}) arrived late; history only`;
      case "assign": return `crew <b>${esc(d.crew)}</b>${d.previous_crew ? ` (was ${esc(d.previous_crew)})` : ""}${d.text ? ": " + esc(d.text) : ""}`;
      case "escalate": return `${esc(d.from)} → <b>${esc(d.to)}</b>${d.auto ? " (by itself)" : ""}: ${esc(d.reason)}`;
      case "photo": return /^https?:\/\//.test(d.ref) ? `<a href="${esc(d.ref)}" rel="noopener" target="_blank">${esc(d.ref)}</a>` : esc(d.ref);
      case "resolve": return esc(d.report);
      case "close": return `cause: <b>${esc(d.cause)}</b>${d.text ? " · " + esc(d.text) : ""}${d.sensor_still_active ? ` · the sensor still reported level ${d.sensor_still_active}` : ""}`;
      default: return esc(d.text || d.reason || "");
    }
  }

  function form(action, title, fields, button) {
    const inputs = fields.map(([name, label, kind]) => {
      if (kind === "textarea") return `<label>${label}<textarea name="${name}" rows="3" data-count></textarea><small class="counter"></small></label>`;
      if (kind === "cause") return `<label>${label}<select name="${name}">${CAUSES.map((c) => `<option>${c}</option>`).join("")}</select></label>`;
      return `<label>${label}<input name="${name}" ${kind === "required" ? "required" : ""}></label>`;
    }).join("");
    return `<form class="step" data-action="${action}" data-testid="form-${action}"><h3>${title}</h3>${inputs}` +
      `<p class="error" role="alert" hidden></p><button type="submit">${button}</button></form>`;
  }

  function steps(c) {
    if (role === "viewer") return `<p class="muted">viewers cannot change cases</p>`;
    const out = [];
    if (c.state === "closed") {
      if (role === "supervisor") {
        if (!c.reviewed_by) out.push(form("review", "Review (checked)", [["text", "What was checked, what to improve", "textarea"]], "Sign off review"));
        out.push(form("reopen", "Reopen", [["reason", "Reason", "required"]], "Reopen"));
      }
      return out.join("") || `<p class="muted">closed; a supervisor can review or reopen it</p>`;
    }
    if (c.state === "new") out.push(`<form class="step quick" data-action="acknowledge"><button type="submit" class="primary" data-testid="acknowledge">Acknowledge</button><p class="error" role="alert" hidden></p></form>`);
    if (c.state !== "resolved") out.push(form("assign", "Assign a crew", [["crew", "Crew", "required"], ["text", "Instructions", "textarea"]], "Send crew"));
    if (c.state === "acknowledged" || c.state === "dispatched") out.push(form("resolve", "Crew reported back", [["report", "Report", "textarea"]], "Mark resolved"));
    if (c.tier !== "city") out.push(form("escalate", `Escalate to the ${c.tier === "township" ? "district" : "city"}`, [["reason", "Reason", "textarea"]], "Escalate"));
    out.push(form("note", "Note", [["text", "Note", "textarea"]], "Add note"));
    out.push(form("photo", "Photo reference", [["ref", "File name, id or URL", "required"]], "Add photo"));
    out.push(form("close", "Close", [["cause", "Cause", "cause"], ["text", "Details", "textarea"]], "Close case"));
    return out.join("");
  }

  function reviewTable(c) {
    const r = c.review;
    const rows = [["to acknowledge", r.to_acknowledge], ["to send a crew", r.to_dispatch],
      ["to resolve", r.to_resolve], ["to close", r.to_close], ["sensor active for", r.alert_active]];
    return `<table class="review" data-testid="review">${rows.map(([k, v]) => `<tr><th>${k}</th><td>${v == null ? "–" : fmtDuration(v)}</td></tr>`).join("")}</table>`;
  }

  function render(c, force) {
    current = c;
    document.title = `Case ${c.id} · lifeline console`;
    const events = c.events.map((e) => `<li class="ev ev-${esc(e.action)}" data-testid="event"><time>${fmtTime(e.at)}</time>` +
      `<span class="actor">${esc(e.actor)}</span><span class="what">${esc(ACTION_LABEL[e.action] || e.action)}</span>` +
      `<span class="detail">${eventText(e)}</span></li>`).join("");
    const alerts = c.alerts.map((a) => `<tr><td>${fmtTime(a.ts)}</td><td>${a.prev} → ${levelBadge(a.level)}</td>` +
      `<td class="num">${fmtValue(a.value)}</td><td class="num">${fmtValue(a.limit)}</td><td class="muted">${esc(a.id)}</td></tr>`).join("");
    const main = `
      <div class="case-head">
        <h1>Case ${c.id} ${levelBadge(c.level)} ${stateBadge(c.state)}
          ${c.alert_cleared ? '<span class="muted">sensor back to normal</span>' : '<span class="active-tag">sensor still active</span>'}</h1>
        <p><a href="/sensor/${encodeURIComponent(c.sensor)}">${esc(c.sensor)}</a> · ${esc(c.kind)} · rule <b>${esc(c.rule)}</b>
          · site ${esc(c.site)} · ${esc(c.township)}, ${esc(c.district)} · ${c.category === "fault" ? "sensor fault (maintenance)" : "event"}</p>
        <dl class="facts">
          <dt>highest level</dt><dd>${levelBadge(c.max_level)}</dd>
          <dt>value</dt><dd>${fmtValue(c.value)}${c.limit != null ? ` (limit ${fmtValue(c.limit)})` : ""}</dd>
          <dt>opened</dt><dd>${fmtTime(c.opened_at)} (${fmtDuration((c.closed_at || Date.now()) - c.opened_at)})</dd>
          <dt>with</dt><dd data-testid="tier">${esc(c.tier)} tier${c.escalated_at ? " since " + fmtTime(c.escalated_at) : ""}</dd>
          <dt>acknowledged</dt><dd>${c.ack_by ? esc(c.ack_by) + " " + fmtTime(c.ack_at) : (c.deadline_at ? "no – escalates by itself at " + fmtTime(c.deadline_at) : "no")}</dd>
          <dt>crew</dt><dd>${esc(c.crew || "–")}</dd>
          ${c.closed_at ? `<dt>closed</dt><dd>${esc(c.closed_by)} ${fmtTime(c.closed_at)}: ${esc(c.cause)}</dd>` : ""}
          ${c.reviewed_by ? `<dt>reviewed</dt><dd>${esc(c.reviewed_by)} ${fmtTime(c.reviewed_at)}</dd>` : ""}
        </dl>
      </div>
      <div class="case-body">
        <div class="history"><h2>History</h2><ol class="timeline" id="timeline">${events}</ol>
          ${c.state === "closed" ? `<h2>Review</h2>${reviewTable(c)}` : ""}
          <h2>Alerts</h2><table class="alerts"><thead><tr><th>time</th><th>level</th><th>value</th><th>limit</th><th>id</th></tr></thead><tbody>${alerts}</tbody></table>
        </div>
      </div>`;
    // the steps' forms are rebuilt only when what they offer changes, so typed text survives updates
    const key = `${c.state}|${c.tier}|${c.reviewed_by}`;
    if (!root.querySelector("#case-main")) {
      root.innerHTML = '<div id="case-main"></div><div class="steps" id="steps"></div>';
      root.classList.add("case-layout");
    }
    root.querySelector("#case-main").innerHTML = main;
    const stepsEl = root.querySelector("#steps");
    if (stepsEl.dataset.key === key) return;
    const typed = [...stepsEl.querySelectorAll("textarea, input")].some((i) => i.value && i.type !== "hidden");
    if (typed && !force) {
      // someone else moved the case on while this operator was typing: keep the text, say so
      let banner = document.getElementById("changed");
      if (!banner) {
        banner = Object.assign(document.createElement("p"), { id: "changed", className: "notice" });
        stepsEl.prepend(banner);
      }
      banner.innerHTML = `This case is now <b>${esc(c.state)}</b> (with the ${esc(c.tier)} tier). Your text is kept. ` +
        '<button type="button">Show the steps for it</button>';
      banner.querySelector("button").onclick = () => render(current, true);
      return;
    }
    stepsEl.dataset.key = key;
    stepsEl.innerHTML = steps(c);
    stepsEl.querySelectorAll("textarea[data-count]").forEach((t) => {
      const counter = t.parentElement.querySelector(".counter");
      const update = () => {
        counter.textContent = `${t.value.length} / ${maxText}`;
        counter.classList.toggle("over", t.value.length > maxText);
      };
      t.addEventListener("input", update);
      update();
    });
  }

  async function load() {
    try {
      render(await api(`/api/cases/${caseId}`));
    } catch (err) {
      root.innerHTML = `<p class="error" role="alert">${esc(err.message)}</p><p><a href="/">back to the board</a></p>`;
    }
  }

  root.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const action = f.dataset.action;
    const body = Object.fromEntries(new FormData(f));
    body.version = current.version;
    const errorEl = f.querySelector(".error");
    const button = f.querySelector("button");
    button.disabled = true;
    try {
      await api(`/api/cases/${caseId}/${action}`, body);
      f.reset();
      await load();
    } catch (err) {
      button.disabled = false;
      errorEl.hidden = false;
      errorEl.textContent = err.message; // the form keeps what was typed
      if (err.status === 409) {
        const kept = new FormData(f);
        await load(); // show what changed, but keep the operator's text
        const again = root.querySelector(`form[data-action="${action}"]`);
        if (again) {
          for (const [k, v] of kept) { const input = again.elements[k]; if (input) input.value = v; }
          const e2 = again.querySelector(".error");
          e2.hidden = false;
          e2.textContent = err.message;
        }
      }
    }
  });

  let timer = null;
  live.on("cases", (list) => {
    if (list.some((c) => c.id === caseId)) { clearTimeout(timer); timer = setTimeout(load, 50); }
  });
  live.start();
  load();
})();
