"""Print the figures of the fault-injection scenarios as tables, from the JSON reports that
each scenario writes (``python -m tests.chaos.summary DIRECTORY``; scripts/chaos runs it)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MARK = {True: "ok", False: "FAIL"}


def _value(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def summarize(report: dict[str, Any]) -> str:
    head = f"== {report['scenario']} ({report['size']}): "
    head += "passed" if report["passed"] else "FAILED"
    rows: list[tuple[str, ...]] = [("requirement", "value", "required", "")]
    for r in report["requirements"]:
        state = "known bug" if r.get("known") and not r["ok"] else MARK[r["ok"]]
        rows.append((r["figure"], _value(r["value"]), r["bound"], state))
    figures = [("figure", "value")]
    required = {r["figure"] for r in report["requirements"]}
    for name, value in report["figures"].items():
        if name not in required and name not in ("samples", "details"):
            figures.append((name, _value(value)))
    known = [f"  known bug: {r['figure']}: {r['known']}" for r in report["requirements"]
             if r.get("known") and not r["ok"]]  # fmt: skip
    parts = [head, table(rows)]
    if len(figures) > 1:
        parts.append(table(figures))
    return "\n".join(parts + known)


def main(directory: str) -> int:
    paths = sorted(Path(directory).glob("*.json"))
    if not paths:
        print(f"no reports in {directory}")
        return 1
    reports = [json.loads(p.read_text()) for p in paths]
    print("\n\n".join(summarize(r) for r in reports))
    failed = [r["scenario"] for r in reports if not r["passed"]]
    print(f"\n{len(reports) - len(failed)} of {len(reports)} scenarios passed", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".conveyor/chaos"))
