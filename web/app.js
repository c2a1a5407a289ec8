// icetools live view: the state of an icecream cluster over the /ws websocket
// (docs/websocket-protocol.md). Plain ES2020 modules + d3 v7, no build step: this module
// imports the code it shares with the report (lib/format.js, lib/charts.js; report.js).
//
// Security: every string that comes from the server (host names, file names, messages...) goes
// into the page with d3's .text() / textContent / setAttribute, never as HTML.
"use strict";

import { fmtNum, fmtSpeed, fmtRate, fmtClock, fmtMem, fmtLoadAvg, fmtSeconds, loadBucket, loadColor, jobFailed } from "./lib/format.js";
import { lineChart } from "./lib/charts.js";

(() => {
  const RECENT_MAX = 200; // recent finished jobs kept (as the server keeps)
  const TIMELINE_MAX_BARS = 3000; // finished job bars kept for the timeline
  const TIMELINE_KEEP_SECONDS = 600; // the longest timeline window
  const TICK_MS = 200; // elapsed times, the timeline and the seek slider move this often
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const SPEEDS = ["0.5", "1", "2", "4", "10", "50"];
  const HISTORY_MAX = 600; // utilisation samples kept (as the server keeps)
  const WAITING_SHOWN = 50; // waiting jobs listed (the longest waiting)
  const UTIL_REDRAW_MS = 500; // the utilisation line is redrawn at most this often

  // ---- the model -------------------------------------------------------------------------

  const model = {
    seq: null,
    status: null,
    t: 0,
    hosts: new Map(), // id -> HOST
    jobs: new Map(), // id -> JOB (active: waiting, compiling, local)
    recent: [], // finished JOBs, oldest first
    totals: {},
    history: [], // [t, busy slots, offered slots, jobs waiting], oldest first
  };

  // What tests (and curious people in the console) read: the current model in the protocol's
  // own shape. Arrays are refreshed after every message.
  const pub = {
    state: { t: 0, hosts: [], jobs: [], recent: [], totals: {}, history: [] },
    status: null,
    seq: null,
    connection: "connecting", // connecting | open | disconnected
    messages: 0,
    snapshots: 0,
    gaps: 0,
    perf: { renders: 0, lastMs: 0, maxMs: 0, totalMs: 0, parts: {} }, // rendering time, ms
    send: (cmd) => send(cmd),
  };
  window.icetools = pub;

  function publish() {
    pub.state = {
      t: model.t,
      hosts: Array.from(model.hosts.values()),
      jobs: Array.from(model.jobs.values()),
      recent: model.recent.slice(),
      totals: model.totals,
      history: model.history.slice(),
    };
    pub.status = model.status;
    pub.seq = model.seq;
  }

  // The state's clock moves between messages: in real time when live, at the replay speed when
  // playing, not at all when paused, ended or not connected.
  const clock = { t: 0, wall: performance.now(), rate: 0 };
  const statusClock = { position: 0, wall: performance.now() };

  const EXTRAPOLATE_MAX_MS = 15000; // a silent server: stop the clock after this long

  function nowT() {
    if (!clock.rate) return clock.t;
    const ms = Math.min(EXTRAPOLATE_MAX_MS, performance.now() - clock.wall);
    return clock.t + (ms / 1000) * clock.rate;
  }

  function clockRate() {
    const s = model.status;
    if (conn.state !== "open" || !s) return 0;
    if (s.state === "live") return 1;
    if (s.state === "playing") return Number(s.speed) > 0 ? Number(s.speed) : 1;
    return 0;
  }

  function setClock(t) {
    if (typeof t === "number" && isFinite(t)) {
      clock.t = t;
      clock.wall = performance.now();
    }
  }

  function retime() {
    // keep the displayed time continuous when the rate changes
    const t = nowT();
    clock.t = t;
    clock.wall = performance.now();
    clock.rate = clockRate();
  }

  function replayPosition() {
    const s = model.status;
    if (!s || typeof s.position !== "number") return 0;
    let p = s.position;
    if (s.state === "playing" && conn.state === "open") {
      const ms = Math.min(EXTRAPOLATE_MAX_MS, performance.now() - statusClock.wall);
      p += (ms / 1000) * (Number(s.speed) || 1);
    }
    const d = Number(s.duration);
    if (isFinite(d) && d > 0) p = Math.min(p, d);
    return Math.max(0, p);
  }

  // ---- dirty flags and the render loop ---------------------------------------------------

  const dirty = {
    status: true,
    totals: true,
    hostsAll: true, // re-render every row (snapshot, sort change)
    hostIds: new Set(), // rows to refresh
    hostSet: true, // hosts added or removed
    graph: true, // node data or links changed
    running: true,
    recent: true,
    timeline: true,
    history: true,
  };
  let rafPending = false;

  function schedule() {
    if (!rafPending) {
      rafPending = true;
      requestAnimationFrame(render);
    }
  }

  function guard(name, fn) {
    // one broken part must not blank the others
    const t0 = performance.now();
    try {
      fn();
    } catch (e) {
      console.error(`icetools: rendering ${name} failed`, e);
    }
    const parts = pub.perf.parts;
    parts[name] = (parts[name] || 0) + performance.now() - t0;
  }

  function render() {
    rafPending = false;
    const t0 = performance.now();
    if (dirty.status) guard("status", renderStatus);
    guard("position", renderReplayPosition);
    if (dirty.totals) guard("totals", renderTotals);
    if (dirty.hostsAll || dirty.hostIds.size || dirty.hostSet) guard("hosts", renderHosts);
    if (dirty.graph) guard("graph", renderGraph);
    guard("running", () => renderRunning(dirty.running));
    guard("waiting", () => renderWaiting(dirty.running));
    if (dirty.history) guard("utilisation", renderUtilisation);
    if (dirty.recent) guard("recent", renderRecent);
    guard("timeline", renderTimeline);
    guard("clock", renderClock);
    const ms = performance.now() - t0;
    pub.perf.renders++;
    pub.perf.lastMs = ms;
    pub.perf.maxMs = Math.max(pub.perf.maxMs, ms);
    pub.perf.totalMs += ms;
    dirty.status = dirty.totals = dirty.hostsAll = dirty.hostSet = dirty.graph = false;
    dirty.running = dirty.recent = dirty.timeline = false;
    if (utilDrawn) dirty.history = false;
    dirty.hostIds.clear();
  }

  function markAll() {
    dirty.status = dirty.totals = dirty.hostsAll = dirty.hostSet = dirty.graph = true;
    dirty.running = dirty.recent = dirty.timeline = dirty.history = true;
    schedule();
  }

  // ---- formatting ------------------------------------------------------------------------

  // names of hosts seen since the page loaded, for jobs of hosts that are gone
  const knownNames = new Map();

  function hostName(id) {
    if (id === null || id === undefined) return "?";
    const h = model.hosts.get(id);
    if (h && h.name) return h.name;
    return knownNames.get(id) || `#${id}`;
  }

  function learnName(h) {
    if (h && h.name) knownNames.set(h.id, h.name);
  }

  function jobHostText(j) {
    if (j.local || j.state === "local" || j.state === "local done") {
      return `local on ${hostName(j.client_id)}`;
    }
    if (j.server_id === null || j.server_id === undefined) return `${hostName(j.client_id)} → …`;
    return `${hostName(j.client_id)} → ${hostName(j.server_id)}`;
  }

  // the timeline row of a job: where it runs
  function jobRowHost(j) {
    if (j.local || j.state === "local" || j.state === "local done") return j.client_id ?? j.server_id;
    return j.server_id ?? j.client_id;
  }

  // ---- messages from the server ----------------------------------------------------------

  function setStatus(status) {
    if (!status || typeof status !== "object") return;
    model.status = status;
    statusClock.position = status.position;
    statusClock.wall = performance.now();
    retime();
    dirty.status = true;
  }

  function pushRecent(j) {
    // the same job twice (a resent finish): keep the newest copy only
    for (let i = model.recent.length - 1; i >= Math.max(0, model.recent.length - RECENT_MAX); i--) {
      if (model.recent[i].id === j.id) {
        model.recent.splice(i, 1);
        break;
      }
    }
    model.recent.push(j);
    if (model.recent.length > RECENT_MAX) model.recent.splice(0, model.recent.length - RECENT_MAX);
  }

  function applySnapshot(msg) {
    const s = msg.state || {};
    const prevResets = model.totals && model.totals.resets;
    const reset = s.totals && prevResets !== undefined && s.totals.resets !== prevResets;
    model.seq = typeof msg.seq === "number" ? msg.seq : null;
    model.t = typeof s.t === "number" ? s.t : 0;
    setClock(model.t);
    if (reset) knownNames.clear();
    model.hosts = new Map((s.hosts || []).map((h) => [h.id, h]));
    model.hosts.forEach(learnName);
    model.jobs = new Map((s.jobs || []).map((j) => [j.id, j]));
    model.recent = (s.recent || []).slice(-RECENT_MAX);
    model.totals = s.totals || {};
    model.history = Array.isArray(s.history) ? s.history.slice(-HISTORY_MAX) : [];
    setStatus(msg.status);
    timelineFromSnapshot(reset);
    pub.snapshots++;
    markAll();
  }

  function applyDelta(msg) {
    if (typeof msg.seq === "number" && typeof model.seq === "number") {
      if (msg.seq <= model.seq) {
        console.warn(`icetools: ignoring old delta ${msg.seq} (at ${model.seq})`);
        return;
      }
      if (msg.seq !== model.seq + 1) {
        pub.gaps++;
        console.warn(`icetools: delta ${msg.seq} after ${model.seq}; applying it anyway`);
      }
    }
    if (typeof msg.seq === "number") model.seq = msg.seq;
    if (msg.status) setStatus(msg.status);
    if (typeof msg.t === "number") {
      model.t = msg.t;
      setClock(msg.t);
    }
    for (const h of msg.hosts || []) {
      if (!model.hosts.has(h.id)) dirty.hostSet = true;
      model.hosts.set(h.id, h);
      learnName(h);
      dirty.hostIds.add(h.id);
      dirty.graph = true;
    }
    for (const id of msg.removed_hosts || []) {
      if (model.hosts.delete(id)) {
        dirty.hostSet = true;
        dirty.graph = true;
      }
    }
    const jobs = msg.jobs || [];
    for (const j of jobs) {
      model.jobs.set(j.id, j);
      timelineActive(j);
    }
    const finished = msg.finished || [];
    for (const j of finished) {
      model.jobs.delete(j.id);
      pushRecent(j);
      timelineFinished(j);
    }
    if (jobs.length || finished.length) {
      dirty.running = dirty.graph = dirty.timeline = dirty.totals = true;
      if (finished.length) dirty.recent = true;
    }
    if (msg.totals) {
      model.totals = msg.totals;
      dirty.totals = true;
    }
    if (Array.isArray(msg.history) && msg.history.length) {
      model.history.push(...msg.history);
      if (model.history.length > HISTORY_MAX) model.history.splice(0, model.history.length - HISTORY_MAX);
      dirty.history = true;
    }
    schedule();
  }

  function onMessage(msg) {
    if (!msg || typeof msg !== "object") return;
    pub.messages++;
    switch (msg.type) {
      case "snapshot":
        applySnapshot(msg);
        break;
      case "delta":
        applyDelta(msg);
        break;
      case "error":
        showMessage(String(msg.message ?? "error"), "error");
        return;
      default:
        console.warn("icetools: unknown message type", msg.type);
        return;
    }
    publish();
  }

  // ---- the connection --------------------------------------------------------------------

  const conn = { ws: null, state: "connecting", attempt: 0, retryAt: 0, timer: null, everOpen: false };

  function wsURL() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  function setConn(state) {
    conn.state = state;
    pub.connection = state;
    retime();
    dirty.status = true;
    schedule();
  }

  function connect() {
    clearTimeout(conn.timer);
    conn.timer = null;
    let ws;
    try {
      ws = new WebSocket(wsURL());
    } catch (e) {
      console.error("icetools: cannot open the websocket", e);
      retryLater();
      return;
    }
    conn.ws = ws;
    if (!conn.everOpen && conn.attempt === 0) setConn("connecting");
    ws.onopen = () => {
      conn.everOpen = true;
      setConn("open");
    };
    ws.onmessage = (ev) => {
      conn.attempt = 0; // a working connection: start the backoff over next time
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        console.warn("icetools: a message that is not JSON", e);
        return;
      }
      try {
        onMessage(msg);
      } catch (e) {
        console.error("icetools: cannot apply a message", e, msg);
      }
    };
    ws.onclose = () => {
      if (conn.ws !== ws) return;
      conn.ws = null;
      retryLater();
    };
    ws.onerror = () => {
      /* a close follows */
    };
  }

  function retryLater() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** conn.attempt);
    const delay = base * (0.8 + 0.4 * Math.random());
    conn.attempt = Math.min(conn.attempt + 1, 20);
    conn.retryAt = performance.now() + delay;
    setConn("disconnected");
    clearTimeout(conn.timer);
    conn.timer = setTimeout(connect, delay);
  }

  function retryNow() {
    if (conn.state === "disconnected" && conn.timer) {
      conn.attempt = 0;
      connect();
    }
  }
  window.addEventListener("online", retryNow);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      retryNow();
      markAll();
    }
  });

  function send(cmd) {
    const ws = conn.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      showMessage("not connected", "error");
      return false;
    }
    ws.send(JSON.stringify(cmd));
    return true;
  }

  // ---- status, messages, replay controls -------------------------------------------------

  const el = (id) => document.getElementById(id);
  const statusEl = el("status");
  const statusMsgEl = el("status-message");
  const schedulerEl = el("scheduler");
  const clockEl = el("clock");
  const controlsEl = el("replay-controls");
  const playPauseEl = el("play-pause");
  const speedEl = el("speed");
  const speedCustomEl = el("speed-custom");
  const seekEl = el("seek");
  const positionEl = el("position");
  const messagesEl = el("messages");

  function indicator() {
    if (conn.state === "disconnected") return ["disconnected", "disconnected - retrying"];
    const s = model.status;
    if (conn.state !== "open" || !s) return ["connecting", "connecting"];
    switch (s.state) {
      case "live":
        return ["live", "live"];
      case "playing":
        return ["playing", `replaying at ${fmtSpeed(s.speed)}x`];
      case "paused":
        return ["paused", "paused"];
      case "ended":
        return ["ended", "replay ended"];
      case "connecting":
        return ["connecting", "connecting"];
      case "retrying":
        return ["retrying", "scheduler gone - retrying"];
      default:
        return [String(s.state || "unknown"), String(s.state || "unknown")];
    }
  }

  function renderStatus() {
    const [state, text] = indicator();
    if (statusEl.textContent !== text) statusEl.textContent = text;
    statusEl.dataset.state = state;
    // what is shown is old while the page or the server has lost its source
    const st = model.status && model.status.state;
    document.body.classList.toggle("stale", conn.state !== "open" || st === "retrying");
    const s = model.status || {};
    renderStatusMessage();
    const sched = s.scheduler ? `${s.scheduler}${s.protocol ? ` · protocol ${s.protocol}` : ""}` : "";
    if (schedulerEl.textContent !== sched) schedulerEl.textContent = sched;

    const replay = s.mode === "replay";
    controlsEl.hidden = !replay;
    if (replay) {
      const playing = s.state === "playing";
      playPauseEl.textContent = playing ? "Pause" : "Play";
      playPauseEl.dataset.action = playing ? "pause" : "play";
      const usable = conn.state === "open";
      for (const c of [playPauseEl, speedEl, speedCustomEl, seekEl]) c.disabled = !usable;
      syncSpeed(s.speed);
      const d = Number(s.duration);
      const max = isFinite(d) && d > 0 ? String(d) : "0";
      if (seekEl.max !== max) seekEl.max = max;
    }
  }

  function renderStatusMessage() {
    let msg = "";
    if (conn.state === "disconnected") {
      const left = Math.max(0, Math.ceil((conn.retryAt - performance.now()) / 1000));
      msg = left > 0 ? `next try in ${left} s` : "trying…";
    } else if (model.status && model.status.message) {
      msg = String(model.status.message);
    }
    // serve --record whose capture could not be written: serving goes on, but say so.
    if (model.status && model.status.recording === "failed") {
      const why = `recording stopped: ${String(model.status.recording_error || "write error")}`;
      msg = msg ? `${msg} · ${why}` : why;
    }
    if (statusMsgEl.textContent !== msg) {
      statusMsgEl.textContent = msg;
      statusMsgEl.title = msg;
    }
  }

  function renderClock() {
    const text = model.status ? `t ${fmtClock(nowT())}` : "";
    if (clockEl.textContent !== text) clockEl.textContent = text;
    if (conn.state === "disconnected") renderStatusMessage();
  }

  let lastSyncedSpeed = null;
  function syncSpeed(speed) {
    const v = speed === null || speed === undefined ? null : fmtSpeed(speed);
    if (v === lastSyncedSpeed) return;
    if (document.activeElement === speedEl || document.activeElement === speedCustomEl) return;
    lastSyncedSpeed = v;
    if (v === null) return;
    if (SPEEDS.includes(v)) {
      speedEl.value = v;
      speedCustomEl.hidden = true;
    } else {
      speedEl.value = "custom";
      speedCustomEl.hidden = false;
      speedCustomEl.value = v;
    }
  }

  let seeking = false;
  function renderReplayPosition() {
    const s = model.status;
    if (!s || s.mode !== "replay") return;
    const dur = Number(s.duration) || 0;
    const pos = seeking ? Number(seekEl.value) : replayPosition();
    if (!seeking) seekEl.value = String(pos);
    const text = `${fmtClock(pos)} / ${fmtClock(dur)}`;
    if (positionEl.textContent !== text) positionEl.textContent = text;
  }

  playPauseEl.addEventListener("click", () => {
    const s = model.status || {};
    send({ cmd: s.state === "playing" ? "pause" : "play" });
  });

  speedEl.addEventListener("change", () => {
    if (speedEl.value === "custom") {
      speedCustomEl.hidden = false;
      const cur = model.status && model.status.speed;
      if (!speedCustomEl.value && cur) speedCustomEl.value = fmtSpeed(cur);
      speedCustomEl.focus();
      speedCustomEl.select();
      return;
    }
    speedCustomEl.hidden = true;
    const v = Number(speedEl.value);
    lastSyncedSpeed = null;
    send({ cmd: "speed", value: v });
    speedEl.blur();
  });

  function applyCustomSpeed() {
    const v = Number(speedCustomEl.value);
    if (!isFinite(v) || v < 0.1 || v > 1000) {
      showMessage("speed: a number from 0.1 to 1000", "error");
      return;
    }
    lastSyncedSpeed = null;
    send({ cmd: "speed", value: v });
    speedCustomEl.blur();
  }
  speedCustomEl.addEventListener("change", applyCustomSpeed);
  speedCustomEl.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") {
      ev.preventDefault();
      applyCustomSpeed();
    }
  });

  seekEl.addEventListener("input", () => {
    seeking = true;
    schedule();
  });
  seekEl.addEventListener("change", () => {
    const t = Number(seekEl.value);
    seeking = false;
    if (isFinite(t)) {
      send({ cmd: "seek", t });
      // show the target until the snapshot arrives
      statusClock.wall = performance.now();
      if (model.status) model.status = Object.assign({}, model.status, { position: t });
    }
    schedule();
  });
  seekEl.addEventListener("blur", () => {
    seeking = false;
  });

  function showMessage(text, kind) {
    const div = document.createElement("div");
    div.className = `toast ${kind || ""}`;
    div.textContent = text;
    messagesEl.appendChild(div);
    while (messagesEl.childElementCount > 3) messagesEl.firstElementChild.remove();
    setTimeout(() => div.remove(), 6000);
  }

  // ---- totals ----------------------------------------------------------------------------

  const totalEls = new Map();
  document.querySelectorAll("#totals [data-total]").forEach((e) => totalEls.set(e.dataset.total, e));
  const slotsMeter = el("slots-meter");

  function renderTotals() {
    const t = model.totals || {};
    let waiting = 0;
    for (const j of model.jobs.values()) if (j.state === "waiting") waiting++;
    const values = {
      jobs_per_second: fmtRate(t.jobs_per_second),
      busy_slots: fmtNum(t.busy_slots ?? 0),
      total_slots: fmtNum(t.total_slots ?? 0),
      failed: fmtNum(t.remote_failed ?? 0),
      lost: fmtNum(t.lost ?? 0),
      local: fmtNum(t.local_started ?? 0),
      reruns: fmtNum(t.reruns ?? 0),
      remote_done: fmtNum(t.remote_done ?? 0),
      waiting: fmtNum(waiting),
    };
    for (const [k, v] of Object.entries(values)) {
      const e = totalEls.get(k);
      if (!e) continue;
      if (e.textContent !== v) e.textContent = v;
      e.parentElement.classList.toggle("nonzero", v !== "0");
    }
    const busy = Number(t.busy_slots) || 0;
    const total = Number(t.total_slots) || 0;
    const frac = total > 0 ? Math.min(1, busy / total) : 0;
    slotsMeter.style.width = `${(frac * 100).toFixed(1)}%`;
    slotsMeter.classList.toggle("over", total > 0 && busy > total);
  }

  // ---- the host table --------------------------------------------------------------------

  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function ipKey(ip) {
    const parts = String(ip || "").split(".");
    if (parts.length === 4 && parts.every((p) => /^\d+$/.test(p))) {
      return parts.map((p) => p.padStart(3, "0")).join(".");
    }
    return `~${ip || ""}`; // names and IPv6 after the IPv4 addresses
  }

  const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);
  const COLUMNS = [
    { key: "name", text: (h) => h.name || `#${h.id}`, sort: (h) => h.name || `#${h.id}` },
    { key: "ip", text: (h) => h.ip || "–", sort: (h) => ipKey(h.ip) },
    { key: "platform", text: (h) => h.platform || "–", sort: (h) => h.platform || "" },
    { key: "protocol", text: (h) => fmtNum(h.protocol), sort: (h) => num(h.protocol), num: true },
    { key: "features", text: (h) => (h.features || []).join(" ") || "–", sort: (h) => (h.features || []).join(" ") },
    {
      key: "jobs",
      text: (h) => `${h.jobs_as_server ?? 0}/${h.max_jobs ?? 0}`,
      sort: (h) => (h.jobs_as_server ?? 0) * 10000 + (h.max_jobs ?? 0),
      num: true,
    },
    { key: "load", text: (h) => fmtNum(h.load), sort: (h) => num(h.load), num: true },
    { key: "speed", text: (h) => fmtNum(h.speed, 1), sort: (h) => num(h.speed), num: true },
    {
      key: "load_avg",
      text: (h) => fmtLoadAvg(h.load_avg),
      sort: (h) => (Array.isArray(h.load_avg) ? num(h.load_avg[0]) : null),
      num: true,
    },
    { key: "free_mem", text: (h) => fmtMem(h.free_mem), sort: (h) => num(h.free_mem), num: true },
    {
      key: "compiled",
      text: (h) => fmtNum((h.counters || {}).compiled ?? 0),
      sort: (h) => (h.counters || {}).compiled ?? 0,
      num: true,
    },
    {
      key: "failed",
      text: (h) => fmtNum((h.counters || {}).failed ?? 0),
      sort: (h) => (h.counters || {}).failed ?? 0,
      num: true,
    },
  ];
  const COLUMN = new Map(COLUMNS.map((c) => [c.key, c]));
  const sortState = { key: "name", dir: 1 };
  const tbody = d3.select("#hosts-table tbody");

  function compareHosts(a, b) {
    const col = COLUMN.get(sortState.key) || COLUMNS[0];
    const va = col.sort(a);
    const vb = col.sort(b);
    let c = 0;
    if (va === null || va === undefined || vb === null || vb === undefined) {
      // missing values last, whatever the direction
      if (va !== vb) return va === null || va === undefined ? 1 : -1;
    } else if (typeof va === "number" && typeof vb === "number") {
      c = va - vb;
    } else {
      c = collator.compare(String(va), String(vb));
    }
    if (c) return c * sortState.dir;
    return collator.compare(a.name || "", b.name || "") || a.id - b.id;
  }

  function fillRow(tr, h) {
    const cells = tr.children;
    for (let i = 0; i < COLUMNS.length; i++) {
      const text = COLUMNS[i].text(h);
      if (cells[i].textContent !== text) cells[i].textContent = text;
    }
    tr.classList.toggle("offline", h.online === false);
    tr.classList.toggle("busy", (h.jobs_as_server ?? 0) > 0);
    tr.classList.toggle("full", Number(h.load) >= 1000);
    tr.classList.toggle("no-remote", h.no_remote === true);
    const b = loadBucket(h.load);
    cells[6].className = `num load-${b}`; // the load cell
    cells[0].title = h.online === false ? "offline" : h.no_remote ? "online, takes no remote jobs" : "online";
  }

  function renderHosts() {
    const hosts = Array.from(model.hosts.values());
    const all = dirty.hostsAll;
    const ids = dirty.hostIds;
    tbody
      .selectAll("tr")
      .data(hosts, (d) => d.id)
      .join(
        (enter) =>
          enter.append("tr").each(function (d) {
            this.dataset.hostId = String(d.id);
            for (const c of COLUMNS) {
              const td = document.createElement("td");
              if (c.num) td.className = "num";
              this.appendChild(td);
            }
            fillRow(this, d);
          }),
        (update) =>
          update.each(function (d) {
            if (all || ids.has(d.id)) fillRow(this, d);
          }),
        (exit) => exit.remove()
      )
      .sort(compareHosts);
    const online = hosts.filter((h) => h.online !== false).length;
    el("hosts-count").textContent = String(hosts.length);
    el("hosts-online").textContent = `${online} online`;
  }

  function renderSortHeaders() {
    document.querySelectorAll("#hosts-table th[data-sort]").forEach((th) => {
      const on = th.dataset.sort === sortState.key;
      th.classList.toggle("sorted", on);
      th.classList.toggle("desc", on && sortState.dir < 0);
      if (on) th.setAttribute("aria-sort", sortState.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
  }

  document.querySelectorAll("#hosts-table th[data-sort]").forEach((th) => {
    th.tabIndex = 0;
    const activate = () => {
      const key = th.dataset.sort;
      if (sortState.key === key) sortState.dir = -sortState.dir;
      else {
        sortState.key = key;
        // numbers: the biggest first is what one wants to see
        sortState.dir = COLUMN.get(key) && COLUMN.get(key).num ? -1 : 1;
      }
      renderSortHeaders();
      dirty.hostsAll = true;
      schedule();
    };
    th.addEventListener("click", activate);
    th.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        activate();
      }
    });
  });
  renderSortHeaders();

  // ---- running and recent jobs -----------------------------------------------------------

  const runningUl = d3.select("#running-jobs");
  const recentUl = d3.select("#recent-jobs");

  function jobItem(li, j, { recent }) {
    const file = document.createElement("span");
    file.className = "file";
    file.textContent = j.file || `job ${j.id}`;
    file.title = j.file || "";
    const hosts = document.createElement("span");
    hosts.className = "hosts";
    const time = document.createElement("span");
    time.className = "time";
    li.append(file, hosts, time);
    if (recent) {
      const outcome = document.createElement("span");
      outcome.className = "outcome";
      li.appendChild(outcome);
    }
  }

  function fillRunning(li, j) {
    const hosts = li.children[1];
    const text = jobHostText(j);
    if (hosts.textContent !== text) hosts.textContent = text;
    li.classList.toggle("local", j.local === true || j.state === "local");
    li.dataset.state = j.state || "";
  }

  function fillRecent(li, j) {
    const failed = jobFailed(j);
    li.classList.toggle("failed", failed);
    li.classList.toggle("lost", j.lost === true);
    li.classList.toggle("local", j.local === true);
    li.dataset.state = j.state || "";
    li.children[1].textContent = jobHostText(j);
    const begin = j.started ?? j.submitted;
    li.children[2].textContent =
      typeof begin === "number" && typeof j.ended === "number" ? fmtSeconds(j.ended - begin) : "–";
    let outcome;
    if (j.lost) outcome = `lost with ${hostName(j.server_id)}`;
    else if (failed) outcome = j.exit_code !== null && j.exit_code !== undefined ? `failed (exit ${j.exit_code})` : "failed";
    else outcome = "ok";
    if (j.rerun_of !== null && j.rerun_of !== undefined) outcome += ` · re-run of #${j.rerun_of}`;
    li.children[3].textContent = outcome;
  }

  let runningSel = runningUl.selectAll("li");

  function renderRunning(structure) {
    const now = nowT();
    if (structure) {
      const running = [];
      let waiting = 0;
      for (const j of model.jobs.values()) {
        if (j.state === "waiting") waiting++;
        else running.push(j);
      }
      // the longest running first: that is the one holding up the build
      running.sort((a, b) => (a.started ?? a.submitted ?? 0) - (b.started ?? b.submitted ?? 0) || a.id - b.id);
      runningSel = runningUl
        .selectAll("li")
        .data(running, (d) => d.id)
        .join(
          (enter) =>
            enter.append("li").each(function (d) {
              this.dataset.jobId = String(d.id);
              jobItem(this, d, { recent: false });
            }),
          (update) => update,
          (exit) => exit.remove()
        )
        .each(function (d) {
          fillRunning(this, d);
        })
        .order();
      el("running-count").textContent = String(running.length);
      el("waiting-count").textContent = waiting ? `+ ${waiting} waiting` : "";
    }
    runningSel.each(function (d) {
      const begin = d.started ?? d.submitted;
      const text = typeof begin === "number" ? fmtSeconds(now - begin) : "–";
      const span = this.children[2];
      if (span.textContent !== text) span.textContent = text;
    });
  }

  function renderRecent() {
    const newestFirst = model.recent.slice().reverse();
    recentUl
      .selectAll("li")
      .data(newestFirst, (d) => d.id)
      .join(
        (enter) =>
          enter.append("li").each(function (d) {
            this.dataset.jobId = String(d.id);
            jobItem(this, d, { recent: true });
            fillRecent(this, d);
          }),
        (update) =>
          update.each(function (d) {
            if (this.__job !== d) fillRecent(this, d);
          }),
        (exit) => exit.remove()
      )
      .each(function (d) {
        this.__job = d;
      })
      .order();
    el("recent-count").textContent = String(model.recent.length);
    const failed = model.recent.reduce((n, j) => n + (jobFailed(j) ? 1 : 0), 0);
    el("recent-failed-count").textContent = failed ? `${failed} failed` : "";
  }

  // ---- waiting jobs: requested, no compile host yet ----------------------------------------

  const waitingUl = d3.select("#waiting-jobs");
  let waitingSel = waitingUl.selectAll("li");

  function renderWaiting(structure) {
    const now = nowT();
    if (structure) {
      const waiting = [];
      for (const j of model.jobs.values()) if (j.state === "waiting") waiting.push(j);
      // the longest waiting first: the build is stuck behind it
      waiting.sort((a, b) => (a.submitted ?? 0) - (b.submitted ?? 0) || a.id - b.id);
      waitingSel = waitingUl
        .selectAll("li")
        .data(waiting.slice(0, WAITING_SHOWN), (d) => d.id)
        .join(
          (enter) =>
            enter.append("li").each(function (d) {
              this.dataset.jobId = String(d.id);
              jobItem(this, d, { recent: false });
            }),
          (update) => update,
          (exit) => exit.remove()
        )
        .each(function (d) {
          const text = `from ${hostName(d.client_id)}`;
          if (this.children[1].textContent !== text) this.children[1].textContent = text;
        })
        .order();
      el("waiting-jobs-count").textContent = String(waiting.length);
      el("waiting-jobs-more").textContent = waiting.length > WAITING_SHOWN ? `the ${WAITING_SHOWN} longest waiting shown` : "";
    }
    waitingSel.each(function (d) {
      const text = typeof d.submitted === "number" ? fmtSeconds(now - d.submitted) : "–";
      const span = this.children[2];
      if (span.textContent !== text) span.textContent = text;
    });
  }

  // ---- utilisation: busy and offered slots, waiting jobs over time --------------------------

  const utilEl = el("utilisation");
  let utilDrawnAt = -Infinity;
  let utilDrawn = true; // false: a redraw is due but was held back (UTIL_REDRAW_MS)

  function renderUtilisation() {
    const wall = performance.now();
    if (wall - utilDrawnAt < UTIL_REDRAW_MS) {
      utilDrawn = false;
      return;
    }
    utilDrawnAt = wall;
    utilDrawn = true;
    const h = model.history;
    const t = h.map((s) => s[0]);
    const col = (i) => h.map((s) => s[i]);
    lineChart(utilEl, {
      t,
      step: true,
      height: 150,
      xDomain: t.length ? [t[0], Math.max(t[t.length - 1], model.t)] : [0, 1],
      lines: [
        { key: "offered", label: "offered slots", cls: "offered", values: col(2) },
        { key: "busy", label: "busy slots", cls: "busy", values: col(1) },
        { key: "waiting", label: "jobs waiting", cls: "waiting", values: col(3) },
      ],
    });
  }

  // ---- the force graph -------------------------------------------------------------------

  const graphEl = el("graph");
  const graph = {
    width: graphEl.clientWidth || 800,
    height: graphEl.clientHeight || 500,
    nodes: new Map(), // host id -> simulation node {id, x, y, host, r}
    maxSlots: 1,
    links: [],
    first: true,
  };
  const graphEmpty = graphEl.appendChild(document.createElement("div"));
  graphEmpty.className = "placeholder";
  graphEmpty.textContent = "no hosts yet";
  graph.svg = d3.select(graphEl).append("svg").attr("role", "img").attr("aria-label", "hosts and running jobs");
  graph.gLinks = graph.svg.append("g").attr("class", "links");
  graph.gNodes = graph.svg.append("g").attr("class", "nodes");
  graph.nodeSel = graph.gNodes.selectAll("g.node");
  graph.linkSel = graph.gLinks.selectAll("line.link");

  graph.sim = d3
    .forceSimulation([])
    .force("charge", d3.forceManyBody().strength(chargeStrength).distanceMax(500))
    .force("x", d3.forceX(graph.width / 2))
    .force("y", d3.forceY(graph.height / 2))
    .force("collide", d3.forceCollide((d) => d.r + 10).iterations(2))
    .alphaDecay(0.03)
    .velocityDecay(0.45)
    .on("tick", graphTicked);

  const arc = d3.arc();

  function centerForces() {
    // an ellipse in the panel's proportions rather than a disc in the middle of a wide panel
    const w = graph.width;
    const h = graph.height;
    graph.sim.force("x").x(w / 2).strength(0.06 * Math.min(1, h / w));
    graph.sim.force("y").y(h / 2).strength(0.06 * Math.min(1, w / h));
    graph.sim.force("charge").strength(chargeStrength);
  }

  function chargeStrength() {
    // few hosts spread over the panel, many hosts pack tighter
    const perNode = (graph.width * graph.height) / Math.max(1, graph.nodes.size);
    return -Math.max(25, Math.min(600, perNode * 0.004));
  }

  function nodeRadius(h) {
    const n = Math.max(1, graph.nodes.size);
    const maxR = Math.max(7, Math.min(30, Math.sqrt((graph.width * graph.height) / n) * 0.22));
    const m = Math.max(0, Number(h.max_jobs) || 0);
    // relative to the biggest host of the cluster: its area grows with its slots
    return Math.max(4, maxR * (0.35 + 0.65 * Math.min(1, Math.sqrt(m / graph.maxSlots))));
  }

  // "build101.example.lan" -> "build101" (an IP address stays whole)
  function shortName(name) {
    if (/^[\d.]+$/.test(name) || name.includes(":")) return name;
    const i = name.indexOf(".");
    return i > 0 ? name.slice(0, i) : name;
  }

  function busyArc(d) {
    const h = d.host;
    const max = Number(h.max_jobs) || 0;
    const busy = Number(h.jobs_as_server) || 0;
    const frac = max > 0 ? Math.min(1, busy / max) : busy > 0 ? 1 : 0;
    return arc({ innerRadius: d.r + 1.5, outerRadius: d.r + 4, startAngle: 0, endAngle: 2 * Math.PI * frac }) || "";
  }

  function graphTicked() {
    const w = graph.width;
    const h = graph.height;
    for (const d of graph.nodes.values()) {
      d.x = Math.max(d.r + 4, Math.min(w - d.r - 4, d.x));
      d.y = Math.max(d.r + 4, Math.min(h - d.r - 16, d.y));
    }
    graph.nodeSel.attr("transform", (d) => `translate(${d.x.toFixed(1)},${d.y.toFixed(1)})`);
    graph.linkSel
      .attr("x1", (d) => d.source.x)
      .attr("y1", (d) => d.source.y)
      .attr("x2", (d) => d.target.x)
      .attr("y2", (d) => d.target.y);
  }

  function linkWidth(count) {
    return 1.5 + 2.2 * Math.sqrt(count - 1 + 1);
  }

  function graphLinks() {
    const pairs = new Map();
    for (const j of model.jobs.values()) {
      if (j.state !== "compiling") continue;
      const c = j.client_id;
      const s = j.server_id;
      if (c === null || c === undefined || s === null || s === undefined || c === s) continue;
      const source = graph.nodes.get(c);
      const target = graph.nodes.get(s);
      if (!source || !target) continue;
      const key = `${c}->${s}`;
      const p = pairs.get(key);
      if (p) p.count++;
      else pairs.set(key, { key, source, target, count: 1 });
    }
    return Array.from(pairs.values());
  }

  function renderGraph() {
    const sim = graph.sim;
    let added = 0;
    let removed = 0;
    const seen = new Set();
    for (const h of model.hosts.values()) {
      seen.add(h.id);
      let d = graph.nodes.get(h.id);
      if (!d) {
        const a = Math.random() * 2 * Math.PI;
        const rr = Math.min(graph.width, graph.height) * (0.15 + 0.25 * Math.random());
        d = { id: h.id, x: graph.width / 2 + rr * Math.cos(a), y: graph.height / 2 + rr * Math.sin(a), host: h, r: 6 };
        graph.nodes.set(h.id, d);
        added++;
      }
      d.host = h;
    }
    for (const id of graph.nodes.keys()) {
      if (!seen.has(id)) {
        graph.nodes.delete(id);
        removed++;
      }
    }
    // every node when their number or the size changed (radii depend on both), else only the
    // hosts that changed
    let maxSlots = 1;
    for (const d of graph.nodes.values()) maxSlots = Math.max(maxSlots, Number(d.host.max_jobs) || 0);
    const all = added || removed || graph.resized || dirty.hostsAll || maxSlots !== graph.maxSlots;
    graph.maxSlots = maxSlots;
    graph.resized = false;
    if (all) for (const d of graph.nodes.values()) d.r = nodeRadius(d.host);
    const nodes = Array.from(graph.nodes.values());
    graphEmpty.hidden = nodes.length > 0;
    const crowded = nodes.length > 40;
    if (crowded !== graph.crowded) {
      graph.crowded = crowded;
      graph.svg.classed("crowded", crowded);
    }

    graph.nodeSel = graph.gNodes
      .selectAll("g.node")
      .data(nodes, (d) => d.id)
      .join(
        (enter) => {
          const g = enter
            .append("g")
            .attr("class", "node")
            .attr("data-host-id", (d) => d.id)
            .attr("transform", (d) => `translate(${d.x},${d.y})`)
            .style("opacity", 0);
          g.append("circle").attr("class", "track");
          g.append("path").attr("class", "busy");
          g.append("circle").attr("class", "body").attr("r", 0);
          g.append("text").attr("class", "label").attr("text-anchor", "middle");
          g.append("title");
          return g;
        },
        (update) => update,
        (exit) =>
          exit
            .classed("node", false)
            .classed("node-exit", true)
            .attr("data-host-id", null)
            .call((x) => x.transition().duration(500).style("opacity", 0).remove())
      );

    const ids = dirty.hostIds;
    updateNodes(all ? graph.nodeSel : graph.nodeSel.filter(function (d) {
      return ids.has(d.id) || this.__fresh === undefined;
    }));

    // client -> server links for running remote jobs
    graph.links = graphLinks();
    graph.linkSel = graph.gLinks
      .selectAll("line.link")
      .data(graph.links, (d) => d.key)
      .join(
        (enter) =>
          enter
            .append("line")
            .attr("class", "link")
            .attr("x1", (d) => d.source.x)
            .attr("y1", (d) => d.source.y)
            .attr("x2", (d) => d.target.x)
            .attr("y2", (d) => d.target.y)
            .attr("stroke-width", 0)
            .attr("stroke-opacity", 0)
            .call((e) => e.append("title")),
        (update) => update,
        (exit) =>
          exit
            .classed("link", false)
            .classed("link-exit", true)
            .call((x) => x.transition().duration(600).attr("stroke-opacity", 0).attr("stroke-width", 0).remove())
      );
    // only the links that are new or whose count changed get a transition
    graph.linkSel
      .filter(function (d) {
        return this.__count !== d.count;
      })
      .each(function (d) {
        this.__count = d.count;
        this.setAttribute("data-client-id", d.source.id);
        this.setAttribute("data-server-id", d.target.id);
        this.setAttribute("data-count", d.count);
        const n = d.count === 1 ? "1 job" : `${d.count} jobs`;
        this.firstChild.textContent = `${d.source.host.name || `#${d.source.id}`} → ${d.target.host.name || `#${d.target.id}`}: ${n}`;
      })
      .transition()
      .duration(450)
      .attr("stroke-width", (d) => linkWidth(d.count))
      .attr("stroke-opacity", 0.85);

    if (added || removed || graph.first) {
      sim.nodes(nodes);
      centerForces();
      if (graph.first && nodes.length) {
        // settle a first layout at once rather than exploding on the screen
        sim.alpha(1);
        const ticks = Math.max(60, Math.min(200, 300 - nodes.length));
        for (let i = 0; i < ticks; i++) sim.tick();
        sim.alpha(0.05).restart();
        graph.first = false;
      } else if (added) {
        sim.alpha(Math.max(sim.alpha(), Math.min(0.5, 0.1 + 0.02 * added))).restart();
      } else {
        sim.alpha(Math.max(sim.alpha(), 0.08)).restart();
      }
    }
    graphTicked();
  }

  function updateNodes(sel) {
    // transitions start only where a value really changed: restarting them at every delta
    // would keep them from ever arriving
    sel.each(function (d) {
      const h = d.host;
      const g = d3.select(this);
      const offline = h.online === false;
      this.__fresh = false;
      this.classList.toggle("offline", offline);
      this.classList.toggle("full", Number(h.load) >= 1000);
      const op = offline ? 0.22 : 1;
      if (this.__op !== op) {
        this.__op = op;
        g.transition("fade").duration(600).style("opacity", op);
      }
      const fill = offline ? "#555b66" : loadColor(h.load);
      if (this.__fill !== fill || this.__r !== d.r) {
        this.__fill = fill;
        this.__r = d.r;
        g.select("circle.body").transition("look").duration(500).attr("r", d.r).attr("fill", fill);
        g.select("circle.track").attr("r", d.r + 2.75);
        g.select("text.label").attr("y", d.r + 13);
      }
      g.select("path.busy").attr("d", busyArc(d));
      const name = h.name || `#${d.id}`;
      const label = this.querySelector("text.label");
      const short = graph.crowded ? shortName(name) : name;
      if (label.textContent !== short) label.textContent = short;
      const state = offline ? "offline" : h.no_remote ? "online, no remote jobs" : "online";
      this.querySelector("title").textContent =
        `${name} (${h.ip || "?"}) ${state}\njobs ${h.jobs_as_server ?? 0}/${h.max_jobs ?? 0}, load ${h.load}`;
    });
  }

  // The SVGs are drawn in units that grow with the root font size (set by the viewport width in
  // style.css), so nodes, labels and bars are as readable on a wall display as on a laptop.
  function uiScale() {
    const px = parseFloat(getComputedStyle(document.documentElement).fontSize) || 14;
    return Math.max(0.9, px / 14);
  }

  function measureTimeline() {
    const k = uiScale();
    tl.scale = k;
    tl.width = tlEl.clientWidth / k;
    // the room the rows may take: the box's max-height (it is only as tall as its content)
    const max = parseFloat(getComputedStyle(tlEl).maxHeight);
    tl.height = (isFinite(max) && max > 0 ? max : tlEl.clientHeight || 240) / k;
    tl.layoutKey = "";
  }

  function resizeGraph() {
    const pw = graphEl.clientWidth;
    const ph = graphEl.clientHeight;
    const k = uiScale();
    const w = pw / k;
    const h = ph / k;
    if (!pw || !ph || (w === graph.width && h === graph.height)) return;
    graph.width = w;
    graph.height = h;
    graph.svg.attr("viewBox", `0 0 ${w} ${h}`).attr("width", pw).attr("height", ph);
    centerForces();
    graph.sim.alpha(Math.max(graph.sim.alpha(), 0.15)).restart();
    graph.resized = true;
    dirty.graph = true;
    schedule();
  }

  // ---- the timeline ----------------------------------------------------------------------

  // Bars by job id: {id, file, start, end (null while running), row (host name), cls}
  const bars = new Map();
  const tlEl = el("timeline");
  const windowSelect = el("timeline-window");
  const tl = {
    svg: d3.select(tlEl).append("svg").attr("role", "img").attr("aria-label", "jobs per host over time"),
    labelW: 140,
    axisH: 20,
  };
  const tlEmpty = tlEl.parentElement.appendChild(document.createElement("div"));
  tlEmpty.className = "placeholder";
  tlEmpty.textContent = "no jobs in this window";
  tl.clip = tl.svg.append("defs").append("clipPath").attr("id", "tl-clip").append("rect");
  tl.gRows = tl.svg.append("g").attr("class", "rows");
  // bars are drawn in a coordinate system fixed at the last layout (x = (t - origin) * k); time
  // passing only moves the inner group, and only the running bars grow
  tl.gClip = tl.svg.append("g").attr("clip-path", "url(#tl-clip)");
  tl.gBars = tl.gClip.append("g").attr("class", "bars");
  tl.layoutKey = "";
  tl.origin = 0;
  tl.k = 1;
  tl.lastJoin = 0;
  tl.rowIndex = new Map();
  tl.rowH = 22;
  tl.runningSel = null;
  tl.gAxis = tl.svg.append("g").attr("class", "axis");
  tl.now = tl.svg.append("line").attr("class", "now");

  function barFor(j) {
    const start = j.started ?? (j.state === "waiting" ? null : j.submitted);
    if (typeof start !== "number") return null;
    const rowId = jobRowHost(j);
    const finished = typeof j.ended === "number";
    let cls = "bar";
    if (j.local || j.state === "local" || j.state === "local done") cls += " local";
    if (finished && j.lost) cls += " lost failed";
    else if (finished && jobFailed(j)) cls += " failed";
    if (!finished) cls += " running";
    return {
      id: j.id,
      file: j.file || "",
      start,
      end: finished ? j.ended : null,
      row: hostName(rowId),
      cls,
      job: j,
    };
  }

  function timelineActive(j) {
    if (j.state === "waiting") return;
    const b = barFor(j);
    if (b) bars.set(j.id, b);
  }

  function timelineFinished(j) {
    const b = barFor(j);
    if (b) {
      bars.delete(j.id);
      bars.set(j.id, b); // insertion order = finishing order, for pruning
    } else bars.delete(j.id);
    pruneBars();
  }

  function pruneBars() {
    // bars are in finishing order: drop the oldest finished ones beyond the longest window or
    // beyond the cap (running bars stay)
    const cutoff = nowT() - TIMELINE_KEEP_SECONDS;
    let excess = bars.size - TIMELINE_MAX_BARS;
    for (const [id, b] of bars) {
      if (b.end === null) continue;
      if (excess > 0 || b.end < cutoff) {
        bars.delete(id);
        excess--;
      } else break;
    }
  }

  function timelineFromSnapshot(reset) {
    const t = model.t;
    if (reset) bars.clear();
    // keep what we saw finish before (still true after a reconnect or a seek back), drop the
    // running ones and whatever lies after the new moment
    for (const [id, b] of bars) {
      if (b.end === null || b.end > t + 0.001) bars.delete(id);
    }
    for (const j of model.recent) timelineFinished(j);
    for (const j of model.jobs.values()) timelineActive(j);
  }

  function barGeometry(sel) {
    const { origin, k, rowH, rowIndex } = tl;
    const pad = rowH > 8 ? 1.5 : 0.5;
    const h = Math.max(1, rowH - 2 * pad);
    const now = nowT();
    sel.each(function (d) {
      const x = (d.start - origin) * k;
      this.setAttribute("x", x.toFixed(1));
      this.setAttribute("y", ((rowIndex.get(d.row) ?? 0) * rowH + pad).toFixed(1));
      this.setAttribute("height", h.toFixed(1));
      this.setAttribute("width", Math.max(1.5, ((d.end ?? now) - d.start) * k).toFixed(1));
    });
  }

  function renderTimeline() {
    // sizes come from the resize observer: reading clientWidth here would force a layout of
    // everything the other parts just changed
    const width = tl.width || 800;
    const boxH = tl.height || 240;
    // (in SVG units: pixels / tl.scale)
    const W = Number(windowSelect.value) || 180;
    const now = nowT();
    const t0 = now - W;
    const labelW = width < 600 ? 90 : tl.labelW;
    const plotW = Math.max(10, width - 10 - labelW);

    // the bars to show and their rows (hosts with a bar in the window), when the data changed
    // or every second (bars leave on the left as time passes)
    const wall = performance.now();
    const join = dirty.timeline || wall - tl.lastJoin > 1000 || !tl.visible;
    if (join) {
      tl.lastJoin = wall;
      const visible = [];
      const rowNames = new Set();
      for (const b of bars.values()) {
        if (b.end === null) {
          // a running job that left without a finish (a snapshot replaced the model)
          if (!model.jobs.has(b.id)) {
            bars.delete(b.id);
            continue;
          }
        } else if (b.end < t0) continue;
        visible.push(b);
        rowNames.add(b.row);
      }
      tl.visible = visible;
      tl.rows = Array.from(rowNames).sort((a, b) => collator.compare(a, b));
    }
    const rows = tl.rows;
    const availH = Math.max(40, boxH - tl.axisH - 4);
    const rowH = rows.length ? Math.max(5, Math.min(36, availH / rows.length)) : 22;
    const height = Math.max(60, rows.length * rowH + tl.axisH + 4);
    const plotH = rows.length * rowH;
    const k = plotW / W;

    const layoutKey = `${width}|${height}|${W}|${rowH}|${rows.join("\u0000")}`;
    const layout = layoutKey !== tl.layoutKey || Math.abs(now - tl.origin) > 3600;
    if (layout) {
      pub.perf.timelineLayouts = (pub.perf.timelineLayouts || 0) + 1;
      tl.layoutKey = layoutKey;
      tl.origin = now;
      tl.k = k;
      tl.rowH = rowH;
      tl.rowIndex = new Map(rows.map((r, i) => [r, i]));
      const px = tl.scale || 1;
      tl.svg.attr("width", width * px).attr("height", height * px).attr("viewBox", `0 0 ${width} ${height}`);
      tl.clip.attr("x", labelW).attr("y", 0).attr("width", plotW).attr("height", height);

      // rows: a label and a stripe per host
      const showLabels = rowH >= 9;
      tl.gRows
        .selectAll("g.row")
        .data(rows, (d) => d)
        .join((enter) => {
          const g = enter.append("g").attr("class", "row");
          g.append("rect").attr("class", "stripe");
          g.append("text").attr("class", "row-label");
          g.append("title");
          return g;
        })
        .attr("transform", (d, i) => `translate(0,${i * rowH})`)
        .call((g) =>
          g
            .select("rect.stripe")
            .attr("x", 0)
            .attr("width", width - 10)
            .attr("height", rowH)
            .classed("odd", (d, i) => i % 2 === 1)
        )
        .call((g) =>
          g
            .select("text.row-label")
            .attr("x", labelW - 6)
            .attr("y", rowH / 2)
            .attr("dy", "0.35em")
            .attr("text-anchor", "end")
            .style("font-size", `${Math.min(12, Math.max(8, rowH - 3))}px`)
            .style("display", showLabels ? null : "none")
            .text((d) => (d.length > 20 ? `${d.slice(0, 19)}…` : d))
        )
        .call((g) => g.select("title").text((d) => d));
    }

    if (join || layout) {
      const sel = tl.gBars
        .selectAll("rect.bar")
        .data(tl.visible, (d) => d.id)
        .join((enter) => {
          const r = enter.append("rect").attr("data-job-id", (d) => d.id);
          r.append("title");
          return r;
        });
      // attributes only for new bars and bars whose job changed (or all after a new layout)
      const changed = layout
        ? sel
        : sel.filter(function (d) {
            return this.__bar !== d;
          });
      changed.each(function (d) {
        if (this.__bar === d) return;
        this.__bar = d;
        this.setAttribute("class", d.cls);
        this.firstChild.textContent = `${d.file}\n${jobHostText(d.job)}${
          d.end !== null ? `, ${fmtSeconds(d.end - d.start)}` : ""
        }`;
      });
      barGeometry(changed);
      tl.runningSel = sel.filter((d) => d.end === null);
    }

    // time moves: shift the bars, grow the running ones, move the axis
    tl.gBars.attr("transform", `translate(${(labelW + (tl.origin - t0) * tl.k).toFixed(1)},0)`);
    if (tl.runningSel && !layout) {
      const kk = tl.k;
      tl.runningSel.each(function (d) {
        this.setAttribute("width", Math.max(1.5, (now - d.start) * kk).toFixed(1));
      });
    }
    const x = d3
      .scaleLinear()
      .domain([t0, now])
      .range([labelW, labelW + plotW]);
    const ticks = Math.max(2, Math.floor(plotW / 90));
    tl.gAxis
      .attr("transform", `translate(0,${plotH + 2})`)
      .call(d3.axisBottom(x).ticks(ticks).tickFormat((v) => (v < 0 ? "" : fmtClock(v).replace(/\.\d$/, ""))).tickSizeOuter(0));
    tlEmpty.hidden = rows.length > 0;
    tl.now.attr("x1", x(now)).attr("x2", x(now)).attr("y1", 0).attr("y2", plotH);
  }

  windowSelect.addEventListener("change", () => {
    dirty.timeline = true;
    schedule();
  });

  // ---- start -----------------------------------------------------------------------------

  if (typeof ResizeObserver === "function") {
    const ro = new ResizeObserver(() => {
      measureTimeline();
      resizeGraph();
      schedule();
    });
    ro.observe(graphEl);
    ro.observe(tlEl);
  } else {
    window.addEventListener("resize", () => {
      measureTimeline();
      resizeGraph();
      schedule();
    });
  }
  measureTimeline();
  resizeGraph();

  setInterval(() => {
    // elapsed times, the timeline, the seek slider and the retry countdown move on
    if (!utilDrawn) dirty.history = true; // a held-back redraw of the utilisation line
    if (!document.hidden) schedule();
  }, TICK_MS);

  publish();
  renderStatus();
  connect();
})();
