"""`Discovery` alone, against a zeroconf stand-in: a real record cache, no sockets.

The multicast side is tested for real in tests/netlab (network namespaces); here
the records are put in the cache by hand and the clock is a fake.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from zeroconf import (
    DNSAddress,
    DNSCache,
    DNSOutgoing,
    DNSService,
    DNSText,
    ServiceStateChange,
    current_time_millis,
)

from sidedoor.net.mdns import (
    SERVICE_TYPE,
    Discovery,
    DiscoveryEvent,
    NearbyPeer,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
)
from sidedoor.testing.sessions import identity_from

TTL = 10
CLASS_IN_UNIQUE = 0x8001
TYPE_A, TYPE_TXT, TYPE_SRV = 1, 16, 33
ALICE = identity_from("alice").address
BOB = identity_from("bob").address
BOB_SERVICE = f"{BOB[:16]}.{SERVICE_TYPE}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeZeroconf:
    """What `Discovery` uses of a running zeroconf, minus the network."""

    def __init__(self) -> None:
        self.cache = DNSCache()
        self.started = True
        self.done = False
        self.sent: list[DNSOutgoing] = []

    def async_send(self, out: DNSOutgoing, *args: Any) -> None:
        self.sent.append(out)

    def async_add_listener(self, listener: object, question: object) -> None:
        pass

    def async_remove_listener(self, listener: object) -> None:
        pass


class FakeAsyncZeroconf:
    def __init__(self) -> None:
        self.zeroconf = FakeZeroconf()

    async def async_close(self) -> None:
        self.zeroconf.done = True


def txt_wire(**fields: str) -> bytes:
    out = b""
    for key, value in fields.items():
        entry = f"{key}={value}".encode()
        out += bytes([len(entry)]) + entry
    return out


def announce(
    zc: FakeZeroconf,
    *,
    name: str = BOB_SERVICE,
    address: str = BOB,
    display: str = "Bob",
    port: int = 4200,
    ip: str = "192.0.2.7",
    age: float = 0.0,
    text: bytes | None = None,
) -> DNSService:
    """Put a peer's SRV, TXT and A records in the cache, ``age`` seconds old."""
    created = current_time_millis() - age * 1000
    server = name.split(".")[0] + ".local."
    srv = DNSService(name, TYPE_SRV, CLASS_IN_UNIQUE, TTL, 0, 0, port, server, created)
    if text is None:
        text = txt_wire(v="1", id=address, name=display)
    zc.cache.async_add_records([
        srv,
        DNSText(name, TYPE_TXT, CLASS_IN_UNIQUE, TTL, text, created),
        DNSAddress(server, TYPE_A, CLASS_IN_UNIQUE, TTL, socket.inet_aton(ip), None, created),
    ])
    return srv


Harness = tuple[Discovery, FakeZeroconf, FakeClock, list[DiscoveryEvent]]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    clock = FakeClock()
    events: list[DiscoveryEvent] = []
    discovery = Discovery(ALICE, "Alice", 4100, on_change=events.append, clock=clock, ttl=TTL)
    fake = FakeAsyncZeroconf()
    discovery._aiozc = fake  # type: ignore[assignment]  # what start() would have made
    yield discovery, fake.zeroconf, clock, events
    await discovery.aclose()


def browser_says(discovery: Discovery, change: ServiceStateChange, name: str = BOB_SERVICE) -> None:
    discovery._on_service_state_change(
        zeroconf=None,  # type: ignore[arg-type]
        service_type=SERVICE_TYPE, name=name, state_change=change,
    )


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


async def test_join_from_the_cache(harness: Harness) -> None:
    discovery, zc, clock, events = harness
    announce(zc)
    browser_says(discovery, ServiceStateChange.Added)
    await until(lambda: bool(events))
    peer = NearbyPeer(BOB, "Bob", ["192.0.2.7"], 4200, {}, clock.now)
    assert events == [PeerJoined(peer)]
    assert discovery.nearby == {BOB: peer}
    assert zc.sent == []  # all from the cache: nothing asked


async def test_updates_read_the_current_txt_record(harness: Harness) -> None:
    discovery, zc, _, events = harness
    announce(zc)
    browser_says(discovery, ServiceStateChange.Added)
    await until(lambda: bool(events))
    plain = txt_wire(v="1", id=BOB, name="Bob")
    invite = txt_wire(v="1", id=BOB, name="Bob", inv="7,12")
    # inv=7,12, then back to plain. On each change zeroconf keeps the records where
    # they are in the cache and stamps the one flushed with one second to live: the
    # current record is the one that expires last, whether it sits first or last.
    for current, flushed, properties in ((invite, plain, {"inv": "7,12"}), (plain, invite, {})):
        now = current_time_millis()
        zc.cache.async_add_records([
            DNSText(BOB_SERVICE, TYPE_TXT, CLASS_IN_UNIQUE, TTL, current, now),
            DNSText(BOB_SERVICE, TYPE_TXT, CLASS_IN_UNIQUE, 1, flushed, now),
        ])
        seen = len(events)
        discovery._txt_arrived(BOB_SERVICE, current)
        await until(lambda seen=seen: len(events) > seen)
        assert isinstance(events[-1], PeerUpdated)
        assert events[-1].peer.properties == properties
    # The same record again (a refresh) is not news.
    discovery._txt_arrived(BOB_SERVICE, plain)
    await asyncio.sleep(0.05)
    assert len(events) == 3


async def test_goodbye(harness: Harness) -> None:
    discovery, zc, _, events = harness
    announce(zc)
    browser_says(discovery, ServiceStateChange.Added)
    await until(lambda: bool(events))
    browser_says(discovery, ServiceStateChange.Removed)
    assert isinstance(events[-1], PeerLeft)
    assert events[-1].reason == "removed"
    assert discovery.nearby == {}
    browser_says(discovery, ServiceStateChange.Removed)  # twice: nothing more
    assert len(events) == 2


async def test_refresh_query_at_80_percent_then_expiry_by_our_clock(harness: Harness) -> None:
    discovery, zc, clock, events = harness
    srv = announce(zc, age=TTL * 0.83)
    browser_says(discovery, ServiceStateChange.Added)
    await until(lambda: bool(events))
    questions = [(q.name, q.type) for out in zc.sent for q in out.questions]
    assert questions == [(BOB_SERVICE, TYPE_SRV)]  # RFC 6762 5.2 cache maintenance

    # No answer: the record lapses; the peer leaves once our clock passes its TTL.
    zc.cache.async_remove_records([srv])
    clock.now += TTL * 0.1
    discovery.sweep()
    assert len(events) == 1
    clock.now += TTL * 0.1
    discovery.sweep()
    assert isinstance(events[-1], PeerLeft)
    assert events[-1].reason == "expired"

    # It answers late: the sweep notices the record is back.
    announce(zc)
    discovery.sweep()
    await until(lambda: len(events) == 3)
    assert isinstance(events[-1], PeerJoined)


async def test_a_refreshed_record_keeps_the_peer_and_stamps_last_seen(harness: Harness) -> None:
    discovery, zc, clock, events = harness
    announce(zc, age=TTL * 0.5)
    browser_says(discovery, ServiceStateChange.Added)
    await until(lambda: bool(events))
    announce(zc)  # the answer to a refresh query
    clock.now += TTL * 0.9
    discovery.sweep()
    assert discovery.nearby[BOB].last_seen == clock.now
    clock.now += TTL * 0.5
    discovery.sweep()
    assert len(events) == 1 and BOB in discovery.nearby


async def test_hostile_records_are_ignored_and_logged_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    discovery, zc, _, events = harness
    caplog.set_level(logging.DEBUG, logger="sidedoor.net.mdns")
    announce(zc, text=txt_wire(v="1", id=BOB[:-2], name="Typo"))
    for change in (ServiceStateChange.Added, ServiceStateChange.Updated):
        browser_says(discovery, change)
        await asyncio.sleep(0.05)
    announce(zc, name=f"twin.{SERVICE_TYPE}", address=ALICE)  # claims to be us
    browser_says(discovery, ServiceStateChange.Added, f"twin.{SERVICE_TYPE}")
    await asyncio.sleep(0.05)
    assert events == []
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(ignored) == 1, ignored
    assert "does not parse" in ignored[0]


async def test_a_failing_callback_is_logged_not_raised(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    discovery, zc, _, events = harness

    def broken(event: DiscoveryEvent) -> None:
        events.append(event)
        raise RuntimeError("callback bug")

    discovery.on_change = broken
    announce(zc)
    browser_says(discovery, ServiceStateChange.Added)
    await until(lambda: bool(events))
    browser_says(discovery, ServiceStateChange.Removed)
    assert [type(e) for e in events] == [PeerJoined, PeerLeft]
    assert sum("on_change callback failed" in r.getMessage() for r in caplog.records) == 2


async def test_properties_before_start_and_after_close() -> None:
    discovery = Discovery(ALICE, "Alice", 4100)
    with pytest.raises(ValueError, match="reserved"):
        await discovery.update_properties({"id": "x"})
    await discovery.update_properties({"inv": "7"})
    assert discovery.extras == {"inv": "7"}
    await discovery.aclose()
    await discovery.aclose()
    await discovery.update_properties({"inv": "8"})  # closed: nothing happens
    assert discovery.extras == {"inv": "7"}


async def test_a_peer_whose_record_turns_invalid_leaves(harness: Harness) -> None:
    discovery, zc, _, events = harness
    announce(zc)
    browser_says(discovery, ServiceStateChange.Added)
    await until(lambda: bool(events))
    future = txt_wire(v="2", id=BOB, name="Bob")
    zc.cache.async_add_records(
        [DNSText(BOB_SERVICE, TYPE_TXT, CLASS_IN_UNIQUE, TTL * 2, future, current_time_millis())]
    )
    discovery._txt_arrived(BOB_SERVICE, future)
    await until(lambda: len(events) == 2)
    assert isinstance(events[1], PeerLeft) and events[1].reason == "removed"
    assert discovery.nearby == {}
