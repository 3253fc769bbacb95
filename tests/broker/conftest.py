"""A broker on loopback for in-process tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sidedoor.broker.server import BrokerServer

BrokerFactory = Callable[..., Awaitable[BrokerServer]]


@pytest.fixture
async def broker_factory(tmp_path: Path) -> AsyncIterator[BrokerFactory]:
    brokers: list[BrokerServer] = []

    async def make(data: Path | None = None, **kwargs: Any) -> BrokerServer:
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        broker = BrokerServer(data or tmp_path / f"broker{len(brokers)}", **kwargs)
        brokers.append(broker)
        await broker.start()
        return broker

    yield make
    for broker in reversed(brokers):
        await broker.aclose()


@pytest.fixture
async def broker(broker_factory: BrokerFactory) -> BrokerServer:
    return await broker_factory()
