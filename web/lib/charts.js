// Charts shared by the live page (app.js) and the report (report.js): plain d3 v7 SVG.
//
// Every string from the data (host names, file names) goes in with d3's .text(), never as HTML.
// Colours come from CSS classes (style.css, report.css), never style attributes, so the pages
// work under a CSP without 'unsafe-inline' styles.
"use strict";

import { fmtClock } from "./format.js";

const MARGIN = { top: 10, right: 14, bottom: 24, left: 44 };

function svgIn(container, width, height) {
  d3.select(container).selectAll("*").remove();
  return d3
    .select(container)
    .append("svg")
    .attr("width", width)
    .attr("height", height)
    .attr("viewBox", `0 0 ${width} ${height}`);
}

function widthOf(container, fallback) {
  const w = container.clientWidth;
  return w > 50 ? w : fallback;
}

// Lines over time. spec: {t: [seconds], lines: [{key, label, cls, values: [numbers]}],
// height, xDomain: [t0, t1] (default: the data's), step: true for a step line}.
// Returns nothing: call again with new data to redraw.
export function lineChart(container, spec) {
  const width = widthOf(container, 640);
  const height = spec.height || 180;
  const svg = svgIn(container, width, height).attr("class", "chart line-chart");
  const t = spec.t || [];
  const x0 = spec.xDomain ? spec.xDomain[0] : t.length ? t[0] : 0;
  const x1 = spec.xDomain ? spec.xDomain[1] : t.length ? t[t.length - 1] : 1;
  const x = d3
    .scaleLinear()
    .domain([x0, Math.max(x1, x0 + 1e-6)])
    .range([MARGIN.left, width - MARGIN.right]);
  let ymax = 1;
  for (const line of spec.lines) for (const v of line.values) if (isFinite(v) && v > ymax) ymax = v;
  const y = d3
    .scaleLinear()
    .domain([0, ymax])
    .nice()
    .range([height - MARGIN.bottom, MARGIN.top]);
  svg
    .append("g")
    .attr("class", "axis x")
    .attr("transform", `translate(0,${height - MARGIN.bottom})`)
    .call(d3.axisBottom(x).ticks(Math.max(2, Math.floor(width / 90))).tickFormat((s) => fmtClock(s)));
  svg
    .append("g")
    .attr("class", "axis y")
    .attr("transform", `translate(${MARGIN.left},0)`)
    .call(d3.axisLeft(y).ticks(4).tickFormat(d3.format("~s")));
  // Stretches where nothing was recorded (several files read as one): shaded, named on hover.
  for (const band of spec.bands || []) {
    const a = x(Math.max(band.from, x0));
    const b = x(Math.min(band.to, x1));
    if (!(b > a)) continue;
    svg
      .append("rect")
      .attr("class", "band gap")
      .attr("x", a)
      .attr("width", b - a)
      .attr("y", MARGIN.top)
      .attr("height", height - MARGIN.top - MARGIN.bottom)
      .append("title")
      .text(band.label);
  }
  const line = d3
    .line()
    .defined((d) => isFinite(d[1]))
    .x((d) => x(d[0]))
    .y((d) => y(d[1]))
    .curve(spec.step ? d3.curveStepAfter : d3.curveMonotoneX);
  for (const l of spec.lines) {
    const points = t.map((ti, i) => [ti, l.values[i]]);
    svg
      .append("path")
      .attr("class", `series ${l.cls || ""}`)
      .attr("data-key", l.key)
      .attr("d", line(points));
  }
  const legend = svg.append("g").attr("class", "legend").attr("transform", `translate(${MARGIN.left + 8},${MARGIN.top + 4})`);
  spec.lines.forEach((l, i) => {
    const g = legend.append("g").attr("transform", `translate(${i * 120},0)`);
    g.append("rect").attr("class", `swatch ${l.cls || ""}`).attr("width", 10).attr("height", 10).attr("y", -1);
    g.append("text").attr("x", 14).attr("y", 8).text(l.label);
  });
}

// Horizontal bars, one row per item. rows: [{label, value, text, cls, title}], spec: {max}.
export function barChart(container, rows, spec = {}) {
  const width = widthOf(container, 640);
  const row = 20;
  const left = Math.min(180, Math.max(60, width * 0.25));
  const height = Math.max(row, rows.length * row) + 24;
  const svg = svgIn(container, width, height).attr("class", "chart bar-chart");
  const max = spec.max || d3.max(rows, (r) => r.value) || 1;
  const x = d3.scaleLinear().domain([0, max]).range([0, width - left - 70]);
  const g = svg
    .selectAll("g.bar")
    .data(rows)
    .join("g")
    .attr("class", "bar")
    .attr("transform", (_, i) => `translate(0,${i * row + 4})`);
  g.append("text").attr("class", "label").attr("x", left - 6).attr("y", 13).attr("text-anchor", "end").text((r) => r.label);
  g.append("rect")
    .attr("class", (r) => `value ${r.cls || ""}`)
    .attr("x", left)
    .attr("width", (r) => Math.max(0, x(r.value || 0)))
    .attr("height", row - 6)
    .append("title")
    .text((r) => r.title || `${r.label}: ${r.text}`);
  g.append("text")
    .attr("class", (r) => `amount ${r.cls || ""}`)
    .attr("x", (r) => left + Math.max(0, x(r.value || 0)) + 4)
    .attr("y", 13)
    .text((r) => r.text);
}

// A distribution as vertical bars. spec: {labels: [..], counts: [..]}.
export function histogram(container, spec) {
  const width = widthOf(container, 640);
  const height = 200;
  const bottom = 44; // room for the slanted labels
  const svg = svgIn(container, width, height).attr("class", "chart histogram");
  const x = d3.scaleBand().domain(spec.labels).range([MARGIN.left, width - MARGIN.right]).padding(0.1);
  const y = d3
    .scaleLinear()
    .domain([0, d3.max(spec.counts) || 1])
    .nice()
    .range([height - bottom, MARGIN.top]);
  svg
    .append("g")
    .attr("class", "axis x")
    .attr("transform", `translate(0,${height - bottom})`)
    .call(d3.axisBottom(x))
    .selectAll("text")
    .attr("text-anchor", "end")
    .attr("transform", "rotate(-35)");
  svg.append("g").attr("class", "axis y").attr("transform", `translate(${MARGIN.left},0)`).call(d3.axisLeft(y).ticks(4).tickFormat(d3.format("~s")));
  svg
    .selectAll("rect.count")
    .data(spec.counts)
    .join("rect")
    .attr("class", "count")
    .attr("x", (_, i) => x(spec.labels[i]))
    .attr("width", x.bandwidth())
    .attr("y", (c) => y(c))
    .attr("height", (c) => y(0) - y(c))
    .append("title")
    .text((c, i) => `${spec.labels[i]}: ${c}`);
  // the count over each bar: a few slow waits stay visible beside thousands of quick ones
  svg
    .selectAll("text.count")
    .data(spec.counts)
    .join("text")
    .attr("class", "count")
    .attr("x", (_, i) => x(spec.labels[i]) + x.bandwidth() / 2)
    .attr("y", (c) => y(c) - 3)
    .attr("text-anchor", "middle")
    .text((c) => (c ? String(c) : ""));
}

// Spans on lanes over time, zoomable (wheel, drag) along time. spec: {lanes: [{key, label}],
// spans: [{lane, start, end, cls, title}], xDomain: [t0, t1], laneHeight}.
export function spanChart(container, spec) {
  const width = widthOf(container, 900);
  const laneH = spec.laneHeight || 14;
  const left = 150;
  const lanes = spec.lanes;
  const height = lanes.length * laneH + MARGIN.top + MARGIN.bottom;
  const svg = svgIn(container, width, height).attr("class", "chart span-chart");
  const laneIndex = new Map(lanes.map((l, i) => [l.key, i]));
  const x = d3
    .scaleLinear()
    .domain([spec.xDomain[0], Math.max(spec.xDomain[1], spec.xDomain[0] + 1e-6)])
    .range([left, width - MARGIN.right]);
  const clipId = `clip-${Math.random().toString(36).slice(2)}`;
  svg
    .append("clipPath")
    .attr("id", clipId)
    .append("rect")
    .attr("x", left)
    .attr("y", 0)
    .attr("width", width - MARGIN.right - left)
    .attr("height", height);
  svg
    .append("g")
    .attr("class", "lane-labels")
    .selectAll("text")
    .data(lanes)
    .join("text")
    .attr("class", (l) => `lane-label ${l.cls || ""}`)
    .attr("x", left - 6)
    .attr("y", (_, i) => MARGIN.top + i * laneH + laneH * 0.75)
    .attr("text-anchor", "end")
    .text((l) => l.label);
  const xAxis = svg.append("g").attr("class", "axis x").attr("transform", `translate(0,${height - MARGIN.bottom})`);
  const body = svg.append("g").attr("clip-path", `url(#${clipId})`);
  const rects = body
    .selectAll("rect")
    .data(spec.spans.filter((s) => laneIndex.has(s.lane)))
    .join("rect")
    .attr("class", (s) => `span ${s.cls || ""}`)
    .attr("y", (s) => MARGIN.top + laneIndex.get(s.lane) * laneH + 1)
    .attr("height", laneH - 2);
  rects.append("title").text((s) => s.title);
  function draw(scale) {
    xAxis.call(d3.axisBottom(scale).ticks(Math.max(2, Math.floor(width / 100))).tickFormat((s) => fmtClock(s)));
    rects.attr("x", (s) => scale(s.start)).attr("width", (s) => Math.max(1, scale(s.end) - scale(s.start)));
  }
  draw(x);
  const zoom = d3
    .zoom()
    .scaleExtent([1, 5000])
    .translateExtent([
      [left, 0],
      [width - MARGIN.right, height],
    ])
    .extent([
      [left, 0],
      [width - MARGIN.right, height],
    ])
    .on("zoom", (event) => draw(event.transform.rescaleX(x)));
  svg.call(zoom);
  return zoom;
}

// Lanes for spans on one resource (a host's slots): each span takes the lowest lane free at its
// start, so a lane's spans never overlap. spans must be sorted by start. Returns lane numbers.
export function assignLanes(spans) {
  const ends = []; // lane -> end of its last span
  return spans.map((s) => {
    let lane = ends.findIndex((e) => e <= s.start);
    if (lane < 0) lane = ends.push(0) - 1;
    ends[lane] = s.end;
    return lane;
  });
}
