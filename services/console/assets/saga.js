/* saga.js -- draws an order's saga as a sequence diagram in plain SVG.
 *
 * RippleSaga.draw(container, saga) replaces container's content with an
 * <svg>: one lane per service (saga.lanes, from GET /api/v1/console/orders/
 * {id}), and per step an arrow from its `from` lane to its `to` lane (a loop
 * when they are the same) labelled with the event type, its stream and entry
 * id, and in the left margin the step's name and the time since the step
 * before. Commands are blue, events green, failures red. Every text is set
 * with textContent: the data is never parsed as markup. */
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const LANE_W = 210, GUTTER = 190, TOP = 58, ROW = 54, PAD = 24;
  const FAILURES = /rejected|failed|cancelled|timed_out|timeout|refund|release/;

  function svg(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function kind(step) {
    const s = step.stream || "";
    if (FAILURES.test(step.step || "") || FAILURES.test(step.event_type || "")) return "failure";
    return s.endsWith(".commands") ? "command" : "event";
  }

  const COLORS = { command: "#2563eb", event: "#15803d", failure: "#b91c1c" };

  function markers(defs) {
    for (const [k, color] of Object.entries(COLORS)) {
      const m = svg("marker", { id: "arrow-" + k, viewBox: "0 0 10 10", refX: 9, refY: 5,
                                markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
      m.appendChild(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: color }));
      defs.appendChild(m);
    }
  }

  function laneHeads(root, lanes, x, height) {
    lanes.forEach((name, i) => {
      const g = svg("g", { class: "lane", "data-lane": name });
      g.appendChild(svg("line", { x1: x(i), y1: TOP - 14, x2: x(i), y2: height - PAD,
                                  stroke: "#94a3b8", "stroke-dasharray": "4 4" }));
      g.appendChild(svg("rect", { x: x(i) - 70, y: 8, width: 140, height: 30, rx: 6,
                                  fill: "#0f172a" }));
      g.appendChild(svg("text", { x: x(i), y: 28, "text-anchor": "middle", fill: "#ffffff",
                                  "font-size": 14, "font-weight": "bold" }, name));
      root.appendChild(g);
    });
  }

  function stepLabel(g, x, y, anchor, step, color) {
    g.appendChild(svg("text", { x: x, y: y - 6, "text-anchor": anchor, fill: color,
                                "font-size": 13, "font-weight": "bold" }, step.event_type || "?"));
    g.appendChild(svg("text", { x: x, y: y + 14, "text-anchor": anchor, fill: "#64748b",
                                "font-size": 11, "font-family": "DejaVu Sans Mono, monospace" },
                      (step.stream || "?") + "  " + (step.entry_id || "(not yet published)")));
  }

  function drawStep(root, step, i, x, laneIndex) {
    const y = TOP + 20 + i * ROW;
    const k = kind(step), color = COLORS[k];
    const a = laneIndex(step.from), b = laneIndex(step.to);
    const g = svg("g", { class: "step " + k, "data-step": step.step || "",
                         "data-event-type": step.event_type || "", "data-from": step.from,
                         "data-to": step.to });
    const dt = step.since_prev_ms === null || step.since_prev_ms === undefined
      ? "" : "+" + step.since_prev_ms + " ms";
    g.appendChild(svg("text", { x: 10, y: y - 4, "font-size": 12, fill: "#334155" },
                      (step.n || i + 1) + ". " + (step.step || "")));
    g.appendChild(svg("text", { x: 10, y: y + 12, "font-size": 11, fill: "#64748b",
                                class: "dt" }, dt));
    if (a === b) {
      const x0 = x(a);
      g.appendChild(svg("path", { d: `M${x0},${y - 8} h34 v16 h-32`, fill: "none",
                                  stroke: color, "stroke-width": 2,
                                  "marker-end": `url(#arrow-${k})` }));
      stepLabel(g, x0 + 42, y + 2, "start", step, color);
    } else {
      g.appendChild(svg("line", { x1: x(a), y1: y, x2: x(b), y2: y, stroke: color,
                                  "stroke-width": 2, "marker-end": `url(#arrow-${k})` }));
      stepLabel(g, (x(a) + x(b)) / 2, y, "middle", step, color);
    }
    root.appendChild(g);
  }

  function draw(container, saga) {
    const lanes = saga.lanes && saga.lanes.length ? saga.lanes : ["orders"];
    const steps = saga.steps || [];
    const width = GUTTER + lanes.length * LANE_W + PAD;
    const height = TOP + 30 + Math.max(steps.length, 1) * ROW + PAD;
    const x = (i) => GUTTER + LANE_W / 2 + i * LANE_W;
    const laneIndex = (name) => Math.max(0, lanes.indexOf(name));
    const root = svg("svg", { xmlns: NS, width: width, height: height,
                              viewBox: `0 0 ${width} ${height}`, role: "img",
                              "aria-label": "saga of order " + ((saga.order || {}).id || "") });
    root.setAttribute("font-family", "DejaVu Sans, sans-serif");
    const defs = svg("defs");
    markers(defs);
    root.appendChild(defs);
    laneHeads(root, lanes, x, height);
    steps.forEach((s, i) => drawStep(root, s, i, x, laneIndex));
    if (!steps.length)
      root.appendChild(svg("text", { x: GUTTER, y: TOP + 40, fill: "#64748b" }, "no steps yet"));
    container.replaceChildren(root);
    return root;
  }

  window.RippleSaga = { draw: draw, kind: kind };
})();
