"""Optional model-written explanation of a failure, added after the rule-based guidance.

Off unless ``FLOWRELAY_SUGGESTER_MODEL`` names a model. The model sees the structured
error (already redacted by the executor), the shape of the workflow and the rule-based
suggestions, never the run's input or any key, and writes a short explanation and fix.
Any problem with the model (timeout, error, empty answer) only means there is no extra
suggestion: the rule-based one is always published first and never waits on this.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, ClassVar

from flowrelay_contracts import McpServer, RunFailed, Suggestion
from flowrelay_suggester.rules import redact
from flowrelay_suggester.settings import SuggesterSettings

log = logging.getLogger(__name__)

#: Longest explanation or fix kept from the model's answer.
MAX_ANSWER_CHARS = 800

#: Most characters of an agent's instructions shown to the model.
MAX_INSTRUCTIONS_CHARS = 300

#: Enough for a few sentences; the answer is cut anyway.
MAX_COMPLETION_TOKENS = 300

_SYSTEM_PROMPT = (
    "You help users of flowrelay, a service that runs AI agent workflows, understand why a run "
    "failed. You get the structured error, the workflow's shape and the guidance already given. "
    "Answer in two short parts, each on its own line:\n"
    "EXPLANATION: what most likely went wrong, in at most three sentences.\n"
    "FIX: the single most useful concrete change.\n"
    "Never ask for or repeat secrets; name environment variables, never values."
)
_FIX_MARKER = re.compile(r"^\s*\**\s*FIX\s*\**\s*:", re.IGNORECASE | re.MULTILINE)
_EXPLANATION_MARKER = re.compile(r"^\s*\**\s*EXPLANATION\s*\**\s*:\s*", re.IGNORECASE)


class Assistant:
    """Asks a model (through any-llm) for one more suggestion about a failure."""

    #: ``Suggestion.code`` of the model-written suggestion.
    CODE: ClassVar[str] = "model_explanation"
    #: ``data.source`` of the event carrying it.
    SOURCE: ClassVar[str] = "model"

    def __init__(
        self,
        *,
        model: str,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout_s: float,
    ) -> None:
        self.model = model
        self._api_base = api_base
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._loading: asyncio.Task[tuple[Any, str]] | None = None

    def start(self) -> None:
        """Begin importing any-llm and building the provider client, in a thread.

        Importing any-llm takes seconds. Done inside a handler it would stall every other
        message; awaited at startup it would delay the rule-based guidance. So it runs in the
        background and the first explanations wait for it (within their own deadline).
        """
        if self._loading is None:
            self._loading = asyncio.create_task(
                asyncio.to_thread(
                    _make_client, self.model, api_key=self._api_key, api_base=self._api_base
                )
            )

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()  # the thread finishes on its own; nobody waits for it

    @classmethod
    def from_settings(cls, settings: SuggesterSettings) -> Assistant | None:
        """The configured assistant, or ``None`` when no model is set (the default)."""
        if not settings.suggester_model:
            return None
        return cls(
            model=settings.suggester_model,
            api_base=settings.suggester_api_base,
            api_key=settings.suggester_api_key.get_secret_value()
            if settings.suggester_api_key
            else None,
            timeout_s=settings.suggester_model_timeout_s,
        )

    async def explain(self, failure: RunFailed, suggestions: list[Suggestion]) -> Suggestion | None:
        """One model-written suggestion, or ``None`` if the model did not answer in time."""
        self.start()
        assert self._loading is not None
        messages = [
            {"role": "system", "content": _SYSTEM_PROMPT},
            {"role": "user", "content": json.dumps(_briefing(failure, suggestions), indent=1)},
        ]
        try:
            async with asyncio.timeout(self._timeout_s):
                client, model_name = await asyncio.shield(self._loading)
                response = await client.acompletion(
                    model=model_name, messages=messages, max_tokens=MAX_COMPLETION_TOKENS
                )
            text = response.choices[0].message.content or ""  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - no explanation is an acceptable outcome
            log.warning(
                "run %s: no model explanation (%s: %s)", failure.run_id, type(exc).__name__, exc
            )
            return None
        return parse_answer(text)


def parse_answer(text: str) -> Suggestion | None:
    """Turn ``EXPLANATION: ... / FIX: ...`` (or any text) into a suggestion; ``None`` if empty."""
    text = text.strip()
    if not text:
        return None
    parts = _FIX_MARKER.split(text, maxsplit=1)
    explanation = _EXPLANATION_MARKER.sub("", parts[0]).strip()
    fix = parts[1].strip() if len(parts) > 1 else ""
    return Suggestion(
        code=Assistant.CODE,
        title="What the model thinks went wrong",
        detail=redact(explanation or text, limit=MAX_ANSWER_CHARS),
        fix=redact(fix, limit=MAX_ANSWER_CHARS)
        if fix
        else "Apply the fixes of the suggestions above; this explanation was written by a model "
        "and can be wrong.",
    )


def _make_client(model: str, *, api_key: str | None, api_base: str | None) -> tuple[Any, str]:
    from any_llm import AnyLLM  # only assisted deployments pay for this import

    provider, name = AnyLLM.split_model_provider(model)
    # No client retries: the deadline is short and a missing explanation is acceptable.
    client = AnyLLM.create(
        provider, api_key=api_key, api_base=api_base, unified_exceptions=True, max_retries=0
    )
    return client, name


def _briefing(failure: RunFailed, suggestions: list[Suggestion]) -> dict[str, Any]:
    """What the model is told: the error and the workflow's shape, without the run's input."""
    error = failure.error
    briefing: dict[str, Any] = {
        "error": {
            "code": error.code.value,
            "message": redact(error.message),
            "exception_type": error.exception_type,
            "provider_status": error.provider_status,
            "provider_message": redact(error.provider_message) if error.provider_message else None,
            "agent": error.agent,
            "step": error.step,
        },
        "options": failure.options.model_dump(),
        "elapsed_s": failure.elapsed_s,
        "guidance_already_given": [{"title": s.title, "fix": s.fix} for s in suggestions],
    }
    if failure.workflow is not None:
        briefing["workflow"] = {
            "pattern": failure.workflow.pattern.value if failure.workflow.pattern else None,
            "agents": [
                {
                    "name": node.data.name,
                    "model_id": node.data.model_id,
                    "framework": node.data.framework,
                    "instructions": redact(node.data.instructions, limit=MAX_INSTRUCTIONS_CHARS),
                    "tools": [_tool_label(tool) for tool in node.data.tools],
                }
                for node in failure.workflow.nodes
            ],
            "edges": [f"{edge.source}->{edge.target}" for edge in failure.workflow.edges],
        }
    return briefing


def _tool_label(tool: str | McpServer) -> str:
    if isinstance(tool, McpServer):  # URLs can carry tokens in their query string
        return redact(f"mcp {tool.url}" if tool.url else f"mcp stdio {tool.command}")
    return tool
