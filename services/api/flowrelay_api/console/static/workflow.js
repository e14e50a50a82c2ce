// What a workflow document means, read exactly as the API reads it
// (contracts/flowrelay_contracts/workflow.py: Workflow._from_compact and plan()), and where
// to draw its agents. A test runs both on the same documents so they cannot drift apart.

/** Node box size in the drawing (SVG user units). */
export const NODE_WIDTH = 168;
export const NODE_HEIGHT = 64;
const GAP_X = 72;
const GAP_Y = 28;

/**
 * The agent graph of a workflow (designer graph or compact form):
 * {nodes: [{id, name, tools, model_id, framework, position}], edges: [{source, target}],
 *  pattern: "simple"|"sequential"|"collaborative"|null, order: [node ids]}.
 * ``pattern`` and ``order`` are null when the API would refuse the graph.
 */
export function graphOf(document) {
  const workflow = expandCompact(document ?? {});
  const nodes = [];
  const byId = new Map();
  for (const node of Array.isArray(workflow.nodes) ? workflow.nodes : []) {
    if (!node || typeof node !== "object" || (node.type ?? "agent") !== "agent") continue;
    if (typeof node.id !== "string" || byId.has(node.id)) continue;
    const data = node.data ?? {};
    const entry = {
      id: node.id,
      name: typeof data.name === "string" ? data.name : node.id,
      tools: (Array.isArray(data.tools) ? data.tools : []).map(toolName),
      model_id: data.model_id ?? null,
      framework: data.framework ?? "tinyagent",
      position: validPosition(node.position),
    };
    nodes.push(entry);
    byId.set(node.id, entry);
  }
  const successors = new Map(nodes.map((n) => [n.id, []]));
  const edges = [];
  const seen = new Set();
  for (const edge of Array.isArray(workflow.edges) ? workflow.edges : []) {
    const { source, target } = edge ?? {};
    if (!byId.has(source) || !byId.has(target) || source === target) continue;
    if (seen.has(`${source}\u0000${target}`)) continue;
    seen.add(`${source}\u0000${target}`);
    edges.push({ source, target });
    successors.get(source).push(target);
  }
  const acyclic = !hasCycle(successors);
  const pattern = acyclic ? workflow.pattern ?? detectPattern(successors) : null;
  const order = pattern ? orderFor(pattern, successors) : null;
  return { nodes, edges, pattern: order ? pattern : null, order };
}

/** ``{"pattern", "agents"}`` as nodes and edges (the API's _from_compact). */
export function expandCompact(value) {
  if (!value || typeof value !== "object" || !("agents" in value) || "nodes" in value) return value;
  if (!Array.isArray(value.agents)) return value;
  const nodes = value.agents.map((data, i) => ({ id: `agent-${i + 1}`, data }));
  const ids = nodes.map((n) => n.id);
  const edges = value.pattern === "collaborative"
    ? ids.slice(1).map((other) => ({ source: ids[0], target: other }))
    : ids.slice(1).map((target, i) => ({ source: ids[i], target }));
  return { nodes, edges, pattern: value.pattern ?? null };
}

function toolName(tool) {
  if (typeof tool === "string") return tool;
  if (tool && typeof tool === "object") return tool.url ? `MCP ${tool.url}` : `MCP ${tool.command ?? "server"}`;
  return String(tool);
}

function validPosition(position) {
  if (!position || !Number.isFinite(position.x) || !Number.isFinite(position.y)) return null;
  return { x: position.x, y: position.y };
}

function indegrees(successors) {
  const indegree = new Map([...successors.keys()].map((n) => [n, 0]));
  for (const targets of successors.values()) for (const t of targets) indegree.set(t, indegree.get(t) + 1);
  return indegree;
}

function detectPattern(successors) {
  const nodes = [...successors.keys()];
  const edgeCount = [...successors.values()].reduce((sum, t) => sum + t.length, 0);
  if (nodes.length === 1) return "simple";
  if (nodes.length === 0) return null;
  const indegree = indegrees(successors);
  const isChain = edgeCount === nodes.length - 1
    && [...successors.values()].every((t) => t.length <= 1)
    && [...indegree.values()].every((d) => d <= 1);
  if (isChain) return "sequential";
  const hubs = nodes.filter((n) => successors.get(n).length === nodes.length - 1);
  if (hubs.length === 1 && edgeCount === nodes.length - 1) return "collaborative";
  return null;
}

function orderFor(pattern, successors) {
  const nodes = [...successors.keys()];
  const indegree = indegrees(successors);
  if (pattern === "simple") return nodes.length === 1 ? nodes : null;
  if (pattern === "sequential") {
    const starts = nodes.filter((n) => indegree.get(n) === 0);
    if (starts.length !== 1) return null;
    const order = [starts[0]];
    while (successors.get(order.at(-1)).length) {
      if (successors.get(order.at(-1)).length > 1) return null;
      order.push(successors.get(order.at(-1))[0]);
    }
    return order.length === nodes.length ? order : null;
  }
  if (pattern === "collaborative") {
    const hubs = nodes.filter((n) => {
      const targets = new Set(successors.get(n));
      return targets.size === nodes.length - 1 && nodes.every((m) => m === n || targets.has(m));
    });
    if (nodes.length < 2 || hubs.length !== 1) return null;
    return [hubs[0], ...nodes.filter((n) => n !== hubs[0])];
  }
  return null;
}

function hasCycle(successors) {
  const state = new Map();
  const visit = (node) => {
    state.set(node, 1);
    for (const next of successors.get(node)) {
      if (state.get(next) === 1) return true;
      if (!state.has(next) && visit(next)) return true;
    }
    state.set(node, 2);
    return false;
  };
  return [...successors.keys()].some((n) => !state.has(n) && visit(n));
}

/**
 * A graph guessed from a trace when the API did not send the workflow: the agents that
 * ran, in step order, connected as their pattern connects them.
 */
export function graphFromTrace(agentSteps, pattern) {
  const names = [...agentSteps.entries()].sort((a, b) => a[1] - b[1]).map(([name]) => name);
  const agents = names.map((name) => ({ name }));
  return graphOf({ pattern: pattern ?? (names.length === 1 ? "simple" : "sequential"), agents });
}

/**
 * Where each node goes: the designer's positions when they are usable (none missing, no two
 * boxes overlapping), otherwise layers from left to right by longest path from a start.
 * Returns {positions: Map(id -> {x, y}), width, height}.
 */
export function layout(graph) {
  const positions = new Map();
  const given = graph.nodes.map((n) => n.position);
  if (given.length && given.every(Boolean) && !overlapping(given)) {
    const minX = Math.min(...given.map((p) => p.x));
    const minY = Math.min(...given.map((p) => p.y));
    for (const node of graph.nodes) positions.set(node.id, { x: node.position.x - minX, y: node.position.y - minY });
  } else {
    const depth = longestPaths(graph);
    const layers = [];
    for (const node of graph.nodes) (layers[depth.get(node.id)] ??= []).push(node.id);
    const tallest = Math.max(1, ...layers.map((l) => l?.length ?? 0));
    layers.forEach((layer, d) => {
      const offset = ((tallest - layer.length) * (NODE_HEIGHT + GAP_Y)) / 2;
      layer.forEach((id, i) => positions.set(id, { x: d * (NODE_WIDTH + GAP_X), y: offset + i * (NODE_HEIGHT + GAP_Y) }));
    });
  }
  const xs = [...positions.values()].map((p) => p.x);
  const ys = [...positions.values()].map((p) => p.y);
  return {
    positions,
    width: (xs.length ? Math.max(...xs) : 0) + NODE_WIDTH,
    height: (ys.length ? Math.max(...ys) : 0) + NODE_HEIGHT,
  };
}

function overlapping(points) {
  for (let i = 0; i < points.length; i++) {
    for (let j = i + 1; j < points.length; j++) {
      if (Math.abs(points[i].x - points[j].x) < NODE_WIDTH + 8 && Math.abs(points[i].y - points[j].y) < NODE_HEIGHT + 8) return true;
    }
  }
  return false;
}

function longestPaths(graph) {
  const depth = new Map(graph.nodes.map((n) => [n.id, 0]));
  // Bounded relaxation: a cyclic graph (refused by the API anyway) still gets drawn.
  for (let round = 0; round < graph.nodes.length; round++) {
    let changed = false;
    for (const { source, target } of graph.edges) {
      if (depth.get(target) < depth.get(source) + 1) { depth.set(target, depth.get(source) + 1); changed = true; }
    }
    if (!changed) break;
  }
  return depth;
}
