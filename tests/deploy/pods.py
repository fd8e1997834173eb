"""Running rendered pods as local processes: what a kubelet would do with a pod template,
on this machine, since no cluster can run here.

Faithful where it matters to Conveyor: the container's args exactly as rendered, after the
image's ENTRYPOINT (Conveyor's image: ``conveyor``, here this checkout's
``python -m conveyor``; the official Redis image runs its args as the command), and its
environment built as the kubelet builds it (:func:`tests.deploy.helm.environment`: the
ConfigMap, the Secrets' values, ``$(VAR)`` expansion), with nothing else of this
machine's but PATH and HOME. What a pod gets from the cluster is emulated:

- **its own network address**: each pod gets a loopback address of its own (127.0.x.y, all
  routed to ``lo`` on Linux), as it would its own network namespace; what a container
  binds on all interfaces (``0.0.0.0``) it binds on that address, so the manifest's ports
  are used as they are;
- **Service names**: DNS is replaced by rewriting a Service's name (short or qualified)
  in env values to the address of the pod its selector matches (or one given for a
  Service outside the chart, such as Bitnami's Redis);
- **volumes**: each ``volumeMount`` becomes a directory under a temporary root, and its
  mount path is rewritten to it in args and env values (``TMPDIR`` for ``/tmp``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import until

from .helm import NAMESPACE, Obj, Pod, by_kind, container_port, environment, expand, selects

#: The images' ENTRYPOINTs (what runs before the container's args, when it sets no command).
ENTRYPOINTS = {"conveyor": [sys.executable, "-m", "conveyor"], "redis": []}


class Running:
    """A pod of the chart, running its container as a process."""

    def __init__(self, pod: Pod, address: str, process: subprocess.Popen[bytes]) -> None:
        self.pod = pod
        self.address = address
        self.process = process

    @property
    def name(self) -> str:
        return self.pod.name

    def url(self, port: int | str, path: str) -> str:
        return f"http://{self.address}:{container_port(self.pod.container, port)}{path}"

    def http_action(self, spec: Obj) -> str:
        """The URL of a probe's or hook's ``httpGet``."""
        get = spec["httpGet"]
        return self.url(get["port"], get["path"])

    def output(self) -> str:
        if self.process.poll() is None or self.process.stdout is None:
            return "(still running)"
        return self.process.stdout.read().decode(errors="replace")


class Cluster:
    """The rendered objects of one release, and the pods started from them.

    Args:
        objects: the rendered manifests, parsed.
        secrets: the Secrets the chart refers to, ``(name, key) -> value``, as an operator
            would have created them.
        root: a temporary directory for the pods' volumes.
        network: the third octet of the pods' addresses (one per test, so that two tests
            running at once do not share addresses).
        external: Service names outside the chart -> the address that serves them.
    """

    def __init__(
        self,
        objects: list[Obj],
        secrets: dict[tuple[str, str], str],
        root: Path,
        network: int,
        external: dict[str, str] | None = None,
    ) -> None:
        self.objects = objects
        self.secrets = secrets
        self.root = root
        self.network = network
        self.external = dict(external or {})
        self.running: list[Running] = []

    def address(self) -> str:
        """The next pod address."""
        return f"127.0.{self.network}.{len(self.running) + 1}"

    def service_addresses(self) -> dict[str, str]:
        """Service name -> the address of the running pod its selector matches."""
        found = dict(self.external)
        for svc in by_kind(self.objects, "Service"):
            selector = svc["spec"].get("selector") or {}
            for pod in self.running:
                if selector and selects(selector, pod.pod.labels):
                    found[svc["metadata"]["name"]] = pod.address
        return found

    def _resolve(self, text: str) -> str:
        for name, address in self.service_addresses().items():
            qualified = rf"{re.escape(name)}(?:\.{NAMESPACE}(?:\.svc(?:\.cluster\.local)?)?)?"
            text = re.sub(rf"(?<![\w.-]){qualified}(?![\w-])", address, text)
        return text

    def start(self, pod: Pod, extra_args: list[str] | None = None) -> Running:
        """Start ``pod``'s container as a process at a new pod address."""
        container = pod.container
        address = self.address()
        mounts = {}
        for mount in container.get("volumeMounts", []):
            local = self.root / pod.name / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = str(local)

        def local(text: str) -> str:
            for path, directory in mounts.items():
                text = re.sub(rf"(?<![\w/.]){re.escape(path)}(?=/|$)", directory, text)
            return text

        env = environment(self.objects, container, self.secrets)
        env = {name: local(self._resolve(value)) for name, value in env.items()}
        image = container["image"].rsplit("/", 1)[-1].split(":")[0].split("@")[0]
        command = [expand(c, env) for c in container.get("command", [])]
        argv = command or list(ENTRYPOINTS[image])
        argv += [local(expand(a, env)) for a in container.get("args", [])]
        argv = [address if a == "0.0.0.0" else a for a in argv] + (extra_args or [])
        if "/tmp" in mounts:
            env["TMPDIR"] = mounts["/tmp"]
        env.update(PATH=os.environ["PATH"], HOME=str(self.root))
        process = subprocess.Popen(
            argv, env=env, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        running = Running(pod, address, process)
        self.running.append(running)
        return running

    def stop_all(self, timeout: float = 40) -> dict[str, str]:
        """SIGTERM every pod still running (as a deletion would); their output by name."""
        outputs = {}
        for pod in reversed(self.running):
            proc = pod.process
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                outputs[pod.name] = proc.communicate(timeout=timeout)[0].decode(errors="replace")
            except subprocess.TimeoutExpired:
                proc.kill()
                outputs[pod.name] = proc.communicate()[0].decode(errors="replace")
        return outputs


def wait_ok(url: str, pod: Running, timeout: float = 40) -> httpx.Response:
    """Poll ``url`` (a probe) until it answers 200, as the kubelet would; fail with the
    pod's output if its process exits or the probe never passes."""
    last: list[Any] = [None]

    def answered() -> httpx.Response | None:
        if pod.process.poll() is not None:
            raise AssertionError(f"{pod.name} exited ({pod.process.returncode}):\n{pod.output()}")
        try:
            last[0] = httpx.get(url, timeout=2)
        except httpx.HTTPError as exc:
            last[0] = exc
            return None
        return last[0] if last[0].status_code == 200 else None

    try:
        return until(answered, timeout, what=f"{pod.name}: {url} answering 200")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last: {last[0]!r})") from None
