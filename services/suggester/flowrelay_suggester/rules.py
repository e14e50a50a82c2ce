"""Guidance for failed runs: one rule per :class:`ErrorCode`, in one table.

A rule says what went wrong and the concrete change that fixes it: the variable to set,
the option to raise, the extra to install. Its texts are templates filled with
:class:`Facts` drawn from the failure report (which agent, which model and provider,
which tool, which limits), so ``missing_api_key`` for ``openai:gpt-4o-mini`` says
"set ``OPENAI_API_KEY``" rather than "set your API key".

:func:`suggest` gives the rule's suggestion first, then what the graph analysis finds
(:mod:`flowrelay_suggester.analysis`). :func:`markdown_table` renders the table for the
README with placeholders instead of facts.

Secrets: the executor redacts provider messages before publishing them; :func:`redact`
masks anything key-like again before a text is echoed, and only variable *names* are ever
written, never values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from flowrelay_contracts import AgentSpec, ErrorCode, McpServer, RunError, RunFailed, Suggestion
from flowrelay_contracts.workflow import KNOWN_FRAMEWORKS, Workflow
from flowrelay_suggester import analysis
from flowrelay_suggester.analysis import Hints

#: Most suggestions sent for one failure: the rule's plus the analysis' most important.
MAX_SUGGESTIONS = 8

#: Longest provider or error text quoted in a suggestion (they can hold whole HTTP bodies).
MAX_QUOTE_CHARS = 300

#: Codes that get no guidance: the run ended because someone asked it to.
SILENT_CODES = frozenset({ErrorCode.CANCELLED})

#: Model id prefix -> environment variable(s) its any-llm provider reads the key from.
PROVIDER_KEY_VARS: Mapping[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "mistral": ("MISTRAL_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "google": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "groq": ("GROQ_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "cohere": ("COHERE_API_KEY",),
    "together": ("TOGETHER_API_KEY",),
    "fireworks": ("FIREWORKS_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "cerebras": ("CEREBRAS_API_KEY",),
    "sambanova": ("SAMBANOVA_API_KEY",),
    "huggingface": ("HF_TOKEN",),
    "azure": ("AZURE_API_KEY",),
    "azureopenai": ("AZURE_OPENAI_API_KEY",),
    "bedrock": ("AWS_BEARER_TOKEN_BEDROCK",),
    "github": ("GITHUB_TOKEN",),
    "perplexity": ("PERPLEXITY_API_KEY",),
}

#: Providers that run locally and take no key.
KEYLESS_PROVIDERS = frozenset({"ollama", "vllm", "llamacpp", "llamafile", "lmstudio", "scripted"})

#: Built-in any-agent tools that need a key, and the variable they read.
TOOL_KEY_VARS: Mapping[str, str] = {
    "search_tavily": "TAVILY_API_KEY",
}

#: any-agent framework -> the pip extra that installs it (``tinyagent`` is built in).
FRAMEWORK_EXTRAS: Mapping[str, str] = {
    "openai": "openai",
    "langchain": "langchain",
    "llama_index": "llama-index",
    "google": "google",
    "agno": "agno",
    "smolagents": "smolagents",
}

_ENV_VAR_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_(?:API_KEY|TOKEN|KEY|SECRET)\b")
_QUOTED_PROVIDER = re.compile(r"\bprovider\s*'([\w.\-]+)'", re.IGNORECASE)
_QUOTED_MODEL = re.compile(r"\bmodel\s*'([\w.:/\-]+)'", re.IGNORECASE)
_GENERIC_NAMES = frozenset({"API_KEY", "ACCESS_TOKEN", "AUTH_TOKEN", "SECRET_KEY"})
_QUOTED_TOOL = re.compile(r"\btool\s*[`'\"]([A-Za-z_][\w.\-]*)[`'\"]", re.IGNORECASE)
_QUOTED_FRAMEWORK = re.compile(r"\bframework\s*[`'\"]?([a-z_]+)", re.IGNORECASE)
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "api_key=...", "token: ..." -> keep the name, mask the value
    (re.compile(r"(?i)\b(api[_-]?key|token|secret|password)(\s*[=:]\s*)([^\s,;'\"]+)"), r"\1\2***"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]+=*"), "Bearer ***"),
    (re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{6,}"), r"\1-***"),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"), "AIza***"),
    # long opaque tokens mixing letters and digits (keys, signed URLs)
    (re.compile(r"\b(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{40,}\b"), "***"),
)


@dataclass(frozen=True, kw_only=True)
class Facts:
    """What a failure report says, as phrases ready to drop into a rule's templates."""

    agent: str = "the agent"
    model: str = "the model"
    provider: str = "the model provider"
    key_var: str = "the provider's API key variable (e.g. `OPENAI_API_KEY` for `openai:*` models)"
    prefix_hint: str = ""
    tool: str = "the tool"
    tool_key_var: str = (
        "the variable the tool documents (e.g. `TAVILY_API_KEY` for `search_tavily`)"
    )
    framework: str = "the agent's framework"
    install: str = "`pip install 'any-agent[<framework>]'`"
    timeout: str = "the server default (FLOWRELAY_DEFAULT_TIMEOUT_S)"
    timeout_limit: str = "the server maximum, FLOWRELAY_MAX_TIMEOUT_S"
    elapsed: str = "its deadline"
    turns: str = "all its turns"
    max_turns_now: str = ""
    budget: str = "its budget (`options.max_cost_usd` / `options.max_tokens`)"
    provider_error_fix: str = (
        "A 4xx answer means the request itself was refused: check the node's `model_args`, its "
        "`output_schema` (not every model supports structured output) and the input length. "
        "A 5xx answer is on the provider's side: retry later or switch model."
    )
    evidence: str = ""


@dataclass(frozen=True, kw_only=True)
class Rule:
    """The guidance for one error code; ``detail`` and ``fix`` are :class:`Facts` templates."""

    code: ErrorCode
    title: str
    detail: str
    fix: str

    def apply(self, facts: Facts) -> Suggestion:
        values = asdict(facts)
        return Suggestion(
            code=self.code.value,
            title=_sentence(self.title.format(**values)),
            detail=_sentence(self.detail.format(**values) + facts.evidence),
            fix=_sentence(self.fix.format(**values)),
        )


#: The guidance table. Read it as: when a run fails with ``code``, tell the user ``title``,
#: explain ``detail`` and give them ``fix``.
RULES: tuple[Rule, ...] = (
    Rule(
        code=ErrorCode.MISSING_API_KEY,
        title="No API key for {provider}",
        detail="{agent} could not call {model}: no API key for {provider} is set where the agent runs.",
        fix="Set {key_var} in the environment of every executor (agents run there; the API does "
        "not need it) and restart the executors; for agents without `model_id`, "
        "FLOWRELAY_DEFAULT_API_KEY works too. To try the workflow without any key, use a "
        "`scripted:<name>` model id (FLOWRELAY_DEFAULT_MODEL or the node's `model_id`) with "
        "FLOWRELAY_SCRIPTED_MODEL_URL, as `flowrelay up` does when no key is set.",
    ),
    Rule(
        code=ErrorCode.INVALID_API_KEY,
        title="{provider} rejected the API key",
        detail="{agent}: {provider} refused the key sent for {model}.",
        fix="Replace the value of {key_var} on the executors with an active key for {provider} "
        "(not revoked, no stray quotes or spaces, from an account with access to {model}) and "
        "restart them. If FLOWRELAY_DEFAULT_API_BASE points at another endpoint, use that "
        "endpoint's key (FLOWRELAY_DEFAULT_API_KEY).",
    ),
    Rule(
        code=ErrorCode.UNKNOWN_MODEL,
        title="Model {model} was not found",
        detail="{provider} does not know {model}, or this key has no access to it.",
        fix="Check the spelling of the model id and its provider prefix in the node's `model_id` "
        "(or FLOWRELAY_DEFAULT_MODEL): it is `<provider>:<model>`, e.g. `openai:gpt-4o-mini`, "
        "`anthropic:claude-3-5-haiku-latest`, `mistral:mistral-small-latest`{prefix_hint}. "
        "Then check that your account can use that model.",
    ),
    Rule(
        code=ErrorCode.RATE_LIMITED,
        title="Rate limit of {provider} reached",
        detail="{provider} refused more requests for {model} for now.",
        fix="flowrelay retries rate-limited runs by itself, honouring Retry-After: give the run more "
        "attempts or longer waits (`options.retry.attempts`, `options.retry.max_backoff_s`; server "
        "defaults FLOWRELAY_RETRY_ATTEMPTS / FLOWRELAY_RETRY_MAX_BACKOFF_S) and a `timeout_s` long "
        "enough for them; run fewer agents at once (fewer executors, or lower FLOWRELAY_WORKERS / "
        "FLOWRELAY_SLOTS_PER_WORKER); and if it persists, raise the rate limit or quota with "
        "{provider} (check billing) or move some agents to another model.",
    ),
    Rule(
        code=ErrorCode.PROVIDER_UNREACHABLE,
        title="Cannot reach {provider}",
        detail="The executor could not connect to the endpoint serving {model}.",
        fix="From an executor's host or container, check DNS, proxy (HTTPS_PROXY / NO_PROXY) and "
        "firewall access to the provider. If FLOWRELAY_DEFAULT_API_BASE is set, check its URL "
        "(scheme, host, port, `/v1` suffix) is reachable from the executors: `localhost` there "
        "is the executor itself. Then retry the run.",
    ),
    Rule(
        code=ErrorCode.PROVIDER_ERROR,
        title="{provider} returned an error",
        detail="{provider} answered {agent}'s call to {model} with an error.",
        fix="{provider_error_fix}",
    ),
    Rule(
        code=ErrorCode.TIMEOUT,
        title="The run hit its deadline",
        detail="The run was stopped after {elapsed} (timeout: {timeout}); {agent} was still working.",
        fix="Raise `options.timeout_s` in the request (up to {timeout_limit}), or make the run "
        "shorter: split a long chain into separate runs, ask less of each agent, or use a "
        "faster model.",
    ),
    Rule(
        code=ErrorCode.MAX_TURNS_EXCEEDED,
        title="{agent} ran out of turns",
        detail="{agent} used {turns} (LLM calls) without producing a final answer.",
        fix="Raise `options.max_turns` in the request{max_turns_now}; tighten {agent}'s "
        "instructions to say when to stop and answer; and check its tools return what it "
        "needs: an agent calling the same tool over and over is usually not getting a usable "
        "result.",
    ),
    Rule(
        code=ErrorCode.TOOL_FAILED,
        title="Tool {tool} failed",
        detail="{tool}, called by {agent}, raised an error.",
        fix="Check {tool}'s arguments and what it depends on (service URL, credentials, network "
        "access from the executors) in the executor logs; make the tool return an error message "
        "instead of raising so the agent can recover; or remove {tool} from {agent} to check "
        "the rest of the workflow works.",
    ),
    Rule(
        code=ErrorCode.TOOL_MISSING_KEY,
        title="Tool {tool} has no key",
        detail="{tool}, called by {agent}, needs a key that is not set on the executors.",
        fix="Set {tool_key_var} in the environment of every executor (tools run in the "
        "executors' worker processes) and restart them; or remove {tool} from {agent}.",
    ),
    Rule(
        code=ErrorCode.WORKER_CRASHED,
        title="The worker process running the agent crashed",
        detail="The worker process died during the run, most likely inside a tool or a native library.",
        fix="Check the executor logs and its memory limit (a kill by SIGKILL / exit 137 is "
        "usually the OOM killer): give the executors more memory or lower "
        "FLOWRELAY_RECYCLE_RSS_MB so workers are replaced before they grow too big, make tools "
        "handle less data at once, or move a crashing tool into an MCP server so it runs out of "
        "process. The executors retry a crashed run on a fresh worker under its retry policy "
        "(`options.retry`, resuming after its finished steps); a run that crashes every worker "
        "fails once its attempts are used up.",
    ),
    Rule(
        code=ErrorCode.FRAMEWORK_NOT_INSTALLED,
        title="Framework {framework} is not installed on the executors",
        detail="{agent} uses {framework}, which the executor cannot import.",
        fix="Install it on every executor with {install} (add it to the executor image) and "
        "restart them, or set the node's `framework` to `tinyagent`, which is built in.",
    ),
    Rule(
        code=ErrorCode.INVALID_WORKFLOW,
        title="The workflow graph cannot run",
        detail="The executor could not turn the graph into a run.",
        fix="Fix the `nodes` and `edges` named: connect the agents as one chain (sequential) or "
        "from one coordinator to every other agent (collaborative), with unique node `id`s and "
        "agent `name`s and no cycles, or set `pattern` explicitly.",
    ),
    Rule(
        code=ErrorCode.INVALID_REQUEST,
        title="The run request was refused",
        detail="The request could not be run as sent.",
        fix="Check the body against the API schema (`/docs`): a non-empty `input`, a `workflow`, "
        "and `options.timeout_s` / `options.max_turns` positive and within the server limits "
        "(FLOWRELAY_MAX_TIMEOUT_S).",
    ),
    Rule(
        code=ErrorCode.QUEUE_FULL,
        title="Too many runs were queued",
        detail="The run queue (queued and running runs) was at its limit when this run was submitted.",
        fix="Retry after the Retry-After the API answered, submitting fewer runs at once; start more executors "
        "so runs finish sooner, or raise FLOWRELAY_MAX_QUEUED_RUNS / FLOWRELAY_MAX_QUEUED_RUNS_PER_TENANT.",
    ),
    Rule(
        code=ErrorCode.OUTPUT_TOO_LARGE,
        title="The run's output is too large to keep",
        detail="The final output is larger than the executors may store for one run.",
        fix="Ask the last agent for a shorter answer (or a summary, with the bulk written somewhere "
        "by a tool and referenced by name), or raise FLOWRELAY_MAX_OUTPUT_BYTES on the executors.",
    ),
    Rule(
        code=ErrorCode.BUDGET_EXCEEDED,
        title="The run went over its budget",
        detail="The run's model calls passed {budget}, so it was stopped there; the record keeps "
        "the partial usage and cost, per agent.",
        fix="If the spend is expected, raise {budget} (the server caps them at "
        "FLOWRELAY_MAX_MAX_COST_USD / FLOWRELAY_MAX_MAX_TOKENS). Otherwise make the run cheaper: "
        "look at the record's `agents` for the one that spent most, give it a cheaper model, "
        "shorter instructions or input, fewer turns (`options.max_turns`) or fewer tools; for a "
        "model without a known price, budget tokens (`options.max_tokens`) instead of cost.",
    ),
    Rule(
        code=ErrorCode.INTERNAL_ERROR,
        title="Internal error in flowrelay",
        detail="The run failed inside flowrelay, not in the agent or the provider.",
        fix="Retry the run; if it fails the same way, run the executors with "
        "FLOWRELAY_LOG_LEVEL=DEBUG and report the run id with their logs from the time of the "
        "failure.",
    ),
)

_BY_CODE: Mapping[ErrorCode, Rule] = {rule.code: rule for rule in RULES}


def rule_for(code: ErrorCode) -> Rule | None:
    """The rule for ``code``; ``None`` for codes that get no guidance (see ``SILENT_CODES``)."""
    return _BY_CODE.get(code)


def suggest(failure: RunFailed, *, hints: Hints | None = None) -> list[Suggestion]:
    """Guidance for one failed run: the rule for its code, then the workflow analysis.

    Empty for codes in :data:`SILENT_CODES`. Deterministic, so a redelivered report yields
    the same list.
    """
    hints = hints or Hints()
    rule = rule_for(failure.error.code)
    if rule is None:
        return []
    suggestions = [rule.apply(facts_for(failure, hints=hints))]
    timeout_s = failure.options.timeout_s or hints.default_timeout_s
    seen = {(s.code, s.title) for s in suggestions}
    for found in analysis.review(failure.workflow, timeout_s=timeout_s):
        if (found.code, found.title) not in seen:
            suggestions.append(found)
            seen.add((found.code, found.title))
    return suggestions[:MAX_SUGGESTIONS]


def facts_for(failure: RunFailed, *, hints: Hints) -> Facts:
    """Everything the rule templates can name, drawn from the report and the deployment."""
    error = failure.error
    spec = _agent_spec(failure.workflow, error.agent)
    text = " ".join(filter(None, (error.message, error.provider_message)))
    # The model id as the user wrote it (node or server default), else as the error names it.
    written = (
        (spec.model_id if spec else None) or _only_model(failure.workflow) or hints.default_model
    )
    provider, model_name = split_model_id(written)
    model_id = written
    if written and provider is None:
        prefix_hint = (
            f" (`{written}` has no provider prefix: write e.g. `openai:{model_name}`)"
        )
    else:
        prefix_hint = ""
    if written is None:
        provider = _quoted(_QUOTED_PROVIDER, text)
        if named := _quoted(_QUOTED_MODEL, text):
            model_id = f"{provider}:{named}" if provider and ":" not in named else named
    facts: dict[str, str] = {"evidence": _evidence(error), "prefix_hint": prefix_hint}
    if agent := error.agent or (spec.name if spec else None):
        facts["agent"] = f"agent `{agent}`"
    if model_id:
        facts["model"] = f"`{model_id}`"
    if provider:
        facts["provider"] = f"`{provider}`"
    if key_var := _key_var(error, text=text, provider=provider):
        facts["key_var"] = key_var
    tool = _tool_name(text, spec)
    if tool:
        facts["tool"] = f"`{tool}`"
    if error.code == ErrorCode.TOOL_MISSING_KEY and (
        var := _mentioned_var(text) or TOOL_KEY_VARS.get(tool or "")
    ):
        facts["tool_key_var"] = f"`{var}`"
    if framework := _framework(text, spec):
        facts["framework"] = f"`{framework}`"
        facts["install"] = _install_command(framework)
    if (timeout_s := failure.options.timeout_s or hints.default_timeout_s) is not None:
        facts["timeout"] = f"{timeout_s:g} s"
    if hints.max_timeout_s is not None:
        facts["timeout_limit"] = (
            f"the server maximum, FLOWRELAY_MAX_TIMEOUT_S = {hints.max_timeout_s:g} s"
        )
    if failure.elapsed_s is not None:
        facts["elapsed"] = f"{failure.elapsed_s:.1f} s"
    budgets = [f"`options.max_cost_usd` = {failure.options.max_cost_usd:g} USD"] if failure.options.max_cost_usd else []
    if failure.options.max_tokens:
        budgets.append(f"`options.max_tokens` = {failure.options.max_tokens}")
    if budgets:
        facts["budget"] = " and ".join(budgets)
    if failure.options.max_turns is not None:
        facts["turns"] = f"all {failure.options.max_turns} turns"
        facts["max_turns_now"] = f" (now {failure.options.max_turns})"
    if error.code == ErrorCode.PROVIDER_ERROR and (
        error.provider_status is not None or "output_schema" in text
    ):
        facts["provider_error_fix"] = _provider_error_fix(error.provider_status)
    return Facts(**facts)


def split_model_id(model_id: str | None) -> tuple[str | None, str]:
    """``"openai:gpt-4o"`` -> ``("openai", "gpt-4o")``; also the legacy ``provider/model``."""
    if not model_id:
        return None, ""
    for separator in (":", "/"):
        provider, found, name = model_id.partition(separator)
        if found and provider and name:
            return provider.lower(), name
    return None, model_id


def redact(text: str, *, limit: int = MAX_QUOTE_CHARS) -> str:
    """``text`` with key-like values masked and cut to ``limit`` characters."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def markdown_table() -> str:
    """The guidance table as Markdown, with placeholders where a real failure has facts."""
    generic = Facts(
        agent="the agent",
        model="`<provider>:<model>`",
        provider="the provider",
        key_var="`<PROVIDER>_API_KEY` (e.g. `OPENAI_API_KEY` for `openai:*`)",
        tool="`<tool>`",
        tool_key_var="the variable the tool needs (e.g. `TAVILY_API_KEY`)",
        framework="`<framework>`",
        timeout="`options.timeout_s`",
        elapsed="the deadline",
    )
    lines = ["| code | guidance | fix |", "| --- | --- | --- |"]
    for rule in RULES:
        suggestion = rule.apply(generic)
        lines.append(f"| `{rule.code.value}` | {suggestion.title} | {_cell(suggestion.fix)} |")
    for code in sorted(SILENT_CODES):
        lines.append(f"| `{code.value}` | (none: the run was cancelled on request) | |")
    return "\n".join(lines) + "\n"


# -- helpers ----------------------------------------------------------------------------


def _agent_spec(workflow: Workflow | None, name: str | None) -> AgentSpec | None:
    if workflow is None:
        return None
    agents = [node.data for node in workflow.nodes]
    if name is None:
        return agents[0] if len(agents) == 1 else None
    return next((agent for agent in agents if agent.name == name), None)


def _only_model(workflow: Workflow | None) -> str | None:
    """The model id every node names, if they all name the same one."""
    if workflow is None:
        return None
    models = {node.data.model_id for node in workflow.nodes}
    return models.pop() if len(models) == 1 else None


def _key_var(error: RunError, *, text: str, provider: str | None) -> str | None:
    if error.code not in (ErrorCode.MISSING_API_KEY, ErrorCode.INVALID_API_KEY):
        return None
    if var := _mentioned_var(text):
        return f"`{var}`"
    if provider in KEYLESS_PROVIDERS:
        return None
    if provider in PROVIDER_KEY_VARS:
        first, *others = PROVIDER_KEY_VARS[provider]
        return f"`{first}`" + "".join(f" (or `{other}`)" for other in others)
    if provider:
        return f"the key variable of `{provider}` (usually `{provider.upper()}_API_KEY`)"
    return None


def _quoted(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.search(text)
    return found.group(1) if found else None


def _mentioned_var(text: str) -> str | None:
    """The first specific variable name in ``text`` (a bare ``API_KEY`` names nothing)."""
    return next(
        (m.group(0) for m in _ENV_VAR_NAME.finditer(text) if m.group(0) not in _GENERIC_NAMES), None
    )


def _tool_name(text: str, spec: AgentSpec | None) -> str | None:
    if found := _QUOTED_TOOL.search(text):
        return found.group(1)
    for name in _tool_names(spec):
        if re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text):
            return name
    names = _tool_names(spec)
    return names[0] if len(names) == 1 else None


def _tool_names(spec: AgentSpec | None) -> list[str]:
    if spec is None:
        return []
    names: list[str] = []
    for tool in spec.tools:
        if isinstance(tool, McpServer):
            names.extend(tool.tools or ())
        else:
            names.append(tool.rsplit(".", 1)[-1])
    return names


def _framework(text: str, spec: AgentSpec | None) -> str | None:
    if spec is not None:
        return spec.framework
    if (found := _QUOTED_FRAMEWORK.search(text)) and found.group(1).lower() in KNOWN_FRAMEWORKS:
        return found.group(1).lower()
    return next((name for name in KNOWN_FRAMEWORKS if name in text), None)


def _evidence(error: RunError) -> str:
    """What the failure report itself says, quoted (redacted) after the detail."""
    if error.provider_status is not None or error.provider_message:
        status = (
            f"HTTP {error.provider_status}" if error.provider_status is not None else "an error"
        )
        said = f": {redact(error.provider_message)}" if error.provider_message else ""
        return f" The provider answered {status}{said}"
    if error.message:
        return f" Reported: {redact(error.message)}"
    return ""


def _provider_error_fix(status: int | None) -> str:
    if status is None:  # the executor's only status-less provider error: a schema mismatch
        return (
            "The model's answer did not match the agent's `output_schema`: simplify the schema "
            "(fewer nested or required fields), describe each field in the agent's instructions, "
            "or use a model that supports structured output."
        )
    if 400 <= status < 500:
        return (
            f"The provider refused the request itself (HTTP {status}): check the node's "
            "`model_args` (names and values the model accepts), its `output_schema` (not every "
            "model supports structured output) and the input length (context window)."
        )
    return (
        f"The error is on the provider's side (HTTP {status}): retry the run later; if it "
        "persists, check the provider's status page or switch the agent to another model."
    )


def _install_command(framework: str) -> str:
    if framework in FRAMEWORK_EXTRAS:
        return f"`pip install 'any-agent[{FRAMEWORK_EXTRAS[framework]}]'`"
    return "`pip install any-agent`"  # tinyagent ships with any-agent itself


def _sentence(text: str) -> str:
    """``text`` stripped, starting with a capital (templates may start with a fact)."""
    text = text.strip()
    return text[:1].upper() + text[1:]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
