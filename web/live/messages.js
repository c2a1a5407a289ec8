// Messages from the server (docs/websocket-protocol.md): a snapshot replaces a scheduler's
// state, a delta updates it; both mark what the next frame redraws.
//
// A server may watch several schedulers: every message names its scheduler, and each one's
// state is kept in a store of its own. What the views draw is `model`: with one scheduler in
// view it shares that store's maps; in the combined view ("all schedulers") it holds every
// store's hosts and jobs side by side under keys "NAME#id", each labelled with its scheduler,
// so that hosts of different schedulers are never merged, even with equal names or ids.
"use strict";

import { ALL, HISTORY_MAX, RECENT_MAX, dirty, knownNames, learnName, markAll, model, pub, publish, retime, schedule, schedulers, setClock, statusClock } from "./core.js";
import { showMessage } from "./status.js";
import { timelineActive, timelineFinished, timelineFromSnapshot } from "./timeline.js";

// ---- one scheduler's store -------------------------------------------------------------

function newStore(name) {
  return { name, seq: null, status: null, t: 0, hosts: new Map(), jobs: new Map(), recent: [], totals: {}, history: [] };
}

function storeFor(name) {
  let store = schedulers.stores.get(name);
  if (!store) {
    store = newStore(name);
    schedulers.stores.set(name, store);
    schedulers.order.push(name);
    dirty.schedulers = true;
  }
  return store;
}

function pushRecent(recent, j) {
  // the same job twice (a resent finish): keep the newest copy only
  for (let i = recent.length - 1; i >= Math.max(0, recent.length - RECENT_MAX); i--) {
    if (recent[i].id === j.id) {
      recent.splice(i, 1);
      break;
    }
  }
  recent.push(j);
  if (recent.length > RECENT_MAX) recent.splice(0, recent.length - RECENT_MAX);
}

function snapshotIntoStore(store, msg) {
  const s = msg.state || {};
  const prevResets = store.totals && store.totals.resets;
  const reset = Boolean(s.totals && prevResets !== undefined && s.totals.resets !== prevResets);
  store.seq = typeof msg.seq === "number" ? msg.seq : null;
  store.t = typeof s.t === "number" ? s.t : 0;
  store.hosts = new Map((s.hosts || []).map((h) => [h.id, h]));
  store.jobs = new Map((s.jobs || []).map((j) => [j.id, j]));
  store.recent = (s.recent || []).slice(-RECENT_MAX);
  store.totals = s.totals || {};
  store.history = Array.isArray(s.history) ? s.history.slice(-HISTORY_MAX) : [];
  if (msg.status && typeof msg.status === "object") store.status = msg.status;
  return reset;
}

// Applies a delta to its store; returns it (or null when it is an old one, to be ignored).
function deltaIntoStore(store, msg) {
  if (typeof msg.seq === "number" && typeof store.seq === "number") {
    if (msg.seq <= store.seq) {
      console.warn(`icetools: ignoring old delta ${msg.seq} of ${store.name} (at ${store.seq})`);
      return null;
    }
    if (msg.seq !== store.seq + 1) {
      pub.gaps++;
      console.warn(`icetools: delta ${msg.seq} after ${store.seq} of ${store.name}; applying it anyway`);
    }
  }
  if (typeof msg.seq === "number") store.seq = msg.seq;
  if (msg.status && typeof msg.status === "object") store.status = msg.status;
  if (typeof msg.t === "number") store.t = msg.t;
  msg.newHosts = false; // (for the view: the host table's rows change)
  for (const h of msg.hosts || []) {
    if (!store.hosts.has(h.id)) msg.newHosts = true;
    store.hosts.set(h.id, h);
  }
  for (const id of msg.removed_hosts || []) store.hosts.delete(id);
  for (const j of msg.jobs || []) store.jobs.set(j.id, j);
  for (const j of msg.finished || []) {
    store.jobs.delete(j.id);
    pushRecent(store.recent, j);
  }
  if (msg.totals) store.totals = msg.totals;
  if (Array.isArray(msg.history) && msg.history.length) {
    store.history.push(...msg.history);
    if (store.history.length > HISTORY_MAX) store.history.splice(0, store.history.length - HISTORY_MAX);
  }
  return msg;
}

// ---- the combined view -----------------------------------------------------------------

const key = (name, id) => (id === null || id === undefined ? id : `${name}#${id}`);
const hostIn = (name, h) => Object.assign({}, h, { id: key(name, h.id), host_id: h.id, scheduler: name });
const jobIn = (name, j) =>
  Object.assign({}, j, { id: key(name, j.id), job_id: j.id, client_id: key(name, j.client_id), server_id: key(name, j.server_id), scheduler: name });

function combinedTotals() {
  const sum = {};
  for (const store of schedulers.stores.values()) {
    for (const [k, v] of Object.entries(store.totals || {})) {
      if (typeof v === "number" && isFinite(v)) sum[k] = (sum[k] || 0) + v;
    }
  }
  if (typeof sum.jobs_per_second === "number") sum.jobs_per_second = Math.round(sum.jobs_per_second * 100) / 100;
  return sum;
}

// Utilisation of all schedulers: at each second some scheduler has a sample for, the sum of
// every scheduler's latest sample (their times share one clock: one serve, one origin).
function combinedHistory() {
  const series = Array.from(schedulers.stores.values(), (s) => s.history).filter((h) => h.length);
  const seconds = new Set();
  for (const h of series) for (const sample of h) seconds.add(Math.floor(sample[0]));
  const out = [];
  const at = series.map(() => -1);
  for (const sec of Array.from(seconds).sort((a, b) => a - b)) {
    const row = [sec, 0, 0, 0];
    series.forEach((h, i) => {
      while (at[i] + 1 < h.length && Math.floor(h[at[i] + 1][0]) <= sec) at[i]++;
      if (at[i] >= 0) for (let k = 1; k < 4; k++) row[k] += Number(h[at[i]][k]) || 0;
    });
    out.push(row);
  }
  return out.slice(-HISTORY_MAX);
}

// One status for all: live while any is live; the others' troubles in the message.
function combinedStatus() {
  const all = Array.from(schedulers.stores.values());
  const statuses = all.map((s) => s.status || {});
  const live = statuses.filter((s) => s.state === "live").length;
  const troubles = all
    .filter((s) => s.status && s.status.state !== "live")
    .map((s) => `${s.name}: ${s.status.message || s.status.state}`);
  const failed = all.filter((s) => s.status && s.status.recording === "failed");
  return {
    mode: "live",
    state: live ? "live" : statuses.some((s) => s.state === "retrying") ? "retrying" : "connecting",
    connected: live > 0,
    scheduler: `${all.length} schedulers, ${live} live`,
    protocol: null,
    message: troubles.join(" · "),
    recording: failed.length ? "failed" : statuses.some((s) => s.recording) ? "recording" : null,
    recording_error: failed.map((s) => `${s.name}: ${s.status.recording_error}`).join(" · "),
  };
}

function combinedT() {
  let t = 0;
  for (const store of schedulers.stores.values()) t = Math.max(t, store.t || 0);
  return t;
}

function rebuildCombined() {
  const hosts = new Map();
  const jobs = new Map();
  const recent = [];
  for (const store of schedulers.stores.values()) {
    for (const h of store.hosts.values()) hosts.set(key(store.name, h.id), hostIn(store.name, h));
    for (const j of store.jobs.values()) jobs.set(key(store.name, j.id), jobIn(store.name, j));
    for (const j of store.recent) recent.push(jobIn(store.name, j));
  }
  recent.sort((a, b) => (a.ended ?? 0) - (b.ended ?? 0));
  model.seq = null;
  model.t = combinedT();
  model.hosts = hosts;
  model.jobs = jobs;
  model.recent = recent.slice(-RECENT_MAX);
  model.totals = combinedTotals();
  model.history = combinedHistory();
  setStatus(combinedStatus());
  setClock(model.t);
}

// ---- the view ----------------------------------------------------------------------------

function setStatus(status) {
  if (!status || typeof status !== "object") return;
  model.status = status;
  statusClock.position = status.position;
  statusClock.wall = performance.now();
  retime();
  dirty.status = true;
}

// The model shares the store's maps and arrays: what a delta changes there is in view.
function pointAt(store) {
  model.seq = store.seq;
  model.t = store.t;
  model.hosts = store.hosts;
  model.jobs = store.jobs;
  model.recent = store.recent;
  model.totals = store.totals;
  model.history = store.history;
}

// Show one scheduler (its name) or all of them (ALL).
export function setView(name) {
  if (name !== ALL && !schedulers.stores.has(name)) return false;
  schedulers.view = name;
  knownNames.clear();
  if (name === ALL) rebuildCombined();
  else {
    const store = schedulers.stores.get(name);
    pointAt(store);
    setClock(store.t);
    setStatus(store.status);
  }
  model.hosts.forEach(learnName);
  timelineFromSnapshot(true);
  dirty.schedulers = true;
  markAll();
  publish();
  return true;
}

function chooseView() {
  // A view the user asked for (the URL's #scheduler=NAME, or the switch) once it exists;
  // else all of them as soon as there are several.
  const wanted = schedulers.wanted;
  if (wanted !== null && wanted !== schedulers.view && (wanted === ALL ? schedulers.stores.size > 1 : schedulers.stores.has(wanted))) {
    setView(wanted);
  } else if (schedulers.view === null || (wanted === null && schedulers.view !== ALL && schedulers.stores.size > 1)) {
    setView(schedulers.stores.size > 1 ? ALL : schedulers.order[0]);
  }
}

function snapshotInView(store, msg, reset) {
  const view = schedulers.view;
  if (view === store.name) {
    pointAt(store);
    setClock(model.t);
    if (reset) knownNames.clear();
    model.hosts.forEach(learnName);
    setStatus(store.status);
    timelineFromSnapshot(reset);
    markAll();
  } else if (view === ALL) {
    rebuildCombined();
    model.hosts.forEach(learnName);
    timelineFromSnapshot(reset);
    markAll();
  } else {
    dirty.schedulers = true; // its state in the switch
    schedule();
  }
}

function deltaInView(store, msg) {
  const view = schedulers.view;
  const combined = view === ALL;
  if (!combined && view !== store.name) {
    if (msg.status) dirty.schedulers = true;
    schedule();
    return;
  }
  const name = store.name;
  if (combined) {
    model.t = combinedT();
    setClock(model.t);
    if (msg.status) setStatus(combinedStatus());
  } else {
    pointAt(store);
    if (msg.status) setStatus(store.status);
    if (typeof msg.t === "number") setClock(msg.t);
  }
  if (msg.status) dirty.schedulers = true;
  for (const raw of msg.hosts || []) {
    const h = combined ? hostIn(name, raw) : raw;
    if (combined) {
      if (!model.hosts.has(h.id)) dirty.hostSet = true;
      model.hosts.set(h.id, h);
    } else if (msg.newHosts) dirty.hostSet = true;
    learnName(h);
    dirty.hostIds.add(h.id);
    dirty.graph = true;
  }
  for (const id of msg.removed_hosts || []) {
    if (combined) model.hosts.delete(key(name, id));
    dirty.hostSet = true;
    dirty.graph = true;
  }
  const jobs = msg.jobs || [];
  for (const raw of jobs) {
    const j = combined ? jobIn(name, raw) : raw;
    if (combined) model.jobs.set(j.id, j);
    timelineActive(j);
  }
  const finished = msg.finished || [];
  for (const raw of finished) {
    const j = combined ? jobIn(name, raw) : raw;
    if (combined) {
      model.jobs.delete(j.id);
      pushRecent(model.recent, j);
    }
    timelineFinished(j);
  }
  if (jobs.length || finished.length) {
    dirty.running = dirty.graph = dirty.timeline = dirty.totals = true;
    if (finished.length) dirty.recent = true;
  }
  if (msg.totals) {
    if (combined) model.totals = combinedTotals();
    dirty.totals = true;
  }
  if (Array.isArray(msg.history) && msg.history.length) {
    if (combined) model.history = combinedHistory();
    dirty.history = true;
  }
  schedule();
}

// ---- messages ----------------------------------------------------------------------------

export function onMessage(msg) {
  if (!msg || typeof msg !== "object") return;
  pub.messages++;
  // (a server of an older icetools names no scheduler: one store, named "")
  const name = typeof msg.scheduler === "string" ? msg.scheduler : "";
  switch (msg.type) {
    case "snapshot": {
      const store = storeFor(name);
      const reset = snapshotIntoStore(store, msg);
      pub.snapshots++;
      if (schedulers.view === null || dirty.schedulers) chooseView();
      snapshotInView(store, msg, reset);
      break;
    }
    case "delta": {
      const store = schedulers.stores.get(name);
      if (!store) {
        console.warn(`icetools: a delta of ${name}, whose snapshot never came`);
        return;
      }
      if (!deltaIntoStore(store, msg)) return;
      deltaInView(store, msg);
      break;
    }
    case "error":
      showMessage(String(msg.message ?? "error"), "error");
      return;
    default:
      console.warn("icetools: unknown message type", msg.type);
      return;
  }
  publish();
}
