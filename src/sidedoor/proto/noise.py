"""The Noise handshake (Noise Protocol Framework, revision 34), sans-I/O.

Exactly two protocols are implemented, nothing is negotiable::

    Noise_XX_25519_ChaChaPoly_BLAKE2s        Noise_IK_25519_ChaChaPoly_BLAKE2s
      -> e                                     <- s
      <- e, ee, s, es                          ...
      -> s, se                                 -> e, es, s, ss
                                               <- e, ee, se

Nothing here touches a socket, a clock or a random number generator: the
caller passes the ephemeral private key in, and moves the bytes.

Message sizes are fixed given the payload (``p`` bytes of payload)::

    XX  1: 32 + p          (e, payload in clear)
        2: 96 + p          (e, encrypted s + tag, payload + tag)
        3: 64 + p          (encrypted s + tag, payload + tag)
    IK  1: 96 + p          (e, encrypted s + tag, payload + tag)
        2: 48 + p          (e, payload + tag)

Errors: bad bytes from the peer (bad MAC, short or over-long message, a
low-order X25519 key) raise ``HandshakeFailed``; a transport message that does
not authenticate raises ``DecryptError``; using the API out of turn raises
``LocalProtocolError``. No ``cryptography`` exception escapes this module.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sidedoor.errors import DecryptError, HandshakeFailed, LocalProtocolError

__all__ = [
    "DH_LEN",
    "HASH_LEN",
    "KEY_LEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "TAG_LEN",
    "CipherState",
    "HandshakeState",
    "Pattern",
    "message_overhead",
    "protocol_name",
    "x25519_public",
]

MAX_MESSAGE_LEN = 65535
"""No Noise message, handshake or transport, may be longer than this."""
TAG_LEN = 16
"""Poly1305 tag length."""
DH_LEN = 32
"""X25519 public key and shared secret length."""
HASH_LEN = 32
"""BLAKE2s digest length."""
KEY_LEN = 32
"""ChaCha20-Poly1305 key length."""
MAX_NONCE = 2**64 - 1
"""Reserved nonce: a CipherState refuses to use it instead of wrapping around."""

_NONCE = struct.Struct("<4xQ").pack  # 4 zero bytes + little-endian u64, as the spec's ChaChaPoly
_MAX_PLAINTEXT = MAX_MESSAGE_LEN - TAG_LEN


class Pattern(enum.Enum):
    XX = "XX"
    IK = "IK"


# The message patterns, one tuple of tokens per handshake message. Messages alternate,
# starting with the initiator. The IK pre-message "<- s" is handled in HandshakeState.__init__.
_MESSAGES: dict[Pattern, tuple[tuple[str, ...], ...]] = {
    Pattern.XX: (("e",), ("e", "ee", "s", "es"), ("s", "se")),
    Pattern.IK: (("e", "es", "s", "ss"), ("e", "ee", "se")),
}

# Bytes each message adds to its payload (see the module docstring). A received message
# shorter than this is rejected before any cryptography is done.
_OVERHEAD: dict[Pattern, tuple[int, ...]] = {
    Pattern.XX: (DH_LEN, DH_LEN + DH_LEN + TAG_LEN + TAG_LEN, DH_LEN + TAG_LEN + TAG_LEN),
    Pattern.IK: (DH_LEN + DH_LEN + TAG_LEN + TAG_LEN, DH_LEN + TAG_LEN),
}


def protocol_name(pattern: Pattern) -> bytes:
    """The full Noise protocol name, e.g. ``b"Noise_XX_25519_ChaChaPoly_BLAKE2s"``."""
    return f"Noise_{pattern.value}_25519_ChaChaPoly_BLAKE2s".encode("ascii")


def message_overhead(pattern: Pattern, index: int) -> int:
    """Length of handshake message ``index`` (0-based) of ``pattern`` with an empty payload."""
    return _OVERHEAD[pattern][index]


def _private_key(private: bytes, what: str) -> X25519PrivateKey:
    if len(private) != DH_LEN:
        raise LocalProtocolError(f"{what} must be {DH_LEN} bytes, got {len(private)}")
    return X25519PrivateKey.from_private_bytes(bytes(private))


def x25519_public(private: bytes) -> bytes:
    """The raw 32-byte X25519 public key of a raw 32-byte private key."""
    return _private_key(private, "an X25519 private key").public_key().public_bytes_raw()


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """HKDF(chaining_key, input_key_material, 2) from section 4.3 of the spec, HMAC-BLAKE2s."""
    temp_key = hmac.digest(chaining_key, input_key_material, "blake2s")
    output1 = hmac.digest(temp_key, b"\x01", "blake2s")
    output2 = hmac.digest(temp_key, output1 + b"\x02", "blake2s")
    return output1, output2


class CipherState:
    """A ChaCha20-Poly1305 key and a 64-bit nonce (section 5.1 of the spec).

    Without a key, ``encrypt_with_ad``/``decrypt_with_ad`` pass the data through
    unchanged, as the spec says (this happens for XX's first message). The
    transport shortcuts ``encrypt``/``decrypt`` refuse to work without a key.
    """

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != KEY_LEN:
            raise LocalProtocolError(f"a cipher key must be {KEY_LEN} bytes, got {len(key)}")
        self._aead: ChaCha20Poly1305 | None = None if key is None else ChaCha20Poly1305(key)
        self.n: int = 0

    def has_key(self) -> bool:
        return self._aead is not None

    def _keyed(self) -> ChaCha20Poly1305:
        if self._aead is None:
            raise LocalProtocolError("this CipherState has no key; it cannot carry transport data")
        return self._aead

    def _send_nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("the sending nonce is exhausted; the session must end")
        return _NONCE(self.n)

    def _open(
        self, aead: ChaCha20Poly1305, ciphertext: bytes | bytearray | memoryview, ad: bytes | None
    ) -> bytes:
        """Decrypt and authenticate; the nonce only advances on success."""
        n = self.n
        if n >= MAX_NONCE:
            raise DecryptError("the receiving nonce is exhausted; the session must end")
        try:
            plaintext = aead.decrypt(_NONCE(n), ciphertext, ad)
        except (InvalidTag, ValueError) as exc:
            raise DecryptError(
                f"message {n} failed authentication (forged, replayed or out of order)"
            ) from exc
        self.n = n + 1
        return plaintext

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        aead = self._aead
        if aead is None:
            return bytes(plaintext)
        ciphertext = aead.encrypt(self._send_nonce(), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and authenticate; the nonce only advances on success."""
        aead = self._aead
        if aead is None:
            return bytes(ciphertext)
        return self._open(aead, ciphertext, ad)

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt one transport message (empty associated data)."""
        aead = self._keyed()
        if len(plaintext) > _MAX_PLAINTEXT:
            raise LocalProtocolError(
                f"a transport payload is at most {_MAX_PLAINTEXT} bytes, got {len(plaintext)}"
            )
        ciphertext = aead.encrypt(self._send_nonce(), plaintext, None)
        self.n += 1
        return ciphertext

    def encrypt_in_place(self, buf: memoryview) -> None:
        """Encrypt ``buf[:-TAG_LEN]`` where it lies, writing the tag into the last 16 bytes.

        The bulk-data path: the session lays out plaintext in its output buffer and
        encrypts it there, sparing two copies of every 64 KiB message.
        """
        aead = self._keyed()
        size = len(buf) - TAG_LEN
        if not 0 <= size <= _MAX_PLAINTEXT:
            raise LocalProtocolError(f"a transport payload is at most {_MAX_PLAINTEXT} bytes")
        aead.encrypt_into(self._send_nonce(), buf[:size], None, buf)
        self.n += 1

    def decrypt(self, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """Decrypt one transport message (raises DecryptError); the nonce advances on success."""
        aead = self._keyed()
        size = len(ciphertext)
        if size > MAX_MESSAGE_LEN or size < TAG_LEN:
            raise DecryptError(
                f"a transport message is {TAG_LEN} to {MAX_MESSAGE_LEN} bytes, got {size}"
            )
        return self._open(aead, ciphertext, None)


class HandshakeState:
    """One side of one Noise handshake (sections 5.2 and 5.3 of the spec).

    Call ``write_message`` and ``read_message`` in turn (``is_my_turn`` says
    which); once ``complete``, call ``split`` once for the transport ciphers.
    After a ``HandshakeFailed`` the object is dead: every further call raises
    ``LocalProtocolError``.
    """

    def __init__(
        self,
        pattern: Pattern,
        initiator: bool,
        static_private: bytes,
        ephemeral_private: bytes,
        *,
        prologue: bytes = b"",
        remote_static: bytes | None = None,
    ) -> None:
        if not isinstance(pattern, Pattern):
            raise LocalProtocolError(f"unknown Noise pattern {pattern!r}")
        needs_remote_static = pattern is Pattern.IK and initiator
        if needs_remote_static:
            if remote_static is None or len(remote_static) != DH_LEN:
                raise LocalProtocolError(
                    f"an IK initiator needs the responder's {DH_LEN}-byte static public key"
                )
        elif remote_static is not None:
            raise LocalProtocolError(
                f"remote_static is only given to an IK initiator, not to a {pattern.value} "
                f"{'initiator' if initiator else 'responder'}"
            )

        self._pattern = pattern
        self._initiator = initiator
        self._messages = _MESSAGES[pattern]
        self._s = _private_key(static_private, "static_private")
        self._s_pub = self._s.public_key().public_bytes_raw()
        self._e = _private_key(ephemeral_private, "ephemeral_private")
        self._e_pub = self._e.public_key().public_bytes_raw()
        self._rs: bytes | None = None if remote_static is None else bytes(remote_static)
        self._re: bytes | None = None
        self._step = 0  # index of the next handshake message
        self._failed = False
        self._split_done = False

        # InitializeSymmetric(protocol_name)
        name = protocol_name(pattern)
        self._h = name.ljust(HASH_LEN, b"\x00") if len(name) <= HASH_LEN else _hash(name)
        self._ck = self._h
        self._cs = CipherState()
        self._mix_hash(bytes(prologue))
        # Pre-message "<- s" of IK: both sides hash the responder's static public key.
        if pattern is Pattern.IK:
            responder_static = self._rs if initiator else self._s_pub
            assert responder_static is not None
            self._mix_hash(responder_static)

    # -- public API ------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._step == len(self._messages)

    @property
    def is_my_turn(self) -> bool:
        """True if the next call must be ``write_message``."""
        if self._failed or self.complete:
            return False
        return (self._step % 2 == 0) == self._initiator

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known (from the start for an IK initiator)."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """``h``: after completion, a unique identifier of this handshake (channel binding)."""
        return self._h

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message, carrying ``payload``.

        Can raise ``HandshakeFailed`` too, when a key the peer sent earlier turns out to be a
        low-order point (the XX responder first uses the initiator's ephemeral key here).
        """
        self._check_turn(writing=True)
        size = _OVERHEAD[self._pattern][self._step] + len(payload)
        if size > MAX_MESSAGE_LEN:
            raise LocalProtocolError(
                f"{self._where()}: payload of {len(payload)} bytes makes a {size}-byte message, "
                f"over the {MAX_MESSAGE_LEN}-byte limit"
            )
        parts: list[bytes] = []
        try:
            for token in self._messages[self._step]:
                if token == "e":
                    parts.append(self._e_pub)
                    self._mix_hash(self._e_pub)
                elif token == "s":
                    parts.append(self._encrypt_and_hash(self._s_pub))
                else:
                    self._mix_dh(token)
            parts.append(self._encrypt_and_hash(bytes(payload)))
        except HandshakeFailed:
            self._failed = True
            raise
        self._step += 1
        message = b"".join(parts)
        assert len(message) == size
        return message

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload."""
        self._check_turn(writing=False)
        try:
            return self._read(bytes(message))
        except HandshakeFailed:
            self._failed = True
            raise

    def split(self) -> tuple[CipherState, CipherState]:
        """The transport ciphers ``(send, receive)`` for this side; once, and only when complete."""
        if not self.complete:
            raise LocalProtocolError("split() before the handshake is complete")
        if self._split_done:
            raise LocalProtocolError("split() was already called for this handshake")
        self._split_done = True
        k1, k2 = _hkdf2(self._ck, b"")
        c1, c2 = CipherState(k1), CipherState(k2)
        return (c1, c2) if self._initiator else (c2, c1)

    # -- internals -------------------------------------------------------------------------

    def _where(self) -> str:
        return f"Noise {self._pattern.value} message {self._step + 1} of {len(self._messages)}"

    def _check_turn(self, *, writing: bool) -> None:
        verb = "write_message" if writing else "read_message"
        if self._failed:
            raise LocalProtocolError(f"{verb}() after the handshake failed")
        if self.complete:
            raise LocalProtocolError(f"{verb}() after the handshake is complete")
        if self.is_my_turn != writing:
            raise LocalProtocolError(
                f"{verb}() out of turn: {self._where()} is the "
                f"{'initiator' if self._step % 2 == 0 else 'responder'}'s to write"
            )

    def _read(self, message: bytes) -> bytes:
        size = len(message)
        if size > MAX_MESSAGE_LEN:
            raise HandshakeFailed(
                f"{self._where()}: {size} bytes is over the {MAX_MESSAGE_LEN}-byte limit"
            )
        minimum = _OVERHEAD[self._pattern][self._step]
        if size < minimum:
            raise HandshakeFailed(
                f"{self._where()}: {size} bytes is too short (at least {minimum})"
            )
        offset = 0
        for token in self._messages[self._step]:
            if token == "e":
                self._re = message[offset : offset + DH_LEN]
                offset += DH_LEN
                self._mix_hash(self._re)
            elif token == "s":
                length = DH_LEN + TAG_LEN if self._cs.has_key() else DH_LEN
                self._rs = self._decrypt_and_hash(
                    message[offset : offset + length], "the sender's static key"
                )
                offset += length
            else:
                self._mix_dh(token)
        payload = self._decrypt_and_hash(message[offset:], "the payload")
        self._step += 1
        return payload

    def _mix_hash(self, data: bytes) -> None:
        self._h = _hash(self._h + data)

    def _mix_key(self, input_key_material: bytes) -> None:
        self._ck, temp_k = _hkdf2(self._ck, input_key_material)
        self._cs = CipherState(temp_k)

    def _mix_dh(self, token: str) -> None:
        # "es" is always DH(initiator's e, responder's s); "se" the other way round.
        if token == "ee":
            local, remote = self._e, self._re
        elif token == "ss":
            local, remote = self._s, self._rs
        elif token == "es":
            local, remote = (self._e, self._rs) if self._initiator else (self._s, self._re)
        elif token == "se":
            local, remote = (self._s, self._re) if self._initiator else (self._e, self._rs)
        else:  # pragma: no cover - the pattern tables hold no other token
            raise LocalProtocolError(f"unknown Noise token {token!r}")
        if remote is None:  # pragma: no cover - impossible for XX and IK
            raise LocalProtocolError(f"{self._where()}: token {token!r} before its key is known")
        try:
            shared = local.exchange(X25519PublicKey.from_public_bytes(remote))
        except ValueError as exc:
            raise HandshakeFailed(
                f"{self._where()}: the peer's X25519 key is a low-order point "
                f"(all-zero shared secret in {token!r})"
            ) from exc
        self._mix_key(shared)

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self._cs.encrypt_with_ad(self._h, plaintext)
        self._mix_hash(ciphertext)
        return ciphertext

    def _decrypt_and_hash(self, ciphertext: bytes, what: str) -> bytes:
        try:
            plaintext = self._cs.decrypt_with_ad(self._h, ciphertext)
        except DecryptError as exc:
            raise HandshakeFailed(
                f"{self._where()}: {what} failed authentication (bad MAC: wrong key, "
                "tampered or truncated message)"
            ) from exc
        self._mix_hash(ciphertext)
        return plaintext
