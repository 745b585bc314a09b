/* app.js -- the ripple console page: polls the console's JSON and renders it.
 *
 * "/" shows services, streams (with their groups), dead letters and recent
 * orders; "/orders/{id}" shows one order's saga (saga.js draws it). Polling
 * is bounded: one round at a time, every refresh_ms (GET /api/v1/console/
 * info), backing off up to 30 s while the console does not answer, paused
 * while the tab is hidden, and an order's page stops once the order is final.
 * Every text from the system is set with textContent, never as markup. A
 * dead letter's replay button appears only when the console allows writes;
 * it sends the service token kept for this tab (sessionStorage). */
"use strict";

(function () {
  const API = "/api/v1/console";
  const MAX_BACKOFF_MS = 30000, FETCH_TIMEOUT_MS = 10000;
  const state = { info: null, failures: 0, timer: null, inFlight: false, done: false };

  /* -- small DOM and format helpers ---------------------------------- */

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v;
      else e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "string" || typeof c === "number"
        ? document.createTextNode(String(c)) : c);
    }
    return e;
  }

  const dash = "—";
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const int = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") : dash);
  const bytes = (v) => (isNum(v) ? (v / 1048576).toFixed(1) + " MiB" : dash);
  const ms = (v) => (isNum(v) ? (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms" : dash);
  const rate = (v) => (isNum(v) ? v.toFixed(v < 10 ? 2 : 0) : dash);
  const secs = (v) => (isNum(v) ? (v < 1 ? "0 s" : v.toFixed(v < 10 ? 1 : 0) + " s") : dash);
  const cents = (v) => (isNum(v) ? (v / 100).toFixed(2) : dash);
  const idle = (v) => (isNum(v) ? (v < 1000 ? v + " ms" : (v / 1000).toFixed(1) + " s") : dash);

  async function getJSON(path, opts) {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const r = await fetch(path, Object.assign({ signal: ctl.signal, cache: "no-store" }, opts));
      const body = await r.json().catch(() => null);
      if (!r.ok) {
        const msg = body && body.error ? body.error.message : r.statusText;
        const err = new Error(msg || "HTTP " + r.status);
        err.status = r.status;
        throw err;
      }
      return body;
    } finally {
      clearTimeout(t);
    }
  }

  function setStatus(text, stale) {
    const s = document.getElementById("status");
    s.textContent = text;
    s.classList.toggle("stale", !!stale);
  }

  function fill(tbody, rows, empty, cols) {
    if (!rows.length) rows = [el("tr", {}, el("td", { class: "muted", colspan: cols }, empty))];
    tbody.replaceChildren(...rows);
  }

  /* -- the overview -------------------------------------------------- */

  function serviceRow(s) {
    const health = el("span", { class: s.health === "up" ? "ok" : "bad" }, s.health);
    const ready = s.ready === true ? el("span", { class: "ok" }, "ready")
      : s.ready === false ? el("span", { class: "bad", title: JSON.stringify(s.checks || {}) },
        "not ready") : dash;
    const ob = s.outbox || {}, lat = ob.publish_latency_ms || {}, http = s.http || {};
    const backlogCls = isNum(ob.backlog) && ob.backlog > 0 ? "num warn" : "num";
    return el("tr", { "data-service": s.name },
      el("td", { title: s.url + (s.error ? " — " + s.error : "") }, s.name,
         s.hosted === "this process" ? el("span", { class: "muted" }, " (this process)") : null),
      el("td", {}, health), el("td", {}, ready),
      el("td", { class: "num", title: (s.rss || {}).source || "" }, bytes((s.rss || {}).bytes)),
      el("td", { class: backlogCls }, int(ob.backlog)),
      el("td", { class: "num" }, secs(ob.oldest_unpublished_age_s)),
      el("td", { class: "num", title: (lat.count || 0) + " publishes, " + (lat.window || "") },
         ms(lat.p50) + " / " + ms(lat.p99)),
      el("td", { class: "num" }, rate(http.requests_per_s)),
      el("td", { class: isNum(http.errors_per_s) && http.errors_per_s > 0 ? "num bad" : "num" },
         rate(http.errors_per_s)));
  }

  function streamRows(s) {
    const groups = s.groups && s.groups.length ? s.groups : [null];
    return groups.map((g, i) => {
      const consumers = g ? (g.consumer_list || []).map(
        (c) => c.name + " (" + idle(c.idle_ms) + ", " + c.pending + " pending)").join(", ") : "";
      const lagCls = g && isNum(g.lag) && g.lag > 0 ? "num warn" : "num";
      const pendCls = g && g.pending > 0 ? "num warn" : "num";
      const dlqCls = s.dlq && s.dlq.length > 0 ? "num bad" : "num";
      return el("tr", { class: i ? "sub" : null, "data-stream": s.name,
                        "data-group": g ? g.name : "" },
        el("td", { class: "mono" }, i ? "" : s.name),
        el("td", { class: "num" }, i ? "" : int(s.length)),
        el("td", {}, g ? g.name : el("span", { class: "muted" }, "no group")),
        el("td", { class: lagCls, "data-field": "lag" }, g ? int(g.lag) : dash),
        el("td", { class: pendCls, "data-field": "pending" }, g ? int(g.pending) : dash),
        el("td", { class: "muted" }, consumers),
        el("td", { class: dlqCls }, i ? "" : int(s.dlq ? s.dlq.length : 0)));
    });
  }

  function letterBox(stream, letter) {
    const box = el("div", { class: "letter", "data-dlq-id": letter.id },
      el("div", {}, el("code", {}, stream + ".dlq " + letter.id), "  ",
         el("strong", {}, letter.type || "(no type)"),
         el("span", { class: "muted" }, "  group " + (letter.group || "?") + ", " +
            (letter.deliveries || "?") + " deliveries")),
      el("div", { class: "why" }, letter.error || "(no reason)"),
      letter.data ? el("pre", {}, letter.data) : null);
    if (state.info && state.info.writes) {
      const b = el("button", { type: "button" }, "replay");
      b.addEventListener("click", () => replay(stream, letter.id, b));
      box.appendChild(b);
    }
    return box;
  }

  function renderStreams(report) {
    const items = report.items || [];
    fill(document.querySelector("#streams tbody"), items.flatMap(streamRows), "no streams yet", 7);
    const boxes = [];
    for (const s of items)
      for (const l of (s.dlq && s.dlq.letters) || []) boxes.push(letterBox(s.name, l));
    const dlq = document.getElementById("dlq");
    if (boxes.length) dlq.replaceChildren(...boxes);
    else dlq.replaceChildren(el("p", { class: "muted" }, "no dead letters"));
  }

  function orderRow(o) {
    return el("tr", { "data-order": o.id },
      el("td", { class: "mono" }, el("a", { href: "/orders/" + encodeURIComponent(o.id) }, o.id)),
      el("td", {}, el("span", { class: "badge " + o.status }, o.status)),
      el("td", {}, o.reason || ""), el("td", { class: "num" }, cents(o.amount_cents)),
      el("td", { class: "muted" }, o.created_at || ""),
      el("td", { class: "muted" }, o.updated_at || ""));
  }

  async function pollOverview() {
    const [services, streams, orders] = await Promise.all([
      getJSON(API + "/services"), getJSON(API + "/streams"),
      state.info.orders ? getJSON(API + "/orders?limit=15").catch((e) => ({ error: e }))
        : Promise.resolve({ items: [] })]);
    fill(document.querySelector("#services tbody"), (services.items || []).map(serviceRow),
         "no services watched", 9);
    renderStreams(streams);
    const tbody = document.querySelector("#orders tbody");
    if (orders.error) fill(tbody, [], "orders: " + orders.error.message, 6);
    else fill(tbody, (orders.items || []).map(orderRow), "no orders yet", 6);
  }

  /* -- one order ----------------------------------------------------- */

  function fact(dl, name, value) {
    dl.appendChild(el("dt", {}, name));
    dl.appendChild(el("dd", {}, value));
  }

  function renderOrder(saga) {
    const o = saga.order || {};
    document.getElementById("order-id").textContent = o.id || "";
    const badge = document.getElementById("order-status");
    badge.textContent = o.status || "";
    badge.className = "badge " + (o.status || "");
    const dl = document.getElementById("order-facts");
    dl.replaceChildren();
    fact(dl, "user", el("code", {}, o.user_id || dash));
    fact(dl, "items", (o.items || []).map((i) => i.qty + " × " + i.sku).join(", ") || dash);
    fact(dl, "amount", cents(o.amount_cents));
    fact(dl, "reason", o.reason || dash);
    const t = saga.trace || {};
    fact(dl, "trace id", el("code", { id: "trace-id", "data-source": t.source || "" },
                            t.id || dash));
    fact(dl, "saga", (saga.steps || []).length + " steps in " + ms(saga.total_ms) +
         (saga.final ? "" : " so far"));
    window.RippleSaga.draw(document.getElementById("saga"), saga);
    fill(document.querySelector("#steps tbody"), (saga.steps || []).map((s) => el("tr", {},
      el("td", { class: "num" }, s.n), el("td", {}, s.step), el("td", {}, s.event_type),
      el("td", {}, s.from + " → " + s.to), el("td", { class: "mono" }, s.stream),
      el("td", { class: "mono" }, s.entry_id || "(not yet published)"),
      el("td", { class: "muted" }, s.at), el("td", { class: "num" }, int(s.since_prev_ms)))),
      "no steps", 8);
    return saga.final;
  }

  async function pollOrder(id) {
    const saga = await getJSON(API + "/orders/" + encodeURIComponent(id));
    if (renderOrder(saga)) state.done = true; /* final: nothing more will happen */
  }

  /* -- dead-letter replay -------------------------------------------- */

  async function replay(stream, id, button) {
    const token = sessionStorage.getItem("ripple-console-token");
    if (!token) {
      setStatus("replay needs a service token: paste one at the bottom of the page", true);
      document.getElementById("token").focus();
      return;
    }
    button.disabled = true;
    try {
      const r = await getJSON(API + "/streams/" + encodeURIComponent(stream) + "/dlq/" +
                              encodeURIComponent(id) + "/replay",
                              { method: "POST", headers: { Authorization: "Bearer " + token } });
      setStatus("replayed " + r.dlq + " " + r.dlq_id + " as " + r.stream + " " + r.new_id);
      schedule(0);
    } catch (e) {
      setStatus("replay failed: " + e.message, true);
      button.disabled = false;
    }
  }

  /* -- the polling loop ---------------------------------------------- */

  function orderIdFromPath() {
    const m = /^\/orders\/([^/]+)$/.exec(location.pathname);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(round, delay);
  }

  async function round() {
    if (state.inFlight) return;
    if (document.hidden) return schedule(state.info ? state.info.refresh_ms : 2000);
    state.inFlight = true;
    try {
      if (!state.info) state.info = await getJSON(API + "/info");
      const id = orderIdFromPath();
      if (id) await pollOrder(id);
      else await pollOverview();
      state.failures = 0;
      setStatus("updated " + new Date().toLocaleTimeString() +
                (state.done ? " — the order is final" : ""));
    } catch (e) {
      state.failures++;
      setStatus("the console did not answer (" + e.message + "); retrying", true);
    } finally {
      state.inFlight = false;
    }
    if (state.done) return;
    const base = state.info ? state.info.refresh_ms : 2000;
    schedule(Math.min(MAX_BACKOFF_MS, base * Math.pow(2, Math.min(state.failures, 4))));
  }

  function start() {
    const id = orderIdFromPath();
    document.getElementById("overview").hidden = !!id;
    document.getElementById("order").hidden = !id;
    document.getElementById("goto").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = document.getElementById("goto-id").value.trim();
      if (v) location.assign("/orders/" + encodeURIComponent(v));
    });
    document.getElementById("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = document.getElementById("token").value.trim();
      if (v) sessionStorage.setItem("ripple-console-token", v);
      else sessionStorage.removeItem("ripple-console-token");
      document.getElementById("token").value = "";
      setStatus(v ? "token kept for this tab" : "token forgotten");
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !state.done) schedule(0);
    });
    getJSON(API + "/info").then((info) => {
      state.info = info;
      document.getElementById("mode").textContent = "console of " + info.services.length +
        " service(s); " + (info.writes ? "dead-letter replay allowed with a service token"
          : "read-only (CONSOLE_ALLOW_WRITES=1 allows dead-letter replay)");
      document.getElementById("token-form").hidden = !info.writes;
    }).catch(() => {}).finally(() => schedule(0));
  }

  start();
})();
