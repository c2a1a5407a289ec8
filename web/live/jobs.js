// Job lists: waiting (requested, no compile host yet), running and recent jobs.
"use strict";

import { fmtSeconds, jobFailed } from "../lib/format.js";
import { WAITING_SHOWN, el, hostName, jobHostText, model, nowT } from "./core.js";

// ---- running and recent jobs -----------------------------------------------------------

const runningUl = d3.select("#running-jobs");
const recentUl = d3.select("#recent-jobs");

function jobItem(li, j, { recent }) {
  const file = document.createElement("span");
  file.className = "file";
  file.textContent = j.file || `job ${j.id}`;
  file.title = j.file || "";
  const hosts = document.createElement("span");
  hosts.className = "hosts";
  const time = document.createElement("span");
  time.className = "time";
  li.append(file, hosts, time);
  if (recent) {
    const outcome = document.createElement("span");
    outcome.className = "outcome";
    li.appendChild(outcome);
  }
}

function fillRunning(li, j) {
  const hosts = li.children[1];
  const text = jobHostText(j);
  if (hosts.textContent !== text) hosts.textContent = text;
  li.classList.toggle("local", j.local === true || j.state === "local");
  li.dataset.state = j.state || "";
}

function fillRecent(li, j) {
  const failed = jobFailed(j);
  li.classList.toggle("failed", failed);
  li.classList.toggle("lost", j.lost === true);
  li.classList.toggle("local", j.local === true);
  li.dataset.state = j.state || "";
  li.children[1].textContent = jobHostText(j);
  const begin = j.started ?? j.submitted;
  li.children[2].textContent =
    typeof begin === "number" && typeof j.ended === "number" ? fmtSeconds(j.ended - begin) : "–";
  let outcome;
  if (j.lost) outcome = `lost with ${hostName(j.server_id)}`;
  else if (failed) outcome = j.exit_code !== null && j.exit_code !== undefined ? `failed (exit ${j.exit_code})` : "failed";
  else outcome = "ok";
  if (j.rerun_of !== null && j.rerun_of !== undefined) outcome += ` · re-run of #${j.rerun_of}`;
  li.children[3].textContent = outcome;
}

let runningSel = runningUl.selectAll("li");

export function renderRunning(structure) {
  const now = nowT();
  if (structure) {
    const running = [];
    let waiting = 0;
    for (const j of model.jobs.values()) {
      if (j.state === "waiting") waiting++;
      else running.push(j);
    }
    // the longest running first: that is the one holding up the build
    running.sort((a, b) => (a.started ?? a.submitted ?? 0) - (b.started ?? b.submitted ?? 0) || a.id - b.id);
    runningSel = runningUl
      .selectAll("li")
      .data(running, (d) => d.id)
      .join(
        (enter) =>
          enter.append("li").each(function (d) {
            this.dataset.jobId = String(d.id);
            jobItem(this, d, { recent: false });
          }),
        (update) => update,
        (exit) => exit.remove()
      )
      .each(function (d) {
        fillRunning(this, d);
      })
      .order();
    el("running-count").textContent = String(running.length);
    el("waiting-count").textContent = waiting ? `+ ${waiting} waiting` : "";
  }
  runningSel.each(function (d) {
    const begin = d.started ?? d.submitted;
    const text = typeof begin === "number" ? fmtSeconds(now - begin) : "–";
    const span = this.children[2];
    if (span.textContent !== text) span.textContent = text;
  });
}

export function renderRecent() {
  const newestFirst = model.recent.slice().reverse();
  recentUl
    .selectAll("li")
    .data(newestFirst, (d) => d.id)
    .join(
      (enter) =>
        enter.append("li").each(function (d) {
          this.dataset.jobId = String(d.id);
          jobItem(this, d, { recent: true });
          fillRecent(this, d);
        }),
      (update) =>
        update.each(function (d) {
          if (this.__job !== d) fillRecent(this, d);
        }),
      (exit) => exit.remove()
    )
    .each(function (d) {
      this.__job = d;
    })
    .order();
  el("recent-count").textContent = String(model.recent.length);
  const failed = model.recent.reduce((n, j) => n + (jobFailed(j) ? 1 : 0), 0);
  el("recent-failed-count").textContent = failed ? `${failed} failed` : "";
}

// ---- waiting jobs: requested, no compile host yet ----------------------------------------

const waitingUl = d3.select("#waiting-jobs");
let waitingSel = waitingUl.selectAll("li");

export function renderWaiting(structure) {
  const now = nowT();
  if (structure) {
    const waiting = [];
    for (const j of model.jobs.values()) if (j.state === "waiting") waiting.push(j);
    // the longest waiting first: the build is stuck behind it
    waiting.sort((a, b) => (a.submitted ?? 0) - (b.submitted ?? 0) || a.id - b.id);
    waitingSel = waitingUl
      .selectAll("li")
      .data(waiting.slice(0, WAITING_SHOWN), (d) => d.id)
      .join(
        (enter) =>
          enter.append("li").each(function (d) {
            this.dataset.jobId = String(d.id);
            jobItem(this, d, { recent: false });
          }),
        (update) => update,
        (exit) => exit.remove()
      )
      .each(function (d) {
        const text = `from ${hostName(d.client_id)}`;
        if (this.children[1].textContent !== text) this.children[1].textContent = text;
      })
      .order();
    el("waiting-jobs-count").textContent = String(waiting.length);
    el("waiting-jobs-more").textContent = waiting.length > WAITING_SHOWN ? `the ${WAITING_SHOWN} longest waiting shown` : "";
  }
  waitingSel.each(function (d) {
    const text = typeof d.submitted === "number" ? fmtSeconds(now - d.submitted) : "–";
    const span = this.children[2];
    if (span.textContent !== text) span.textContent = text;
  });
}
