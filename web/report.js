// icetools report: the charts of one recording, from the data icetools/report.py inlines as
// JSON (<script type="application/json" id="report-data">). It runs inlined into the report
// file (report.py bundles it with the modules it imports), so it fetches nothing.
//
// Every string from the recording goes in with textContent / d3 .text(), never as HTML.
"use strict";

import { fmtNum, fmtClock } from "./lib/format.js";
import { lineChart, barChart, histogram, spanChart, assignLanes } from "./lib/charts.js";

const reportData = JSON.parse(document.getElementById("report-data").textContent);
const reportStats = reportData.stats;

function byId(id) {
  return document.getElementById(id);
}

function pct(ratio) {
  return typeof ratio === "number" && isFinite(ratio) ? (ratio * 100).toFixed(1) : "–";
}

function msText(ms) {
  return typeof ms === "number" && isFinite(ms) ? String(Math.round(ms)) : "–";
}

// A figure of the summary: <div><span class="value" data-figure=KEY>VALUE</span><span>LABEL</span></div>
function figure(parent, key, value, label, cls) {
  const div = parent.appendChild(document.createElement("div"));
  div.className = `figure ${cls || ""}`;
  const v = div.appendChild(document.createElement("span"));
  v.className = "value";
  v.dataset.figure = key;
  v.textContent = value;
  const l = div.appendChild(document.createElement("span"));
  l.className = "label";
  l.textContent = label;
}

function table(tableEl, rows, cells) {
  const tbody = tableEl.tBodies[0];
  for (const row of rows) {
    const tr = tbody.insertRow();
    for (const [key, text, num] of cells(row)) {
      const td = tr.insertCell();
      td.dataset.col = key;
      td.textContent = text;
      if (num) td.className = "num";
    }
  }
  if (!rows.length) {
    const tr = tbody.insertRow();
    tr.className = "empty";
    const td = tr.insertCell();
    td.colSpan = tableEl.tHead.rows[0].cells.length;
    td.className = "muted";
    td.textContent = "none";
  }
}

function renderSummary() {
  const s = reportStats;
  const el = byId("summary");
  figure(el, "duration", fmtClock(s.duration), "recorded (m:s)");
  figure(el, "jobs.remote", String(s.jobs.remote), "remote jobs");
  figure(el, "jobs.local", String(s.jobs.local), "local jobs");
  figure(el, "jobs.failed", String(s.jobs.failed), "failed", "bad");
  figure(el, "jobs.lost", String(s.jobs.lost), "lost with their host", "bad");
  figure(el, "jobs.rerun_locally", String(s.jobs.rerun_locally), "re-run locally");
  figure(el, "utilisation.cluster.ratio", pct(s.utilisation.cluster.ratio), "% of offered slots busy");
  figure(el, "wait.cluster.p50_ms", msText(s.wait.cluster.p50_ms), "ms median wait");
  figure(el, "wait.cluster.p95_ms", msText(s.wait.cluster.p95_ms), "ms 95th pct wait");
  figure(el, "wait.cluster.max_ms", msText(s.wait.cluster.max_ms), "ms longest wait");
  figure(el, "peak_jobs_per_second", String(s.peak_jobs_per_second), "peak jobs / s");
  if (typeof s.waiting_with_free_slots_s === "number") {
    figure(el, "waiting_with_free_slots_s", s.waiting_with_free_slots_s.toFixed(1), "s waiting with free slots", "bad");
  }
  if (typeof s.saturated_s === "number") figure(el, "saturated_s", s.saturated_s.toFixed(1), "s saturated");
  // several files read as one: where nothing was recorded
  if (Array.isArray(s.gaps) && s.gaps.length) {
    const total = s.gaps.reduce((sum, g) => sum + g.seconds, 0);
    figure(el, "gaps", String(s.gaps.length), `gaps without a recording (${fmtClock(total)} m:s)`, "bad");
  }
}

function renderSeries() {
  const series = reportData.series;
  const t = series.t.map((ti) => ti + series.bucket_s / 2); // a bucket's mean at its middle
  byId("series-note").textContent = `means over ${series.t.length} buckets of ${fmtNum(series.bucket_s, 2)} s`;
  lineChart(byId("series-chart"), {
    t,
    xDomain: [0, reportData.end],
    bands: (reportStats.gaps || []).map((g) => ({
      from: g.t,
      to: g.until,
      label: `no recording from ${fmtClock(g.t)} to ${fmtClock(g.until)}`,
    })),
    lines: [
      { key: "offered", label: "offered slots", cls: "offered", values: series.offered },
      { key: "busy", label: "busy slots", cls: "busy", values: series.busy },
      { key: "waiting", label: "jobs waiting", cls: "waiting", values: series.waiting },
    ],
  });
}

function renderHosts() {
  const s = reportStats;
  // hosts that offered no slots (a submitter only) have no utilisation entry
  const util = Object.fromEntries((s.utilisation.hosts || []).map((u) => [u.name, u]));
  // time lost moving files per compile host, where stats has it
  const transfer = Object.fromEntries((s.transfer || []).map((x) => [x.name, x]));
  const hosts = s.hosts.slice().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  barChart(
    byId("hosts-chart"),
    hosts.map((h) => {
      const u = util[h.name] || {};
      return {
        label: h.name,
        value: typeof u.ratio === "number" ? u.ratio : 0,
        text: `${pct(u.ratio)} %` + (h.failed || h.lost ? `, ${h.failed} failed (${h.lost} lost)` : ""),
        cls: h.failed || h.lost ? "has-failures" : "",
        title: `${h.name}: ${pct(u.ratio)} % busy, ${h.compiled} compiled, ${h.failed} failed, ${h.lost} lost`,
      };
    }),
    { max: 1 },
  );
  table(byId("hosts-table"), hosts, (h) => {
    const u = util[h.name] || {};
    return [
      ["name", h.name],
      ["compiled", String(h.compiled), true],
      ["submitted", String(h.submitted), true],
      ["local", String(h.local), true],
      ["failed", String(h.failed), true],
      ["lost", String(h.lost), true],
      ["busy_slot_s", fmtNum(u.busy_slot_s, 1), true],
      ["offered_slot_s", fmtNum(u.offered_slot_s, 1), true],
      ["ratio", pct(u.ratio), true],
      ["transfer_s", transfer[h.name] ? fmtNum(transfer[h.name].transfer_s, 1) : "–", true],
    ];
  });
  const failing = s.hosts.filter((h) => h.failed || h.lost).sort((a, b) => b.failed - a.failed || (a.name < b.name ? -1 : 1));
  table(byId("failing-table"), failing, (h) => [
    ["name", h.name],
    ["failed", String(h.failed), true],
    ["lost", String(h.lost), true],
    ["compiled", String(h.compiled), true],
  ]);
}

function renderWaits() {
  const bars = reportData.wait_bars;
  const labels = bars.bounds_ms.map((b) => `≤${b >= 1000 ? `${b / 1000}s` : `${b}ms`}`);
  labels.push(`>${bars.bounds_ms[bars.bounds_ms.length - 1] / 1000}s`);
  histogram(byId("waits-chart"), { labels, counts: bars.counts });
  byId("waits-note").textContent = `${reportStats.wait.cluster.count} remote jobs whose request and start were recorded`;
}

function renderBuilds() {
  const builds = reportStats.builds || [];
  const submitters = Array.from(new Set(builds.map((b) => b.submitter))).sort();
  spanChart(byId("builds-chart"), {
    lanes: submitters.map((s) => ({ key: s, label: s })),
    spans: builds.map((b) => ({
      lane: b.submitter,
      start: b.start,
      end: b.end,
      cls: b.failed || b.lost ? "failed" : "build",
      title: `${b.submitter}: ${b.jobs} jobs in ${b.wall_s} s (${b.remote} remote, ${b.local} local, ${b.failed} failed, ${b.lost} lost), parallelism ${b.parallelism}, p95 wait ${b.wait_p95_ms} ms, slowest ${b.slowest_file || "–"}`,
    })),
    xDomain: [0, reportData.end],
    laneHeight: 18,
  });
  const total = reportData.builds_total;
  const gap = reportStats.build_gap_s;
  byId("builds-note").textContent =
    (builds.length < total ? `the last ${builds.length} of ${total} builds` : `${total} builds`) +
    ` (a build ends after ${gap} s without a request or a job of its submitter running)`;
}

function renderJobs() {
  const tl = reportData.timeline;
  const col = new Map(tl.columns.map((c, i) => [c, i]));
  const jobs = tl.jobs.map((r) => ({
    id: r[col.get("id")],
    file: r[col.get("file")],
    submitter: r[col.get("submitter")],
    server: r[col.get("server")],
    kind: r[col.get("kind")],
    outcome: r[col.get("outcome")],
    start: r[col.get("started")],
    end: r[col.get("ended")],
    wait: r[col.get("wait_ms")],
  }));
  const byHost = new Map();
  for (const j of jobs) {
    const host = j.server || j.submitter || "?";
    if (!byHost.has(host)) byHost.set(host, []);
    byHost.get(host).push(j);
  }
  const lanes = [];
  const spans = [];
  for (const host of Array.from(byHost.keys()).sort()) {
    const list = byHost.get(host);
    const laneOf = assignLanes(list);
    const count = Math.max(...laneOf) + 1;
    for (let i = 0; i < count; i++) lanes.push({ key: `${host}\u0000${i}`, label: i ? "" : host });
    lanes.push({ key: `${host}\u0000gap`, label: "" }); // room for the host's name
    list.forEach((j, i) => {
      spans.push({
        lane: `${host}\u0000${laneOf[i]}`,
        start: j.start,
        end: j.end,
        cls: j.outcome === "failed" || j.outcome === "lost" ? j.outcome : j.kind,
        title: `${j.file || "?"} (${j.kind}, ${j.outcome}) ${j.submitter || "?"} → ${host}, ${fmtNum((j.end - j.start) * 1000)} ms, waited ${j.wait === null ? "–" : fmtNum(j.wait)} ms`,
      });
    });
  }
  spanChart(byId("jobs-chart"), {
    lanes,
    spans,
    xDomain: jobs.length ? [d3.min(jobs, (j) => j.start), d3.max(jobs, (j) => j.end)] : [0, reportData.end],
    laneHeight: 8,
  });
  byId("jobs-note").textContent =
    jobs.length < tl.total
      ? `the last ${jobs.length} of ${tl.total} jobs to start (wheel or drag to zoom and pan)`
      : `all ${tl.total} jobs (wheel or drag to zoom and pan)`;
}

function renderSlowest() {
  table(byId("slowest-table"), reportStats.slowest_files, (f) => [
    ["file", f.file],
    ["host", f.host],
    ["real_msec", String(f.real_msec), true],
  ]);
}

const reportParts = { summary: renderSummary, series: renderSeries, hosts: renderHosts, waits: renderWaits, builds: renderBuilds, jobs: renderJobs, slowest: renderSlowest };
const reportFailed = [];
for (const [name, fn] of Object.entries(reportParts)) {
  try {
    fn();
  } catch (e) {
    reportFailed.push(name);
    console.error(`icetools: the report's ${name} failed`, e);
  }
}
window.icetoolsReport = { rendered: true, failed: reportFailed, data: reportData };
