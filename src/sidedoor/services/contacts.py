"""Contacts, contact requests and link tokens, kept in the node's database.

Sync methods, meant to run on the database thread (`Database.run`); the node keeps
an in-memory copy of who is a contact and who is blocked, so that the decision
taken at every handshake never waits for SQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sidedoor.cards import ContactCard, open_card, read_stored_card
from sidedoor.errors import ContactError, InvalidAddress, InvalidCard
from sidedoor.identity import PublicIdentity, decode_address, safety_words
from sidedoor.storage.db import Database

Standing = Literal["contact", "blocked", "stranger"]
MAX_PETNAME = 64
MAX_PENDING_REQUESTS = 200


@dataclass(frozen=True)
class Contact:
    identity: bytes
    petname: str
    card: ContactCard
    card_bytes: bytes
    source: str
    added_at: float
    verified: bool
    blocked: bool
    last_seen: float | None

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(self.identity)

    def as_dict(self, me: PublicIdentity) -> dict[str, Any]:
        return {
            "petname": self.petname,
            "name": self.card.name,
            "address": self.public.address,
            "fingerprint": self.public.fingerprint(),
            "safety_words": safety_words(me, self.public),
            "source": self.source,
            "added_at": self.added_at,
            "verified": self.verified,
            "blocked": self.blocked,
            "last_seen": self.last_seen,
            "addrs": list(self.card.addrs),
        }


@dataclass(frozen=True)
class ContactRequest:
    id: int
    identity: bytes
    direction: str
    card: ContactCard
    card_bytes: bytes
    message: str
    via: str
    received_at: float

    def as_dict(self, me: PublicIdentity) -> dict[str, Any]:
        public = PublicIdentity(self.identity)
        return {
            "id": self.id,
            "direction": self.direction,
            "name": self.card.name,
            "address": public.address,
            "fingerprint": public.fingerprint(),
            "safety_words": safety_words(me, public),
            "message": self.message,
            "via": self.via,
            "received_at": self.received_at,
        }


def _contact(row: sqlite3.Row | tuple[Any, ...]) -> Contact:
    identity, petname, card, source, added_at, verified, blocked, last_seen = row
    return Contact(bytes(identity), petname, read_stored_card(card), bytes(card), source, added_at,
                   bool(verified), bool(blocked), last_seen)


def _request(row: sqlite3.Row | tuple[Any, ...]) -> ContactRequest:
    rid, identity, direction, card, message, via, received_at = row
    return ContactRequest(rid, bytes(identity), direction, read_stored_card(card), bytes(card),
                          message, via, received_at)


_CONTACT_COLUMNS = "identity, petname, card, source, added_at, verified, blocked, last_seen"
_REQUEST_COLUMNS = "id, identity, direction, card, message, via, received_at"


class ContactBook:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ contacts
    def all(self) -> list[Contact]:
        rows = self.db.call(lambda c: c.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts ORDER BY petname COLLATE NOCASE"
        ).fetchall())
        return [_contact(r) for r in rows]

    def get(self, identity: bytes) -> Contact | None:
        row = self.db.call(lambda c: c.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE identity = ?", (identity,)
        ).fetchone())
        return _contact(row) if row else None

    def add(self, card_bytes: bytes, *, source: str, now: float, petname: str | None = None,
            verified: bool = False) -> Contact:
        """Add a contact from its signed card, or refresh the card of one we have."""
        card = open_card(card_bytes)
        name = (petname or card.name or card.public.fingerprint())[:MAX_PETNAME]
        unique = self._unique_petname(name, card.identity)
        self.db.call(lambda c: c.execute(
            "INSERT INTO contacts(identity, petname, card, source, added_at, verified) "
            "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(identity) DO UPDATE SET card = excluded.card, "
            "verified = max(verified, excluded.verified)",
            (card.identity, unique, card_bytes, source, now,
             int(verified))))
        contact = self.get(card.identity)
        assert contact is not None
        return contact

    def refresh_card(self, identity: bytes, card_bytes: bytes) -> bool:
        """Store a contact's newer card (new addresses, brokers); False if not newer."""
        card = open_card(card_bytes)
        if card.identity != identity:
            raise InvalidCard("a card for someone else")
        current = self.get(identity)
        if current is None or card.issued_at <= current.card.issued_at:
            return False
        self.db.call(lambda c: c.execute(
            "UPDATE contacts SET card = ? WHERE identity = ?", (card_bytes, identity)))
        return True

    def _unique_petname(self, name: str, identity: bytes) -> str:
        taken = {
            row[0].lower() for row in self.db.call(lambda c: c.execute(
                "SELECT petname FROM contacts WHERE identity != ?", (identity,)).fetchall())
        }
        candidate, n = name, 2
        while candidate.lower() in taken:
            candidate = f"{name} ({n})"
            n += 1
        return candidate

    def resolve(self, query: str) -> Contact:
        """Find a contact by petname, address (or its start) or fingerprint words."""
        text = query.strip()
        contacts = self.all()
        if not text:
            raise ContactError("name a contact (its name, address or fingerprint)")
        try:
            key = decode_address(text)
        except InvalidAddress:
            key = None
        lowered = text.lower()
        matchers: list[Callable[[Contact], bool]] = [
            lambda c: c.identity == key,
            lambda c: c.petname.lower() == lowered,
            lambda c: c.public.fingerprint() == lowered,
            lambda c: len(lowered) >= 6 and c.public.address.startswith(lowered),
            lambda c: c.petname.lower().startswith(lowered),
        ]
        for matcher in matchers:
            found = [c for c in contacts if matcher(c)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                names = ", ".join(c.petname for c in found[:5])
                raise ContactError(f"{query!r} could be several contacts ({names}); be more exact")
        raise ContactError(f"no contact matches {query!r}; `sidedoor contacts` lists them")

    def rename(self, identity: bytes, petname: str) -> None:
        petname = " ".join(petname.split())
        if not petname or len(petname) > MAX_PETNAME:
            raise ContactError(f"a contact's name is 1 to {MAX_PETNAME} characters")
        if self._unique_petname(petname, identity) != petname:
            raise ContactError(f"another contact is already called {petname!r}")
        self.db.call(lambda c: c.execute(
            "UPDATE contacts SET petname = ? WHERE identity = ?", (petname, identity)))

    def remove(self, identity: bytes) -> None:
        self.db.call(lambda c: c.execute("DELETE FROM contacts WHERE identity = ?", (identity,)))

    def set_flag(self, identity: bytes, flag: Literal["blocked", "verified"], value: bool) -> None:
        column = {"blocked": "blocked", "verified": "verified"}[flag]
        self.db.call(lambda c: c.execute(
            f"UPDATE contacts SET {column} = ? WHERE identity = ?", (int(value), identity)))

    def touch(self, identity: bytes, now: float) -> None:
        self.db.call(lambda c: c.execute(
            "UPDATE contacts SET last_seen = ? WHERE identity = ?", (now, identity)))

    # ------------------------------------------------------------ requests
    def requests(self, direction: str = "in") -> list[ContactRequest]:
        rows = self.db.call(lambda c: c.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM contact_requests WHERE direction = ? ORDER BY id",
            (direction,)).fetchall())
        return [_request(r) for r in rows]

    def request(self, request_id: int) -> ContactRequest | None:
        row = self.db.call(lambda c: c.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM contact_requests WHERE id = ?", (request_id,)
        ).fetchone())
        return _request(row) if row else None

    def outgoing_request(self, identity: bytes) -> ContactRequest | None:
        row = self.db.call(lambda c: c.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM contact_requests "
            "WHERE identity = ? AND direction = 'out'", (identity,)).fetchone())
        return _request(row) if row else None

    def add_request(self, card_bytes: bytes, *, direction: str, message: str, via: str,
                    now: float) -> int:
        """Store a request (a newer one from the same identity replaces the older)."""
        card = open_card(card_bytes)
        if direction == "in":
            # A newer request from someone already waiting replaces theirs: not counted.
            (pending,) = self.db.call(lambda c: c.execute(
                "SELECT count(*) FROM contact_requests WHERE direction = 'in' "
                "AND identity != ?", (card.identity,)).fetchone())
            if pending >= MAX_PENDING_REQUESTS:
                raise ContactError("too many contact requests are waiting; answer some first")
        row = self.db.call(lambda c: c.execute(
            "INSERT INTO contact_requests(identity, direction, card, message, via, received_at) "
            "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(identity, direction) DO UPDATE SET "
            "card = excluded.card, message = excluded.message, via = excluded.via, "
            "received_at = excluded.received_at RETURNING id",
            (card.identity, direction, card_bytes, message, via, now)).fetchone())
        return int(row[0])

    def delete_request(self, request_id: int) -> None:
        self.db.call(lambda c: c.execute(
            "DELETE FROM contact_requests WHERE id = ?", (request_id,)))

    def delete_requests_of(self, identity: bytes) -> None:
        self.db.call(lambda c: c.execute(
            "DELETE FROM contact_requests WHERE identity = ?", (identity,)))

    # ---------------------------------------------------------- link tokens
    def add_token(self, token: bytes, now: float, ttl: float) -> None:
        self.db.call(lambda c: c.execute(
            "INSERT INTO link_tokens(token, created_at, expires_at) VALUES(?, ?, ?)",
            (token, now, now + ttl)))

    def use_token(self, token: bytes, now: float) -> bool:
        """Spend a one-time token; True if it was valid."""
        row = self.db.call(lambda c: c.execute(
            "DELETE FROM link_tokens WHERE token = ? RETURNING expires_at", (token,)).fetchone())
        return bool(row) and row[0] >= now
