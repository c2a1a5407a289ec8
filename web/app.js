// icetools live view: the state of an icecream cluster over the /ws websocket
// (docs/websocket-protocol.md). Plain ES2020 modules + d3 v7, no build step: this entry module
// runs the render loop over the views in live/ (one module per part of the page, their shared
// state in live/core.js); the charts and formatting they share with the report are in lib/.
//
// Security: every string that comes from the server (host names, file names, messages...) goes
// into the page with d3's .text() / textContent / setAttribute, never as HTML.
"use strict";

import { connect } from "./live/connection.js";
import { TICK_MS, dirty, guard, publish, pub, schedule, setRenderer } from "./live/core.js";
import { graphEl, renderGraph, resizeGraph } from "./live/graph.js";
import { renderHosts } from "./live/hosts.js";
import { renderRecent, renderRunning, renderWaiting } from "./live/jobs.js";
import { renderSchedulers } from "./live/schedulers.js";
import { renderClock, renderReplayPosition, renderStatus } from "./live/status.js";
import { measureTimeline, renderTimeline, tlEl } from "./live/timeline.js";
import { renderTotals } from "./live/totals.js";
import { renderUtilisation, utilDrawn } from "./live/utilisation.js";

// Each frame redraws what changed (the dirty flags), each part on its own: one broken part
// must not blank the others.
function render() {
  const t0 = performance.now();
  if (dirty.schedulers) guard("schedulers", renderSchedulers);
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
  dirty.schedulers = dirty.status = dirty.totals = dirty.hostsAll = dirty.hostSet = dirty.graph = false;
  dirty.running = dirty.recent = dirty.timeline = false;
  if (utilDrawn) dirty.history = false;
  dirty.hostIds.clear();
}


// ---- start -----------------------------------------------------------------------------

setRenderer(render);

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
