"""SSRF-safe outbound HTTP for steps that call other services (model APIs, webhooks, URLs that
came in with a workflow's input).

A step that fetches a URL it was given can be made to fetch ``http://169.254.169.254/`` (the
cloud metadata service, with the node's credentials), ``http://localhost:6379`` or a service
inside the cluster network. :func:`outbound_client` (asyncio) and
:func:`outbound_sync_client` (sync steps) return ordinary ``httpx`` clients whose every
connection is checked first:

* the host is resolved here, **every** address it resolves to is checked, and the connection
  is made to a checked address (so a DNS answer that changes between the check and the
  connection, "DNS rebinding", cannot slip through); TLS still verifies, and SNI and the
  ``Host`` header still carry, the host name;
* the check runs for each connection, so a redirect (``follow_redirects=True``) to a
  forbidden address is refused like a first request;
* refused: loopback, private (RFC 1918, unique-local ``fc00::/7``, other special-purpose
  ranges), shared ``100.64.0.0/10`` (CGNAT), link-local ``169.254.0.0/16`` and ``fe80::/10``,
  cloud metadata addresses (``169.254.169.254``, ``fd00:ec2::254``, ``100.100.100.200``),
  unspecified, multicast, reserved and broadcast addresses, also written as IPv4-mapped
  (``::ffff:127.0.0.1``), NAT64 (``64:ff9b::/96``) or 6to4 (``2002::/16``) IPv6 addresses;
* proxies from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``) are not used,
  nor ``.netrc`` or ``SSL_CERT_FILE`` (``trust_env=False``): through a proxy the connection
  would go to the proxy's address and the target's would never be checked. Where egress must
  go through a proxy, that proxy has to enforce the same rules.

A refusal raises :class:`~conveyor.errors.OutboundBlockedError` before any packet is sent to
the address (a non-retryable error: the step fails at once). Allow what you need explicitly
with :class:`OutboundPolicy`::

    from conveyor.outbound import OutboundPolicy, outbound_client

    @wf.step(retries=3, timeout=60)
    async def summarize(ctx, job):
        async with outbound_client(timeout=ctx.time_left) as http:
            reply = await http.post(job["callback_url"], json=...)

    # an in-cluster model server, and one internal network
    policy = OutboundPolicy(allow_hosts=("vllm.models.svc.cluster.local",),
                            allow_networks=("10.20.0.0/16",))
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import anyio
import httpcore
import httpx

from .errors import ConfigurationError, OutboundBlockedError

__all__ = [
    "AsyncOutboundBackend",
    "OutboundBackend",
    "OutboundBlockedError",
    "OutboundPolicy",
    "blocked_reason",
    "outbound_client",
    "outbound_sync_client",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud instance metadata services (credentials of the node): never allowed by
#: ``allow_private``, only by naming them in ``allow_networks`` or ``allow_hosts``.
METADATA: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2/32",  # AWS ECS task metadata
        "fd00:ec2::254/128",  # AWS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud
    )
)
SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052, the well-known prefix

#: Reasons ``allow_private=True`` lifts; the others need an explicit network or host.
PRIVATE_REASONS = frozenset({"private", "loopback", "shared address space (100.64.0.0/10)"})


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, where connecting to it reaches that IPv4
    host: IPv4-mapped, NAT64 (well-known prefix), 6to4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address (None when it is one)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = blocked_reason(embedded)
            return None if inner is None else f"{inner} (as IPv6 {address})"
    if any(address in network for network in METADATA):
        return "a cloud metadata address"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED:
        return "shared address space (100.64.0.0/10)"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not globally routable"
    return None


def _parse_host_entry(entry: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``1.2.3.4:port``, ``[::1]:port`` or ``*.suffix``."""
    text = entry.strip().lower()
    if not text:
        raise ConfigurationError("OutboundPolicy.allow_hosts: an empty host")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""  # a name, or a bare IPv6 address
    if port and not port.isdigit():
        raise ConfigurationError(f"OutboundPolicy.allow_hosts: bad port in {entry!r}")
    return host, int(port) if port else None


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Which addresses outbound requests may connect to besides public ones.

    Attributes:
        allow_private: also allow private, loopback and CGNAT addresses (a development
            setting; link-local, metadata, multicast, unspecified and reserved addresses
            stay refused unless listed in ``allow_networks``).
        allow_networks: CIDRs allowed whatever they are, e.g. ``("10.20.0.0/16",)`` for an
            internal model server.
        allow_hosts: host names (case-insensitive; ``*.example.internal`` for every
            subdomain) or ``host:port`` whose addresses are allowed whatever they are. A name
            listed here is trusted with whatever its DNS answers: list names your own DNS
            serves, never one that a caller can choose. A redirect to another host is
            checked on its own.
    """

    allow_private: bool = False
    allow_networks: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    _hosts: tuple[tuple[str, int | None], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("allow_networks", "allow_hosts"):
            if isinstance(getattr(self, name), str):  # ("a") is a str, not a tuple
                raise ConfigurationError(f"OutboundPolicy.{name} takes a tuple of strings")
        try:
            networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allow_networks)
        except ValueError as exc:
            raise ConfigurationError(f"OutboundPolicy.allow_networks: {exc}") from None
        object.__setattr__(self, "_networks", networks)
        hosts = tuple(_parse_host_entry(h) for h in self.allow_hosts)
        object.__setattr__(self, "_hosts", hosts)

    def host_allowed(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is listed in ``allow_hosts``."""
        host = host.lower().rstrip(".")
        for name, allowed_port in self._hosts:
            if allowed_port is not None and allowed_port != port:
                continue
            if name == host or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False

    def check(self, host: str, port: int, address: IPAddress) -> None:
        """Raise :class:`OutboundBlockedError` unless ``host:port`` may connect to
        ``address``."""
        reason = blocked_reason(address)
        if reason is None or self.host_allowed(host, port):
            return
        if self.allow_private and reason.partition(" (as IPv6")[0] in PRIVATE_REASONS:
            return
        forms: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            forms += [embedded] if embedded is not None else []
        if any(form in network for form in forms for network in self._networks):
            return
        raise OutboundBlockedError(host, port, str(address), reason)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def _checked(
    policy: OutboundPolicy, host: str, port: int, infos: Iterable[tuple[Any, ...]]
) -> list[IPAddress]:
    """Every address of a getaddrinfo answer, each checked, in the resolver's order."""
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        policy.check(host, port, address)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise httpcore.ConnectError(f"{host} has no address")
    return addresses


class AsyncOutboundBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves the host itself, checks every address with
    ``policy`` and connects to a checked address (trying them in order)."""

    def __init__(
        self, policy: OutboundPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        literal = _literal(host)
        if literal is not None:
            self.policy.check(host, port, literal)
            return [literal]
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        return _checked(self.policy, host, port, infos)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port, timeout)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundBlockedError(path, 0, path, "a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class OutboundBackend(httpcore.NetworkBackend):
    """The blocking counterpart of :class:`AsyncOutboundBackend`."""

    def __init__(self, policy: OutboundPolicy, inner: httpcore.NetworkBackend | None = None):
        self.policy = policy
        self.inner = inner or httpcore.SyncBackend()

    def resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        literal = _literal(host)
        if literal is not None:
            self.policy.check(host, port, literal)
            return [literal]
        try:  # the stdlib resolver takes no timeout: the system's resolv.conf bounds it
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        return _checked(self.policy, host, port, infos)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception | None = None
        for address in self.resolve(host, port, timeout):
            try:
                return self.inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise OutboundBlockedError(path, 0, path, "a Unix socket")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


#: httpx's own default
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
#: httpx client options that belong to the transport (and so are taken here)
_TRANSPORT_OPTIONS = ("verify", "cert", "http1", "http2", "limits", "retries")
#: options that would route around the check
_REFUSED_OPTIONS = ("transport", "mounts", "proxy", "proxies", "trust_env")


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    refused = sorted(set(options) & set(_REFUSED_OPTIONS))
    if refused:
        raise ConfigurationError(
            f"outbound clients take no {', '.join(refused)}: a proxy, another transport or "
            "the environment's proxies would connect to addresses the policy never checks"
        )
    transport = {k: options.pop(k) for k in _TRANSPORT_OPTIONS if k in options}
    return transport, options


def _pool_options(options: dict[str, Any]) -> dict[str, Any]:
    """httpcore pool arguments for httpx transport ``options`` (as httpx maps them)."""
    limits: httpx.Limits = options.get("limits", DEFAULT_LIMITS)
    verify = options.get("verify", True)
    ssl_context = httpx.create_ssl_context(verify, options.get("cert"), trust_env=False)
    return {
        "ssl_context": ssl_context,
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
        "http1": options.get("http1", True),
        "http2": options.get("http2", False),
        "retries": options.get("retries", 0),
    }


# httpx has no public way to give its transport an httpcore network backend; its transports
# keep their pool in ``_pool`` (httpx 0.2x), so these replace it with one that has the
# checking backend, and keep everything else of httpx's (request and error mapping). A
# release that keeps the pool elsewhere fails closed: _swap_pool refuses to build the client
# rather than hand out one that connects unchecked. tests/security/test_ssrf.py also fails if
# the swap ever stops taking effect.


def _swap_pool(transport: httpx.BaseTransport | httpx.AsyncBaseTransport, pool: Any) -> None:
    expected = (
        httpcore.AsyncConnectionPool
        if isinstance(transport, httpx.AsyncBaseTransport)
        else httpcore.ConnectionPool
    )
    if not isinstance(getattr(transport, "_pool", None), expected):
        raise RuntimeError(
            f"httpx {httpx.__version__} keeps no httpcore pool where conveyor.outbound "
            "installs its address check: refusing to build an unchecked client"
        )
    transport._pool = pool  # type: ignore[union-attr, unused-ignore]


class _AsyncTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: OutboundPolicy, **options: Any) -> None:
        super().__init__(trust_env=False, **options)
        _swap_pool(
            self,
            httpcore.AsyncConnectionPool(
                **_pool_options(options), network_backend=AsyncOutboundBackend(policy)
            ),
        )


class _Transport(httpx.HTTPTransport):
    def __init__(self, policy: OutboundPolicy, **options: Any) -> None:
        super().__init__(trust_env=False, **options)
        _swap_pool(
            self,
            httpcore.ConnectionPool(
                **_pool_options(options), network_backend=OutboundBackend(policy)
            ),
        )


def outbound_client(
    policy: OutboundPolicy | None = None,
    *,
    allow_hosts: Sequence[str] = (),
    allow_networks: Sequence[str] = (),
    allow_private: bool = False,
    **options: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that connects only to addresses ``policy`` allows (public
    ones by default). ``allow_hosts``, ``allow_networks`` and ``allow_private`` build the
    policy when none is given. Other options are httpx's (``timeout``, ``headers``,
    ``base_url``, ``follow_redirects``, ``verify``, ``cert``, ``http2``, ``limits``...),
    except ``proxy``, ``mounts``, ``transport`` and ``trust_env``."""
    policy = policy or OutboundPolicy(
        allow_private=allow_private,
        allow_networks=tuple(allow_networks),
        allow_hosts=tuple(allow_hosts),
    )
    transport_options, client_options = _split(dict(options))
    transport = _AsyncTransport(policy, **transport_options)
    return httpx.AsyncClient(transport=transport, trust_env=False, **client_options)


def outbound_sync_client(
    policy: OutboundPolicy | None = None,
    *,
    allow_hosts: Sequence[str] = (),
    allow_networks: Sequence[str] = (),
    allow_private: bool = False,
    **options: Any,
) -> httpx.Client:
    """The blocking ``httpx.Client`` counterpart of :func:`outbound_client`, for sync steps."""
    policy = policy or OutboundPolicy(
        allow_private=allow_private,
        allow_networks=tuple(allow_networks),
        allow_hosts=tuple(allow_hosts),
    )
    transport_options, client_options = _split(dict(options))
    transport = _Transport(policy, **transport_options)
    return httpx.Client(transport=transport, trust_env=False, **client_options)
