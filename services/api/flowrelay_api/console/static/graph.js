// The workflow graph as SVG: one box per agent, coloured (and labelled: colour is never the
// only cue) by its state as the trace arrives.

import { h, s } from "./dom.js";
import { tokens } from "./format.js";
import { layout, NODE_HEIGHT, NODE_WIDTH } from "./workflow.js";

export const STATE_LABELS = {
  pending: "waiting",
  running: "running",
  succeeded: "succeeded",
  failed: "failed",
  cancelled: "cancelled",
  "not-run": "not run",
};

const MARGIN = 12;
const MAX_NAME = 20;
let instances = 0;

export class GraphView {
  /**
   * @param {object} graph  from workflow.graphOf()
   * @param {object} options
   * @param {string} [options.note]  shown under the graph (e.g. where the graph came from)
   * @param {(name: string|null) => void} [options.onSelect]  a node was chosen (or unchosen)
   * @param {boolean} [options.legend]  show what the colours mean (not for a preview)
   */
  constructor(graph, { note, onSelect, legend = true } = {}) {
    this.graph = graph;
    this.onSelect = onSelect;
    this.selected = null;
    this.nodes = new Map(); // node id -> {group, state text, title}
    this.edges = [];
    const id = ++instances;
    const { positions, width, height } = layout(graph);
    const names = new Map(graph.nodes.map((n) => [n.id, n.name]));
    const svg = s("svg", {
      class: "graph-canvas",
      viewBox: `${-MARGIN} ${-MARGIN} ${width + 2 * MARGIN} ${height + 2 * MARGIN}`,
      role: "group",
      "aria-label": `Workflow graph: ${graph.nodes.length} agent${graph.nodes.length === 1 ? "" : "s"}${graph.pattern ? `, ${graph.pattern}` : ""}`,
      preserveAspectRatio: "xMidYMid meet",
    });
    svg.style.setProperty("--graph-width", `${width + 2 * MARGIN}px`);
    const marker = `arrow-${id}`;
    svg.append(s("defs", {}, s("marker", {
      id: marker, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse",
    }, s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow-head" }))));
    const edgeLayer = s("g", { class: "edges", "aria-hidden": "true" });
    for (const edge of graph.edges) {
      const path = s("path", { class: "edge", d: edgePath(positions.get(edge.source), positions.get(edge.target)), "marker-end": `url(#${marker})` });
      edgeLayer.append(path);
      this.edges.push({ source: names.get(edge.source), target: names.get(edge.target), path });
    }
    const nodeLayer = s("g", { class: "nodes" });
    for (const node of graph.nodes) {
      const { x, y } = positions.get(node.id);
      const name = node.name.length > MAX_NAME ? `${node.name.slice(0, MAX_NAME - 1)}…` : node.name;
      const stateText = s("text", { class: "node-state", x: NODE_WIDTH / 2, y: 46, "text-anchor": "middle" }, STATE_LABELS.pending);
      const title = s("title", {}, node.name);
      const group = s("g", {
        class: "node state-pending",
        transform: `translate(${x} ${y})`,
        tabindex: "0",
        role: "button",
        "aria-pressed": "false",
        dataset: { agent: node.name, nodeId: node.id },
      },
      title,
      s("rect", { width: NODE_WIDTH, height: NODE_HEIGHT, rx: "10", ry: "10" }),
      s("text", { class: "node-name", x: NODE_WIDTH / 2, y: 26, "text-anchor": "middle" }, name),
      stateText);
      group.addEventListener("click", () => this.#toggle(node.name));
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); this.#toggle(node.name); }
      });
      nodeLayer.append(group);
      this.nodes.set(node.id, { node, group, stateText, title });
      this.#label(node.id, "pending", "");
    }
    svg.append(edgeLayer, nodeLayer);
    this.element = h("figure.graph", {},
      h("div.graph-scroll", {}, svg),
      h("figcaption", {},
        !legend ? null : h("ul.legend", { "aria-label": "Node colours" },
          ...["pending", "running", "succeeded", "failed", "cancelled", "not-run"].map((state) => h(`li.state-${state}`, {}, h("span.swatch", { "aria-hidden": "true" }), STATE_LABELS[state]))),
        note ? h("p.note", {}, note) : null));
  }

  /** Colour nodes and edges from a Trace. */
  update(trace) {
    for (const [id, { node, group, stateText }] of this.nodes) {
      const state = trace ? trace.nodeState(node.name) : "pending";
      const agent = trace?.agents.get(node.name);
      const used = agent && (agent.usage.input_tokens || agent.usage.output_tokens) ? ` · ${tokens(agent.usage)} tok` : "";
      const calls = agent && agent.calls > 1 ? ` ×${agent.calls}` : "";
      group.setAttribute("class", `node state-${state}${this.selected === node.name ? " selected" : ""}`);
      group.dataset.state = state;
      stateText.textContent = `${STATE_LABELS[state]}${calls}${used}`;
      this.#label(id, state, `${calls}${used}`);
    }
    const collaborative = this.graph.pattern === "collaborative";
    for (const edge of this.edges) {
      let state = "idle";
      if (trace) {
        if (collaborative) {
          const key = `${edge.source}\u0000${edge.target}`;
          if (trace.activeCalls.has(key)) state = "active";
          else if (trace.usedCalls.has(key)) state = "used";
        } else {
          const target = trace.nodeState(edge.target);
          if (target === "running") state = "active";
          else if (!["pending", "not-run"].includes(target)) state = "used";
        }
      }
      edge.path.setAttribute("class", `edge edge-${state}`);
    }
  }

  #label(id, state, extra) {
    const { node, group, title } = this.nodes.get(id);
    const tools = node.tools.length ? `; tools: ${node.tools.join(", ")}` : "";
    const label = `Agent ${node.name}: ${STATE_LABELS[state]}${extra}${tools}`;
    group.setAttribute("aria-label", label);
    title.textContent = label;
  }

  #toggle(name) {
    this.select(this.selected === name ? null : name);
    this.onSelect?.(this.selected);
  }

  /** Mark one agent as chosen (or none). */
  select(name) {
    this.selected = name;
    for (const { node, group } of this.nodes.values()) {
      group.classList.toggle("selected", node.name === name);
      group.setAttribute("aria-pressed", String(node.name === name));
    }
  }
}

function edgePath(from, to) {
  // Boxes side by side are joined side to side; boxes in different rows top to bottom.
  const horizontal = Math.abs(to.y - from.y) < NODE_HEIGHT + 8;
  if (horizontal) {
    const leftToRight = to.x >= from.x;
    const x1 = from.x + (leftToRight ? NODE_WIDTH : 0);
    const x2 = to.x + (leftToRight ? 0 : NODE_WIDTH);
    const y1 = from.y + NODE_HEIGHT / 2;
    const y2 = to.y + NODE_HEIGHT / 2;
    const bend = (x2 - x1) / 2;
    return `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
  }
  const downwards = to.y >= from.y;
  const x1 = from.x + NODE_WIDTH / 2;
  const x2 = to.x + NODE_WIDTH / 2;
  const y1 = from.y + (downwards ? NODE_HEIGHT : 0);
  const y2 = to.y + (downwards ? 0 : NODE_HEIGHT);
  const bend = (y2 - y1) / 2;
  return `M${x1},${y1} C${x1},${y1 + bend} ${x2},${y2 - bend} ${x2},${y2}`;
}
