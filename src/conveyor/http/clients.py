"""The HTTP clients: ``AsyncHttpClient`` on ``httpx.AsyncClient``, ``HttpClient`` on
``httpx.Client``. Only sending and sleeping differ between them (see core.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import httpx

from ..errors import ConveyorError
from ..models import DeadLetter, Event, WorkflowPage, WorkflowStatus
from .core import (
    _ENDED,
    EVENTS_READ_TIMEOUT,
    _batch_call,
    _Call,
    _cancel_call,
    _client_headers,
    _connect_delay,
    _dead_letters_call,
    _Deadline,
    _error,
    _Follow,
    _json,
    _list_call,
    _outcome,
    _page,
    _replay_call,
    _result_call,
    _retry_delay,
    _signal_call,
    _start_call,
    _status_call,
    _timeout,
    _unreachable,
)
from .errors import ApiUnavailableError


class AsyncHttpClient:
    """Starts, reads, follows, signals and cancels workflows through the HTTP API.

    ``api_key`` is sent as a bearer token. ``timeout`` bounds each request (long polls and
    event streams get the extra time they need). With ``retries`` > 0, a 429 or 503 answer
    is retried after its Retry-After, and a connection that could not be opened after a
    backoff; calls that could then run twice (a start without an idempotency key, a signal)
    are not resent after a 503, nor a batch that was partly accepted. ``headers`` are added
    to every request; ``transport`` replaces httpx's (TLS settings, proxies, tests).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries!r}")
        self.retries = retries
        self._timeout = httpx.Timeout(timeout)
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_client_headers(api_key, headers),
            timeout=self._timeout, transport=transport,
        )  # fmt: skip

    async def __aenter__(self) -> AsyncHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, content=call.body, params=call.params,
                    headers=call.headers, timeout=_timeout(self._timeout, wait=call.wait),
                )  # fmt: skip
            except httpx.TransportError as exc:
                delay = _connect_delay(exc, attempt, self.retries)
                if delay is None:
                    raise _unreachable(self._http.base_url, exc) from exc
            else:
                if response.is_success:
                    return response
                delay = _retry_delay(call, response, attempt, self.retries)
                if delay is None:
                    raise _error(call, response)
            attempt += 1
            await asyncio.sleep(delay)

    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        delay: float | None = None,
        max_steps: int | None = None,
    ) -> str:
        """Start ``workflow`` with ``input`` (JSON; pydantic models are dumped); returns its
        id. Same options as :meth:`conveyor.AsyncClient.start`; ``request_id`` becomes the
        correlation id (X-Request-ID). Raises UnknownWorkflowError, InputError (the input
        failed the workflow's model), BackPressureError (with ``retry_after``)."""
        call = _start_call(workflow, input, idempotency_key, request_id, delay, max_steps)
        return str(_json(await self._send(call))["id"])

    async def start_many(
        self,
        workflow: str,
        inputs: Sequence[Any],
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> list[str]:
        """Start ``workflow`` once per input in one request; the ids, in order. With an
        ``idempotency_key``, input i uses ``<key>:<i>``, so resending starts nothing twice.
        Raises PartialBatchError (a BackPressureError) when the backlog refused some."""
        call = _batch_call(workflow, inputs, idempotency_key, request_id)
        return [str(i) for i in _json(await self._send(call))["ids"]]

    async def status(self, workflow_id: str) -> WorkflowStatus:
        """Status, current step, result or error, and the history of every attempt."""
        response = await self._send(_status_call(workflow_id))
        return WorkflowStatus.model_validate_json(response.content)

    async def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        """Wait until the workflow finishes (long polls, not a poll loop); return its result.

        Raises WorkflowFailedError (carrying the step's error), WorkflowCancelledError,
        WorkflowNotFoundError, or ResultTimeoutError after ``timeout`` seconds.
        """
        deadline = _Deadline(workflow_id, timeout)
        while True:
            wait = deadline.poll_wait()
            began = time.monotonic()
            response = await self._send(_result_call(workflow_id, wait))
            if response.status_code == 200:
                return _outcome(workflow_id, _json(response))
            pause = deadline.pause(wait, time.monotonic() - began, _json(response).get("status"))
            if pause:
                await asyncio.sleep(pause)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> str:
        """Send signal ``name`` with ``payload`` (JSON); 'delivered' when a wait resumed,
        'buffered' when it is kept for the next wait. Raises SignalError once it finished."""
        return str(_json(await self._send(_signal_call(workflow_id, name, payload)))["outcome"])

    async def cancel(self, workflow_id: str) -> str:
        """Cancel a workflow wherever it is; returns its final status ('cancelled', or how
        it had already finished). Needs a key with the ``admin`` scope."""
        return str(_json(await self._send(_cancel_call(workflow_id)))["status"])

    async def list_workflows(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> WorkflowPage:
        """Recent workflows, newest first, optionally of one ``name`` and ``status``
        (running, waiting, completed, failed, cancelled); at most ``limit`` (1 to 1000).
        Pass the page's ``next_cursor`` back as ``cursor`` for the next page."""
        return _page(_json(await self._send(_list_call(name, status, limit, cursor))))

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first (at most ``limit``, up to 10,000). Needs ``admin``."""
        body = _json(await self._send(_dead_letters_call(limit)))
        return [DeadLetter.model_validate(item) for item in body["items"]]

    async def replay(self, dead_letter_id: str) -> str:
        """Re-run the failed step of a dead letter's workflow; returns the workflow id.
        Raises DeadLetterNotFoundError, ReplayError. Needs ``admin``."""
        return str(_json(await self._send(_replay_call(dead_letter_id)))["workflow_id"])

    async def events(
        self, workflow_id: str, last_event_id: str | None = None, *, reconnects: int = 5
    ) -> AsyncIterator[Event]:
        """Every event of the workflow, from the start or after ``last_event_id``, until its
        ``end`` event. A dropped connection is reopened with Last-Event-ID, so nothing is
        lost or repeated; after ``reconnects`` failures in a row without an event, the last
        error is raised. Close it early with ``contextlib.aclosing`` (or ``aclose()``)."""
        follow = _Follow(workflow_id, last_event_id, reconnects)
        timeout = _timeout(self._timeout, read=EVENTS_READ_TIMEOUT)
        while True:
            call = follow.call()
            error: ConveyorError = ApiUnavailableError(_ENDED)
            cause: httpx.TransportError | None = None
            try:
                async with self._http.stream(
                    "GET", call.path, headers=call.headers, timeout=timeout
                ) as response:
                    if response.status_code == 204:
                        return  # nothing after last_event_id: the stream had already ended
                    if not response.is_success:
                        await response.aread()
                        error = _error(call, response)
                    else:
                        async for line in response.aiter_lines():
                            event = follow.feed(line)
                            if event is not None:
                                yield event
                                if event.event == "end":
                                    return
            except httpx.TransportError as exc:
                error, cause = _unreachable(self._http.base_url, exc), exc
            await asyncio.sleep(follow.reconnect_delay(error, cause))


class HttpClient:
    """The blocking counterpart of :class:`AsyncHttpClient`: same arguments, same methods,
    same exceptions, on ``httpx.Client``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries!r}")
        self.retries = retries
        self._timeout = httpx.Timeout(timeout)
        self._http = httpx.Client(
            base_url=base_url, headers=_client_headers(api_key, headers),
            timeout=self._timeout, transport=transport,
        )  # fmt: skip

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, content=call.body, params=call.params,
                    headers=call.headers, timeout=_timeout(self._timeout, wait=call.wait),
                )  # fmt: skip
            except httpx.TransportError as exc:
                delay = _connect_delay(exc, attempt, self.retries)
                if delay is None:
                    raise _unreachable(self._http.base_url, exc) from exc
            else:
                if response.is_success:
                    return response
                delay = _retry_delay(call, response, attempt, self.retries)
                if delay is None:
                    raise _error(call, response)
            attempt += 1
            time.sleep(delay)

    def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        delay: float | None = None,
        max_steps: int | None = None,
    ) -> str:
        """See :meth:`AsyncHttpClient.start`."""
        call = _start_call(workflow, input, idempotency_key, request_id, delay, max_steps)
        return str(_json(self._send(call))["id"])

    def start_many(
        self,
        workflow: str,
        inputs: Sequence[Any],
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> list[str]:
        """See :meth:`AsyncHttpClient.start_many`."""
        call = _batch_call(workflow, inputs, idempotency_key, request_id)
        return [str(i) for i in _json(self._send(call))["ids"]]

    def status(self, workflow_id: str) -> WorkflowStatus:
        """See :meth:`AsyncHttpClient.status`."""
        return WorkflowStatus.model_validate_json(self._send(_status_call(workflow_id)).content)

    def result(self, workflow_id: str, timeout: float | None = None) -> Any:
        """See :meth:`AsyncHttpClient.result`."""
        deadline = _Deadline(workflow_id, timeout)
        while True:
            wait = deadline.poll_wait()
            began = time.monotonic()
            response = self._send(_result_call(workflow_id, wait))
            if response.status_code == 200:
                return _outcome(workflow_id, _json(response))
            pause = deadline.pause(wait, time.monotonic() - began, _json(response).get("status"))
            if pause:
                time.sleep(pause)

    def signal(self, workflow_id: str, name: str, payload: Any = None) -> str:
        """See :meth:`AsyncHttpClient.signal`."""
        return str(_json(self._send(_signal_call(workflow_id, name, payload)))["outcome"])

    def cancel(self, workflow_id: str) -> str:
        """See :meth:`AsyncHttpClient.cancel`."""
        return str(_json(self._send(_cancel_call(workflow_id)))["status"])

    def list_workflows(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> WorkflowPage:
        """See :meth:`AsyncHttpClient.list_workflows`."""
        return _page(_json(self._send(_list_call(name, status, limit, cursor))))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """See :meth:`AsyncHttpClient.dead_letters`."""
        body = _json(self._send(_dead_letters_call(limit)))
        return [DeadLetter.model_validate(item) for item in body["items"]]

    def replay(self, dead_letter_id: str) -> str:
        """See :meth:`AsyncHttpClient.replay`."""
        return str(_json(self._send(_replay_call(dead_letter_id)))["workflow_id"])

    def events(
        self, workflow_id: str, last_event_id: str | None = None, *, reconnects: int = 5
    ) -> Iterator[Event]:
        """See :meth:`AsyncHttpClient.events` (close it early with ``close()``)."""
        follow = _Follow(workflow_id, last_event_id, reconnects)
        timeout = _timeout(self._timeout, read=EVENTS_READ_TIMEOUT)
        while True:
            call = follow.call()
            error: ConveyorError = ApiUnavailableError(_ENDED)
            cause: httpx.TransportError | None = None
            try:
                with self._http.stream(
                    "GET", call.path, headers=call.headers, timeout=timeout
                ) as response:
                    if response.status_code == 204:
                        return  # nothing after last_event_id: the stream had already ended
                    if not response.is_success:
                        response.read()
                        error = _error(call, response)
                    else:
                        for line in response.iter_lines():
                            event = follow.feed(line)
                            if event is not None:
                                yield event
                                if event.event == "end":
                                    return
            except httpx.TransportError as exc:
                error, cause = _unreachable(self._http.base_url, exc), exc
            time.sleep(follow.reconnect_delay(error, cause))
