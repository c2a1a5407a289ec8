// The websocket: connect, back off and retry, send commands.
"use strict";

import { onMessage } from "./messages.js";
import { BACKOFF_MAX_MS, BACKOFF_MIN_MS, conn, dirty, markAll, pub, retime, schedule } from "./core.js";
import { showMessage } from "./status.js";

// ---- the connection --------------------------------------------------------------------

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

export function connect() {
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

pub.send = (cmd) => send(cmd);

export function send(cmd) {
  const ws = conn.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    showMessage("not connected", "error");
    return false;
  }
  ws.send(JSON.stringify(cmd));
  return true;
}
