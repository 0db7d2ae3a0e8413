// The fleet page: reads /v1 with the tenant's token (kept in sessionStorage, sent as a
// bearer header). Everything shown goes in as text (el() sets textContent), never as
// HTML: names, reasons and log lines come from users and builds.
"use strict";

const FINAL = ["succeeded", "failed", "cancelled", "superseded", "needs-reconcile"];
let token = sessionStorage.getItem("waymark-token") || "";
let current = null; // the view's stop function

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function status(text) {
  document.getElementById("status").textContent = text;
}

async function api(path, options) {
  const r = await fetch(path, {
    ...(options || {}),
    headers: { Authorization: "Bearer " + token, ...((options || {}).headers || {}) },
  });
  if (r.status === 401) {
    sessionStorage.removeItem("waymark-token");
    token = "";
    route();
    throw new Error("the token was refused");
  }
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && (body.detail || body.title)) || "HTTP " + r.status);
  return body;
}

// An SSE stream read with fetch (EventSource cannot send a bearer token). On a lost
// connection it reconnects with Last-Event-ID: events come once each, in order.
function follow(path, onEvent, state) {
  const ctl = new AbortController();
  (async () => {
    while (!ctl.signal.aborted) {
      try {
        const headers = { Authorization: "Bearer " + token, Accept: "text/event-stream" };
        if (state.last > 0) headers["Last-Event-ID"] = String(state.last);
        const r = await fetch(path, { headers, signal: ctl.signal });
        if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let id = null;
            let data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("id:")) id = Number(line.slice(3).trim());
              else if (line.startsWith("data:")) data += line.slice(5).trim();
            }
            if (id === null || !data || id <= state.last) continue;
            state.last = id;
            onEvent(id, JSON.parse(data));
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      state.reconnects = (state.reconnects || 0) + 1;
      await new Promise((res) => setTimeout(res, 1000));
    }
  })();
  return () => ctl.abort();
}

function stateCell(state, label) {
  return el("td", { "data-label": label || "State" },
    el("span", { class: "state state-" + state }, state));
}

function short(path) {
  if (typeof path !== "string") return "–";
  const base = path.replace(/^\/nix\/store\//, "");
  return base.length > 40 ? base.slice(0, 12) + "…" + base.slice(base.indexOf("-")) : base;
}

function closure(path) {
  return typeof path === "string" ? el("code", { title: path }, short(path)) : "–";
}

function table(head, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows));
}

function jobLink(id) {
  return el("a", { href: "#/job/" + id }, "job " + id);
}

// Re-runs `load` on every event of the tenant (debounced), and once now.
function live(load) {
  let timer = null;
  let stopped = false;
  const run = () => load().then(() => status("Up to date.")).catch((e) => status(e.message));
  const stop = follow("/v1/events", () => {
    if (timer || stopped) return;
    timer = setTimeout(() => { timer = null; run(); }, 150);
  }, { last: 0 });
  run();
  return () => { stopped = true; stop(); };
}

function fleetView(view) {
  return live(async () => {
    const [hosts, deps] = await Promise.all([api("/v1/hosts"), api("/v1/deployments?limit=200")]);
    const rows = hosts.hosts.map((h) => {
      const j = h.last_job;
      const gate = j.restored ? "restored (runs what it ran before)"
        : [j.result, j.reached ? "at " + j.reached : null].filter(Boolean).join(" ");
      return el("tr", { "data-host": h.host },
        el("td", { "data-label": "Host" }, el("a", { href: "#/host/" + encodeURIComponent(h.host) }, h.host)),
        el("td", { "data-label": "Running" }, closure(h.running)),
        el("td", { "data-label": "Known-good" }, h.known_good ? closure(h.known_good.closure) : "none yet"),
        el("td", { "data-label": "Drift" },
          el("span", { class: "drift-" + (h.drift === true ? "yes" : "no") },
            h.drift === true ? "drifted" : h.drift === false ? "no drift" : "unknown")),
        el("td", { "data-label": "Last deploy", class: "last-deploy" },
          jobLink(j.id), " (", j.deployment, "): ",
          el("span", { class: "state state-" + j.state }, j.state), gate ? " — " + gate : "",
          j.change ? el("div", { class: "muted" }, j.change) : null,
          j.message ? el("div", { class: "muted" }, j.message) : null));
    });
    const drows = deps.items.map((d) => el("tr", { "data-deployment": d.name },
      el("td", { "data-label": "Deployment" }, el("a", { href: "#/deployment/" + encodeURIComponent(d.name) }, d.name)),
      stateCell(d.state),
      el("td", { "data-label": "Desired" }, el("code", {}, d.desired_rev || "–")),
      el("td", { "data-label": "Applied" }, el("code", {}, d.applied_rev || "–")),
      el("td", { "data-label": "Hosts" }, (d.hosts || []).join(", "))));
    view.replaceChildren(
      el("h2", {}, "Hosts"),
      rows.length ? table(["Host", "Running", "Known-good", "Drift", "Last deploy"], rows)
        : el("p", { class: "muted" }, "No host deployed through the service yet."),
      el("h2", {}, "Deployments"),
      table(["Deployment", "State", "Desired", "Applied", "Hosts"], drows));
  });
}

function jobRows(jobs) {
  return jobs.map((j) => el("tr", { "data-job": j.id },
    el("td", { "data-label": "Job" }, jobLink(j.id)),
    el("td", { "data-label": "Deployment" }, j.deployment),
    stateCell(j.state),
    el("td", { "data-label": "Phase" }, FINAL.includes(j.state) ? "–" : j.phase),
    el("td", { "data-label": "Revision" }, el("code", {}, j.rev.slice(0, 12))),
    el("td", { "data-label": "Reason", class: "reason" }, j.reason || j.cancel_requested || ""),
    el("td", { "data-label": "" }, FINAL.includes(j.state) ? "" : cancelButton(j.id))));
}

function queueView(view, deployment) {
  return live(async () => {
    const q = deployment ? "&deployment=" + encodeURIComponent(deployment) : "";
    const jobs = await api("/v1/jobs?limit=100" + q);
    const waiting = jobs.items.filter((j) => !FINAL.includes(j.state));
    const ended = jobs.items.filter((j) => FINAL.includes(j.state));
    const head = ["Job", "Deployment", "State", "Phase", "Revision", "Reason", ""];
    view.replaceChildren(
      el("h2", {}, deployment ? "Queue of " + deployment : "Queue"),
      waiting.length ? table(head, jobRows(waiting)) : el("p", { class: "muted" }, "Nothing queued or running."),
      el("h2", {}, "Ended"),
      table(head, jobRows(ended)));
  });
}

function hostView(view, host) {
  return live(async () => {
    const hosts = await api("/v1/hosts");
    const h = hosts.hosts.find((x) => x.host === host);
    if (!h) {
      view.replaceChildren(el("p", {}, "No such host among your deployments."));
      return;
    }
    view.replaceChildren(
      el("h2", {}, "Releases of " + host),
      table(["Job", "Deployment", "Revision", "Closure", "Finished"], h.releases.map((r) => el("tr", {},
        el("td", { "data-label": "Job" }, jobLink(r.job)),
        el("td", { "data-label": "Deployment" }, r.deployment),
        el("td", { "data-label": "Revision" }, el("code", {}, r.rev.slice(0, 12))),
        el("td", { "data-label": "Closure" }, closure(r.closure)),
        el("td", { "data-label": "Finished" }, r.at || "")))));
  });
}

function jobView(view, id) {
  const stateBox = el("p", { id: "job-state" });
  const counters = el("dl", { class: "counters", id: "counters" });
  const hostsBox = el("div", { id: "job-hosts" });
  const actions = el("div", { class: "buttons", id: "job-actions" });
  const events = el("ol", { id: "events", class: "mono" });
  const log = el("pre", { id: "log", "aria-label": "log" });
  view.replaceChildren(el("h2", {}, "Job " + id), stateBox, actions, counters, hostsBox,
    el("h2", {}, "Log"), log, el("details", {}, el("summary", {}, "Events"), events));
  let logLine = 0;
  let final = false;
  let loading = false;
  const render = (j) => {
    final = FINAL.includes(j.state);
    stateBox.replaceChildren(el("span", { class: "state state-" + j.state, id: "job-state-word" }, j.state),
      final ? "" : " — " + j.phase, " · ", j.deployment, " at ", el("code", {}, j.rev),
      j.reason ? el("span", { id: "job-reason" }, " · " + j.reason) : "");
    counters.replaceChildren(...["total", "built", "substituted", "running", "failed", "waiting"].map((k) =>
      el("div", {}, el("dt", {}, k), el("dd", { "data-counter": k }, (j.counters || {})[k] ?? 0))));
    const rows = Object.entries(j.hosts || {}).map(([name, h]) => el("tr", { "data-host": name },
      el("td", { "data-label": "Host" }, name),
      el("td", { "data-label": "Gate" }, [h.gate, h.gate_result].filter(Boolean).join(" ")),
      el("td", { "data-label": "Result", class: "host-result" },
        h.result === "failed" && ["test", "switch", "boot"].includes(h.reached)
          ? "failed at " + h.reached + ", restored" : (h.result || "")),
      el("td", { "data-label": "Change" }, h.change || ""),
      el("td", { "data-label": "Message" }, h.message || "")));
    hostsBox.replaceChildren(rows.length ? table(["Host", "Gate", "Result", "Change", "Message"], rows) : "");
    actions.replaceChildren(final ? "" : cancelButton(j.id));
  };
  const refresh = async () => {
    if (loading) return;
    loading = true;
    try {
      render(await api("/v1/jobs/" + id));
      for (;;) {
        const l = await api("/v1/jobs/" + id + "/logs?after_line=" + logLine + "&limit=1000");
        for (const line of l.lines) log.append(document.createTextNode(line.text + "\n"));
        logLine = l.next_line;
        if (l.lines.length < 1000) break;
      }
      log.scrollTop = log.scrollHeight;
      status(final ? "Job ended." : "Following live.");
    } catch (e) {
      status(e.message);
    } finally {
      loading = false;
    }
  };
  const state = { last: 0 };
  const stop = follow("/v1/jobs/" + id + "/events", (seq, ev) => {
    events.append(el("li", { "data-seq": seq }, seq + " " + (ev.type || "") + " " + (ev.state || ev.deploy?.event || "")));
    view.dataset.lastEventId = String(seq);
    refresh();
  }, state);
  refresh();
  // Logs also grow between events.
  const poll = setInterval(() => { if (!final) refresh(); }, 2000);
  return () => { stop(); clearInterval(poll); };
}

function cancelButton(id) {
  return el("button", { type: "button", class: "cancel", "data-cancel": id, onclick: () => askCancel(id) }, "Cancel…");
}

function askCancel(id) {
  const dialog = document.getElementById("cancel-dialog");
  document.getElementById("cancel-job").textContent = String(id);
  const reason = document.getElementById("cancel-reason");
  reason.value = "";
  dialog.dataset.job = String(id);
  dialog.showModal();
  reason.focus();
}

function setupCancel() {
  const dialog = document.getElementById("cancel-dialog");
  document.getElementById("cancel-keep").addEventListener("click", () => dialog.close());
  document.getElementById("cancel-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const reason = document.getElementById("cancel-reason").value.trim();
    if (!reason) return;
    const id = dialog.dataset.job;
    dialog.close();
    try {
      await api("/v1/jobs/" + id + "/cancel", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ reason }),
      });
      status("Cancel of job " + id + " asked.");
    } catch (err) {
      status("Cancel refused: " + err.message);
    }
  });
}

function route() {
  if (current) current();
  current = null;
  const login = document.getElementById("login");
  // Each view draws in a container of its own: a stopped view's late answer lands in a
  // detached one, never over the next view.
  const view = el("div", {});
  document.getElementById("view").replaceChildren(view);
  if (!token) {
    login.hidden = false;
    return;
  }
  login.hidden = true;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "job" && /^\d+$/.test(parts[1] || "")) current = jobView(view, Number(parts[1]));
  else if (parts[0] === "deployment" && parts[1]) current = queueView(view, parts[1]);
  else if (parts[0] === "queue") current = queueView(view, null);
  else if (parts[0] === "host" && parts[1]) current = hostView(view, parts[1]);
  else current = fleetView(view);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem("waymark-token", token);
    route();
  });
  setupCancel();
  window.addEventListener("hashchange", route);
  route();
});
