"""Every error sidedoor raises on purpose.

The hierarchy::

    SidedoorError                    base of everything below; ``str()`` is a message for the user
    ├── InvalidAddress               an address that does not parse ("this address has a typo")
    ├── InvalidInviteCode            an invite code that does not parse (not "7-guitar-orbit")
    ├── ContactError                 a contact operation that cannot be done (unknown contact, ...)
    ├── ChatError                    a chat operation that cannot be done (unknown room, ...)
    │   └── ChatRefused              a message or room update breaks a rule (too long, not an admin)
    ├── IdentityError                the identity on disk cannot be used
    │   └── InsecureKeyFile          the key file is readable by other users
    ├── StorageError                 the node's database cannot be opened or migrated
    ├── DiscoveryError               LAN discovery (mDNS) cannot start
    ├── TransferError                a file transfer cannot be done (unknown transfer, bad path)
    │   └── DiskFull                 the destination has no room for what is offered
    ├── WebUIError                   the web UI cannot do it (a bad upload name, no folder opener)
    ├── NodeError                    the local node, seen from the CLI
    │   ├── NodeNotRunning           no node answers for this home
    │   ├── NodeAlreadyRunning       a second ``up`` for the same home
    │   └── ControlAPIError          the control API refused or failed a request
    ├── InvalidBrokerAddress         a broker address that does not parse
    ├── BrokerError                  a broker refused or failed a request (quota, not found, ...)
    ├── ConnectError                 a peer could not be reached (refused, timed out, unreachable)
    └── ProtocolError                the rules of the wire protocol were broken
        ├── LocalProtocolError       by us: a bug, or an API used in the wrong state
        └── RemoteProtocolError      by the peer: the connection is closed, the node goes on
            ├── FrameTooLarge        a length prefix over the limit
            ├── HandshakeFailed      the Noise handshake did not complete (bad bytes, bad MAC)
            ├── IdentityMismatch     the peer proved a different identity than the one dialled
            ├── VersionMismatch      the peer speaks another protocol version
            ├── DecryptError         a transport message failed authentication
            │                        (forged, replayed, reordered)
            ├── MessageError         a message that is malformed or not allowed in this state
            │   └── UnsafeFileName   a file name from the wire that could escape its folder
            ├── BadChunk             file data not asked for, of the wrong size, or not
            │                        matching its hash
            ├── InviteFailed         an invite code did not match (typo, or someone else's guess)
            ├── InvalidCard          a contact card that is malformed or has a bad signature
            ├── NotAllowed           the peer refused us (we are not its contact, or blocked)
            ├── FlowControlError     the peer sent more than it was given credit for
            └── PeerTimeout          the peer went silent (handshake or idle timeout)

Lower-layer errors (``OSError``, ``sqlite3.Error``, ``cryptography`` exceptions,
``msgspec`` errors) are caught at the boundary of the layer that sees them and
re-raised as one of these with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BadChunk",
    "BrokerError",
    "ChatError",
    "ChatRefused",
    "ConnectError",
    "ContactError",
    "ControlAPIError",
    "DecryptError",
    "DiscoveryError",
    "DiskFull",
    "FlowControlError",
    "FrameTooLarge",
    "HandshakeFailed",
    "IdentityError",
    "IdentityMismatch",
    "InsecureKeyFile",
    "InvalidAddress",
    "InvalidBrokerAddress",
    "InvalidCard",
    "InvalidInviteCode",
    "InviteFailed",
    "LocalProtocolError",
    "MessageError",
    "NodeAlreadyRunning",
    "NodeError",
    "NodeNotRunning",
    "NotAllowed",
    "PeerTimeout",
    "ProtocolError",
    "RemoteProtocolError",
    "SidedoorError",
    "StorageError",
    "TransferError",
    "UnsafeFileName",
    "VersionMismatch",
    "WebUIError",
]


class SidedoorError(Exception):
    """Base class; the message is meant to be shown to the user as it is."""


class InvalidAddress(SidedoorError, ValueError):
    """The text is not a sidedoor address, or it has a typo (its check failed)."""


class InvalidInviteCode(SidedoorError, ValueError):
    """That does not look like an invite code: it should look like 7-guitar-orbit."""


class IdentityError(SidedoorError):
    """The node's identity key cannot be loaded or created."""


class InsecureKeyFile(IdentityError):
    """The identity key file can be read by other users; we refuse to use it."""


class StorageError(SidedoorError):
    """The node's database could not be opened, migrated or written."""


class DiscoveryError(SidedoorError):
    """LAN discovery could not start: no usable network interface, or mDNS cannot be used."""


class NodeError(SidedoorError):
    """A problem with the local node as seen from the CLI."""


class NodeNotRunning(NodeError):
    """No node is running for this home. Start one with `sidedoor up`."""


class NodeAlreadyRunning(NodeError):
    """A node is already running for this home."""


class ControlAPIError(NodeError):
    """The node's control API answered with an error."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class WebUIError(SidedoorError):
    """The web UI asked for something that cannot be done (the message says what)."""


class InvalidBrokerAddress(SidedoorError, ValueError):
    """Not a ``sidedoor-broker://HOST:PORT/ADDRESS`` address."""


class BrokerError(SidedoorError):
    """A broker refused a request or could not do it; the message says why."""


class BrokerRefused(BrokerError):
    """The broker answered, and the answer is no (not registered, busy, ...)."""


class ConnectError(SidedoorError):
    """The peer could not be reached over the network."""


class ProtocolError(SidedoorError):
    """A rule of the sidedoor wire protocol was broken."""


class LocalProtocolError(ProtocolError):
    """We broke the rules: a bug in sidedoor, or an API called in the wrong state."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the rules. The connection is closed; the node keeps serving others."""


class FrameTooLarge(RemoteProtocolError):
    """A frame's length prefix is over the limit."""


class HandshakeFailed(RemoteProtocolError):
    """The Noise handshake failed: wrong bytes, a bad MAC, or a bad identity proof."""


class IdentityMismatch(RemoteProtocolError):
    """The peer proved an identity other than the one we dialled."""


class VersionMismatch(RemoteProtocolError):
    """The peer speaks a protocol version we do not; one side needs an update."""


class DecryptError(RemoteProtocolError):
    """A transport message failed authentication: forged, replayed, or out of order."""


class MessageError(RemoteProtocolError):
    """A message was malformed or not allowed in the session's current state."""


class InvalidCard(RemoteProtocolError):
    """A contact card is malformed, over the limits, or its signature does not verify."""


class NotAllowed(RemoteProtocolError):
    """The peer refused what we asked: we are not its contact, or it blocked us."""


class ContactError(SidedoorError):
    """A contact operation that cannot be done: unknown or ambiguous contact, and the like."""


class ChatError(SidedoorError):
    """A chat operation that cannot be done: an unknown room, not a member, and the like."""


class ChatRefused(ChatError):
    """A message or room update breaks a rule: too long, not signed by an admin, ...

    When it came from a peer, the reason goes back to the peer in the answer.
    """


class InviteFailed(RemoteProtocolError):
    """The invite code did not match, so your colleague was not added.

    Either you or your colleague typed the code wrong, or someone else tried to
    use it. A code works only once: make a new code and try again.
    """


class FlowControlError(RemoteProtocolError):
    """The peer sent more data on a channel than we gave it credit for."""


class PeerTimeout(RemoteProtocolError):
    """The peer stopped answering (handshake or idle timeout)."""


class TransferError(SidedoorError):
    """A file transfer cannot be done: an unknown transfer, a path that cannot be sent, ..."""


class DiskFull(TransferError):
    """The destination has no room for the files; free some space, or choose another folder."""


class UnsafeFileName(MessageError):
    """A file name from the other node could point outside the folder it is written to."""


class BadChunk(RemoteProtocolError):
    """The sender sent file data we did not ask for, of the wrong size, or not matching its hash.

    The data is discarded and the transfer stopped: a sender that lies is cut off.
    """
