"""Findings: what the diagnostics say about a set-up or a run, as structured records.

A run folder's `findings.json` is a list of `Finding.to_dict()` objects. Explanations are
built from the measured numbers in `evidence`, never fixed prose that claims more.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aelab.runs import FINDINGS_FILE

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    id: a stable slug ("blob", "dead-units", "divergence", ...).
    severity: "info", "warning" or "error".
    title: one line for tables.
    evidence: the measured numbers that support it, by name.
    explanation: why it happens, in plain words, using the evidence.
    fix: what to change.
    epoch: the epoch it was seen at, or None for checks made before training.
    """

    id: str
    severity: str
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""
    fix: str = ""
    epoch: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Finding:
        return cls(**{key: raw[key] for key in cls.__dataclass_fields__ if key in raw})

    def line(self) -> str:
        """One line for a terminal: severity, title and fix."""
        return f"{self.severity.upper():7} {self.id}: {self.title}" + (f" -> {self.fix}" if self.fix else "")


def finding_key(finding: Finding) -> tuple[str, Any]:
    """What makes two findings the same problem: the id, and the layer for per-layer ones."""
    return finding.id, finding.evidence.get("layer")


@dataclass(frozen=True)
class FindingChanges:
    """How one list of findings differs from another: problems added, removed, and those whose
    severity changed (as (before, after) pairs)."""

    added: list[Finding]
    removed: list[Finding]
    changed: list[tuple[Finding, Finding]]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def lines(self) -> list[str]:
        """One line per change, for a terminal."""
        return (
            [f"added   {f.severity.upper()} {_name(f)}: {f.title}" for f in self.added]
            + [f"removed {f.severity.upper()} {_name(f)}: {f.title}" for f in self.removed]
            + [f"changed {_name(a)}: {a.severity} -> {b.severity}" for a, b in self.changed]
        )


def _name(finding: Finding) -> str:
    layer = finding.evidence.get("layer")
    return finding.id + (f" ({layer})" if layer is not None else "")


def compare_findings(before: list[Finding], after: list[Finding]) -> FindingChanges:
    """What changed from `before` to `after`, matching findings by `finding_key`."""
    old = {finding_key(f): f for f in before}
    new = {finding_key(f): f for f in after}
    return FindingChanges(
        added=[f for key, f in new.items() if key not in old],
        removed=[f for key, f in old.items() if key not in new],
        changed=[(old[key], f) for key, f in new.items() if key in old and old[key].severity != f.severity],
    )


def findings_bytes(findings: list[Finding]) -> bytes:
    """findings.json's contents for `findings`."""
    return json.dumps([f.to_dict() for f in findings], indent=2).encode("utf-8")


def save_findings(run_dir: str | Path, findings: list[Finding]) -> None:
    from aelab.runs import atomic_write_bytes

    atomic_write_bytes(Path(run_dir) / FINDINGS_FILE, findings_bytes(findings))


def read_findings(run_dir: str | Path) -> list[Finding]:
    path = Path(run_dir) / FINDINGS_FILE
    if not path.exists():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return []
    return [Finding.from_dict(item) for item in raw if isinstance(item, dict)] if isinstance(raw, list) else []
