"""The CLI's HTTP client for the API: sends the key, turns every failure into one line.

A user who runs ``flowrelay status`` against a stopped stack, with a stale key, or for a run
id that does not exist gets a :class:`~flowrelay.errors.CliError` saying what is wrong and
what to do, never an httpx traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from flowrelay.errors import CliError


class ApiError(CliError):
    """The API answered with an error status (``status``)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


#: Seconds to wait for the API's answer (streams wait for events as long as they last).
TIMEOUT_S = 30.0


class ApiClient:
    """Calls of the flowrelay API; ``key_source`` says where the key came from (for a 401)."""

    def __init__(self, base_url: str, key: str | None, *, key_source: str = "", timeout_s: float = TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self._key_source = key_source
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s))

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, *, params: dict[str, Any] | None = None, not_found: str | None = None) -> Any:
        return self._json(self._send("GET", path, params=params), not_found)

    def post(self, path: str, *, json: Any = None, not_found: str | None = None) -> Any:
        return self._json(self._send("POST", path, json=json), not_found)

    def delete(self, path: str, *, not_found: str | None = None) -> Any:
        return self._json(self._send("DELETE", path), not_found)

    @contextlib.contextmanager
    def stream(self, path: str, *, not_found: str | None = None) -> Iterator[httpx.Response]:
        """A streamed GET (Server-Sent Events): no read timeout, errors as :class:`CliError`."""
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(TIMEOUT_S, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    self._json(response, not_found)
                yield response
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    # -- errors -------------------------------------------------------------------------

    def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: httpx.HTTPError) -> CliError:
        where = f"the flowrelay API at {self.base_url}"
        if isinstance(exc, httpx.ConnectError):
            reason = "connection refused" if _refused(exc) else str(exc) or type(exc).__name__
            return CliError(f"cannot reach {where} ({reason}): is 'flowrelay up' running? "
                            "(--api or FLOWRELAY_API_URL point the CLI elsewhere)")
        if isinstance(exc, httpx.TimeoutException):
            return CliError(f"{where} did not answer in time ({type(exc).__name__}); is it overloaded or stuck?")
        return CliError(f"{where} broke off the connection ({type(exc).__name__}: {exc}); is it restarting?")

    def _json(self, response: httpx.Response, not_found: str | None) -> Any:
        if response.status_code < 400:
            return response.json() if response.content else None
        detail = _detail(response)
        code = response.status_code
        if code == 401:
            source = f" (from {self._key_source})" if self._key_source else ""
            message = f"the API refused the key{source}: {detail}; is it a key of this deployment, and not revoked?"
        elif code == 403:
            message = f"the key may not do this: {detail}"
        elif code == 404 and not_found:
            message = not_found
        else:
            message = f"{response.request.method} {response.request.url.path} answered {code}: {detail}"
        raise ApiError(message, status=code)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # 422: FastAPI's list of problems
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}" if isinstance(item, dict) else str(item)
            for item in detail
        )
    return str(detail)


def _refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
