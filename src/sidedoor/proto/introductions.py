"""Messages of the introduction channels: contact requests and their acceptance.

A stranger may open only these channel kinds (and ``invite``):

* ``contact-request``: the channel meta is a `RequestMeta` (the requester's signed
  card, a short message, and a link token if it followed a link); the receiver
  answers with one `Reply` and ends the channel.
* ``contact-accept``: sent by a node that accepted our request; the meta is an
  `AcceptMeta` with its signed card; the receiver answers with a `Reply`.
"""

from __future__ import annotations

from typing import Final

import msgspec

from sidedoor.proto.codec import decode as decode  # the services call wire.decode

KIND_REQUEST: Final = "contact-request"
KIND_ACCEPT: Final = "contact-accept"
MAX_MESSAGE_LEN: Final = 280
MAX_REPLY_LEN: Final = 4096


class RequestMeta(msgspec.Struct, array_like=True, frozen=True):
    card: bytes
    message: str = ""
    token: bytes = b""


class AcceptMeta(msgspec.Struct, array_like=True, frozen=True):
    card: bytes


class Reply(msgspec.Struct, array_like=True, frozen=True):
    """status: queued (waiting for the user), accepted (we are contacts now), refused."""

    status: str
    card: bytes = b""
    reason: str = ""


_encoder = msgspec.msgpack.Encoder()


def encode(message: RequestMeta | AcceptMeta | Reply) -> bytes:
    return _encoder.encode(message)


