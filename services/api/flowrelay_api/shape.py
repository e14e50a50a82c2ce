"""Size and shape limits of a submission, checked before anything is queued.

The workflow's limits are the contract's (:mod:`flowrelay_contracts.limits`, shared with
the executor); the input's is the API's own. Every refusal names the field (``loc``) and
the setting that raises the limit.
"""

from __future__ import annotations

from flowrelay_api.errors import Loc, pointer_to_loc
from flowrelay_api.schemas import RunSubmission
from flowrelay_api.settings import ApiSettings
from flowrelay_contracts.limits import workflow_problems

Problem = tuple[Loc, str, str]


def check_shape(body: RunSubmission, settings: ApiSettings) -> list[Problem]:
    """Every size and shape problem of ``body`` (empty when it is fine)."""
    problems: list[Problem] = []
    if not body.input.strip():
        problems.append((("body", "input"), "must not be empty: it is what the first agent answers",
                         "string_too_short"))
    elif (size := len(body.input.encode())) > settings.max_input_bytes:
        problems.append((("body", "input"), f"{size} bytes is above the limit of {settings.max_input_bytes} "
                         "(FLOWRELAY_MAX_INPUT_BYTES)", "too_large"))
    problems += [(pointer_to_loc(p.pointer), p.message, "too_large")
                 for p in workflow_problems(body.workflow, settings.workflow_limits())]
    return problems
