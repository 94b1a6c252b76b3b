"""Fixtures for the fault scenarios: processes always stopped, namespaces always removed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults import netns
from tests.faults.processes import Services, services


@pytest.fixture(scope="session")
def netns_reason() -> str | None:
    reason = netns.unavailable_reason()
    if reason is None:
        # a run that was SIGKILLed could not clean up after itself; the first namespace user of
        # the next run does, sparing runs still alive (a fixture, not pytest_sessionstart: that
        # hook is not called for a conftest below the directories pytest starts from)
        netns.sweep_stale()
    return reason


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
