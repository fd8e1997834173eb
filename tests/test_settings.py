"""The settings module: one precedence rule (argument > environment > default), one way to
parse, unknown CONVEYOR_* variables warned about, bad values refused in one line (in real
`conveyor` processes too), `conveyor config`, and the docs' table of every variable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import App, ConfigurationError, Settings
from conveyor.api.settings import ApiSettings
from conveyor.settings import (
    INTERNAL,
    LogSettings,
    RuntimeSettings,
    mask_url,
    unknown_variables,
    variables,
)
from tests.apps.api_app import app as api_app

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.api_app:app"


def conveyor(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """``conveyor ARGS`` in a child process with only these CONVEYOR_*/REDIS_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "REDIS_"))}
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CONVEYOR_", "REDIS_")):
            monkeypatch.delenv(name)


def test_argument_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().partitions == 16
    monkeypatch.setenv("CONVEYOR_PARTITIONS", "4")
    monkeypatch.setenv("CONVEYOR_NAMESPACE", "from-env")
    assert Settings.from_env().partitions == 4
    assert Settings.from_env(partitions=8, namespace=None).partitions == 8
    assert Settings.from_env(namespace=None).namespace == "from-env"
    # the App's keyword is an argument; the CLI's option, put on top by `configured`, too
    app = App(list(api_app.workflows.values()), partitions=2)
    assert app.settings.partitions == 2 and app.settings.namespace == "from-env"
    configured = app.configured(partitions=6, namespace=None)
    assert configured.settings.partitions == 6 and app.settings.partitions == 2
    assert configured.workflows is app.workflows


def test_one_boolean_rule_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, value in (("off", False), ("0", False), ("No", False), ("on", True), ("1", True)):
        monkeypatch.setenv("CONVEYOR_EVENTS", raw)
        monkeypatch.setenv("CONVEYOR_TRACING", raw)
        monkeypatch.setenv("CONVEYOR_API_AUTH", raw)
        assert Settings().events is value
        assert RuntimeSettings().tracing is value
        assert ApiSettings.from_env(auth=False).auth is False  # the argument wins
    monkeypatch.setenv("CONVEYOR_EVENTS", "ture")
    with pytest.raises(ConfigurationError) as raised:
        Settings()
    assert str(raised.value) == (
        "CONVEYOR_EVENTS='ture': expected true or false (also 1/0, yes/no, on/off)"
    )


def test_bad_values_are_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"^partitions must be an integer from 1 to 16384"):
        Settings(partitions=0)
    with pytest.raises(ConfigurationError, match=r"^unknown setting 'partition'"):
        Settings(partition=4)
    monkeypatch.setenv("CONVEYOR_API_MAX_BODY", "1MB")
    with pytest.raises(ConfigurationError) as raised:
        ApiSettings.from_env(auth=False)
    assert str(raised.value) == "CONVEYOR_API_MAX_BODY='1MB': expected an integer number of bytes"
    monkeypatch.setenv("CONVEYOR_LOG_FORMAT", "yaml")
    with pytest.raises(ConfigurationError, match=r"^CONVEYOR_LOG_FORMAT='yaml': expected one of"):
        LogSettings()


def test_settings_stay_a_frozen_value() -> None:
    settings = Settings("redis://h:1/0", "ns", partitions=4)
    changed = settings.replace(partitions=8, namespace=None)
    assert (settings.partitions, changed.partitions, changed.namespace) == (4, 8, "ns")
    assert changed.backlog_per_partition == 125_000
    with pytest.raises(ConfigurationError, match="durability must be 'fast' or 'replicated'"):
        settings.replace(durability="sync")
    with pytest.raises(ValueError, match="frozen"):
        settings.partitions = 2  # type: ignore[misc]


def test_unknown_variables_name_the_closest_known_one() -> None:
    env = {"CONVEYOR_PARTITION": "4", "CONVEYOR_EVENTS": "1", "CONVEYOR_ZZZ": "x", "HOME": "/"}
    assert unknown_variables(env) == [
        ("CONVEYOR_PARTITION", "CONVEYOR_PARTITIONS"),
        ("CONVEYOR_ZZZ", None),
    ]


def test_secrets_are_masked_in_urls() -> None:
    assert mask_url("redis://user:pw@h:6379/0") == "redis://user:****@h:6379/0"
    assert mask_url("rediss://:pw@h") == "rediss://:****@h"
    assert mask_url("redis://h:6379") == "redis://h:6379"


@pytest.mark.parametrize(
    ("command", "variable", "raw", "expected"),
    [
        (["worker", APP], "CONVEYOR_EVENTS", "ture", "expected true or false"),
        (["api", APP, "--no-auth"], "CONVEYOR_API_MAX_BODY", "1MB", "expected an integer"),
        (["dev", APP, "--no-api"], "CONVEYOR_PARTITIONS", "many", "expected an integer"),
        (["status", "some-id"], "CONVEYOR_PARTITIONS", "0", "expected an integer from 1"),
    ],
)
def test_a_process_refuses_a_bad_value_in_one_line(
    command: list[str], variable: str, raw: str, expected: str
) -> None:
    done = conveyor(*command, **{variable: raw, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert line.startswith(f"error: {variable}={raw!r}: {expected}"), line
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unknown_variable_is_warned_about_at_start() -> None:
    # the worker warns once its logging is set up, then stops at the bad value
    worker = conveyor("worker", APP, CONVEYOR_PARTITION="4", CONVEYOR_EVENTS="ture")
    assert worker.returncode == 1
    warning = [line for line in worker.stderr.splitlines() if "CONVEYOR_PARTITION " in line]
    assert len(warning) == 1 and "did you mean CONVEYOR_PARTITIONS?" in warning[0]
    assert json.loads(warning[0])["level"] == "WARNING"  # a log line (JSON: not a terminal)
    config = conveyor("config", "--json", CONVEYOR_PARTITION="4")
    assert config.returncode == 0
    assert config.stderr.strip() == (
        "unknown variable CONVEYOR_PARTITION is ignored: did you mean CONVEYOR_PARTITIONS?"
    )


def test_conveyor_config_shows_values_sources_and_masks_secrets() -> None:
    done = conveyor(
        "config", APP, "--json", "--namespace", "from-cli",
        REDIS_URL="redis://app:s3cret@db:6379/0", REDIS_PASSWORD="s3cret",
        CONVEYOR_API_KEY="cvk_s3cret", CONVEYOR_PARTITIONS="4",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout
    rows = {row["name"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert rows["REDIS_URL"] == {
        "name": "REDIS_URL", "value": "redis://app:****@db:6379/0", "source": "environment"
    }  # fmt: skip
    assert rows["CONVEYOR_NAMESPACE"]["value"] == "from-cli"
    assert rows["CONVEYOR_NAMESPACE"]["source"] == "argument"
    assert (rows["CONVEYOR_PARTITIONS"]["value"], rows["CONVEYOR_PARTITIONS"]["source"]) == (
        4, "environment"
    )  # fmt: skip
    assert rows["CONVEYOR_RETENTION"]["source"] == "default"
    assert rows["REDIS_PASSWORD"]["value"] == rows["CONVEYOR_API_KEY"]["value"] == "****"
    declared = {name for _, _, name in variables()} - INTERNAL
    assert set(rows) == declared
    table = conveyor("config", "--partitions", "2")
    assert re.search(r"^CONVEYOR_PARTITIONS +2 +\(argument\)$", table.stdout, re.M), table.stdout


def test_the_docs_table_lists_every_variable_with_its_default() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| [^|]+ \| ([^|]+) \|", text, re.M))
    for group, name, variable in variables():
        if variable in INTERNAL:
            continue
        assert variable in rows, f"{variable} is missing from docs/configuration.md"
        default = group.model_fields[name].default
        if default not in (None, ""):
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert f"`{shown}`" in rows[variable], (variable, rows[variable])


def test_the_api_rate_limit_is_turned_off_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty variable counts as unset (the default applies), so no limit is `off`."""
    from conveyor.settings import ApiEnvironment

    monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT", "")
    assert ApiEnvironment().rate_limit == "1000/s"
    for off in ("off", "OFF", "none"):
        monkeypatch.setenv("CONVEYOR_API_RATE_LIMIT", off)
        assert ApiEnvironment().rate_limit == ""
