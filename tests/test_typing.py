"""The public API type-checks the way users write it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_user_code_passes_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "tests/typing/user_code.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignore_survives_a_dependency_gaining_types() -> None:
    """A ``type: ignore`` in the package covers a gap in a dependency's types (or, for a few
    method assignments, in mypy's). A release that closes the gap would make the ignore unused, and strict mypy would fail a fresh
    clone on a day nothing here changed; ``unused-ignore`` beside the code keeps it quiet
    then, while ``ignore-without-code`` (pyproject.toml) keeps every ignore narrow."""
    loose = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line and "unused-ignore" not in line
    ]
    assert not loose, f"type: ignore without unused-ignore: {loose}"
