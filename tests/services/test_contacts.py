"""The contact book on a real database: contacts, petnames, lookups, requests, link tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidedoor.cards import make_card
from sidedoor.errors import ContactError, InvalidCard
from sidedoor.identity import Identity, PublicIdentity, safety_words
from sidedoor.services.contacts import MAX_PENDING_REQUESTS, MAX_PETNAME, ContactBook
from sidedoor.storage.db import Database

NOW = 1_700_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path)
    yield database
    database.close()


@pytest.fixture
def book(db: Database) -> ContactBook:
    return ContactBook(db)


def card(who: Identity, name: str = "Ann", issued_at: int = 1,
         addrs: list[str] | None = None) -> bytes:
    return make_card(who, name, addrs if addrs is not None else ["127.0.0.1:7070"], [],
                     issued_at)


def person(book: ContactBook, name: str, **kwargs: object) -> Identity:
    """A new identity, added to ``book`` with its card named ``name``."""
    who = Identity.generate()
    book.add(card(who, name), source="request", now=NOW, **kwargs)  # type: ignore[arg-type]
    return who


def contact_error(fn: object, *args: object, words: tuple[str, ...] = ()) -> str:
    with pytest.raises(ContactError) as info:
        fn(*args)  # type: ignore[operator]
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    return message


# ------------------------------------------------------------------ contacts

def test_add_get_all(book: ContactBook) -> None:
    assert book.all() == [] and book.get(b"\x00" * 32) is None
    ann = Identity.generate()
    data = card(ann, "Ann Lee")
    added = book.add(data, source="request", now=NOW)
    assert added.identity == ann.public.key and added.public == ann.public
    assert added.petname == "Ann Lee" and added.card.name == "Ann Lee"
    assert added.card_bytes == data and added.source == "request" and added.added_at == NOW
    assert added.verified is False and added.blocked is False and added.last_seen is None
    assert book.get(ann.public.key) == added

    person(book, "bob")
    person(book, "Carl", petname="Zed", verified=True)
    assert [c.petname for c in book.all()] == ["Ann Lee", "bob", "Zed"]  # by name, any case
    zed = book.all()[2]
    assert zed.card.name == "Carl" and zed.verified is True

    me = PublicIdentity(b"\x01" * 32)
    info = added.as_dict(me)
    assert info["petname"] == "Ann Lee" and info["address"] == ann.address
    assert info["fingerprint"] == ann.public.fingerprint()
    assert info["safety_words"] == safety_words(me, ann.public)
    assert info["addrs"] == ["127.0.0.1:7070"]


def test_a_contact_without_a_name_is_named_by_its_fingerprint(book: ContactBook) -> None:
    who = Identity.generate()
    assert book.add(card(who, " \x00 "), source="link", now=NOW).petname == \
        who.public.fingerprint()


def test_adding_again_keeps_the_petname_and_refreshes_the_card(book: ContactBook) -> None:
    ann = Identity.generate()
    first = book.add(card(ann, "Ann", issued_at=1), source="invite", now=NOW)
    book.rename(ann.public.key, "Annie")
    book.set_flag(ann.public.key, "verified", True)
    book.set_flag(ann.public.key, "blocked", True)
    newer = card(ann, "Ann Lee", issued_at=2, addrs=["10.0.0.5:7070"])
    again = book.add(newer, source="request", now=NOW + 100, petname="Ignored")
    assert again.petname == "Annie"
    assert again.card_bytes == newer and again.card.name == "Ann Lee"
    assert again.card.addrs == ["10.0.0.5:7070"] and again.card.issued_at == 2
    assert again.source == "invite" and again.added_at == first.added_at
    assert again.verified is True and again.blocked is True  # flags are not reset
    assert len(book.all()) == 1


def test_add_refuses_a_forged_card(book: ContactBook) -> None:
    data = bytearray(card(Identity.generate()))
    data[-1] ^= 1
    with pytest.raises(InvalidCard):
        book.add(bytes(data), source="request", now=NOW)
    assert book.all() == []


def test_petname_collisions_get_a_number(book: ContactBook) -> None:
    people = [person(book, name) for name in ("Bob", "Bob", "bob", "BOB (2)", "Bob")]
    names = [book.get(p.public.key).petname for p in people]  # type: ignore[union-attr]
    assert names == ["Bob", "Bob (2)", "bob (3)", "BOB (2) (2)", "Bob (4)"]
    assert len({n.lower() for n in names}) == len(names)


# -------------------------------------------------------------------- resolve

def test_resolve(book: ContactBook) -> None:
    ann = person(book, "Ann Lee")
    bob = person(book, "Bob")
    bobby = person(book, "Bobby Tables")

    def found(query: str) -> Identity:
        key = book.resolve(query).identity
        return next(p for p in (ann, bob, bobby) if p.public.key == key)

    assert found("Ann Lee") is ann  # exact
    assert found("  aNN lee ") is ann  # any case, spaces around
    assert found("an") is ann  # the start of a name
    assert found("bob") is bob  # an exact name wins over the longer one it starts
    assert found("bobby") is bobby
    for who in (ann, bob, bobby):
        address = who.address
        assert found(address) is who
        assert found(address.upper()) is who
        assert found(" ".join(address[i : i + 4] for i in range(0, len(address), 4))) is who
        assert found(who.public.fingerprint()) is who
        assert found(address[:12]) is who  # the start of an address
    # At 6 characters an address start counts (sd + 4); the common "sd" prefix alone not.
    unique = next(n for n in range(6, 20)
                  if sum(p.address.startswith(ann.address[:n]) for p in (ann, bob, bobby)) == 1)
    assert found(ann.address[:unique]) is ann


def test_resolve_errors(book: ContactBook) -> None:
    bob = person(book, "Bob Builder")
    person(book, "Bobby Tables")
    message = contact_error(book.resolve, "bo", words=("several", "Bob Builder", "Bobby Tables"))
    assert "more exact" in message
    contact_error(book.resolve, "carol", words=("no contact matches 'carol'", "sidedoor contacts"))
    contact_error(book.resolve, "   ", words=("name a contact",))
    contact_error(book.resolve, "", words=("name a contact",))
    contact_error(book.resolve, bob.address[:5], words=("no contact matches",))  # too short
    contact_error(book.resolve, Identity.generate().address, words=("no contact matches",))
    typo = bob.address[:20] + ("a" if bob.address[20] != "a" else "b") + bob.address[21:]
    contact_error(book.resolve, typo, words=("no contact matches",))


# --------------------------------------------------------- rename, remove, flags

def test_rename(book: ContactBook) -> None:
    ann = person(book, "Ann")
    person(book, "Bob")
    book.rename(ann.public.key, "  Ann \t  Lee ")
    assert book.get(ann.public.key).petname == "Ann Lee"  # type: ignore[union-attr]
    book.rename(ann.public.key, "ANN LEE")  # its own name in another case is fine
    assert book.resolve("ann lee").petname == "ANN LEE"
    book.rename(ann.public.key, "x" * MAX_PETNAME)
    for bad in ("", "   ", "x" * (MAX_PETNAME + 1)):
        contact_error(book.rename, ann.public.key, bad, words=(f"1 to {MAX_PETNAME}",))
    for taken in ("Bob", "bob", " BOB "):
        contact_error(book.rename, ann.public.key, taken, words=("already called",))
    assert book.get(ann.public.key).petname == "x" * MAX_PETNAME  # type: ignore[union-attr]


def test_remove(book: ContactBook) -> None:
    ann = person(book, "Ann")
    bob = person(book, "Bob")
    book.remove(ann.public.key)
    assert book.get(ann.public.key) is None
    assert [c.identity for c in book.all()] == [bob.public.key]
    book.remove(ann.public.key)  # twice: nothing happens
    contact_error(book.resolve, "ann", words=("no contact matches",))
    # Removed, then added again: a fresh contact with the card's name.
    assert book.add(card(ann, "Ann"), source="link", now=NOW).source == "link"


def test_flags_and_touch(book: ContactBook) -> None:
    ann = person(book, "Ann")
    key = ann.public.key
    book.set_flag(key, "blocked", True)
    assert book.get(key).blocked is True  # type: ignore[union-attr]
    book.set_flag(key, "verified", True)
    got = book.get(key)
    assert got is not None and got.verified is True and got.blocked is True
    book.set_flag(key, "blocked", False)
    got = book.get(key)
    assert got is not None and got.blocked is False and got.verified is True
    with pytest.raises(KeyError):
        book.set_flag(key, "petname", True)  # type: ignore[arg-type]
    book.touch(key, NOW + 5)
    assert book.get(key).last_seen == NOW + 5  # type: ignore[union-attr]


# ------------------------------------------------------------------- requests

def test_requests_in_and_out(book: ContactBook) -> None:
    bob, carl = Identity.generate(), Identity.generate()
    rid = book.add_request(card(bob, "Bob"), direction="in", message="hi, Bob here",
                           via="nearby", now=NOW)
    out_id = book.add_request(card(carl, "Carl"), direction="out", message="hello",
                              via="link", now=NOW + 1)
    assert rid != out_id
    (incoming,) = book.requests("in")
    assert incoming.id == rid and incoming.identity == bob.public.key
    assert incoming.direction == "in" and incoming.card.name == "Bob"
    assert incoming.message == "hi, Bob here" and incoming.via == "nearby"
    assert incoming.received_at == NOW
    assert book.request(rid) == incoming
    (outgoing,) = book.requests("out")
    assert outgoing.identity == carl.public.key and book.outgoing_request(carl.public.key)
    assert book.outgoing_request(bob.public.key) is None  # Bob's is incoming
    assert book.request(12345) is None
    me = PublicIdentity(b"\x02" * 32)
    info = incoming.as_dict(me)
    assert info["name"] == "Bob" and info["address"] == bob.address
    assert info["safety_words"] == safety_words(me, bob.public)
    assert info["message"] == "hi, Bob here" and info["direction"] == "in"

    book.delete_request(rid)
    assert book.requests("in") == [] and book.requests("out") == [outgoing]
    book.delete_requests_of(carl.public.key)
    assert book.requests("out") == []


def test_a_newer_request_replaces_the_older(book: ContactBook) -> None:
    bob = Identity.generate()
    first = book.add_request(card(bob, "Bob", 1), direction="in", message="one", via="nearby",
                             now=NOW)
    second = book.add_request(card(bob, "Bob B", 2), direction="in", message="two",
                              via="link", now=NOW + 9)
    assert second == first
    (request,) = book.requests("in")
    assert request.message == "two" and request.card.name == "Bob B"
    assert request.via == "link" and request.received_at == NOW + 9
    # The same identity in the other direction is a separate request.
    book.add_request(card(bob, "Bob"), direction="out", message="", via="nearby", now=NOW)
    assert len(book.requests("in")) == len(book.requests("out")) == 1
    book.delete_requests_of(bob.public.key)
    assert book.requests("in") == book.requests("out") == []


def test_a_forged_request_card_is_not_stored(book: ContactBook) -> None:
    data = card(Identity.generate(), "Bob").replace(b"Bob", b"Eve")
    with pytest.raises(InvalidCard):
        book.add_request(data, direction="in", message="", via="nearby", now=NOW)
    assert book.requests("in") == []


def test_pending_requests_are_capped(book: ContactBook) -> None:
    first = Identity.generate()
    book.add_request(card(first, "First"), direction="in", message="", via="nearby", now=NOW)
    for _ in range(MAX_PENDING_REQUESTS - 1):
        book.add_request(card(Identity.generate(), "x"), direction="in", message="",
                         via="nearby", now=NOW)
    assert len(book.requests("in")) == MAX_PENDING_REQUESTS
    with pytest.raises(ContactError, match="too many contact requests"):
        book.add_request(card(Identity.generate(), "one more"), direction="in", message="",
                         via="nearby", now=NOW)
    assert len(book.requests("in")) == MAX_PENDING_REQUESTS
    # Someone already waiting may still send a newer request: it replaces theirs.
    book.add_request(card(first, "First", 2), direction="in", message="again", via="nearby",
                     now=NOW + 1)
    assert book.requests("in")[0].message == "again"
    # Our own outgoing requests are not capped by strangers' requests.
    book.add_request(card(Identity.generate(), "out"), direction="out", message="",
                     via="nearby", now=NOW)
    # Answering one makes room again.
    book.delete_request(book.requests("in")[-1].id)
    book.add_request(card(Identity.generate(), "late"), direction="in", message="",
                     via="nearby", now=NOW)
    assert len(book.requests("in")) == MAX_PENDING_REQUESTS


# ---------------------------------------------------------------- link tokens

def test_link_tokens_are_single_use(book: ContactBook) -> None:
    token, other = b"t" * 16, b"u" * 16
    book.add_token(token, NOW, 60)
    book.add_token(other, NOW, 60)
    assert book.use_token(b"x" * 16, NOW) is False  # never issued
    assert book.use_token(token, NOW + 1) is True
    assert book.use_token(token, NOW + 2) is False  # spent
    assert book.use_token(other, NOW + 60) is True  # the last moment still counts


def test_link_tokens_expire(book: ContactBook) -> None:
    token = b"e" * 16
    book.add_token(token, NOW, 60)
    assert book.use_token(token, NOW + 61) is False
    book.add_token(token, NOW, 60)  # an expired token is gone (spent by the attempt)
    assert book.use_token(token, NOW + 30) is True


def test_the_book_survives_a_reopen(tmp_path: Path) -> None:
    db = Database(tmp_path)
    try:
        ann = person(ContactBook(db), "Ann")
        ContactBook(db).add_token(b"k" * 16, NOW, 60)
    finally:
        db.close()
    db = Database(tmp_path)
    try:
        book = ContactBook(db)
        assert book.resolve("ann").identity == ann.public.key
        assert book.use_token(b"k" * 16, NOW) is True
    finally:
        db.close()
