"""Unit tests of the suggester's guidance: rules per error code, graph analysis, advice."""

from __future__ import annotations

from typing import Any

import pytest

from flowrelay_contracts import (
    ErrorCode,
    RunError,
    RunFailed,
    RunOptions,
    RunRequested,
    Suggestion,
    Workflow,
)
from flowrelay_suggester import advice, analysis, rules
from flowrelay_suggester.analysis import Hints
from flowrelay_suggester.assist import Assistant, parse_answer


def workflow(*agents: dict[str, Any], pattern: str | None = None) -> Workflow:
    body: dict[str, Any] = {"agents": list(agents)}
    if pattern:
        body["pattern"] = pattern
    return Workflow.model_validate(body)


def failure(
    code: ErrorCode,
    *,
    message: str = "it failed",
    wf: Workflow | None = None,
    agent: str | None = None,
    provider_status: int | None = None,
    provider_message: str | None = None,
    options: RunOptions | None = None,
    elapsed_s: float | None = None,
) -> RunFailed:
    return RunFailed(
        run_id="run-1",
        error=RunError(
            code=code,
            message=message,
            agent=agent,
            provider_status=provider_status,
            provider_message=provider_message,
        ),
        workflow=wf,
        options=options or RunOptions(),
        elapsed_s=elapsed_s,
        last_seq=4,
    )


def rule_suggestion(report: RunFailed, *, hints: Hints | None = None) -> Suggestion:
    suggestions = rules.suggest(report, hints=hints)
    assert suggestions, f"no guidance for {report.error.code}"
    first = suggestions[0]
    assert first.code == report.error.code.value
    return first


def codes(suggestions: list[Suggestion]) -> list[str]:
    return [s.code for s in suggestions]


ONE_OPENAI_AGENT = workflow(
    {"name": "writer", "instructions": "Write.", "model_id": "openai:gpt-4o-mini"}
)


# -- rules: one per code ----------------------------------------------------------------


@pytest.mark.parametrize("code", [c for c in ErrorCode if c not in rules.SILENT_CODES])
def test_every_error_code_has_a_rule_with_a_concrete_fix(code: ErrorCode) -> None:
    suggestion = rule_suggestion(failure(code, wf=ONE_OPENAI_AGENT, agent="writer"))
    assert suggestion.title and suggestion.detail and suggestion.fix
    assert "{" not in suggestion.title + suggestion.detail + suggestion.fix  # templates filled
    # a concrete fix names something to change: a variable, an option, a command or a field
    assert "`" in suggestion.fix or "FLOWRELAY_" in suggestion.fix


def test_cancelled_gets_no_guidance() -> None:
    assert rules.suggest(failure(ErrorCode.CANCELLED, wf=ONE_OPENAI_AGENT)) == []


def test_rule_table_covers_every_code_once() -> None:
    covered = [rule.code for rule in rules.RULES] + list(rules.SILENT_CODES)
    assert sorted(covered) == sorted(ErrorCode)


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("openai:gpt-4o-mini", ["OPENAI_API_KEY"]),
        ("anthropic:claude-3-5-haiku-latest", ["ANTHROPIC_API_KEY"]),
        ("mistral:mistral-small-latest", ["MISTRAL_API_KEY"]),
        ("gemini:gemini-2.0-flash", ["GEMINI_API_KEY", "GOOGLE_API_KEY"]),
        ("groq/llama-3.1-8b-instant", ["GROQ_API_KEY"]),
        ("acme:model-x", ["ACME_API_KEY"]),
    ],
)
def test_missing_api_key_names_the_providers_variable(model_id: str, expected: list[str]) -> None:
    wf = workflow({"name": "a", "instructions": "x", "model_id": model_id})
    suggestion = rule_suggestion(
        failure(ErrorCode.MISSING_API_KEY, wf=wf, agent="a", message="missing key")
    )
    for name in expected:
        assert f"`{name}`" in suggestion.fix
    assert model_id in suggestion.detail
    assert "FLOWRELAY_DEFAULT_MODEL" in suggestion.fix and "scripted" in suggestion.fix


def test_missing_api_key_prefers_the_variable_named_by_the_provider() -> None:
    message = (
        "No OpenAI API key provided. Please provide it in the config or set the "
        "OPENAI_COMPATIBLE_API_KEY environment variable."
    )
    wf = workflow({"name": "a", "instructions": "x", "model_id": "openai:gpt-4o"})
    suggestion = rule_suggestion(
        failure(ErrorCode.MISSING_API_KEY, wf=wf, agent="a", message=message)
    )
    assert "`OPENAI_COMPATIBLE_API_KEY`" in suggestion.fix


def test_missing_api_key_for_an_agent_on_the_default_model_uses_the_hint() -> None:
    wf = workflow(
        {"name": "a", "instructions": "x"},
        {"name": "b", "instructions": "y", "model_id": "openai:o3"},
    )
    hints = Hints(default_model="anthropic:claude-3-5-haiku-latest")
    suggestion = rule_suggestion(failure(ErrorCode.MISSING_API_KEY, wf=wf, agent="a"), hints=hints)
    assert "`ANTHROPIC_API_KEY`" in suggestion.fix
    assert suggestion.detail.startswith(
        "Agent `a` could not call `anthropic:claude-3-5-haiku-latest`"
    )


def test_invalid_api_key_names_variable_and_quotes_the_provider_status() -> None:
    suggestion = rule_suggestion(
        failure(
            ErrorCode.INVALID_API_KEY,
            wf=ONE_OPENAI_AGENT,
            agent="writer",
            provider_status=401,
            provider_message="Incorrect API key provided: sk-proj-abcdefghijk1234567890",
        )
    )
    assert "`OPENAI_API_KEY`" in suggestion.fix
    assert "HTTP 401" in suggestion.detail
    assert "abcdefghijk1234567890" not in suggestion.detail  # the key is masked again


def test_unknown_model_points_at_spelling_and_prefix() -> None:
    wf = workflow({"name": "a", "instructions": "x", "model_id": "openai:gpt-4o-mni"})
    suggestion = rule_suggestion(
        failure(ErrorCode.UNKNOWN_MODEL, wf=wf, agent="a", provider_status=404)
    )
    assert "`openai:gpt-4o-mni`" in suggestion.title
    assert "spelling" in suggestion.fix and "<provider>:<model>" in suggestion.fix


def test_unknown_model_without_prefix_says_so() -> None:
    wf = workflow({"name": "a", "instructions": "x", "model_id": "gpt-4o"})
    suggestion = rule_suggestion(failure(ErrorCode.UNKNOWN_MODEL, wf=wf, agent="a"))
    assert "no provider prefix" in suggestion.fix and "`openai:gpt-4o`" in suggestion.fix


def test_rate_limited_says_back_off_and_lower_concurrency() -> None:
    suggestion = rule_suggestion(
        failure(ErrorCode.RATE_LIMITED, wf=ONE_OPENAI_AGENT, provider_status=429)
    )
    assert "back" in suggestion.fix and "FLOWRELAY_WORKERS" in suggestion.fix
    assert "quota" in suggestion.fix


def test_provider_unreachable_points_at_the_api_base() -> None:
    suggestion = rule_suggestion(failure(ErrorCode.PROVIDER_UNREACHABLE, wf=ONE_OPENAI_AGENT))
    assert "FLOWRELAY_DEFAULT_API_BASE" in suggestion.fix


@pytest.mark.parametrize(("status", "expected"), [(400, "model_args"), (503, "retry")])
def test_provider_error_fix_depends_on_the_status(status: int, expected: str) -> None:
    suggestion = rule_suggestion(
        failure(ErrorCode.PROVIDER_ERROR, wf=ONE_OPENAI_AGENT, provider_status=status)
    )
    assert expected in suggestion.fix
    assert f"HTTP {status}" in suggestion.fix


def test_timeout_says_which_option_and_the_server_maximum() -> None:
    report = failure(
        ErrorCode.TIMEOUT,
        wf=ONE_OPENAI_AGENT,
        agent="writer",
        options=RunOptions(timeout_s=30),
        elapsed_s=30.4,
    )
    suggestion = rule_suggestion(report, hints=Hints(max_timeout_s=600))
    assert "`options.timeout_s`" in suggestion.fix
    assert "FLOWRELAY_MAX_TIMEOUT_S = 600 s" in suggestion.fix
    assert "30.4 s" in suggestion.detail and "30 s" in suggestion.detail


def test_max_turns_exceeded_says_raise_max_turns_and_check_tools() -> None:
    report = failure(
        ErrorCode.MAX_TURNS_EXCEEDED,
        wf=ONE_OPENAI_AGENT,
        agent="writer",
        options=RunOptions(max_turns=5),
    )
    suggestion = rule_suggestion(report)
    assert "`options.max_turns`" in suggestion.fix and "now 5" in suggestion.fix
    assert "tools" in suggestion.fix and "instructions" in suggestion.fix
    assert suggestion.title.startswith("Agent `writer`")


def test_tool_failed_names_the_tool_from_the_message() -> None:
    wf = workflow({"name": "a", "instructions": "x", "tools": ["fetch_page", "search_web"]})
    report = failure(
        ErrorCode.TOOL_FAILED, wf=wf, agent="a", message="tool 'search_web' raised ConnectionError"
    )
    suggestion = rule_suggestion(report)
    assert "`search_web`" in suggestion.title and "`search_web`" in suggestion.fix


def test_tool_missing_key_names_the_variable() -> None:
    wf = workflow({"name": "a", "instructions": "x", "tools": ["any_agent.tools.search_tavily"]})
    known = rule_suggestion(failure(ErrorCode.TOOL_MISSING_KEY, wf=wf, agent="a", message="no key"))
    assert "`search_tavily`" in known.title and "`TAVILY_API_KEY`" in known.fix
    named = rule_suggestion(
        failure(
            ErrorCode.TOOL_MISSING_KEY,
            wf=wf,
            agent="a",
            message="tool 'weather' needs WEATHER_API_KEY",
        )
    )
    assert "`weather`" in named.title and "`WEATHER_API_KEY`" in named.fix


def test_worker_crashed_mentions_memory() -> None:
    suggestion = rule_suggestion(failure(ErrorCode.WORKER_CRASHED, message="worker exited with -9"))
    assert "memory" in suggestion.fix and "OOM" in suggestion.fix


@pytest.mark.parametrize(
    ("framework", "command"),
    [
        ("langchain", "pip install 'any-agent[langchain]'"),
        ("llama_index", "pip install 'any-agent[llama-index]'"),
    ],
)
def test_framework_not_installed_gives_the_install_command(framework: str, command: str) -> None:
    wf = workflow({"name": "a", "instructions": "x", "framework": framework})
    suggestion = rule_suggestion(failure(ErrorCode.FRAMEWORK_NOT_INSTALLED, wf=wf, agent="a"))
    assert command in suggestion.fix
    assert f"`{framework}`" in suggestion.title


def test_framework_not_installed_without_workflow_reads_the_message() -> None:
    report = failure(
        ErrorCode.FRAMEWORK_NOT_INSTALLED, message="framework 'smolagents' is not installed"
    )
    assert "pip install 'any-agent[smolagents]'" in rule_suggestion(report).fix


def test_rules_work_without_a_workflow() -> None:
    for code in ErrorCode:
        if code not in rules.SILENT_CODES:
            rule_suggestion(failure(code))


def test_suggestions_never_echo_key_values() -> None:
    secret = "sk-live-0123456789abcdefghij"
    report = failure(
        ErrorCode.PROVIDER_ERROR,
        message=f"request failed with api_key={secret}",
        provider_status=500,
        provider_message=f"Authorization: Bearer {secret} rejected; token: abc123def",
    )
    text = " ".join(s.detail + s.fix for s in rules.suggest(report))
    assert secret not in text and "abc123def" not in text


def test_redact_masks_key_like_values_and_cuts_long_text() -> None:
    assert "sk-***" in rules.redact("key sk-abcdefghijklmnop was wrong")
    assert "AIza***" in rules.redact("AIzaSyA1234567890abcdefghijklmn")
    assert "OPENAI_API_KEY" in rules.redact("set the OPENAI_API_KEY environment variable")
    assert len(rules.redact("x" * 1000, limit=50)) == 50


def test_failure_guidance_adds_the_graph_analysis_after_the_rule() -> None:
    wf = workflow({"name": "a", "model_id": "openai:gpt-4o"})  # no instructions
    found = rules.suggest(failure(ErrorCode.MISSING_API_KEY, wf=wf, agent="a"))
    assert codes(found) == ["missing_api_key", "agent_without_instructions"]


def test_failure_guidance_is_deterministic() -> None:
    report = failure(ErrorCode.TIMEOUT, wf=ONE_OPENAI_AGENT, options=RunOptions(timeout_s=5))
    assert rules.suggest(report) == rules.suggest(report)


def test_markdown_table_has_a_row_per_code() -> None:
    table = rules.markdown_table()
    lines = table.strip().splitlines()
    assert lines[0].startswith("| code |")
    assert len(lines) == 2 + len(ErrorCode)
    for code in ErrorCode:
        assert f"| `{code.value}` |" in table
    assert "OPENAI_API_KEY" in table and "{" not in table


# -- analysis -------------------------------------------------------------------------


def test_analysis_finds_an_agent_without_instructions() -> None:
    found = analysis.review(
        workflow({"name": "a", "instructions": "do"}, {"name": "b", "instructions": "  "})
    )
    assert codes(found) == ["agent_without_instructions"]
    assert "`b`" in found[0].title and "step 2 of 2" in found[0].detail


def test_analysis_finds_a_chain_longer_than_its_timeout() -> None:
    chain = workflow(*({"name": f"a{i}", "instructions": "x"} for i in range(4)))
    found = analysis.review(chain, timeout_s=20)
    assert codes(found) == ["chain_exceeds_timeout"]
    assert "`options.timeout_s`" in found[0].fix and "40" in found[0].fix
    assert analysis.review(chain, timeout_s=100) == []
    assert analysis.review(chain, timeout_s=None) == []


def test_analysis_finds_a_coordinator_that_does_not_mention_its_sub_agents() -> None:
    team = workflow(
        {"name": "lead", "instructions": "Answer the question."},
        {"name": "web_researcher", "instructions": "Search."},
        {"name": "critic", "instructions": "Critique."},
        pattern="collaborative",
    )
    found = analysis.review(team)
    assert codes(found) == ["coordinator_ignores_subagents"]
    assert "`web_researcher`" in found[0].fix
    team.nodes[0].data.instructions = "Ask the web researcher for facts, then the critic."
    assert analysis.review(team) == []


def test_analysis_finds_a_coordinator_without_sub_agents() -> None:
    alone = workflow({"name": "lead", "instructions": "x"}, pattern="collaborative")
    assert codes(analysis.review(alone)) == ["coordinator_without_subagents"]


def test_analysis_finds_a_coordinator_without_instructions() -> None:
    team = workflow(
        {"name": "lead"}, {"name": "helper", "instructions": "x"}, pattern="collaborative"
    )
    found = analysis.review(team)
    assert codes(found) == ["agent_without_instructions"]
    assert "the coordinator" in found[0].detail and "sub-agent" in found[0].fix


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8000/mcp",
        "http://127.0.0.1:9000/sse",
        "http://[::1]:8000/mcp",
        "http://0.0.0.0:8000",
    ],
)
def test_analysis_finds_mcp_servers_on_localhost(url: str) -> None:
    wf = workflow({"name": "a", "instructions": "x", "tools": [{"url": url}]})
    found = analysis.review(wf)
    assert codes(found) == ["mcp_localhost"]
    assert url in found[0].detail


def test_analysis_accepts_reachable_mcp_servers() -> None:
    wf = workflow(
        {
            "name": "a",
            "instructions": "x",
            "tools": [{"url": "http://mcp-tools:8000/mcp"}, "search_web"],
        }
    )
    assert analysis.review(wf) == []


def test_analysis_flags_stdio_mcp_commands() -> None:
    wf = workflow(
        {
            "name": "a",
            "instructions": "x",
            "tools": [{"command": "uvx", "args": ["mcp-server-time"]}],
        }
    )
    found = analysis.review(wf)
    assert codes(found) == ["mcp_stdio_command"]
    assert "allowlist" in found[0].fix


def test_analysis_flags_unknown_frameworks() -> None:
    found = analysis.review(workflow({"name": "a", "instructions": "x", "framework": "crewai"}))
    assert codes(found) == ["unknown_framework"]


def test_analysis_reports_each_workflow_problem_with_its_pointer() -> None:
    cyclic = Workflow.model_validate(
        {
            "nodes": [{"id": "n1", "data": {"name": "a"}}, {"id": "n2", "data": {"name": "b"}}],
            "edges": [{"source": "n1", "target": "n2"}, {"source": "n2", "target": "n1"}],
        }
    )
    found = analysis.review(cyclic)
    assert codes(found) == ["workflow_problem"]
    assert "cycle" in found[0].detail and "Remove one edge" in found[0].fix
    assert found[0].title.startswith("Workflow problem at /workflow/edges")


def test_analysis_without_a_workflow_finds_nothing() -> None:
    assert analysis.review(None, timeout_s=1) == []


# -- suggestion-only advice -----------------------------------------------------------


def request(wf: Workflow) -> RunRequested:
    return RunRequested(run_id="run-2", workflow=wf, input="What is NATS?")


def test_advice_describes_the_sequential_data_flow() -> None:
    wf = workflow(
        {"name": "researcher", "instructions": "Find facts.", "model_id": "openai:gpt-4o-mini"},
        {
            "name": "writer",
            "instructions": "Write.",
            "model_id": "openai:gpt-4o-mini",
            "output_schema": {"type": "object"},
        },
    )
    found = advice.advise(request(wf))
    assert codes(found) == ["pattern_sequential", "suggestion_only_mode"]
    assert "`researcher` receives the run's input" in found[0].detail
    assert "`writer` receives `researcher`'s answer" in found[0].detail
    assert "FLOWRELAY_EXECUTION=execute" in found[-1].fix


def test_advice_points_out_missing_output_schema_default_model_and_extras() -> None:
    wf = workflow(
        {"name": "lead", "instructions": "Use the helper.", "framework": "langchain"},
        {"name": "helper", "instructions": "Help."},
        pattern="collaborative",
    )
    found = advice.advise(request(wf), hints=Hints(default_model="openai:gpt-4o-mini"))
    assert codes(found) == [
        "pattern_collaborative",
        "missing_output_schema",
        "agent_without_model",
        "framework_needs_extra",
        "suggestion_only_mode",
    ]
    assert "`lead`" in found[1].fix
    assert "`openai:gpt-4o-mini`" in found[2].detail
    assert "any-agent[langchain]" in found[3].fix


def test_advice_includes_the_analysis() -> None:
    wf = workflow({"name": "solo", "tools": [{"url": "http://localhost:1234/mcp"}]})
    found = codes(advice.advise(request(wf)))
    assert found[0] == "pattern_simple"
    assert {"agent_without_instructions", "mcp_localhost"} <= set(found)


def test_advice_for_an_invalid_graph_lists_its_problems() -> None:
    wf = workflow({"name": "lead", "instructions": "x"}, pattern="collaborative")
    assert codes(advice.advise(request(wf))) == [
        "coordinator_without_subagents",
        "suggestion_only_mode",
    ]


# -- model-written explanation parsing --------------------------------------------------


def test_parse_answer_splits_explanation_and_fix() -> None:
    parsed = parse_answer(
        "EXPLANATION: The key is missing.\nFIX: Set OPENAI_API_KEY on the executors."
    )
    assert parsed is not None and parsed.code == Assistant.CODE
    assert parsed.detail == "The key is missing."
    assert parsed.fix == "Set OPENAI_API_KEY on the executors."


def test_parse_answer_accepts_free_text_and_rejects_empty() -> None:
    parsed = parse_answer("The model key sk-abcdefghijklmnopq is wrong.")
    assert parsed is not None and "sk-abcdefghijklmnopq" not in parsed.detail and parsed.fix
    assert parse_answer("   ") is None


def test_without_a_workflow_the_provider_and_model_come_from_the_executors_message() -> None:
    report = failure(
        ErrorCode.UNKNOWN_MODEL,
        message="provider 'mistral' does not know model 'mistral-smal' (HTTP 404): check the model id",
        provider_status=404,
    )
    suggestion = rule_suggestion(report)
    assert "`mistral:mistral-smal`" in suggestion.title
    assert "`mistral`" in suggestion.detail and "no provider prefix" not in suggestion.fix


def test_executor_style_messages_name_the_tool_and_its_variable() -> None:
    report = failure(
        ErrorCode.TOOL_MISSING_KEY,
        message="tool 'search_tavily' needs a credential that is not configured: TAVILY_API_KEY. "
        "Set it in the executor's environment, or remove the tool from the agent.",
    )
    suggestion = rule_suggestion(report)
    assert "`search_tavily`" in suggestion.title and "`TAVILY_API_KEY`" in suggestion.fix


def test_schema_mismatch_gets_schema_advice() -> None:
    report = failure(
        ErrorCode.PROVIDER_ERROR,
        message="the model's answer did not match the agent's output_schema: 1 validation error",
    )
    assert "`output_schema`" in rule_suggestion(report).fix
