// The live page's shared state: the model as the server sent it, the state's clock, the
// connection's state, dirty flags and the frame scheduler, host names. Imports no view.
"use strict";


export const RECENT_MAX = 200; // recent finished jobs kept (as the server keeps)
export const TIMELINE_MAX_BARS = 3000; // finished job bars kept for the timeline
export const TIMELINE_KEEP_SECONDS = 600; // the longest timeline window
export const TICK_MS = 200; // elapsed times, the timeline and the seek slider move this often
export const BACKOFF_MIN_MS = 500;
export const BACKOFF_MAX_MS = 10000;
export const SPEEDS = ["0.5", "1", "2", "4", "10", "50"];
export const HISTORY_MAX = 600; // utilisation samples kept (as the server keeps)
export const WAITING_SHOWN = 50; // waiting jobs listed (the longest waiting)
export const UTIL_REDRAW_MS = 500; // the utilisation line is redrawn at most this often

// ---- the model -------------------------------------------------------------------------

export const model = {
  seq: null,
  status: null,
  t: 0,
  hosts: new Map(), // id -> HOST
  jobs: new Map(), // id -> JOB (active: waiting, compiling, local)
  recent: [], // finished JOBs, oldest first
  totals: {},
  history: [], // [t, busy slots, offered slots, jobs waiting], oldest first
};

// The schedulers the server watches (one for most servers): name -> store (their state as
// the server sent it, see messages.js), in the order they first came; the one in view (a name,
// or ALL for all of them side by side), and the one the user asked for.
export const ALL = "*";
export const schedulers = {
  stores: new Map(),
  order: [],
  view: null,
  wanted: null,
};
{
  // #scheduler=NAME (or * for all) in the URL: that view once it exists.
  const m = /(?:^#|&)scheduler=([^&]*)/.exec(location.hash);
  if (m) {
    try {
      schedulers.wanted = decodeURIComponent(m[1]);
    } catch (e) {
      /* a malformed URL: the default view */
    }
  }
}

// What tests (and curious people in the console) read: the current model in the protocol's
// own shape. Arrays are refreshed after every message.
export const pub = {
  state: { t: 0, hosts: [], jobs: [], recent: [], totals: {}, history: [] },
  status: null,
  seq: null,
  connection: "connecting", // connecting | open | disconnected
  messages: 0,
  snapshots: 0,
  gaps: 0,
  perf: { renders: 0, lastMs: 0, maxMs: 0, totalMs: 0, parts: {} }, // rendering time, ms
  send: null, // set by connection.js
  schedulers: [], // [{name, status}], in the server's order
  view: null, // the scheduler in view, or "*" for all
  setView: null, // set by the scheduler switch (schedulers.js)
};
window.icetools = pub;

export function publish() {
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
  pub.view = schedulers.view;
  pub.schedulers = schedulers.order.map((name) => ({ name, status: schedulers.stores.get(name).status }));
}

// The state's clock moves between messages: in real time when live, at the replay speed when
// playing, not at all when paused, ended or not connected.
const clock = { t: 0, wall: performance.now(), rate: 0 };
export const statusClock = { position: 0, wall: performance.now() };

const EXTRAPOLATE_MAX_MS = 15000; // a silent server: stop the clock after this long

export function nowT() {
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

export function setClock(t) {
  if (typeof t === "number" && isFinite(t)) {
    clock.t = t;
    clock.wall = performance.now();
  }
}

export function retime() {
  // keep the displayed time continuous when the rate changes
  const t = nowT();
  clock.t = t;
  clock.wall = performance.now();
  clock.rate = clockRate();
}

export function replayPosition() {
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

export const dirty = {
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
  schedulers: true, // the scheduler switch (names, states)
};
let rafPending = false;

// The render loop is app.js's; views only ask for a frame.
let renderer = () => {};

export function setRenderer(fn) {
  renderer = fn;
}

export function schedule() {
  if (!rafPending) {
    rafPending = true;
    requestAnimationFrame(() => {
      rafPending = false;
      renderer();
    });
  }
}

export function guard(name, fn) {
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

export function markAll() {
  dirty.schedulers = dirty.status = dirty.totals = dirty.hostsAll = dirty.hostSet = dirty.graph = true;
  dirty.running = dirty.recent = dirty.timeline = dirty.history = true;
  schedule();
}

// ---- formatting ------------------------------------------------------------------------

// names of hosts seen since the page loaded, for jobs of hosts that are gone
export const knownNames = new Map();

// A host's name as shown; in the combined view with its scheduler's ("ALPHA/node1"), so
// that equal names of different schedulers stay apart.
export function hostLabel(h) {
  const name = h.name || `#${h.host_id ?? h.id}`;
  return h.scheduler !== undefined ? `${h.scheduler}/${name}` : name;
}

export function hostName(id) {
  if (id === null || id === undefined) return "?";
  const h = model.hosts.get(id);
  if (h && h.name) return hostLabel(h);
  return knownNames.get(id) || `#${id}`;
}

export function learnName(h) {
  if (h && h.name) knownNames.set(h.id, hostLabel(h));
}

export function jobHostText(j) {
  if (j.local || j.state === "local" || j.state === "local done") {
    return `local on ${hostName(j.client_id)}`;
  }
  if (j.server_id === null || j.server_id === undefined) return `${hostName(j.client_id)} → …`;
  return `${hostName(j.client_id)} → ${hostName(j.server_id)}`;
}

// the timeline row of a job: where it runs
export function jobRowHost(j) {
  if (j.local || j.state === "local" || j.state === "local done") return j.client_id ?? j.server_id;
  return j.server_id ?? j.client_id;
}


export const conn = { ws: null, state: "connecting", attempt: 0, retryAt: 0, timer: null, everOpen: false };


export const el = (id) => document.getElementById(id);

// The SVGs are drawn in units that grow with the root font size (set by the viewport width in
// style.css), so nodes, labels and bars are as readable on a wall display as on a laptop.
export function uiScale() {
  const px = parseFloat(getComputedStyle(document.documentElement).fontSize) || 14;
  return Math.max(0.9, px / 14);
}
