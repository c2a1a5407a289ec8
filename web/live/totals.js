// The cluster totals and the slots meter.
"use strict";

import { fmtNum, fmtRate } from "../lib/format.js";
import { el, model } from "./core.js";

// ---- totals ----------------------------------------------------------------------------

const totalEls = new Map();
document.querySelectorAll("#totals [data-total]").forEach((e) => totalEls.set(e.dataset.total, e));
const slotsMeter = el("slots-meter");

export function renderTotals() {
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
