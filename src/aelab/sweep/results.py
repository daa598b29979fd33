"""A sweep's results files: results.csv and results.json, one row per run."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from aelab.runs import RESULTS_CSV, RESULTS_JSON, atomic_write_text


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    """results.csv (columns: the union of the rows' keys, in first-seen order; NaN and missing
    as empty cells) and results.json (NaN as null), both written atomically."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_cell(row.get(key)) for key in columns})
    atomic_write_text(out / RESULTS_CSV, buffer.getvalue())
    clean = [{key: _json_value(value) for key, value in row.items()} for row in rows]
    atomic_write_text(out / RESULTS_JSON, json.dumps(clean, indent=2) + "\n")


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
