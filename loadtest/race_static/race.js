// The Race view: polls /race/data twice a second and draws it; plain DOM and SVG, no library.
// Mode changes go to POST /race/mode; Locust's process adds the admin token, never this page.
"use strict";

const DATA_URL = "/race/data";
const MODE_URL = "/race/mode";
const POLL_INTERVAL_MS = 500;
const CHART = { width: 960, height: 330, left: 80, right: 80, top: 32, bottom: 36 };
const numberFormat = new Intl.NumberFormat("en-US");

let modeSignature = "";
let modeRequestPending = false;
let lastData = null;

function formatNumber(value) {
  return value === null || value === undefined ? "—" : numberFormat.format(value);
}

function formatSigned(value) {
  if (value === null || value === undefined) return "—";
  return (value > 0 ? "+" : value < 0 ? "−" : "") + numberFormat.format(Math.abs(value));
}

function escapeText(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function setText(id, value) {
  const element = document.getElementById(id);
  if (element.textContent !== value) element.textContent = value;
  return element;
}

function setNumber(id, value, text, alarming) {
  const element = setText(id, text);
  element.dataset.value = String(value);
  element.classList.toggle("bad", Boolean(alarming));
  element.classList.toggle("good", !alarming && value !== null);
}

function windowLabel(ms) {
  return ms === null || ms === undefined ? "?" : `${ms} ms`;
}

function renderStatus(data) {
  const runner = data.runner;
  const parts = [];
  if (data.run) {
    parts.push(`Run ${data.run.run_id}: ${data.run.scenario}, ${data.run.accounts} hot accounts, amount ${data.run.amount}`);
  } else {
    parts.push("No run yet: start one in Locust's statistics page");
  }
  parts.push(`Locust ${runner.state}, ${runner.user_count} users` + (runner.workers ? `, ${runner.workers} workers` : ""));
  parts.push(`target ${data.host}`);
  if (data.updated_at) parts.push(`updated ${new Date(data.updated_at * 1000).toLocaleTimeString()}`);
  if (data.report) {
    parts.push(`race report: ${data.report.verdict}` + (data.report.problems.length ? ` (${data.report.problems.length} problems)` : ""));
  }
  setText("status", parts.join(" · "));
  const problem = document.getElementById("problem");
  problem.hidden = !data.error;
  setText("problem", data.error || "");
}

function buildModeButtons(data) {
  const signature = JSON.stringify(data.modes);
  if (signature === modeSignature) return;
  modeSignature = signature;
  const list = document.getElementById("mode-buttons");
  list.replaceChildren();
  data.modes.forEach((mode, index) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "mode";
    button.dataset.mode = mode.name;
    button.textContent = mode.name;
    button.setAttribute("aria-describedby", `mode-explanation-${index}`);
    button.addEventListener("click", () => changeMode({ lock_mode: mode.name }));
    const tag = document.createElement("span");
    tag.className = `tag ${mode.unsafe ? "unsafe" : "safe"}`;
    tag.textContent = mode.unsafe ? "loses money" : "correct";
    const explanation = document.createElement("span");
    explanation.id = `mode-explanation-${index}`;
    explanation.textContent = mode.explanation;
    item.append(button, tag, explanation);
    list.append(item);
  });
}

function renderMode(data) {
  buildModeButtons(data);
  setText("current-mode", data.mode.lock_mode || "unknown");
  setText("current-window", data.mode.race_window_ms === null ? "?" : String(data.mode.race_window_ms));
  const allowedUnsafe = data.mode.unsafe_modes_allowed;
  for (const button of document.querySelectorAll("#mode-buttons button")) {
    const current = button.dataset.mode === data.mode.lock_mode;
    button.setAttribute("aria-pressed", String(current));
    const mode = data.modes.find((m) => m.name === button.dataset.mode);
    button.disabled = !data.mode_control || modeRequestPending || (mode && mode.unsafe && allowedUnsafe === false);
  }
  document.getElementById("window-button").disabled = !data.mode_control || modeRequestPending;
  const input = document.getElementById("window-input");
  input.disabled = !data.mode_control;
  if (document.activeElement !== input && !input.dataset.edited && data.mode.race_window_ms !== null) {
    input.value = String(data.mode.race_window_ms);
  }
  const note = document.getElementById("mode-note");
  note.hidden = data.mode_control;
  setText("mode-note", data.mode_control ? "" : "Switching is off: this Locust process was started without BANK_ADMIN_TOKEN (make demo sets it).");
}

function renderTotals(data) {
  const totals = data.totals;
  if (!totals) {
    for (const id of ["total-acknowledged", "total-lost", "total-created", "total-chain-breaks", "total-overdrafts"]) {
      setNumber(id, 0, "—", false);
    }
    setText("answers", "");
    return;
  }
  setNumber("total-acknowledged", totals.acknowledged, formatNumber(totals.acknowledged), false);
  setNumber("total-lost", totals.lost_updates, formatNumber(totals.lost_updates), totals.lost_updates > 0);
  setNumber("total-created", totals.money_created, formatSigned(totals.money_created), totals.money_created !== 0);
  setNumber("total-chain-breaks", totals.chain_breaks, formatNumber(totals.chain_breaks), totals.chain_breaks > 0);
  const overdrafts = totals.overdrafted_accounts
    ? `${totals.overdrafted_accounts} (${formatNumber(totals.overdraft_money)} below 0)`
    : "0";
  setNumber("total-overdrafts", totals.overdrafted_accounts, overdrafts, totals.overdrafted_accounts > 0);
  renderHolds(totals.holds);
  const served = Object.entries(totals.served_by_mode).map(([mode, count]) => `${mode} ${formatNumber(count)}`);
  const answers = [
    `answers served by mode: ${served.join(", ") || "none yet"}`,
    `refused (409 insufficient_funds or stale_lock, correct): ${formatNumber(totals.refused)}`,
    `honest 503 with Retry-After: ${formatNumber(totals.bounded_refusals)}`,
    `anomalies: ${formatNumber(totals.anomalies)}`,
    `money in requests not answered yet (not counted as lost): up to ${formatNumber(totals.maybe_in_flight)}`,
  ];
  if (totals.journal_disagreements.length) {
    answers.push(`the journal misses acknowledged operations on accounts ${totals.journal_disagreements.join(", ")}`);
  }
  const element = setText("answers", answers.join(" · "));
  element.dataset.served = JSON.stringify(totals.served_by_mode);
}

// The holds scenario: double captures, captured and voided, late captures, over-holds.
function renderHolds(holds) {
  document.getElementById("holds-card").hidden = !holds;
  if (!holds) {
    return;
  }
  const kinds = [
    [holds.double_captures, "double captures"],
    [holds.captures_after_void, "captured and voided"],
    [holds.captures_after_expiry, "captured after expiry"],
    [holds.over_hold_reads, "reads with available below 0"],
  ].filter(([count]) => count > 0).map(([count, name]) => `${formatNumber(count)} ${name}`);
  const text = kinds.length ? `${formatNumber(holds.anomalies)} (${kinds.join(", ")})` : "0";
  setNumber("total-holds", holds.anomalies, text, holds.anomalies > 0);
}

function cell(value, alarming) {
  return `<td class="${alarming ? "bad" : ""}">${escapeText(value)}</td>`;
}

function renderAccounts(data) {
  const rows = data.accounts.map((account) => "<tr>"
    + `<th scope="row">#${escapeText(account.account_id)}</th>`
    + cell(formatNumber(account.expected), false)
    + cell(formatNumber(account.stored), account.difference !== null && account.lost_updates > 0)
    + cell(formatNumber(account.journal), account.journal_disagreement !== 0)
    + cell(formatSigned(account.difference), false)
    + cell(formatNumber(account.lost_updates), account.lost_updates > 0)
    + cell(formatNumber(account.chain_breaks), account.chain_breaks > 0)
    + cell(formatNumber(account.overdraft), account.overdraft > 0)
    + "</tr>");
  const body = document.querySelector("#accounts tbody");
  const html = rows.join("") || `<tr><td colspan="8">No hot accounts yet.</td></tr>`;
  if (body.innerHTML !== html) body.innerHTML = html;
  const audit = data.server_audit;
  setText("server-audit", audit
    ? `Server /audit, every account in the database: ${formatNumber(audit.accounts)} accounts, ${formatNumber(audit.inconsistent_accounts)} inconsistent, drift ${formatSigned(audit.drift)}, ${formatNumber(audit.chain_breaks)} chain breaks.`
    : "");
  setText("server-metrics", metricsLine(data.server_metrics));
}

// The server's own counts (GET /metrics, every worker): operations by mode, refusals by code.
function metricsLine(metrics) {
  if (!metrics) return "";
  const modes = Object.entries(metrics.operations || {}).map(([mode, outcomes]) => {
    const done = outcomes.ok || 0;
    const refused = Object.entries(outcomes).filter(([outcome]) => outcome !== "ok")
      .reduce((sum, [, count]) => sum + count, 0);
    return `${mode} ${formatNumber(done)} done, ${formatNumber(refused)} refused`;
  });
  const problems = Object.entries(metrics.problems || {})
    .map(([code, count]) => `${code} ${formatNumber(count)}`);
  return `Server /metrics: operations ${modes.join("; ") || "none yet"}`
    + (problems.length ? `; refusals ${problems.join(", ")}.` : ".");
}

function secondsSpan(segment) {
  const from = Math.round(segment.from_seconds);
  const to = Math.round(segment.to_seconds);
  return from === to ? `at ${from} s` : `${from}–${to} s`;
}

function segmentColours(segment) {
  if (!segment.settled) return { fill: "#ececf1", ink: "#5b5b66" };
  return segment.unsafe ? { fill: "#fde2e1", ink: "#b3261e" } : { fill: "#e2f3e6", ink: "#1e6b34" };
}

function segmentLabel(segment) {
  if (!segment.settled) return `switching to ${segment.lock_mode}`;
  const rate = segment.lost_updates_per_second === null ? "…" : numberFormat.format(segment.lost_updates_per_second);
  return `${segment.lock_mode} ${windowLabel(segment.race_window_ms)}: ${rate} lost/s`;
}

function renderChart(data) {
  const points = data.history;
  const c = CHART;
  const plotWidth = c.width - c.left - c.right;
  const plotHeight = c.height - c.top - c.bottom;
  const first = points.length ? points[0].seconds : 0;
  const last = points.length ? points[points.length - 1].seconds : 0;
  const span = Math.max(last - first, 10);
  const maxLost = Math.max(1, ...points.map((p) => p.lost_updates));
  const maxAck = Math.max(1, ...points.map((p) => p.acknowledged));
  const x = (seconds) => c.left + ((seconds - first) / span) * plotWidth;
  const yLost = (value) => c.top + plotHeight - (value / maxLost) * plotHeight;
  const yAck = (value) => c.top + plotHeight - (value / maxAck) * plotHeight;
  const parts = [`<svg viewBox="0 0 ${c.width} ${c.height}" xmlns="http://www.w3.org/2000/svg" font-size="16" font-family="system-ui, sans-serif">`];
  data.segments.forEach((segment, index) => {
    const next = data.segments[index + 1];
    const start = Math.max(segment.from_seconds, first);
    const end = next ? next.from_seconds : last;
    if (end < first) return;
    const left = x(start);
    const width = Math.max(x(end) - left, 1);
    const colours = segmentColours(segment);
    parts.push(`<rect x="${left}" y="${c.top}" width="${width}" height="${plotHeight}" fill="${colours.fill}"/>`);
    if (segment.settled && width > 60) {
      parts.push(`<text x="${left + 6}" y="${c.top - 10}" fill="${colours.ink}" font-weight="600">${escapeText(segmentLabel(segment))}</text>`);
    }
  });
  for (const fraction of [0, 0.5, 1]) {
    const y = c.top + plotHeight - fraction * plotHeight;
    parts.push(`<line x1="${c.left}" x2="${c.width - c.right}" y1="${y}" y2="${y}" stroke="#d6d6de"/>`);
    parts.push(`<text x="${c.left - 8}" y="${y + 4}" text-anchor="end" fill="#b3261e">${numberFormat.format(Math.round(maxLost * fraction))}</text>`);
    parts.push(`<text x="${c.width - c.right + 8}" y="${y + 4}" fill="#5b5b66">${numberFormat.format(Math.round(maxAck * fraction))}</text>`);
  }
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 300].find((s) => span / s <= 6) || 600;
  for (let tick = Math.ceil(first / step) * step; tick <= first + span; tick += step) {
    parts.push(`<text x="${x(tick)}" y="${c.height - 12}" text-anchor="middle" fill="#5b5b66">${tick} s</text>`);
  }
  if (points.length > 1) {
    const path = (y, key) => points.map((p, i) => `${i ? "L" : "M"}${x(p.seconds).toFixed(1)},${y(p[key]).toFixed(1)}`).join("");
    parts.push(`<path d="${path(yAck, "acknowledged")}" fill="none" stroke="#5b5b66" stroke-width="1.5" stroke-dasharray="5 4"/>`);
    parts.push(`<path d="${path(yLost, "lost_updates")}" fill="none" stroke="#b3261e" stroke-width="3"/>`);
  }
  const middle = c.top + plotHeight / 2;
  parts.push(`<text transform="translate(16 ${middle}) rotate(-90)" text-anchor="middle" fill="#b3261e" font-weight="600">lost updates</text>`);
  parts.push(`<text transform="translate(${c.width - 16} ${middle}) rotate(90)" text-anchor="middle" fill="#5b5b66">acknowledged</text>`);
  parts.push("</svg>");
  const chart = document.getElementById("chart");
  chart.innerHTML = parts.join("");
  const list = document.getElementById("segments");
  const items = data.segments.map((segment) => {
    if (!segment.settled) {
      return `<li>${escapeText(segmentLabel(segment))}: answers still served in the old mode too, ${numberFormat.format(segment.lost_updates)} lost meanwhile (${secondsSpan(segment)})</li>`;
    }
    const acknowledged = segment.acknowledged_per_second === null ? "…" : numberFormat.format(segment.acknowledged_per_second);
    return `<li><strong>${escapeText(segmentLabel(segment))}</strong> while ${acknowledged} operations/s were acknowledged (${secondsSpan(segment)})</li>`;
  });
  items.push("<li>Red line: lost updates so far (left scale). Dashed grey: acknowledged operations so far (right scale). Grey background: a mode switch under way.</li>");
  list.innerHTML = items.join("");
}

function render(data) {
  lastData = data;
  renderStatus(data);
  renderMode(data);
  renderTotals(data);
  renderAccounts(data);
  renderChart(data);
}

async function poll() {
  try {
    const response = await fetch(DATA_URL, { cache: "no-store" });
    if (!response.ok) throw new Error(`${DATA_URL} answered ${response.status}`);
    render(await response.json());
  } catch (error) {
    const problem = document.getElementById("problem");
    problem.hidden = false;
    problem.textContent = `Cannot reach the load test: ${error.message}`;
  } finally {
    window.setTimeout(poll, POLL_INTERVAL_MS);
  }
}

async function changeMode(body) {
  modeRequestPending = true;
  if (lastData) renderMode(lastData);
  const described = Object.entries(body).map(([key, value]) => `${key} ${value}`).join(", ");
  setText("mode-result", `Asking the service for ${described}…`);
  try {
    const response = await fetch(MODE_URL, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    const attempts = Number(response.headers.get("X-Mode-Change-Attempts") || "1");
    const tries = attempts > 1 ? ` (after ${attempts} attempts: the lock was busy)` : "";
    if (response.ok) {
      setText("mode-result", `The service now runs ${answer.lock_mode} with a ${answer.race_window_ms} ms race window${tries}.`);
    } else {
      setText("mode-result", `Refused (${response.status})${tries}: ${answer.detail || answer.title || "no detail"}`);
    }
  } catch (error) {
    setText("mode-result", `Could not ask: ${error.message}`);
  } finally {
    modeRequestPending = false;
    if (lastData) renderMode(lastData);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("window-input");
  input.addEventListener("input", () => { input.dataset.edited = "1"; });
  document.getElementById("window-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = Number(input.value);
    delete input.dataset.edited;
    if (!Number.isInteger(value) || value < 0 || value > 5000) {
      setText("mode-result", "The race window is a whole number of milliseconds from 0 to 5000.");
      return;
    }
    changeMode({ race_window_ms: value });
  });
  poll();
});
