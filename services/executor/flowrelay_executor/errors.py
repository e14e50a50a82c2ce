"""Why a run failed, as a structured ``RunError``; and keeping secrets out of what we report.

What: :func:`classify` turns any exception that ends a run (any-agent's ``AgentRunError``, an
any-llm / openai / httpx error, a tool's exception, or one of flowrelay's own
:class:`RunFailure` subclasses) into a :class:`~flowrelay_contracts.RunError` whose ``code``
the suggester keys its guidance on and whose ``message`` says what to do about it.
:class:`Redactor` / :func:`redact` replace secret values with ``[REDACTED]``.

Why duck typing: this module recognises library exceptions by class name and attributes
(``status_code``, ``original_exception``, ``env_var_name``) instead of importing any-agent,
any-llm or openai. It stays cheap to import in the executor's parent process, and keeps
working when the agent library behind ``engine.py`` is swapped.
"""

from __future__ import annotations

import email.utils
import functools
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar
from urllib.parse import urlsplit

from flowrelay_contracts import ErrorCode, RunError

__all__ = [
    "REDACTED",
    "BudgetExceeded",
    "FrameworkNotInstalledError",
    "InvalidWorkflowError",
    "Redactor",
    "RunFailure",
    "ToolFailure",
    "TurnLimitExceeded",
    "classify",
    "is_secret_name",
    "missing_key_variable",
    "redact",
    "retry_after_s",
]

#: What a secret is replaced with.
REDACTED = "[REDACTED]"

#: Environment variable names whose values are secrets.
_SECRET_NAME_RE = re.compile(r"(_API_KEY|_TOKEN|_SECRET)$|PASSWORD", re.IGNORECASE)

#: Key shapes redacted wherever they appear, even when no variable holds them: OpenAI-style
#: ``sk-...`` keys and ``Bearer`` credentials.
#: Provider keys (``sk-...``), bearer tokens, and flowrelay's own API keys (``frk_<id>_<secret>``).
_KEY_SHAPE_RE = re.compile(
    r"\bsk-[A-Za-z0-9_\-]{6,}|\bBearer\s+[A-Za-z0-9._~+/=\-]{6,}|\bfrk_[a-z2-7]{12}_[A-Za-z0-9_\-]{43}"
)

#: Every character a key shape above may contain (and the whitespace after ``Bearer``): text
#: streamed in pieces is cut only at other characters, so no key is cut in two.
KEY_SHAPE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+/=-")

#: Values shorter than this are not redacted by value: replacing "1" or "true" everywhere
#: would mangle output while protecting nothing.
_MIN_SECRET_CHARS = 6

#: How Python reports a keyword argument a provider's client does not take (``model_args``).
_UNEXPECTED_ARG_RE = re.compile(r"unexpected keyword argument '([A-Za-z0-9_]{1,64})'")

#: How much of a provider's own error text a RunError keeps.
_PROVIDER_MESSAGE_CHARS = 500

#: How deep :func:`classify` follows ``original_exception`` / ``__cause__`` links.
_MAX_CHAIN = 12

#: Longest ``Retry-After`` taken at its word (a day); a larger one is treated as this.
_MAX_RETRY_AFTER_S = 86_400.0

#: An environment variable name, as tools name the one they lack (``KeyError('X_API_KEY')``).
_ENV_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")

#: A variable named in a message next to words saying it is absent.
_NAMED_MISSING_RE = re.compile(
    r"\b([A-Z][A-Z0-9_]*(?:_API_KEY|_KEY|_TOKEN|_SECRET))\b"
    r"(?=.{0,80}\b(?:not set|missing|not found|not provided|not configured|required|unset|empty)\b)"
    r"|\b(?:set|missing|provide|no)\b.{0,40}\b([A-Z][A-Z0-9_]*(?:_API_KEY|_KEY|_TOKEN|_SECRET))\b",
    re.IGNORECASE | re.DOTALL,
)

#: A message about a missing credential that names no variable.
_UNNAMED_MISSING_RE = re.compile(
    r"(?:api[ _-]?key|access token|credential)s?\b.{0,40}"
    r"\b(?:missing|not (?:set|found|provided|configured))"
    r"|\b(?:missing|no)\b.{0,20}\b(?:api[ _-]?key|access token|credential)s?\b",
    re.IGNORECASE | re.DOTALL,
)

#: Exception class names meaning "the provider could not be reached".
_UNREACHABLE_TYPES = frozenset(
    {
        "APIConnectionError",
        "APITimeoutError",
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "TimeoutException",
        "NetworkError",
        "RemoteProtocolError",
        "ConnectionError",
        "TimeoutError",
        "gaierror",
    }
)


# -- secrets ----------------------------------------------------------------------------


def is_secret_name(name: str) -> bool:
    """True for variable names that hold secrets (``*_API_KEY``, ``*_TOKEN``, ``*_SECRET``,
    ``*PASSWORD*``)."""
    return bool(_SECRET_NAME_RE.search(name))


class Redactor:
    """Replaces known secret values and key-shaped strings with ``[REDACTED]``.

    Built once per run from the environment (plus the run's own key), because scanning
    ``os.environ`` for every event of hundreds of concurrent runs would be wasted work; a
    variable set after the run started is not covered by that run.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted(
            {s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True
        )
        # Longest first, so a secret containing another is replaced whole.
        self._values_re = re.compile("|".join(map(re.escape, values))) if values else None
        #: Length of the longest secret value (0 without any).
        self.longest_secret = len(values[0]) if values else 0

    @classmethod
    def from_environment(cls, *, extra: Iterable[str | None] = ()) -> Redactor:
        """Redact the values of secret-named variables of ``os.environ`` and ``extra``."""
        return _redactor_for(_environment_secrets() | frozenset(s for s in extra if s))

    def redact(self, text: str) -> str:
        if self._values_re is not None:
            text = self._values_re.sub(REDACTED, text)
        return _KEY_SHAPE_RE.sub(REDACTED, text)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where ``text`` holds a secret value or a key shape ((start, end) pairs)."""
        found = [m.span() for m in _KEY_SHAPE_RE.finditer(text)]
        if self._values_re is not None:
            found += [m.span() for m in self._values_re.finditer(text)]
        return found


def _environment_secrets() -> frozenset[str]:
    """Values of the secret-named variables of ``os.environ`` now.

    Decoding and matching every variable costs about 0.1 ms, once per run; the raw
    environment (CPython keeps it as bytes in ``os.environ._data``) is a cheap cache key, so
    a changed environment is still seen at the next run.
    """
    raw = getattr(os.environ, "_data", None)
    if not isinstance(raw, dict):
        return frozenset(value for name, value in os.environ.items() if is_secret_name(name))
    return _secrets_of(frozenset(raw.items()))


@functools.lru_cache(maxsize=8)
def _secrets_of(raw: frozenset[tuple[bytes, bytes]]) -> frozenset[str]:
    decode = os.fsdecode
    return frozenset(decode(value) for name, value in raw if is_secret_name(decode(name)))


@functools.lru_cache(maxsize=64)
def _redactor_for(secrets: frozenset[str]) -> Redactor:
    """Compiling the pattern is the costly part; the same secrets give the same redactor."""
    return Redactor(secrets)


def redact(text: str) -> str:
    """Redact ``text`` against the current environment (see :class:`Redactor`)."""
    return Redactor.from_environment().redact(text)


# -- flowrelay's own failures -----------------------------------------------------------


class RunFailure(Exception):
    """A failure flowrelay detects itself, so its code is known without guessing.

    ``message`` is written for the user: it says what is wrong and what to change.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, agent: str | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.agent = agent
        self.step = step


class InvalidWorkflowError(RunFailure):
    """The workflow names something this executor cannot provide (unknown tool, ...)."""

    code = ErrorCode.INVALID_WORKFLOW


class FrameworkNotInstalledError(RunFailure):
    code = ErrorCode.FRAMEWORK_NOT_INSTALLED


class TurnLimitExceeded(RunFailure):
    code = ErrorCode.MAX_TURNS_EXCEEDED


class BudgetExceeded(RunFailure):
    """The run's model calls passed ``options.max_cost_usd`` or ``options.max_tokens``."""

    code = ErrorCode.BUDGET_EXCEEDED


class ToolFailure(RunFailure):
    """A tool raised. ``code`` is ``tool_missing_key`` when it lacked a credential."""

    def __init__(
        self,
        message: str,
        *,
        tool: str,
        code: ErrorCode = ErrorCode.TOOL_FAILED,
        exception_type: str | None = None,
        agent: str | None = None,
        step: int | None = None,
    ) -> None:
        super().__init__(message, agent=agent, step=step)
        self.tool = tool
        self.code = code  # type: ignore[misc]  # per instance: depends on the cause
        self.exception_type = exception_type

    @classmethod
    def from_exception(
        cls, tool: str, exc: BaseException, *, redactor: Redactor | None = None
    ) -> ToolFailure:
        """Describe ``exc`` raised by ``tool``, recognising a missing credential."""
        scrub = (redactor or Redactor.from_environment()).redact
        variable = missing_key_variable(exc)
        detail = scrub(_describe(exc))
        if variable is not None:
            named = f" {variable}" if variable else " (an API key or token)"
            return cls(
                f"tool '{tool}' needs a credential that is not configured:{named}. Set it in the "
                f"executor's environment, or remove the tool from the agent. ({detail})",
                tool=tool,
                code=ErrorCode.TOOL_MISSING_KEY,
                exception_type=_qualname(exc),
            )
        return cls(
            f"tool '{tool}' failed: {detail}",
            tool=tool,
            exception_type=_qualname(exc),
        )


def missing_key_variable(exc: BaseException) -> str | None:
    """If ``exc`` says a credential is missing: the variable it names, or ``""``; else None."""
    for link in _chain(exc):
        if isinstance(link, KeyError) and len(link.args) == 1 and isinstance(link.args[0], str):
            name = link.args[0]
            if _ENV_NAME_RE.match(name) and name not in os.environ:
                return name
        env_var = getattr(link, "env_var_name", None)  # any-llm's MissingApiKeyError
        if isinstance(env_var, str) and env_var:
            return env_var
        text = str(link)
        if match := _NAMED_MISSING_RE.search(text):
            return match.group(1) or match.group(2)
        if _UNNAMED_MISSING_RE.search(text):
            return ""
    return None


# -- classification ---------------------------------------------------------------------


def classify(
    exc: BaseException,
    *,
    agent: str | None = None,
    step: int | None = None,
    model: str | None = None,
    endpoint: str | None = None,
    redactor: Redactor | None = None,
) -> RunError:
    """Turn the exception that ended a run into a ``RunError``.

    ``model`` (as the user wrote it) and ``endpoint`` (the provider's base URL, if custom)
    only make the message more precise. Every text that leaves here is redacted.
    """
    scrub = (redactor or Redactor.from_environment()).redact
    chain = list(_chain(exc))

    for link in chain:
        if isinstance(link, RunFailure):
            return RunError(
                code=link.code,
                message=scrub(link.message),
                exception_type=getattr(link, "exception_type", None) or type(link).__name__,
                step=link.step if link.step is not None else step,
                agent=link.agent or agent,
                tool=getattr(link, "tool", None),
                retryable=link.retryable,
            )

    provider = _provider_of(chain, model)
    where = f" for model '{model}'" if model else ""
    decisive = _decisive(chain)
    base = {
        "exception_type": _qualname(decisive),
        "agent": agent,
        "step": step,
    }

    for link in chain:
        env_var = getattr(link, "env_var_name", None)
        if _named(link, "MissingApiKeyError") or (isinstance(env_var, str) and env_var):
            variable = env_var or "the provider's API key variable"
            return RunError(
                code=ErrorCode.MISSING_API_KEY,
                message=f"no API key for provider '{provider}'{where}: set {variable} in the "
                "executor's environment, or choose a model whose key is configured",
                provider_message=scrub(_clip(str(link))),
                **base,
            )

    for link in chain:
        if isinstance(link, TypeError) and (match := _UNEXPECTED_ARG_RE.search(str(link))):
            return RunError(
                code=ErrorCode.INVALID_REQUEST,
                message=f"model_args key '{match.group(1)}' is not an argument provider '{provider}' "
                f"accepts{where}: remove it from the node's model_args",
                **base,
            )

    status = _status_of(chain)
    provider_message = _provider_message(chain, scrub)
    if status in (401, 403) or _any_named(chain, "AuthenticationError", "PermissionDeniedError"):
        verb = "refused access" if status == 403 else "rejected the API key"
        return RunError(
            code=ErrorCode.INVALID_API_KEY,
            message=f"provider '{provider}' {verb}{where} (HTTP {status or 401}): check that the "
            "configured key is valid and allowed to use this model",
            provider_status=status,
            provider_message=provider_message,
            **base,
        )
    if status == 404 or _any_named(chain, "ModelNotFoundError", "NotFoundError"):
        return RunError(
            code=ErrorCode.UNKNOWN_MODEL,
            message=f"provider '{provider}' does not know "
            + (f"model '{model}'" if model else "the model")
            + f" (HTTP {status or 404}): check the model id and that your account can use it"
            + (f" at {_safe_url(endpoint)}" if endpoint else ""),
            provider_status=status,
            provider_message=provider_message,
            **base,
        )
    if status == 429 or _any_named(chain, "RateLimitError"):
        return RunError(
            retry_after_s=retry_after_s(chain),
            code=ErrorCode.RATE_LIMITED,
            message=f"provider '{provider}' is rate limiting requests{where} (HTTP 429): retry "
            "later, lower concurrency, or raise the account's limits",
            provider_status=status,
            provider_message=provider_message,
            retryable=True,
            **base,
        )
    if status is None and _any_named(chain, *_UNREACHABLE_TYPES):
        target = _safe_url(endpoint) if endpoint else f"provider '{provider}'"
        cause = scrub(_clip(_root_cause(chain)))
        return RunError(
            code=ErrorCode.PROVIDER_UNREACHABLE,
            message=f"could not reach {target}{where} ({cause}): check that the endpoint is up "
            "and reachable from the executor",
            provider_message=provider_message,
            retryable=True,
            **base,
        )
    if status is not None or _any_named(chain, "AnyLLMError", "APIError"):
        server_side = status is None or status >= 500
        if server_side:
            message = (
                f"provider '{provider}' failed{where}"
                + (f" (HTTP {status})" if status else "")
                + ": a server-side error, usually temporary; retry later"
            )
        else:
            message = f"provider '{provider}' rejected the request{where} (HTTP {status})" + (
                f": {provider_message}" if provider_message else ""
            )
        return RunError(
            code=ErrorCode.PROVIDER_ERROR,
            message=message,
            provider_status=status,
            provider_message=provider_message,
            retryable=server_side,
            retry_after_s=retry_after_s(chain) if server_side else None,
            **base,
        )
    if _any_named(chain, "ValidationError"):
        return RunError(
            code=ErrorCode.PROVIDER_ERROR,
            message=f"the model's answer{where} did not match the agent's output_schema: "
            f"{scrub(_clip(str(decisive)))}",
            **base,
        )
    return RunError(
        code=ErrorCode.INTERNAL_ERROR,
        message=f"unexpected error: {scrub(_clip(_describe(decisive)))}",
        **base,
    )


def retry_after_s(chain: Iterable[BaseException], *, now: float | None = None) -> float | None:
    """The provider's ``Retry-After`` in seconds, if any link of ``chain`` carries one.

    any-llm puts the header's text on its ``RateLimitError`` (``retry_after``: seconds or an
    HTTP date, or ``retry-after-ms`` converted); for other statuses (a 503) it is only on
    the SDK's exception, as a response header.
    """
    for link in chain:
        values = [getattr(link, "retry_after", None)]
        headers = getattr(getattr(link, "response", None), "headers", None)
        if headers is not None:
            values += [headers.get("retry-after")]
            if (millis := _seconds(headers.get("retry-after-ms"))) is not None:
                values += [str(millis / 1000)]
        for value in values:
            if (seconds := _retry_after_value(value, now=now)) is not None:
                return seconds
    return None


def _retry_after_value(value: object, *, now: float | None) -> float | None:
    if not isinstance(value, str) or not value.strip():
        return None
    seconds = _seconds(value)
    if seconds is None:  # an HTTP date
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


def _seconds(value: object) -> float | None:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None


# -- helpers ----------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: ``original_exception``, else ``__cause__``/``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        yield current
        original = getattr(current, "original_exception", None)
        if isinstance(original, BaseException) and id(original) not in seen:
            current = original
        elif isinstance(current, BaseExceptionGroup) and current.exceptions:
            current = current.exceptions[0]
        else:
            current = current.__cause__ or current.__context__


def _named(exc: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def _any_named(chain: Iterable[BaseException], *names: str) -> bool:
    return any(_named(link, *names) for link in chain)


def _status_of(chain: Iterable[BaseException]) -> int | None:
    for link in chain:
        for candidate in (
            getattr(link, "status_code", None),
            getattr(getattr(link, "response", None), "status_code", None),
        ):
            if isinstance(candidate, int) and 100 <= candidate <= 599:
                return candidate
    return None


def _decisive(chain: list[BaseException]) -> BaseException:
    """The exception worth naming: the first that is not a generic wrapper."""
    for link in chain:
        if not _named(link, "AgentRunError"):
            return link
    return chain[0]


def _provider_of(chain: Iterable[BaseException], model: str | None) -> str:
    for link in chain:
        name = getattr(link, "provider_name", None)
        if isinstance(name, str) and name:
            return name
    if model and ":" in model:
        return model.split(":", 1)[0]
    return "unknown"


def _provider_message(chain: Iterable[BaseException], scrub: Callable[[str], str]) -> str | None:
    """The provider's own words: any-llm's ``message`` (without its ``[provider]`` prefix)."""
    for link in chain:
        message = getattr(link, "message", None)
        if isinstance(message, str) and message and not isinstance(link, RunFailure):
            return scrub(_clip(message))
    for link in chain:
        if _named(link, "AgentRunError"):
            continue
        text = str(link)
        if text:
            return scrub(_clip(text))
    return None


def _root_cause(chain: list[BaseException]) -> str:
    """The innermost non-empty description (``[Errno 111] Connection refused`` rather than
    the SDK's generic ``Connection error.``)."""
    for link in reversed(chain):
        text = str(link).strip()
        if text:
            return text
    return type(chain[-1]).__name__


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, KeyError) and exc.args:
        text = f"missing key {exc.args[0]!r}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )


def _clip(text: str, limit: int = _PROVIDER_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _safe_url(url: str | None) -> str:
    """``url`` without user info, which may hold credentials."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else url
