"""Signed contact cards: what a node hands a new contact, and every way a card can be bad."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidedoor.cards import (
    CARD_VERSION,
    MAX_ADDRS,
    MAX_BROKERS,
    MAX_CARD_BYTES,
    MAX_NAME_LEN,
    ContactCard,
    SignedCard,
    card_from_text,
    card_to_text,
    make_card,
    open_card,
)
from sidedoor.errors import InvalidCard, RemoteProtocolError
from sidedoor.identity import Identity, SignatureDomain
from sidedoor.names import clean_name

ADDRS = ["127.0.0.1:7070", "[fe80::1]:7070"]
BROKERS = ["https://broker.example/"]


@pytest.fixture(scope="module")
def me() -> Identity:
    return Identity.generate()


def card_of(who: Identity, **fields: object) -> ContactCard:
    """A card as `make_card` would build it, with some fields changed (no cleaning)."""
    base: dict[str, object] = {
        "version": CARD_VERSION, "identity": who.public.key,
        "noise_static": who.noise_public, "name": "Ann", "addrs": list(ADDRS),
        "brokers": list(BROKERS), "issued_at": 1_700_000_000,
    }
    base.update(fields)
    return ContactCard(**base)  # type: ignore[arg-type]


def sign(identity: Identity, card: ContactCard) -> bytes:
    """Sign any card properly, bypassing the checks of `make_card`."""
    body = msgspec.msgpack.encode(card)
    return msgspec.msgpack.encode(
        SignedCard(body, identity.sign(SignatureDomain.CONTACT_CARD, body)))


def refused(data: bytes, *words: str) -> str:
    with pytest.raises(InvalidCard) as info:
        open_card(data)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    return message


# --------------------------------------------------------------- round trip

def test_make_and_open(me: Identity) -> None:
    data = make_card(me, "  Ann   Lee ", ADDRS, BROKERS, 1_700_000_000)
    assert len(data) <= MAX_CARD_BYTES
    card = open_card(data)
    assert card.version == CARD_VERSION
    assert card.identity == me.public.key and card.public == me.public
    assert card.noise_static == me.noise_public
    assert card.name == "Ann Lee"  # cleaned before signing
    assert card.addrs == ADDRS and card.brokers == BROKERS
    assert card.issued_at == 1_700_000_000
    assert open_card(memoryview(data)) == card
    assert open_card(sign(me, card_of(me))) == card_of(me)


def test_make_card_trims_to_the_limits(me: Identity) -> None:
    addrs = [f"10.0.0.{i}:7070" for i in range(MAX_ADDRS + 5)]
    brokers = [f"https://b{i}.example/" for i in range(MAX_BROKERS + 3)]
    card = open_card(make_card(me, "x" * 200, addrs, brokers, 1))
    assert card.addrs == addrs[:MAX_ADDRS] and card.brokers == brokers[:MAX_BROKERS]
    assert card.name == "x" * MAX_NAME_LEN


def test_a_card_of_the_largest_allowed_size_opens(me: Identity) -> None:
    card = card_of(me, name="\U0001f600" * MAX_NAME_LEN, addrs=["a" * 64] * MAX_ADDRS,
                   brokers=["b" * 200] * MAX_BROKERS)
    data = sign(me, card)
    assert len(data) <= MAX_CARD_BYTES  # the limits fit in the size cap
    assert open_card(data) == card


# --------------------------------------------------------------- signatures

def test_a_flipped_signature_byte_is_refused(me: Identity) -> None:
    data = make_card(me, "Ann", ADDRS, [], 1)
    for index in (0, 31, 63):  # the signature is the last 64 bytes of the encoding
        damaged = bytearray(data)
        damaged[len(data) - 64 + index] ^= 0x01
        refused(bytes(damaged), "bad signature")
    signed = msgspec.msgpack.decode(data, type=SignedCard)
    refused(msgspec.msgpack.encode(SignedCard(signed.card, b"")), "bad signature")
    refused(msgspec.msgpack.encode(SignedCard(signed.card, signed.signature[:-1])),
            "bad signature")


def test_an_edited_card_body_is_refused(me: Identity) -> None:
    data = make_card(me, "Ann", ["127.0.0.1:7070"], [], 1)
    for old, new in ((b"Ann", b"Eve"), (b"127.0.0.1", b"10.9.8.7.")):
        assert data.count(old) == 1
        refused(data.replace(old, new), "bad signature")
    # Flip the lowest bit of the issued_at byte at the end of the body.
    signed = msgspec.msgpack.decode(data, type=SignedCard)
    body = bytearray(signed.card)
    body[-1] ^= 0x01
    refused(msgspec.msgpack.encode(SignedCard(bytes(body), signed.signature)), "bad signature")


def test_a_card_signed_by_someone_else_is_refused(me: Identity) -> None:
    mallory = Identity.generate()
    refused(sign(mallory, card_of(me)), "forged")  # claims my identity, signed by another key
    # A signature from the right key, but for another purpose (the Noise proof domain).
    body = msgspec.msgpack.encode(card_of(me))
    wrong_domain = me.sign(SignatureDomain.NOISE_STATIC, body)
    refused(msgspec.msgpack.encode(SignedCard(body, wrong_domain)), "bad signature")


def test_invalid_card_is_the_peers_error() -> None:
    assert issubclass(InvalidCard, RemoteProtocolError)


# ------------------------------------------------------------ size, version

def test_an_oversized_card_is_refused_before_decoding(me: Identity) -> None:
    data = sign(me, card_of(me, brokers=["b" * 1500] * 2))
    assert len(data) > MAX_CARD_BYTES
    refused(data, "over the limit")
    refused(b"\x00" * (MAX_CARD_BYTES + 1), "over the limit")


@pytest.mark.parametrize("version", [0, 2, 255, -1])
def test_an_unknown_version_is_refused(me: Identity, version: int) -> None:
    refused(sign(me, card_of(me, version=version)), f"unknown version {version}")


@pytest.mark.parametrize("field", ["identity", "noise_static"])
def test_keys_of_the_wrong_size_are_refused(me: Identity, field: str) -> None:
    for key in (b"", b"\x01" * 31, b"\x01" * 33):
        refused(sign(me, card_of(me, **{field: key})), "wrong size")


@pytest.mark.parametrize("name", [
    "Ann\x00", "Ann\x1b[31mred", "Ann\nLee", "\tAnn", "Ann\u200bLee", "Ann\u202eeeL",
    "Ann\x7f", " Ann", "Ann ", "Ann  Lee", "x" * (MAX_NAME_LEN + 1),
], ids=["nul", "escape", "newline", "tab", "zero-width", "bidi", "del", "lead", "trail",
        "double-space", "too-long"])
def test_names_that_are_not_clean_are_refused(me: Identity, name: str) -> None:
    refused(sign(me, card_of(me, name=name)), "name")


def test_too_many_or_too_long_addrs_are_refused(me: Identity) -> None:
    ok = [f"10.0.0.{i}:1" for i in range(MAX_ADDRS)]
    assert open_card(sign(me, card_of(me, addrs=ok))).addrs == ok
    refused(sign(me, card_of(me, addrs=[*ok, "10.0.1.1:1"])), "too many")
    refused(sign(me, card_of(me, addrs=["a" * 65])), "too long")
    refused(sign(me, card_of(me, brokers=["https://b/"] * (MAX_BROKERS + 1))), "broker")
    refused(sign(me, card_of(me, brokers=["b" * 201])), "broker")


@pytest.mark.parametrize("data", [
    b"", b"\xc0", b"\x92", b"\x92\xc4\x00", b"\x91\xc4\x01a",  # empty, nil, truncated arrays
    msgspec.msgpack.encode(["card", "sig"]),  # str, not bin
    msgspec.msgpack.encode([b"\x93\x01\x02\x03", b"s" * 64]),  # a body that is no card
    msgspec.msgpack.encode([b"\xff" * 10, b"s" * 64]),
    msgspec.msgpack.encode({"card": b"", "signature": b""}),
], ids=["empty", "nil", "array-short", "one-bin", "one-elem", "str", "short-body",
        "junk-body", "map"])
def test_malformed_bytes_are_invalid_card(data: bytes) -> None:
    refused(data, "malformed")


def test_a_body_with_invalid_utf8_in_the_name_is_refused(me: Identity) -> None:
    body = bytearray(msgspec.msgpack.encode(card_of(me, name="Ann")))
    index = body.index(b"Ann")
    body[index : index + 3] = b"\xff\xfe\xfd"
    signed = SignedCard(bytes(body), me.sign(SignatureDomain.CONTACT_CARD, bytes(body)))
    refused(msgspec.msgpack.encode(signed), "malformed")


# -------------------------------------------------------------------- text

def test_card_text_round_trip(me: Identity) -> None:
    data = make_card(me, "Ann", ADDRS, BROKERS, 1)
    text = card_to_text(data)
    assert "=" not in text and "+" not in text and "/" not in text  # URL-safe, unpadded
    assert card_from_text(text) == data
    for raw in (b"", b"a", b"ab", b"abc", bytes(range(256))):
        assert card_from_text(card_to_text(raw)) == raw


def test_damaged_card_text(me: Identity) -> None:
    data = make_card(me, "Ann", ADDRS, BROKERS, 1)
    text = card_to_text(data)
    cut = text[: len(text) - (len(text) % 4) - 3]  # 4n + 1 characters: not base64
    for bad in ("abcde", "A", cut, "é" + text):
        with pytest.raises(InvalidCard, match="damaged"):
            card_from_text(bad)
    with pytest.raises(InvalidCard, match="too long"):
        card_from_text("A" * (MAX_CARD_BYTES * 2 + 1))
    # Text that still decodes, but not to the card: cut short, or one character changed.
    for bad in (text[: len(text) // 2], text[:40] + ("B" if text[40] != "B" else "C")
                + text[41:]):
        with pytest.raises(InvalidCard):
            open_card(card_from_text(bad))


# -------------------------------------------------------------- clean_name

@pytest.mark.parametrize(("raw", "clean"), [
    ("Ann", "Ann"),
    ("  Ann   Lee  ", "Ann Lee"),
    ("Ann\tLee\nSmith", "Ann Lee Smith"),  # whitespace of any kind separates words
    ("Ann\x00\x1b[31m", "Ann[31m"),  # control characters go
    ("A\u200bnn\u202e", "Ann"),  # format characters (zero-width, bidi overrides) go
    ("Zoë 🙂 Ünal", "Zoë 🙂 Ünal"),  # letters and symbols of any script stay
    ("\x00\x01\n ", ""),
    ("x" * 100, "x" * MAX_NAME_LEN),
    ("a" * (MAX_NAME_LEN - 1) + " b", "a" * (MAX_NAME_LEN - 1)),  # no space left at the end
])
def test_clean_name(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


_HYPOTHESIS_ID = Identity.generate()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_clean_name_is_what_open_card_accepts(raw: str) -> None:
    name = clean_name(raw)
    assert len(name) <= MAX_NAME_LEN
    assert clean_name(name) == name  # idempotent
    assert open_card(make_card(_HYPOTHESIS_ID, raw, [], [], 1)).name == name
