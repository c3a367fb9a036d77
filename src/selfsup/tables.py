"""Numbers and tables for people, and JSON records for programs: one formatter for every layer
(evaluation, recipes, report, benchmarks, the command line)."""
from __future__ import annotations

import math
from typing import Any


def human(value: Any, digits: int = 4) -> str:
    """A number as a person reads it: ``digits`` significant digits (a loss of 3.371088986561216 is
    "3.371", a budget of 4.285842244514591 minutes "4.286"), integers as they are; anything else
    as ``str``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB', 3 * 2**30 -> '3.0 GiB'."""
    units, power = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while abs(count) >= 1024 and power < len(units) - 1:
        count, power = count / 1024, power + 1
    return f"{count:.0f} B" if power == 0 else f"{count:.1f} {units[power]}"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` (dicts) with ``columns``; floats with two decimals (accuracies in
    %, as every table here reports them), a missing cell empty."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row.get(c):.2f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
