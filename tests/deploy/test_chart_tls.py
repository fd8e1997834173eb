"""TLS to Redis from the Helm chart (deploy/helm/conveyor), and the files it mounts: with
``redis.tls.enabled`` the Secret's CA and client certificate are mounted read-only into the
dispatcher, workers and exporter, and REDIS_URL names them (``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``) for every TLS topology; a URL or values that cannot work
are refused at rendering. ``extraVolumes`` and ``extraVolumeMounts`` reach every Conveyor
container, within the restricted Pod Security Standard.

Last, the production profile with TLS runs as processes (tests/deploy/pods.py) against a
redis-server that listens on TLS only and asks for client certificates: the Secret's files
are laid out as the kubelet would, the path in REDIS_URL is the mount's, and a workflow goes
through the dispatcher and a worker."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import helm_python
import httpx
import kubernetes_validate
import pytest
import trustme
from redis.asyncio.connection import parse_url

from conveyor.storage.connection import RedisTarget
from tests.helpers import until

from . import ROOT
from .chart_cases import CONVEYOR_COMPONENTS, CRDS, RESTRICTED_VOLUMES, conveyor_pods
from .helm import NAMESPACE, RELEASE, Obj, chart, environment, find, lint, manifests, pod, render
from .pods import Cluster
from .test_pods import SECRETS, TOKEN, start_checked

helm_python.disable_logging()

SECRET = "conveyor-redis-tls"
URL = "rediss://conveyor@redis.example.com:6380/0"
QUERY = (
    "ssl_ca_certs=/etc/redis-tls/ca.crt"
    "&ssl_certfile=/etc/redis-tls/tls.crt&ssl_keyfile=/etc/redis-tls/tls.key"
)
#: redis.tls with its defaults (ca.crt, tls.crt, tls.key at /etc/redis-tls)
TLS: Obj = {"redis": {"url": URL, "tls": {"enabled": True, "existingSecret": SECRET}}}
#: the Conveyor pods' user and group (the image's), and the Secret's files' mode
UID = 10001
MODE = 0o440


def tls_values(url: str = URL, **tls: Any) -> Obj:
    return {"redis": {"url": url, "tls": {"enabled": True, "existingSecret": SECRET, **tls}}}


def redis_url(objects: list[Obj]) -> str:
    return str(find(objects, "ConfigMap")["data"]["REDIS_URL"])


# -- the Secret, mounted -----------------------------------------------------------------------


@pytest.mark.parametrize("profile", [None, "production"])
def test_the_secret_is_mounted_read_only_in_every_conveyor_container(profile: str | None) -> None:
    objects = render(profile, TLS)
    pods = conveyor_pods(objects)
    assert {p.component for p in pods} == CONVEYOR_COMPONENTS
    for p in pods:
        (volume,) = [v for v in p.spec["volumes"] if v["name"] == "redis-tls"]
        assert volume == {
            "name": "redis-tls",
            "secret": {
                "secretName": SECRET,
                "defaultMode": MODE,
                "items": [
                    {"key": "ca.crt", "path": "ca.crt"},
                    {"key": "tls.crt", "path": "tls.crt"},
                    {"key": "tls.key", "path": "tls.key"},
                ],
            },
        }, p.name
        (mount,) = [m for m in p.container["volumeMounts"] if m["name"] == "redis-tls"]
        assert mount == {"name": "redis-tls", "mountPath": "/etc/redis-tls", "readOnly": True}
        # 0440 is root's and the group's: the pods' fsGroup makes that group the user's own
        security = p.spec["securityContext"]
        assert security["runAsUser"] == security["runAsGroup"] == security["fsGroup"] == UID
        assert MODE & 0o040 and not MODE & 0o222 and not MODE & 0o007
        # the /tmp the chart always mounts is still there
        assert {"name": "tmp", "mountPath": "/tmp"} in p.container["volumeMounts"]


def test_only_the_named_keys_are_mounted_each_once() -> None:
    """A custom directory and keys; a PEM holding certificate and key is mounted once."""
    objects = render(
        None,
        tls_values(mountPath="/var/run/tls", caKey="root.pem", certKey="client.pem", keyKey=""),
    )
    for p in conveyor_pods(objects):
        (volume,) = [v for v in p.spec["volumes"] if v["name"] == "redis-tls"]
        assert volume["secret"]["items"] == [
            {"key": "root.pem", "path": "root.pem"},
            {"key": "client.pem", "path": "client.pem"},
        ]
        assert {"name": "redis-tls", "mountPath": "/var/run/tls", "readOnly": True} in p.container[
            "volumeMounts"
        ]
    assert redis_url(objects) == (
        f"{URL}?ssl_ca_certs=/var/run/tls/root.pem&ssl_certfile=/var/run/tls/client.pem"
    )
    same = render(None, tls_values(caKey="", certKey="bundle.pem", keyKey="bundle.pem"))
    (volume,) = [v for v in pod(same, "worker").spec["volumes"] if v["name"] == "redis-tls"]
    assert volume["secret"]["items"] == [{"key": "bundle.pem", "path": "bundle.pem"}]
    assert redis_url(same) == (
        f"{URL}?ssl_certfile=/etc/redis-tls/bundle.pem&ssl_keyfile=/etc/redis-tls/bundle.pem"
    )


def test_tls_off_mounts_nothing_and_keeps_the_url() -> None:
    for profile in (None, "dev", "production"):
        objects = render(profile)
        for p in conveyor_pods(objects):
            assert [v["name"] for v in p.spec["volumes"]] == ["tmp"]
            assert [m["name"] for m in p.container["volumeMounts"]] == ["tmp"]
        assert "ssl_" not in redis_url(objects)
    # a rediss:// URL without redis.tls: the image's CAs, nothing added
    assert redis_url(render(None, {"redis": {"url": URL}})) == URL


def test_notes_name_the_tls_secret() -> None:
    notes = manifests(None, TLS)["conveyor/templates/NOTES.txt"]
    assert f"{SECRET} (keys ca.crt, tls.crt, tls.key): TLS to Redis" in notes
    assert SECRET not in manifests(None)["conveyor/templates/NOTES.txt"]


# -- REDIS_URL ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (URL, f"{URL}?{QUERY}"),
        ("rediss://redis:6379", f"rediss://redis:6379?{QUERY}"),
        ("rediss://redis:6379/0?ssl_check_hostname=false",
         f"rediss://redis:6379/0?ssl_check_hostname=false&{QUERY}"),
        ("rediss+sentinel://conveyor@s1:26379,s2:26379/mymaster/0?sentinel_username=sentinel",
         f"rediss+sentinel://conveyor@s1:26379,s2:26379/mymaster/0?sentinel_username=sentinel&{QUERY}"),
        ("rediss+cluster://redis-cluster-0:6379,redis-cluster-1:6379",
         f"rediss+cluster://redis-cluster-0:6379,redis-cluster-1:6379?{QUERY}"),
    ],
)  # fmt: skip
def test_the_url_names_the_mounted_files(url: str, expected: str) -> None:
    objects = render("production", tls_values(url))
    rendered = redis_url(objects)
    assert rendered == expected
    query = parse_qs(urlsplit(rendered).query)
    assert query["ssl_ca_certs"] == ["/etc/redis-tls/ca.crt"]
    assert query["ssl_certfile"] == ["/etc/redis-tls/tls.crt"]
    assert query["ssl_keyfile"] == ["/etc/redis-tls/tls.key"]
    # Conveyor reads it as meant: the same topology, and the files as redis-py's TLS options
    target = RedisTarget.parse(rendered)
    assert target.topology == RedisTarget.parse(url).topology
    options = parse_url(target.url)
    assert options["ssl_ca_certs"] == "/etc/redis-tls/ca.crt"
    assert options["ssl_certfile"] == "/etc/redis-tls/tls.crt"
    assert options["ssl_keyfile"] == "/etc/redis-tls/tls.key"
    # each container's REDIS_URL, as the kubelet builds it, is that one: files it mounts
    for p in conveyor_pods(objects):
        env = environment(objects, p.container, SECRETS)
        assert env["REDIS_URL"] == rendered
        mounts = {m["mountPath"] for m in p.container["volumeMounts"]}
        for param in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            assert query[param][0].rsplit("/", 1)[0] in mounts


def test_the_guides_show_what_renders() -> None:
    """docs/security.md's values give the URL it starts the section with, docs/deploy.md's
    command the URL it shows."""
    guide = (ROOT / "docs" / "security.md").read_text()
    values = tls_values(
        "rediss://conveyor@redis:6379/0",
        existingSecret="conveyor-redis-client-tls",
        mountPath="/etc/conveyor/redis-tls",
    )
    assert f"REDIS_URL='{redis_url(render(None, values))}'" in guide
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    production = redis_url(
        render("production", tls_values("rediss://conveyor-redis-master:6379/0"))
    )
    assert f"\n{production}\n" in deploy


# -- Kubernetes' checks ------------------------------------------------------------------------

EXTRA: Obj = {
    "extraVolumes": [
        {"name": "shop-certs", "secret": {"secretName": "shop-certs", "defaultMode": 0o440}},
        {"name": "prompts", "configMap": {"name": "shop-prompts"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
    ],
    "extraVolumeMounts": [
        {"name": "shop-certs", "mountPath": "/etc/shop-certs", "readOnly": True},
        {"name": "prompts", "mountPath": "/etc/shop/prompts.yaml", "subPath": "prompts.yaml",
         "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
    ],
}  # fmt: skip
CASES = {
    "tls": (None, TLS),
    "production-tls": ("production", TLS),
    "production-tls-extra": ("production", {**TLS, **EXTRA}),
    "extra": (None, EXTRA),
}
each_tls_case = pytest.mark.parametrize(("profile", "overrides"), CASES.values(), ids=list(CASES))


@each_tls_case
def test_objects_validate_against_kubernetes_1_30(profile: str | None, overrides: Obj) -> None:
    for obj in render(profile, overrides):
        if (obj["apiVersion"], obj["kind"]) not in CRDS:
            kubernetes_validate.validate(obj, "1.30.0", strict=True)


@each_tls_case
def test_lint_strict_finds_nothing(profile: str | None, overrides: Obj) -> None:
    report = lint(profile, overrides)
    assert report["messages"] == []
    assert report["errors"] == []


@each_tls_case
def test_pods_stay_restricted(profile: str | None, overrides: Obj) -> None:
    """The restricted Pod Security Standard's volume kinds, a read-only root filesystem, and
    every mount of a volume of the pod at a path of its own."""
    for p in conveyor_pods(render(profile, overrides)):
        names = [v["name"] for v in p.spec["volumes"]]
        assert len(names) == len(set(names)), p.name
        for volume in p.spec["volumes"]:
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
        c = p.container
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        paths = [m["mountPath"] for m in c["volumeMounts"]]
        assert len(paths) == len(set(paths)), p.name
        assert {m["name"] for m in c["volumeMounts"]} <= set(names), p.name


def test_extra_volumes_reach_every_conveyor_container() -> None:
    objects = render("production", {**TLS, **EXTRA})
    for p in conveyor_pods(objects):
        assert p.spec["volumes"][2:] == EXTRA["extraVolumes"], p.name
        assert p.container["volumeMounts"][2:] == EXTRA["extraVolumeMounts"], p.name
        assert [v["name"] for v in p.spec["volumes"][:2]] == ["tmp", "redis-tls"]
    (volume,) = [v for v in pod(objects, "worker").spec["volumes"] if v["name"] == "shop-certs"]
    assert volume["secret"]["defaultMode"] == MODE


# -- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (tls_values("redis://redis:6379/0"),
         'redis.tls.enabled needs a TLS URL (rediss://, rediss+sentinel:// or rediss+cluster://),'
         ' but redis.url is "redis://redis:6379/0"'),
        (tls_values("redis+sentinel://s1:26379/mymaster"),
         'redis.tls.enabled needs a TLS URL (rediss://, rediss+sentinel:// or rediss+cluster://),'
         ' but redis.url is "redis+sentinel://s1:26379/mymaster"'),
        (tls_values("redis+cluster://c0:6379"), "redis.tls.enabled needs a TLS URL"),
        ({**tls_values(""), "redis": {**tls_values("")["redis"], "dev": {"enabled": True}}},
         "redis.tls.enabled: the dev Redis (redis.dev.enabled) does not serve TLS"),
        (tls_values(caKey="", certKey="", keyKey=""),
         "redis.tls.enabled with neither redis.tls.caKey nor redis.tls.certKey mounts nothing"),
        (tls_values(certKey=""),
         'redis.tls.keyKey ("tls.key") is set without redis.tls.certKey'),
        (tls_values(f"{URL}?ssl_ca_certs=/elsewhere/ca.pem"),
         "redis.url already sets ssl_ca_certs, which redis.tls adds (/etc/redis-tls/ca.crt)"),
        (tls_values(f"{URL}?socket_connect_timeout=2&ssl_keyfile=/k"),
         "redis.url already sets ssl_keyfile"),
        ({"extraVolumeMounts": [{"name": "nowhere", "mountPath": "/etc/x"}]},
         'extraVolumeMounts: "/etc/x" mounts the volume "nowhere", which is not one of extraVolumes'),
        ({"extraVolumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]},
         'extraVolumes: the name "a" is used twice'),
        ({"extraVolumes": [{"name": "a", "emptyDir": {}}],
          "extraVolumeMounts": [{"name": "a", "mountPath": "/tmp"}]},
         'extraVolumeMounts: the mount path "/tmp" is already used'),
        ({**TLS, "extraVolumes": [{"name": "a", "emptyDir": {}}],
          "extraVolumeMounts": [{"name": "a", "mountPath": "/etc/redis-tls"}]},
         'extraVolumeMounts: the mount path "/etc/redis-tls" is already used'),
    ],
)  # fmt: skip
def test_values_that_cannot_work_are_refused(wrong: Obj, message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        chart().render(wrong, name=RELEASE, namespace=NAMESPACE)


WRONG_VALUES = [
    ({"redis": {"tls": {"enabled": "yes"}}}, "/redis/tls/enabled"),
    ({"redis": {"tls": {"enabled": True}}}, "/redis/tls/existingSecret"),
    ({"redis": {"tls": {"existingSecret": "Redis_TLS"}}}, "/redis/tls/existingSecret"),
    ({"redis": {"tls": {"mountPath": "etc/redis-tls"}}}, "/redis/tls/mountPath"),
    ({"redis": {"tls": {"mountPath": "/etc/../root"}}}, "/redis/tls/mountPath"),
    ({"redis": {"tls": {"mountPath": "/etc/redis tls"}}}, "/redis/tls/mountPath"),
    ({"redis": {"tls": {"caKey": 5}}}, "/redis/tls/caKey"),
    ({"redis": {"tls": {"certKey": "tls crt"}}}, "/redis/tls/certKey"),
    ({"redis": {"tls": {"keyKey": "..data"}}}, "/redis/tls/keyKey"),
    ({"redis": {"tls": {"ca": "ca.crt"}}}, "'ca'"),
    ({"redis": {"tls": True}}, "/redis/tls"),
    ({"extraVolumes": {"name": "a"}}, "/extraVolumes"),
    ({"extraVolumes": [{"name": "host", "hostPath": {"path": "/"}}]}, "/extraVolumes/0"),
    ({"extraVolumes": [{"name": "a"}]}, "/extraVolumes/0"),
    ({"extraVolumes": [{"name": "a", "emptyDir": {}, "secret": {}}]}, "/extraVolumes/0"),
    ({"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}, "/extraVolumes/0/name"),
    ({"extraVolumes": [{"name": "Certs", "emptyDir": {}}]}, "/extraVolumes/0/name"),
    ({"extraVolumes": [{"name": "a", "secret": "shop"}]}, "/extraVolumes/0/secret"),
    ({"extraVolumeMounts": [{"name": "a"}]}, "/extraVolumeMounts/0"),
    ({"extraVolumeMounts": [{"name": "a", "mountPath": "relative"}]},
     "/extraVolumeMounts/0/mountPath"),
    ({"extraVolumeMounts": [{"name": "a", "mountPath": "/a", "readOnly": "true"}]},
     "/extraVolumeMounts/0/readOnly"),
    ({"extraVolumeMounts": [{"name": "a", "mountPath": "/a", "mountPropagation": "Bidirectional"}]},
     "'mountPropagation'"),
    ({"extraVolumeMounts": [{"name": "a", "mountPath": "/a", "subPath": "x", "subPathExpr": "y"}]},
     "/extraVolumeMounts/0"),
]  # fmt: skip


@pytest.mark.parametrize(("wrong", "where"), WRONG_VALUES, ids=[str(w) for w, _ in WRONG_VALUES])
def test_schema_refuses_wrong_values(wrong: Obj, where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart().validate_schema(wrong)
    assert where in str(refused.value)


def test_schema_accepts_the_documented_forms() -> None:
    chart().validate_schema(tls_values())
    chart().validate_schema(tls_values(caKey="", certKey="client.pem", keyKey=""))
    chart().validate_schema({"redis": {"tls": {"enabled": False, "existingSecret": ""}}})
    chart().validate_schema(EXTRA)


# -- run as processes --------------------------------------------------------------------------

#: the pods' network (tests/deploy/test_pods.py uses 41 and 42)
NETWORK = 43
REDIS_ADDRESS = f"127.0.{NETWORK}.200"


def tls_redis_server() -> str:
    """A redis-server built with TLS, or a skip (the Debian/Ubuntu package has it)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    done = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0", "--no-such-option-here", "x"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    if "tls-port" in done.stdout + done.stderr:  # an unknown option is named
        pytest.skip("redis-server is built without TLS")
    return binary


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, bytes]:
    """The Secret's files, as cert-manager would put them in it: the CA, and a client
    certificate and key it signed. The server's certificate names the stand-in's address."""
    ca = trustme.CA()
    client = ca.issue_cert("conveyor")
    server = ca.issue_cert(REDIS_ADDRESS, "conveyor-redis-master")
    server_dir = tmp_path / "redis-server"
    server_dir.mkdir()
    ca.cert_pem.write_to_path(str(server_dir / "ca.crt"))
    server.cert_chain_pems[0].write_to_path(str(server_dir / "tls.crt"))
    server.private_key_pem.write_to_path(str(server_dir / "tls.key"))
    return {
        "ca.crt": ca.cert_pem.bytes(),
        "tls.crt": client.cert_chain_pems[0].bytes(),
        "tls.key": client.private_key_pem.bytes(),
    }


@pytest.fixture
def tls_redis(tmp_path: Path, tls_files: dict[str, bytes]) -> Iterator[str]:
    """Bitnami's Redis master as a stand-in that listens on TLS only, asks for a client
    certificate and has the password of the Secret, at a pod address of its own."""
    folder = tmp_path / "redis-server"
    process = subprocess.Popen(
        [tls_redis_server(), "--port", "0", "--tls-port", "6379", "--bind", REDIS_ADDRESS,
         "--tls-cert-file", str(folder / "tls.crt"), "--tls-key-file", str(folder / "tls.key"),
         "--tls-ca-cert-file", str(folder / "ca.crt"), "--tls-auth-clients", "yes",
         "--requirepass", SECRETS["conveyor-redis", "redis-password"],
         "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def up() -> bool:
            assert process.poll() is None, "no TLS Redis"
            return _listening()

        until(up, what="the TLS Redis listening")
        yield REDIS_ADDRESS
    finally:
        process.terminate()
        process.wait(10)


def _listening() -> bool:
    """Whether the stand-in accepts connections (the pods' readiness probes then check that
    they reach it: over TLS, with the client certificate and the password)."""
    try:
        socket.create_connection((REDIS_ADDRESS, 6379), timeout=0.5).close()
    except OSError:
        return False
    return True


def lay_out_secret(cluster: Cluster, files: dict[str, bytes]) -> None:
    """What the kubelet does with each Conveyor pod's Secret volume: the items it names,
    written under the pod's directory for the volume (pods.py maps the mount path there),
    with the volume's mode."""
    for p in conveyor_pods(cluster.objects):
        (volume,) = [v for v in p.spec["volumes"] if v["name"] == "redis-tls"]
        folder = cluster.root / p.name / "redis-tls"
        folder.mkdir(parents=True)
        for item in volume["secret"]["items"]:
            path = folder / item["path"]
            path.write_bytes(files[item["key"]])
            path.chmod(volume["secret"]["defaultMode"])


@pytest.mark.timeout(180)
def test_production_with_tls_runs_a_workflow(
    tmp_path: Path, tls_redis: str, tls_files: dict[str, bytes]
) -> None:
    values = tls_values("rediss://conveyor-redis-master:6379/0")
    objects = render("production", values)
    cluster = Cluster(
        objects, SECRETS, tmp_path / "pods", NETWORK, {"conveyor-redis-master": tls_redis}
    )
    lay_out_secret(cluster, tls_files)
    try:
        started = {c: start_checked(cluster, pod(objects, c)) for c in ("exporter", "worker")}
        started["dispatcher"] = start_checked(cluster, pod(objects, "dispatcher"))
        dispatcher = started["dispatcher"]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        submitted = httpx.post(
            dispatcher.url("http", "/v1/workflows/demo"), json="tls", headers=headers, timeout=10
        )
        assert submitted.status_code == 202, submitted.text
        result = httpx.get(
            dispatcher.url("http", f"/v1/workflows/{submitted.json()['id']}/result"),
            params={"wait": 30}, headers=headers, timeout=40,
        )  # fmt: skip
        assert result.status_code == 200, result.text
        assert result.json()["result"] == {"message": "HELLO, TLS!!!"}
        scrape = httpx.get(started["exporter"].url("metrics", "/metrics"), timeout=10).text
        assert "conveyor_redis_up 1.0" in scrape
    finally:
        outputs = cluster.stop_all()
    for running in cluster.running:  # clean stops, as in test_pods.py
        code, output = running.process.returncode, outputs[running.name]
        expected = (0,) if running.pod.component == "worker" else (0, -signal.SIGTERM)
        assert code in expected, (running.name, output)
