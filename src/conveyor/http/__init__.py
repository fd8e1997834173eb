"""A client of the HTTP API (``conveyor api``) for services that must not talk to Redis
directly: a web tier behind a firewall, another language's gateway, a tenant with an API key
but no Redis credentials.

It keeps the method names and the exceptions of :class:`conveyor.AsyncClient` and
:class:`conveyor.Client` wherever the API offers the same operation, so code can move from
one to the other by changing the constructor; it also lists recent workflows
(``list_workflows``), which the Redis clients do not. Problem details (RFC 9457) come back
as exceptions a caller catches by meaning (``UnknownWorkflowError``, ``InputError``,
``AuthError``, ...), not by status code.

``AsyncHttpClient`` runs on ``httpx.AsyncClient`` and ``HttpClient`` on ``httpx.Client``: the
blocking client needs no thread or private event loop. Both share the I/O-free core below
(how a call becomes a request, how an answer becomes a value or an exception, how the event
stream is parsed); only sending and sleeping differ between them.
"""

from ..models import Event, WorkflowPage
from .clients import AsyncHttpClient, HttpClient
from .errors import ApiError, ApiUnavailableError, AuthError, InputError, PartialBatchError

__all__ = [
    "ApiError",
    "ApiUnavailableError",
    "AsyncHttpClient",
    "AuthError",
    "Event",
    "HttpClient",
    "InputError",
    "PartialBatchError",
    "WorkflowPage",
]
