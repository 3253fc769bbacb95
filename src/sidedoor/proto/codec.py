"""Decoding one typed wire struct from msgpack, with the error every service expects."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from sidedoor.errors import MessageError

T = TypeVar("T")


def decode(kind: type[T], data: bytes | memoryview) -> T:
    """``data`` as a ``kind``; `MessageError` naming the kind if it is not one."""
    try:
        return msgspec.msgpack.decode(data, type=kind)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed {kind.__name__}: {exc}") from exc
