"""docs/sentinel.md shows the state machines exactly as the code's transition tables define them."""

from __future__ import annotations

import enum
from pathlib import Path

import pytest

from sentinel import detector, failover, tilt

DOC = Path(__file__).resolve().parents[2] / "docs" / "sentinel.md"


def markdown_table(transitions: dict[enum.Enum, frozenset[enum.Enum]]) -> str:
    rows = ["| from | allowed next states |", "|---|---|"]
    for state, targets in transitions.items():
        names = ", ".join(sorted(t.name for t in targets)) or "(final)"
        rows.append(f"| {state.name} | {names} |")
    return "\n".join(rows)


@pytest.mark.parametrize("module", [detector, failover, tilt], ids=lambda m: m.__name__)
def test_the_doc_shows_each_transition_table(module: object) -> None:
    table = markdown_table(module.TRANSITIONS)  # type: ignore[attr-defined]
    assert table in DOC.read_text()
