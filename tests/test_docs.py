"""The user guide builds: ``mkdocs build --strict`` (mkdocs.yml) passes, and its generated
reference pages hold what the code defines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    config = ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", *config],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


@pytest.mark.timeout(180)
def test_site_builds_strict(site: Path) -> None:
    for page in ("index.html", "benchmarks/index.html", "changelog/index.html"):
        assert (site / page).is_file(), page
    # the changelog page includes CHANGELOG.md
    assert "Worker throughput" in (site / "changelog/index.html").read_text(encoding="utf-8")


@pytest.mark.timeout(180)
def test_cli_reference_has_every_command(site: Path) -> None:
    from conveyor.cli.main import cli

    page = (site / "reference/cli/index.html").read_text(encoding="utf-8")
    group = typer.main.get_command(cli)
    commands = getattr(group, "commands", {})
    assert commands
    for name in commands:
        assert f"conveyor {name}" in page, name


@pytest.mark.timeout(180)
def test_metrics_reference_has_every_registered_metric(site: Path) -> None:
    from prometheus_client import REGISTRY

    import conveyor.observability.metrics  # noqa: F401  (registers the metrics)

    page = (site / "reference/metrics/index.html").read_text(encoding="utf-8")
    names = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in REGISTRY.collect()
        if family.name.startswith("conveyor_")
    }
    assert "conveyor_steps_started_total" in names
    for name in names:
        assert f"<code>{name}</code>" in page, name
