"""The node's event bus: fan-out, subscriptions to some kinds, and `wants`."""

from __future__ import annotations

from sidedoor.node import EVENT_QUEUE_LIMIT, EventBus
from sidedoor.services.keep_in_touch import WATCHED_EVENTS


async def test_a_subscriber_to_some_kinds_gets_only_those() -> None:
    bus = EventBus()
    everything = bus.subscribe()
    sessions = bus.subscribe({"session.closed"})
    bus.emit("chat.message", text="hi")
    bus.emit("session.closed", address="x")
    assert [everything.get_nowait()["type"] for _ in range(2)] == [
        "chat.message", "session.closed"]
    assert sessions.get_nowait()["type"] == "session.closed"
    assert sessions.empty()


async def test_wants_follows_subscriptions() -> None:
    bus = EventBus()
    assert not bus.wants("chat.message")  # nobody listens: events need not be built
    sessions = bus.subscribe({"session.closed"})
    assert bus.wants("session.closed") and not bus.wants("chat.message")
    everything = bus.subscribe()
    assert bus.wants("chat.message")
    bus.unsubscribe(everything)
    assert not bus.wants("chat.message") and bus.wants("session.closed")
    bus.unsubscribe(sessions)
    assert not bus.wants("session.closed")


async def test_a_subscriber_that_falls_behind_is_dropped_and_told() -> None:
    bus = EventBus()
    slow = bus.subscribe({"chat.message"})
    for i in range(EVENT_QUEUE_LIMIT + 1):
        bus.emit("chat.message", n=i)
    assert not bus.wants("chat.message")
    drained = [slow.get_nowait() for _ in range(slow.qsize())]
    assert drained[-1] is None  # the end of its stream
    bus.emit("chat.message", n=-1)
    assert slow.empty()


def test_keep_in_touch_does_not_take_chat_events() -> None:
    # A busy conversation must not wake the service that keeps contacts in touch.
    assert not any(kind.startswith("chat.") for kind in WATCHED_EVENTS)
    assert "session.closed" in WATCHED_EVENTS and "contact.added" in WATCHED_EVENTS
