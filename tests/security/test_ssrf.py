"""SSRF-safe outbound HTTP (conveyor.outbound) against real HTTP servers on loopback: refused
by default (before any connection), allowed by host, port, network or allow_private, checked
again on every redirect, the connection made to the checked address while TLS and Host keep
the name, no proxy from the environment, and a refusal that fails a step at once."""

from __future__ import annotations

import http.server
import ipaddress
import pickle
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpcore
import httpx
import pytest
import trustme

from conveyor import App, AsyncClient, OutboundBlockedError, Workflow, WorkflowFailedError
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.errors import ConfigurationError, NonRetryableError
from conveyor.outbound import (
    AsyncOutboundBackend,
    OutboundPolicy,
    _swap_pool,
    blocked_reason,
    outbound_client,
    outbound_sync_client,
)
from tests.conftest import running

# -- real servers -------------------------------------------------------------------------------


@dataclass
class Site:
    """A real HTTP(S) server on 127.0.0.1: ``/`` answers who it is and the Host it was asked
    for, ``/redirect?to=URL`` redirects. ``requests`` lists the paths it served."""

    server: http.server.ThreadingHTTPServer
    scheme: str
    requests: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


def serve(tls: ssl.SSLContext | None = None) -> Site:
    site: Site

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.requests.append(self.path)
            parts = urlsplit(self.path)
            if parts.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", parse_qs(parts.query)["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = f"site {site.port} for {self.headers['Host']}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    site = Site(server, "https" if tls else "http")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return site


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def sites(ca: trustme.CA) -> Iterator[dict[str, Site]]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(tls)
    made = {"a": serve(), "b": serve(), "tls": serve(tls)}
    yield made
    for site in made.values():
        site.server.shutdown()
        site.server.server_close()


@pytest.fixture
def a(sites: dict[str, Site]) -> Site:
    sites["a"].requests.clear()
    return sites["a"]


@pytest.fixture
def b(sites: dict[str, Site]) -> Site:
    sites["b"].requests.clear()
    return sites["b"]


# -- what is public ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
        ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"), ("100.64.0.1", "shared address space (100.64.0.0/10)"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("224.0.0.1", "multicast"), ("239.1.1.1", "multicast"), ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
        ("::ffff:127.0.0.1", "loopback (as IPv6 ::ffff:7f00:1)"),
        ("::ffff:169.254.169.254", "a cloud metadata address (as IPv6 ::ffff:a9fe:a9fe)"),
        ("64:ff9b::10.0.0.1", "private (as IPv6 64:ff9b::a00:1)"),
        ("2002:7f00:1::1", "loopback (as IPv6 2002:7f00:1::1)"),
        ("192.0.2.10", "private"),  # documentation range: not routable either
        ("8.8.8.8", None), ("1.1.1.1", None), ("2606:4700:4700::1111", None),
        ("64:ff9b::8.8.8.8", None),
    ],
)  # fmt: skip
def test_blocked_reason(address: str, reason: str | None) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


def test_policy_options() -> None:
    policy = OutboundPolicy(allow_hosts=("*.models.internal", "api.example.com:8443", "[::1]:80"))
    assert policy.host_allowed("vllm.models.internal", 443)
    assert policy.host_allowed("A.B.MODELS.INTERNAL.", 80)  # case and the root dot
    assert not policy.host_allowed("models.internal", 443)  # the wildcard needs a subdomain
    assert not policy.host_allowed("evilmodels.internal", 443)
    assert policy.host_allowed("api.example.com", 8443)
    assert not policy.host_allowed("api.example.com", 443)  # another port
    assert policy.host_allowed("::1", 80)
    mapped = ipaddress.ip_address("::ffff:10.1.2.3")  # the IPv4 form counts for both options
    OutboundPolicy(allow_private=True).check("h", 80, mapped)
    OutboundPolicy(allow_networks=("10.0.0.0/8",)).check("h", 80, mapped)
    with pytest.raises(OutboundBlockedError, match="private"):
        OutboundPolicy(allow_networks=("192.168.0.0/16",)).check("h", 80, mapped)
    for bad in (
        {"allow_networks": ("not a network",)},
        {"allow_networks": "10.0.0.0/8"},  # a str, not a tuple
        {"allow_hosts": ("host:port",)},
        {"allow_hosts": ("",)},
    ):
        with pytest.raises(ConfigurationError):
            OutboundPolicy(**bad)  # type: ignore[arg-type]
    for refused in ({"proxy": "http://proxy:3128"}, {"trust_env": True}, {"mounts": {}}):
        with pytest.raises(ConfigurationError, match="proxy"):
            outbound_client(**refused)
    assert issubclass(OutboundBlockedError, NonRetryableError)
    error = pickle.loads(pickle.dumps(OutboundBlockedError("h", 80, "10.0.0.1", "private")))
    assert (error.host, error.port, error.address, error.reason) == ("h", 80, "10.0.0.1", "private")


# -- against real servers ------------------------------------------------------------------------


async def test_loopback_is_refused_before_connecting_and_allowed_when_allowed(a: Site) -> None:
    async with outbound_client() as http:
        with pytest.raises(OutboundBlockedError) as refused:
            await http.get(a.url())
    error = refused.value
    assert (error.host, error.port, error.address, error.reason) == (
        "127.0.0.1", a.port, "127.0.0.1", "loopback"
    )  # fmt: skip
    assert f"127.0.0.1:{a.port} refused: 127.0.0.1 is loopback" in str(error)
    assert a.requests == []
    for allowed in (
        {"allow_private": True},
        {"allow_hosts": (f"127.0.0.1:{a.port}",)},
        {"allow_networks": ("127.0.0.0/8",)},
    ):
        async with outbound_client(**allowed) as http:
            reply = await http.get(a.url())
        assert reply.status_code == 200 and reply.text.startswith(f"site {a.port}"), allowed
    assert len(a.requests) == 3


def test_the_sync_client_checks_the_same(a: Site) -> None:
    with outbound_sync_client() as http, pytest.raises(OutboundBlockedError, match="loopback"):
        http.get(a.url(host="localhost"))
    with outbound_sync_client(allow_hosts=("localhost",)) as http:
        assert http.get(a.url(host="localhost")).status_code == 200
    assert a.requests == ["/"]


async def test_a_name_resolving_to_a_non_public_address_is_refused(a: Site) -> None:
    async with outbound_client() as http:
        with pytest.raises(OutboundBlockedError) as refused:
            await http.get(a.url(host="localhost"))
    assert refused.value.host == "localhost"
    assert ipaddress.ip_address(refused.value.address).is_loopback
    assert f"localhost:{a.port} ({refused.value.address}) refused" in str(refused.value)
    async with outbound_client(allow_hosts=(f"127.0.0.1:{a.port}",)) as http:
        with pytest.raises(OutboundBlockedError):  # the address is allowed by name only
            await http.get(a.url(host="localhost"))
    assert a.requests == []


async def test_private_and_disguised_addresses_are_refused(a: Site) -> None:
    async with outbound_client(timeout=2) as http:
        for url in ("http://10.0.0.1/", "http://192.168.0.1:8080/", "http://[fd00::1]/",
                    "http://100.64.0.1/", "http://0.0.0.0:9/", "http://[::]:9/"):  # fmt: skip
            with pytest.raises(OutboundBlockedError):
                await http.get(url)
        # other spellings of 127.0.0.1 that the resolver accepts: the answer is checked
        for host in ("2130706433", "127.1", "0x7f.0.0.1", "017700000001"):
            with pytest.raises(OutboundBlockedError, match="is loopback"):
                await http.get(f"http://{host}:{a.port}/")
    assert a.requests == []


async def test_every_redirect_is_checked(a: Site, b: Site) -> None:
    policy = OutboundPolicy(allow_hosts=(f"127.0.0.1:{a.port}",))  # "a" stands for a public site
    async with outbound_client(policy, follow_redirects=True) as http:
        assert (await http.get(a.url(f"/redirect?to={a.url()}"))).status_code == 200
        for target, reason in (
            (b.url(), "loopback"),  # another port of the same host: not allowed
            (a.url(host="localhost"), "loopback"),  # the same server under another name
            ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
            ("http://[::ffff:127.0.0.1]:80/", "loopback (as IPv6 ::ffff:7f00:1)"),
        ):
            with pytest.raises(OutboundBlockedError) as refused:
                await http.get(a.url(f"/redirect?to={target}"))
            assert refused.value.reason == reason
    assert b.requests == [] and a.requests.count("/") == 1


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """The real network backend, noting where it was asked to connect."""

    def __init__(self) -> None:
        self.real = httpcore.AnyIOBackend()
        self.hosts: list[str] = []

    async def connect_tcp(self, host: str, port: int, *args: Any) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        return await self.real.connect_tcp(host, port, *args)

    async def sleep(self, seconds: float) -> None:
        await self.real.sleep(seconds)


async def test_the_connection_goes_to_the_checked_address_not_to_the_name(a: Site) -> None:
    backend = AsyncOutboundBackend(OutboundPolicy(allow_private=True), RecordingBackend())
    stream = await backend.connect_tcp("localhost", a.port, timeout=5)
    await stream.aclose()
    recorded = backend.inner
    assert isinstance(recorded, RecordingBackend)
    # resolved once, here: the name is never handed on to be resolved again (DNS rebinding)
    assert recorded.hosts and all(ipaddress.ip_address(h).is_loopback for h in recorded.hosts)


async def test_tls_and_the_host_header_keep_the_name(
    sites: dict[str, Site], ca: trustme.CA
) -> None:
    site = sites["tls"]
    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    async with outbound_client(allow_hosts=("localhost",), verify=verify) as http:
        reply = await http.get(site.url(host="localhost"))  # the certificate names localhost
    assert reply.text == f"site {site.port} for localhost:{site.port}"
    async with outbound_client(allow_private=True, verify=verify) as http:
        with pytest.raises(httpx.ConnectError, match=r"(?i)certificate verify failed|mismatch"):
            await http.get(site.url(host="127.0.0.1"))  # not a name the certificate has


async def test_proxies_from_the_environment_are_not_used(
    a: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, closed)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with outbound_client(allow_private=True) as http:
        assert (await http.get(a.url())).status_code == 200  # direct, not via the dead proxy
    assert a.requests == ["/"]


#: (event, address) of every socket connect and DNS lookup while ``AUDIT`` is on
AUDIT: list[tuple[str, Any]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if AUDIT is not None and event in ("socket.connect", "socket.getaddrinfo"):
        AUDIT.append((event, args[1] if event == "socket.connect" else args[0]))


sys.addaudithook(_audit)  # hooks cannot be removed: this one only records while AUDIT is set


async def test_metadata_addresses_are_refused_without_any_network_traffic(a: Site) -> None:
    global AUDIT
    async with outbound_client(allow_private=True, timeout=2) as http:
        AUDIT = []
        try:
            for url in ("http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                        "http://[fd00:ec2::254]/latest/api/token",
                        "http://100.100.100.200/latest/meta-data/"):  # fmt: skip
                with pytest.raises(OutboundBlockedError, match="cloud metadata"):
                    await http.get(url)
            refused_traffic = list(AUDIT)
            await http.get(a.url())  # the control: a request that is made is seen
            seen = list(AUDIT)
        finally:
            AUDIT = None
    assert refused_traffic == []
    assert ("socket.connect", ("127.0.0.1", a.port)) in seen


async def test_a_step_that_is_refused_fails_at_once(
    redis7: EmbeddedRedis, namespace: str, a: Site
) -> None:
    wf = Workflow("fetch")

    @wf.step(start=True, retries=3)
    async def fetch(ctx: Any, url: str) -> Any:
        async with outbound_client(timeout=ctx.time_left or 10) as http:
            return (await http.get(url)).text

    app = App(workflows=[wf], redis_url=redis7.url, namespace=namespace, partitions=4)
    async with AsyncClient(app=app) as client, running(app):
        wf_id = await client.start("fetch", a.url())
        with pytest.raises(WorkflowFailedError, match=r"OutboundBlockedError.*loopback"):
            await client.result(wf_id, timeout=10)
        assert len((await client.status(wf_id)).history) == 1  # not retried
    assert a.requests == []


def test_a_transport_that_keeps_no_pool_is_refused_not_left_unchecked() -> None:
    """The check lives in httpx's transport pool; an httpx that keeps it elsewhere must make
    outbound_client fail, never build a client that connects without the check."""

    class Elsewhere(httpx.AsyncBaseTransport):
        pass

    with pytest.raises(RuntimeError, match="refusing to build an unchecked client"):
        _swap_pool(Elsewhere(), None)
