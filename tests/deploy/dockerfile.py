"""Reading the Dockerfile and .dockerignore for the image tests (tests/deploy/test_image.py):
a small reader of instructions, continuation lines and ARG/ENV substitution, and the
.dockerignore patterns, enough to replay the build stage on this machine."""

from __future__ import annotations

import functools
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


# -- reading the Dockerfile ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, ...
    flags: dict[str, str]  # leading --name=value options of FROM, RUN, COPY and ADD
    args: str  # the rest, continuation lines joined
    line: int  # where it starts, for messages


@dataclass
class Stage:
    image: str  # FROM's image, global ARGs substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image} has no {keyword}"
        return found[-1]


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) with their defaults
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        [stage] = [s for s in self.stages if s.name == name]
        return stage


FLAG = re.compile(r"--([\w-]+)=(\S*)\s*")
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::-([^}]*))?\}|(\w+))")


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Instructions as Docker reads them: comment lines dropped (inside a continued
    instruction too), a line ending in a backslash joined to the next."""
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(raw.rstrip()[:-1])
            continue
        parts.append(raw)
        yield start, "".join(parts).strip()
        parts = []
    assert not parts, f"line {start}: the last instruction ends in a continuation"


def substitute(text: str, env: dict[str, str]) -> str:
    """Docker's $NAME, ${NAME} and ${NAME:-default}; any other form fails the test."""

    def value(match: re.Match[str]) -> str:
        found = env.get(match[1] or match[3], "")
        return found if found or match[2] is None else match[2]

    result = VARIABLE.sub(value, text)
    assert "${" not in result, f"a substitution this reader does not know: {text!r}"
    return result


def key_values(args: str, env: dict[str, str]) -> dict[str, str]:
    """ENV and LABEL: NAME=value pairs, quotes removed, each value substituted from the
    variables as they were before the instruction."""
    pairs = [word.partition("=") for word in shlex.split(args)]
    assert all(sep for _, sep, _ in pairs), f"NAME=value pairs expected: {args!r}"
    return {name: substitute(value, env) for name, _, value in pairs}


def arg(args: str) -> tuple[str, str | None]:
    """ARG NAME or ARG NAME=default."""
    name, sep, default = args.partition("=")
    return name.strip(), shlex.split(default)[0] if sep else None


@functools.cache
def dockerfile() -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical_lines(DOCKERFILE.read_text()):
        keyword, _, rest = text.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        flags: dict[str, str] = {}
        if keyword in {"FROM", "RUN", "COPY", "ADD"}:
            while match := FLAG.match(rest):
                flags[match[1]] = match[2]
                rest = rest[match.end() :]
        if keyword == "FROM":
            words = rest.split()
            named = len(words) == 3 and words[1].lower() == "as"
            stages.append(Stage(substitute(words[0], global_args), words[2] if named else None))
        elif not stages:
            assert keyword == "ARG", f"line {line}: only ARG may come before the first FROM"
            name, default = arg(rest)
            global_args[name] = default or ""
        else:
            stages[-1].instructions.append(Instruction(keyword, flags, rest, line))
    return Dockerfile(global_args, stages)


def final_and_build() -> tuple[Stage, Stage]:
    """The final stage and the one stage it copies from."""
    final = dockerfile().stages[-1]
    sources = {c.flags.get("from") for c in final.all("COPY")}
    assert len(sources) == 1 and None not in sources, f"COPY --from one stage only: {sources}"
    return final, dockerfile().stage(str(sources.pop()))


def apply_variables(instruction: Instruction, env: dict[str, str]) -> bool:
    """Apply an ARG or ENV to ``env``; False for any other instruction."""
    if instruction.keyword == "ARG":
        name, default = arg(instruction.args)
        env[name] = default if default is not None else dockerfile().args.get(name, "")
    elif instruction.keyword == "ENV":
        env.update(key_values(instruction.args, env))
    else:
        return False
    return True


def stage_env(stage: Stage, env: dict[str, str]) -> dict[str, str]:
    """``env`` as the stage's ARGs and ENVs leave it."""
    env = dict(env)
    for instruction in stage.instructions:
        apply_variables(instruction, env)
    return env


# -- .dockerignore ---------------------------------------------------------------------------


def translate(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression: Go's filepath.Match (`*` and `?`
    stop at a slash, `[...]` classes) plus `**` for any number of folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            out.append(pattern[i : end + 1])
            i = end + 1
        elif pattern[i] == "\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class DockerIgnore:
    """The rules of .dockerignore as Docker applies them: the last matching rule wins, `!`
    takes a path back in, and a rule that matches a folder matches everything under it."""

    rules: list[tuple[bool, str, re.Pattern[str]]]  # (takes back in, pattern, its regex)

    @classmethod
    def load(cls) -> DockerIgnore:
        rules = []
        for line in DOCKERIGNORE.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            rules.append((keep, pattern, re.compile(translate(pattern))))
        return cls(rules)

    def excludes(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        excluded = False
        for keep, _, regex in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                excluded = not keep
        return excluded

    def may_keep_under(self, folder: str) -> bool:
        """Whether a `!` rule could take back something inside an excluded ``folder``."""
        return any(
            keep and (pattern.startswith(folder + "/") or pattern.startswith("*"))
            for keep, pattern, _ in self.rules
        )


def context_files(ignore: DockerIgnore) -> set[str]:
    """The files `docker build .` sends from the repository, as posix paths."""
    found: set[str] = set()
    for folder, subfolders, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        subfolders[:] = [
            d
            for d in subfolders
            if not ignore.excludes(prefix + d) or ignore.may_keep_under(prefix + d)
        ]
        found.update(prefix + f for f in files if not ignore.excludes(prefix + f))
    return found


def copy_sources(stage: Stage) -> list[str]:
    """What the stage's COPYs (from the build context) name, without trailing slashes."""
    sources: list[str] = []
    for copy in stage.all("COPY"):
        assert "from" not in copy.flags, f"line {copy.line}: the build stage copies the context"
        *names, _ = shlex.split(copy.args)
        sources += [name.rstrip("/") for name in names]
    return sources


# -- the static checks -----------------------------------------------------------------------
