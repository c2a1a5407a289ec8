// Formatting shared by the live page (app.js) and the report (report.js).
"use strict";

export function fmtNum(n, digits = 0) {
  if (typeof n !== "number" || !isFinite(n)) return "–";
  return digits ? n.toFixed(digits) : String(Math.round(n));
}

export function fmtSpeed(x) {
  const n = Number(x);
  if (!isFinite(n)) return "?";
  return String(Math.round(n * 100) / 100);
}

export function fmtRate(n) {
  if (typeof n !== "number" || !isFinite(n)) return "0";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

export function fmtClock(sec) {
  if (typeof sec !== "number" || !isFinite(sec)) sec = 0;
  sec = Math.max(0, sec);
  const m = Math.floor(sec / 60);
  const s = sec - m * 60;
  return `${m}:${s < 10 ? "0" : ""}${s.toFixed(1)}`;
}

export function fmtMem(mib) {
  if (typeof mib !== "number" || !isFinite(mib)) return "–";
  if (mib >= 1024) return `${(mib / 1024).toFixed(1)} GiB`;
  return `${Math.round(mib)} MiB`;
}

export function fmtLoadAvg(la) {
  if (!Array.isArray(la) || !la.length) return "–";
  return la.map((v) => (Number(v) / 1000).toFixed(2)).join(" ");
}

export function fmtSeconds(s) {
  if (typeof s !== "number" || !isFinite(s)) return "–";
  return `${Math.max(0, s).toFixed(1)} s`;
}

export function loadBucket(load) {
  const l = Number(load);
  if (!isFinite(l)) return 0;
  return Math.max(0, Math.min(10, Math.floor(l / 100))); // 10 = 1000: do not schedule
}

export const loadColor = (() => {
  const scale = d3
    .scaleLinear()
    .domain([0, 400, 750, 999])
    .range(["#35c27d", "#d8cf3a", "#f08a32", "#e5484d"])
    .interpolate(d3.interpolateHcl)
    .clamp(true);
  return (load) => (Number(load) >= 1000 ? "#8e1b2a" : scale(Number(load) || 0));
})();

export function jobFailed(j) {
  return (
    j.lost === true ||
    j.state === "failed" ||
    (j.exit_code !== null && j.exit_code !== undefined && j.exit_code !== 0)
  );
}

