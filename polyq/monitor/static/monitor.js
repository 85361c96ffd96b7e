// polyq monitor: draws the tables and charts of each page from the JSON API,
// refreshing every 1.5 s. Text is always inserted as text (never as HTML):
// task arguments come from users and could hold markup. Ids (task ids, worker
// names) come from users too: one only enters a URL through segment(), which
// encodes it, and a task is revoked with its id in the request body, never in
// the URL (an id such as "../workers/w1/shutdown?x=" must not become a path).
"use strict";

const REFRESH_MS = 1500;
const FINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// An id the server accepts in a URL path (guards.path_id): no path separator,
// query or fragment, and not "." or "..", which a browser resolves as a step
// even when percent-encoded.
function pathSafe(id) {
  return typeof id === "string" && id !== "" && id !== "." && id !== ".." && !/[\/\\?#]/.test(id);
}

// One URL path segment holding `id`, encoded.
function segment(id) {
  if (!pathSafe(id)) throw new Error(`cannot put ${JSON.stringify(id)} in a URL path`);
  return encodeURIComponent(id);
}

// A link to a task's page, or its id as plain text when no URL can name it.
function taskLink(id, text) {
  return pathSafe(id) ? el("a", { href: `/tasks/${segment(id)}` }, text)
    : el("span", { title: "this id cannot appear in a URL" }, text);
}

function revoke(id, terminate, question) {
  return act("/api/revoke", { task_id: id, terminate: !!terminate }, question);
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function toast(text) {
  let box = document.getElementById("toast");
  if (!box) { box = el("div", { id: "toast" }); document.body.append(box); }
  box.textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.remove(), 4000);
}

// Ask with the page's <dialog>; resolves true when confirmed.
function confirmBox(question) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = question;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

async function act(path, body, question) {
  if (!(await confirmBox(question))) return null;
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Polyq-Action": "1" },
    body: JSON.stringify(body || {}),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) { toast(`failed: ${data.error || `HTTP ${response.status}`}`); return null; }
  const replies = (data.replies || []).map((r) => Object.entries(r).map(([h, v]) =>
    `${h}: ${v && (v.ok || v.error) || JSON.stringify(v)}`).join("")).join("; ");
  toast(data.ok || replies || "no worker replied");
  refresh();
  return data;
}

function when(ts) {
  if (!ts) return "";
  return new Date(ts * 1000).toLocaleTimeString();
}

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  return s < 60 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(0)} min ago`;
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  return value < 1 ? `${(value * 1000).toFixed(1)} ms` : `${value.toFixed(2)} s`;
}

function badge(state) {
  return el("span", { class: `state ${state}` }, state);
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "20" }, empty))]));
}

// A small line chart: series = [{label, color, points: [[t, v], ...]}].
function chart(canvas, series) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 34;
  ctx.clearRect(0, 0, w, h);
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    ctx.fillStyle = "#718096"; ctx.font = "13px sans-serif";
    ctx.fillText("no data yet", w / 2 - 30, h / 2);
    return;
  }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]), t0 + 1);
  const top = Math.max(1, ...all.map((p) => p[1]));
  const x = (t) => pad + ((t - t0) / (t1 - t0)) * (w - pad - 10);
  const y = (v) => h - 20 - (v / top) * (h - 34);
  ctx.strokeStyle = "#e2e8f0"; ctx.fillStyle = "#718096"; ctx.font = "11px sans-serif";
  for (const v of [0, top / 2, top]) {
    ctx.beginPath(); ctx.moveTo(pad, y(v)); ctx.lineTo(w - 10, y(v)); ctx.stroke();
    ctx.fillText(String(Math.round(v)), 4, y(v) + 4);
  }
  ctx.fillText(new Date(t0 * 1000).toLocaleTimeString(), pad, h - 4);
  ctx.fillText(new Date(t1 * 1000).toLocaleTimeString(), w - 80, h - 4);
  series.forEach((s, i) => {
    ctx.strokeStyle = s.color; ctx.lineWidth = 2; ctx.beginPath();
    s.points.forEach(([t, v], j) => (j ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.stroke();
    ctx.fillStyle = s.color; ctx.fillText(s.label, w - 160 + i * 0, 14 + i * 14);
  });
  ctx.lineWidth = 1;
}

const PALETTE = ["#2b6cb0", "#2f855a", "#c05621", "#6b46c1", "#b83280", "#2c7a7b", "#c53030"];

// -- pages -----------------------------------------------------------------------

async function notes() {
  const caps = await api("/api/capabilities");
  const out = [];
  if (!caps.events) out.push("This broker cannot broadcast: no events, no live workers, no remote control.");
  if (!caps.exact_queue_depth) out.push("This broker reports approximate queue depths.");
  if (!caps.scheduled) out.push("This broker cannot list delayed (scheduled) messages.");
  document.getElementById("notes").replaceChildren(...out.map((t) => el("div", {}, t)));
}

const pages = {
  async overview() {
    const o = await api("/api/overview");
    const cards = [["Workers online", o.workers_online], ["Events", o.events]];
    for (const s of ["RECEIVED", "STARTED", "SUCCESS", "FAILURE", "REVOKED"]) {
      cards.push([s.toLowerCase(), o.tasks_by_state[s] || 0]);
    }
    document.getElementById("cards").replaceChildren(
      ...cards.map(([label, n]) => el("div", { class: "card" }, el("b", {}, n), label)));
    const points = await api("/api/throughput?seconds=300&step=5");
    chart(document.getElementById("chart-throughput"), [
      { label: "succeeded", color: "#2f855a", points: points.map((p) => [p.t, p.succeeded]) },
      { label: "failed", color: "#c53030", points: points.map((p) => [p.t, p.failed]) },
    ]);
    chart(document.getElementById("chart-failures"), [
      { label: "failed", color: "#c53030", points: points.map((p) => [p.t, p.failed]) },
    ]);
  },

  async workers() {
    const workers = await api("/api/workers");
    const rows = workers.map((w) => el("tr", { dataset: { hostname: w.hostname } },
      el("td", { class: "mono" }, w.hostname),
      el("td", {}, badge(w.alive ? "online" : "offline")),
      el("td", {}, w.pool || ""),
      el("td", {}, w.concurrency ?? ""),
      el("td", {}, w.active),
      el("td", {}, w.reserved),
      el("td", {}, w.processed),
      el("td", {}, (w.loadavg || []).join(" ")),
      el("td", {}, (w.queues || []).join(", ")),
      el("td", {}, ago(w.last_heartbeat)),
      el("td", {}, w.alive && pathSafe(w.hostname) ? [
        el("button", { class: "grow", onclick: () => act(`/api/workers/${segment(w.hostname)}/pool_grow`, { n: 1 }, `Add one pool slot to ${w.hostname}?`) }, "+1"),
        " ",
        el("button", { class: "shrink", onclick: () => act(`/api/workers/${segment(w.hostname)}/pool_shrink`, { n: 1 }, `Remove one pool slot from ${w.hostname}?`) }, "−1"),
        " ",
        el("button", { class: "danger shutdown", onclick: () => act(`/api/workers/${segment(w.hostname)}/shutdown`, {}, `Shut down ${w.hostname}? Running tasks finish first.`) }, "Shut down"),
      ] : "")));
    fill(document.querySelector("#workers tbody"), rows, "No worker seen yet (workers send heartbeats with -E).");
    const active = workers.flatMap((w) => w.active_tasks.map((t) => el("tr", {},
      el("td", { class: "mono" }, w.hostname), el("td", {}, t.name || ""),
      el("td", { class: "mono" }, taskLink(t.uuid, t.uuid)),
      el("td", { class: "mono args" }, t.args || ""), el("td", {}, when(t.started)))));
    fill(document.querySelector("#active tbody"), active, "Nothing running.");
  },

  async tasks() {
    const form = document.getElementById("filters");
    if (!form.dataset.ready) {
      form.dataset.ready = "1";
      form.addEventListener("input", () => refresh());
      form.addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
      const params = new URLSearchParams(location.search);
      for (const [k, v] of params) if (form.elements[k]) form.elements[k].value = v;
      const rl = document.getElementById("ratelimit");
      rl.addEventListener("submit", (e) => {
        e.preventDefault();
        const name = rl.elements.task_name.value, rate = rl.elements.rate_limit.value.trim();
        if (name) act("/api/rate_limit", { task_name: name, rate_limit: rate || null },
          `Set the rate limit of ${name} to ${rate || "none"} on every worker?`);
      });
    }
    const query = new URLSearchParams(new FormData(form));
    const [tasks, names, workers] = await Promise.all([
      api(`/api/tasks?${query}`), api("/api/task-names"), api("/api/workers")]);
    syncOptions(form.elements.name, names, true);
    syncOptions(form.elements.worker, workers.map((w) => w.hostname), true);
    syncOptions(document.getElementById("ratelimit").elements.task_name, names, false);
    const rows = tasks.map((t) => el("tr", { dataset: { id: t.uuid } },
      el("td", { class: "mono" }, taskLink(t.uuid, t.uuid.slice(0, 8))),
      el("td", {}, t.name || ""),
      el("td", {}, badge(t.state)),
      el("td", { class: "mono args", title: t.args || "" }, t.args || ""),
      el("td", { class: "mono args", title: t.kwargs || "" }, t.kwargs || ""),
      el("td", { class: "mono" }, t.worker || ""),
      el("td", {}, when(t.received || t.sent)),
      el("td", {}, seconds(t.runtime)),
      el("td", {}, t.retries || 0),
      el("td", { class: "mono" }, t.progress ? JSON.stringify(t.progress) : ""),
      el("td", {}, FINAL.has(t.state) ? "" : el("button", {
        class: "danger revoke",
        onclick: () => revoke(t.uuid, false, `Revoke ${t.name} ${t.uuid}? It will not run.`),
      }, "Revoke"))));
    fill(document.querySelector("#tasks tbody"), rows, "No task seen yet (workers send task events with -E).");
  },

  async task() {
    const id = document.body.dataset.taskId;
    let t;
    try { t = await api(`/api/tasks/${segment(id)}`); } catch (e) {
      document.querySelector("#task tbody").replaceChildren(el("tr", {}, el("td", {}, "Unknown task (not seen by this monitor nor in the result backend).")));
      return;
    }
    const fields = [["State", badge(t.state || t.backend_state || "PENDING")], ["Name", t.name],
      ["Worker", t.worker], ["Queue", t.queue], ["Args", t.args], ["Kwargs", t.kwargs],
      ["Result", t.result === undefined ? "" : JSON.stringify(t.result)],
      ["Progress", t.progress ? JSON.stringify(t.progress) : ""],
      ["Retries", t.retries], ["Sent", when(t.sent)], ["Received", when(t.received)],
      ["Started", when(t.started)], ["Finished", when(t.finished)], ["Runtime", seconds(t.runtime)],
      ["ETA", t.eta], ["Expires", t.expires], ["Root", t.root_id], ["Parent", t.parent_id],
      ["Revoked", t.revoked ? "yes (durable)" : "no"], ["Exception", t.exception]];
    document.querySelector("#task tbody").replaceChildren(...fields.map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", { class: "mono" }, v ?? ""))));
    document.getElementById("traceback").textContent = t.traceback || "—";
    const actions = document.getElementById("task-actions");
    if (!FINAL.has(t.state) && !actions.dataset.ready) {
      actions.dataset.ready = "1";
      actions.replaceChildren(
        el("button", { class: "danger revoke", onclick: () => revoke(id, false, `Revoke ${id}?`) }, "Revoke"), " ",
        el("button", { class: "danger terminate", onclick: () => revoke(id, true, `Revoke ${id} and kill it if running (prefork pool)?`) }, "Revoke and terminate"));
    } else if (FINAL.has(t.state)) actions.replaceChildren();
  },

  async queues() {
    const queues = await api("/api/queues");
    const rows = queues.map((q) => el("tr", { dataset: { queue: q.name } },
      el("td", { class: "mono" }, q.name), el("td", {}, q.depth ?? "?")));
    fill(document.querySelector("#queues tbody"), rows, "No queue sampled yet.");
    chart(document.getElementById("chart-depth"), queues.map((q, i) => ({
      label: q.name, color: PALETTE[i % PALETTE.length], points: q.series.map((p) => [p.t, p.depth]),
    })));
  },
};

function syncOptions(select, values, keepAny) {
  const current = select.value;
  const wanted = (keepAny ? [""] : []).concat(values);
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join("\n") === wanted.join("\n")) return;
  select.replaceChildren(...wanted.map((v) => el("option", { value: v }, v || "any")));
  if (wanted.includes(current)) select.value = current;
}

let busy = false;
async function refresh() {
  const render = pages[document.body.dataset.page];
  if (!render || busy) return;
  busy = true;
  try { await render(); document.body.dataset.refreshed = String(Date.now()); }
  catch (e) { console.error(e); }
  finally { busy = false; }
}

document.addEventListener("DOMContentLoaded", () => {
  notes().catch(console.error);
  refresh();
  setInterval(refresh, REFRESH_MS);
});
