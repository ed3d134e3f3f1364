// qrlink dashboard: the webhook deliveries panel, from GET /api/deliveries.
//
// The gateway keeps its last 100 deliveries (event, session, status, attempts, next retry) and
// the outbox's pending count and oldest age. This polls it every POLL_MS while the tab is
// visible, and a moment after each session closes (the ending that queued a webhook), which
// dashboard.js announces with a `qrlink:closed` event. With webhooks off the panel says so.
// dashboard.js (loaded first) lends its token and formatting helpers (window.QrlinkDashboard).
"use strict";

(() => {
  const POLL_MS = 2000;
  /** After a session closes, its webhook is usually delivered within milliseconds. */
  const AFTER_CLOSE_MS = 250;
  const { duration, clock, poll } = window.QrlinkDashboard;

  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#deliveries tbody");

  let soon = 0;

  function show(feed) {
    const summary = $("deliveries-summary");
    if (!feed.enabled) {
      summary.textContent = "off";
      $("deliveries-empty").textContent = "Webhooks are off: set QRLINK_WEBHOOK_URL and QRLINK_WEBHOOK_SECRET.";
      $("deliveries-empty").hidden = false;
      $("deliveries").dataset.enabled = "false";
      return;
    }
    $("deliveries").dataset.enabled = "true";
    const oldest = feed.oldest_pending_ms == null ? "" : `, oldest ${duration(feed.oldest_pending_ms)}`;
    summary.textContent = `${feed.pending} pending${oldest} · outbox in ${feed.outbox}`;
    summary.dataset.pending = String(feed.pending);
    $("deliveries-gone").hidden = !feed.gone;
    const rows = (feed.recent || []).map(row);
    tbody.replaceChildren(...rows);
    $("deliveries-empty").textContent = "No webhook yet.";
    $("deliveries-empty").hidden = rows.length > 0;
  }

  function row(d) {
    const tr = document.createElement("tr");
    tr.dataset.id = d.id;
    tr.dataset.session = d.session;
    tr.dataset.status = d.status;
    const status = d.last_status ? `${d.status} (HTTP ${d.last_status})` : d.status;
    tr.append(
      cell("event", d.event),
      cell("session", d.session, true),
      cell("status", status, false, d.status),
      cell("attempts num", String(d.attempts)),
      cell("next-retry", d.next_retry_at ? clock(d.next_retry_at) : "–"),
    );
    return tr;
  }

  function cell(cls, text, code, value) {
    const td = document.createElement("td");
    td.className = cls;
    if (value) td.dataset.value = value;
    if (code) {
      const c = document.createElement("code");
      c.textContent = text.length > 16 ? `${text.slice(0, 16)}…` : text;
      c.title = text;
      td.append(c);
    } else {
      td.textContent = text;
    }
    return td;
  }

  const refresh = poll("/api/deliveries", show, POLL_MS);
  document.addEventListener("qrlink:closed", () => {
    clearTimeout(soon);
    soon = setTimeout(refresh, AFTER_CLOSE_MS);
  });
})();
