"""Sealed envelopes: mail a broker holds for an offline recipient without reading it.

An envelope is encrypted to the recipient's Noise static key (X25519) with a fresh
ephemeral key, and signed inside by the sender's identity key, so the broker that
stores it learns its size and timing, not who sent it or what it says::

    envelope = MAGIC || ephemeral_public(32) || ChaCha20-Poly1305(key, nonce 0, inner,
                                                                    aad = MAGIC || eph || recipient)
    key      = BLAKE2b-256(X25519(eph, recipient_static) || eph || recipient_static,
                           person = "sidedoor-mail-v1")
    inner    = msgpack [sender identity, kind, payload, signature]
    signature over (recipient identity || eph || kind || BLAKE2b(payload))

The key is used once, so a zero nonce is safe. Signing the ephemeral key binds the
sender's signature to this one envelope: a recipient cannot re-seal it to someone
else as if the sender had written to them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Final

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sidedoor.errors import DecryptError, MessageError
from sidedoor.identity import Identity, PublicIdentity, SignatureDomain

MAGIC: Final = b"sdm1"
HEADER_LEN: Final = len(MAGIC) + 32
MAX_KIND_LEN: Final = 32
# The largest envelope a broker accepts; payloads are kept well below it.
MAX_ENVELOPE: Final = 320 << 10
_NONCE: Final = bytes(12)


class _Inner(msgspec.Struct, array_like=True, frozen=True):
    sender: bytes
    kind: str
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class Opened:
    sender: PublicIdentity
    kind: str
    payload: bytes


def _key(shared: bytes, eph: bytes, static: bytes) -> bytes:
    return hashlib.blake2b(shared + eph + static, digest_size=32,
                           person=b"sidedoor-mail-v1").digest()


def _signed(recipient: bytes, eph: bytes, kind: str, payload: bytes) -> bytes:
    return recipient + eph + kind.encode() + b"\x00" + hashlib.blake2b(payload).digest()


def seal(sender: Identity, recipient: bytes, recipient_static: bytes, kind: str,
         payload: bytes, *, ephemeral: bytes | None = None) -> bytes:
    """An envelope only the holder of ``recipient_static`` can open."""
    if not 0 < len(kind) <= MAX_KIND_LEN:
        raise ValueError(f"a mail kind has 1 to {MAX_KIND_LEN} characters")
    eph_private = X25519PrivateKey.from_private_bytes(ephemeral or os.urandom(32))
    eph = eph_private.public_key().public_bytes_raw()
    shared = eph_private.exchange(X25519PublicKey.from_public_bytes(recipient_static))
    signature = sender.sign(SignatureDomain.MAIL_ENVELOPE, _signed(recipient, eph, kind, payload))
    inner = msgspec.msgpack.encode(_Inner(sender.public.key, kind, payload, signature))
    box = ChaCha20Poly1305(_key(shared, eph, recipient_static))
    envelope = MAGIC + eph + box.encrypt(_NONCE, inner, MAGIC + eph + recipient)
    if len(envelope) > MAX_ENVELOPE:
        raise ValueError(f"the sealed envelope is over {MAX_ENVELOPE} bytes")
    return envelope


def open_envelope(recipient: Identity, envelope: bytes) -> Opened:
    """The sender, kind and payload; `DecryptError` if it was not sealed for us or was
    altered, `MessageError` if its inside is malformed or its signature is bad."""
    if len(envelope) < HEADER_LEN + 16 or envelope[:len(MAGIC)] != MAGIC:
        raise MessageError("not a sealed envelope")
    eph = envelope[len(MAGIC):HEADER_LEN]
    private = X25519PrivateKey.from_private_bytes(recipient.noise_private)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph))
        box = ChaCha20Poly1305(_key(shared, eph, recipient.noise_public))
        inner_bytes = box.decrypt(_NONCE, envelope[HEADER_LEN:],
                                  MAGIC + eph + recipient.public.key)
    except (InvalidTag, ValueError) as exc:
        raise DecryptError("an envelope that was not sealed for us, or was altered") from exc
    try:
        inner = msgspec.msgpack.decode(inner_bytes, type=_Inner)
        sender = PublicIdentity(inner.sender)
    except (msgspec.MsgspecError, ValueError) as exc:
        raise MessageError(f"a malformed envelope: {exc}") from exc
    if not 0 < len(inner.kind) <= MAX_KIND_LEN:
        raise MessageError("an envelope with a bad kind")
    signed = _signed(recipient.public.key, eph, inner.kind, inner.payload)
    if not sender.verify(SignatureDomain.MAIL_ENVELOPE, signed, inner.signature):
        raise MessageError("an envelope whose sender signature does not verify (forged)")
    return Opened(sender, inner.kind, inner.payload)
