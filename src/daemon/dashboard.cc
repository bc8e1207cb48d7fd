// The page at / of iobandd --http: live charts from /api/stats, once a
// second, drawn with the Chart.js the daemon serves at /chart.js. Rates are
// the differences of two snapshots over the time between them.
#include "daemon/http.h"

namespace ioband::daemon {

const std::string& dashboard_html() {
  static const std::string page = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ioband</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em}
#status{color:#666;margin-bottom:.6em}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em}
.card h2{font-size:1em;margin:.2em 0 .4em}
table{border-collapse:collapse;width:100%;margin-top:1em}
th,td{padding:.25em .6em;text-align:right;border-bottom:1px solid #eee}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
canvas{max-height:260px}
</style></head><body>
<h1>ioband</h1>
<div id="status">connecting…</div>
<div class="grid">
<div class="card"><h2>IOPS per group (dashed: limits)</h2><canvas id="iops"></canvas></div>
<div class="card"><h2>Bandwidth per group, MiB/s</h2><canvas id="bw"></canvas></div>
<div class="card"><h2>Latency p99 per group, ms (arrival to completion)</h2><canvas id="lat"></canvas></div>
<div class="card"><h2>Share of its device group: configured weight vs delivered IOPS</h2><canvas id="share"></canvas></div>
</div>
<table id="groups"><thead><tr><th>device</th><th>group</th><th>weight</th><th>IOPS</th><th>MiB/s</th>
<th>p50 ms</th><th>p99 ms</th><th>share conf.</th><th>share deliv.</th><th>held ms/s</th><th>queued</th><th>in flight</th><th>limit</th></tr></thead>
<tbody></tbody></table>
<script src="/chart.js"></script>
<script>
"use strict";
const WINDOW = 60;  // points kept per chart (one a second)
const palette = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf"];
let previous = null;
const series = new Map();  // "device/group" -> {iops:[], bw:[], lat:[]}
const labels = [];
const charts = {};

function line(id, yTitle) {
  if (typeof Chart === "undefined") return null;
  return new Chart(document.getElementById(id), {type: "line", data: {labels, datasets: []},
    options: {animation: false, responsive: true, interaction: {mode: "nearest"},
      scales: {y: {beginAtZero: true, title: {display: true, text: yTitle}}}, elements: {point: {radius: 0}}}});
}
function setup() {
  charts.iops = line("iops", "requests/s");
  charts.bw = line("bw", "MiB/s");
  charts.lat = line("lat", "ms");
  if (typeof Chart !== "undefined") {
    charts.share = new Chart(document.getElementById("share"), {type: "bar", data: {labels: [], datasets: [
      {label: "configured (weight)", data: [], backgroundColor: "#9ecae1"},
      {label: "delivered (IOPS)", data: [], backgroundColor: "#3182bd"}]},
      options: {animation: false, scales: {y: {beginAtZero: true, max: 1}}}});
  }
}
function ops(group) { return Object.values((group.observation || {}).ops || {}); }
function sum(list, f) { return list.reduce((a, x) => a + f(x), 0); }
function totals(group) {
  const o = ops(group);
  const hist = [];
  for (const op of o) op.duration_histogram.forEach((b, i) => { hist[i] = (hist[i] || 0) + b.count; });
  const held = Object.values((group.observation || {}).held || {});
  return {requests: sum(o, x => x.requests), bytes: sum(o, x => x.bytes), hist,
          bounds: o.length ? o[0].duration_histogram.map(b => b.le_ns) : [], held_ns: sum(held, x => x.ns)};
}
// The q-quantile of a histogram of differences, in ms (the bucket's upper bound).
function quantile(counts, bounds, q) {
  const n = counts.reduce((a, b) => a + b, 0);
  if (n === 0) return null;
  let seen = 0;
  for (let i = 0; i < counts.length; ++i) {
    seen += counts[i];
    if (seen >= q * n) return bounds[i] === null ? Infinity : bounds[i] / 1e6;
  }
  return null;
}
function dataset(chart, key, index, dashed) {
  let d = chart.data.datasets.find(x => x.label === key);
  if (!d) {
    d = {label: key, data: new Array(labels.length - 1).fill(null), borderColor: palette[index % palette.length],
         borderDash: dashed ? [6, 4] : [], borderWidth: dashed ? 1 : 2, fill: false};
    chart.data.datasets.push(d);
  }
  return d;
}
function update(now) {
  const dt = previous ? now.time - previous.time : 0;
  const before = new Map();
  if (previous) for (const d of previous.devices) for (const g of d.groups || []) before.set(d.name + "/" + g.name, totals(g));
  labels.push(new Date(now.time * 1000).toLocaleTimeString());
  if (labels.length > WINDOW) labels.shift();
  const rows = [];
  const share = {labels: [], configured: [], delivered: []};
  const byDeviceGroup = new Map();
  let index = 0;
  for (const d of now.devices) {
    const deviceLimit = d.limits && d.limits["iops-total"];
    if (charts.iops && deviceLimit) dataset(charts.iops, d.name + " limit (device)", index, true).data.push(deviceLimit);
    for (const g of d.groups || []) {
      const key = d.name + "/" + g.name;
      const t = totals(g), p = before.get(key);
      let iops = null, bw = null, p50 = null, p99 = null, held = null;
      if (p && dt > 0) {
        iops = (t.requests - p.requests) / dt;
        bw = (t.bytes - p.bytes) / dt / 1048576;
        held = (t.held_ns - p.held_ns) / dt / 1e6;
        const diff = t.hist.map((c, i) => c - (p.hist[i] || 0));
        p50 = quantile(diff, t.bounds, 0.5);
        p99 = quantile(diff, t.bounds, 0.99);
      }
      const limit = g.limits && g.limits["iops-total"];
      const limitText = limit ? `${limit} IOPS` : deviceLimit ? `device: ${deviceLimit} IOPS` : "";
      rows.push({device: d.name, group: g.name, weight: g.weight, iops, bw, p50, p99, conf: g.weight_share,
                 held, queued: g.queued, in_flight: g.in_flight, limit, limitText, dg: d.device_group_id, key});
      if (!byDeviceGroup.has(d.device_group_id)) byDeviceGroup.set(d.device_group_id, 0);
      byDeviceGroup.set(d.device_group_id, byDeviceGroup.get(d.device_group_id) + (iops || 0));
      if (charts.iops) {
        dataset(charts.iops, key, index).data.push(iops);
        if (limit) dataset(charts.iops, key + " limit", index, true).data.push(limit);
        dataset(charts.bw, key, index).data.push(bw);
        dataset(charts.lat, key, index).data.push(p99 === Infinity ? null : p99);
      }
      ++index;
    }
  }
  // The configured share, read against the delivered one: the weight over
  // the weights of the groups of its device group with I/O in this interval
  // (itself counted if idle: what it would be owed if it came now). Before
  // the first interval, over all groups (the daemon's weight_share).
  const busy = r => r.iops > 0 || r.queued > 0 || r.in_flight > 0;
  const busyWeight = new Map();
  for (const r of rows) if (busy(r)) busyWeight.set(r.dg, (busyWeight.get(r.dg) || 0) + r.weight);
  for (const r of rows) {
    const total = byDeviceGroup.get(r.dg);
    const weights = (busyWeight.get(r.dg) || 0) + (busy(r) ? 0 : r.weight);
    if (r.iops !== null && weights > 0) r.conf = r.weight / weights;
    r.deliv = r.iops === null || !total ? null : r.iops / total;
    share.labels.push(r.key);
    share.configured.push(r.conf);
    share.delivered.push(r.deliv);
  }
  for (const c of [charts.iops, charts.bw, charts.lat]) {
    if (!c) continue;
    for (const d of c.data.datasets) { while (d.data.length > labels.length) d.data.shift(); while (d.data.length < labels.length) d.data.push(null); }
    c.update();
  }
  if (charts.share) {
    charts.share.data.labels = share.labels;
    charts.share.data.datasets[0].data = share.configured;
    charts.share.data.datasets[1].data = share.delivered;
    charts.share.update();
  }
  const fmt = (v, digits) => v === null || v === undefined ? "–" : v === Infinity ? "&gt;2500" : Number(v).toFixed(digits);
  // Device names may hold any printable character (<, &, "): text, never markup.
  const esc = v => String(v).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
  document.querySelector("#groups tbody").innerHTML = rows.map(r =>
    `<tr data-device="${esc(r.device)}" data-group="${esc(r.group)}"><td>${esc(r.device)}</td><td>${esc(r.group)}</td><td>${r.weight}</td>` +
    `<td class="iops">${fmt(r.iops, 0)}</td><td>${fmt(r.bw, 1)}</td><td>${fmt(r.p50, 2)}</td><td>${fmt(r.p99, 2)}</td>` +
    `<td class="configured">${fmt(r.conf * 100, 1)}%</td><td class="delivered">${r.deliv === null ? "–" : fmt(r.deliv * 100, 1) + "%"}</td>` +
    `<td>${fmt(r.held, 1)}</td><td>${r.queued}</td><td>${r.in_flight}</td><td>${esc(r.limitText)}</td></tr>`).join("");
  const unscheduled = now.devices.filter(d => d.device_group_id < 0).map(d => d.name);
  document.getElementById("status").textContent = `iobandd ${now.version} · ${now.devices.length} device(s) · ` +
    `updated ${new Date(now.time * 1000).toLocaleTimeString()}` + (now.complete ? "" : " · a reactor did not answer") +
    (unscheduled.length ? ` · unscheduled exports: ${unscheduled.join(", ")}` : "") +
    (typeof Chart === "undefined" ? " · Chart.js not available (install libjs-chart.js)" : "");
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  previous = now;
}
async function tick() {
  try {
    // The daemon answers a second after the previous sample: rates over a
    // steady interval, even where timers are not real time.
    const after = previous ? `?after=${(previous.time + 1).toFixed(3)}` : "";
    const response = await fetch("/api/stats" + after, {cache: "no-store"});
    update(await response.json());
  } catch (e) {
    document.getElementById("status").textContent = "cannot reach iobandd: " + e;
  }
  setTimeout(tick, 1000);
}
setup();
tick();
</script></body></html>
)HTML";
  return page;
}

}  // namespace ioband::daemon
