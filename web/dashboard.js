// qrlink dashboard: a live view of /ws/watch (protocol: /asyncapi.yaml, types: /qrlink.d.ts).
//
// One WebSocket to /ws/watch. Its `snapshot` fills the sessions table; `opened`, the sessions'
// own frames and `closed` keep it current; `closed` outcomes feed the counters (since this page
// first connected); every event goes to the log. On `lagged` the table is re-read from
// GET /api/sessions. The socket reconnects with capped, jittered backoff.
//
// Resume (protocol v1.1): `detached` puts a session's row in phase "detached" (its page went
// away; the session waits out the resume grace), `resumed` puts it back in the phase it had
// before (qr or checkpoint; "resumed" when this page never saw it), which the replayed or next
// frame confirms. A detached session whose grace passes ends with `closed` `disconnected`.
//
// The node column shows each session's `node` (cluster mode: from the snapshot and `opened`);
// in memory mode dashboard-stats.js names the one node. Totals and charts are that file's.
//
// Ages are measured with this browser's clock from when the page learned of the session
// (snapshot `age_ms`, or the moment `opened` arrived), so a skewed server clock cannot make
// them wrong.
"use strict";

(() => {
  /** Rows kept in the event log; older ones are dropped. */
  const LOG_LIMIT = 200;
  /** How long a closed session stays in the table (dimmed, with its outcome) before it goes. */
  const CLOSED_ROW_MS = 6000;
  /** Reconnect backoff: first delay, cap. Each failure doubles it, with ±25 % jitter. */
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const OUTCOMES = ["account", "timeout", "error", "cancelled", "disconnected"];
  const TOKEN_KEY = "qrlink.admin_token";

  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#sessions tbody");
  const table = $("sessions");
  const statusEl = $("watch-status");
  const dot = $("watch-dot");
  const log = $("log");

  /** session id -> { row, startedAt (ms, local clock), closed: bool, lastPhase: the last phase
   *  other than detached/resumed, what a resume returns to } */
  const sessions = new Map();
  const counts = Object.fromEntries(OUTCOMES.map((o) => [o, 0]));

  /** The node's name in memory mode (from /api/stats), where sessions carry none. */
  let localNode = "";

  /** Display names from /config.json (`whatsapp` -> `WhatsApp`); ids stand in until it loads. */
  const providerNames = new Map();

  let ws = null;
  let backoff = BACKOFF_FIRST_MS;
  let retryTimer = 0;
  let retryAt = 0;
  let everLive = false;

  // ------------------------------------------------------------------ admin token

  /** Takes ?admin_token= from the page URL once (then removes it from the address bar). */
  function adoptTokenFromUrl() {
    const url = new URL(location.href);
    const token = url.searchParams.get("admin_token");
    if (token === null) return;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("admin_token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function authHeaders() {
    const t = token();
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  function askForToken(note) {
    $("token-note").textContent = note;
    $("token-form").hidden = false;
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-input").value = "";
    $("token-form").hidden = true;
    reconnectNow();
  });

  // ------------------------------------------------------------------ connection

  /** Says what the table shows while not live (sessions are unknown then, not "none"). */
  const OFFLINE_NOTES = {
    connecting: "Connecting to the gateway…",
    waiting: "Not connected to the gateway. Open sessions show again once it is back.",
    unauthorized: "Open sessions show here once the gateway accepts this page.",
  };

  function setStatus(state, text, note) {
    statusEl.textContent = text;
    statusEl.dataset.state = state;
    dot.dataset.state = state;
    table.dataset.live = String(state === "live");
    $("reconnect-now").hidden = state !== "waiting";
    $("sessions-offline").textContent = note || OFFLINE_NOTES[state] || "";
    updateActive();
  }

  function isLive() {
    return statusEl.dataset.state === "live";
  }

  function watchUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const t = token();
    const query = t ? `?admin_token=${encodeURIComponent(t)}` : "";
    return `${scheme}//${location.host}/ws/watch${query}`;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    setStatus("connecting", "connecting");
    let opened = false;
    const socket = new WebSocket(watchUrl());
    ws = socket;
    socket.addEventListener("open", () => {
      opened = true;
    });
    socket.addEventListener("message", (e) => {
      if (ws !== socket) return;
      let event;
      try {
        event = JSON.parse(e.data);
      } catch {
        addLog("warn", null, "unreadable message from the gateway");
        return;
      }
      handle(event);
    });
    socket.addEventListener("close", (e) => {
      if (ws !== socket) return;
      ws = null;
      if (everLive) $("counters-gap").hidden = false;
      if (!opened) {
        // A refused upgrade hides its HTTP status from scripts: ask the HTTP API why.
        probeAuth().then((status) => {
          if (ws || retryTimer) return; // a new connection started meanwhile
          if (status === 401) {
            setStatus(
              "unauthorized",
              "admin token needed",
              "Open sessions show here once the gateway accepts the admin token.",
            );
            const refused = Boolean(token());
            addLog(
              "warn",
              null,
              refused ? "the gateway refused the admin token" : "the gateway asks for its admin token",
            );
            askForToken(
              refused
                ? "The gateway refused this admin token. Enter the right one."
                : "This gateway needs its admin token to show sessions.",
            );
          } else if (status === 403) {
            // No admin token configured: the gateway serves its views to loopback clients only.
            setStatus(
              "unauthorized",
              "not allowed from this address",
              "This gateway shows its sessions to loopback clients only.",
            );
            addLog(
              "warn",
              null,
              "the gateway shows sessions to loopback clients only; set QRLINK_ADMIN_TOKEN to allow others",
            );
          } else {
            scheduleReconnect();
          }
        });
        return;
      }
      addLog("warn", null, `connection closed (${e.code || "no code"}); reconnecting`);
      scheduleReconnect();
    });
  }

  /** The HTTP status the admin API answers us with (0 when unreachable): 401 means a missing
   *  or wrong admin token, 403 a non-loopback client of a gateway without one. */
  async function probeAuth() {
    try {
      const r = await fetch("/api/sessions", { headers: authHeaders(), cache: "no-store" });
      return r.status;
    } catch {
      return 0;
    }
  }

  function scheduleReconnect() {
    const jitter = 0.75 + Math.random() * 0.5;
    const delay = Math.round(backoff * jitter);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    retryAt = Date.now() + delay;
    retryTimer = setTimeout(connect, delay);
    showRetry();
  }

  function showRetry() {
    if (!retryTimer) return;
    const secs = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    setStatus("waiting", secs > 0 ? `offline, retrying in ${secs} s` : "offline, retrying");
  }

  function reconnectNow() {
    if (ws) {
      const old = ws;
      ws = null;
      old.close();
    }
    backoff = BACKOFF_FIRST_MS;
    connect();
  }
  $("reconnect-now").addEventListener("click", reconnectNow);

  // ------------------------------------------------------------------ events

  function handle(ev) {
    switch (ev.type) {
      case "snapshot":
        backoff = BACKOFF_FIRST_MS;
        everLive = true;
        setStatus("live", "live");
        reconcile(ev.sessions || []);
        addLog("info", null, `live: ${plural((ev.sessions || []).length, "session")} open`);
        break;
      case "opened":
        upsert({
          id: ev.session,
          provider: ev.provider,
          phase: "starting",
          rotation: 0,
          age_ms: 0,
          client: ev.client,
          node: ev.node,
        });
        // The totals and charts (dashboard-stats.js) look again.
        document.dispatchEvent(new CustomEvent("qrlink:opened", { detail: { session: ev.session } }));
        addLog("opened", ev.session, `opened ${providerName(ev.provider)} from ${ev.client}`);
        break;
      case "qr":
        update(ev.session, { phase: "qr", rotation: ev.rotation });
        if (ev.replay) {
          addLog("qr", ev.session, `QR ${ev.rotation} shown again after a resume, expires ${clock(ev.expires_at)}`);
        } else {
          addLog("qr", ev.session, `QR ${ev.rotation} shown, expires ${clock(ev.expires_at)}`);
        }
        break;
      case "checkpoint":
        update(ev.session, { phase: "checkpoint" });
        addLog(
          "checkpoint",
          ev.session,
          `checkpoint ${(ev.checkpoint && ev.checkpoint.type) || ""}${ev.replay ? " asked again after a resume" : ""}: waiting for the code`,
        );
        break;
      case "detached":
        update(ev.session, { phase: "detached" });
        addLog("detached", ev.session, "detached: its page went away; waiting for it to resume");
        break;
      case "resumed": {
        const s = sessions.get(ev.session);
        update(ev.session, { phase: (s && s.lastPhase) || "resumed" });
        addLog("resumed", ev.session, "resumed: its page is back");
        break;
      }
      case "account": {
        update(ev.session, { phase: "closing" });
        const a = ev.account || {};
        const who = a.name ? ` (${a.name})` : "";
        addLog("account", ev.session, `linked ${a.id || "an account"}${who}`);
        break;
      }
      case "timeout":
        update(ev.session, { phase: "closing" });
        addLog("timeout", ev.session, `nobody scanned: ${plural(ev.rotations, "QR")} shown`);
        break;
      case "error":
        update(ev.session, { phase: "closing" });
        if (ev.code === "session/cancelled") {
          // An operator's cancel, not a failure: logged (and counted) as cancelled.
          addLog("cancelled", ev.session, `cancelled by an operator (${ev.code})`);
        } else {
          addLog("error", ev.session, `error ${ev.code}: ${ev.message}`);
        }
        break;
      case "closed":
        closeSession(ev);
        break;
      case "lagged":
        addLog("warn", null, `fell behind: ${plural(ev.skipped, "event")} skipped; re-reading the sessions`);
        refetchSessions();
        break;
      default:
        // A newer gateway's event: show it, change nothing.
        addLog("info", ev.session || null, `${ev.type} event`);
    }
  }

  function closeSession(ev) {
    // The deliveries panel (dashboard-deliveries.js) looks for the ending's webhook.
    document.dispatchEvent(new CustomEvent("qrlink:closed", { detail: { session: ev.session } }));
    const outcome = ev.outcome;
    if (outcome in counts) {
      counts[outcome] += 1;
      $(`counter-${outcome}`).textContent = String(counts[outcome]);
    }
    const s = sessions.get(ev.session);
    const took = `after ${duration(ev.duration_ms)}`;
    const code = ev.code ? ` (${ev.code})` : "";
    addLog("closed", ev.session, `closed: ${outcome}${code} ${took}`, outcome);
    if (!s) return;
    s.closed = true;
    s.durationMs = ev.duration_ms;
    const row = s.row;
    row.dataset.outcome = outcome;
    row.classList.add("closed");
    const phase = row.querySelector("td.phase");
    phase.textContent = outcome;
    phase.dataset.value = outcome;
    if (ev.code) phase.title = ev.code;
    row.querySelector("td.age").textContent = duration(ev.duration_ms);
    // Nothing left to cancel (also ends a "Cancelling…" that brought this close).
    const button = row.querySelector("button.cancel");
    button.disabled = true;
    button.textContent = "Cancel";
    setTimeout(() => {
      if (sessions.get(ev.session) === s) removeSession(ev.session);
    }, CLOSED_ROW_MS);
    updateActive();
  }

  async function refetchSessions() {
    try {
      const r = await fetch("/api/sessions", { headers: authHeaders(), cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const body = await r.json();
      reconcile(body.sessions || []);
    } catch (err) {
      addLog("warn", null, `could not re-read the sessions (${err.message}); reconnecting`);
      reconnectNow();
    }
  }

  // ------------------------------------------------------------------ table

  /** Makes the table show exactly `list` (plus rows of just-closed sessions still fading). */
  function reconcile(list) {
    const open = new Set(list.map((s) => s.id));
    for (const [id, s] of sessions) {
      if (!open.has(id) && !s.closed) removeSession(id);
    }
    for (const info of list) upsert(info);
  }

  function upsert(info) {
    let s = sessions.get(info.id);
    if (!s) {
      s = { row: newRow(info.id), startedAt: Date.now() - (info.age_ms || 0), closed: false };
      sessions.set(info.id, s);
      tbody.append(s.row);
    }
    const row = s.row;
    row.querySelector("td.provider").textContent = providerName(info.provider);
    row.dataset.provider = info.provider;
    row.querySelector("td.client").textContent = info.client;
    if (info.node) row.dataset.node = info.node;
    row.querySelector("td.node").textContent = row.dataset.node || localNode;
    update(info.id, { phase: info.phase, rotation: info.rotation });
    tickRow(s);
    updateActive();
  }

  function update(id, { phase, rotation }) {
    const s = sessions.get(id);
    if (!s || s.closed) return;
    if (phase !== undefined) {
      if (phase !== "detached" && phase !== "resumed") s.lastPhase = phase;
      const td = s.row.querySelector("td.phase");
      td.textContent = phase;
      td.dataset.value = phase;
      s.row.dataset.phase = phase;
    }
    if (rotation !== undefined) {
      s.row.querySelector("td.rotation").textContent = rotation > 0 ? String(rotation) : "–";
    }
  }

  function newRow(id) {
    const row = document.createElement("tr");
    row.dataset.session = id;
    for (const name of ["session", "node", "provider", "phase", "rotation", "age", "client", "actions"]) {
      const td = document.createElement("td");
      td.className = name;
      row.append(td);
    }
    const idCell = row.querySelector("td.session");
    const code = document.createElement("code");
    code.textContent = shortId(id);
    code.title = id;
    idCell.append(code);
    row.querySelector("td.rotation").classList.add("num");
    row.querySelector("td.age").classList.add("num");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "cancel";
    button.dataset.session = id;
    button.textContent = "Cancel";
    button.setAttribute("aria-label", `Cancel session ${id}`);
    button.addEventListener("click", () => cancel(id, button));
    row.querySelector("td.actions").append(button);
    return row;
  }

  function removeSession(id) {
    const s = sessions.get(id);
    if (!s) return;
    s.row.remove();
    sessions.delete(id);
    updateActive();
  }

  /** The open count and the table's empty notes. Not live, the gateway's sessions are unknown:
   *  no count, and no "nothing is open" claim. */
  function updateActive() {
    let open = 0;
    for (const s of sessions.values()) if (!s.closed) open += 1;
    const live = isLive();
    $("counter-active").textContent = live ? String(open) : "–";
    $("sessions-empty").hidden = !live || sessions.size > 0;
    $("sessions-offline").hidden = live || sessions.size > 0;
  }

  async function cancel(id, button) {
    button.disabled = true;
    button.textContent = "Cancelling…";
    try {
      const r = await fetch(`/api/sessions/${encodeURIComponent(id)}`, {
        method: "DELETE",
        headers: authHeaders(),
      });
      if (r.status === 204) {
        addLog("info", id, "cancel requested");
        return;
      }
      if (r.status === 404) {
        addLog("info", id, "cancel: the session had already ended");
        return;
      }
      if (r.status === 401) askForToken("Cancelling needs the admin token.");
      throw new Error(`HTTP ${r.status}`);
    } catch (err) {
      addLog("warn", id, `cancel failed: ${err.message}`);
      const s = sessions.get(id);
      if (s && !s.closed) {
        button.disabled = false;
        button.textContent = "Cancel";
      }
    }
  }

  // ------------------------------------------------------------------ ages

  function tickRow(s) {
    if (s.closed) return;
    s.row.querySelector("td.age").textContent = duration(Date.now() - s.startedAt);
  }

  setInterval(() => {
    for (const s of sessions.values()) tickRow(s);
    showRetry();
  }, 1000);

  // ------------------------------------------------------------------ log

  /** `kind` styles the entry: opened, qr, checkpoint, detached, resumed, account, timeout, error,
   *  cancelled, closed (with its `outcome`), info, warn. */
  function addLog(kind, session, text, outcome) {
    const li = document.createElement("li");
    li.className = "log-entry";
    li.dataset.kind = kind;
    if (outcome) li.dataset.outcome = outcome;
    const time = document.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toLocaleTimeString([], { hour12: false });
    li.append(time);
    if (session) {
      const sid = document.createElement("code");
      sid.className = "log-session";
      sid.textContent = shortId(session, 9);
      sid.title = session;
      li.append(sid);
      li.dataset.session = session;
    }
    const msg = document.createElement("span");
    msg.className = "log-text";
    msg.textContent = text;
    li.append(msg);
    log.prepend(li);
    while (log.childElementCount > LOG_LIMIT) log.lastElementChild.remove();
  }

  // ------------------------------------------------------------------ formatting

  function providerName(id) {
    return providerNames.get(id) || id;
  }

  async function loadProviderNames() {
    try {
      const r = await fetch("/config.json", { cache: "no-store" });
      const body = await r.json();
      for (const p of body.providers || []) providerNames.set(p.id, p.name || p.id);
      for (const s of sessions.values()) {
        const td = s.row.querySelector("td.provider");
        td.textContent = providerName(s.row.dataset.provider);
      }
    } catch {
      // Ids are fine as names.
    }
  }

  function shortId(id, keep = 12) {
    return id.length > keep ? `${id.slice(0, keep)}…` : id;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  }

  function clock(rfc3339) {
    const d = new Date(rfc3339);
    return Number.isNaN(d.getTime()) ? "soon" : d.toLocaleTimeString([], { hour12: false });
  }

  // ------------------------------------------------------------------ start

  // What the deliveries panel (dashboard-deliveries.js, loaded after this file) shares.
  /** Reads the admin API's `path` now and every `everyMs` while the tab is visible, handing
   *  its JSON to `show`; one request at a time. Returns the function that reads it now. On
   *  401/403 this page asks for the token (the next read uses it); while the gateway is away
   *  the status says so and the next read tries again. */
  function poll(path, show, everyMs) {
    let inFlight = false;
    async function refresh() {
      if (inFlight) return;
      inFlight = true;
      try {
        const r = await fetch(path, { headers: authHeaders(), cache: "no-store" });
        if (r.ok) show(await r.json());
      } catch {
        // Away: the next read tries again.
      } finally {
        inFlight = false;
      }
    }
    setInterval(() => {
      if (document.visibilityState === "visible") refresh();
    }, everyMs);
    refresh();
    return refresh;
  }

  /** Memory mode: every session is this node's; its name fills the node column. */
  function setNodeName(name) {
    localNode = name || "";
    for (const s of sessions.values()) {
      if (!s.row.dataset.node) s.row.querySelector("td.node").textContent = localNode;
    }
  }

  window.QrlinkDashboard = Object.freeze({ authHeaders, duration, clock, setNodeName, poll });
  adoptTokenFromUrl();
  loadProviderNames();
  updateActive();
  connect();
})();
