// The utilisation line: busy and offered slots, waiting jobs (the state's history).
"use strict";

import { lineChart } from "../lib/charts.js";
import { UTIL_REDRAW_MS, el, model } from "./core.js";

// ---- utilisation: busy and offered slots, waiting jobs over time --------------------------

const utilEl = el("utilisation");
let utilDrawnAt = -Infinity;
export let utilDrawn = true; // false: a redraw is due but was held back (UTIL_REDRAW_MS)

export function renderUtilisation() {
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
