"""any-agent callback hooks -> flowrelay trace events, the same for every framework.

One :class:`EventCallback` per agent configuration forwards the hooks any-agent calls to the
run being served (``CURRENT_RUN``):

* model calls: ``llm.started`` / ``llm.finished`` (token counts read by the framework's
  adapter; null plus a ``cost_note`` when it has none). The turn limit is enforced here.
* tools: the ``tool.started`` / ``tool.finished`` events come from flowrelay's own tool
  wrapper (``engine.tooling``), which sees the call's real arguments, return value and
  exception in every framework. The tool hooks only stop an agent whose run has failed,
  and pause the run at a call of ``ask_human`` (``engine.human``).

A hook is reported only while its agent is the one running innermost (``CURRENT_AGENT``).
LangChain, for one, hands a run's callback handlers down to everything awaited inside it,
so a coordinator's handler also fires for its sub-agent's model calls: those belong to the
sub-agent, whose own callback reports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from any_agent.callbacks import Callback

from flowrelay_contracts.hitl import ASK_HUMAN
from flowrelay_executor.engine.frameworks import FrameworkAdapter
from flowrelay_executor.engine.human import pause_here
from flowrelay_executor.engine.run import CURRENT_AGENT, CURRENT_RUN, RunState

if TYPE_CHECKING:
    from flowrelay_executor.engine.recipes import Recipe


class EventCallback(Callback):
    """any-agent callback of one agent configuration: forwards hooks to the current run."""

    def __init__(self, recipe: Recipe, adapter: FrameworkAdapter) -> None:
        self._recipe = recipe
        self._adapter = adapter

    def _run(self) -> RunState | None:
        """The run this hook belongs to, or None if it is another agent's hook."""
        run = CURRENT_RUN.get()
        if run is None or CURRENT_AGENT.get() != self._recipe.name:
            return None
        return run

    def before_llm_call(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        if (run := self._run()) is not None:
            run.llm_started(self._recipe)
            if isinstance(kwargs.get("messages"), list):  # tinyagent's live conversation
                run.live_messages[self._recipe.name] = kwargs["messages"]
        return context

    def after_llm_call(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        if (run := self._run()) is not None:
            tokens = self._adapter.tokens(args, kwargs)
            run.llm_finished(self._recipe, tokens, self._adapter.no_tokens_note)
        return context

    def before_tool_execution(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        if (run := self._run()) is not None:
            run.stop_if_failed()
            request = args[0] if args else None
            if isinstance(request, dict) and request.get("name") == ASK_HUMAN:
                pause_here(run, self._recipe, request)  # raises: the run pauses before the tool runs
        return context

    def after_tool_execution(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        if (run := self._run()) is not None:
            # Fail fast instead of letting the model see the error and carry on: the run's
            # outcome then names the broken tool instead of an answer built around it.
            run.stop_if_failed()
        return context
