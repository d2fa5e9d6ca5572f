"""A small client for the balena Supervisor HTTP API: only the calls the block uses.

Rules this module keeps (platform facts: docs/balena-update-locks.md §5):

- The key travels only in ``Authorization: Bearer <key>``; never in a URL (old Supervisors also
  take ``?apikey=``, but a key in a URL ends up in logs), a log line or an exception message.
  Text from ``requests`` exceptions is scrubbed of the key before it goes anywhere.
- Every request with a body says ``Content-Type: application/json``: without it the Supervisor
  does not parse the body and silently reads ``force`` as false.
- The Supervisor restarts during its own updates, so connection errors, timeouts and 5xx are
  transient: retried with exponential backoff, a bounded number of times. 4xx are answers.

Importing this module does not import ``requests`` (about 18 MB resident): :func:`api_settings`
must stay cheap for an agent whose service has no Supervisor API. ``requests`` is imported
when a :class:`SupervisorClient` is made.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from update_lock import __version__
from update_lock.errors import ApiError
from update_lock.logs import Logger

if TYPE_CHECKING:
    import requests

__all__ = [
    "MALFORMED_JSON_MESSAGE",
    "NO_ADDRESS_MESSAGE",
    "NO_KEY_MESSAGE",
    "UNAUTHORISED_MESSAGE",
    "SupervisorClient",
    "api_settings",
]

LABEL_HINT = "add the label io.balena.features.supervisor-api: '1' to this service"
NO_ADDRESS_MESSAGE = f"BALENA_SUPERVISOR_ADDRESS is not set: {LABEL_HINT}"
NO_KEY_MESSAGE = f"BALENA_SUPERVISOR_API_KEY is not set: {LABEL_HINT}"
UNAUTHORISED_MESSAGE = (
    "unauthorised: set the label io.balena.features.supervisor-api: '1' on this service, "
    "or check BALENA_SUPERVISOR_API_KEY"
)
MALFORMED_JSON_MESSAGE = "malformed JSON from the Supervisor"

REDACTED = "<redacted>"
_MALFORMED = object()
# A key in a URL query, whatever the key is: scrubbed even if it is not ours.
_APIKEY_IN_TEXT = re.compile(r"(apikey=)[^&\s'\"]+", re.IGNORECASE)


def api_settings(env: Mapping[str, str]) -> tuple[str, str] | str:
    """``(address, key)`` of the Supervisor API from the environment, or why it is unavailable.

    The Supervisor injects these only into services with the label
    ``io.balena.features.supervisor-api: '1'``; before v7.22 only the ``RESIN_`` names exist.
    ``BALENA_SUPERVISOR_HOST`` + ``BALENA_SUPERVISOR_PORT`` stand in for a missing address.
    Pure: reads nothing but ``env``. The reason never contains the key.
    """

    def first(*names: str) -> str:
        for name in names:
            value = env.get(name, "").strip()
            if value:
                return value
        return ""

    address = first("BALENA_SUPERVISOR_ADDRESS", "RESIN_SUPERVISOR_ADDRESS")
    if not address:
        host = first("BALENA_SUPERVISOR_HOST", "RESIN_SUPERVISOR_HOST")
        port = first("BALENA_SUPERVISOR_PORT", "RESIN_SUPERVISOR_PORT")
        if host and port:
            if not port.isdigit() or not 0 < int(port) < 65536:
                return f"BALENA_SUPERVISOR_PORT={port!r}: expected a TCP port, e.g. 48484"
            address = f"http://{host}:{port}"
    if not address:
        return NO_ADDRESS_MESSAGE
    if not address.startswith(("http://", "https://")):
        return (
            f"BALENA_SUPERVISOR_ADDRESS={address!r}: expected http://HOST:PORT, "
            "e.g. http://127.0.0.1:48484"
        )
    key = first("BALENA_SUPERVISOR_API_KEY", "RESIN_SUPERVISOR_API_KEY")
    if not key:
        return NO_KEY_MESSAGE
    return address.rstrip("/"), key


def _causes(error: BaseException) -> list[BaseException]:
    """The error and everything it wraps (``requests`` nests urllib3 nests OSError)."""
    seen: list[BaseException] = []
    todo: list[object] = [error]
    while todo and len(seen) < 32:
        item = todo.pop()
        if not isinstance(item, BaseException) or any(item is s for s in seen):
            continue
        seen.append(item)
        todo.extend(item.args)
        todo.extend([getattr(item, "reason", None), item.__cause__, item.__context__])
    return seen


# The Supervisor's answers are a few hundred bytes; anything far larger is not the Supervisor.
MAX_BODY_BYTES = 1 << 20


class _BodyTooSlowOrLarge(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class SupervisorClient:
    """Calls the Supervisor API with retries. Not thread-safe: one client per thread.

    Every method raises :class:`ApiError` on failure (after the retries, for transient
    failures), except :meth:`ping`, which answers a yes/no question.
    """

    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        logger: Logger,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        attempts: int = 4,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
    ) -> None:
        # Imported here, not at the top: see the module docstring.
        import requests  # noqa: PLC0415

        if attempts < 1:
            raise ValueError(f"attempts={attempts}: expected at least 1")
        self.address = address.rstrip("/")
        self._key = api_key
        self._log = logger
        self._timeout_s = (connect_timeout_s, read_timeout_s)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._session: requests.Session = requests.Session()
        # The Supervisor is on the local bridge or loopback: no proxy from the environment
        # should see the key, and a ~/.netrc entry must not replace the Authorization header.
        self._session.trust_env = False
        self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._session.headers["Accept"] = "application/json, text/plain"
        self._session.headers["User-Agent"] = f"update-lock/{__version__}"

    def __repr__(self) -> str:
        return f"SupervisorClient(address={self._scrub(self.address)!r}, attempts={self.attempts})"

    def __enter__(self) -> SupervisorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # ---- the calls ------------------------------------------------------------------------

    def ping(self) -> bool:
        """Whether the Supervisor answers ``GET /ping`` now. One attempt, never raises."""
        import requests  # noqa: PLC0415

        try:
            response = self._session.get(
                self.address + "/ping", timeout=self._timeout_s, allow_redirects=False
            )
        except requests.RequestException as error:
            self._log.debug("api.ping", ok=False, why=self._why(error))
            return False
        ok = 200 <= response.status_code < 300
        self._log.debug("api.ping", ok=ok, status=response.status_code)
        return ok

    def update(self, *, force: bool, cancel: bool) -> int:
        """``POST /v1/update``: ask for an apply now. Returns the status (204 or 202).

        Send ``cancel=True`` with ``force=True``: since v17.5 ``force`` alone does not break
        an apply already stuck on a lock (Supervisor issue #2541); older versions ignore it.
        """
        # Only the flags that are on: `{"cancel": true}` alone is the documented "apply now".
        body = {name: True for name, on in (("force", force), ("cancel", cancel)) if on}
        response = self._request("POST", "/v1/update", body)
        return response.status_code

    def device(self) -> dict[str, object]:
        """``GET /v1/device``: ``update_pending``, ``update_failed``, ``commit`` …"""
        return self._json_object("GET", "/v1/device")

    def state_status(self) -> dict[str, object]:
        """``GET /v2/state/status``: ``appState`` is ``applying`` while waiting on a lock."""
        return self._json_object("GET", "/v2/state/status")

    def version(self) -> str:
        """``GET /v2/version``: the Supervisor's version, e.g. ``19.0.5``."""
        path = "/v2/version"
        body = self._json_object("GET", path)
        version = body.get("version")
        if not isinstance(version, str) or not version:
            raise ApiError("GET", path, 200, "unexpected JSON from the Supervisor: no version")
        return version

    def stop_service(self, app_id: str, service_name: str) -> None:
        """``POST /v2/applications/<appId>/stop-service`` for ``service_name``."""
        from urllib.parse import quote  # noqa: PLC0415  # only the client needs it

        path = f"/v2/applications/{quote(app_id, safe='')}/stop-service"
        self._request("POST", path, {"serviceName": service_name})

    # ---- the mechanism --------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """``text`` without the key, raw or percent-encoded, nor any ``apikey=`` value."""
        if self._key:
            from urllib.parse import quote  # noqa: PLC0415  # only the client needs it

            for form in {self._key, quote(self._key, safe=""), quote(self._key)}:
                text = text.replace(form, REDACTED)
        return _APIKEY_IN_TEXT.sub(r"\1" + REDACTED, text)

    @staticmethod
    def _why(error: BaseException) -> str:
        """A short stable word for a transport failure, for ``why=`` in log lines."""
        import requests  # noqa: PLC0415

        if isinstance(error, requests.ConnectTimeout):
            return "connect-timeout"
        if isinstance(error, requests.ReadTimeout):
            return "read-timeout"
        if isinstance(error, requests.exceptions.ChunkedEncodingError):
            return "incomplete-response"
        causes = _causes(error)
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            return "connection-refused"
        if any(isinstance(c, (ConnectionResetError, BrokenPipeError)) for c in causes):
            return "connection-reset"
        if any(isinstance(c, TimeoutError) for c in causes):
            return "read-timeout"
        if isinstance(error, requests.ConnectionError):
            return "connection-error"
        return type(error).__name__

    def _error_message(self, response: requests.Response) -> str:
        """The Supervisor's own words from an error body (``Error`` or ``message``), scrubbed."""
        text = response.text
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict):
            for field in ("Error", "message"):
                value = body.get(field)
                if isinstance(value, str) and value:
                    return self._scrub(value)
        text = text.strip()
        if text and len(text) <= 500:
            return self._scrub(text)
        return self._scrub(response.reason or "no message")

    def _request(
        self, method: str, path: str, body: Mapping[str, object] | None = None
    ) -> requests.Response:
        """One call with retries. Every call this client makes is safe to repeat, POSTs
        included: a retry after a lost answer asks for the same thing again."""
        import requests  # noqa: PLC0415

        headers: dict[str, str] = {}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = self.address + path
        attempt = 1
        while True:
            status: int | None = None
            # Raised after the except clause, so that the requests exception (whose text may
            # hold the key) is not even kept as __context__.
            fatal: ApiError | None = None
            try:
                response = self._session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    timeout=self._timeout_s,
                    allow_redirects=False,
                    stream=True,  # the body is read by _read_body, bounded in size and time
                )
                self._read_body(response)
            except _BodyTooSlowOrLarge as error:
                why = error.why
                message = error.why
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as error:
                why = self._why(error)
                message = f"{why}: {self._scrub(str(error))}"
            except requests.RequestException as error:
                # A bad address and the like: retrying cannot help.
                fatal = ApiError(method, path, None, self._scrub(str(error)))
                why = message = ""
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return response
                if status == 401:
                    raise ApiError(method, path, status, UNAUTHORISED_MESSAGE)
                if status < 500:
                    # 423 (locked) and the other 4xx are answers, not accidents.
                    raise ApiError(method, path, status, self._error_message(response))
                why = f"http-{status}"
                message = self._error_message(response)
            if fatal is not None:
                raise fatal
            if attempt >= self.attempts:
                raise ApiError(method, path, status, message)
            delay_s = min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s)
            attempt += 1
            self._log.warning(
                "api.retry",
                method=method,
                path=path,
                attempt=attempt,
                of=self.attempts,
                why=why,
                delay_s=f"{delay_s:g}",
            )
            time.sleep(delay_s)

    def _read_body(self, response: requests.Response) -> None:
        """Read the body, at most MAX_BODY_BYTES and within the read timeout in all: the read
        timeout alone bounds each socket read, so a server dripping a byte at a time (or an
        endless body) would otherwise hold the API worker forever."""
        deadline = time.monotonic() + self._timeout_s[1]
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                # read1: whatever has arrived, at most 4096 bytes. iter_content would wait for
                # a whole chunk, and a dripping server never lets it return.
                # (urllib3 1.x has no read1: there the size bound still holds.)
                read = getattr(response.raw, "read1", response.raw.read)
                chunk = read(4096, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _BodyTooSlowOrLarge("response-too-large")
                if time.monotonic() > deadline:
                    raise _BodyTooSlowOrLarge("response-too-slow")
        finally:
            response.close()
        response._content = b"".join(chunks)  # what .json() and .text then read

    def _json_object(self, method: str, path: str) -> dict[str, object]:
        response = self._request(method, path)
        try:
            body = json.loads(response.content)
        except ValueError:
            body = _MALFORMED
        if body is _MALFORMED:
            # Outside the except clause: the decoder's message quotes the body.
            raise ApiError(method, path, response.status_code, MALFORMED_JSON_MESSAGE)
        if not isinstance(body, dict):
            raise ApiError(
                method,
                path,
                response.status_code,
                "unexpected JSON from the Supervisor: expected an object",
            )
        return {str(k): v for k, v in body.items()}
