// The header: connection and replay status, the scheduler, the clock, replay controls.
"use strict";

import { fmtSpeed, fmtClock } from "../lib/format.js";
import { send } from "./connection.js";
import { SPEEDS, conn, el, model, nowT, replayPosition, schedule, statusClock } from "./core.js";

// ---- status, messages, replay controls -------------------------------------------------

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

export function renderStatus() {
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

export function renderClock() {
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
export function renderReplayPosition() {
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

export function showMessage(text, kind) {
  const div = document.createElement("div");
  div.className = `toast ${kind || ""}`;
  div.textContent = text;
  messagesEl.appendChild(div);
  while (messagesEl.childElementCount > 3) messagesEl.firstElementChild.remove();
  setTimeout(() => div.remove(), 6000);
}
