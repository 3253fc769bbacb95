"""The broker's decisions, without sockets: registration, policy, relays, punches, nameplates."""

from __future__ import annotations

import os

import pytest

from sidedoor.broker.core import GUEST_TTL, RELAY_TOKEN_TTL, BrokerState
from sidedoor.errors import InvalidBrokerAddress, MessageError
from sidedoor.identity import Identity
from sidedoor.proto import broker as wire

A, B, C = (os.urandom(32) for _ in range(3))


def reg(state: BrokerState, who: bytes, allow: list[bytes], *, strangers: bool = True,
        now: float = 0.0, observed: str = "198.51.100.1:7000") -> None:
    state.register(who, wire.Register(1, ["192.168.1.2:7000"], 7000, allow, strangers),
                   observed, now)


def test_registration_is_soft_state() -> None:
    state = BrokerState()
    reg(state, A, [])
    assert state.registered(A, wire.REGISTRATION_TTL - 1) is not None
    assert state.registered(A, wire.REGISTRATION_TTL + 1) is None


def test_lookup_reveals_addresses_to_contacts_only() -> None:
    state = BrokerState()
    reg(state, A, [B])
    reg(state, B, [A])
    reg(state, C, [])
    found = state.lookup(B, wire.Lookup(7, A), 1.0)
    assert isinstance(found, wire.Found) and found.rid == 7
    assert found.observed == "198.51.100.1:7000" and found.listen_addrs
    hidden = state.lookup(C, wire.Lookup(8, A), 1.0)
    assert isinstance(hidden, wire.Found) and not hidden.observed and not hidden.listen_addrs


def test_a_node_that_refuses_strangers_looks_offline_to_them() -> None:
    state = BrokerState()
    reg(state, A, [B], strangers=False)
    reg(state, C, [])
    offline = state.lookup(C, wire.Lookup(1, A), 1.0)
    unknown = state.lookup(C, wire.Lookup(1, os.urandom(32)), 1.0)
    assert isinstance(offline, wire.Refused) and isinstance(unknown, wire.Refused)
    assert offline.reason == unknown.reason  # no way to tell "hides" from "absent"


def test_unregistered_requesters_get_nothing() -> None:
    state = BrokerState()
    reg(state, A, [B])
    out = state.relay(B, wire.RelayRequest(3, A), 1.0)
    assert out == [(B, wire.Refused(3, "register first"))]


def test_a_relay_token_pairs_two_halves_once_and_expires() -> None:
    state = BrokerState(token_source=lambda n: b"t" * n)
    reg(state, A, [B])
    reg(state, B, [A])
    out = state.relay(B, wire.RelayRequest(3, A), 1.0)
    token = b"t" * wire.RELAY_TOKEN_LEN
    assert out == [(B, wire.RelayReady(3, token)), (A, wire.RelayIncoming(B, token))]
    assert state.take_relay_half(token, 2.0) is not None
    assert state.take_relay_half(token, 2.0) is not None
    assert state.take_relay_half(token, 2.0) is None  # a third connection gets nothing
    assert state.active_relays == 1
    state.relay_ended()
    assert state.active_relays == 0
    state.relay(B, wire.RelayRequest(4, A), 10.0)
    assert state.take_relay_half(token, 10.0 + RELAY_TOKEN_TTL + 1) is None


def test_the_relay_cap_refuses_politely() -> None:
    state = BrokerState(max_relays=1)
    reg(state, A, [B])
    reg(state, B, [A])
    state.relay(B, wire.RelayRequest(1, A), 1.0)
    ((who, refused),) = state.relay(B, wire.RelayRequest(2, A), 1.0)
    assert who == B and isinstance(refused, wire.Refused) and "busy" in refused.reason


def test_punch_times_the_dials_to_cross() -> None:
    state = BrokerState()
    reg(state, A, [B], observed="198.51.100.1:7000")
    reg(state, B, [A], observed="198.51.100.2:7001")
    out = state.punch(B, wire.PunchRequest(5, A), {A: 0.200, B: 0.040}, 1.0)
    (to_b, at_b), (to_a, at_a) = out
    assert (to_b, to_a) == (B, A)
    assert isinstance(at_b, wire.PunchAt) and isinstance(at_a, wire.PunchAt)
    assert at_b.addr == "198.51.100.1:7000" and at_a.addr == "198.51.100.2:7001"
    # Each dial starts when the message arrives plus its wait: both at the same moment.
    assert at_b.delay + 0.040 / 2 == pytest.approx(at_a.delay + 0.200 / 2)
    assert at_a.delay >= 0 and at_b.delay > at_a.delay


def test_only_contacts_may_punch() -> None:
    state = BrokerState()
    reg(state, A, [])
    reg(state, C, [])
    ((_, refused),) = state.punch(C, wire.PunchRequest(1, A), {}, 1.0)
    assert isinstance(refused, wire.Refused)


def test_a_nameplate_is_used_once_and_makes_the_joiner_a_guest() -> None:
    state = BrokerState()
    reg(state, A, [], strangers=False)
    reg(state, B, [])
    claimed = state.claim(A, wire.ClaimNameplate(1), 1.0)
    assert isinstance(claimed, wire.Claimed) and 1 <= claimed.nameplate < 100
    owner = state.use_nameplate(B, wire.UseNameplate(2, claimed.nameplate), 2.0)
    assert owner == wire.NameplateOwner(2, A)
    again = state.use_nameplate(C, wire.UseNameplate(3, claimed.nameplate), 2.0)
    assert isinstance(again, wire.Refused)
    # B may now reach A (which refuses strangers) for the invite, for a while.
    assert isinstance(state.lookup(B, wire.Lookup(4, A), 3.0), wire.Found)
    assert isinstance(state.lookup(B, wire.Lookup(5, A), 3.0 + GUEST_TTL), wire.Refused)


def test_nameplates_stay_short_and_bounded_per_peer() -> None:
    state = BrokerState()
    numbers = []
    for i in range(8):
        claimed = state.claim(os.urandom(32), wire.ClaimNameplate(i), 1.0)
        assert isinstance(claimed, wire.Claimed)
        numbers.append(claimed.nameplate)
    assert len(set(numbers)) == 8 and max(numbers) < 100
    for i in range(8):
        state.claim(A, wire.ClaimNameplate(i), 1.0)
    assert isinstance(state.claim(A, wire.ClaimNameplate(9), 1.0), wire.Refused)


@pytest.mark.parametrize("bad", [
    wire.Lookup(1, b"short"),
    wire.Register(1, ["x" * 65], 7000, [], True),
    wire.Register(1, [], 70000, [], True),
    wire.Register(1, [], 7000, [b"bad"], True),
    wire.MailAck(list(range(2000))),
])
def test_requests_that_break_the_limits_are_refused(bad: wire.ToBroker) -> None:
    with pytest.raises(MessageError):
        wire.decode_to_broker(wire.encode(bad))


@pytest.mark.parametrize("garbage", [b"", b"\xc1", b"\x92\xa6lookup\x01", os.urandom(64)])
def test_garbage_requests_are_message_errors(garbage: bytes) -> None:
    with pytest.raises(MessageError):
        wire.decode_to_broker(garbage)


def test_broker_addresses_parse_and_print_back() -> None:
    key = Identity.generate().public
    url = f"sidedoor-broker://203.0.113.7:7700/{key.address}"
    address = wire.BrokerAddress.parse(url)
    assert (address.host, address.port, address.identity) == ("203.0.113.7", 7700, key)
    assert str(address) == url
    v6 = wire.BrokerAddress.parse(f"sidedoor-broker://[2001:db8::1]:7700/{key.address}")
    assert v6.host == "2001:db8::1" and str(v6).startswith("sidedoor-broker://[2001:db8::1]")
    for bad in ("http://x:1/" + key.address, "sidedoor-broker://x/" + key.address,
                "sidedoor-broker://x:99999/" + key.address,
                "sidedoor-broker://x:7700/" + key.address[:-1] + "a"):
        with pytest.raises(InvalidBrokerAddress):
            wire.BrokerAddress.parse(bad)
