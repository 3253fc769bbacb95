"""Fixtures for tests that build private networks in namespaces (see README.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sidedoor.testing.netlab import NetLab, unavailable_reason


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """A `NetLab`, torn down (every namespace deleted) after the test, pass or fail."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"netlab: {reason}")
    with NetLab() as lab:
        yield lab
