"""The TXT record of LAN discovery, validated without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidedoor.errors import InvalidAddress
from sidedoor.net.mdns import (
    MAX_NAME_CHARS,
    MAX_TXT_BYTES,
    MAX_TXT_KEYS,
    Discovery,
    Rejected,
    TxtRecord,
    build_txt,
    check_txt,
    check_txt_bytes,
    parse_txt,
    sanitize_name,
    split_txt,
)
from sidedoor.testing.sessions import identity_from

ALICE = identity_from("alice").address


def txt(**fields: str | bytes | None) -> dict[bytes, bytes | None]:
    return {
        k.encode(): v.encode() if isinstance(v, str) else v for k, v in fields.items()
    }


def good(**overrides: str | bytes | None) -> dict[bytes, bytes | None]:
    fields: dict[str, str | bytes | None] = {"v": "1", "id": ALICE, "name": "Alice"}
    fields.update(overrides)
    return txt(**fields)


def wire(properties: dict[bytes, bytes | None]) -> bytes:
    """The TXT record's wire form: length-prefixed strings."""
    out = b""
    for key, value in properties.items():
        entry = key if value is None else key + b"=" + value
        out += bytes([len(entry)]) + entry
    return out


def test_good_record() -> None:
    record = parse_txt(good(inv="7,12"))
    assert record == TxtRecord(1, ALICE, "Alice", {"inv": "7,12"})


def test_address_is_canonical_and_keys_ignore_case() -> None:
    spaced = " ".join(ALICE[i : i + 4] for i in range(0, len(ALICE), 4)).upper()
    record = parse_txt({b"V": b"1", b"ID": spaced.encode(), b"Name": b"Alice"})
    assert record is not None
    assert record.address == ALICE


def test_missing_name_is_empty() -> None:
    record = parse_txt(txt(v="1", id=ALICE))
    assert record is not None and record.name == ""


def test_boolean_extra_is_empty_string() -> None:
    record = parse_txt(good(flag=None))
    assert record is not None and record.extras == {"flag": ""}


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        (txt(v="1", name="Alice"), "no address"),
        (good(id=ALICE[:-1] + ("a" if ALICE[-1] != "a" else "b")), "does not parse"),
        (good(id=ALICE[:-3]), "does not parse"),
        (good(id="not an address"), "does not parse"),
        (good(id=None), "no address"),
        (good(v="2"), "unknown version"),
        (good(v="01"), "unknown version"),
        (txt(id=ALICE, name="Alice"), "no version"),
        (good(v=None), "no version"),
        (good(name="x" * (MAX_NAME_CHARS + 1)), "characters"),
        (good(name=None), "no value"),
        (good(name=b"Al\xffice"), "not UTF-8"),
        (good(id=b"sd\xc3\x28"), "not UTF-8"),
        (good(inv=b"\x80"), "not UTF-8"),
        ({**good(), "cafe\u00e9".encode(): b"1"}, "not UTF-8"),
        (good(inv="7\n12"), "control characters"),
        (good(**{"a b": "1"}), "invalid key"),
        (good(**{"k" * 33: "1"}), "invalid key"),
        ({**good(), b"": b"1"}, "invalid key"),
        ({**good(), b"ID": ALICE.encode()}, "twice"),
        (good(blob="x" * 251), "bytes"),
        (good(**{f"k{i}": "x" * 200 for i in range(6)}), "over"),
        (good(**{f"k{i}": "1" for i in range(MAX_TXT_KEYS)}), "too many keys"),
        (good(**{f"k{i}": "1" for i in range(100_000)}), "too many keys"),
    ],
)
def test_refused(properties: dict[bytes, bytes | None], reason: str) -> None:
    result = check_txt(properties)
    assert isinstance(result, Rejected)
    assert reason in result.reason
    assert parse_txt(properties) is None


def test_not_bytes_is_refused() -> None:
    bad: dict[bytes, bytes | None] = good()
    bad[b"inv"] = "7"  # type: ignore[assignment]
    assert parse_txt(bad) is None


def test_control_characters_are_stripped_from_the_name() -> None:
    record = parse_txt(good(name="\x1bAl\x00ice\r\n  Smith\u202e\u200b\x7f\x9b"))
    assert record is not None
    assert record.name == "Alice Smith"


def test_name_limit_counts_characters_not_bytes() -> None:
    name = "\u00e9" * MAX_NAME_CHARS  # 128 bytes
    record = parse_txt(good(name=name))
    assert record is not None and record.name == name


def test_largest_allowed_record() -> None:
    extras = {f"k{i:02d}": "x" * 30 for i in range(MAX_TXT_KEYS - 3)}
    record = parse_txt(good(**extras))
    assert record is not None and len(record.extras) == MAX_TXT_KEYS - 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x05v=1", "truncated"),
        (b"\x03v=1\x03v=2", "twice"),
        (b"".join(b"\x02k" + bytes([65 + i]) for i in range(MAX_TXT_KEYS + 1)), "keys"),
        (b"\xffx" + b"y" * 1400, "bytes"),
        (b"", "no version"),
        (b"\x00", "no version"),
    ],
    ids=["truncated", "duplicate", "too-many-keys", "too-big", "empty", "zero-byte"],
)
def test_wire_form_refused(data: bytes, reason: str) -> None:
    result = check_txt_bytes(data)
    assert isinstance(result, Rejected)
    assert reason in result.reason


def test_wire_form_good() -> None:
    data = wire(good(inv="7,12", flag=None))
    assert split_txt(data) == good(inv="7,12", flag=None)
    assert check_txt_bytes(b"\x00" + data) == TxtRecord(
        1, ALICE, "Alice", {"inv": "7,12", "flag": ""}
    )


def test_wire_form_is_bounded_before_parsing() -> None:
    assert isinstance(split_txt(b"\x01x" * 100_000), Rejected)
    assert len(wire(good())) < MAX_TXT_BYTES


@given(st.binary(max_size=2000))
def test_any_bytes_give_a_record_or_a_reason(data: bytes) -> None:
    assert isinstance(check_txt_bytes(data), TxtRecord | Rejected)


@given(st.dictionaries(st.binary(max_size=40), st.none() | st.binary(max_size=300), max_size=40))
def test_any_properties_give_a_record_or_none(properties: dict[bytes, bytes | None]) -> None:
    assert isinstance(check_txt(properties), TxtRecord | Rejected)


# ----------------------------------------------------------------- what we send


def test_build_round_trips() -> None:
    built = build_txt(ALICE, "Alice", {"inv": "7,12"})
    assert built == {"v": "1", "id": ALICE, "name": "Alice", "inv": "7,12"}
    as_wire = {k.encode(): v.encode() for k, v in built.items()}
    assert parse_txt(as_wire) == TxtRecord(1, ALICE, "Alice", {"inv": "7,12"})


@given(st.text(max_size=300))
def test_any_display_name_is_sent_in_a_form_peers_accept(name: str) -> None:
    built = build_txt(ALICE, name)
    record = parse_txt({k.encode(): v.encode() for k, v in built.items()})
    assert record is not None
    assert record.name == built["name"] == sanitize_name(built["name"])
    assert len(record.name) <= MAX_NAME_CHARS


def test_build_shortens_a_long_name() -> None:
    assert build_txt(ALICE, "x" * 100)["name"] == "x" * MAX_NAME_CHARS
    wide = build_txt(ALICE, "\U0001f600" * 64)["name"]  # 4 bytes each: cut to one DNS string
    assert len(("name=" + wide).encode()) <= 255


@pytest.mark.parametrize(
    "extras",
    [{"v": "2"}, {"id": "x"}, {"name": "x"}, {"Inv": "1"}, {"a=b": "1"}, {"": "1"},
     {"inv": "7\n"}, {"big": "x" * 300},
     {f"k{i}": "1" for i in range(MAX_TXT_KEYS)}],
)
def test_build_refuses_extras_peers_would_refuse(extras: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build_txt(ALICE, "Alice", extras)


def test_build_refuses_a_bad_address() -> None:
    with pytest.raises(InvalidAddress):
        build_txt(ALICE[:-1], "Alice")


def test_discovery_checks_its_arguments_without_opening_sockets() -> None:
    with pytest.raises(InvalidAddress):
        Discovery("sdnope", "Alice", 4000)
    with pytest.raises(ValueError):
        Discovery(ALICE, "Alice", 0)
    with pytest.raises(ValueError):
        Discovery(ALICE, "Alice", 4000, ttl=1)
    discovery = Discovery(ALICE, "Al\x00ice", 4000)
    assert discovery.name == "Alice"
    assert discovery.service_name == f"{ALICE[:16]}._sidedoor._tcp.local."
