// The force graph of hosts, with client-to-server links for running jobs.
"use strict";

import { loadColor } from "../lib/format.js";
import { dirty, el, hostLabel, model, schedule, schedulers, uiScale } from "./core.js";

// ---- the force graph -------------------------------------------------------------------

export const graphEl = el("graph");
export const graph = {
  width: graphEl.clientWidth || 800,
  height: graphEl.clientHeight || 500,
  nodes: new Map(), // host id -> simulation node {id, x, y, host, r}
  maxSlots: 1,
  links: [],
  first: true,
};
const graphEmpty = graphEl.appendChild(document.createElement("div"));
graphEmpty.className = "placeholder";
graphEmpty.textContent = "no hosts yet";
graph.svg = d3.select(graphEl).append("svg").attr("role", "img").attr("aria-label", "hosts and running jobs");
graph.gGroups = graph.svg.append("g").attr("class", "groups"); // the combined view's scheduler names
graph.groups = []; // the schedulers side by side (combined view), else empty
graph.gLinks = graph.svg.append("g").attr("class", "links");
graph.gNodes = graph.svg.append("g").attr("class", "nodes");
graph.nodeSel = graph.gNodes.selectAll("g.node");
graph.linkSel = graph.gLinks.selectAll("line.link");

graph.sim = d3
  .forceSimulation([])
  .force("charge", d3.forceManyBody().strength(chargeStrength).distanceMax(500))
  .force("x", d3.forceX(graph.width / 2))
  .force("y", d3.forceY(graph.height / 2))
  .force("collide", d3.forceCollide((d) => d.r + 10).iterations(2))
  .alphaDecay(0.03)
  .velocityDecay(0.45)
  .on("tick", graphTicked);

const arc = d3.arc();

// The combined view: each scheduler's hosts in a column of their own, named at its top.
function groupX(d) {
  const n = graph.groups.length;
  if (n < 2) return graph.width / 2;
  const i = Math.max(0, graph.groups.indexOf(d.host.scheduler));
  return (graph.width * (i + 0.5)) / n;
}

function centerForces() {
  // an ellipse in the panel's proportions rather than a disc in the middle of a wide panel
  const w = graph.width;
  const h = graph.height;
  const n = Math.max(1, graph.groups.length);
  const cw = w / n; // a column's width
  graph.sim.force("x").x(groupX).strength(n > 1 ? 0.25 : 0.06 * Math.min(1, h / cw));
  graph.sim.force("y").y(h / 2).strength(0.06 * Math.min(1, cw / h));
  graph.sim.force("charge").strength(chargeStrength);
  graph.gGroups
    .selectAll("text.group-label")
    .data(n > 1 ? graph.groups : [], (g) => g)
    .join((enter) => enter.append("text").attr("class", "group-label").attr("text-anchor", "middle"))
    .attr("data-scheduler", (g) => g)
    .attr("x", (g, i) => (w * (i + 0.5)) / n)
    .attr("y", 14)
    .text((g) => g);
}

function chargeStrength() {
  // few hosts spread over the panel, many hosts pack tighter
  const perNode = (graph.width * graph.height) / Math.max(1, graph.nodes.size);
  return -Math.max(25, Math.min(600, perNode * 0.004));
}

function nodeRadius(h) {
  const n = Math.max(1, graph.nodes.size);
  const maxR = Math.max(7, Math.min(30, Math.sqrt((graph.width * graph.height) / n) * 0.22));
  const m = Math.max(0, Number(h.max_jobs) || 0);
  // relative to the biggest host of the cluster: its area grows with its slots
  return Math.max(4, maxR * (0.35 + 0.65 * Math.min(1, Math.sqrt(m / graph.maxSlots))));
}

// "build101.example.lan" -> "build101" (an IP address stays whole)
function shortName(name) {
  if (/^[\d.]+$/.test(name) || name.includes(":")) return name;
  const i = name.indexOf(".");
  return i > 0 ? name.slice(0, i) : name;
}

function busyArc(d) {
  const h = d.host;
  const max = Number(h.max_jobs) || 0;
  const busy = Number(h.jobs_as_server) || 0;
  const frac = max > 0 ? Math.min(1, busy / max) : busy > 0 ? 1 : 0;
  return arc({ innerRadius: d.r + 1.5, outerRadius: d.r + 4, startAngle: 0, endAngle: 2 * Math.PI * frac }) || "";
}

function graphTicked() {
  const w = graph.width;
  const h = graph.height;
  for (const d of graph.nodes.values()) {
    d.x = Math.max(d.r + 4, Math.min(w - d.r - 4, d.x));
    d.y = Math.max(d.r + 4, Math.min(h - d.r - 16, d.y));
  }
  graph.nodeSel.attr("transform", (d) => `translate(${d.x.toFixed(1)},${d.y.toFixed(1)})`);
  graph.linkSel
    .attr("x1", (d) => d.source.x)
    .attr("y1", (d) => d.source.y)
    .attr("x2", (d) => d.target.x)
    .attr("y2", (d) => d.target.y);
}

function linkWidth(count) {
  return 1.5 + 2.2 * Math.sqrt(count - 1 + 1);
}

function graphLinks() {
  const pairs = new Map();
  for (const j of model.jobs.values()) {
    if (j.state !== "compiling") continue;
    const c = j.client_id;
    const s = j.server_id;
    if (c === null || c === undefined || s === null || s === undefined || c === s) continue;
    const source = graph.nodes.get(c);
    const target = graph.nodes.get(s);
    if (!source || !target) continue;
    const key = `${c}->${s}`;
    const p = pairs.get(key);
    if (p) p.count++;
    else pairs.set(key, { key, source, target, count: 1 });
  }
  return Array.from(pairs.values());
}

export function renderGraph() {
  const sim = graph.sim;
  let added = 0;
  let removed = 0;
  const groups = schedulers.view === "*" ? schedulers.order.slice() : [];
  if (groups.join("\n") !== graph.groups.join("\n")) {
    graph.groups = groups;
    graph.regroup = true;
  }
  const seen = new Set();
  for (const h of model.hosts.values()) {
    seen.add(h.id);
    let d = graph.nodes.get(h.id);
    if (!d) {
      const a = Math.random() * 2 * Math.PI;
      const rr = Math.min(graph.width, graph.height) * (0.15 + 0.25 * Math.random());
      d = { id: h.id, x: graph.width / 2 + rr * Math.cos(a), y: graph.height / 2 + rr * Math.sin(a), host: h, r: 6 };
      graph.nodes.set(h.id, d);
      added++;
    }
    d.host = h;
  }
  for (const id of graph.nodes.keys()) {
    if (!seen.has(id)) {
      graph.nodes.delete(id);
      removed++;
    }
  }
  // every node when their number or the size changed (radii depend on both), else only the
  // hosts that changed
  let maxSlots = 1;
  for (const d of graph.nodes.values()) maxSlots = Math.max(maxSlots, Number(d.host.max_jobs) || 0);
  const all = added || removed || graph.resized || dirty.hostsAll || maxSlots !== graph.maxSlots;
  graph.maxSlots = maxSlots;
  graph.resized = false;
  if (all) for (const d of graph.nodes.values()) d.r = nodeRadius(d.host);
  const nodes = Array.from(graph.nodes.values());
  graphEmpty.hidden = nodes.length > 0;
  const crowded = nodes.length > 40;
  if (crowded !== graph.crowded) {
    graph.crowded = crowded;
    graph.svg.classed("crowded", crowded);
  }

  graph.nodeSel = graph.gNodes
    .selectAll("g.node")
    .data(nodes, (d) => d.id)
    .join(
      (enter) => {
        const g = enter
          .append("g")
          .attr("class", "node")
          .attr("data-host-id", (d) => d.id)
          .attr("transform", (d) => `translate(${d.x},${d.y})`)
          .style("opacity", 0);
        g.append("circle").attr("class", "track");
        g.append("path").attr("class", "busy");
        g.append("circle").attr("class", "body").attr("r", 0);
        g.append("text").attr("class", "label").attr("text-anchor", "middle");
        g.append("title");
        g.filter((d) => d.host.scheduler !== undefined).attr("data-scheduler", (d) => d.host.scheduler);
        return g;
      },
      (update) => update,
      (exit) =>
        exit
          .classed("node", false)
          .classed("node-exit", true)
          .attr("data-host-id", null)
          .call((x) => x.transition().duration(500).style("opacity", 0).remove())
    );

  const ids = dirty.hostIds;
  updateNodes(all ? graph.nodeSel : graph.nodeSel.filter(function (d) {
    return ids.has(d.id) || this.__fresh === undefined;
  }));

  // client -> server links for running remote jobs
  graph.links = graphLinks();
  graph.linkSel = graph.gLinks
    .selectAll("line.link")
    .data(graph.links, (d) => d.key)
    .join(
      (enter) =>
        enter
          .append("line")
          .attr("class", "link")
          .attr("x1", (d) => d.source.x)
          .attr("y1", (d) => d.source.y)
          .attr("x2", (d) => d.target.x)
          .attr("y2", (d) => d.target.y)
          .attr("stroke-width", 0)
          .attr("stroke-opacity", 0)
          .call((e) => e.append("title")),
      (update) => update,
      (exit) =>
        exit
          .classed("link", false)
          .classed("link-exit", true)
          .call((x) => x.transition().duration(600).attr("stroke-opacity", 0).attr("stroke-width", 0).remove())
    );
  // only the links that are new or whose count changed get a transition
  graph.linkSel
    .filter(function (d) {
      return this.__count !== d.count;
    })
    .each(function (d) {
      this.__count = d.count;
      this.setAttribute("data-client-id", d.source.id);
      this.setAttribute("data-server-id", d.target.id);
      this.setAttribute("data-count", d.count);
      const n = d.count === 1 ? "1 job" : `${d.count} jobs`;
      this.firstChild.textContent = `${hostLabel(d.source.host)} → ${hostLabel(d.target.host)}: ${n}`;
    })
    .transition()
    .duration(450)
    .attr("stroke-width", (d) => linkWidth(d.count))
    .attr("stroke-opacity", 0.85);

  if (added || removed || graph.first || graph.regroup) {
    graph.regroup = false;
    sim.nodes(nodes);
    centerForces();
    if (graph.first && nodes.length) {
      // settle a first layout at once rather than exploding on the screen
      sim.alpha(1);
      const ticks = Math.max(60, Math.min(200, 300 - nodes.length));
      for (let i = 0; i < ticks; i++) sim.tick();
      sim.alpha(0.05).restart();
      graph.first = false;
    } else if (added) {
      sim.alpha(Math.max(sim.alpha(), Math.min(0.5, 0.1 + 0.02 * added))).restart();
    } else {
      sim.alpha(Math.max(sim.alpha(), 0.08)).restart();
    }
  }
  graphTicked();
}

function updateNodes(sel) {
  // transitions start only where a value really changed: restarting them at every delta
  // would keep them from ever arriving
  sel.each(function (d) {
    const h = d.host;
    const g = d3.select(this);
    const offline = h.online === false;
    this.__fresh = false;
    this.classList.toggle("offline", offline);
    this.classList.toggle("full", Number(h.load) >= 1000);
    const op = offline ? 0.22 : 1;
    if (this.__op !== op) {
      this.__op = op;
      g.transition("fade").duration(600).style("opacity", op);
    }
    const fill = offline ? "#555b66" : loadColor(h.load);
    if (this.__fill !== fill || this.__r !== d.r) {
      this.__fill = fill;
      this.__r = d.r;
      g.select("circle.body").transition("look").duration(500).attr("r", d.r).attr("fill", fill);
      g.select("circle.track").attr("r", d.r + 2.75);
      g.select("text.label").attr("y", d.r + 13);
    }
    g.select("path.busy").attr("d", busyArc(d));
    const name = hostLabel(h); // in the combined view with its scheduler's name
    const label = this.querySelector("text.label");
    const short = graph.crowded ? hostLabel(Object.assign({}, h, { name: shortName(h.name || `#${h.host_id ?? d.id}`) })) : name;
    if (label.textContent !== short) label.textContent = short;
    const state = offline ? "offline" : h.no_remote ? "online, no remote jobs" : "online";
    this.querySelector("title").textContent =
      `${name} (${h.ip || "?"}) ${state}\njobs ${h.jobs_as_server ?? 0}/${h.max_jobs ?? 0}, load ${h.load}`;
  });
}

export function resizeGraph() {
  const pw = graphEl.clientWidth;
  const ph = graphEl.clientHeight;
  const k = uiScale();
  const w = pw / k;
  const h = ph / k;
  if (!pw || !ph || (w === graph.width && h === graph.height)) return;
  graph.width = w;
  graph.height = h;
  graph.svg.attr("viewBox", `0 0 ${w} ${h}`).attr("width", pw).attr("height", ph);
  centerForces();
  graph.sim.alpha(Math.max(graph.sim.alpha(), 0.15)).restart();
  graph.resized = true;
  dirty.graph = true;
  schedule();
}
