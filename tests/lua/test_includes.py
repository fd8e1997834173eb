"""Each script ships exactly the lib.lua helpers it calls: every script and every helper
declares (``--- @include``) the helpers it uses and no other, the registry prepends those
(transitively), and nothing in an assembled script is defined without being used."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from conveyor.storage.scripts import (
    SCRIPTS,
    ScriptRegistry,
    assemble,
    helper_sections,
    includes,
)

FOLDER = resources.files("conveyor.storage").joinpath("scripts")
SECTIONS = helper_sections(FOLDER.joinpath("lib.lua").read_bytes())
# a string literal (it may hold '--') or a comment
TOKENS = re.compile(r"'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"|--\[\[.*?\]\]|--[^\n]*", re.S)
DEFINED = re.compile(r"^local (?:function )?([A-Za-z_]\w*)\b", re.M)


def code(source: bytes) -> str:
    """Lua source without its comments, and every string literal emptied (a name in one
    is no reference)."""
    return TOKENS.sub(lambda m: "" if m.group().startswith("--") else "''", source.decode())


def used_helpers(source: bytes) -> set[str]:
    """The lib.lua helpers ``source`` refers to (outside comments), its own definition aside."""
    text = code(source)
    own = set(DEFINED.findall(text))
    return {n for n in SECTIONS if n not in own and re.search(rf"\b{n}\b", text)}


def script_source(name: str) -> bytes:
    return FOLDER.joinpath(f"{name}.lua").read_bytes()


def test_every_lua_file_is_registered_or_included() -> None:
    files = {p.name.removesuffix(".lua") for p in FOLDER.iterdir() if p.name.endswith(".lua")}
    assert files == set(SCRIPTS) | {"lib"}
    included = {n for name in SCRIPTS for n in includes(ScriptRegistry()[name].source)}
    assert included == set(SECTIONS), f"helpers no script includes: {set(SECTIONS) - included}"


@pytest.mark.parametrize("name", [*SCRIPTS, *(f"lib:{h}" for h in SECTIONS)])
def test_includes_are_exactly_the_helpers_used(name: str) -> None:
    """A script (or a helper) declares every helper it calls, so none is missing at run
    time on a rare path, and nothing it does not call."""
    source = SECTIONS[name[4:]] if name.startswith("lib:") else script_source(name)
    declared = includes(source)
    assert len(declared) == len(set(declared)), f"{name} includes a helper twice: {declared}"
    assert set(declared) == used_helpers(source), name


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_assembled_scripts_define_only_what_they_use(name: str) -> None:
    text = code(ScriptRegistry()[name].source)
    for defined in DEFINED.findall(text):
        uses = len(re.findall(rf"\b{defined}\b", text)) - 1  # the definition itself
        assert uses > 0, f"{name} ships {defined!r}, which it never uses"
    # each helper once, before its first use
    for helper in SECTIONS:
        assert len(re.findall(rf"^local (?:function )?{helper}\b", text, re.M)) <= 1


def test_a_bad_include_is_refused() -> None:
    with pytest.raises(ValueError, match=r"x includes 'nope', which lib\.lua does not define"):
        assemble("x", b'--- @include "nope"\nreturn 1\n', SECTIONS)
    backwards = {"a": b'--- @helper a\n--- @include "b"\n', "b": b"--- @helper b\n"}
    with pytest.raises(ValueError, match="helper 'a' includes 'b', defined after it"):
        assemble("x", b'--- @include "a"\n', backwards)


def test_includes_are_transitive_and_in_lib_order() -> None:
    source = ScriptRegistry()["signal"].source
    heads = re.findall(rb"^--- @helper (\w+)", source, re.M)
    assert heads == [b"push", b"task_fields", b"enqueue"]
    assert source.endswith(script_source("signal"))
