"""Run budgets: ``options.max_cost_usd`` and ``options.max_tokens``, checked after every call.

What: :meth:`Budget.exceeded` compares what the run has spent so far (every finished model
call of this attempt, the steps reused from checkpoints, and what earlier attempts spent on
calls no checkpoint keeps) with the run's budgets, and says why when it is over. The run
state calls it as each model call ends and records the failure; the agent is stopped at
its next hook (before another model call or tool), or when it returns, whichever comes
first, so no further spend follows the call that crossed the line.

A budget cannot be checked against a call whose cost is unknown (a model genai-prices does
not price) or that reported no token counts (llama_index): the run is stopped then too,
rather than spending without the limit the user asked for. Token budgets count input plus
output tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowrelay_contracts import Usage

__all__ = ["Budget"]


@dataclass(frozen=True, slots=True)
class Budget:
    max_cost_usd: float | None = None
    max_tokens: int | None = None

    @property
    def active(self) -> bool:
        return self.max_cost_usd is not None or self.max_tokens is not None

    def exceeded(
        self, usage: Usage, cost_usd: float | None, *, cost_note: str | None = None, tokens_known: bool = True
    ) -> str | None:
        """Why ``usage`` / ``cost_usd`` (the run's total so far) is over budget, or None.
        ``tokens_known``: False when the last call came without token counts."""
        if self.max_tokens is not None and not tokens_known:
            why = f": {cost_note}" if cost_note else ""
            return (f"a model call reported no token counts{why}, so the run's token budget of {self.max_tokens} "
                    "(options.max_tokens) cannot be enforced")
        if self.max_tokens is not None and (tokens := usage.total_tokens) > self.max_tokens:
            return (f"the run used {tokens} tokens ({usage.input_tokens} in, {usage.output_tokens} out), above its "
                    f"budget of {self.max_tokens} (options.max_tokens)")
        if self.max_cost_usd is not None:
            if cost_usd is None:
                why = f": {cost_note}" if cost_note else ""
                return (f"the cost of a model call is unknown{why}, so the run's cost budget of "
                        f"{self.max_cost_usd:g} USD (options.max_cost_usd) cannot be enforced; use options.max_tokens "
                        "with this model instead")
            if cost_usd > self.max_cost_usd:
                return (f"the run cost {cost_usd:.6f} USD, above its budget of {self.max_cost_usd:g} USD "
                        "(options.max_cost_usd)")
        return None
