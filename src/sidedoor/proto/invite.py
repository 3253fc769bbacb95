"""Adding a colleague with an invite code (``7-guitar-orbit``), as a sans-I/O machine.

The two nodes already share an authenticated, encrypted Noise session: each
knows the other's Ed25519 identity key and the session's handshake hash. What
they do not know is whether the peer on this session is the person the code was
given to. This machine proves it, with SPAKE2 (the `spake2` package) over the
code's secret, bound to both identity keys and to the Noise session.

One machine per side: the JOINER (who typed the code) is SPAKE2 side A, the
INVITER (who made it) side B. Messages, each way, in this order::

    1. Pake     [1, pake]              pake: the SPAKE2 message, 33 bytes
    2. Confirm  [2, mac, sealed_card]  mac: 32 bytes; sealed_card: 16..4112 bytes

Both sides send message 1 at once (`start()`); each answers the peer's message 1
with its message 2 (`receive()` returns it) and checks the peer's message 2.
Keys, after SPAKE2 gives the shared key ``k``::

    th   = SHA-256 over length-prefixed fields: the protocol label, the nameplate,
           the joiner's identity key, the inviter's, the session binding (the
           Noise handshake hash), the joiner's message 1, the inviter's message 1
    okm  = HKDF-SHA256(ikm=k, salt=th, info="sidedoor invite keys v1", 128 bytes)
         = joiner confirm key | inviter confirm key | joiner card key | inviter card key
    mac  = HMAC-SHA256(sender's confirm key, "sidedoor invite confirm v1" || role || th)
    sealed_card = ChaCha20-Poly1305(sender's card key, nonce 0, own card,
                                    ad = "sidedoor invite card v1" || th)

Each key is used once, so the fixed nonce is safe; each direction has its own
keys, so a message 2 reflected back to its sender fails. A man in the middle who
relays the PAKE between two Noise sessions gets a different ``th`` on each side
(different handshake hashes and identities), so both confirmations fail even
though the code was right. See ``docs/invite.md``.

Errors, all raised by `start()` / `receive()`:

* `MessageError`: the bytes are not an invite message (too long, not msgpack,
  unknown type, a field of the wrong size) or arrive out of turn;
* `InviteFailed`: the cryptography said no: the SPAKE2 message was rejected
  (not a curve point, our own message reflected, the wrong side), the
  confirmation MAC did not match (wrong code, a guess, another session), or the
  card did not decrypt;
* `LocalProtocolError`: we misused the API (`receive()` before `start()`,
  `start()` twice, bad constructor arguments) or the machine already failed.

Any error ends the machine: its state becomes FAILED, and every later call
raises `LocalProtocolError`. The machine is single-use and so is the code: the
caller must retire the code as soon as `spent` is true (we answered a message 1,
or failed), done or not, so an attacker gets one guess per code. No clock here:
how long an invite stays open is the caller's business.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from typing import Annotated, Final

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B, SPAKEError
from spake2.ed25519_basic import NotOnCurve

from sidedoor.errors import InviteFailed, LocalProtocolError, MessageError
from sidedoor.invite_codes import InviteCode

__all__ = [
    "MAX_CARD_LEN",
    "MAX_MESSAGE_LEN",
    "RANDOM_LEN",
    "ConfirmMessage",
    "InviteMachine",
    "InviteMessage",
    "InviteRole",
    "InviteState",
    "PakeMessage",
    "decode_message",
    "encode_message",
]

MAX_CARD_LEN: Final = 4096
PAKE_LEN: Final = 33  # the side byte (b"A" / b"B") and a 32-byte Ed25519 group element
MAC_LEN: Final = 32
AEAD_TAG_LEN: Final = 16
KEY_LEN: Final = 32
IDENTITY_LEN: Final = 32
MIN_BINDING_LEN: Final = 32
MAX_BINDING_LEN: Final = 64
RANDOM_LEN: Final = 64  # what SPAKE2 draws for its scalar: 32 bytes plus 32 against bias
# The largest Confirm is 1 + 1 + (2 + 32) + (3 + 4112) = 4151 bytes of msgpack.
MAX_MESSAGE_LEN: Final = MAX_CARD_LEN + 128

_PROTOCOL: Final = b"sidedoor invite v1"
_KEYS_INFO: Final = b"sidedoor invite keys v1"
_CONFIRM_LABEL: Final = b"sidedoor invite confirm v1"
_CARD_LABEL: Final = b"sidedoor invite card v1"
_NONCE: Final = bytes(12)


class InviteRole(enum.Enum):
    INVITER = "inviter"  # made the code; SPAKE2 side B
    JOINER = "joiner"  # typed the code; SPAKE2 side A


class InviteState(enum.Enum):
    NEW = "new"  # start() not called yet
    WAIT_PAKE = "wait-pake"  # our message 1 is out; waiting for the peer's
    WAIT_CONFIRM = "wait-confirm"  # keys derived, our message 2 is out; waiting for the peer's
    DONE = "done"  # the peer proved the code; peer_card is set
    FAILED = "failed"  # something went wrong; the machine is dead


class _Input(enum.Enum):
    START = "start"
    PAKE = "pake"
    CONFIRM = "confirm"


# The whole protocol. Anything not in this table is an error (see `_next_state`).
_TRANSITIONS: Final[dict[tuple[InviteState, _Input], InviteState]] = {
    (InviteState.NEW, _Input.START): InviteState.WAIT_PAKE,
    (InviteState.WAIT_PAKE, _Input.PAKE): InviteState.WAIT_CONFIRM,
    (InviteState.WAIT_CONFIRM, _Input.CONFIRM): InviteState.DONE,
}


# ------------------------------------------------------------------ messages


class PakeMessage(msgspec.Struct, tag=1, array_like=True, frozen=True):
    """Message 1: the SPAKE2 message, as the `spake2` package makes it."""

    pake: Annotated[bytes, msgspec.Meta(min_length=PAKE_LEN, max_length=PAKE_LEN)]


class ConfirmMessage(msgspec.Struct, tag=2, array_like=True, frozen=True):
    """Message 2: proof that the sender holds the same key, and the sender's card, sealed."""

    mac: Annotated[bytes, msgspec.Meta(min_length=MAC_LEN, max_length=MAC_LEN)]
    sealed_card: Annotated[
        bytes,
        msgspec.Meta(min_length=AEAD_TAG_LEN, max_length=MAX_CARD_LEN + AEAD_TAG_LEN),
    ]


InviteMessage = PakeMessage | ConfirmMessage

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(InviteMessage)


def encode_message(message: InviteMessage) -> bytes:
    return _encoder.encode(message)


def decode_message(data: bytes | bytearray | memoryview) -> InviteMessage:
    """Decode one invite message; every size is checked. Raises `MessageError`.

    There is no rule for unknown message types: the invite is two fixed steps,
    so any other type is an error.
    """
    if len(data) > MAX_MESSAGE_LEN:
        raise MessageError(
            f"an invite message of {len(data)} bytes; the limit is {MAX_MESSAGE_LEN}"
        )
    try:
        message: InviteMessage = _decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed invite message: {exc}") from exc
    return message


# ------------------------------------------------------------------ machine


class InviteMachine:
    """One side of one invite run. Single-use: make a new one (and a new code) to retry."""

    def __init__(
        self,
        role: InviteRole,
        code: InviteCode,
        *,
        own_identity: bytes,
        peer_identity: bytes,
        session_binding: bytes,
        own_card: bytes,
        random: bytes,
    ) -> None:
        if not isinstance(role, InviteRole) or not isinstance(code, InviteCode):
            raise LocalProtocolError("an InviteMachine needs an InviteRole and an InviteCode")
        if len(own_identity) != IDENTITY_LEN or len(peer_identity) != IDENTITY_LEN:
            raise LocalProtocolError(f"identity keys are {IDENTITY_LEN} bytes")
        if own_identity == peer_identity:
            raise LocalProtocolError("an invite between a node and itself makes no sense")
        if not MIN_BINDING_LEN <= len(session_binding) <= MAX_BINDING_LEN:
            raise LocalProtocolError(
                f"the session binding (the Noise handshake hash) is {MIN_BINDING_LEN} to "
                f"{MAX_BINDING_LEN} bytes, got {len(session_binding)}"
            )
        if len(own_card) > MAX_CARD_LEN:
            raise LocalProtocolError(
                f"a card sent with an invite is at most {MAX_CARD_LEN} bytes, "
                f"this one is {len(own_card)}"
            )
        if len(random) < RANDOM_LEN:
            raise LocalProtocolError(
                f"an invite needs {RANDOM_LEN} random bytes, got {len(random)}"
            )
        self.role = role
        self.code = code
        self.state = InviteState.NEW
        self.peer_card: bytes | None = None
        self.error: Exception | None = None  # what ended the machine, once FAILED
        if role is InviteRole.JOINER:
            self._joiner_id, self._inviter_id = bytes(own_identity), bytes(peer_identity)
        else:
            self._joiner_id, self._inviter_id = bytes(peer_identity), bytes(own_identity)
        self._binding = bytes(session_binding)
        self._own_card = bytes(own_card)
        self._random = bytes(random)
        spake_class = SPAKE2_A if role is InviteRole.JOINER else SPAKE2_B
        self._spake = spake_class(code.secret(), entropy_f=self._entropy)
        self._own_pake = b""
        self._peer_confirm_key = b""
        self._peer_card_key = b""
        self._th = b""

    @property
    def done(self) -> bool:
        return self.state is InviteState.DONE

    @property
    def spent(self) -> bool:
        """True once the code must never be used again.

        That is once we answered the peer's message 1 (the peer may have made its
        one guess, and learns from our message 2 whether it was right) or the
        machine failed. The owner of the invite retires the code then, even if the
        session ends before `done`: otherwise a guesser could hang up and guess again.
        """
        return self.state in (InviteState.WAIT_CONFIRM, InviteState.DONE, InviteState.FAILED)

    # ---------------------------------------------------------------- inputs

    def start(self) -> bytes:
        """Message 1, to send to the peer right away."""
        try:
            nxt = self._next_state(_Input.START)
            self._own_pake = bytes(self._spake.start())
            self._random = b""
            if len(self._own_pake) != PAKE_LEN:  # a changed spake2 package
                raise LocalProtocolError("the spake2 package made a message of an unexpected size")
        except Exception as exc:
            self._fail(exc)
            raise
        self.state = nxt
        return encode_message(PakeMessage(self._own_pake))

    def receive(self, message: bytes | bytearray | memoryview) -> bytes | None:
        """Handle one message from the peer; return the reply to send, if any."""
        reply: bytes | None
        try:
            if self.state is InviteState.NEW:
                raise LocalProtocolError("call start() before receive()")
            if self.state is InviteState.FAILED:
                raise self._dead()
            decoded = decode_message(message)
            match decoded:
                case PakeMessage():
                    nxt = self._next_state(_Input.PAKE)
                    reply = self._on_pake(decoded)
                case ConfirmMessage():
                    nxt = self._next_state(_Input.CONFIRM)
                    self._on_confirm(decoded)
                    reply = None
        except Exception as exc:
            self._fail(exc)
            raise
        self.state = nxt
        return reply

    # ------------------------------------------------------------- handlers

    def _on_pake(self, message: PakeMessage) -> bytes:
        try:
            key = self._spake.finish(message.pake)
        except (SPAKEError, ValueError, NotOnCurve) as exc:
            raise InviteFailed(
                "the invite failed: the peer's first invite message was rejected "
                f"({type(exc).__name__}); make a new code and try again"
            ) from exc
        if self.role is InviteRole.JOINER:
            joiner_pake, inviter_pake = self._own_pake, message.pake
        else:
            joiner_pake, inviter_pake = message.pake, self._own_pake
        th = _transcript_hash(
            _PROTOCOL,
            self.code.nameplate.to_bytes(2, "big"),
            self._joiner_id,
            self._inviter_id,
            self._binding,
            joiner_pake,
            inviter_pake,
        )
        okm = HKDF(
            algorithm=hashes.SHA256(), length=4 * KEY_LEN, salt=th, info=_KEYS_INFO
        ).derive(key)
        keys = {
            (InviteRole.JOINER, "confirm"): okm[0:32],
            (InviteRole.INVITER, "confirm"): okm[32:64],
            (InviteRole.JOINER, "card"): okm[64:96],
            (InviteRole.INVITER, "card"): okm[96:128],
        }
        peer = _other(self.role)
        self._th = th
        self._peer_confirm_key = keys[peer, "confirm"]
        self._peer_card_key = keys[peer, "card"]
        mac = _confirm_mac(keys[self.role, "confirm"], self.role, th)
        sealed = ChaCha20Poly1305(keys[self.role, "card"]).encrypt(
            _NONCE, self._own_card, _CARD_LABEL + th
        )
        self._own_card = b""
        return encode_message(ConfirmMessage(mac, sealed))

    def _on_confirm(self, message: ConfirmMessage) -> None:
        expected = _confirm_mac(self._peer_confirm_key, _other(self.role), self._th)
        if not hmac.compare_digest(expected, message.mac):
            raise InviteFailed(
                "the invite code did not match: either you or your colleague typed it "
                "wrong, or someone else tried to use it; make a new code and try again"
            )
        try:
            card = ChaCha20Poly1305(self._peer_card_key).decrypt(
                _NONCE, message.sealed_card, _CARD_LABEL + self._th
            )
        except InvalidTag as exc:
            raise InviteFailed(
                "the invite failed: the peer's card did not decrypt; "
                "make a new code and try again"
            ) from exc
        self._forget_keys()
        self.peer_card = card

    # -------------------------------------------------------------- helpers

    def _next_state(self, event: _Input) -> InviteState:
        nxt = _TRANSITIONS.get((self.state, event))
        if nxt is not None:
            return nxt
        if self.state is InviteState.FAILED:
            raise self._dead()
        if event is _Input.START:
            raise LocalProtocolError("start() was already called")
        raise MessageError(
            f"the peer sent an invite {event.value} message out of turn "
            f"(this side is in state {self.state.value})"
        )

    def _dead(self) -> LocalProtocolError:
        return LocalProtocolError(
            "this invite already failed and cannot be used again; make a new code"
        )

    def _entropy(self, n: int) -> bytes:
        """SPAKE2's ``entropy_f``: hands out the random bytes we were given, once."""
        if n > len(self._random):
            raise LocalProtocolError(f"SPAKE2 wanted {n} more random bytes than were given")
        out, self._random = self._random[:n], self._random[n:]
        return out

    def _forget_keys(self) -> None:
        self._peer_confirm_key = self._peer_card_key = b""
        self._own_card = self._random = b""

    def _fail(self, exc: Exception) -> None:
        if self.state is not InviteState.FAILED:
            self.state = InviteState.FAILED
            self.error = exc
        self.peer_card = None
        self._forget_keys()


def _other(role: InviteRole) -> InviteRole:
    return InviteRole.INVITER if role is InviteRole.JOINER else InviteRole.JOINER


def _transcript_hash(*fields: bytes) -> bytes:
    h = hashlib.sha256()
    for field in fields:
        h.update(len(field).to_bytes(4, "big"))
        h.update(field)
    return h.digest()


def _confirm_mac(key: bytes, sender: InviteRole, th: bytes) -> bytes:
    label = _CONFIRM_LABEL + b"\x00" + sender.value.encode("ascii") + b"\x00"
    return hmac.new(key, label + th, hashlib.sha256).digest()
