"""Contact cards: what a node tells a new contact about itself, signed by its identity.

A card holds the identity key, the Noise static key (so the contact can dial
with the one-round-trip IK handshake), a display name, the addresses it was last
reachable at and its home brokers. On the wire it is a `SignedCard`: the
msgpack bytes of a `ContactCard` and an Ed25519 signature over them under
`SignatureDomain.CONTACT_CARD`. Everything is bounded before it is decoded.
"""

from __future__ import annotations

import base64

import msgspec

from sidedoor.errors import InvalidCard
from sidedoor.identity import Identity, PublicIdentity, SignatureDomain
from sidedoor.names import MAX_NAME_LEN, clean_name

CARD_VERSION = 1
MAX_CARD_BYTES = 2048
MAX_ADDRS = 8
MAX_ADDR_LEN = 64
MAX_BROKERS = 4
MAX_BROKER_LEN = 200


class ContactCard(msgspec.Struct, array_like=True, frozen=True):
    version: int
    identity: bytes
    noise_static: bytes
    name: str
    addrs: list[str]
    brokers: list[str]
    issued_at: int

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(self.identity)


class SignedCard(msgspec.Struct, array_like=True, frozen=True):
    card: bytes
    signature: bytes


_encoder = msgspec.msgpack.Encoder()
_card_decoder = msgspec.msgpack.Decoder(ContactCard)
_signed_decoder = msgspec.msgpack.Decoder(SignedCard)


def make_card(
    identity: Identity, name: str, addrs: list[str], brokers: list[str], issued_at: int
) -> bytes:
    """The signed card of this node, as bytes ready for the wire."""
    card = ContactCard(
        CARD_VERSION, identity.public.key, identity.noise_public, clean_name(name),
        addrs[:MAX_ADDRS], brokers[:MAX_BROKERS], issued_at,
    )
    body = _encoder.encode(card)
    signed = SignedCard(body, identity.sign(SignatureDomain.CONTACT_CARD, body))
    return _encoder.encode(signed)


def open_card(data: bytes | memoryview) -> ContactCard:
    """Check a signed card from the wire; return the card, or raise `InvalidCard`."""
    if len(data) > MAX_CARD_BYTES:
        raise InvalidCard(f"a contact card of {len(data)} bytes is over the limit")
    try:
        signed = _signed_decoder.decode(data)
        card = _card_decoder.decode(signed.card)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise InvalidCard(f"a malformed contact card: {exc}") from exc
    if card.version != CARD_VERSION:
        raise InvalidCard(f"a contact card of unknown version {card.version}")
    if len(card.identity) != 32 or len(card.noise_static) != 32:
        raise InvalidCard("a contact card with keys of the wrong size")
    if len(card.name) > MAX_NAME_LEN or clean_name(card.name) != card.name:
        raise InvalidCard("a contact card whose name is too long or holds control characters")
    if len(card.addrs) > MAX_ADDRS or any(len(a) > MAX_ADDR_LEN for a in card.addrs):
        raise InvalidCard("a contact card with too many or too long addresses")
    if len(card.brokers) > MAX_BROKERS or any(len(b) > MAX_BROKER_LEN for b in card.brokers):
        raise InvalidCard("a contact card with too many or too long broker addresses")
    if not card.public.verify(SignatureDomain.CONTACT_CARD, signed.card, signed.signature):
        raise InvalidCard("a contact card with a bad signature (forged or damaged)")
    return card


def read_stored_card(data: bytes) -> ContactCard:
    """A card we checked when it arrived and stored: decoded without the checks again,
    so that a rule tightened in a later version cannot lock a user out of their contacts.
    """
    try:
        return _card_decoder.decode(_signed_decoder.decode(data).card)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise InvalidCard(f"a stored contact card is damaged: {exc}") from exc


def card_to_text(data: bytes) -> str:
    """Unpadded URL-safe base64, for links."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def card_from_text(text: str) -> bytes:
    if len(text) > MAX_CARD_BYTES * 2:
        raise InvalidCard("the card in this link is too long")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise InvalidCard("the card in this link is damaged (it was cut or changed)") from exc
