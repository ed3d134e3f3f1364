// qrlink dashboard: totals, the nodes table and the two charts, from GET /api/stats.
//
// /api/stats has every node's numbers since it started (in cluster mode each node puts its
// own in Redis with every heartbeat) and their sums: sessions ended by outcome, open now, open
// sessions sampled every 10 s over the last 15 minutes, and time to scan as a histogram. This
// polls it every POLL_MS while the tab is visible and a moment after a session opens or closes
// (dashboard.js announces both). The charts are SVG drawn here (no third-party script, nothing
// the page's CSP refuses: attributes and classes, no inline style), each with a text summary
// that is also its accessible description.
"use strict";

(() => {
  const POLL_MS = 5000;
  const AFTER_CHANGE_MS = 300;
  const WINDOW_MS = 15 * 60 * 1000;
  const OUTCOMES = ["account", "timeout", "error", "cancelled", "disconnected"];
  const SVG = "http://www.w3.org/2000/svg";
  const { duration, setNodeName, poll } = window.QrlinkDashboard;

  const $ = (id) => document.getElementById(id);

  let soon = 0;

  function show(stats) {
    const nodes = stats.nodes || [];
    const total = stats.total;
    // Memory mode: sessions carry no node; they are all this one's.
    if (!stats.cluster) setNodeName(stats.node);
    for (const o of OUTCOMES) $(`total-${o}`).textContent = `${total.ended[o] || 0} since start`;
    $("total-active").textContent = stats.cluster ? `on ${plural(nodes.length, "node")}` : `on ${stats.node}`;
    const since = new Date(total.started_at);
    $("totals-since").textContent = Number.isNaN(since.getTime()) ? "" : since.toLocaleString([], { hour12: false });
    $("nodes-partial").hidden = stats.complete;
    showNodes(nodes);
    drawOpen(nodes, total);
    drawScans(total.time_to_scan);
  }

  // ---------------------------------------------------------------- nodes table

  function showNodes(nodes) {
    const rows = nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.dataset.node = n.node;
      const cells = [["node", n.node], ["open num", String(n.open)]];
      for (const o of OUTCOMES) cells.push([`${o} num`, String(n.ended[o] || 0)]);
      const up = new Date(n.started_at);
      cells.push(["since", Number.isNaN(up.getTime()) ? "" : `${duration(Date.now() - up.getTime())} ago`]);
      for (const [cls, text] of cells) {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    document.querySelector("#nodes tbody").replaceChildren(...rows);
  }

  // ---------------------------------------------------------------- charts

  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /** A round upper bound for an axis: 1, 2, 5, 10, 20, 50… at least `n`. */
  function niceMax(n) {
    if (n <= 4) return 4;
    const p = 10 ** Math.floor(Math.log10(n));
    for (const m of [1, 2, 5, 10]) if (m * p >= n) return m * p;
    return 10 * p;
  }

  function hhmm(ms) {
    return new Date(ms).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" });
  }

  /** Open sessions over the last 15 minutes: the sum as a filled area, each node as a line
   *  when there are several; the last point is "now" (the nodes' counts as they answered). */
  function drawOpen(nodes, total) {
    const svg = $("open-svg");
    const [W, H, L, R, T, B] = [600, 180, 36, 10, 10, 22];
    const now = total.at_ms || Date.now();
    const from = now - WINDOW_MS;
    const series = (history, open) => [...history.filter(([t]) => t >= from && t < now), [now, open]];
    const sum = series(total.open_history, total.open);
    const max = niceMax(Math.max(...sum.map(([, n]) => n)));
    const x = (t) => L + ((t - from) / WINDOW_MS) * (W - L - R);
    const y = (n) => T + (1 - n / max) * (H - T - B);
    const parts = [];
    for (const v of [0, max / 2, max]) {
      parts.push(el("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      parts.push(el("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)));
    }
    for (const m of [15, 10, 5, 0]) {
      const t = now - m * 60000;
      parts.push(el("text", { class: "axis", x: x(t), y: H - 6, "text-anchor": m === 15 ? "start" : m === 0 ? "end" : "middle" }, m === 0 ? "now" : `−${m} min`));
    }
    const line = (points) => points.map(([t, n]) => `${x(t).toFixed(1)},${y(n).toFixed(1)}`).join(" ");
    const first = sum[0][0];
    parts.push(el("polygon", { class: "area", points: `${x(first).toFixed(1)},${y(0)} ${line(sum)} ${x(now).toFixed(1)},${y(0)}` }));
    parts.push(el("polyline", { class: "total-line", points: line(sum) }));
    if (nodes.length > 1) {
      nodes.forEach((n, i) => {
        parts.push(el("polyline", { class: `node-line node-${i % 6}`, points: line(series(n.open_history, n.open)), "data-node": n.node }));
      });
    }
    for (const [t, n] of sum) parts.push(el("circle", { class: "point", cx: x(t), cy: y(n), r: 2.5 }));
    svg.replaceChildren(...parts);
    svg.dataset.points = String(sum.length);
    svg.dataset.now = String(total.open);

    const legend = $("open-legend");
    legend.replaceChildren(
      ...(nodes.length > 1 ? nodes : []).map((n, i) => {
        const li = document.createElement("li");
        li.className = `node-${i % 6}`;
        li.textContent = n.node;
        return li;
      }),
    );
    const peak = sum.reduce((best, p) => (p[1] > best[1] ? p : best), sum[0]);
    const perNode = nodes.length > 1 ? ` (${nodes.map((n) => `${n.node} ${n.open}`).join(", ")})` : "";
    $("open-summary").textContent =
      `Now ${total.open} open${perNode}. ` +
      `Highest in the last 15 minutes: ${peak[1]}${peak[0] === now ? " (now)" : ` at ${hhmm(peak[0])}`}; ` +
      `${plural(sum.length - 1, "sample")} every 10 s, and now.`;
  }

  function bucketLabel(bounds, i) {
    const secs = (s) => (s >= 60 && s % 60 === 0 ? `${s / 60} min` : `${s} s`);
    return i < bounds.length ? `≤ ${secs(bounds[i])}` : `> ${secs(bounds[bounds.length - 1])}`;
  }

  /** Time to scan as bars per bucket; the summary gives the count, the median's bucket, the
   *  bucket 90 % fall within and the mean. */
  function drawScans(h) {
    const svg = $("scan-svg");
    const [W, H, L, R, T, B] = [600, 180, 36, 10, 16, 22];
    const counts = h.counts;
    const n = counts.reduce((a, b) => a + b, 0);
    const max = niceMax(Math.max(...counts));
    const slot = (W - L - R) / counts.length;
    const y = (v) => T + (1 - v / max) * (H - T - B);
    const parts = [];
    for (const v of [0, max / 2, max]) {
      parts.push(el("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      parts.push(el("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)));
    }
    counts.forEach((c, i) => {
      const label = bucketLabel(h.bounds_secs, i);
      const x = L + i * slot;
      const bar = el("rect", { class: "bar", x: x + 3, width: slot - 6, y: y(c), height: Math.max(0, y(0) - y(c)), "data-count": c, "data-bucket": label });
      bar.append(el("title", {}, `${label}: ${plural(c, "session")}`));
      parts.push(bar);
      if (c > 0) parts.push(el("text", { class: "bar-value", x: x + slot / 2, y: y(c) - 4, "text-anchor": "middle" }, String(c)));
      parts.push(el("text", { class: "axis", x: x + slot / 2, y: H - 6, "text-anchor": "middle" }, label.replace("≤ ", "")));
    });
    svg.replaceChildren(...parts);
    svg.dataset.scans = String(n);

    if (n === 0) {
      $("scan-summary").textContent = "No account linked yet.";
      return;
    }
    const within = (share) => {
      let seen = 0;
      for (let i = 0; i < counts.length; i += 1) {
        seen += counts[i];
        if (seen >= share * n) return bucketLabel(h.bounds_secs, i).replace("≤ ", "").replace("> ", "more than ");
      }
      return "";
    };
    const mean = (h.sum_ms / n / 1000).toFixed(1);
    $("scan-summary").textContent =
      `${plural(n, "account")} linked. Half within ${within(0.5)}, ` +
      `90 % within ${within(0.9)}; mean ${mean} s.`;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  const later = () => {
    clearTimeout(soon);
    soon = setTimeout(refresh, AFTER_CHANGE_MS);
  };
  const refresh = poll("/api/stats", show, POLL_MS);
  document.addEventListener("qrlink:closed", later);
  document.addEventListener("qrlink:opened", later);
})();
