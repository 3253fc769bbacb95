"""The broker's decisions, without I/O: who is registered, who may reach whom, what to
tell each peer. The asyncio server (`broker.server`) feeds it requests and the time,
and sends the messages it returns to the peers they are addressed to.

Policy:

* A registration is soft state: it lapses ``REGISTRATION_TTL`` after its last refresh,
  or when the peer's session ends.
* A lookup, relay or punch for a target is answered only if the requester names the
  exact address, the target is registered, and the target allowed the requester (its
  contacts) or accepts strangers' introductions. A lookup by a stranger reveals
  nothing but "reachable through the relay": a stranger does not learn where we are.
* Every peer has a request budget; a peer that exceeds it by far is cut off.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from sidedoor.proto import broker as wire
from sidedoor.rate_limit import RateLimiter

Outgoing = list[tuple[bytes, wire.FromBroker]]

RELAY_TOKEN_TTL = 15.0
NAMEPLATE_TTL = 30 * 60.0
MAX_NAMEPLATES_PER_PEER = 8
GUEST_TTL = 120.0
MAX_NAMEPLATE_SPAN = 1000  # invite codes carry numbers up to 999
REQUESTS_PER_SECOND = 500  # a burst of mail to an offline contact stays well under it
PUNCH_MARGIN = 0.05  # seconds added so both dials start after both messages arrived


@dataclass
class Registration:
    identity: bytes
    observed: str
    listen_addrs: list[str]
    listen_port: int
    allow: frozenset[bytes]
    strangers: bool
    expires: float


@dataclass
class PendingRelay:
    requester: bytes
    target: bytes
    expires: float
    halves: int = 0


@dataclass
class Nameplate:
    owner: bytes
    expires: float


@dataclass
class BrokerState:
    max_relays: int = 512
    registrations: dict[bytes, Registration] = field(default_factory=dict)
    relays: dict[bytes, PendingRelay] = field(default_factory=dict)
    nameplates: dict[int, Nameplate] = field(default_factory=dict)
    guests: dict[tuple[bytes, bytes], float] = field(default_factory=dict)
    active_relays: int = 0
    token_source: Callable[[int], bytes] = os.urandom
    limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(REQUESTS_PER_SECOND, 1.0, max_keys=1 << 16))

    # ------------------------------------------------------------ registration
    def register(self, identity: bytes, msg: wire.Register, observed: str,
                 now: float) -> wire.Registered:
        self.registrations[identity] = Registration(
            identity, observed, list(msg.listen_addrs), msg.listen_port, frozenset(msg.allow),
            msg.strangers, now + wire.REGISTRATION_TTL)
        return wire.Registered(msg.rid, observed, wire.REGISTRATION_TTL, 0)

    def unregister(self, identity: bytes) -> None:
        self.registrations.pop(identity, None)

    def registered(self, identity: bytes, now: float) -> Registration | None:
        reg = self.registrations.get(identity)
        if reg is not None and reg.expires <= now:
            del self.registrations[identity]
            return None
        return reg

    def allow_request(self, identity: bytes, now: float) -> bool:
        return self.limiter.allow(identity.hex(), now)

    def _reachable(self, requester: bytes, target: bytes, now: float
                   ) -> tuple[Registration | None, str]:
        if self.registered(requester, now) is None:
            return None, "register first"
        reg = self.registered(target, now)
        if reg is None or target == requester:
            return None, "not registered here (offline, or it uses another broker)"
        if not self._allowed(requester, reg, now) and not reg.strangers:
            # Said the same way as "offline": a peer that hides learns nothing more.
            return None, "not registered here (offline, or it uses another broker)"
        return reg, ""

    def _allowed(self, requester: bytes, reg: Registration, now: float) -> bool:
        """A contact of the target, or the joiner of one of its invites."""
        if requester in reg.allow:
            return True
        return self.guests.get((requester, reg.identity), 0.0) > now

    # ---------------------------------------------------------------- lookups
    def lookup(self, requester: bytes, msg: wire.Lookup, now: float
               ) -> wire.Found | wire.Refused:
        reg, reason = self._reachable(requester, msg.target, now)
        if reg is None:
            return wire.Refused(msg.rid, reason)
        if not self._allowed(requester, reg, now):
            return wire.Found(msg.rid, [], "", 0)
        return wire.Found(msg.rid, reg.listen_addrs, reg.observed, reg.listen_port)

    # ------------------------------------------------------------------ relay
    def relay(self, requester: bytes, msg: wire.RelayRequest, now: float) -> Outgoing:
        self.expire(now)
        reg, reason = self._reachable(requester, msg.target, now)
        if reg is None:
            return [(requester, wire.Refused(msg.rid, reason))]
        if self.active_relays + len(self.relays) >= self.max_relays:
            return [(requester, wire.Refused(msg.rid, "the relay is busy; try again later"))]
        token = self.token_source(wire.RELAY_TOKEN_LEN)
        self.relays[token] = PendingRelay(requester, msg.target, now + RELAY_TOKEN_TTL)
        return [(requester, wire.RelayReady(msg.rid, token)),
                (msg.target, wire.RelayIncoming(requester, token))]

    def take_relay_half(self, token: bytes, now: float) -> PendingRelay | None:
        """A connection presented ``token``: the relay it belongs to, if it is current."""
        pending = self.relays.get(token)
        if pending is None or pending.expires <= now or pending.halves >= 2:
            return None
        pending.halves += 1
        if pending.halves == 2:
            # Both halves are here: the token is spent.
            del self.relays[token]
            self.active_relays += 1
        return pending

    def relay_ended(self) -> None:
        self.active_relays = max(0, self.active_relays - 1)

    # ------------------------------------------------------------------ punch
    def punch(self, requester: bytes, msg: wire.PunchRequest, rtts: dict[bytes, float],
              now: float) -> Outgoing:
        """Tell both peers to dial each other so that their SYNs cross.

        Each is told to wait so that both start half the slower peer's RTT after the
        broker sent: the message to the nearer peer arrives sooner, so it waits longer.
        """
        reg, reason = self._reachable(requester, msg.target, now)
        if reg is None:
            return [(requester, wire.Refused(msg.rid, reason))]
        if not self._allowed(requester, reg, now):
            return [(requester, wire.Refused(msg.rid, "only contacts may punch"))]
        mine = self.registrations[requester]
        if not mine.observed or not reg.observed:
            return [(requester, wire.Refused(msg.rid, "no observed address to punch to"))]
        rtt_a = rtts.get(requester, 0.05)
        rtt_b = rtts.get(msg.target, 0.05)
        slowest = max(rtt_a, rtt_b) / 2 + PUNCH_MARGIN
        # The observed addresses are the NAT mappings of the peers' listening ports:
        # nodes open their broker sessions from the port they listen on.
        a_addr, b_addr = mine.observed, reg.observed
        return [
            (requester, wire.PunchAt(msg.rid, msg.target, b_addr, slowest - rtt_a / 2)),
            (msg.target, wire.PunchAt(0, requester, a_addr, slowest - rtt_b / 2)),
        ]

    # -------------------------------------------------------------- nameplates
    def claim(self, identity: bytes, msg: wire.ClaimNameplate, now: float
              ) -> wire.Claimed | wire.Refused:
        self.expire(now)
        if sum(1 for n in self.nameplates.values() if n.owner == identity
               ) >= MAX_NAMEPLATES_PER_PEER:
            return wire.Refused(msg.rid, f"at most {MAX_NAMEPLATES_PER_PEER} open invites")
        # Short numbers while few are open: the number is what people type.
        span = 100
        while len(self.nameplates) * 2 >= span and span < MAX_NAMEPLATE_SPAN:
            span *= 10
        for _ in range(64):
            number = 1 + secrets.randbelow(span - 1)
            if number not in self.nameplates:
                self.nameplates[number] = Nameplate(identity, now + NAMEPLATE_TTL)
                return wire.Claimed(msg.rid, number)
        return wire.Refused(msg.rid, "no free invite number; try again")

    def use_nameplate(self, identity: bytes, msg: wire.UseNameplate, now: float
                      ) -> wire.NameplateOwner | wire.Refused:
        """One use per nameplate: the first joiner gets the owner; it is then gone."""
        self.expire(now)
        plate = self.nameplates.pop(msg.nameplate, None)
        if plate is None or plate.owner == identity:
            return wire.Refused(msg.rid, "no open invite with that number here")
        # The joiner is a stranger to the owner: let it relay and punch to the owner
        # for a short while, long enough for the invite exchange.
        self.guests[(identity, plate.owner)] = now + GUEST_TTL
        return wire.NameplateOwner(msg.rid, plate.owner)

    def release(self, identity: bytes, nameplate: int) -> None:
        plate = self.nameplates.get(nameplate)
        if plate is not None and plate.owner == identity:
            del self.nameplates[nameplate]

    # ---------------------------------------------------------------- upkeep
    def expire(self, now: float) -> None:
        for identity in [i for i, r in self.registrations.items() if r.expires <= now]:
            del self.registrations[identity]
        for token in [t for t, r in self.relays.items() if r.expires <= now]:
            del self.relays[token]
        for number in [n for n, p in self.nameplates.items() if p.expires <= now]:
            del self.nameplates[number]
        for pair in [p for p, t in self.guests.items() if t <= now]:
            del self.guests[pair]

