"""Sealed envelopes: only the recipient opens them; tampering and forgery are caught."""

from __future__ import annotations

import pytest

from sidedoor.errors import DecryptError, MessageError
from sidedoor.identity import Identity
from sidedoor.proto.envelope import MAX_ENVELOPE, open_envelope, seal

ALICE, BOB, EVE = Identity.generate(), Identity.generate(), Identity.generate()


def sealed(payload: bytes = b"lunch at 12?", kind: str = "chat") -> bytes:
    return seal(ALICE, BOB.public.key, BOB.noise_public, kind, payload)


def test_the_recipient_opens_it_and_learns_the_sender() -> None:
    opened = open_envelope(BOB, sealed())
    assert (opened.sender, opened.kind, opened.payload) == (ALICE.public, "chat", b"lunch at 12?")


def test_the_broker_sees_no_plaintext_and_no_sender() -> None:
    envelope = sealed(b"the quarterly numbers")
    assert b"quarterly" not in envelope and ALICE.public.key not in envelope
    assert sealed() != sealed()  # a fresh key each time: equal mail does not look equal


def test_someone_else_cannot_open_it() -> None:
    with pytest.raises(DecryptError):
        open_envelope(EVE, sealed())


@pytest.mark.parametrize("where", [0, 4, 40, -1])
def test_any_changed_byte_is_caught(where: int) -> None:
    envelope = bytearray(sealed())
    envelope[where] ^= 1
    with pytest.raises((DecryptError, MessageError)):
        open_envelope(BOB, bytes(envelope))


def test_a_forged_sender_is_caught() -> None:
    # Eve seals to Bob an inside that names Alice as the sender, signed by Eve.
    import msgspec

    from sidedoor.proto import envelope as env

    real = open_envelope(BOB, seal(EVE, BOB.public.key, BOB.noise_public, "chat", b"hi"))
    assert real.sender == EVE.public
    original = env._Inner

    class Forged(msgspec.Struct, array_like=True, frozen=True):
        sender: bytes
        kind: str
        payload: bytes
        signature: bytes

    def forge(sender: bytes, kind: str, payload: bytes, signature: bytes) -> object:
        return Forged(ALICE.public.key, kind, payload, signature)

    env._Inner = forge  # type: ignore[assignment,misc]
    try:
        forged = seal(EVE, BOB.public.key, BOB.noise_public, "chat", b"hi")
    finally:
        env._Inner = original  # type: ignore[misc]
    with pytest.raises(MessageError, match="forged"):
        open_envelope(BOB, forged)


def test_size_limits() -> None:
    with pytest.raises(ValueError, match="over"):
        sealed(b"x" * MAX_ENVELOPE)
    with pytest.raises(ValueError, match="kind"):
        sealed(kind="")
    with pytest.raises(MessageError):
        open_envelope(BOB, b"sdm1" + b"\x00" * 10)
