"""Shared fixtures: fresh home folders, in-process nodes, and a check for leaked tasks."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sidedoor.node import Node

HomeFactory = Callable[[str], Path]
NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
def home_factory(tmp_path: Path) -> HomeFactory:
    """``home_factory("alice")`` -> a new, empty home folder (mode 0700) under tmp_path."""
    made: set[str] = set()

    def make(name: str = "home") -> Path:
        base, n = name, 1
        while name in made:
            n += 1
            name = f"{base}{n}"
        made.add(name)
        path = tmp_path / name
        path.mkdir(mode=0o700)
        return path

    return make


@pytest.fixture
def home(home_factory: HomeFactory) -> Path:
    return home_factory("home")


@pytest.fixture
async def node_factory(home_factory: HomeFactory) -> AsyncIterator[NodeFactory]:
    """``await node_factory(**kwargs)`` -> a started ``Node`` on 127.0.0.1, closed at teardown.

    Pass ``home=`` to reuse a folder; other keyword arguments go to ``Node``.
    """
    nodes: list[Node] = []

    async def make(home: Path | None = None, **kwargs: Any) -> Node:
        kwargs.setdefault("host", "127.0.0.1")
        node = Node(home if home is not None else home_factory("node"), **kwargs)
        nodes.append(node)
        await node.start()
        return node

    yield make
    for node in reversed(nodes):
        await node.aclose()  # idempotent: tests may have closed it already


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every async test the leaked-task check, first so that it is torn down last."""
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            names = getattr(item, "fixturenames", None)
            if names is not None and "_no_leaked_tasks" not in names:
                names.insert(0, "_no_leaked_tasks")


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """An async test must not leave tasks running once its fixtures are torn down."""
    yield
    me = asyncio.current_task()
    for _ in range(5):
        await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in left:
        task.cancel()
    assert not left, f"the test left tasks running: {left}"
