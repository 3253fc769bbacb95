"""Two `Session` machines wired together in memory, with no sockets and a fake clock."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sidedoor.identity import Identity, verify_noise_proof
from sidedoor.net.connection import local_keys
from sidedoor.proto.framing import encode_frame
from sidedoor.proto.noise import Pattern
from sidedoor.proto.session import Role, Session, SessionConfig
from sidedoor.proto.session_events import SessionEvent


def identity_from(label: str) -> Identity:
    """A deterministic identity for tests."""
    return Identity(hashlib.sha256(label.encode()).digest())


def ephemeral(label: str) -> bytes:
    return hashlib.sha256(b"ephemeral " + label.encode()).digest()


@dataclass
class Pair:
    initiator: Session
    responder: Session
    alice: Identity
    bob: Identity
    now: float = 0.0
    events: dict[str, list[SessionEvent]] = field(
        default_factory=lambda: {"initiator": [], "responder": []}
    )

    def shuttle(self, max_rounds: int = 1000) -> None:
        """Move bytes both ways until neither side has anything to send."""
        for _ in range(max_rounds):
            a = self.initiator.data_to_send()
            b = self.responder.data_to_send()
            if a:
                self.responder.receive_data(a, self.now)
            if b:
                self.initiator.receive_data(b, self.now)
            self._collect()
            if not a and not b:
                return
        raise AssertionError("the sessions kept talking for too long")

    def _collect(self) -> None:
        for name, session in (("initiator", self.initiator), ("responder", self.responder)):
            while (event := session.next_event()) is not None:
                self.events[name].append(event)

    def take(self, side: str) -> list[SessionEvent]:
        self._collect()
        got, self.events[side] = self.events[side], []
        return got


def session_pair(
    pattern: Pattern = Pattern.XX,
    *,
    config: SessionConfig | None = None,
    expected_remote: bytes | None = None,
    responder_identity: Identity | None = None,
    remote_static: bytes | None = None,
    start: bool = True,
) -> Pair:
    """Alice (initiator) and Bob (responder). Call `shuttle()` to run the handshake."""
    alice = identity_from("alice")
    bob = responder_identity or identity_from("bob")
    if pattern is Pattern.IK and remote_static is None:
        remote_static = bob.noise_public
    initiator = Session(
        Role.INITIATOR, local_keys(alice), verify_noise_proof, ephemeral_private=ephemeral("a"),
        pattern=pattern, expected_remote=expected_remote, remote_static=remote_static,
        config=config,
    )
    responder = Session(
        Role.RESPONDER, local_keys(bob), verify_noise_proof, ephemeral_private=ephemeral("b"),
        config=config,
    )
    pair = Pair(initiator, responder, alice, bob)
    if start:
        initiator.start(0.0)
        responder.start(0.0)
    return pair


def forge_transport(sender: Session, plaintext: bytes) -> bytes:
    """A framed transport message carrying any ``plaintext``, as ``sender`` would send it.

    For testing the receiving side with messages an honest session never sends. It
    uses the sender's own send cipher, so the peer decrypts it; the sender's nonce
    advances, so deliver these bytes before anything the sender emits afterwards.
    """
    cipher = sender._send_cipher
    if cipher is None:
        raise ValueError("the session has no transport keys yet (the handshake is not done)")
    return encode_frame(cipher.encrypt(plaintext))
