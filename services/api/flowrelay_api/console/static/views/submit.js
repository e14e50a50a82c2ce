// Submit a run: paste a workflow, open a file or start from one of the examples, set the
// input and options, run, and land on the live run page.

import { announce, h, replace } from "../dom.js";
import { GraphView } from "../graph.js";
import { graphOf } from "../workflow.js";

const REMEMBERED = "flowrelay.workflow.";

/**
 * The workflow this tab submitted for ``runId``, if any: the run page draws it while the
 * API's record does not carry the workflow.
 */
export function rememberedWorkflow(runId) {
  try {
    const text = window.sessionStorage.getItem(REMEMBERED + runId);
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

function remember(runId, workflow) {
  try {
    window.sessionStorage.setItem(REMEMBERED + runId, JSON.stringify(workflow));
  } catch { /* storage full or disabled: the page infers the graph from the trace */ }
}

export function submitPage(context) {
  let examples = [];
  let previewTimer = null;

  const exampleSelect = h("select#example", { "aria-describedby": "example-help" }, h("option", { value: "" }, "Loading examples…"));
  const fileInput = h("input#workflow-file", { type: "file", accept: "application/json,.json" });
  const workflowText = h("textarea#workflow.code", {
    rows: "16", spellcheck: "false", required: true, "aria-describedby": "workflow-status",
    placeholder: '{"nodes": [...], "edges": [...]}  or  {"pattern": "sequential", "agents": [...]}',
  });
  const workflowStatus = h("p.help#workflow-status", {}, "Paste a workflow, open a file, or pick an example.");
  const inputText = h("textarea#run-input", { rows: "3", required: true });
  const timeout = h("input#timeout", { type: "number", min: "0.1", step: "any", inputmode: "decimal", placeholder: "server default" });
  const maxTurns = h("input#max-turns", { type: "number", min: "1", step: "1", inputmode: "numeric", placeholder: "server default" });
  const errors = h("div.error-summary", { role: "alert", tabindex: "-1", hidden: true });
  const preview = h("div.preview", {}, h("p.muted", {}, "The graph of a valid workflow is drawn here."));
  const submitButton = h("button.button.primary", { type: "submit" }, "Run");

  const form = h("form.submit-form", { onsubmit: submit, novalidate: true },
    errors,
    h("div.field", {},
      h("label", { for: "example" }, "Start from an example"),
      exampleSelect,
      h("p.help#example-help", {}, "The examples shipped with flowrelay; each runs offline on the scripted model.")),
    h("div.field", {}, h("label", { for: "workflow-file" }, "Or open a JSON file"), fileInput),
    h("div.field", {},
      h("label", { for: "workflow" }, "Workflow (JSON)"),
      workflowText,
      workflowStatus),
    h("div.field", {}, h("label", { for: "run-input" }, "Input"), inputText),
    h("fieldset.options", {},
      h("legend", {}, "Options"),
      h("div.field", {}, h("label", { for: "timeout" }, "Timeout (seconds)"), timeout),
      h("div.field", {}, h("label", { for: "max-turns" }, "Max turns per agent"), maxTurns)),
    h("div.actions", {}, submitButton));

  const element = h("section.page.submit-page", {},
    h("h1", {}, "Submit a run"),
    h("div.submit-grid", {},
      form,
      h("section.panel", { "aria-labelledby": "preview-title" }, h("h2#preview-title", {}, "Preview"), preview)));

  // -- filling the form -------------------------------------------------------------------

  function fill(body) {
    const workflow = body.workflow ?? body;
    workflowText.value = JSON.stringify(workflow, null, 2);
    if (typeof body.input === "string") inputText.value = body.input;
    const options = body.options ?? {};
    timeout.value = options.timeout_s ?? "";
    maxTurns.value = options.max_turns ?? "";
    updatePreview();
  }

  /** A pasted whole run body ({workflow, input, options}) is split into the fields. */
  function splitPastedBody() {
    let parsed;
    try { parsed = JSON.parse(workflowText.value); } catch { return; }
    if (parsed && typeof parsed === "object" && parsed.workflow && typeof parsed.workflow === "object") {
      fill(parsed);
      announce("Split the pasted run body into workflow, input and options");
    }
  }

  async function loadExamples() {
    try {
      const response = await fetch(`${context.api.root}/ui/examples.json`, { cache: "no-store" });
      examples = (await response.json()).examples ?? [];
    } catch {
      examples = [];
    }
    replace(exampleSelect,
      h("option", { value: "" }, examples.length ? "Choose an example…" : "No examples available"),
      ...examples.map((example) => h("option", { value: example.name }, example.name)));
    const wanted = new URLSearchParams(window.location.search).get("example");
    if (wanted && examples.some((e) => e.name === wanted)) {
      exampleSelect.value = wanted;
      fill(examples.find((e) => e.name === wanted).body);
    }
  }

  exampleSelect.addEventListener("change", () => {
    const example = examples.find((e) => e.name === exampleSelect.value);
    if (example) {
      fill(example.body);
      announce(`Loaded the ${example.name} example`);
    }
  });

  fileInput.addEventListener("change", async () => {
    const file = fileInput.files?.[0];
    if (!file) return;
    const text = await file.text();
    try {
      fill(JSON.parse(text));
      announce(`Loaded ${file.name}`);
    } catch (error) {
      workflowText.value = text;
      updatePreview();
    }
  });

  workflowText.addEventListener("paste", () => setTimeout(splitPastedBody, 0));
  workflowText.addEventListener("input", () => {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(updatePreview, 250);
  });

  function updatePreview() {
    const text = workflowText.value.trim();
    if (!text) {
      workflowStatus.textContent = "Paste a workflow, open a file, or pick an example.";
      replace(preview, h("p.muted", {}, "The graph of a valid workflow is drawn here."));
      return;
    }
    let workflow;
    try {
      workflow = JSON.parse(text);
    } catch (error) {
      workflowStatus.textContent = `Not valid JSON yet: ${error.message}`;
      return;
    }
    const graph = graphOf(workflow.workflow ?? workflow);
    if (!graph.nodes.length) {
      workflowStatus.textContent = "No agent nodes found: a workflow has nodes and edges, or a pattern and agents.";
      replace(preview, h("p.muted", {}, "Nothing to draw."));
      return;
    }
    workflowStatus.textContent = graph.pattern
      ? `${graph.nodes.length} agent${graph.nodes.length === 1 ? "" : "s"}, ${graph.pattern}.`
      : `${graph.nodes.length} agents, but they are not connected as a chain or from one coordinator: the API will say what to fix.`;
    const view = new GraphView(graph, { legend: false });
    view.update(null);
    replace(preview, view.element);
  }

  // -- submitting -------------------------------------------------------------------------

  async function submit(event) {
    event.preventDefault();
    const problems = [];
    let workflow = null;
    try {
      workflow = JSON.parse(workflowText.value);
      if (workflow && typeof workflow === "object" && workflow.workflow) workflow = workflow.workflow;
      if (!workflow || typeof workflow !== "object" || Array.isArray(workflow)) problems.push({ field: workflowText, text: "Workflow: must be a JSON object" });
    } catch (error) {
      problems.push({ field: workflowText, text: `Workflow: not valid JSON (${error.message})` });
    }
    if (!inputText.value.trim()) problems.push({ field: inputText, text: "Input: give the run something to work on" });
    const options = {};
    if (timeout.value !== "") {
      if (!(Number(timeout.value) > 0)) problems.push({ field: timeout, text: "Timeout: a number of seconds above 0" });
      else options.timeout_s = Number(timeout.value);
    }
    if (maxTurns.value !== "") {
      if (!Number.isInteger(Number(maxTurns.value)) || Number(maxTurns.value) < 1) problems.push({ field: maxTurns, text: "Max turns: a whole number, 1 or more" });
      else options.max_turns = Number(maxTurns.value);
    }
    if (problems.length) { showErrors(problems); return; }
    submitButton.disabled = true;
    submitButton.textContent = "Submitting…";
    try {
      const body = { workflow, input: inputText.value };
      if (Object.keys(options).length) body.options = options;
      const accepted = await context.api.submit(body);
      remember(accepted.run_id, workflow);
      context.navigate(`/runs/${encodeURIComponent(accepted.run_id)}`);
    } catch (error) {
      if (error.status === 401) return;
      showErrors(error.problems.length
        ? error.problems.map((p) => ({ field: fieldFor(p.loc), text: `${(p.loc ?? []).join(".")}: ${p.msg}` }))
        : [{ field: null, text: `The API refused the run (HTTP ${error.status ?? "?"}): ${error.message}` }]);
    } finally {
      submitButton.disabled = false;
      submitButton.textContent = "Run";
    }
  }

  function fieldFor(loc) {
    const [where, name] = loc ?? [];
    if (where !== "body") return null;
    if (name === "workflow") return workflowText;
    if (name === "input") return inputText;
    if (name === "options") return loc[2] === "max_turns" ? maxTurns : timeout;
    return null;
  }

  function showErrors(problems) {
    for (const field of [workflowText, inputText, timeout, maxTurns]) field.removeAttribute("aria-invalid");
    replace(errors,
      h("h2", {}, problems.length === 1 ? "One thing to fix" : `${problems.length} things to fix`),
      h("ul", {}, ...problems.map((problem) => {
        if (problem.field) problem.field.setAttribute("aria-invalid", "true");
        const text = problem.text;
        return h("li", {}, problem.field
          ? h("a", { href: `#${problem.field.id}`, onclick: (e) => { e.preventDefault(); problem.field.focus(); } }, text)
          : text);
      })));
    errors.hidden = false;
    errors.focus();
  }

  loadExamples();
  return { title: "Submit a run", element, dispose() { clearTimeout(previewTimer); } };
}
