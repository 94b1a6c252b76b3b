"""Fixtures for the fault scenarios: processes always stopped, namespaces always removed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults import netns
from tests.faults.processes import Services, services


def pytest_sessionstart(session: pytest.Session) -> None:
    # a run that was SIGKILLed cannot clean up after itself; the next one does, sparing live runs
    if netns.unavailable_reason() is None:
        netns.sweep_stale()


@pytest.fixture(scope="session")
def netns_reason() -> str | None:
    return netns.unavailable_reason()


@pytest.fixture
def network(netns_reason: str | None) -> Iterator[netns.Network]:
    if netns_reason is not None:
        pytest.skip(netns_reason)
    with netns.network() as net:
        yield net


@pytest.fixture
def procs() -> Iterator[Services]:
    with services() as group:
        yield group
