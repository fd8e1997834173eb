"""The HTTP client's I/O-free core, shared by both clients: how a call becomes a request, how
an answer becomes a value or an exception, how the event stream is parsed."""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import quote

import httpx
from pydantic_core import from_json, to_json

from .. import __version__
from ..errors import (
    BackPressureError,
    ConveyorError,
    DeadLetterNotFoundError,
    ReplayError,
    ResultTimeoutError,
    SignalError,
    UnknownWorkflowError,
    WorkflowNotFoundError,
)
from ..models import Event as Event  # re-exported (cli/backend.py)
from ..models import WorkflowPage as WorkflowPage
from ..models import WorkflowSummary
from ..status import outcome_error
from .errors import ApiError, ApiUnavailableError, AuthError, InputError, PartialBatchError

JSON = "application/json"
#: Longest single long poll of ``/result``, seconds: short enough that proxies with a 60 s
#: idle timeout keep the connection, long enough that a waiting client costs ~nothing.
POLL_WAIT = 30.0
#: The server sends a keep-alive comment every 15 s: this long without a byte means the
#: event stream is dead, and it is reopened.
EVENTS_READ_TIMEOUT = 45.0
#: The longest one retry or reconnect waits, whatever Retry-After says.
MAX_RETRY_WAIT = 60.0
#: Retries of connections that could not be opened (no Retry-After) start here and double.
BACKOFF = 0.5


# -- the I/O-free core ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    """One API call as data, so both clients send it the same way."""

    method: str
    path: str
    body: bytes | None = None
    params: dict[str, str | int | float] | None = None
    headers: dict[str, str] | None = None
    # sending it again cannot do anything twice (reads, cancel, starts with a key): only such
    # calls are retried after a 503, where the server may have written before it failed
    idempotent: bool = True
    batch: bool = False
    wait: float = 0.0  # seconds the server may hold the answer (a long poll)


def _seg(value: str) -> str:
    return quote(value, safe="")


def _json_call(method: str, path: str, value: Any, headers: dict[str, str], **kw: Any) -> _Call:
    return _Call(method, path, to_json(value), headers={**headers, "Content-Type": JSON}, **kw)


def _start_headers(idempotency_key: str | None, request_id: str | None) -> dict[str, str]:
    headers = {}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return headers


def _start_call(
    workflow: str,
    input: Any,
    idempotency_key: str | None,
    request_id: str | None,
    delay: float | None,
    max_steps: int | None,
) -> _Call:
    params: dict[str, str | int | float] = {}
    if delay is not None:
        params["delay"] = delay
    if max_steps is not None:
        params["max_steps"] = max_steps
    return _json_call(
        "POST", f"/v1/workflows/{_seg(workflow)}", input,
        _start_headers(idempotency_key, request_id), params=params or None,
        idempotent=idempotency_key is not None,
    )  # fmt: skip


def _batch_call(
    workflow: str, inputs: Sequence[Any], idempotency_key: str | None, request_id: str | None
) -> _Call:
    return _json_call(
        "POST", f"/v1/workflows/{_seg(workflow)}/batch", list(inputs),
        _start_headers(idempotency_key, request_id), idempotent=idempotency_key is not None,
        batch=True,
    )  # fmt: skip


def _status_call(workflow_id: str) -> _Call:
    return _Call("GET", f"/v1/workflows/{_seg(workflow_id)}")


def _result_call(workflow_id: str, wait: float) -> _Call:
    path = f"/v1/workflows/{_seg(workflow_id)}/result"
    return _Call("GET", path, params={"wait": round(wait, 3)}, wait=wait)


def _signal_call(workflow_id: str, name: str, payload: Any) -> _Call:
    path = f"/v1/workflows/{_seg(workflow_id)}/signals/{_seg(name)}"
    return _json_call("POST", path, payload, {}, idempotent=False)


def _cancel_call(workflow_id: str) -> _Call:
    return _Call("POST", f"/v1/workflows/{_seg(workflow_id)}/cancel")


def _list_call(name: str | None, status: str | None, limit: int, cursor: str | None) -> _Call:
    params: dict[str, str | int | float] = {"limit": limit}
    for key, value in (("name", name), ("status", status), ("cursor", cursor)):
        if value is not None:
            params[key] = value
    return _Call("GET", "/v1/workflows", params=params)


def _page(body: dict[str, Any]) -> WorkflowPage:
    items = [WorkflowSummary.model_validate(item) for item in body["items"]]
    return WorkflowPage(items=items, next_cursor=body.get("next_cursor"))


def _dead_letters_call(limit: int) -> _Call:
    return _Call("GET", "/v1/dlq", params={"limit": limit})


def _replay_call(dead_letter_id: str) -> _Call:
    # not resent after a 503: the first may have run, and a second would then fail (404)
    return _Call("POST", f"/v1/dlq/{_seg(dead_letter_id)}/replay", idempotent=False)


def _events_call(workflow_id: str, last_event_id: str | None) -> _Call:
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return _Call("GET", f"/v1/workflows/{_seg(workflow_id)}/events", headers=headers)


def _client_headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Accept": JSON, "User-Agent": f"conveyor-http/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


def _timeout(base: httpx.Timeout, *, wait: float = 0.0, read: float | None = None) -> httpx.Timeout:
    """``base`` with a read timeout that outlasts a long poll (``wait``) or a stream's
    keep-alives (``read``); an unlimited read stays unlimited."""
    if base.read is None:
        return base
    value = max(base.read, read) if read is not None else base.read + wait
    return httpx.Timeout(connect=base.connect, read=value, write=base.write, pool=base.pool)


def _json(response: httpx.Response) -> Any:
    return from_json(response.content)


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The problem-details body, or one made up from the status when it is not JSON (a
    proxy's error page)."""
    with contextlib.suppress(ValueError):
        body = from_json(response.content)
        if isinstance(body, dict):
            return body
    text = response.text.strip()[:300]
    return {"status": response.status_code, "detail": text or response.reason_phrase}


def _retry_after(response: httpx.Response, problem: dict[str, Any]) -> float | None:
    """Seconds from Retry-After (delta seconds or an HTTP date), else the body's hint."""
    value = response.headers.get("retry-after", "").strip()
    if value:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value))
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(value)
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - time.time())
    hint = problem.get("retry_after")
    return float(hint) if isinstance(hint, int | float) else None


def _error(call: _Call, response: httpx.Response) -> ConveyorError:
    """The exception for an error answer: the Redis client's where one means the same."""
    status = response.status_code
    problem = _problem(response)
    kind = str(problem.get("type", "")).rpartition("/")[2]
    detail = str(problem.get("detail") or response.reason_phrase or f"HTTP {status}")
    if status == 404 and kind == "unknown-workflow":
        return UnknownWorkflowError(detail)
    if status == 404 and kind == "workflow-not-found":
        return WorkflowNotFoundError(detail)
    if status == 409 and kind == "workflow-finished":
        return SignalError(detail)
    if status == 404 and kind == "dead-letter-not-found":
        return DeadLetterNotFoundError(detail)
    if status == 409 and kind == "cannot-replay":
        return ReplayError(detail)
    if status == 429:
        wait = _retry_after(response, problem) or 1.0
        if call.batch:
            return PartialBatchError(detail, wait, list(problem.get("accepted") or []))
        return BackPressureError(detail, wait)
    if status == 422:
        return InputError(detail, list(problem.get("errors") or []), problem)
    if status in (401, 403):
        return AuthError(f"{detail} (HTTP {status})", status, problem)
    if status == 503:
        return ApiUnavailableError(detail, _retry_after(response, problem), problem)
    return ApiError(f"HTTP {status} from {call.method} {call.path}: {detail}", status, problem)


def _unreachable(base_url: httpx.URL, exc: httpx.TransportError) -> ApiUnavailableError:
    return ApiUnavailableError(
        f"cannot reach the API at {base_url}: {str(exc) or type(exc).__name__}"
    )


def _retry_delay(call: _Call, response: httpx.Response, attempt: int, retries: int) -> float | None:
    """Seconds to wait before sending ``call`` again, or None to give up. A 429 means nothing
    was done (except the accepted part of a batch); a 503 may follow a write that Redis made
    but could not confirm, so only idempotent calls are resent after one."""
    if attempt >= retries or response.status_code not in (429, 503):
        return None
    problem = _problem(response)
    if response.status_code == 503 and not call.idempotent:
        return None
    if problem.get("accepted") and not call.idempotent:
        return None
    wait = _retry_after(response, problem)
    return min(MAX_RETRY_WAIT, BACKOFF * 2.0**attempt if wait is None else wait)


def _connect_delay(exc: httpx.TransportError, attempt: int, retries: int) -> float | None:
    """A connection that could not be opened sent nothing, so any call may be retried."""
    if attempt >= retries or not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return None
    return min(MAX_RETRY_WAIT, BACKOFF * 2.0**attempt)


def _outcome(workflow_id: str, body: dict[str, Any]) -> Any:
    """A finished workflow's result, or the exception ``AsyncClient.result`` raises."""
    error = outcome_error(workflow_id, str(body.get("status")), body.get("error"))
    if error is not None:
        raise error
    return body.get("result")


class _Deadline:
    """When ``result`` gives up, and how long each long poll may wait until then."""

    def __init__(self, workflow_id: str, timeout: float | None) -> None:
        self.workflow_id = workflow_id
        self.timeout = timeout
        self.at = None if timeout is None else time.monotonic() + timeout

    def poll_wait(self) -> float:
        if self.at is None:
            return POLL_WAIT
        return max(0.0, min(POLL_WAIT, self.at - time.monotonic()))

    def pause(self, asked: float, took: float, status: Any) -> float:
        """Raise ResultTimeoutError when time is up; else how long to pause before the next
        poll: none, unless the server cut the poll short (a low max_wait), so that such a
        server is not polled in a tight loop."""
        left = None if self.at is None else self.at - time.monotonic()
        if left is not None and left <= 0:
            raise ResultTimeoutError(
                f"workflow {self.workflow_id} did not finish within {self.timeout:g}s "
                f"(status {status})"
            )
        if took >= asked / 2:
            return 0.0
        return 1.0 if left is None else min(1.0, left)


class _EventParser:
    """Server-Sent Events, one line at a time: fields up to a blank line make one event;
    comments (the keep-alives) and unknown fields are skipped. An event's id counts as seen
    only once the whole event has arrived, so a stream cut mid-event resumes before it."""

    def __init__(self, last_event_id: str | None) -> None:
        self.last_id = last_event_id
        self.retry = 1.0  # seconds before reconnecting, until the server says otherwise
        self.reset()

    def reset(self) -> None:
        """Forget a partly received event (the connection dropped in its middle)."""
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if not line:
            if self._id is not None:
                self.last_id = self._id
            event = None
            if self._data:
                text = "\n".join(self._data)
                event = Event(self.last_id or "", self._event or "message", _decode(text))
            self.reset()
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value) / 1000
        return None


class _Follow:
    """Following one workflow's events across connections: what to ask for next (the
    Last-Event-ID), and whether and when to reconnect after a failure."""

    def __init__(self, workflow_id: str, last_event_id: str | None, reconnects: int) -> None:
        self.workflow_id = workflow_id
        self.parser = _EventParser(last_event_id)
        self.reconnects = reconnects
        self.failures = 0  # in a row, without an event between them

    def call(self) -> _Call:
        return _events_call(self.workflow_id, self.parser.last_id)

    def feed(self, line: str) -> Event | None:
        event = self.parser.feed(line)
        if event is not None:
            self.failures = 0
        return event

    def reconnect_delay(self, error: ConveyorError, cause: BaseException | None) -> float:
        """Seconds to wait before reconnecting after ``error``; raises it when the error
        will not pass (404, 401, ...) or after too many failures in a row."""
        self.failures += 1
        delay = None
        if isinstance(error, ApiUnavailableError):
            delay = error.retry_after or self.parser.retry
        elif isinstance(error, BackPressureError):
            delay = error.retry_after
        if delay is None or self.failures > self.reconnects:
            raise error from cause
        self.parser.reset()
        return min(MAX_RETRY_WAIT, delay)


def _decode(text: str) -> Any:
    try:
        return from_json(text)
    except ValueError:
        return text


_ENDED = "the event stream ended before the workflow did"
