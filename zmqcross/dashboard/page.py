"""The dashboard's one page: HTML, CSS and JavaScript in one string, so it ships inside the package.

The script fetches ``/api/fleet`` about once a second and rebuilds the fleet's part of the
DOM from it (no page reload). Every value is written with ``textContent``, never
``innerHTML``: guild names and error messages come from the fleet. Numbers a test or a
script may want to read carry element ids and ``data-*`` attributes (``#total-guilds
[data-value]``, ``tr.cluster[data-cluster][data-state][data-guilds]``, ``tr.cluster-error``
under a cluster with a ``last_error``, ``#guild-result[data-status]``, ``#identify-waiting
[data-value]``, ``#session-budget[data-value]``); ``body[data-loaded]``
turns true after the first snapshot is shown.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>zmqcross fleet</title>
<style>
  :root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --dim: #656d76; --line: #d0d7de; }
  * { box-sizing: border-box; }
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328;
         background: #f6f8fa; }
  header { display: flex; align-items: baseline; gap: 1rem; padding: .8rem 1.2rem; background: #24292f;
           color: #fff; }
  header h1 { font-size: 1.1rem; margin: 0; }
  header .meta { color: #c9d1d9; font-size: .85rem; }
  #conn.live { color: #7ee787; } #conn.error { color: #ff938a; }
  main { padding: 1rem 1.2rem; max-width: 1200px; }
  .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: .6rem; }
  .card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .5rem .7rem; }
  .card .label { color: var(--dim); font-size: .78rem; text-transform: uppercase; letter-spacing: .03em; }
  .card .value { font-size: 1.35rem; font-weight: 600; font-variant-numeric: tabular-nums; }
  #alerts { list-style: none; padding: 0; margin: .8rem 0; }
  #alerts li { padding: .35rem .6rem; border-radius: 4px; margin-bottom: .25rem; font-weight: 600; }
  #alerts li.bad { background: #ffebe9; color: var(--bad); }
  #alerts li.warn { background: #fff8c5; color: var(--warn); }
  #alerts li.ok { background: #dafbe1; color: var(--ok); }
  section.machine, section.box { background: #fff; border: 1px solid var(--line); border-radius: 6px;
                                 margin: .8rem 0; }
  section h2 { font-size: .95rem; margin: 0; padding: .5rem .7rem; border-bottom: 1px solid var(--line);
               display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; }
  section h2 .sub { color: var(--dim); font-weight: 400; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: .3rem .7rem; border-bottom: 1px solid #eaeef2; }
  th { color: var(--dim); font-weight: 500; font-size: .8rem; }
  tr:last-child td { border-bottom: 0; }
  .badge { display: inline-block; padding: 0 .45rem; border-radius: 999px; font-size: .75rem; font-weight: 700;
           text-transform: uppercase; border: 1px solid currentColor; }
  .s-ready, .b-ok { color: var(--ok); }
  .s-starting, .s-retiring, .s-stopping, .b-warn { color: var(--warn); }
  .s-failed, .s-stopped, .s-down, .b-bad { color: var(--bad); }
  tr.not-ready td { background: #fff5f5; }
  form { display: flex; gap: .5rem; padding: .6rem .7rem; }
  input { flex: 1; font: inherit; padding: .3rem .5rem; border: 1px solid var(--line); border-radius: 4px; }
  button { font: inherit; padding: .3rem .8rem; border-radius: 4px; border: 1px solid var(--line);
           background: #f6f8fa; cursor: pointer; }
  #guild-result { padding: 0 .7rem .6rem; }
  #guild-result[data-status="error"] .headline { color: var(--bad); font-weight: 600; }
  #guild-result[data-status="ok"] .headline { color: var(--ok); font-weight: 600; }
  pre { background: #f6f8fa; padding: .5rem; border-radius: 4px; overflow: auto; max-height: 18rem; margin: .4rem 0 0; }
  .dim { color: var(--dim); }
  #shards { display: flex; flex-wrap: wrap; gap: 3px; padding: .6rem .7rem; }
  .shard { min-width: 1.7rem; height: 1.7rem; padding: 0 .2rem; font-size: .7rem; font-weight: 600; color: #fff;
           display: flex; align-items: center; justify-content: center; border-radius: 3px; }
  .sh-ready { background: var(--ok); }
  .sh-waiting, .sh-identifying, .sh-connecting { background: var(--warn); }
  .sh-disconnected, .sh-unknown { background: var(--bad); }
</style>
</head>
<body data-loaded="false" data-refreshes="0">
<header>
  <h1>zmqcross fleet</h1>
  <span class="meta">plan <span id="plan-version">?</span></span>
  <span class="meta" id="conn">connecting</span>
  <span class="meta" id="updated"></span>
</header>
<main>
  <div class="cards">
    <div class="card"><div class="label">machines</div><div class="value" id="total-machines">-</div></div>
    <div class="card"><div class="label">clusters ready</div>
      <div class="value"><span id="ready-clusters">-</span> / <span id="total-clusters">-</span></div></div>
    <div class="card"><div class="label">shards hosted</div>
      <div class="value"><span id="total-shards">-</span> / <span id="plan-shards">-</span></div></div>
    <div class="card"><div class="label">guilds</div><div class="value" id="total-guilds">-</div></div>
    <div class="card"><div class="label">restarts</div><div class="value" id="total-restarts">-</div></div>
    <div class="card"><div class="label">eval p50</div><div class="value" id="eval-p50">-</div></div>
    <div class="card"><div class="label">eval p99</div><div class="value" id="eval-p99">-</div></div>
    <div class="card"><div class="label">status query</div><div class="value" id="status-ms">-</div></div>
    <div class="card"><div class="label">IDENTIFY queue</div><div class="value" id="identify-waiting">-</div></div>
    <div class="card"><div class="label">session budget</div><div class="value" id="session-budget">-</div></div>
  </div>
  <ul id="alerts"></ul>
  <section class="box">
    <h2>Shards <span class="sub">one cell per shard, coloured by state; hover for latency and cluster</span></h2>
    <div id="shards"></div>
  </section>
  <section class="box">
    <h2>Guild lookup <span class="sub">request_to_guild, answered by the cluster that holds it</span></h2>
    <form id="guild-form">
      <input id="guild-input" name="guild" placeholder="guild id" inputmode="numeric" autocomplete="off">
      <button type="submit">Look up</button>
    </form>
    <div id="guild-result" data-status="idle"></div>
  </section>
  <div id="machines"></div>
  <section class="box" id="others-box" hidden>
    <h2>Other clients</h2>
    <table><tbody id="others"></tbody></table>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
// Seconds a shard may be down before the page raises an alert (?shard_alert=S changes it).
const SHARD_ALERT_AFTER = Number(new URLSearchParams(location.search).get("shard_alert") || 10);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function setValue(id, value, text) {
  const node = $(id);
  node.dataset.value = value === null || value === undefined ? "" : String(value);
  node.textContent = text !== undefined ? text : (value === null || value === undefined ? "-" : String(value));
}

const ms = (value) => value === null || value === undefined ? "-" : value.toFixed(value < 10 ? 2 : 1) + " ms";

function seconds(value) {
  if (value === null || value === undefined) return "-";
  if (value < 60) return value.toFixed(1) + " s";
  if (value < 3600) return Math.floor(value / 60) + " min";
  return (value / 3600).toFixed(1) + " h";
}

function badge(text, kind) { return el("span", {class: "badge " + kind}, text); }

function isMachine(m) {
  return m.agent === "bot" || m.clusters.length > 0 || m.standby || m.plan_version !== null;
}

function clusterRow(machine, c, answered, takenAt) {
  const age = c.last_heartbeat === null ? null : Math.max(takenAt - c.last_heartbeat, 0);
  const evalCell = answered === undefined ? el("span", {class: "dim"}, "-")
    : answered.answered ? badge("answered", "b-ok")
    : badge("no answer: " + answered.error.code, "b-bad");
  return el("tr", {
      class: "cluster" + (c.state === "ready" ? "" : " not-ready"),
      "data-cluster": c.id, "data-machine": machine.id, "data-state": c.state,
      "data-ready": c.state === "ready", "data-guilds": c.guilds === null ? "" : c.guilds,
      "data-restarts": c.restarts, "data-shards": c.shards.join(","),
      "data-answered": answered === undefined ? "" : answered.answered,
    },
    el("td", {}, "cluster " + c.id),
    el("td", {}, c.shards.join(", ")),
    el("td", {}, badge(c.state, "s-" + c.state), c.live === false ? badge("held", "b-warn") : null),
    el("td", {}, c.pid === null ? "-" : c.pid),
    el("td", {class: "guilds"}, c.guilds === null ? "-" : c.guilds),
    el("td", {class: "restarts"}, c.restarts),
    el("td", {}, seconds(c.uptime)),
    el("td", {class: "heartbeat"}, seconds(age)),
    el("td", {}, evalCell));
}

const HEAD = ["cluster", "shards", "state", "pid", "guilds", "restarts", "uptime", "heartbeat age", "eval"];

function machineSection(m, answeredById, takenAt) {
  const title = el("h2", {}, m.id, el("span", {class: "sub"}, m.address || ""));
  if (m.standby) title.append(badge("standby", "b-warn"));
  if (m.stale) title.append(badge("stale plan " + (m.plan_version || "?"), "b-bad"));
  if (m.leaving) title.append(badge("leaving", "b-warn"));
  if (m.stalled) title.append(badge("stalled", "b-bad"), el("span", {class: "sub"}, m.stalled));
  if (m.error) title.append(badge("no answer", "b-bad"), el("span", {class: "sub"}, m.error));
  const body = el("tbody");
  for (const c of m.clusters) {
    body.append(clusterRow(m, c, answeredById.get(c.id), takenAt));
    if (c.last_error) {  // why it last stopped: its traceback's last lines, or its exit code
      body.append(el("tr", {class: "cluster-error", "data-cluster": c.id, "data-machine": m.id},
        el("td", {colspan: HEAD.length}, el("pre", {}, c.last_error))));
    }
  }
  if (!m.clusters.length) {
    body.append(el("tr", {}, el("td", {colspan: HEAD.length, class: "dim"},
      m.standby ? "standby: runs no cluster until one is handed over" : "no clusters")));
  }
  const head = el("tr", {}, ...HEAD.map((h) => el("th", {}, h)));
  return el("section", {
      class: "machine", "data-machine": m.id, "data-agent": m.agent, "data-standby": m.standby,
      "data-stale": m.stale, "data-leaving": m.leaving, "data-error": m.error || "",
    }, title, el("table", {}, el("thead", {}, head), body));
}

function render(snap) {
  document.body.dataset.refreshes = String(snap.probes);
  $("updated").textContent = "updated " + new Date(snap.taken_at * 1000).toLocaleTimeString();
  const conn = $("conn");
  const alerts = [];
  if (snap.error) {
    conn.className = "meta error";
    conn.textContent = "no fleet status: " + snap.error.message;
    alerts.push(["bad", "The bridge did not answer: " + snap.error.message]);
  } else {
    conn.className = "meta live";
    conn.textContent = "live";
  }
  const age = Date.now() / 1000 - snap.taken_at;
  if (age > 5 * snap.interval + 2) {  // the probe is stuck (bridge slow or gone): say so
    conn.className = "meta error";
    conn.textContent = "no fresh numbers for " + age.toFixed(0) + " s";
  }
  const lat = snap.latency;
  setValue("eval-p50", lat.p50_ms === null ? null : lat.p50_ms.toFixed(3), ms(lat.p50_ms));
  setValue("eval-p99", lat.p99_ms === null ? null : lat.p99_ms.toFixed(3), ms(lat.p99_ms));
  $("eval-p50").title = lat.samples + " of the last " + lat.window + " evals of '" + lat.script + "'";
  setValue("status-ms", snap.status_ms.toFixed(3), ms(snap.status_ms));
  if (lat.error) alerts.push(["bad", "broadcast_eval failed: " + lat.error.message]);
  const fleet = snap.fleet, sum = snap.summary;
  const answeredById = new Map(lat.clusters.map((a) => [a.id, a]));
  if (fleet) {
    $("plan-version").textContent = fleet.plan_version;
    setValue("total-machines", sum.machines);
    setValue("total-clusters", fleet.total_clusters);
    setValue("ready-clusters", sum.ready);
    setValue("total-shards", sum.shards);
    setValue("plan-shards", fleet.total_shards);
    setValue("total-guilds", sum.guilds);
    setValue("total-restarts", sum.restarts);
    const queue = fleet.identify;
    if (queue) {
      setValue("identify-waiting", queue.waiting);
      $("identify-waiting").title = queue.granted + " granted, " + queue.held + " held; max_concurrency "
        + queue.max_concurrency + ", one per " + queue.interval + " s per bucket";
      const budget = queue.budget;
      setValue("session-budget", budget ? budget.remaining + " / " + budget.total : "not counted");
      if (queue.holding) alerts.push(["bad", "IDENTIFY queue HOLDS every shard: " + queue.holding]);
      for (const b of queue.buckets) {
        alerts.push(["warn", "bucket " + b.bucket + ": shards " + b.waiting.join(", ") + " wait for their IDENTIFY turn"]);
      }
    }
    for (const id of sum.unassigned) alerts.push(["bad", "cluster " + id + " is DOWN: no machine runs it"]);
    for (const id of sum.down) {
      if (!sum.unassigned.includes(id)) alerts.push(["bad", "cluster " + id + " is DOWN: not ready"]);
    }
    for (const a of lat.clusters) {
      if (!a.answered) alerts.push(["bad", "cluster " + a.id + " did not answer the eval: " + a.error.message]);
    }
    const machines = fleet.machines.filter(isMachine);
    const others = fleet.machines.filter((m) => !isMachine(m));
    const roll = fleet.restart;
    if (roll && roll.state === "running") alerts.push(["warn", roll.progress]);
    if (roll && (roll.state === "failed" || roll.state === "cancelled")) alerts.push(["bad", roll.progress]);
    for (const m of machines) {
      if (m.stale) alerts.push(["bad", m.id + " is STALE: it runs plan " + m.plan_version + ", not " + fleet.plan_version]);
      if (m.standby) alerts.push(["warn", m.id + " is a STANDBY"]);
      if (m.leaving) alerts.push(["warn", m.id + " is LEAVING"]);
      if (m.stalled) alerts.push(["bad", m.id + " is STALLED: it " + m.stalled]);
      if (m.error) alerts.push(["bad", m.id + " did not answer: " + m.error]);
      for (const c of m.clusters) {
        if (c.waiting) alerts.push(["warn", "cluster " + c.id + " on " + m.id + " waits: " + c.waiting]);
        if (c.state === "failed") {
          const why = c.last_error ? ": " + c.last_error.split("\\n")[0] : "";
          alerts.push(["bad", "cluster " + c.id + " FAILED on " + m.id + " and is not restarted" + why]);
        }
      }
    }
    const shards = new Map();  // shard id -> [row, cluster, machine]: a ready report wins (a rolling
    for (const m of machines) {  // swap's retiring half serves until the new half is live)
      for (const c of m.clusters) {
        for (const row of c.shard_health || []) {
          const seen = shards.get(row[0]);
          if (!seen || (row[1] === "ready" && seen[0][1] !== "ready")) shards.set(row[0], [row, c, m]);
        }
      }
    }
    const cells = [];
    for (let id = 0; id < fleet.total_shards; id++) {
      const known = shards.get(id);
      const state = known ? known[0][1] : "unknown";
      const latency = known && known[0][2] !== null ? Math.round(known[0][2] * 1000) + " ms" : "no latency yet";
      const where = known ? "cluster " + known[1].id + " on " + known[2].id : "no cluster reports it";
      cells.push(el("span", {class: "shard sh-" + state, "data-shard": id, "data-state": state,
                             title: "shard " + id + ": " + state + ", " + latency + ", " + where}, id));
      if (known && state !== "ready" && state !== "waiting" && known[0][6] >= SHARD_ALERT_AFTER) {
        alerts.push(["bad", "shard " + id + " is DOWN (" + state + " for " + Math.round(known[0][6]) + " s) on " + where]);
      }
    }
    $("shards").replaceChildren(...cells);
    const sections = machines.map((m) => machineSection(m, answeredById, fleet.taken_at));
    if (sum.unassigned.length) {
      const body = el("tbody");
      for (const id of sum.unassigned) {
        body.append(el("tr", {class: "cluster unassigned not-ready", "data-cluster": id, "data-state": "down",
                              "data-ready": false},
          el("td", {}, "cluster " + id), el("td", {colspan: HEAD.length - 1}, badge("down", "s-down"),
                                              " no machine runs it")));
      }
      sections.push(el("section", {class: "machine", "data-machine": ""},
                       el("h2", {}, "Unassigned", badge("down", "b-bad")), el("table", {}, body)));
    }
    $("machines").replaceChildren(...sections);
    $("others").replaceChildren(...others.map((m) => el("tr", {class: "other", "data-client": m.id},
      el("td", {}, m.id), el("td", {}, m.agent), el("td", {class: "dim"}, m.address || ""))));
    $("others-box").hidden = others.length === 0;
    if (!alerts.length && sum.ready === fleet.total_clusters) {
      alerts.push(["ok", "all " + fleet.total_clusters + " clusters ready"]);
    }
  }
  $("alerts").replaceChildren(...alerts.map(([kind, text]) => el("li", {class: kind}, text)));
  document.body.dataset.loaded = "true";
}

async function refresh() {
  try {
    const response = await fetch("api/fleet", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (err) {
    $("conn").className = "meta error";
    $("conn").textContent = "dashboard unreachable: " + err.message;
  } finally {
    setTimeout(refresh, 1000);
  }
}

async function lookup(id) {
  const out = $("guild-result");
  out.dataset.status = "pending";
  out.dataset.guild = id;
  out.replaceChildren(el("div", {class: "headline dim"}, "looking up guild " + id + "..."));
  let data;
  try {
    const response = await fetch("api/guild/" + encodeURIComponent(id), {cache: "no-store"});
    data = await response.json();
  } catch (err) {
    data = {ok: false, error: {type: "Error", code: "unreachable", message: err.message}};
  }
  if (data.ok) {
    const answer = data.answer;
    const where = answer && typeof answer === "object" && "cluster" in answer
      ? " from cluster " + answer.cluster + ("shard" in answer ? " (shard " + answer.shard + ")" : "") : "";
    out.dataset.status = "ok";
    out.dataset.cluster = answer && answer.cluster !== undefined ? answer.cluster : "";
    out.dataset.shard = answer && answer.shard !== undefined && answer.shard !== null ? answer.shard : "";
    out.replaceChildren(
      el("div", {class: "headline"}, "guild " + id + ": answered" + where + " in " + ms(data.ms)),
      el("pre", {id: "guild-answer"}, data.answer_text));
  } else {
    out.dataset.status = "error";
    out.dataset.code = data.error.code;
    out.replaceChildren(el("div", {class: "headline", id: "guild-error"},
      "guild " + id + ": " + data.error.type + ": " + data.error.message));
  }
}

$("guild-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("guild-input").value.trim();
  if (!id) return;
  const url = new URL(window.location.href);
  url.searchParams.set("guild", id);
  history.replaceState(null, "", url);
  lookup(id);
});

const asked = new URLSearchParams(window.location.search).get("guild");
if (asked) {
  $("guild-input").value = asked;
  lookup(asked.trim());
}
refresh();
</script>
</body>
</html>
"""
