// The timeline of jobs per host.
"use strict";

import { fmtClock, fmtSeconds, jobFailed } from "../lib/format.js";
import { TIMELINE_KEEP_SECONDS, TIMELINE_MAX_BARS, dirty, el, hostName, jobHostText, jobRowHost, model, nowT, pub, schedule, uiScale } from "./core.js";
import { collator } from "./hosts.js";

// ---- the timeline ----------------------------------------------------------------------

// Bars by job id: {id, file, start, end (null while running), row (host name), cls}
const bars = new Map();
export const tlEl = el("timeline");
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

export function timelineActive(j) {
  if (j.state === "waiting") return;
  const b = barFor(j);
  if (b) bars.set(j.id, b);
}

export function timelineFinished(j) {
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

export function timelineFromSnapshot(reset) {
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

export function renderTimeline() {
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


export function measureTimeline() {
  const k = uiScale();
  tl.scale = k;
  tl.width = tlEl.clientWidth / k;
  // the room the rows may take: the box's max-height (it is only as tall as its content)
  const max = parseFloat(getComputedStyle(tlEl).maxHeight);
  tl.height = (isFinite(max) && max > 0 ? max : tlEl.clientHeight || 240) / k;
  tl.layoutKey = "";
}
