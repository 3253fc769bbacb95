"""The TXT record a sidedoor node announces on the LAN, as pure functions.

Version 1::

    v=1                 the record's version; other versions are ignored
    id=sd...            the node's sidedoor address (`sidedoor.identity`), with its check
    name=Alice          the display name: at most 64 characters, control characters stripped
    inv=7,12            extras (e.g. open invite nameplates)

Everything read from the wire goes through `check_txt_bytes` / `check_txt` /
`parse_txt`: a record that is oversized or malformed is refused with a reason, and
nothing here raises on input from the wire. A record proves nothing: the address
is a hint until the Noise handshake proves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from sidedoor.errors import InvalidAddress
from sidedoor.identity import decode_address, encode_address
from sidedoor.names import clean_text

TXT_VERSION: Final = 1
MAX_NAME_CHARS: Final = 64
MAX_TXT_BYTES: Final = 1300  # the whole record, as on the wire (RFC 6763 6.2: fits one packet)
MAX_TXT_KEYS: Final = 32
MAX_ENTRY_BYTES: Final = 255  # one "key=value" string: a DNS character-string's limit
MAX_KEY_CHARS: Final = 32
RESERVED_KEYS: Final = frozenset({"v", "id", "name"})


@dataclass(frozen=True, slots=True)
class TxtRecord:
    """A validated sidedoor TXT record."""

    version: int
    address: str  # canonical text form
    name: str
    extras: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a TXT record was not accepted (for the debug log)."""

    reason: str


def _valid_key(key: str) -> bool:
    # RFC 6763 6.4: printable US-ASCII except '='; we also refuse spaces.
    return 0 < len(key) <= MAX_KEY_CHARS and all("!" <= c <= "~" and c != "=" for c in key)


def _valid_value(value: str) -> bool:
    return all(c.isprintable() for c in value)


def split_txt(data: bytes) -> dict[bytes, bytes | None] | Rejected:
    """Split a TXT record's wire form (length-prefixed strings) into keys and values.

    Empty strings are skipped (a record of one zero byte has no entries); a string
    without ``=`` is a key with no value (None).
    """
    if len(data) > MAX_TXT_BYTES:
        return Rejected(f"the record has {len(data)} bytes (over {MAX_TXT_BYTES})")
    properties: dict[bytes, bytes | None] = {}
    pos = 0
    while pos < len(data):
        length = data[pos]
        entry = data[pos + 1 : pos + 1 + length]
        if len(entry) != length:
            return Rejected("the record is truncated")
        pos += 1 + length
        if not entry:
            continue
        key, sep, value = entry.partition(b"=")
        if key in properties:
            return Rejected(f"key {key[:MAX_KEY_CHARS]!r} appears twice")
        if len(properties) == MAX_TXT_KEYS:
            return Rejected(f"more than {MAX_TXT_KEYS} keys")
        properties[key] = value if sep else None
    return properties


def check_txt(properties: Mapping[bytes, bytes | None]) -> TxtRecord | Rejected:
    """Validate a TXT record from the wire; say why when it is refused.

    Keys are compared without case (RFC 6763 6.4). A key without ``=`` among the
    extras (a DNS-SD boolean attribute) is kept with the value ``""``.
    """
    if len(properties) > MAX_TXT_KEYS:
        return Rejected(f"too many keys ({len(properties)} > {MAX_TXT_KEYS})")
    total = 0
    fields: dict[str, str | None] = {}
    for raw_key, raw_value in properties.items():
        if not isinstance(raw_key, bytes) or not isinstance(raw_value, bytes | None):
            return Rejected("a key or value is not bytes")
        size = len(raw_key) + (0 if raw_value is None else 1 + len(raw_value))
        if size > MAX_ENTRY_BYTES:
            return Rejected(f"an entry of {size} bytes (over {MAX_ENTRY_BYTES})")
        total += 1 + size
        if total > MAX_TXT_BYTES:
            return Rejected(f"the record is over {MAX_TXT_BYTES} bytes")
        try:
            key = raw_key.decode("ascii").lower()
            value = None if raw_value is None else raw_value.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected(f"key {raw_key[:MAX_KEY_CHARS]!r} or its value is not UTF-8 text")
        if not _valid_key(key):
            return Rejected(f"invalid key {key[:MAX_KEY_CHARS]!r}")
        if key in fields:
            return Rejected(f"key {key!r} appears twice")
        fields[key] = value

    version = fields.get("v")
    if version is None:
        return Rejected("no version (v=)")
    if version != str(TXT_VERSION):
        return Rejected(f"unknown version v={version[:8]!r}")

    address_text = fields.get("id")
    if address_text is None:
        return Rejected("no address (id=)")
    try:
        address = encode_address(decode_address(address_text))
    except InvalidAddress as exc:
        return Rejected(f"the address does not parse: {exc}")

    raw_name = fields.get("name", "")
    if raw_name is None:
        return Rejected("name= has no value")
    name = clean_text(raw_name)
    if len(name) > MAX_NAME_CHARS:
        return Rejected(f"the name has {len(name)} characters (over {MAX_NAME_CHARS})")

    extras: dict[str, str] = {}
    for key, value in fields.items():
        if key in RESERVED_KEYS:
            continue
        if value is None:
            value = ""
        elif not _valid_value(value):
            return Rejected(f"the value of {key!r} holds control characters")
        extras[key] = value
    return TxtRecord(TXT_VERSION, address, name, extras)


def parse_txt(properties: Mapping[bytes, bytes | None]) -> TxtRecord | None:
    """Validate a TXT record from the wire: the record, or None if it must be ignored."""
    result = check_txt(properties)
    return result if isinstance(result, TxtRecord) else None


def check_txt_bytes(data: bytes) -> TxtRecord | Rejected:
    """`split_txt` then `check_txt`: a TXT record's wire form, validated."""
    properties = split_txt(data)
    return properties if isinstance(properties, Rejected) else check_txt(properties)


def fit_name(name: str) -> str:
    """The sanitized name, cut to the character limit and to one DNS string."""
    name = clean_text(name)[:MAX_NAME_CHARS]
    budget = MAX_ENTRY_BYTES - len(b"name=")
    while len(name.encode("utf-8")) > budget:
        name = name[:-1]
    return name.rstrip()


def build_txt(address: str, name: str, extras: Mapping[str, str] | None = None) -> dict[str, str]:
    """The TXT properties this node announces.

    The name is sanitized and shortened to fit; extras that `parse_txt` would refuse
    raise ``ValueError`` (a bug in the caller, not something to send).
    """
    record: dict[str, str] = {
        "v": str(TXT_VERSION),
        "id": encode_address(decode_address(address)),
        "name": fit_name(name),
    }
    for key, value in (extras or {}).items():
        if not isinstance(key, str) or not _valid_key(key) or key != key.lower():
            raise ValueError(f"invalid TXT key {key!r}: lower-case printable ASCII, no '='")
        if key in RESERVED_KEYS:
            raise ValueError(f"the TXT key {key!r} is reserved")
        if not isinstance(value, str) or not _valid_value(value):
            raise ValueError(f"the value of TXT key {key!r} must be printable text")
        record[key] = value
    check = check_txt({k.encode(): v.encode() for k, v in record.items()})
    if isinstance(check, Rejected):
        raise ValueError(f"the TXT record would be refused by peers: {check.reason}")
    return record
