// Messages from the server (docs/websocket-protocol.md): a snapshot replaces the model, a
// delta updates it; both mark what the next frame redraws.
"use strict";

import { HISTORY_MAX, RECENT_MAX, dirty, knownNames, learnName, markAll, model, pub, publish, retime, schedule, setClock, statusClock } from "./core.js";
import { showMessage } from "./status.js";
import { timelineActive, timelineFinished, timelineFromSnapshot } from "./timeline.js";

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

export function onMessage(msg) {
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
