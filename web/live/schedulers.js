// The scheduler switch: with several schedulers, which one is in view, or all of them.
"use strict";

import { ALL, el, pub, schedulers } from "./core.js";
import { setView } from "./messages.js";

const selectEl = el("scheduler-select");

function stateText(status) {
  if (!status) return "connecting";
  if (status.state === "live") return "live";
  if (status.state === "retrying") return "retrying";
  return String(status.state || "?");
}

export function renderSchedulers() {
  const several = schedulers.order.length > 1;
  selectEl.hidden = !several;
  document.body.classList.toggle("combined", schedulers.view === ALL);
  if (!several) return;
  const wanted = [[ALL, `all ${schedulers.order.length} schedulers`]];
  for (const name of schedulers.order) {
    const status = schedulers.stores.get(name).status;
    wanted.push([name, `${name} · ${stateText(status)}`]);
  }
  // options by value, made once, their text kept current
  const have = new Map(Array.from(selectEl.options, (o) => [o.value, o]));
  wanted.forEach(([value, text], i) => {
    let option = have.get(value);
    if (!option) {
      option = document.createElement("option");
      option.value = value;
      selectEl.insertBefore(option, selectEl.options[i] || null);
    }
    if (option.textContent !== text) option.textContent = text;
    option.dataset.state = value === ALL ? "" : stateText(schedulers.stores.get(value).status);
  });
  if (selectEl.value !== schedulers.view && schedulers.view !== null) selectEl.value = schedulers.view;
}

// Choose what to show: a scheduler's name, or "*" for all of them. The URL keeps the choice.
export function chooseScheduler(name) {
  schedulers.wanted = name;
  const ok = setView(name);
  if (ok) history.replaceState(null, "", `#scheduler=${encodeURIComponent(name)}`);
  return ok;
}
pub.setView = chooseScheduler;

selectEl.addEventListener("change", () => {
  chooseScheduler(selectEl.value);
  selectEl.blur();
});
