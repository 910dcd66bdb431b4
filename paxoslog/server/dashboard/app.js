// paxoslog live dashboard: no framework, no build step, nothing loaded from elsewhere.
//
// Three layers, so that the data can come from somewhere else without touching the rest:
//
//   source  (LiveSource)     produces snapshots {overview, entries, at, live} or {error, at}:
//                            a tail of the node's log over its WebSocket endpoint
//                            (/api/v1/ws, docs/websocket.md) says when something committed,
//                            and the page refreshes then (at most every LIVE_MIN_MS); the
//                            poll every POLL_MS stays as the heartbeat (metrics, roles) and
//                            as the fallback while the WebSocket is down (PollingSource);
//   model   (Model)          turns snapshots into what is shown: nodes, leader, slots,
//                            rates and quantiles from counter differences, the timeline;
//   view    (render*)        draws the model into the page (DOM and canvas).
//
// A source only needs subscribe(listener) and start(); anything that calls the listener
// with the same snapshot shape can replace PollingSource.
"use strict";

const POLL_MS = 1000;
const LIVE_MIN_MS = 200;        // refreshes driven by committed entries: at most this often
const RECONNECT_MS = 2000;
const HISTORY_S = 120;          // chart window
const SLOTS_SHOWN = 80;

// ------------------------------------------------------------------ source

// Where the cluster requires tokens, open /dashboard#token=<admin token>: the token moves
// from the address bar into this tab's sessionStorage and goes with every request: in the
// Authorization header of the fetch calls, and as a subprotocol of the WebSocket (a browser
// sets no headers on a WebSocket upgrade; docs/websocket.md, "Tokens").
const TOKEN_KEY = "paxoslog-token";
(function takeTokenFromFragment() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  if (fragment.get("token")) {
    window.sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }
})();

function currentToken() {
  return window.sessionStorage.getItem(TOKEN_KEY);
}

// The WebSocket subprotocols to offer: the JSON one, which the node selects, and the token
// as "paxoslog.bearer.<base64url(token), unpadded>", which it reads and never selects.
function webSocketProtocols() {
  const protocols = ["paxoslog.v1.json"];
  const token = currentToken();
  if (token) {
    let binary = "";
    for (const byte of new TextEncoder().encode(token)) {
      binary += String.fromCharCode(byte);
    }
    const encoded = btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    protocols.push(`paxoslog.bearer.${encoded}`);
  }
  return protocols;
}

async function getJSON(path) {
  const headers = {Accept: "application/json"};
  const token = currentToken();
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  const response = await fetch(path, {cache: "no-store", headers});
  if (!response.ok) {
    const error = new Error(`${path}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// The log's entries need the admin role (they carry client ids): with a read token the
// page shows everything else, and says why the slots are missing.
async function getEntries() {
  try {
    return await getJSON("/api/v1/log/entries");
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      return {refused: error.status, entries: []};
    }
    throw error;
  }
}

class PollingSource {
  constructor(intervalMs) {
    this.intervalMs = intervalMs;
    this.listeners = [];
    this.timer = null;
  }

  subscribe(listener) {
    this.listeners.push(listener);
  }

  start() {
    this.poll();
  }

  emit(snapshot) {
    for (const listener of this.listeners) {
      try {
        listener(snapshot);
      } catch (error) {
        console.error("dashboard listener failed", error);
      }
    }
  }

  async poll() {
    const at = Date.now() / 1000;
    try {
      // No range: the node answers its newest 100 entries (and the slots above them).
      const [overview, entries] = await Promise.all([
        getJSON("/api/v1/cluster/overview"),
        getEntries(),
      ]);
      this.emit({overview, entries, at});
    } catch (error) {
      this.emit({error: String(error.message || error), at});
    } finally {
      this.timer = setTimeout(() => this.poll(), this.intervalMs);
    }
  }
}

// The node's log as it commits: a tail from "now" (no history; the page reads that over
// HTTP).  Each entries message asks for a refresh; one in flight absorbs the others.
class LiveSource extends PollingSource {
  constructor(intervalMs, minMs) {
    super(intervalMs);
    this.minMs = minMs;
    this.live = false;              // the tail is open
    this.streamMessages = 0;        // entries messages received (tests read it)
    this.liveRefreshes = 0;         // polls a committed entry started
    this.polling = false;
    this.wanted = false;
    this.lastPoll = 0;
    this.socket = null;
  }

  start() {
    this.connect();
    super.start();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let socket;
    try {
      socket = new WebSocket(`${scheme}//${location.host}/api/v1/ws`, webSocketProtocols());
    } catch (error) {
      setTimeout(() => this.connect(), RECONNECT_MS);
      return;
    }
    this.socket = socket;
    socket.onopen = () => socket.send(JSON.stringify({id: 1, op: "tail"}));
    socket.onmessage = (event) => {
      for (const m of [].concat(JSON.parse(event.data))) {
        if (m.id === 1) {
          this.live = m.status === 200;
        } else if (m.type === "entries") {
          this.streamMessages += 1;
          this.kick();
        } else if (m.type === "end") {
          socket.close();             // slow_consumer, compacted, ...: start again from now
        }
      }
    };
    socket.onclose = () => {
      this.live = false;
      this.socket = null;
      setTimeout(() => this.connect(), RECONNECT_MS);
    };
  }

  // Something committed: refresh now, or as soon as LIVE_MIN_MS allows.
  kick() {
    if (this.polling) {
      this.wanted = true;
      return;
    }
    const wait = this.lastPoll + this.minMs - Date.now();
    clearTimeout(this.timer);
    if (wait > 0) {
      this.wanted = true;
      this.timer = setTimeout(() => this.poll(), wait);
    } else {
      this.liveRefreshes += 1;
      this.poll();
    }
  }

  emit(snapshot) {
    snapshot.live = this.live;
    super.emit(snapshot);
  }

  async poll() {
    clearTimeout(this.timer);
    if (this.wanted) {
      this.liveRefreshes += 1;
    }
    this.polling = true;
    this.wanted = false;
    this.lastPoll = Date.now();
    try {
      await super.poll();           // schedules the heartbeat poll
    } finally {
      this.polling = false;
    }
    if (this.wanted) {
      this.kick();
    }
  }
}

// ------------------------------------------------------------------ model

function quantile(buckets, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) {
    return null;
  }
  const target = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    const before = seen;
    seen += counts[i];
    if (seen >= target && counts[i] > 0) {
      const low = i === 0 ? 0 : buckets[i - 1];
      const high = i < buckets.length ? buckets[i] : buckets[buckets.length - 1] * 2;
      return low + (high - low) * ((target - before) / counts[i]);
    }
  }
  return buckets[buckets.length - 1];
}

function histogramDelta(now, before) {
  if (!before || now.counts.length !== before.counts.length) {
    return null;
  }
  const counts = now.counts.map((c, i) => c - before.counts[i]);
  return counts.some((c) => c < 0) ? null : {buckets: now.buckets, counts};
}

function addCounts(total, delta) {
  if (!delta) {
    return total;
  }
  if (!total) {
    return {buckets: delta.buckets, counts: delta.counts.slice()};
  }
  delta.counts.forEach((c, i) => { total.counts[i] += c; });
  return total;
}

class Model {
  constructor() {
    this.previous = new Map();      // node id -> {metrics, at}
    this.series = {writes: [], reads: [], p50: [], p99: [], fsync50: [], fsync99: []};
    this.events = new Map();        // dedupe key -> event
    this.lastGood = null;
    this.error = null;
    this.view = null;
  }

  update(snapshot) {
    if (snapshot.error) {
      this.error = snapshot.error;
      this.errorAt = snapshot.at;
      return this.view;
    }
    this.error = null;
    this.live = Boolean(snapshot.live);
    this.lastGood = snapshot.at;
    const {overview, entries} = snapshot;
    const statuses = overview.nodes.filter((n) => n.reachable && n.status);
    const served = overview.nodes.find((n) => n.id === overview.served_by).status;
    let leaderStatus = null;
    for (const n of statuses) {
      if (n.status.role === "leader" && (!leaderStatus || n.status.term > leaderStatus.term)) {
        leaderStatus = n.status;
      }
    }
    const leader = leaderStatus ? leaderStatus.node_id : served.leader;
    const topCommit = Math.max(...statuses.map((n) => n.status.commit_index));
    const leaderView = new Map(((leaderStatus || served).nodes || []).map((n) => [n.id, n]));
    const nodes = overview.nodes.map((n) => {
      const s = n.status;
      const seen = leaderView.get(n.id) || {};
      return {
        id: n.id,
        reachable: n.reachable,
        error: n.error,
        role: s ? s.role : "down",
        term: s ? s.term : null,
        commit: s ? s.commit_index : null,
        applied: s ? s.applied_index : null,
        lag: s ? Math.max(0, topCommit - s.applied_index) : null,
        heartbeat: n.id === leader ? 0 : seen.last_heartbeat,
        api: seen.api || (s && s.nodes.find((m) => m.id === n.id) || {}).api,
        isLeader: n.id === leader,
        uptime: s ? s.uptime_s : null,
      };
    });
    this.updateRates(overview, statuses, served, snapshot.at);
    for (const n of statuses) {
      for (const e of n.status.events || []) {
        const key = e.kind === "leader" ? `leader:${e.term}:${e.leader}` : `membership:${e.index}`;
        const known = this.events.get(key);
        if (!known || e.time < known.time) {
          this.events.set(key, e);
        }
      }
    }
    this.view = {
      cluster: served.cluster, protocol: served.protocol, servedBy: overview.served_by,
      leader, term: leaderStatus ? leaderStatus.term : served.term, nodes,
      slots: this.slots(entries, served.protocol),
      logRange: entries.refused ? "not shown: the log's entries need an admin token"
        : entries.entries.length
          ? `${entries.entries[0].index}..${entries.entries[entries.entries.length - 1].index}`
          : "empty",
      series: this.series,
      events: [...this.events.values()].sort((a, b) => b.time - a.time),
    };
    return this.view;
  }

  updateRates(overview, statuses, served, at) {
    let reads = 0, readsKnown = false, writeLatency = null, fsync = null, writes = null;
    for (const n of statuses) {
      const m = n.status.metrics;
      if (!m) {
        continue;
      }
      const before = this.previous.get(n.id);
      if (before && before.uptime <= n.status.uptime_s) {
        const dt = m.time - before.metrics.time;
        if (dt > 0) {
          reads += Math.max(0, m.reads_answered - before.metrics.reads_answered) / dt;
          readsKnown = true;
          if (n.id === served.node_id) {
            writes = Math.max(0, m.commands_applied - before.metrics.commands_applied) / dt;
          }
          writeLatency = addCounts(writeLatency, histogramDelta(m.write_latency,
                                                                before.metrics.write_latency));
          fsync = addCounts(fsync, histogramDelta(m.fsync, before.metrics.fsync));
        }
      }
      this.previous.set(n.id, {metrics: m, uptime: n.status.uptime_s});
    }
    const push = (name, value) => {
      const list = this.series[name];
      list.push({t: at, v: value});
      while (list.length && list[0].t < at - HISTORY_S) {
        list.shift();
      }
    };
    if (writes !== null) {
      push("writes", writes);
    }
    if (readsKnown) {
      push("reads", reads);
    }
    if (writeLatency) {
      push("p50", quantile(writeLatency.buckets, writeLatency.counts, 0.5));
      push("p99", quantile(writeLatency.buckets, writeLatency.counts, 0.99));
    }
    if (fsync) {
      push("fsync50", quantile(fsync.buckets, fsync.counts, 0.5));
      push("fsync99", quantile(fsync.buckets, fsync.counts, 0.99));
    }
  }

  slots(entries, protocol) {
    return entries.entries.slice(-SLOTS_SHOWN).map((e) => {
      let kind = e.state;                         // applied, committed, pending, hole
      if (e.state === "applied") {
        kind = e.kind === "noop" ? "noop" : e.kind === "config" ? "config" : "applied";
      }
      let note = "";
      if (e.state === "hole") {
        note = "hole: no value chosen or known here yet";
      } else if (e.kind === "noop") {
        note = protocol === "multipaxos" ? "no-op: a hole filled by a new leader"
                                         : "no-op: a new leader's first entry";
      }
      return {index: e.index, term: e.term, state: e.state, kind, note, command: e.command};
    });
  }
}

// ------------------------------------------------------------------ view

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") {
      node.className = value;
    } else {
      node.setAttribute(name, value);
    }
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function ms(value) {
  if (value === null || value === undefined) {
    return "-";
  }
  return value < 0.001 ? `${(value * 1e6).toFixed(0)} us` : `${(value * 1000).toFixed(1)} ms`;
}

function renderHeader(view, model) {
  document.getElementById("cluster-name").textContent = view.cluster;
  document.getElementById("protocol").textContent = view.protocol;
  const leader = document.getElementById("leader");
  leader.textContent = view.leader ? `node ${view.leader}` : "none";
  leader.dataset.leader = view.leader || "";
  document.getElementById("term").textContent = view.term;
  document.getElementById("served-by").textContent = view.servedBy;
  document.querySelector(".slot-key.noop").textContent =
    view.protocol === "multipaxos" ? "no-op fill" : "leader no-op";
}

function renderConnection(model) {
  const conn = document.getElementById("connection");
  if (model.error) {
    conn.dataset.state = "stale";
    const since = model.lastGood ? new Date(model.lastGood * 1000).toLocaleTimeString() : "-";
    conn.textContent = `no answer (${model.error}); last update ${since}`;
  } else {
    conn.dataset.state = "live";
    conn.dataset.stream = model.live ? "websocket" : "polling";
    conn.textContent = model.live ? "live (WebSocket)" : "live (polling)";
  }
}

function renderNodes(view) {
  const box = document.getElementById("nodes");
  box.replaceChildren(...view.nodes.map((n) => {
    const facts = [
      ["term", n.term ?? "-"], ["commit", n.commit ?? "-"], ["applied", n.applied ?? "-"],
      ["lag", n.lag ?? "-"],
      ["heartbeat", n.isLeader ? "leads" : n.heartbeat == null ? "-" : `${n.heartbeat} ms ago`],
      ["reachable", n.reachable ? "yes" : `no${n.error ? ` (${n.error})` : ""}`],
      ["api", n.api || "-"],
    ];
    const dl = el("dl");
    for (const [name, value] of facts) {
      dl.append(el("dt", {}, name), el("dd", {"data-fact": name}, value));
    }
    return el("div", {class: "node", "data-node-id": n.id, "data-role": n.reachable ? n.role : "down",
                      "data-reachable": String(n.reachable)},
              el("h3", {}, `node ${n.id}`,
                 el("span", {class: "role"}, n.reachable ? n.role : "unreachable")),
              dl);
  }));
}

function renderSlots(view) {
  document.getElementById("log-range").textContent = view.logRange;
  const detail = document.getElementById("slot-detail");
  const box = document.getElementById("slots");
  box.replaceChildren(...view.slots.map((s) => {
    const slot = el("div", {class: `slot ${s.kind}`, "data-index": s.index, "data-kind": s.kind,
                            title: `#${s.index}`});
    slot.addEventListener("mouseenter", () => {
      const command = s.command === undefined ? "" : `\n${JSON.stringify(s.command)}`;
      detail.textContent = `#${s.index}  term ${s.term ?? "-"}  ${s.state}` +
                           `${s.note ? `  (${s.note})` : ""}${command}`;
    });
    return slot;
  }));
}

function drawChart(id, lines, format) {
  const canvas = document.getElementById(id);
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4, left = 46;
  ctx.clearRect(0, 0, w, h);
  const points = lines.flatMap((line) => line.points.filter((p) => p.v !== null));
  const now = Date.now() / 1000;
  const top = Math.max(...points.map((p) => p.v), 0) * 1.15 || 1;
  ctx.fillStyle = "#6b7480";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(format(top), 2, 12);
  ctx.fillText(format(0), 2, h - pad);
  ctx.strokeStyle = "#e4e7eb";
  ctx.beginPath();
  ctx.moveTo(left, h - pad);
  ctx.lineTo(w, h - pad);
  ctx.stroke();
  for (const line of lines) {
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    for (const p of line.points) {
      if (p.v === null) {
        continue;
      }
      const x = left + (w - left) * (1 - (now - p.t) / HISTORY_S);
      const y = h - pad - (h - 2 * pad) * (p.v / top);
      if (started) {
        ctx.lineTo(x, y);
      } else {
        ctx.moveTo(x, y);
        started = true;
      }
    }
    ctx.stroke();
  }
}

function last(series) {
  return series.length ? series[series.length - 1].v : null;
}

function renderCharts(view) {
  const s = view.series;
  const rate = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
  drawChart("chart-writes", [{points: s.writes, color: "#1f6feb"}], rate);
  drawChart("chart-reads", [{points: s.reads, color: "#2d9d5a"}], rate);
  drawChart("chart-latency", [{points: s.p50, color: "#1f6feb"}, {points: s.p99, color: "#d9534f"}], ms);
  drawChart("chart-fsync", [{points: s.fsync50, color: "#7d53c9"}, {points: s.fsync99, color: "#d9534f"}], ms);
  const show = (id, text) => { document.getElementById(id).textContent = text; };
  show("writes-now", last(s.writes) === null ? "-" : rate(last(s.writes)));
  show("reads-now", last(s.reads) === null ? "-" : rate(last(s.reads)));
  show("latency-now", `${ms(last(s.p50))} / ${ms(last(s.p99))}`);
  show("fsync-now", `${ms(last(s.fsync50))} / ${ms(last(s.fsync99))}`);
}

function describeEvent(e) {
  if (e.kind === "leader") {
    return e.leader == null ? `term ${e.term}: no leader`
                            : `term ${e.term}: node ${e.leader} leads` +
                              (e.previous != null ? ` (was node ${e.previous})` : "");
  }
  const parts = [`index ${e.index}: voters ${e.voters.join(",")}`];
  if (e.outgoing.length) parts.push(`joint with ${e.outgoing.join(",")}`);
  if (e.learners.length) parts.push(`learners ${e.learners.join(",")}`);
  if (e.added.length) parts.push(`added ${e.added.join(",")}`);
  if (e.removed.length) parts.push(`removed ${e.removed.join(",")}`);
  return parts.join("; ");
}

function renderTimeline(view) {
  const list = document.getElementById("events");
  list.replaceChildren(...view.events.slice(0, 100).map((e) =>
    el("li", {"data-kind": e.kind},
       el("time", {}, new Date(e.time * 1000).toLocaleTimeString()), describeEvent(e))));
  const canvas = document.getElementById("timeline");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const now = Date.now() / 1000;
  const oldest = view.events.length ? view.events[view.events.length - 1].time : now - 60;
  const span = Math.max(60, now - oldest + 5);
  ctx.strokeStyle = "#d9dde3";
  ctx.beginPath();
  ctx.moveTo(0, h / 2);
  ctx.lineTo(w, h / 2);
  ctx.stroke();
  ctx.font = "11px system-ui, sans-serif";
  const left = 40, right = 40;                    // room for the labels at both ends
  for (const e of view.events) {
    const x = left + (w - left - right) * (1 - (now - e.time) / span);
    ctx.fillStyle = e.kind === "leader" ? "#1f6feb" : "#7d53c9";
    ctx.fillRect(x - 2, e.kind === "leader" ? 8 : h / 2 + 4, 4, h / 2 - 12);
    ctx.fillText(e.kind === "leader" ? `n${e.leader ?? "-"}` : `#${e.index}`, x + 3,
                 e.kind === "leader" ? 18 : h - 8);
  }
  ctx.fillStyle = "#6b7480";
  ctx.fillText(`-${Math.round(span)} s`, 2, h - 4);
  ctx.fillText("now", w - 24, h - 4);
}

function render(model) {
  renderConnection(model);
  const view = model.view;
  if (!view) {
    return;
  }
  renderHeader(view, model);
  renderNodes(view);
  renderSlots(view);
  renderCharts(view);
  renderTimeline(view);
}

// ------------------------------------------------------------------ wiring

const model = new Model();
const source = new LiveSource(POLL_MS, LIVE_MIN_MS);
source.subscribe((snapshot) => {
  model.update(snapshot);
  render(model);
});
window.paxoslogDashboard = {model, source};   // for tests and the browser console
source.start();
