// The sortable host table.
"use strict";

import { fmtNum, fmtMem, fmtLoadAvg, loadBucket } from "../lib/format.js";
import { dirty, el, hostLabel, model, schedule, schedulers } from "./core.js";

// ---- the host table --------------------------------------------------------------------

export const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

function ipKey(ip) {
  const parts = String(ip || "").split(".");
  if (parts.length === 4 && parts.every((p) => /^\d+$/.test(p))) {
    return parts.map((p) => p.padStart(3, "0")).join(".");
  }
  return `~${ip || ""}`; // names and IPv6 after the IPv4 addresses
}

const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);
const COLUMNS = [
  // in the combined view with its scheduler's name ("ALPHA/node1"), rows grouped by scheduler
  { key: "name", text: (h) => hostLabel(h), sort: (h) => h.name || `#${h.host_id ?? h.id}` },
  { key: "ip", text: (h) => h.ip || "–", sort: (h) => ipKey(h.ip) },
  { key: "platform", text: (h) => h.platform || "–", sort: (h) => h.platform || "" },
  { key: "protocol", text: (h) => fmtNum(h.protocol), sort: (h) => num(h.protocol), num: true },
  { key: "features", text: (h) => (h.features || []).join(" ") || "–", sort: (h) => (h.features || []).join(" ") },
  {
    key: "jobs",
    text: (h) => `${h.jobs_as_server ?? 0}/${h.max_jobs ?? 0}`,
    sort: (h) => (h.jobs_as_server ?? 0) * 10000 + (h.max_jobs ?? 0),
    num: true,
  },
  { key: "load", text: (h) => fmtNum(h.load), sort: (h) => num(h.load), num: true },
  { key: "speed", text: (h) => fmtNum(h.speed, 1), sort: (h) => num(h.speed), num: true },
  {
    key: "load_avg",
    text: (h) => fmtLoadAvg(h.load_avg),
    sort: (h) => (Array.isArray(h.load_avg) ? num(h.load_avg[0]) : null),
    num: true,
  },
  { key: "free_mem", text: (h) => fmtMem(h.free_mem), sort: (h) => num(h.free_mem), num: true },
  {
    key: "compiled",
    text: (h) => fmtNum((h.counters || {}).compiled ?? 0),
    sort: (h) => (h.counters || {}).compiled ?? 0,
    num: true,
  },
  {
    key: "failed",
    text: (h) => fmtNum((h.counters || {}).failed ?? 0),
    sort: (h) => (h.counters || {}).failed ?? 0,
    num: true,
  },
];
const COLUMN = new Map(COLUMNS.map((c) => [c.key, c]));
const LOAD_CELL = COLUMNS.findIndex((c) => c.key === "load");
const NAME_CELL = COLUMNS.findIndex((c) => c.key === "name");
const sortState = { key: "name", dir: 1 };
const tbody = d3.select("#hosts-table tbody");

function compareHosts(a, b) {
  // the combined view: hosts grouped by scheduler, in the server's order, then sorted
  if (a.scheduler !== b.scheduler) {
    return (schedulers.order.indexOf(a.scheduler) - schedulers.order.indexOf(b.scheduler)) || collator.compare(String(a.scheduler), String(b.scheduler));
  }
  const col = COLUMN.get(sortState.key) || COLUMNS[0];
  const va = col.sort(a);
  const vb = col.sort(b);
  let c = 0;
  if (va === null || va === undefined || vb === null || vb === undefined) {
    // missing values last, whatever the direction
    if (va !== vb) return va === null || va === undefined ? 1 : -1;
  } else if (typeof va === "number" && typeof vb === "number") {
    c = va - vb;
  } else {
    c = collator.compare(String(va), String(vb));
  }
  if (c) return c * sortState.dir;
  return collator.compare(a.name || "", b.name || "") || (a.host_id ?? a.id) - (b.host_id ?? b.id);
}

function fillRow(tr, h) {
  const cells = tr.children;
  for (let i = 0; i < COLUMNS.length; i++) {
    const text = COLUMNS[i].text(h);
    if (cells[i].textContent !== text) cells[i].textContent = text;
  }
  tr.classList.toggle("offline", h.online === false);
  tr.classList.toggle("busy", (h.jobs_as_server ?? 0) > 0);
  tr.classList.toggle("full", Number(h.load) >= 1000);
  tr.classList.toggle("no-remote", h.no_remote === true);
  const b = loadBucket(h.load);
  cells[LOAD_CELL].className = `num load-${b}`; // the load cell
  cells[NAME_CELL].title = h.online === false ? "offline" : h.no_remote ? "online, takes no remote jobs" : "online";
}

export function renderHosts() {
  const hosts = Array.from(model.hosts.values());
  const all = dirty.hostsAll;
  const ids = dirty.hostIds;
  tbody
    .selectAll("tr")
    .data(hosts, (d) => d.id)
    .join(
      (enter) =>
        enter.append("tr").each(function (d) {
          this.dataset.hostId = String(d.id);
          if (d.scheduler !== undefined) this.dataset.scheduler = d.scheduler;
          for (const c of COLUMNS) {
            const td = document.createElement("td");
            if (c.num) td.className = "num";
            this.appendChild(td);
          }
          fillRow(this, d);
        }),
      (update) =>
        update.each(function (d) {
          if (all || ids.has(d.id)) fillRow(this, d);
        }),
      (exit) => exit.remove()
    )
    .sort(compareHosts);
  const online = hosts.filter((h) => h.online !== false).length;
  el("hosts-count").textContent = String(hosts.length);
  el("hosts-online").textContent = `${online} online`;
}

function renderSortHeaders() {
  document.querySelectorAll("#hosts-table th[data-sort]").forEach((th) => {
    const on = th.dataset.sort === sortState.key;
    th.classList.toggle("sorted", on);
    th.classList.toggle("desc", on && sortState.dir < 0);
    if (on) th.setAttribute("aria-sort", sortState.dir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  });
}

document.querySelectorAll("#hosts-table th[data-sort]").forEach((th) => {
  th.tabIndex = 0;
  const activate = () => {
    const key = th.dataset.sort;
    if (sortState.key === key) sortState.dir = -sortState.dir;
    else {
      sortState.key = key;
      // numbers: the biggest first is what one wants to see
      sortState.dir = COLUMN.get(key) && COLUMN.get(key).num ? -1 : 1;
    }
    renderSortHeaders();
    dirty.hostsAll = true;
    schedule();
  };
  th.addEventListener("click", activate);
  th.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      activate();
    }
  });
});
renderSortHeaders();
