"""Every variable Conveyor reads, declared once with its type, default and meaning.

One precedence rule: an argument (a keyword in code, an option on the command line) beats the
environment, which beats the default. An empty variable counts as unset. Values are parsed by
pydantic, the same way everywhere (a boolean is one of true/false, 1/0, yes/no, on/off); a bad
one is refused with a :class:`ConfigurationError` of one line naming the variable and what it
accepts.

The variables come in groups, each read by the part that needs it, so a bad value in one group
never breaks a reader of another:

* :class:`Settings`: the engine's, which an ``App`` carries (every process of an app must agree);
* :class:`LogSettings`, :class:`RuntimeSettings`: how one process logs and runs;
* :class:`RedisSecrets`: passwords kept out of ``REDIS_URL``;
* :class:`ApiEnvironment`: the HTTP API server's (``conveyor api``);
* :class:`ClientSettings`: the CLI's way to an HTTP API (``--api``).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError, ConveyorError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
PREFIX = "CONVEYOR_"
BOOLEAN = "true or false (also 1/0, yes/no, on/off)"
MASK = "****"

log = logging.getLogger("conveyor.settings")


def var(
    default: Any, doc: str, accepts: str, *, env: str | None = None, secret: bool = False, **kw: Any
) -> Any:
    """A declared variable: its default, what it does and what it accepts (for errors and
    docs); ``env`` names it when it does not follow its group's prefix."""
    extra: dict[str, Any] = {"accepts": accepts, "secret": secret}
    return Field(default, description=doc, validation_alias=env, json_schema_extra=extra, **kw)


class _Group(BaseSettings):
    """Arguments, then the environment, then defaults; pydantic's errors become one line."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        frozen=True,
        extra="forbid",
        env_ignore_empty=True,
        populate_by_name=True,
    )

    def __init__(self, **values: Any) -> None:
        given = {k: v for k, v in values.items() if v is not None}  # None: not given
        try:
            super().__init__(**given)
        except ValidationError as exc:
            raise ConfigurationError(describe(type(self), exc, given)) from None

    @classmethod
    def read(cls, **arguments: Any) -> Self:
        """``arguments`` (None: not given) above the environment, above the defaults."""
        return cls(**arguments)


def env_name(cls: type[BaseSettings], name: str) -> str:
    alias = cls.model_fields[name].validation_alias
    return (
        alias
        if isinstance(alias, str)
        else f"{cls.model_config.get('env_prefix', '')}{name}".upper()
    )


def _extra(field: FieldInfo, key: str) -> Any:
    extra = field.json_schema_extra
    return extra.get(key) if isinstance(extra, dict) else None


def describe(cls: type[BaseSettings], exc: ValidationError, given: Mapping[str, Any]) -> str:
    """One line for every refused value: ``VAR='raw': expected ...`` for a variable,
    ``name must be ..., not raw`` for an argument."""
    by_alias = {env_name(cls, n): n for n in cls.model_fields}
    problems = []
    for error in exc.errors():
        loc = str(error["loc"][0]) if error["loc"] else ""
        name = by_alias.get(loc, loc)
        field = cls.model_fields.get(name)
        if field is None:
            known = ", ".join(cls.model_fields)
            problems.append(f"unknown setting {name!r} (known: {known})")
            continue
        accepts = _extra(field, "accepts")
        if name in given:
            problems.append(f"{name} must be {accepts}, not {given[name]!r}")
        else:
            raw = os.environ.get(env_name(cls, name), "")
            shown = MASK if _extra(field, "secret") else raw
            problems.append(f"{env_name(cls, name)}={shown!r}: expected {accepts}")
    return "; ".join(dict.fromkeys(problems))


class Settings(_Group):
    """The engine's settings: what an ``App`` carries, the same for every process of an app.
    Frozen; :meth:`replace` makes a changed copy. ``Settings(url, namespace, ...)`` takes the
    two first positionally."""

    redis_url: str = var(
        DEFAULT_REDIS_URL,
        "Where Redis is: redis://, rediss:// (TLS), redis+sentinel:// or redis+cluster://.",
        "a Redis URL",
        env="REDIS_URL",
        min_length=1,
    )
    namespace: str = var(
        "conveyor",
        "Prefix of every key, so several apps can share one Redis.",
        "a name without spaces or braces",
        pattern=r"^[^{}\s]+$",
    )
    partitions: int = var(
        16,
        "Stream partitions per queue; a workflow lives in one (one hash slot). Must be the "
        "same for every client and worker.",
        "an integer from 1 to 16384",
        ge=1,
        le=16384,
    )
    max_backlog: int = var(
        1_000_000,
        "Tasks allowed to wait in a queue's streams before a start is refused (back-pressure); "
        "enforced per partition as ceil(max_backlog / partitions).",
        "an integer of at least 1",
        ge=1,
    )
    retention: float = var(
        7 * 24 * 3600.0,
        "Seconds a finished workflow's state is kept.",
        "a number of seconds, at least 1",
        ge=1,
    )
    visibility_timeout: float = var(
        30.0,
        "Seconds an entry may stay unacknowledged without a heartbeat before another worker "
        "takes it over.",
        "a number of seconds, at least 1",
        ge=1,
    )
    max_deliveries: int = var(
        5,
        "Deliveries of one entry (crashes included) before it is dead-lettered.",
        "an integer of at least 1",
        ge=1,
    )
    group: str = var("agents", "The consumer group workers read with.", "a name", min_length=1)
    events: bool = var(
        True,
        "Record each workflow's event stream (what the API's SSE route serves); off saves three "
        "Redis commands per single-step workflow.",
        BOOLEAN,
    )
    durability: Literal["fast", "replicated"] = var(
        "fast",
        "fast: a write is done when the master has it; replicated: also when "
        "durability_replicas replicas confirm it (see docs/guarantees.md).",
        "'fast' or 'replicated'",
    )
    durability_replicas: int = var(
        1,
        "Replicas that must confirm a write in replicated mode.",
        "an integer of at least 1",
        ge=1,
    )
    durability_timeout: float = var(
        1.0,
        "Longest wait for those replicas, seconds (the write then fails; the API answers 503).",
        "a number of seconds above 0, at most 60",
        gt=0,
        le=60,
    )

    def __init__(
        self, redis_url: str | None = None, namespace: str | None = None, /, **values: Any
    ) -> None:
        if redis_url is not None:
            values["redis_url"] = redis_url
        if namespace is not None:
            values["namespace"] = namespace
        super().__init__(**values)

    @property
    def backlog_per_partition(self) -> int:
        return -(-self.max_backlog // self.partitions)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """``overrides`` that are not None, then environment variables, then defaults."""
        return cls(**overrides)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (those not None), checked like any argument."""
        given = {k: v for k, v in changes.items() if v is not None}
        return type(self)(**{**self.model_dump(), **given})


LogLevelName = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormatName = Literal["auto", "json", "console"]


class LogSettings(_Group):
    """How a process logs (``--log-level`` / ``--log-format`` are the arguments)."""

    log_level: LogLevelName = var(
        "INFO", "Logging level.", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )
    log_format: LogFormatName = var(
        "auto",
        "Log lines: json, console, or auto (console on a terminal, else json).",
        "one of auto, json, console",
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()


class RuntimeSettings(_Group):
    """How a worker or API process runs."""

    tracing: bool = var(
        True,
        "Trace with OpenTelemetry when a TracerProvider is installed (OTEL_* configure it); "
        "off turns Conveyor's spans off.",
        BOOLEAN,
    )
    event_loop: Literal["auto", "asyncio"] = var(
        "auto",
        "auto: uvloop when installed (conveyor[fast]), else asyncio's own loop.",
        "'auto' or 'asyncio'",
    )
    metrics_port: int | None = var(
        None,
        "`conveyor worker`: serve /metrics and the probes on this port (--metrics-port).",
        "a port number from 0 to 65535",
        ge=0,
        le=65535,
    )


class RedisSecrets(_Group):
    """Passwords a Kubernetes Secret can provide as they are (no URL-encoding)."""

    redis_password: SecretStr | None = var(
        None,
        "Password for a REDIS_URL that has none.",
        "a password",
        env="REDIS_PASSWORD",
        secret=True,
    )
    redis_sentinel_password: SecretStr | None = var(
        None,
        "Password of the Sentinels themselves (else the URL's sentinel_password).",
        "a password",
        env="REDIS_SENTINEL_PASSWORD",
        secret=True,
    )


class ApiEnvironment(_Group):
    """The HTTP API server's variables (``ApiSettings.from_env`` reads them)."""

    model_config = SettingsConfigDict(env_prefix=f"{PREFIX}API_")

    auth: bool = var(True, "Require API keys (off only on purpose: --no-auth).", BOOLEAN)
    keys: str = var(
        "",
        "Accepted keys, name:sha256:scopes, separated by ';' or newlines (`conveyor api-key`).",
        "name:sha256:scopes entries",
        secret=True,
    )
    keys_file: Path | None = var(None, "A file of more such entries.", "a file path")
    rate_limit: str = var(
        "1000/s",
        "Requests per key, shared by every API process through Redis (`off`: none).",
        "a rate such as 100/s, 90000/min, 5/hour or 10/2s, or off",
    )
    max_body: int = var(
        1 << 20, "Largest request body (413 beyond).", "an integer number of bytes", ge=1
    )
    max_batch: int = var(
        10_000, "Most inputs in one batch request.", "an integer of at least 1", ge=1
    )
    request_timeout: float = var(
        10.0,
        "Seconds a request may wait for its answer to start (503 beyond; 0: no bound).",
        "a number of seconds, 0 or more",
        ge=0,
    )
    app: str | None = var(
        None, "Set by `conveyor api` for its processes: the App to serve.", "MODULE:ATTRIBUTE"
    )
    arguments: dict[str, Any] = var(
        {}, "Set by `conveyor api` for its processes: its command-line settings.", "a JSON object"
    )

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        from .limits import parse_rate

        # an empty variable counts as unset (the default), so "no limit" is spelled out
        if value.strip().lower() in ("off", "none"):
            return ""
        if value:
            try:
                parse_rate(value)
            except ConveyorError as exc:
                raise ValueError(str(exc)) from None
        return value


class ClientSettings(_Group):
    """How the CLI reaches an HTTP API instead of Redis (``--api`` / ``--api-key``)."""

    api_url: str | None = var(
        None,
        "Go through the HTTP API at this URL instead of Redis.",
        "a URL",
        env="CONVEYOR_API_URL",
    )
    api_key: SecretStr | None = var(
        None, "API key (token) for it.", "a token", env="CONVEYOR_API_KEY", secret=True
    )


GROUPS: tuple[type[_Group], ...] = (
    Settings,
    LogSettings,
    RuntimeSettings,
    RedisSecrets,
    ApiEnvironment,
    ClientSettings,
)
#: Variables set by Conveyor itself for the processes it starts: not for users, not in docs.
INTERNAL = frozenset({"CONVEYOR_API_APP", "CONVEYOR_API_ARGUMENTS"})


def variables() -> Iterator[tuple[type[_Group], str, str]]:
    """(group, field name, variable name) of every declared variable."""
    for group in GROUPS:
        for name in group.model_fields:
            yield group, name, env_name(group, name)


def known_variables() -> set[str]:
    return {variable for _, _, variable in variables()}


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``CONVEYOR_*`` variables nothing reads, each with the closest known name (or None)."""
    environ = os.environ if environ is None else environ
    known = sorted(known_variables())
    return [
        (name, next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.75)), None))
        for name in sorted(environ)
        if name.startswith(PREFIX) and name not in known
    ]


def warn_unknown_variables(logger: logging.Logger = log) -> None:
    """One warning line per unknown ``CONVEYOR_*`` variable (a typo silently ignored would
    leave, say, partitions differing between processes)."""
    for name, close in unknown_variables():
        hint = f": did you mean {close}?" if close else ""
        logger.warning("unknown variable %s is ignored%s", name, hint)


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ****."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}{MASK}@{host}"))


def effective(group: _Group, arguments: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each variable of ``group`` with its value (secrets masked) and where it came from:
    ``argument``, ``environment`` or ``default``."""
    cls = type(group)
    rows = []
    for name, field in cls.model_fields.items():
        variable = env_name(cls, name)
        if variable in INTERNAL:
            continue
        value = getattr(group, name)
        if isinstance(value, SecretStr) or (_extra(field, "secret") and value):
            value = MASK
        elif isinstance(value, str) and "://" in value:
            value = mask_url(value)
        elif isinstance(value, Path):
            value = str(value)
        if (arguments or {}).get(name) is not None:
            source = "argument"
        elif os.environ.get(variable):
            source = "environment"
        else:
            source = "default"
        rows.append({"name": variable, "value": value, "source": source})
    return rows
